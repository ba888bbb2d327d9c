// (method, normalized path) → the first rule that matches, from a table compiled once at boot.
//
//   const match = compileRoutes(config.routes)      // throws LapseError ERR_RULES_*
//   const rule = match('GET', '/orders/42')          // undefined: no rule, deny
//
// `*` is one non-empty segment, `{name}` too (and captures it), `**` (last only) any rest; literals
// compare case-sensitively with the normalized path. The rules: docs/configuration.md#route-rules.
import { LapseError } from '../core/errors.js'
import type { ClaimRequirement, Rule, RouteCapture, RuleBinding } from '../core/types.js'

/** One rule as configured (LAPSE_ROUTES); config/schema.ts's routeSchema produces it. */
export interface RouteSpec {
  readonly path: string
  readonly methods?: readonly string[] | undefined
  readonly scopes: readonly string[]
  readonly public: boolean
  readonly on_revocation_unavailable: 'closed' | 'open'
  readonly cut_streams_at_expiry: boolean
  readonly sender_constrained?: boolean | undefined
  readonly claims?: Readonly<Record<string, string | number | boolean | ReadonlyArray<string | number | boolean>>> | undefined
  readonly max_token_age?: number | undefined
  readonly acr_values?: readonly string[] | undefined
  readonly max_uses?: number | undefined
  readonly peers?: readonly string[] | undefined
}

type Segment = { kind: 'literal'; text: string } | { kind: 'one' } | { kind: 'rest' }

interface Compiled {
  readonly rule: Rule
  /** The methods the rule takes: those it lists, plus HEAD when it lists GET; undefined for all. */
  readonly takes: ReadonlySet<string> | undefined
  readonly segments: readonly Segment[]
  readonly trailingSlash: boolean
}

export type RouteMatcher = (method: string, path: string) => Rule | undefined

export function compileRoutes(settings: readonly RouteSpec[]): RouteMatcher {
  const compiled = settings.map((setting, i) => compileOne(setting, i))
  rejectDuplicates(compiled)
  return (method, path) => {
    const parts = splitPath(path)
    for (const c of compiled) {
      if (c.takes && !c.takes.has(method)) continue
      if (matches(c, parts.segments, parts.trailingSlash)) return c.rule
    }
    return undefined
  }
}

function compileOne(s: RouteSpec, index: number): Compiled {
  const where = `routes[${index}] (${s.path})`
  if (s.public && s.scopes.length > 0)
    throw new LapseError('ERR_RULES_INVALID', `LAPSE_ROUTES: ${where} is public and also requires scopes`)
  if (s.public && s.sender_constrained)
    throw new LapseError('ERR_RULES_INVALID', `LAPSE_ROUTES: ${where} is public and also sender_constrained`)
  const { segments: texts, trailingSlash } = splitPath(s.path)
  const segments = texts.map((text, i): Segment => {
    if (text === '**') {
      if (i !== texts.length - 1) throw new LapseError('ERR_RULES_INVALID', `LAPSE_ROUTES: ${where} has "**" before the last segment`)
      return { kind: 'rest' }
    }
    if (text === '*') return { kind: 'one' }
    // A capture matches what `*` matches; which segment it names is read off the rule (compileBinding).
    if (CAPTURE.test(text)) return { kind: 'one' }
    if (text.includes('{') || text.includes('}'))
      throw new LapseError('ERR_RULES_INVALID', `LAPSE_ROUTES: ${where} has a "{" or "}" that is not a whole {name} segment`)
    if (text.includes('*')) throw new LapseError('ERR_RULES_INVALID', `LAPSE_ROUTES: ${where} mixes "*" with text in one segment`)
    if (text === '.' || text === '..') throw new LapseError('ERR_RULES_INVALID', `LAPSE_ROUTES: ${where} has a dot segment`)
    const dead = unmatchableEscape(text)
    if (dead) throw new LapseError('ERR_RULES_INVALID', `LAPSE_ROUTES: ${where} has ${dead}, so it could never match`)
    return { kind: 'literal', text }
  })
  const rule: Rule = Object.freeze({
    id: String(index),
    path: s.path,
    methods: s.methods ? new Set(s.methods.map((m) => m.toUpperCase())) : undefined,
    scopes: Object.freeze([...s.scopes]),
    public: s.public,
    onRevocationUnavailable: s.on_revocation_unavailable,
    cutStreamsAtExpiry: s.cut_streams_at_expiry,
    senderConstrained: s.sender_constrained,
    binding: compileBinding(s, texts, index),
    peers: s.peers ? Object.freeze([...s.peers]) : undefined,
  })
  // A rule for GET takes HEAD too, as fastify and express route it: HEAD is GET without the body
  // (RFC 9110 §9.3.2), and most upstreams answer it with their GET handler.
  const takes = rule.methods?.has('GET') && !rule.methods.has('HEAD') ? new Set([...rule.methods, 'HEAD']) : rule.methods
  return { rule, takes, segments, trailingSlash }
}

// A capture segment: `{name}`, the name as a header name can carry it (X-Auth-Bound-<name>).
const CAPTURE = /^\{([A-Za-z0-9_-]+)\}$/
const BOUND_PREFIX = 'x-auth-bound-'

const invalid = (message: string, at: string): LapseError => new LapseError('ERR_RULES_INVALID', `LAPSE_ROUTES: ${message} (at ${at})`)

/** The rule's captures, claim requirements, freshness and use limit; undefined when it has none. */
function compileBinding(s: RouteSpec, texts: readonly string[], index: number): RuleBinding | undefined {
  const at = `routes[${index}]`
  const captures: RouteCapture[] = []
  const names = new Map<string, number>()
  texts.forEach((text, segment) => {
    const name = CAPTURE.exec(text)?.[1]
    if (name === undefined) return
    if (names.has(name)) throw invalid(`the capture {${name}} is used twice in ${s.path}`, `${at}.path`)
    names.set(name, captures.length)
    captures.push({ name, segment, header: undefined })
  })
  const claims: ClaimRequirement[] = []
  for (const [claim, wanted] of Object.entries(s.claims ?? {})) {
    const literals: Array<string | number | boolean> = []
    const refs: number[] = []
    for (const value of Array.isArray(wanted) ? wanted : [wanted]) {
      const ref = typeof value === 'string' ? /^\{(.*)\}$/.exec(value)?.[1] : undefined
      if (ref === undefined) {
        literals.push(value)
        continue
      }
      const i = names.get(ref)
      if (i === undefined) throw invalid(`"{${ref}}" names no capture of ${s.path}`, `${at}.claims.${claim}`)
      refs.push(i)
    }
    claims.push({ claim, literals, captures: refs, description: `token claim ${claim} does not match this route` })
  }
  // A capture a claim binds goes upstream as X-Auth-Bound-<name>: the value was checked against the token.
  const headers = new Map<string, string>()
  const bound = captures.map((c, i) => {
    if (!claims.some((r) => r.captures.includes(i))) return c
    const header = BOUND_PREFIX + c.name.toLowerCase().replace(/[^a-z0-9]/g, '-')
    const other = headers.get(header)
    if (other !== undefined) throw invalid(`the captures {${other}} and {${c.name}} would both be sent as ${header}`, `${at}.path`)
    headers.set(header, c.name)
    return { ...c, header }
  })
  if (s.public && (claims.length > 0 || s.max_token_age !== undefined || s.acr_values !== undefined || s.max_uses !== undefined)) {
    throw invalid('a public rule cannot require claims, freshness or a use limit', at)
  }
  if (
    captures.length === 0 &&
    claims.length === 0 &&
    s.max_token_age === undefined &&
    s.acr_values === undefined &&
    s.max_uses === undefined
  )
    return undefined
  return Object.freeze({
    captures: Object.freeze(bound),
    claims: Object.freeze(claims),
    maxTokenAgeS: s.max_token_age,
    acrValues: s.acr_values ? Object.freeze([...s.acr_values]) : undefined,
    maxUses: s.max_uses,
    useScope: `${(s.methods ?? [])
      .map((m) => m.toUpperCase())
      .sort()
      .join(',')} ${s.path}`,
  })
}

/**
 * Rules match first to last, so a later rule with the same path as an earlier one gets only the
 * methods the earlier ones leave. A rule for every method after narrower ones (`GET` needing
 * `read`, then the rest needing `write`) is the point of that. A method a later rule *names* that
 * an earlier one already takes would never reach it: an operator who wrote it expects that rule's
 * scopes to apply, so the start fails rather than quietly applying the earlier rule's. An earlier
 * rule takes the HEAD its GET implies, so a later rule naming HEAD is one too; a later rule's own
 * implied HEAD is not named, so a HEAD rule before a GET rule is fine.
 */
function rejectDuplicates(compiled: readonly Compiled[]): void {
  for (let i = 0; i < compiled.length; i++) {
    const b = compiled[i]!.rule
    for (const earlier of compiled.slice(0, i)) {
      const a = earlier.rule
      if (a.path !== b.path) continue
      if (!earlier.takes) throw duplicate(b, a, 'every method')
      const shared = b.methods && [...b.methods].find((m) => earlier.takes!.has(m))
      if (shared) throw duplicate(b, a, shared)
    }
  }
}

function duplicate(b: Rule, a: Rule, taken: string): LapseError {
  const why = taken === 'HEAD' && !a.methods?.has('HEAD') ? ' (a rule for GET takes HEAD too)' : ''
  return new LapseError(
    'ERR_RULES_DUPLICATE',
    `LAPSE_ROUTES: routes[${b.id}] (${b.path}) can never apply to ${taken}: routes[${a.id}] takes it first${why}`,
  )
}

// The characters the path normalizer decodes (request-target.ts): a request never holds them encoded.
const DECODED_BY_NORMALIZER = /[A-Za-z0-9\-._~!$&'()*+,=:@]/

/**
 * Why a rule literal holds an escape the normalizer would have rewritten (`%3A`, `%7E`, lower-case
 * `%c3`), if it does. Such a rule can never match, and a dead strict rule before a broader one
 * hands its paths to the broader one: `/v1/jobs%3Apurge` before `/v1/*` would let the purge through.
 */
function unmatchableEscape(text: string): string | undefined {
  for (const [spelled] of text.matchAll(/%[0-9A-Fa-f]{2}/g)) {
    const ch = String.fromCharCode(parseInt(spelled.slice(1), 16))
    if (DECODED_BY_NORMALIZER.test(ch)) return `"${spelled}", which request paths hold decoded ("${ch}")`
    if (/[a-f]/.test(spelled)) return `"${spelled}", which request paths hold upper-case ("${spelled.toUpperCase()}")`
  }
  return undefined
}

function splitPath(path: string): { segments: string[]; trailingSlash: boolean } {
  const trailingSlash = path.length > 1 && path.endsWith('/')
  // A normalized path (what decide passes) has no empty segment but at its ends: one array, not two.
  if (path.startsWith('/') && !path.includes('//')) {
    const inner = path.slice(1, trailingSlash ? -1 : undefined)
    return { segments: inner === '' ? [] : inner.split('/'), trailingSlash }
  }
  return { segments: path.split('/').filter((s) => s !== ''), trailingSlash }
}

function matches(c: Compiled, parts: readonly string[], trailingSlash: boolean): boolean {
  const segs = c.segments
  for (let i = 0; i < segs.length; i++) {
    const seg = segs[i]!
    if (seg.kind === 'rest') return true
    const part = parts[i]
    if (part === undefined) return false
    if (seg.kind === 'literal' && seg.text !== part) return false
  }
  return parts.length === segs.length && trailingSlash === c.trailingSlash
}
