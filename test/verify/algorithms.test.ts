// The algorithm allowlist, end to end: every asymmetric algorithm of the default list verifies
// with a real key; `none` and HMAC keyed with a public key never pass, however they are dressed.
import { createPublicKey } from 'node:crypto'
import { SignJWT } from 'jose'
import t, { type Test } from 'tap'
import { manualClock } from '../../src/core/clock.js'
import { bearer, runApp, sendAudited } from '../fixtures/app.js'
import { assertDenied, CHALLENGE } from '../fixtures/deny.js'
import { ALGS, defaultClaims, testKeys } from '../fixtures/keys.js'

const T0_MS = Date.parse('2030-01-01T00:00:00Z')
const T0_S = T0_MS / 1000
const start = (t: Test, env: Record<string, string> = {}) => runApp(t, { clock: manualClock(T0_MS), env })
const b64 = (v: unknown) => Buffer.from(JSON.stringify(v)).toString('base64url')

for (const alg of ALGS) {
  t.test(`${alg} token from the JWKS → accepted, upstream sees the subject`, async (t) => {
    const keys = await testKeys()
    const lapse = await start(t)
    const token = await keys.mint({ sub: `user-${alg}` }, { alg, nowS: T0_S })
    const { res, audit } = await sendAudited(lapse, '/orders/1', { headers: [bearer(token)] })
    t.equal(res.status, 200)
    t.equal(audit.reason, 'ok')
    t.equal(lapse.upstream.requests[0]?.headers['x-auth-subject'], `user-${alg}`)
  })
}

t.test('token signed by one algorithm but labelled with another of the same key family → refused', async (t) => {
  // RS256 signature under a PS256 header naming the RSA key: the key is RS256-only in the JWKS.
  const keys = await testKeys()
  const lapse = await start(t)
  const rs = await keys.mint({}, { alg: 'RS256', nowS: T0_S })
  const [, payload, sig] = rs.split('.')
  const header = b64({ alg: 'PS256', kid: keys.pairs.RS256.kid })
  const token = `${header}.${payload}.${sig}`
  const { res, audit } = await sendAudited(lapse, '/orders/1', { headers: [bearer(token)] })
  // The JWKS entry is pinned to RS256, so no key serves a PS256 header under that kid.
  assertDenied(t, lapse, res, audit, {
    status: 401,
    challenge: CHALLENGE.invalidToken,
    error: 'invalid_token',
    reason: 'unknown_key',
    token,
  })
})

t.test('HS256 signed with the RSA public key as the secret → 401 invalid_token, upstream untouched', async (t) => {
  const keys = await testKeys()
  const rsa = keys.pairs.RS256
  const pem = createPublicKey({ key: rsa.publicJwk as never, format: 'jwk' }).export({ type: 'spki', format: 'pem' }) as string
  const der = createPublicKey({ key: rsa.publicJwk as never, format: 'jwk' }).export({ type: 'spki', format: 'der' })
  const secrets: Array<[string, Uint8Array]> = [
    ['PEM text', new TextEncoder().encode(pem)],
    ['DER bytes', new Uint8Array(der)],
    ['JWK JSON', new TextEncoder().encode(JSON.stringify(rsa.publicJwk))],
  ]
  for (const [what, secret] of secrets) {
    const token = await new SignJWT(defaultClaims(T0_S)).setProtectedHeader({ alg: 'HS256', kid: rsa.kid }).sign(secret)
    await t.test(`${what}, default algorithms → alg_not_allowed`, async (t) => {
      const lapse = await start(t)
      const { res, audit } = await sendAudited(lapse, '/orders/1', { headers: [bearer(token)] })
      assertDenied(t, lapse, res, audit, {
        status: 401,
        challenge: CHALLENGE.invalidToken,
        error: 'invalid_token',
        reason: 'alg_not_allowed',
        token,
      })
    })
    await t.test(`${what}, even with HS256 allowed → the RSA key never serves as an HMAC secret`, async (t) => {
      const lapse = await start(t, { LAPSE_ALGORITHMS: 'RS256,HS256' })
      const { res, audit } = await sendAudited(lapse, '/orders/1', { headers: [bearer(token)] })
      assertDenied(t, lapse, res, audit, {
        status: 401,
        challenge: CHALLENGE.invalidToken,
        error: 'invalid_token',
        reason: 'unknown_key',
        token,
      })
    })
  }
})

t.test('alg none → 401 invalid_token, upstream untouched', async (t) => {
  const keys = await testKeys()
  const payload = b64(defaultClaims(T0_S))
  const cases: Array<[string, string, string]> = [
    // An unsecured JWS has an empty signature: it is not a signed JWT at all.
    ['none, empty signature', `${b64({ alg: 'none' })}.${payload}.`, 'malformed'],
    ['none with a kid, empty signature', `${b64({ alg: 'none', kid: keys.pairs.ES256.kid })}.${payload}.`, 'malformed'],
    ['none with a made-up signature', `${b64({ alg: 'none' })}.${payload}.c2lnbmF0dXJl`, 'alg_not_allowed'],
    ['None (other case)', `${b64({ alg: 'None', kid: keys.pairs.ES256.kid })}.${payload}.c2lnbmF0dXJl`, 'alg_not_allowed'],
    ['NONE (other case)', `${b64({ alg: 'NONE' })}.${payload}.c2lnbmF0dXJl`, 'alg_not_allowed'],
    ['no alg at all', `${b64({ kid: keys.pairs.ES256.kid })}.${payload}.c2lnbmF0dXJl`, 'alg_not_allowed'],
  ]
  for (const [what, token, reason] of cases) {
    await t.test(what, async (t) => {
      const lapse = await start(t)
      const { res, audit } = await sendAudited(lapse, '/orders/1', { headers: [bearer(token)] })
      assertDenied(t, lapse, res, audit, { status: 401, challenge: CHALLENGE.invalidToken, error: 'invalid_token', reason })
    })
  }
})

t.test('LAPSE_ALGORITHMS=none is refused at start, naming the setting', async (t) => {
  const { loadConfig } = await import('../../src/config/load.js')
  const keys = await testKeys()
  t.throws(
    () =>
      loadConfig({
        LAPSE_UPSTREAM: 'http://127.0.0.1:1',
        LAPSE_ISSUER: 'i',
        LAPSE_AUDIENCE: 'a',
        LAPSE_JWKS_FILE: keys.jwksPath,
        LAPSE_ALGORITHMS: 'ES256,none',
      }),
    { code: 'ERR_CONFIG_INVALID', message: /^LAPSE_ALGORITHMS: / },
  )
})
