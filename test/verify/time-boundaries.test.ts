// Every time claim at its boundary, with the clock pinned to the millisecond: exp, nbf, iat and
// the lifetime policy, with and without clock skew, and through the verified-token cache.
import t, { type Test } from 'tap'
import { manualClock } from '../../src/core/clock.js'
import { bearer, runApp, sendAudited, type Lapse } from '../fixtures/app.js'
import { assertDenied, CHALLENGE } from '../fixtures/deny.js'
import { testKeys } from '../fixtures/keys.js'

const T0_S = Date.parse('2030-01-01T00:00:00Z') / 1000
/** The first and the last millisecond of one epoch second. */
const startOf = (s: number) => s * 1000
const endOf = (s: number) => s * 1000 + 999

interface Row {
  readonly name: string
  readonly env: Record<string, string>
  readonly claims: Record<string, unknown>
  readonly atMs: number
  readonly want: 'ok' | 'expired' | 'not_yet_valid' | 'lifetime_exceeds_policy'
}

const exp = T0_S + 300
const nbf = T0_S + 100
const rows: Row[] = [
  // exp: RFC 7519 §4.1.4, not accepted on or after exp.
  {
    name: 'one second before exp, its last millisecond (skew 0) → accepted',
    env: { LAPSE_CLOCK_SKEW: '0' },
    claims: { iat: T0_S, exp },
    atMs: endOf(exp - 1),
    want: 'ok',
  },
  {
    name: 'exactly at exp (skew 0) → expired',
    env: { LAPSE_CLOCK_SKEW: '0' },
    claims: { iat: T0_S, exp },
    atMs: startOf(exp),
    want: 'expired',
  },
  {
    name: 'exp + skew − 1 (skew 30) → accepted',
    env: { LAPSE_CLOCK_SKEW: '30' },
    claims: { iat: T0_S, exp },
    atMs: endOf(exp + 29),
    want: 'ok',
  },
  {
    name: 'exp + skew (skew 30) → expired',
    env: { LAPSE_CLOCK_SKEW: '30' },
    claims: { iat: T0_S, exp },
    atMs: startOf(exp + 30),
    want: 'expired',
  },
  // nbf
  {
    name: 'exactly at nbf (skew 0) → accepted',
    env: { LAPSE_CLOCK_SKEW: '0' },
    claims: { iat: T0_S, nbf, exp },
    atMs: startOf(nbf),
    want: 'ok',
  },
  {
    name: 'nbf − 1 (skew 0) → not yet valid',
    env: { LAPSE_CLOCK_SKEW: '0' },
    claims: { iat: T0_S, nbf, exp },
    atMs: endOf(nbf - 1),
    want: 'not_yet_valid',
  },
  {
    name: 'nbf − skew (skew 30) → accepted',
    env: { LAPSE_CLOCK_SKEW: '30' },
    claims: { iat: T0_S, nbf, exp },
    atMs: startOf(nbf - 30),
    want: 'ok',
  },
  {
    name: 'nbf − skew − 1 (skew 30) → not yet valid',
    env: { LAPSE_CLOCK_SKEW: '30' },
    claims: { iat: T0_S, nbf, exp },
    atMs: endOf(nbf - 31),
    want: 'not_yet_valid',
  },
  // iat in the future: a token from an issuer whose clock runs ahead.
  { name: 'iat = now (skew 0) → accepted', env: { LAPSE_CLOCK_SKEW: '0' }, claims: { iat: T0_S, exp }, atMs: startOf(T0_S), want: 'ok' },
  {
    name: 'iat one second ahead (skew 0) → not yet valid',
    env: { LAPSE_CLOCK_SKEW: '0' },
    claims: { iat: T0_S + 1, exp },
    atMs: endOf(T0_S),
    want: 'not_yet_valid',
  },
  {
    name: 'iat = now + skew (skew 30) → accepted',
    env: { LAPSE_CLOCK_SKEW: '30' },
    claims: { iat: T0_S + 30, exp },
    atMs: startOf(T0_S),
    want: 'ok',
  },
  {
    name: 'iat = now + skew + 1 (skew 30) → not yet valid',
    env: { LAPSE_CLOCK_SKEW: '30' },
    claims: { iat: T0_S + 31, exp },
    atMs: endOf(T0_S),
    want: 'not_yet_valid',
  },
  // Lifetime policy: exp − iat over LAPSE_MAX_TOKEN_LIFETIME is refused even while the token is fresh.
  {
    name: 'lifetime exactly at the default policy (3600) → accepted',
    env: {},
    claims: { iat: T0_S, exp: T0_S + 3600 },
    atMs: startOf(T0_S),
    want: 'ok',
  },
  {
    name: 'lifetime one second over the default policy → lifetime_exceeds_policy',
    env: {},
    claims: { iat: T0_S, exp: T0_S + 3601 },
    atMs: startOf(T0_S),
    want: 'lifetime_exceeds_policy',
  },
  {
    name: 'lifetime exactly at a configured policy (60) → accepted',
    env: { LAPSE_MAX_TOKEN_LIFETIME: '60' },
    claims: { iat: T0_S, exp: T0_S + 60 },
    atMs: startOf(T0_S),
    want: 'ok',
  },
  {
    name: 'lifetime one second over a configured policy (60) → lifetime_exceeds_policy',
    env: { LAPSE_MAX_TOKEN_LIFETIME: '60' },
    claims: { iat: T0_S, exp: T0_S + 61 },
    atMs: startOf(T0_S),
    want: 'lifetime_exceeds_policy',
  },
  {
    name: 'lifetime policy off (0) → a ten-day token is accepted',
    env: { LAPSE_MAX_TOKEN_LIFETIME: '0' },
    claims: { iat: T0_S, exp: T0_S + 864_000 },
    atMs: startOf(T0_S),
    want: 'ok',
  },
]

async function expectAnswer(t: Test, lapse: Lapse, token: string, want: Row['want'], upstreamCalls: number) {
  const { res, audit } = await sendAudited(lapse, '/orders/1', { headers: [bearer(token)] })
  if (want === 'ok') {
    t.equal(res.status, 200, 'accepted')
    t.equal(audit.reason, 'ok')
    t.equal(lapse.upstream.calls, upstreamCalls, 'forwarded')
  } else {
    assertDenied(t, lapse, res, audit, {
      status: 401,
      challenge: CHALLENGE.invalidToken,
      error: 'invalid_token',
      reason: want,
      upstreamCalls,
      token,
    })
  }
}

for (const row of rows) {
  t.test(row.name, async (t) => {
    const clock = manualClock(row.atMs)
    const lapse = await runApp(t, { clock, env: row.env })
    const token = await (await testKeys()).mint(row.claims, { nowS: T0_S })
    await expectAnswer(t, lapse, token, row.want, row.want === 'ok' ? 1 : 0)
  })
}

t.test('the verified-token cache still re-checks expiry: same token accepted at exp − 1, refused at exp, no re-sign', async (t) => {
  const clock = manualClock(endOf(exp - 1))
  const lapse = await runApp(t, { clock, env: { LAPSE_CLOCK_SKEW: '0' } })
  const token = await (await testKeys()).mint({ iat: T0_S, exp }, { nowS: T0_S })
  await expectAnswer(t, lapse, token, 'ok', 1)
  await expectAnswer(t, lapse, token, 'ok', 2)
  t.equal(lapse.running.deps.verify.cacheSize(), 1, 'the token was served from the cache')
  clock.set(startOf(exp))
  await expectAnswer(t, lapse, token, 'expired', 2)
  clock.advance(3_600_000)
  await expectAnswer(t, lapse, token, 'expired', 2)
})

t.test('the verified-token cache honours the skew edge: accepted at exp + skew − 1, refused at exp + skew', async (t) => {
  const clock = manualClock(startOf(T0_S))
  const lapse = await runApp(t, { clock, env: { LAPSE_CLOCK_SKEW: '30' } })
  const token = await (await testKeys()).mint({ iat: T0_S, exp }, { nowS: T0_S })
  await expectAnswer(t, lapse, token, 'ok', 1)
  clock.set(endOf(exp + 29))
  await expectAnswer(t, lapse, token, 'ok', 2)
  clock.set(startOf(exp + 30))
  await expectAnswer(t, lapse, token, 'expired', 2)
})

t.test('the verified-token cache re-checks nbf when the clock steps back', async (t) => {
  const clock = manualClock(startOf(nbf))
  const lapse = await runApp(t, { clock, env: { LAPSE_CLOCK_SKEW: '0' } })
  const token = await (await testKeys()).mint({ iat: T0_S, nbf, exp }, { nowS: T0_S })
  await expectAnswer(t, lapse, token, 'ok', 1)
  clock.set(endOf(nbf - 1))
  await expectAnswer(t, lapse, token, 'not_yet_valid', 1)
})

t.test('a cached token revoked after its first use is refused on its next request', async (t) => {
  const clock = manualClock(startOf(T0_S + 10))
  const lapse = await runApp(t, { clock })
  const token = await (await testKeys()).mint({ iat: T0_S, exp, jti: 'cached-then-revoked' }, { nowS: T0_S })
  await expectAnswer(t, lapse, token, 'ok', 1)
  const nowS = T0_S + 10
  await lapse.running.deps.revocations.put({
    claim: 'jti',
    value: 'cached-then-revoked',
    issuedBeforeS: nowS,
    reason: 'test',
    by: 'test',
    createdAtS: nowS,
    expiresAtS: nowS + 3630,
  })
  const { res, audit } = await sendAudited(lapse, '/orders/1', { headers: [bearer(token)] })
  assertDenied(t, lapse, res, audit, {
    status: 401,
    challenge: CHALLENGE.invalidToken,
    error: 'invalid_token',
    reason: 'revoked',
    upstreamCalls: 1,
    token,
  })
})
