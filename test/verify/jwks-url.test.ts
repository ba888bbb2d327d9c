// Keys from a JWKS URL served by a real HTTP server: rotation through the unknown-kid refetch,
// removal, an issuer that goes down or serves no usable key, and a flood of made-up kids that
// must not hammer it.
import t, { type Test } from 'tap'
import { manualClock } from '../../src/core/clock.js'
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
  assertDenied(t, lapse, res, audit, {
    status: 401,
    challenge: CHALLENGE.invalidToken,
    error: 'invalid_token',
    reason: 'unknown_key',
    upstreamCalls: calls,
    token,
  })
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
    const tokens = await Promise.all(
      Array.from({ length: n }, (_, i) => keys.mint({}, { nowS: T0_S, header: { kid: `made-up-${i}-${Math.random()}` } })),
    )
    const answers = await Promise.all(tokens.map((token) => sendAudited(lapse, '/orders/1', { headers: [bearer(token)] })))
    const refused = answers.filter(
      ({ res, audit }) =>
        res.status === 401 &&
        CHALLENGE.invalidToken.test(String(res.headers['www-authenticate'])) &&
        res.json().error === 'invalid_token' &&
        audit.reason === 'unknown_key',
    )
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

t.test('a refresh that yields no usable key is a failed refresh: the last good set keeps verifying, /readyz stays 200', async (t) => {
  const unusable = await newKeyPair('RS256', 'key-unusable')
  for (const [what, published] of [
    ['an empty set', []],
    ['only a key of an unsupported kind', [{ kty: 'XYZ', kid: 'odd', use: 'sig' }]],
    ['only a key of an algorithm not allowed', [{ ...unusable.publicJwk, alg: 'RS512' }]],
    ['only a key Lapse refuses (RSA exponent 1)', [{ ...unusable.publicJwk, e: 'AQ' }]],
  ] as const) {
    await t.test(what, async (t) => {
      const a = await newKeyPair('ES256', 'key-a')
      const { jwks, clock, lapse } = await startWithJwks(t, [a])
      const keys = lapse.running.deps.keys
      const cached = await tokenFrom(a)
      await expectAccepted(t, lapse, cached, 'before the glitch')
      const loadedAtMs = keys.stats().lastRefreshMs

      jwks.setKeys(published)
      clock.advance(COOLDOWN_MS)
      // An unknown kid makes Lapse refetch, and the issuer now serves nothing usable.
      await expectUnknownKey(t, lapse, await tokenFrom(await newKeyPair('ES256', 'never-published')))
      t.equal(jwks.hits, 2, 'the refetch happened')

      await expectAccepted(t, lapse, cached, 'a cached token, after the refresh')
      await expectAccepted(t, lapse, await tokenFrom(a), 'a fresh token of the last good set')
      t.equal((await fetch(`${lapse.adminUrl}/readyz`)).status, 200, '/readyz stays 200')
      t.match(keys.stats(), { keys: 1, lastError: 'ERR_JWKS_NO_USABLE_KEY', lastRefreshMs: loadedAtMs }, 'counted as a failed refresh')
      const warnings = lapse.lines.filter((l) => l.err === 'ERR_JWKS_NO_USABLE_KEY')
      t.equal(warnings.length, 1, 'one warning')
      t.match(warnings[0], { level: 40, keys: 1, msg: /keeping the last good key set/ })
    })
  }
})

t.test('no usable key at the first load → 503 keys_unavailable and /readyz 503, until the issuer publishes one', async (t) => {
  const a = await newKeyPair('ES256', 'key-a')
  const jwks = await serveJwks([])
  t.teardown(() => jwks.close())
  // The first fetch is retried after LAPSE_JWKS_COOLDOWN (at most 5 s) until one succeeds.
  const lapse = await runApp(t, {
    clock: manualClock(T0_MS),
    env: { LAPSE_JWKS_FILE: undefined, LAPSE_JWKS_URL: jwks.url, LAPSE_JWKS_COOLDOWN: '1' },
  })
  const keys = lapse.running.deps.keys
  await waitFor(() => keys.stats().lastError ?? keys.stats().lastRefreshMs, 'the first JWKS fetch', 10_000)

  const token = await tokenFrom(a)
  const { res, audit } = await sendAudited(lapse, '/orders/1', { headers: [bearer(token)] })
  assertDenied(t, lapse, res, audit, {
    status: 503,
    challenge: undefined,
    error: 'temporarily_unavailable',
    reason: 'keys_unavailable',
    token,
  })
  t.notOk(keys.ready(), 'not ready')
  t.equal((await fetch(`${lapse.adminUrl}/readyz`)).status, 503, '/readyz 503')
  t.equal(keys.stats().lastError, 'ERR_JWKS_NO_USABLE_KEY')

  jwks.setKeys([a.publicJwk])
  await waitFor(() => keys.ready(), 'the retried fetch to load the key', 10_000)
  await expectAccepted(t, lapse, token, 'once the issuer publishes a usable key')
  t.equal((await fetch(`${lapse.adminUrl}/readyz`)).status, 200, '/readyz 200')
})
