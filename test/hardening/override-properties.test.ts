// A request that names other methods is allowed only if the request would be allowed under each
// of them alone, whatever the rule table, the scopes granted and the spelling of the override;
// and when refused, its answer is the answer of the first method that fails alone.
import fc from 'fast-check'
import t from 'tap'
import { compileRoutes } from '../../src/authorize/routes.js'
import { routeSchema, type RouteSetting } from '../../src/config/schema.js'
import { manualClock } from '../../src/core/clock.js'
import { decide, type DecideDeps } from '../../src/decide/decide.js'
import type { Identity, Outcome, RevocationStore } from '../../src/core/types.js'
import type { Verifier } from '../../src/verify/verify-token.js'
import { createMemoryUseCounter } from '../../src/revocation/use-counter-memory.js'

const RUNS = { numRuns: 1500 }
const METHODS = ['GET', 'HEAD', 'POST', 'PUT', 'DELETE']
const SCOPES = ['r', 'w', 'd']

const ruleSetting = fc
  .record({
    path: fc.constantFrom('/a/**', '/a/b', '/**'),
    methods: fc.option(fc.subarray(METHODS, { minLength: 1 })),
    public: fc.boolean(),
    scopes: fc.subarray(SCOPES),
  })
  .map(
    ({ path, methods, public: isPublic, scopes }): RouteSetting =>
      routeSchema.parse({ path, ...(methods ? { methods } : {}), public: isPublic, scopes: isPublic ? [] : scopes }),
  )
/** Tables that boot: a duplicate is a start error, not a table to decide with. */
const ruleTable = fc.array(ruleSetting, { maxLength: 5 }).filter((rules) => {
  try {
    compileRoutes(rules)
    return true
  } catch {
    return false
  }
})

/** One way of naming `methods` as overrides: a header (any carrier and spelling), a list, the query. */
const carrier = fc.constantFrom('X-HTTP-Method-Override', 'x-http-method', 'X_Method_Override', 'x.http.method.override', 'query', 'query;')
const spelled = (m: string) => fc.constantFrom(m, m.toLowerCase())

const identityWith = (scopes: readonly string[]): Identity => ({
  iss: 'i',
  sub: 's',
  clientId: undefined,
  jti: 'j',
  iatS: 0,
  expS: 2e9,
  scopes: new Set(scopes),
  claims: {},
  memo: {},
})
const verifierFor = (identity: Identity) => ({ check: () => identity, knows: () => false }) as unknown as Verifier
const revocations = { isRevoked: async () => false, isRevokedNow: () => false } as unknown as RevocationStore

const answerOf = (o: Outcome) => (o.decision.allow ? 'allow' : `${o.decision.reason} ${o.decision.requiredScopes?.join(' ') ?? ''}`)

t.test("decided under every named method: allowed iff each alone is allowed; else the first failure's answer", async (t) => {
  await fc.assert(
    fc.asyncProperty(
      ruleTable,
      fc.constantFrom(...METHODS),
      fc
        .array(fc.constantFrom(...METHODS), { minLength: 1, maxLength: 3 })
        .chain((ms) => fc.tuple(fc.constant(ms), fc.tuple(...ms.map(spelled)))),
      carrier,
      fc.subarray(SCOPES),
      fc.boolean(),
      fc.constantFrom('/a/b', '/a/c', '/x'),
      async (rules, own, [named, spellings], how, granted, withToken, path) => {
        const deps: DecideDeps = {
          match: compileRoutes(rules),
          verify: verifierFor(identityWith(granted)),
          revocations,
          revocableClaims: ['jti'],
          allowQueryToken: false,
          maxTokenBytes: 8192,
          clock: manualClock(0),
          uses: createMemoryUseCounter({ clock: manualClock(0) }),
          clockSkewS: 30,
        }
        const authorization = withToken ? ['Bearer abc.def.ghi'] : undefined
        const alone = (m: string) => decide({ method: m, url: path, authorization, rawHeaders: [] }, deps) as Outcome
        let url = path
        const rawHeaders: string[] = []
        if (how === 'query') url += `?x=1&${spellings.map((s) => `_method=${s}`).join('&')}`
        else if (how === 'query;') url += `?x=1;${spellings.map((s) => `_method=${s}`).join(';')}`
        else rawHeaders.push(how, spellings.join(', '))
        const got = (await decide({ method: own, url, authorization, rawHeaders }, deps)) as Outcome
        const each = [own, ...named].map(alone)
        const firstFailure = each.find((o) => !o.decision.allow)
        const want = firstFailure === undefined ? 'allow' : answerOf(firstFailure)
        // Without a token, a protected method alone says missing_token: so does the whole request.
        return answerOf(got) === want
      },
    ),
    RUNS,
  )
  t.pass('an override never allows what one of its methods alone would refuse, and answers as that method')
})

t.test('a request naming several methods is verified, and the revocation set asked, once', async (t) => {
  const rules = [{ path: '/a/**', scopes: ['r'] }].map((r) => routeSchema.parse(r))
  let checks = 0
  let lookups = 0
  const identity = identityWith(['r'])
  const verify = { check: () => (checks++, identity), knows: () => false } as unknown as Verifier
  const counted = { isRevoked: async () => (lookups++, false), isRevokedNow: () => (lookups++, false) } as unknown as RevocationStore
  const deps: DecideDeps = {
    match: compileRoutes(rules),
    verify,
    revocations: counted,
    revocableClaims: ['jti'],
    allowQueryToken: false,
    maxTokenBytes: 8192,
    clock: manualClock(0),
    uses: createMemoryUseCounter({ clock: manualClock(0) }),
    clockSkewS: 30,
  }
  const rawHeaders = ['X-HTTP-Method-Override', 'PUT, DELETE', 'X-Method-Override', 'PATCH']
  const got = (await decide(
    { method: 'POST', url: '/a/b?_method=GET', authorization: ['Bearer abc.def.ghi'], rawHeaders },
    deps,
  )) as Outcome
  t.equal(got.decision.allow, true, 'allowed under all five methods')
  t.equal(checks, 1, 'one verification')
  t.equal(lookups, 1, 'one revocation lookup')
})
