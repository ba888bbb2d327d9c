// Resource attacks: floods of distinct invalid tokens must not grow memory without bound (only
// valid tokens are cached, and that cache is bounded) and must not turn Lapse into a load
// generator against the issuer's JWKS endpoint (at most one refetch per cooldown, coalesced).
import { setFlagsFromString } from 'node:v8'
import { runInNewContext } from 'node:vm'
import t from 'tap'
import { manualClock } from '../../src/core/clock.js'
import { createKeyResolver } from '../../src/verify/keys.js'
import { createVerifier } from '../../src/verify/verify-token.js'
import { bearer, runApp, send, waitFor } from '../fixtures/app.js'
import { AUDIENCE, ISSUER, defaultClaims, newKeyPair, serveJwks, testKeys } from '../fixtures/keys.js'
import { b64url, signRaw } from './helpers.js'

const T0_MS = Date.parse('2030-01-01T00:00:00Z')
const T0_S = T0_MS / 1000

setFlagsFromString('--expose-gc')
const gc = runInNewContext('gc') as () => void
const heapMiB = () => {
  gc()
  return process.memoryUsage().heapUsed / 1048576
}

async function verifierOverTestKeys(cacheSize: number) {
  const keys = await testKeys()
  const clock = manualClock(T0_MS)
  const resolver = createKeyResolver(
    { jwksFile: keys.jwksPath, refreshS: 300, cooldownS: 30, timeoutMs: 1000, algorithms: ['RS256', 'PS256', 'ES256', 'EdDSA'] },
    { clock },
  )
  await resolver.start()
  const verify = createVerifier({
    policy: {
      issuers: new Set([ISSUER]),
      audiences: new Set([AUDIENCE]),
      clockSkewS: 30,
      maxLifetimeS: 3600,
      requiredClaims: ['iss', 'aud', 'exp', 'iat', 'jti', 'sub'],
      tokenTypes: undefined,
    },
    algorithms: ['RS256', 'PS256', 'ES256', 'EdDSA'],
    keys: resolver,
    clock,
    cacheSize,
  })
  return { keys, verify, resolver }
}

t.test('8000 distinct invalid tokens: nothing cached, memory flat', async (t) => {
  const { keys, verify, resolver } = await verifierOverTestKeys(1000)
  t.teardown(() => resolver.close())
  const good = await keys.mint({}, { nowS: T0_S })
  const [h, , s] = good.split('.') as [string, string, string]
  const attacker = await newKeyPair('ES256', keys.pairs.ES256.kid)
  const attackerToken = await signRaw(attacker, JSON.stringify({ alg: 'ES256', kid: attacker.kid }), JSON.stringify(defaultClaims(T0_S)))
  const [ah, ap] = attackerToken.split('.') as [string, string, string]
  // Each token is distinct: a fresh jti under the real header and signature (bad signature), an
  // unknown kid, or garbage. Distinct tokens defeat any cache keyed by token.
  const variants = [
    (i: number) => `${h}.${b64url(JSON.stringify({ ...defaultClaims(T0_S), jti: `flood-${i}` }))}.${s}`,
    (i: number) => `${b64url(JSON.stringify({ alg: 'ES256', kid: `made-up-${i}` }))}.${ap}.${s}`,
    (i: number) => `${ah}.${ap}.${b64url(`garbage-${i}-${'x'.repeat(48)}`)}`,
    (i: number) => `not-a-jwt-${i}`,
  ]
  const reasons = new Map<string, number>()
  const flood = async (n: number, offset: number) => {
    for (let i = 0; i < n; i++) {
      const result = await verify(variants[i % variants.length]!(offset + i))
      if (!('allow' in result)) throw new Error('an invalid token was accepted')
      reasons.set(result.reason, (reasons.get(result.reason) ?? 0) + 1)
    }
  }
  await flood(1000, 0) // warm up: lazy key imports, JIT
  const before = heapMiB()
  await flood(8000, 1000)
  const grown = heapMiB() - before
  t.equal(verify.cacheSize(), 0, 'the verified-token cache holds no invalid token')
  t.equal(verify.headerCacheSize(), 0, 'nor does the cache of verified headers, though one flood reused a real header')
  t.ok(grown < 3, `heap grew ${grown.toFixed(1)} MiB over 8000 distinct invalid tokens`)
  t.same([...reasons.keys()].sort(), ['bad_signature', 'malformed', 'unknown_key'], 'each kind refused for its reason')
})

t.test('distinct valid tokens: the cache stays within LAPSE_TOKEN_CACHE_SIZE', async (t) => {
  const { keys, verify, resolver } = await verifierOverTestKeys(200)
  t.teardown(() => resolver.close())
  for (let i = 0; i < 500; i++) {
    const result = await verify(await keys.mint({ jti: `valid-${i}` }, { nowS: T0_S }))
    if ('allow' in result) throw new Error(`a valid token was refused: ${result.reason}`)
    if (verify.cacheSize() > 200) break
  }
  t.equal(verify.cacheSize(), 200, 'bounded at the configured size, oldest evicted first')
  t.equal(verify.headerCacheSize(), 1, 'their one header is kept once')
})

t.test('a flood of unknown kids triggers at most one JWKS refetch per cooldown', async (t) => {
  const keys = await testKeys()
  const jwks = await serveJwks(keys.jwks.keys)
  t.teardown(() => jwks.close())
  const clock = manualClock(T0_MS)
  const lapse = await runApp(t, {
    clock,
    routes: [{ path: '/orders/**', scopes: ['orders:read'] }],
    env: { LAPSE_JWKS_FILE: undefined, LAPSE_JWKS_URL: jwks.url, LAPSE_JWKS_COOLDOWN: '30' },
  })
  await waitFor(() => lapse.running.deps.keys.ready(), 'the first key set')
  t.equal(jwks.hits, 1, 'one fetch at start')

  const attacker = await newKeyPair('ES256')
  const claims = JSON.stringify(defaultClaims(T0_S))
  const floodUnknownKids = async (n: number, tag: string) => {
    const statuses = new Map<number, number>()
    for (let i = 0; i < n; i += 50) {
      const batch = await Promise.all(
        Array.from({ length: Math.min(50, n - i) }, async (_, j) => {
          const token = await signRaw(attacker, JSON.stringify({ alg: 'ES256', kid: `${tag}-${i + j}` }), claims)
          return (await send(`${lapse.url}/orders/1`, { headers: [bearer(token)] })).status
        }),
      )
      for (const status of batch) statuses.set(status, (statuses.get(status) ?? 0) + 1)
    }
    return statuses
  }

  // Still inside the cooldown of the start-up fetch: no refetch at all.
  t.same([...(await floodUnknownKids(300, 'a'))], [[401, 300]], '300 unknown kids inside the cooldown: all 401')
  t.equal(jwks.hits, 1, 'no refetch inside the cooldown')

  // Past the cooldown: the first unknown kid refetches once; concurrent ones share that fetch.
  clock.advance(31_000)
  t.same([...(await floodUnknownKids(600, 'b'))], [[401, 600]], '600 unknown kids past the cooldown: all 401')
  t.equal(jwks.hits, 2, 'exactly one refetch for the whole flood')

  // Distinct tokens with a known kid and a bad signature never refetch.
  clock.advance(31_000)
  const real = await keys.mint({}, { nowS: T0_S })
  const [h, , s] = real.split('.') as [string, string, string]
  for (let i = 0; i < 300; i += 50) {
    await Promise.all(
      Array.from({ length: 50 }, (_, j) =>
        send(`${lapse.url}/orders/1`, {
          headers: [bearer(`${h}.${b64url(JSON.stringify({ ...defaultClaims(T0_S), jti: `x-${i + j}` }))}.${s}`)],
        }),
      ),
    )
  }
  t.equal(jwks.hits, 2, 'bad signatures under a known kid: no refetch')
  t.equal(lapse.running.deps.verify.cacheSize(), 0, 'and nothing cached')
  t.equal(lapse.upstream.calls, 0, 'upstream received nothing')
})
