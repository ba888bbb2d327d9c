// decide() answers without a promise when nothing has to wait: a token from the verification
// cache, or a fresh one whose key an earlier lookup found, and a revocation set that answers
// in-process. Everything else returns a promise. Both
// paths must reach the same decisions, and both must report the revocation lookup as a step.
// Real signed tokens, the real verifier over the test key set, the real memory set.
import { randomUUID } from 'node:crypto'
import t, { type Test } from 'tap'
import { compileRoutes } from '../../src/authorize/routes.js'
import { manualClock } from '../../src/core/clock.js'
import { decide, type DecideDeps } from '../../src/decide/decide.js'
import type { Outcome, RevocationStore, Step, StepTracer, TokenRef } from '../../src/core/types.js'
import { createMemoryStore } from '../../src/revocation/memory-store.js'
import { createKeyResolver } from '../../src/verify/keys.js'
import { createVerifier } from '../../src/verify/verify-token.js'
import { AUDIENCE, defaultClaims, ISSUER, testKeys, type MintOpts } from '../fixtures/keys.js'
import { signRaw } from '../hardening/helpers.js'
import { createMemoryUseCounter } from '../../src/revocation/use-counter-memory.js'

const T0_MS = Date.parse('2030-01-01T00:00:00Z')
const T0_S = T0_MS / 1000
const ALGS = ['RS256', 'PS256', 'ES256', 'EdDSA']

async function setUp(t: Test, revocations?: RevocationStore) {
  const keys = await testKeys()
  const clock = manualClock(T0_MS)
  const resolver = createKeyResolver(
    { jwksFile: keys.jwksPath, refreshS: 300, cooldownS: 30, timeoutMs: 1000, algorithms: ALGS },
    { clock },
  )
  await resolver.start()
  t.teardown(() => resolver.close())
  const verify = createVerifier({
    policy: {
      issuers: new Set([ISSUER]),
      audiences: new Set([AUDIENCE]),
      clockSkewS: 30,
      maxLifetimeS: 3600,
      requiredClaims: ['iss', 'aud', 'exp', 'iat', 'jti', 'sub'],
      tokenTypes: undefined,
    },
    algorithms: ALGS,
    keys: resolver,
    clock,
    cacheSize: 100,
  })
  const memory = createMemoryStore({ clock })
  const deps: DecideDeps = {
    match: compileRoutes([
      { path: '/orders/**', scopes: ['orders:read'], public: false, on_revocation_unavailable: 'closed', cut_streams_at_expiry: false },
    ]),
    verify,
    revocations: revocations ?? memory,
    revocableClaims: ['jti', 'sub'],
    allowQueryToken: false,
    maxTokenBytes: 8192,
    clock,
    uses: createMemoryUseCounter({ clock }),
    clockSkewS: 30,
  }
  const mint = (claims: Record<string, unknown> = {}) =>
    keys.mint({ sub: 'ci-deployer', jti: 'job-1', exp: T0_S + 300, scope: 'orders:read', ...claims }, { nowS: T0_S })
  return { deps, memory, clock, mint }
}

/** A StepTracer that notes what it was asked to record. */
function noteSteps() {
  const seen: Array<{ how: 'run' | 'ran'; step: Step; result?: unknown }> = []
  const steps: StepTracer = {
    async run(step, work) {
      const result = await work()
      seen.push({ how: 'run', step, result })
      return result
    },
    ran(step, startedPerfMs, result) {
      if (!(startedPerfMs > 0 && startedPerfMs <= performance.now())) throw new Error("ran() needs the step's start on performance.now()")
      seen.push({ how: 'ran', step, result })
    },
  }
  return { steps, seen }
}

const input = (token: string, steps?: StepTracer, url = '/orders/7') => ({
  method: 'GET',
  url,
  authorization: [`Bearer ${token}`],
  rawHeaders: [],
  steps,
})
const reasonOf = (o: Outcome) => (o.decision.allow ? 'ok' : o.decision.reason)

t.test('a token seen before and the memory set: decided without a promise, as the first time was', async (t) => {
  const { deps, mint } = await setUp(t)
  const token = await mint()
  const first = decide(input(token), deps)
  t.ok(first instanceof Promise, 'the first request waits for its signature check')
  const firstOutcome = await first
  t.equal(reasonOf(firstOutcome), 'ok')
  const again = decide(input(token), deps)
  t.notOk(again instanceof Promise, 'the second is answered at once')
  const outcome = again as Outcome
  t.equal(reasonOf(outcome), 'ok')
  t.same(outcome.target, firstOutcome.target)
  t.equal(outcome.decision.identity, firstOutcome.decision.identity, 'the cached identity')
  t.type(outcome.revocationMs, 'number', 'the revocation set was asked')
})

t.test('a fresh token whose key is already known is checked without a promise, and refused as on the waiting path', async (t) => {
  const { deps, mint, clock } = await setUp(t)
  const now = (token: string) => {
    const o = decide(input(token), deps)
    if (o instanceof Promise) throw new Error('expected an answer without a promise')
    return o
  }
  const first = decide(input(await mint({ jti: 'first' })), deps)
  t.ok(first instanceof Promise, 'the first token of a key waits for the key lookup')
  t.equal(reasonOf(await first), 'ok')

  const fresh = now(await mint({ jti: 'second' }))
  t.equal(reasonOf(fresh), 'ok', 'another token, same key: verified at once')
  t.equal(fresh.decision.identity?.jti, 'second', "its own identity, not the first token's")

  // Each answer is compared with a new twin's: a decider over its own verifier and resolver,
  // which knows no key yet and so must wait.
  const both = async (token: string) => {
    const { deps: waiting } = await setUp(t)
    const slow = decide(input(token), waiting)
    t.ok(slow instanceof Promise, 'the twin waits')
    const [a, b] = [reasonOf(now(token)), reasonOf(await slow)]
    t.equal(a, b, `same answer on both paths: ${a}`)
    return a
  }
  const good = await mint({ jti: 'third' })
  const [head, body, sig] = good.split('.') as [string, string, string]
  const flipped = `${sig.slice(0, 10)}${sig[10] === 'A' ? 'B' : 'A'}${sig.slice(11)}`
  t.equal(await both(`${head}.${body}.${flipped}`), 'bad_signature')
  const other = await mint({ jti: 'fourth', sub: 'someone-else' })
  t.equal(await both(`${head}.${other.split('.')[1]}.${sig}`), 'bad_signature', 'a payload swapped under a good signature')
  t.equal(await both(await mint({ jti: 'fifth', aud: 'other-api' })), 'wrong_audience')
  t.equal(await both(await mint({ jti: 'sixth', scope: 'orders:write' })), 'insufficient_scope')
  t.equal(await both(await mint({ jti: 'seventh', exp: T0_S - 60 })), 'expired')
  const twin = (await setUp(t)).deps
  t.equal(reasonOf(now('not.a.token')), 'malformed', 'refused before any key is needed')
  t.equal(reasonOf(decide(input('not.a.token'), twin) as Outcome), 'malformed', 'by a decider that knows no key too, without a promise')
  clock.set((T0_S + 10) * 1000)
  t.equal(reasonOf(now(await mint({ jti: 'eighth' }))), 'ok', "still ok as time moves within the token's life")
})

t.test('every way a cached token can be refused is refused on the promise-free path too', async (t) => {
  const { deps, memory, clock, mint } = await setUp(t)
  const token = await mint()
  t.equal(reasonOf(await decide(input(token), deps)), 'ok')
  const now = (url?: string) => {
    const o = decide(input(token, undefined, url), deps)
    if (o instanceof Promise) throw new Error('expected an answer without a promise')
    return reasonOf(o)
  }
  t.equal(now('/billing/1'), 'no_route')
  const narrow = await mint({ jti: 'job-2', scope: 'orders:write' })
  t.equal(reasonOf(await decide(input(narrow), deps)), 'insufficient_scope')
  const cachedNarrow = decide(input(narrow), deps)
  t.notOk(cachedNarrow instanceof Promise)
  t.equal(reasonOf(cachedNarrow as Outcome), 'insufficient_scope')

  await memory.put({
    claim: 'sub',
    value: 'ci-deployer',
    issuedBeforeS: T0_S,
    reason: 'test',
    by: 'test',
    createdAtS: T0_S,
    expiresAtS: T0_S + 3630,
  })
  t.equal(now(), 'revoked', 'a revocation after the first use applies at once')
  await memory.lift('sub', 'ci-deployer')
  t.equal(now(), 'ok', 'and its lift too')

  clock.set((T0_S + 300 + 30) * 1000)
  t.equal(now(), 'expired', 'expiry is checked on every request, cache or not')
})

t.test("the verification cache finds a token by its signature's tail, but a hit needs the whole token", async (t) => {
  const { deps, mint } = await setUp(t)
  const token = await mint()
  t.equal(reasonOf(await decide(input(token), deps)), 'ok')
  t.ok(deps.verify.knows(token), 'cached')
  const [head, body, sig] = token.split('.') as [string, string, string]
  // Same last 32 characters as the cached token: a payload swapped under its signature, and a
  // signature changed away from its tail.
  const swapped = `${head}.${(await mint({ sub: 'someone-else' })).split('.')[1]}.${sig}`
  const bent = `${head}.${body}.${sig[0] === 'A' ? 'B' : 'A'}${sig.slice(1)}`
  for (const [name, forged] of [
    ['payload swapped', swapped],
    ['signature bent', bent],
  ] as const) {
    t.equal(forged.slice(-32), token.slice(-32), `${name}: shares the cached token's fingerprint`)
    t.notOk(deps.verify.knows(forged), `${name}: not known`)
    t.equal(reasonOf(await decide(input(forged), deps)), 'bad_signature', `${name}: verified on its own, refused`)
  }
  const again = decide(input(token), deps)
  t.notOk(again instanceof Promise, 'the cached token is still a hit')
  t.equal(reasonOf(again as Outcome), 'ok')
  t.equal(deps.verify.cacheSize(), 1, 'the forgeries took no place in the cache')
})

t.test('a header is kept parsed only once a token carrying it verified, and a kept header changes no answer', async (t) => {
  const { deps } = await setUp(t)
  const keys = await testKeys()
  const fresh = (claims: Record<string, unknown> = {}, opts: MintOpts = {}) =>
    keys.mint({ jti: `h-${randomUUID()}`, ...claims }, { nowS: T0_S, ...opts })
  const es = await fresh()
  const [esHead, esBody, esSig] = es.split('.') as [string, string, string]
  // A forged signature under the real header: refused, and the header is not kept.
  const bent = `${esHead}.${esBody}.${esSig[0] === 'A' ? 'B' : 'A'}${esSig.slice(1)}`
  t.equal(reasonOf(await decide(input(bent), deps)), 'bad_signature')
  t.equal(deps.verify.headerCacheSize(), 0, 'a header whose token failed is not kept')
  t.equal(reasonOf(await decide(input(es), deps)), 'ok')
  t.equal(deps.verify.headerCacheSize(), 1, 'kept once its token verified')

  // Later tokens with that header: each still checked in full, from claims to signature.
  t.equal(reasonOf(await decide(input(await fresh()), deps)), 'ok', 'another token, same header')
  t.equal(reasonOf(await decide(input(bent), deps)), 'bad_signature', 'the forgery is still refused')
  t.equal(reasonOf(await decide(input(await fresh({ exp: T0_S - 60 })), deps)), 'expired', 'claims are checked as before')
  const rs = await fresh({}, { alg: 'RS256' })
  const [rsHead, rsBody, rsSig] = rs.split('.') as [string, string, string]
  t.equal(
    reasonOf(await decide(input(`${esHead}.${rsBody}.${rsSig}`), deps)),
    'bad_signature',
    'an RS256 signature under the kept ES256 header',
  )
  t.equal(reasonOf(await decide(input(rs), deps)), 'ok', 'a header differing from the kept one is read on its own')
  t.equal(reasonOf(await decide(input(`${rsHead}.${esBody}.${esSig}`), deps)), 'bad_signature', 'and the other way round')
  t.equal(deps.verify.headerCacheSize(), 2, 'one entry per header')

  // Headers that name the kept key and alg but say more: each read on its own.
  const pair = keys.pairs.ES256
  const claims = JSON.stringify(defaultClaims(T0_S))
  const typed = await signRaw(pair, JSON.stringify({ alg: 'ES256', kid: pair.kid, typ: 'JWT' }), claims)
  t.equal(reasonOf(await decide(input(typed), deps)), 'ok', 'one more member, accepted on its own reading')
  const critical = await signRaw(pair, JSON.stringify({ alg: 'ES256', kid: pair.kid, crit: ['exp'], exp: 1 }), claims)
  t.equal(reasonOf(await decide(input(critical), deps)), 'malformed', 'crit: refused')
  const repeated = await signRaw(pair, `{"alg":"ES256","kid":${JSON.stringify(pair.kid)},"kid":${JSON.stringify(pair.kid)}}`, claims)
  t.equal(reasonOf(await decide(input(repeated), deps)), 'malformed', 'a repeated member: refused')
  t.equal(deps.verify.headerCacheSize(), 3, 'only the header that verified was added')
})

t.test('a cached token is still extracted by the rules: spelling, stray characters, length', async (t) => {
  const { deps, mint } = await setUp(t)
  const token = await mint()
  t.equal(reasonOf(await decide(input(token), deps)), 'ok')
  const withHeader = (authorization: string, d: DecideDeps = deps) =>
    decide({ method: 'GET', url: '/orders/7', authorization: [authorization], rawHeaders: [] }, d) as Outcome
  t.equal(reasonOf(withHeader(`bearer ${token}`)), 'ok', 'the scheme in any case')
  t.equal(reasonOf(withHeader(`Bearer   ${token}`)), 'ok', 'several spaces')
  t.equal(reasonOf(withHeader(`Bearer ${token} `)), 'malformed', 'a trailing space')
  t.equal(reasonOf(withHeader(`Bearer ${token},x`)), 'malformed', 'a character a bearer token cannot hold')
  t.equal(
    reasonOf(withHeader(`Bearer ${token}`, { ...deps, maxTokenBytes: token.length - 1 })),
    'malformed',
    'over the length limit, though cached',
  )
  t.equal(reasonOf(withHeader(`Bearer ${token}`, { ...deps, maxTokenBytes: token.length })), 'ok', 'at the limit')
})

t.test('the revocation lookup is reported as a step on both paths', async (t) => {
  const { deps, mint } = await setUp(t)
  const token = await mint()
  const first = noteSteps()
  await decide(input(token, first.steps), deps)
  t.same(
    first.seen,
    [{ how: 'ran', step: 'revocation_lookup', result: false }],
    'the memory set answers in-process even when the signature was checked',
  )
  const second = noteSteps()
  decide(input(token, second.steps), deps)
  t.same(second.seen, [{ how: 'ran', step: 'revocation_lookup', result: false }])
})

t.test('a set that cannot answer in-process is asked and waited for; one whose quick answer throws is asked too', async (t) => {
  const asked: TokenRef[] = []
  let verdict: boolean | Error = false
  // A set with the contract's shape that answers only by promise, as Redis without its cache does.
  const slow: Pick<RevocationStore, 'isRevoked' | 'isRevokedNow'> = {
    async isRevoked(ref) {
      asked.push(ref)
      if (verdict instanceof Error) throw verdict
      return verdict
    },
    isRevokedNow: () => undefined,
  }
  const { deps, mint } = await setUp(t, slow as RevocationStore)
  const token = await mint()
  await decide(input(token), deps)
  const noted = noteSteps()
  const pending = decide(input(token, noted.steps), deps)
  t.ok(pending instanceof Promise, 'a cached token still waits for the set')
  t.equal(reasonOf(await pending), 'ok')
  t.same(noted.seen, [{ how: 'run', step: 'revocation_lookup', result: false }])
  t.equal(asked[0], asked[1], 'one TokenRef per cached token, so a set can keep its keys on it')

  verdict = true
  t.equal(reasonOf(await decide(input(token), deps)), 'revoked')
  verdict = new Error('down')
  t.equal(reasonOf(await decide(input(token), deps)), 'revocation_unavailable', 'fail closed')

  slow.isRevokedNow = () => {
    throw new Error('broken quick path')
  }
  verdict = false
  const fallback = decide(input(token), deps)
  t.ok(fallback instanceof Promise)
  t.equal(reasonOf(await fallback), 'ok', 'a throwing quick answer falls back to asking')
})

t.test('a TokenRef kept on an identity is not reused for other revocable claims', async (t) => {
  const asked: TokenRef[] = []
  const recording = {
    async isRevoked(ref: TokenRef) {
      asked.push(ref)
      return false
    },
  } as unknown as RevocationStore
  const { deps, mint } = await setUp(t, recording)
  const token = await mint({ task: 'MIGR-1' })
  await decide(input(token), deps)
  await decide(input(token), { ...deps, revocableClaims: ['task'] })
  t.same(asked[0]!.values, [
    ['jti', 'job-1'],
    ['sub', 'ci-deployer'],
  ])
  t.same(asked[1]!.values, [['task', 'MIGR-1']])
})
