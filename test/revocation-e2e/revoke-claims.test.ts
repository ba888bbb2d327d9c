// Revoking through the admin API, honoured through the proxy: one rule `(claim, value, T)` for
// jti, sub, client_id, sid and a custom claim, issuer-bound and any-issuer entries, and lifting.
import { randomUUID } from 'node:crypto'
import t, { type Test } from 'tap'
import { bearer, runApp, send, sendAudited, type Lapse } from '../fixtures/app.js'
import { assertDenied, CHALLENGE } from '../fixtures/deny.js'
import { ISSUER, testKeys } from '../fixtures/keys.js'
import { admin, nowS, OTHER_ISSUER, redisEnv, redisFor, revoke, untilCacheActive, untilReady } from './helpers.js'

const keys = await testKeys()
const redis = await redisFor(t)
let n = 0

/** Every revocable claim with its own value, so one case never touches another's token. */
const claimsFor = (label: string) => ({
  sub: `user-${label}`,
  client_id: `client-${label}`,
  sid: `sid-${label}`,
  task: `TASK-${label}`,
  jti: randomUUID(),
})

async function lapseOn(t: Test, cache: string) {
  const lapse = await runApp(t, {
    env: redisEnv(redis, `claims${++n}`, {
      LAPSE_REVOCABLE_CLAIMS: 'jti,sub,client_id,sid,task',
      LAPSE_ISSUER: `${ISSUER},${OTHER_ISSUER}`,
      LAPSE_REVOCATION_CACHE: cache,
    }),
  })
  await untilReady(lapse)
  // So that the "allowed before" answers are really cached and the revocation must invalidate them.
  if (cache === 'true') await untilCacheActive(lapse)
  return lapse
}

async function expectRevoked(t: Test, lapse: Lapse, token: string, msg: string) {
  const calls = lapse.upstream.calls
  const { res, audit } = await sendAudited(lapse, '/orders/1', { headers: [bearer(token)] })
  await t.test(msg, async (t) => {
    assertDenied(t, lapse, res, audit, {
      status: 401,
      challenge: CHALLENGE.invalidToken,
      error: 'invalid_token',
      reason: 'revoked',
      upstreamCalls: calls,
      token,
    })
    t.match(res.headers['www-authenticate'], /error_description="token was revoked"/)
  })
}

async function expectAllowed(t: Test, lapse: Lapse, token: string, msg: string) {
  const res = await send(`${lapse.url}/orders/1`, { headers: [bearer(token)] })
  t.equal(res.status, 200, msg)
}

for (const cache of ['true', 'false']) {
  t.test(`LAPSE_REVOCATION_CACHE=${cache}`, async (t) => {
    const lapse = await lapseOn(t, cache)

    for (const claim of ['jti', 'sub', 'client_id', 'sid', 'task'] as const) {
      t.test(
        `revoke by ${claim}: tokens issued at or before T → 401 revoked; issued after T → allowed${claim === 'jti' ? ' unless it is the same jti' : ''}`,
        async (t) => {
          const claims = claimsFor(`${claim}-${cache}`)
          const before = await keys.mint(claims, { nowS: nowS() - 10 })
          await expectAllowed(t, lapse, before, 'allowed before the revocation (and its answer cached when the cache is on)')
          const entry = await revoke(t, lapse, { claim, value: claims[claim], reason: `revoke by ${claim}` })
          const T = entry.issued_before as number
          await expectRevoked(t, lapse, before, 'the earlier token is revoked')
          await expectRevoked(
            t,
            lapse,
            await keys.mint(claims, { nowS: T }),
            'a token issued in the second of T is revoked too (the safe side)',
          )
          if (claim === 'jti') {
            // One jti is one token: an iat after T (an issuer clock ahead of ours, within the skew) does not save it.
            await expectRevoked(t, lapse, await keys.mint(claims, { nowS: T + 10 }), 'the same jti stamped after T is still revoked')
          } else {
            // A re-approved grant: same claim value, iat > T (within the skew, so no waiting).
            await expectAllowed(
              t,
              lapse,
              await keys.mint({ ...claims, jti: randomUUID() }, { nowS: T + 1 }),
              'a token issued after T works',
            )
          }
          const other = claimsFor(`${claim}-${cache}-other`)
          await expectAllowed(t, lapse, await keys.mint(other, { nowS: T - 10 }), 'a token with other values is untouched')
        },
      )
    }

    t.test('a client named only in azp (what X-Auth-Client-Id and the audit line call client_id) is revoked by client_id', async (t) => {
      const { client_id: client, ...rest } = claimsFor(`azp-${cache}`)
      const token = await keys.mint({ ...rest, azp: client }, { nowS: nowS() - 10 })
      await expectAllowed(t, lapse, token, 'allowed before the revocation')
      await revoke(t, lapse, { claim: 'client_id', value: client, reason: 'client compromised' })
      await expectRevoked(t, lapse, token, 'revoked by client_id')
    })

    t.test('an iss-bound entry binds only that issuer; an any-issuer entry binds both', async (t) => {
      const claims = claimsFor(`iss-${cache}`)
      const mine = await keys.mint(claims, { nowS: nowS() - 10 })
      const theirs = await keys.mint({ ...claims, iss: OTHER_ISSUER, jti: randomUUID() }, { nowS: nowS() - 10 })
      await expectAllowed(t, lapse, mine, `${ISSUER} token allowed`)
      await expectAllowed(t, lapse, theirs, `${OTHER_ISSUER} token allowed`)

      await revoke(t, lapse, { claim: 'sub', value: claims.sub, iss: OTHER_ISSUER, reason: 'only the other issuer' })
      await expectRevoked(t, lapse, theirs, 'the named issuer’s token is revoked')
      await expectAllowed(t, lapse, mine, 'the same sub from another issuer still works')

      await revoke(t, lapse, { claim: 'sid', value: claims.sid, reason: 'every issuer' })
      await expectRevoked(t, lapse, mine, 'any-issuer entry: first issuer revoked')
      await expectRevoked(t, lapse, theirs, 'any-issuer entry: second issuer revoked')
    })

    t.test('lifting a revocation lets the token through again', async (t) => {
      const claims = claimsFor(`lift-${cache}`)
      const token = await keys.mint(claims, { nowS: nowS() - 10 })
      await revoke(t, lapse, { claim: 'client_id', value: claims.client_id })
      await expectRevoked(t, lapse, token, 'revoked')
      t.equal((await admin(lapse, 'DELETE', `/v1/revocations/client_id/${claims.client_id}`)).status, 204)
      await expectAllowed(t, lapse, token, 'allowed after the lift')
    })
  })
}
