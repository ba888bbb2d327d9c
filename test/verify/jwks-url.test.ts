// Keys from a JWKS URL served by a real HTTP server: rotation through the unknown-kid refetch,
// removal, an issuer that goes down, and a flood of made-up kids that must not hammer it.
import t, { type Test } from 'tap'
import { manualClock } from '../../src/pipeline/clock.js'
import { bearer, runApp, sendAudited, waitFor, type Lapse } from '../fixtures/app.js'
import { assertDenied, CHALLENGE } from '../fixtures/deny.js'
import { newKeyPair, serveJwks, testKeys, type KeyPair } from '../fixtures/keys.js'

const T0_MS = Date.parse('2030-01-01T00:00:00Z')
const T0_S = T0_MS / 1000
const COOLDOWN_MS = 30_000 // LAPSE_JWKS_COOLDOWN's default

async function startWithJwks(t: Test, published: readonly KeyPair[]) {
  const jwks = await serveJwks(published.map((p) => p.publicJwk))
  t.teardown(() => jwks.close())
  const clock = manualClock(T0_MS)
  const lapse = await runApp(t, { clock, env: { LAPSE_JWKS_FILE: undefined, LAPSE_JWKS_URL: jwks.url } })
  await waitFor(() => lapse.running.deps.keys.ready(), 'the first JWKS fetch', 10_000)
  t.equal(jwks.hits, 1, 'one fetch at start')
  return { jwks, clock, lapse }
}

const tokenFrom = async (pair: KeyPair, claims: Record<string, unknown> = {}) => (await testKeys()).mint(claims, { pair, nowS: T0_S })

async function expectAccepted(t: Test, lapse: Lapse, token: string, what: string) {
  const before = lapse.upstream.calls
  const { res, audit } = await sendAudited(lapse, '/orders/1', { headers: [bearer(token)] })
  t.equal(res.status, 200, what)
  t.equal(audit.reason, 'ok', `${what}: reason`)
  t.equal(lapse.upstream.calls, before + 1, `${what}: forwarded`)
}

async function expectUnknownKey(t: Test, lapse: Lapse, token: string) {
  const calls = lapse.upstream.calls
  const { res, audit } = await sendAudited(lapse, '/orders/1', { headers: [bearer(token)] })
  assertDenied(t, lapse, res, audit, { status: 401, challenge: CHALLENGE.invalidToken, error: 'invalid_token', reason: 'unknown_key', upstreamCalls: calls, token })
}

t.test('rotation: a token with a new kid is accepted once the issuer publishes it (unknown-kid refetch after the cooldown)', async (t) => {
  const a = await newKeyPair('ES256', 'key-a')
  const b = await newKeyPair('RS256', 'key-b')
  const { jwks, clock, lapse } = await startWithJwks(t, [a])
  await expectAccepted(t, lapse, await tokenFrom(a), 'old key')

  jwks.setKeys([a.publicJwk, b.publicJwk])
  // Within the cooldown of the last fetch the unknown kid is refused without asking the issuer.
  await expectUnknownKey(t, lapse, await tokenFrom(b))
  t.equal(jwks.hits, 1, 'no refetch inside the cooldown')

  clock.advance(COOLDOWN_MS)
  await expectAccepted(t, lapse, await tokenFrom(b), 'new key after the refetch')
  t.equal(jwks.hits, 2, 'exactly one refetch')
  await expectAccepted(t, lapse, await tokenFrom(a), 'old key still published')
  await expectAccepted(t, lapse, await tokenFrom(b), 'new key, no further fetch')
  t.equal(jwks.hits, 2)
})

t.test('removal: a key the issuer stopped publishing is refused after the refresh, cached tokens too', async (t) => {
  const a = await newKeyPair('ES256', 'key-a')
  const b = await newKeyPair('EdDSA', 'key-b')
  const { jwks, clock, lapse } = await startWithJwks(t, [a, b])
  const cached = await tokenFrom(a)
  await expectAccepted(t, lapse, cached, 'key a, first use')
  await expectAccepted(t, lapse, cached, 'key a, from the cache')
  t.equal(lapse.running.deps.verify.cacheSize(), 1)

  jwks.setKeys([b.publicJwk])
  clock.advance(COOLDOWN_MS)
  // Any unknown kid makes Lapse refetch; the new set no longer holds key a.
  await expectUnknownKey(t, lapse, await tokenFrom(await newKeyPair('ES256', 'never-published')))
  t.equal(jwks.hits, 2, 'the refetch happened')

  await expectUnknownKey(t, lapse, cached)
  await expectUnknownKey(t, lapse, await tokenFrom(a))
  await expectAccepted(t, lapse, await tokenFrom(b), 'key b still published')
})

t.test('JWKS endpoint down with keys cached → tokens still accepted, also after a failed refetch', async (t) => {
  const a = await newKeyPair('PS256', 'key-a')
  const { jwks, clock, lapse } = await startWithJwks(t, [a])
  await jwks.close()
  await expectAccepted(t, lapse, await tokenFrom(a), 'issuer down, keys cached')

  clock.advance(COOLDOWN_MS)
  // An unknown kid makes Lapse try the dead endpoint; the failure must not drop the old keys.
  await expectUnknownKey(t, lapse, await tokenFrom(await newKeyPair('ES256', 'unknown')))
  await expectAccepted(t, lapse, await tokenFrom(a), 'after the failed refetch')
  t.ok(lapse.running.deps.keys.ready(), 'still ready')
  const ready = await fetch(`${lapse.adminUrl}/readyz`)
  t.equal(ready.status, 200, '/readyz stays 200 on the last good key set')
})

t.test('a flood of unknown kids causes at most one refetch per cooldown', async (t) => {
  const a = await newKeyPair('ES256', 'key-a')
  const { jwks, clock, lapse } = await startWithJwks(t, [a])
  const keys = await testKeys()
  const flood = async (n: number) => {
    const tokens = await Promise.all(Array.from({ length: n }, (_, i) => keys.mint({}, { nowS: T0_S, header: { kid: `made-up-${i}-${Math.random()}` } })))
    const answers = await Promise.all(tokens.map((token) => sendAudited(lapse, '/orders/1', { headers: [bearer(token)] })))
    const refused = answers.filter(({ res, audit }) =>
      res.status === 401 && CHALLENGE.invalidToken.test(String(res.headers['www-authenticate'])) && res.json().error === 'invalid_token' && audit.reason === 'unknown_key')
    t.equal(refused.length, n, `all ${n} refused: 401, invalid_token challenge and body, reason unknown_key`)
  }

  await flood(50)
  t.equal(jwks.hits, 1, 'inside the cooldown of the start fetch: no refetch at all')
  clock.advance(COOLDOWN_MS)
  await flood(50)
  t.equal(jwks.hits, 2, 'one refetch for the whole flood')
  await flood(50)
  t.equal(jwks.hits, 2, 'none while the cooldown runs')
  clock.advance(COOLDOWN_MS - 1)
  await flood(20)
  t.equal(jwks.hits, 2, 'none a millisecond before the cooldown ends')
  clock.advance(1)
  await flood(20)
  t.equal(jwks.hits, 3, 'one more once it has')
  t.equal(lapse.upstream.calls, 0)
  await expectAccepted(t, lapse, await tokenFrom(a), 'the real key still works')
})
