// Property-based tests (fast-check) for the pure stages an attacker's bytes flow through before
// anything is forwarded: the bearer extractor, the path normalizer, the route matcher and the
// headers sent upstream.
// The property that matters: for any request, the rule that decided it is the rule that governs
// the path the upstream actually receives, and reads.
import fc from 'fast-check'
import t from 'tap'
import { compileRoutes } from '../../src/authorize/routes.js'
import { routeSchema, type RouteSetting } from '../../src/config/schema.js'
import { extractBearer } from '../../src/extract/bearer.js'
import { normalizeTarget } from '../../src/target/request-target.js'
import { manualClock } from '../../src/core/clock.js'
import { decide, type DecideDeps } from '../../src/decide/decide.js'
import type { Identity, RevocationStore, Target } from '../../src/core/types.js'
import { toHeaderValue, upstreamHeaders } from '../../src/http/headers.js'
import { repeatsMember } from '../../src/verify/duplicate-keys.js'
import type { Verifier } from '../../src/verify/verify-token.js'
import { createMemoryUseCounter } from '../../src/revocation/use-counter-memory.js'

const RUNS = { numRuns: 2000 }

// Pieces attackers assemble paths from: separators, dot segments in every encoding, delimiters
// upstreams disagree on, overlong and fullwidth forms, controls, double encodings.
const PIECES = [
  '/',
  '/',
  '/',
  '.',
  '..',
  '%2e',
  '%2E',
  '.%2e',
  '%2e%2e',
  '%2f',
  '%2F',
  '%5c',
  '%5C',
  '\\',
  ';',
  '%3b',
  '%3B',
  'admin',
  'public',
  'ADMIN',
  'Admin',
  'orders',
  'a',
  'b',
  'c',
  '%61',
  '%41',
  '%7e',
  '%7E',
  '~',
  '-',
  '_',
  '%2d',
  '%C0%AE',
  '%c0%af',
  '%E0%80%AE',
  '%00',
  '%0a',
  '%0D',
  '%7f',
  '%25',
  '%252e',
  '%252f',
  '%EF%BC%8E',
  '%EF%BC%8F',
  '%E2%80%A5',
  '%C3%A9',
  '%E2%82%AC',
  '%F0%9F%98%80',
  '%ff',
  '%',
  '%2',
  '%zz',
  '%u002e',
  ' ',
  '\t',
  '#',
  '*',
  '@',
  ':',
  '!',
  '$',
  '&',
  "'",
  '(',
  ')',
  '+',
  ',',
  '=',
  '|',
  '"',
  'é',
  '\u0000',
  // The characters a segment may hold raw, in every spelling, and the rule literals made of them
  // (a Google-style custom method, a "me" alias): `jobs%3Apurge` must be decided as `jobs:purge`.
  '%3A',
  '%3a',
  '%40',
  '%21',
  '%24',
  '%26',
  '%27',
  '%28',
  '%29',
  '%2A',
  '%2a',
  '%2B',
  '%2C',
  '%3D',
  '%3F',
  '%23',
  '%5B',
  'jobs:purge',
  'jobs%3Apurge',
  'jobs%3apurge',
  '@me',
  '%40me',
  'a%21b%2Cc',
  'a!b,c',
  '%EF%BC%9A',
  '%EF%BC%A0',
  '%EF%BC%8A',
]
const rawPath = fc.array(fc.constantFrom(...PIECES), { maxLength: 14 }).map((parts) => parts.join(''))
const rawTarget = fc
  .tuple(
    fc.oneof({ weight: 9, arbitrary: fc.constant('/') }, { weight: 1, arbitrary: fc.constantFrom('', 'http://x', '*', '//', 'x') }),
    rawPath,
    fc.option(
      fc
        .array(fc.constantFrom('a=1', 'b', '%2e', '..', '/', '?', 'access_token=x', '%zz', ';', '&'), { maxLength: 4 })
        .map((q) => q.join('&')),
    ),
  )
  .map(([start, path, query]) => `${start}${path}${query === null ? '' : `?${query}`}`)

/** The URL forward.ts puts on the wire for a target. */
const forwardedUrl = (target: Target) => (target.query || target.hasQuery ? `${target.path}?${target.query}` : target.path)
const ok = (r: ReturnType<typeof normalizeTarget>): r is Target => !('reason' in r)

/**
 * What an upstream that decodes the path once (and even applies NFKC, as some frameworks do)
 * sees as segments. Undefined when decoding would change the segment structure.
 */
function upstreamSegments(path: string): string[] | undefined {
  const segs = path.split('/').slice(1)
  const out: string[] = []
  for (const seg of segs) {
    let decoded: string
    try {
      decoded = decodeURIComponent(seg).normalize('NFKC')
    } catch {
      return undefined
    }
    if (decoded.includes('/') || decoded.includes('\\') || decoded === '.' || decoded === '..') return undefined
    out.push(decoded)
  }
  return out
}

t.test('normalizeTarget: never throws; its output is clean, stable and means the same upstream', async (t) => {
  let accepted = 0
  fc.assert(
    fc.property(rawTarget, (raw) => {
      const r = normalizeTarget(raw)
      if (!ok(r)) return r.reason === 'invalid_request'
      accepted++
      const { path } = r
      // Clean: one leading slash, no empty or dot segments, only path characters, canonical escapes.
      if (!path.startsWith('/') || path.includes('//')) return false
      if (
        path
          .split('/')
          .slice(1)
          .some((s) => s === '.' || s === '..')
      )
        return false
      if (!/^[A-Za-z0-9\-._~!$&'()*+,=:@/%]*$/.test(path)) return false
      if (/%(?![0-9A-F]{2})/.test(path)) return false
      if (/%(2[DdEe]|3[0-9]|4[1-9A-F]|5[0-9A]|5F|6[1-9A-F]|7[0-9A]|7E)/.test(path)) return false // encoded unreserved
      if (/%(2[1246-9A-C]|3[AD]|40)/i.test(path)) return false // encoded ! $ & ' ( ) * + , : = @, which a segment holds raw
      if (/%(2F|5C|3B|00)/i.test(path)) return false
      // Stable: normalizing what is forwarded changes nothing (one path, matched and forwarded).
      const again = normalizeTarget(forwardedUrl(r))
      if (!ok(again) || again.path !== r.path || again.query !== r.query || again.hasQuery !== r.hasQuery) return false
      // Same meaning upstream: decoding once (with NFKC) keeps the segments and adds no dot segment.
      const view = upstreamSegments(path)
      if (!view || view.length !== path.split('/').length - 1) return false
      // A WHATWG URL parser (what many upstream frameworks use) reads the same path back.
      return new URL(path, 'http://upstream.test').pathname === path
    }),
    RUNS,
  )
  t.ok(accepted > 300, `property held on ${accepted} accepted targets (of ${RUNS.numRuns})`)
})

t.test('normalizeTarget: the known bypass forms are refused or resolved, never left for the upstream', async (t) => {
  // Any target containing one of these, once accepted, must not still contain it.
  fc.assert(
    fc.property(rawTarget, (raw) => {
      const r = normalizeTarget(raw)
      if (!ok(r)) return true
      return !/(^|\/)(\.|\.\.|%2e|%2E|\.%2e|%2e\.)(\/|$)/.test(r.path) && !/[\\;]|%5C|%3B|%2F/i.test(r.path)
    }),
    RUNS,
  )
  t.pass('no dot segment, backslash, semicolon or encoded slash survives normalization')
})

// Route patterns built from a small alphabet so generated paths hit them often.
// (ASCII only: a rule literal is compared with the percent-encoded path, see the report on non-ASCII rules.)
// Some hold reserved characters a segment may carry raw, which clients can also send encoded.
const LITERALS = ['admin', 'public', 'orders', 'a', 'b', 'ADMIN', 'x-y', '~u', 'jobs:purge', '@me', 'a!b,c', "('$&+=')"]
const segment = fc.oneof({ weight: 5, arbitrary: fc.constantFrom(...LITERALS) }, { weight: 2, arbitrary: fc.constant('*') })
const pattern = fc
  .tuple(fc.array(segment, { maxLength: 4 }), fc.boolean(), fc.boolean())
  .map(([segs, rest, trailing]) => (rest ? `/${[...segs, '**'].join('/')}` : `/${segs.join('/')}${trailing && segs.length > 0 ? '/' : ''}`))
const METHODS = ['GET', 'POST', 'DELETE']
const ruleSetting = fc
  .record({ path: pattern, methods: fc.option(fc.subarray(METHODS, { minLength: 1 })), public: fc.boolean() })
  .map(
    ({ path, methods, public: isPublic }): RouteSetting =>
      routeSchema.parse({ path, ...(methods ? { methods } : {}), public: isPublic, scopes: isPublic ? [] : ['s'] }),
  )
// Duplicate (path, method) pairs are a boot error, so generated tables skip them.
const ruleTable = fc.uniqueArray(ruleSetting, { maxLength: 6, selector: (r) => r.path })

/** An independent reference: each pattern as a regular expression over the normalized path. */
function referenceMatch(rules: readonly RouteSetting[], method: string, path: string): number | undefined {
  const i = rules.findIndex((r) => {
    if (r.methods && !r.methods.includes(method)) return false
    const segs = r.path.split('/').filter((s) => s !== '')
    const trailing = r.path.length > 1 && r.path.endsWith('/')
    const body = segs
      .map((s) => (s === '**' ? '(?:/.*)?' : s === '*' || /^\{\w+\}$/.test(s) ? '/[^/]+' : `/${s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}`))
      .join('')
    const re = segs.length === 0 ? /^\/$/ : new RegExp(`^${body}${trailing ? '/' : ''}$`)
    return re.test(path)
  })
  return i === -1 ? undefined : i
}

const normalizedPath = rawPath
  .map((p) => normalizeTarget(`/${p}`))
  .filter(ok)
  .map((r) => r.path)
const literalPath = fc
  .array(fc.constantFrom(...LITERALS, 'c', 'zz'), { maxLength: 5 })
  .chain((segs) => fc.constantFrom(`/${segs.join('/')}`, `/${segs.join('/')}/`).map((p) => (p === '//' ? '/' : p)))
/** A rule literal as a client may spell it: any of its characters percent-encoded, in either hex case. */
const spelled = fc.constantFrom(...LITERALS, 'c').chain((lit) =>
  fc.array(fc.constantFrom('raw', 'upper', 'lower'), { minLength: lit.length, maxLength: lit.length }).map((how) =>
    [...lit]
      .map((ch, i) => {
        const hex = ch.charCodeAt(0).toString(16).padStart(2, '0')
        return how[i] === 'raw' ? ch : `%${how[i] === 'upper' ? hex.toUpperCase() : hex}`
      })
      .join(''),
  ),
)
/** Targets aimed at the rules: their literals in any spelling, among hostile pieces. */
const spelledTarget = fc
  .tuple(
    fc.array(fc.oneof({ weight: 3, arbitrary: spelled }, { weight: 1, arbitrary: fc.constantFrom(...PIECES) }), { maxLength: 5 }),
    fc.boolean(),
  )
  .map(([segs, trailing]) => `/${segs.join('/')}${trailing && segs.length > 0 ? '/' : ''}`)

t.test('route matcher: agrees with a regular-expression reference, first match wins', async (t) => {
  fc.assert(
    fc.property(ruleTable, fc.constantFrom(...METHODS), fc.oneof(literalPath, normalizedPath), (rules, method, path) => {
      const match = compileRoutes(rules)
      const got = match(method, path)
      const want = referenceMatch(rules, method, path)
      return want === undefined ? got === undefined : got?.id === String(want)
    }),
    RUNS,
  )
  t.pass('compiled matcher ≡ reference on generated tables and paths')
})

// A stub pipeline: every token valid with every scope, nothing revoked, so the decision turns
// on the path and the rules alone.
const identity: Identity = {
  iss: 'i',
  sub: 's',
  clientId: undefined,
  jti: 'j',
  iatS: 0,
  expS: 2e9,
  scopes: new Set(['s']),
  claims: {},
  memo: {},
}
const verify = Object.assign(async () => identity, {
  cached: () => undefined,
  check: async () => identity,
  cacheSize: () => 0,
}) as unknown as Verifier
const revocations = { isRevoked: async () => false } as unknown as RevocationStore

t.test('decide: the rule that allowed a request is the rule that governs the path forwarded', async (t) => {
  await fc.assert(
    fc.asyncProperty(
      ruleTable,
      fc.constantFrom(...METHODS),
      fc.oneof(rawTarget, spelledTarget),
      fc.boolean(),
      async (rules, method, raw, withToken) => {
        const match = compileRoutes(rules)
        const deps: DecideDeps = {
          match,
          verify,
          revocations,
          revocableClaims: ['jti'],
          allowQueryToken: false,
          maxTokenBytes: 8192,
          clock: manualClock(0),
          uses: createMemoryUseCounter({ clock: manualClock(0) }),
          clockSkewS: 30,
        }
        const outcome = await decide(
          { method, url: raw, authorization: withToken ? ['Bearer abc.def.ghi'] : undefined, rawHeaders: [] },
          deps,
        )
        if (!outcome.decision.allow) return true
        const target = outcome.target!
        const forwarded = forwardedUrl(target)
        // What the upstream receives, normalized again, is what was matched…
        const again = normalizeTarget(forwarded)
        if (!ok(again) || again.path !== target.path) return false
        // …and the same rule governs it, whether read as forwarded or decoded once upstream.
        if (match(method, again.path) !== outcome.decision.rule) return false
        const view = upstreamSegments(target.path)
        if (!view) return false
        const decodedView = `/${view.join('/')}`
        const viaView = referenceMatch(rules, method, decodedView)
        return viaView === undefined ? false : String(viaView) === outcome.decision.rule.id
      },
    ),
    { numRuns: 1500 },
  )
  t.pass('matched rule = rule of the forwarded path = rule of the upstream-decoded path')
})

// Patterns with captures: `*` spots become `{c0}`, `{c1}`…, each bound to the claim of its name.
const capturingRule = fc
  .record({
    path: fc.tuple(
      fc.array(fc.oneof({ weight: 2, arbitrary: fc.constantFrom(...LITERALS) }, { weight: 3, arbitrary: fc.constant('*') }), {
        maxLength: 4,
      }),
      fc.boolean(),
    ),
    methods: fc.option(fc.subarray(METHODS, { minLength: 1 })),
  })
  .map(({ path: [segs, rest], methods }): RouteSetting => {
    let n = 0
    const named = segs.map((s) => (s === '*' ? `{c${n++}}` : s))
    const claims = Object.fromEntries(Array.from({ length: n }, (_, i) => [`c${i}`, `{c${i}}`]))
    const path = `/${[...named, ...(rest ? ['**'] : [])].join('/')}`
    return routeSchema.parse({ path, ...(methods ? { methods } : {}), scopes: ['s'], claims })
  })
const capturingTable = fc.uniqueArray(capturingRule, { minLength: 1, maxLength: 5, selector: (r) => r.path.replace(/\{c\d+\}/g, '*') })

t.test(
  'decide with captures: the deciding rule governs the forwarded path, and each X-Auth-Bound value is its decoded segment',
  async (t) => {
    let claims: Record<string, unknown> = {}
    let boundAllows = 0
    let mismatches = 0
    const bindingVerify = Object.assign(async () => ({ ...identity, claims }), {
      cached: () => undefined,
      check: async () => ({ ...identity, claims, memo: {} }),
      cacheSize: () => 0,
    }) as unknown as Verifier
    await fc.assert(
      fc.asyncProperty(
        capturingTable,
        fc.constantFrom(...METHODS),
        fc.oneof(rawTarget, spelledTarget),
        fc.boolean(),
        async (rules, method, raw, honest) => {
          const match = compileRoutes(rules)
          const deps: DecideDeps = {
            match,
            verify: bindingVerify,
            revocations,
            revocableClaims: ['jti'],
            allowQueryToken: false,
            maxTokenBytes: 8192,
            clock: manualClock(0),
            uses: createMemoryUseCounter({ clock: manualClock(0) }),
            clockSkewS: 30,
          }
          const normalized = normalizeTarget(raw)
          if (!ok(normalized)) return true
          // Every claim c<i> lists every segment of the path as an upstream decodes it once: a
          // capture passes exactly when it holds one of them. A dishonest token holds none: its
          // values are the segments with a `!` appended, less any that is itself a segment
          // (`/%21/` decodes to `!` and ``, and `` + `!` is the first).
          const decoded = normalized.path
            .split('/')
            .slice(1)
            .map((seg) => decodeURIComponent(seg))
          const held = honest ? decoded : decoded.map((d) => `${d}!`).filter((h) => !decoded.includes(h))
          claims = Object.fromEntries(Array.from({ length: 4 }, (_, i) => [`c${i}`, held]))
          const outcome = await decide({ method, url: raw, authorization: ['Bearer abc.def.ghi'], rawHeaders: [] }, deps)
          const rule = match(method, normalized.path)
          const captures = rule?.binding?.captures ?? []
          if (!outcome.decision.allow) {
            // Refused for its binding only when a dishonest token met a rule with captures.
            if (outcome.decision.reason === 'claim_mismatch') return ++mismatches > 0 && !honest && captures.length > 0
            // Other refusals (no rule, a query-string token) come from the path and the rules alone.
            return outcome.decision.reason !== 'no_route' || rule === undefined
          }
          if (!honest && captures.length > 0) return false
          const target = outcome.target!
          const again = normalizeTarget(forwardedUrl(target))
          if (!ok(again) || again.path !== target.path || match(method, again.path) !== outcome.decision.rule) return false
          const sent = upstreamHeaders({}, undefined, {
            remoteAddress: undefined,
            forwardAuthorization: true,
            upgrade: false,
            bound: outcome.decision.bound,
          })
          const segments = again.path.split('/').slice(1)
          if (captures.length > 0) boundAllows++
          return (
            captures.every((c) => sent[`x-auth-bound-${c.name}`] === toHeaderValue(decodeURIComponent(segments[c.segment]!))) &&
            Object.keys(sent).filter((k) => k.startsWith('x-auth-bound-')).length === captures.length
          )
        },
      ),
      { numRuns: 1500 },
    )
    t.ok(boundAllows > 20, `captured value = the decoded segment the upstream receives, on ${boundAllows} allows with captures`)
    t.ok(mismatches > 20, `a token holding none of the segments is refused (${mismatches} times)`)
  },
)

t.test('extractBearer: any b64token in any Bearer spelling is extracted exactly', async (t) => {
  const b64token = fc.stringMatching(/^[A-Za-z0-9\-._~+/]{1,200}={0,2}$/)
  const scheme = fc
    .constantFrom('bearer', 'Bearer', 'BEARER')
    .chain((s) =>
      fc
        .array(fc.boolean(), { minLength: 6, maxLength: 6 })
        .map((up) => [...s].map((c, i) => (up[i] ? c.toUpperCase() : c.toLowerCase())).join('')),
    )
  fc.assert(
    fc.property(b64token, scheme, fc.integer({ min: 1, max: 4 }), (token, s, spaces) => {
      const got = extractBearer([`${s}${' '.repeat(spaces)}${token}`], '', { allowQueryToken: false, maxTokenBytes: 8192 })
      return 'token' in got && got.token === token && got.query === ''
    }),
    RUNS,
  )
  t.pass('extracted')
})

t.test('extractBearer: never throws, never returns a token that is not a bounded b64token', async (t) => {
  const header = fc.oneof(
    fc.string({ maxLength: 60 }),
    fc.string({ unit: 'binary', maxLength: 60 }),
    fc.constantFrom('Bearer', 'Bearer ', 'bearer\t', 'Basic x', 'Bearer a b', 'Bearer a,b'),
  )
  const query = fc
    .array(
      fc.tuple(
        fc.constantFrom('a=1', 'access_token=t0k', 'access%5Ftoken=x', 'ACCESS_TOKEN=y', '%zz', 'access_token', '&', ';', '=', 'b=%2e'),
        fc.constantFrom('&', ';'),
      ),
      { maxLength: 5 },
    )
    .map((q) => q.map(([part, sep], i) => (i === 0 ? part : `${sep}${part}`)).join(''))
  fc.assert(
    fc.property(
      fc.option(fc.array(header, { minLength: 1, maxLength: 3 })),
      query,
      fc.boolean(),
      fc.integer({ min: 1, max: 64 }),
      (headers, q, allowQuery, max) => {
        const got = extractBearer(headers ?? undefined, q, { allowQueryToken: allowQuery, maxTokenBytes: max })
        if (headers && headers.length > 1) return 'reason' in got && got.reason === 'invalid_request'
        if ('reason' in got) return got.reason === 'invalid_request' || got.reason === 'malformed'
        if (got.token !== undefined && (!/^[A-Za-z0-9\-._~+/]+=*$/.test(got.token) || got.token.length > max)) return false
        // A query token is only ever taken when allowed, and is then gone from the forwarded query.
        const names = got.query.split(/[&;]/).map((p) => {
          try {
            return decodeURIComponent(p.split('=')[0]!)
          } catch {
            return p
          }
        })
        const fromQuery = got.token !== undefined && !headers
        return !fromQuery || (allowQuery && !names.includes('access_token'))
      },
    ),
    { numRuns: 600 },
  )
  t.pass('total and bounded')
})

t.test("extractBearer: the verifier's known-token hint never changes the answer", async (t) => {
  // The hint holds only what the verifier can hold: compact JWS strings of base64url parts.
  const part = fc.stringMatching(/^[A-Za-z0-9_-]{1,60}$/)
  const jws = fc.tuple(part, part, part).map((p) => p.join('.'))
  fc.assert(
    fc.property(
      fc.array(jws, { minLength: 1, maxLength: 3 }),
      fc.integer({ min: 0, max: 2 }),
      fc.constantFrom('Bearer ', 'bearer ', 'Bearer  ', 'Bearer\t', 'Basic ', '', 'Bearer'),
      fc.constantFrom('', ' ', ',', 'x', '\t', '=', '.'),
      fc.constantFrom('', 'a=1', 'access_token=k'),
      fc.boolean(),
      fc.integer({ min: 8, max: 200 }),
      (cached, pick, scheme, tail, q, allowQuery, max) => {
        const known = new Set(cached)
        const headers = [`${scheme}${cached[pick % cached.length]}${tail}`]
        const opts = { allowQueryToken: allowQuery, maxTokenBytes: max }
        const plain = extractBearer(headers, q, opts)
        const hinted = extractBearer(headers, q, opts, (token) => known.has(token))
        return JSON.stringify(plain) === JSON.stringify(hinted)
      },
    ),
    RUNS,
  )
  t.pass('same answer with and without the hint, length limit included')
})

t.test('extractBearer: `jws` marks exactly an exact `Bearer ` and three base64url parts, and never changes the token', async (t) => {
  // Parts drawn from base64url's digits and the other b64token characters, so some tokens are
  // compact JWS strings and some are b64tokens that are not (a `+`, a `=`, two or four parts).
  const part = fc.oneof(
    { arbitrary: fc.stringMatching(/^[A-Za-z0-9_-]{1,12}$/), weight: 4 },
    { arbitrary: fc.stringMatching(/^[A-Za-z0-9_\-~+/]{0,12}=?$/), weight: 1 },
  )
  const token = fc
    .oneof({ arbitrary: fc.tuple(part, part, part), weight: 3 }, { arbitrary: fc.array(part, { minLength: 1, maxLength: 5 }), weight: 1 })
    .map((p) => p.join('.'))
  const JWS = /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$/
  let marked = 0
  fc.assert(
    fc.property(
      token,
      fc.constantFrom('Bearer ', 'Bearer ', 'Bearer ', 'bearer ', 'BEARER ', 'Bearer  ', 'DPoP ', 'dpop '),
      fc.integer({ min: 4, max: 80 }),
      (tok, scheme, max) => {
        const got = extractBearer([`${scheme}${tok}`], '', { allowQueryToken: false, maxTokenBytes: max })
        // The same header read by the general path (a scheme spelled otherwise never takes the fast one).
        const general = extractBearer([`${scheme.toLowerCase()}${tok}`], '', { allowQueryToken: false, maxTokenBytes: max })
        if ('reason' in got || 'reason' in general) return 'reason' in got && 'reason' in general && got.reason === general.reason
        if (got.token !== general.token || got.scheme !== general.scheme) return false
        const shaped = scheme === 'Bearer ' && JWS.test(tok) && tok.length <= max
        if (shaped) marked++
        return (got.jws === true) === shaped && general.jws === undefined
      },
    ),
    RUNS,
  )
  t.ok(marked >= 50, `marked exactly when the verifier may skip its character scan (${marked} marked)`)
})

t.test('extractBearer: a query token is refused unless allowed, and removed when taken', async (t) => {
  const other = fc.array(fc.constantFrom('a=1', 'b=2', 'x=%2e', 'c'), { maxLength: 3 })
  const name = fc.constantFrom('access_token', 'access%5Ftoken', 'access%5ftoken', '%61ccess_token')
  // `&` or `;` before each parameter after the first: many upstreams split on both.
  const seps = fc.array(fc.constantFrom('&', ';'), { minLength: 7, maxLength: 7 })
  fc.assert(
    fc.property(other, name, fc.stringMatching(/^[A-Za-z0-9._~-]{1,40}$/), other, seps, (before, n, value, after, sep) => {
      const params = [...before, `${n}=${value}`, ...after]
      const q = params.map((p, i) => (i === 0 ? p : `${sep[i - 1]}${p}`)).join('')
      const refused = extractBearer(undefined, q, { allowQueryToken: false, maxTokenBytes: 8192 })
      if (!('reason' in refused) || refused.reason !== 'invalid_request') return false
      const taken = extractBearer(undefined, q, { allowQueryToken: true, maxTokenBytes: 8192 })
      if (!('token' in taken) || taken.token !== value) return false
      // The other parameters, in order, verbatim, with their own separators: only the token and one separator went.
      const rest = [...before, ...after]
      if (rest.length === 0) return taken.query === ''
      return (
        JSON.stringify(taken.query.split(/[&;]/)) === JSON.stringify(rest) && taken.query.length === q.length - n.length - value.length - 2
      )
    }),
    RUNS,
  )
  t.pass('refused when not configured; when configured, taken once and stripped, the rest verbatim')
})

t.test('repeatsMember: silent on any JSON.stringify output, finds any repeated member at any depth', async (t) => {
  const said = (text: string) => repeatsMember(text, JSON.parse(text))
  fc.assert(
    fc.property(fc.jsonValue(), (v) => !said(JSON.stringify(v))),
    RUNS,
  )
  // Repeat one member of a generated object, spelled with or without escapes, with any value
  // (an object too, whose own members JSON.parse then drops), and bury the object at any depth
  // among unique siblings.
  const spell = (name: string, escaped: boolean) =>
    escaped ? `"${[...name].map((c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`).join('')}"` : JSON.stringify(name)
  fc.assert(
    fc.property(
      fc.dictionary(fc.string(), fc.jsonValue(), { minKeys: 1, maxKeys: 6 }),
      fc.nat(),
      fc.boolean(),
      fc.boolean(),
      fc.jsonValue(),
      fc.array(fc.tuple(fc.boolean(), fc.string(), fc.jsonValue()), { maxLength: 4 }),
      (obj, pick, escaped, first, extra, wrappers) => {
        const names = Object.keys(obj)
        const name = names[pick % names.length]!
        const text = JSON.stringify(obj)
        const repeated = `${spell(name, escaped)}:${JSON.stringify(extra)}`
        let doubled = first ? `{${repeated},${text.slice(1)}` : `${text.slice(0, -1)},${repeated}}`
        // Wrap: inside an array next to a sibling value, or as a member next to a unique sibling.
        for (const [inArray, key, sibling] of wrappers) {
          doubled = inArray
            ? `[${JSON.stringify(sibling)},${doubled}]`
            : `{${JSON.stringify(key)}:${doubled},${JSON.stringify(`${key}.`)}:${JSON.stringify(sibling)}}`
        }
        return said(doubled)
      },
    ),
    RUNS,
  )
  t.ok(said('{"__proto__":1,"__proto__":2}'), '__proto__ twice is a repeat like any other')
  t.notOk(said('{"__proto__":{"a":1},"b":{"a":2}}'), '__proto__ once, with a member, is not')
  t.ok(said('{"a":{"x":1,"y":[1,{"z":2}]},"a":{"x":1,"y":[1,{"z":2}]}}'), 'an object member repeated whole is a repeat')
  t.ok(said('{"a":1,"\\u0061":2}'), 'an escaped spelling of a name is the same name')
  t.notOk(said('{"a":"}{\\"b\\":1,","b":[",{"]}'), 'braces, commas and quotes inside strings are not structure')
  t.notOk(
    said(JSON.stringify({ 'a\\': 1, b: '\\', q: 'say "hi"\\', r: '\\"' })),
    'a string may end in an escaped backslash or hold an escaped quote',
  )
  t.ok(
    said(`{${JSON.stringify('a\\')}:1,"b":"\\\\",${JSON.stringify('a\\')}:2}`),
    'a name ending in a backslash, repeated after a value that ends in one',
  )
  t.notOk(said(`${'['.repeat(20000)}{"a":1}${']'.repeat(20000)}`), 'deep nesting neither overflows nor misleads')
  t.ok(said(`${'['.repeat(20000)}{"a":1,"a":1}${']'.repeat(20000)}`), 'a repeat under deep nesting is found')
})

// The names Lapse writes or removes, any of which a client could try to slip past it in a spelling
// a lenient upstream reads the same: identity, routing overrides, hop-by-hop, framing.
const GUARDED_NAMES = [
  'x-auth-subject',
  'x-auth-scopes',
  'x-auth-client-id',
  'x-auth-token-id',
  'x-auth-expires-at',
  'x-auth-role',
  'x-original-url',
  'x-rewrite-url',
  'x-forwarded-prefix',
  'forwarded',
  'x-real-ip',
  'x-forwarded-for',
  'x-forwarded-proto',
  'x-forwarded-host',
  'x-forwarded-port',
  'x-forwarded-scheme',
  'x-forwarded-ssl',
  'x-url-scheme',
  'front-end-https',
  'x-original-host',
  'true-client-ip',
  'x-client-ip',
  'x-cluster-client-ip',
  'connection',
  'keep-alive',
  'proxy-connection',
  'transfer-encoding',
  'upgrade',
  'proxy-authorization',
  'expect',
  'content-length',
]
// Every tchar (RFC 9110 §5.6.2) that is not a letter or digit.
const SEPARATORS = [..."!#$%&'*+-.^_`|~"]
const fold = (name: string) => name.toLowerCase().replace(/[^a-z0-9]/g, '-')
/** A guarded name with each `-` any separator and each letter in either case. */
const spelledName = fc
  .constantFrom(...GUARDED_NAMES)
  .chain((name) =>
    fc
      .array(fc.tuple(fc.constantFrom(...SEPARATORS), fc.boolean()), { minLength: name.length, maxLength: name.length })
      .map((how) => [...name].map((ch, i) => (ch === '-' ? how[i]![0] : how[i]![1] ? ch.toUpperCase() : ch)).join('')),
  )
/** Any other name: letters, digits and separators, which must be forwarded untouched. */
const otherName = fc
  .string({ unit: fc.constantFrom(...'abcXYZ09', ...SEPARATORS), minLength: 1, maxLength: 12 })
  .filter(
    (n) =>
      !GUARDED_NAMES.includes(fold(n)) && !fold(n).startsWith('x-auth-') && !['host', 'authorization', 'te', 'trailer'].includes(fold(n)),
  )

t.test('upstreamHeaders: no spelling of a guarded name reaches the upstream; other names pass', async (t) => {
  const remoteAddress = '192.0.2.1'
  fc.assert(
    fc.property(
      fc.uniqueArray(spelledName, { minLength: 1, maxLength: 6 }),
      fc.uniqueArray(otherName, { maxLength: 4 }),
      fc.boolean(),
      fc.boolean(),
      (spoofed, others, asNode, withIdentity) => {
        // Node hands names lower-cased; an embedder may not.
        const incoming: Record<string, string> = { host: 'lapse.test' }
        for (const name of spoofed) incoming[asNode ? name.toLowerCase() : name] = 'spoof'
        for (const name of others) incoming[asNode ? name.toLowerCase() : name] = 'kept'
        // The exact spellings Lapse reads or forwards on purpose are not spoofs.
        if (
          incoming['x-forwarded-for'] !== undefined ||
          incoming['content-length'] !== undefined ||
          incoming['transfer-encoding'] !== undefined ||
          incoming.connection !== undefined
        )
          return true
        const out = upstreamHeaders(incoming, withIdentity ? identity : undefined, {
          remoteAddress,
          forwardAuthorization: true,
          upgrade: false,
        })
        if (Object.values(out).includes('spoof')) return false
        return others.every((name) => out[asNode ? name.toLowerCase() : name] === 'kept')
      },
    ),
    RUNS,
  )
  t.pass('guarded names in any spelling are dropped; unrelated names are forwarded')
})
