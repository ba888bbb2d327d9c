// (method, normalized path) → the first rule that matches, from a table compiled once at boot.
//
//   const match = compileRoutes(config.routes)      // throws ConfigError ERR_RULES_*
//   const rule = match('GET', '/orders/42')          // undefined: no rule, deny
//
// `*` is exactly one non-empty segment, `**` (last only) is any rest including none, so
// `/orders/**` covers `/orders`, `/orders/` and `/orders/1/items`. Literal segments compare
// case-sensitively against the normalized (percent-encoded) path.
import { ConfigError } from '../config/load.js'
import type { RouteSetting } from '../config/schema.js'
import type { Rule } from '../pipeline/types.js'

type Segment = { kind: 'literal'; text: string } | { kind: 'one' } | { kind: 'rest' }

interface Compiled {
  readonly rule: Rule
  readonly segments: readonly Segment[]
  readonly trailingSlash: boolean
}

export type RouteMatcher = (method: string, path: string) => Rule | undefined

export function compileRoutes(settings: readonly RouteSetting[]): RouteMatcher {
  const compiled = settings.map((setting, i) => compileOne(setting, i))
  rejectDuplicates(compiled)
  return (method, path) => {
    const parts = splitPath(path)
    for (const c of compiled) {
      if (c.rule.methods && !c.rule.methods.has(method)) continue
      if (matches(c, parts.segments, parts.trailingSlash)) return c.rule
    }
    return undefined
  }
}

function compileOne(s: RouteSetting, index: number): Compiled {
  const where = `routes[${index}] (${s.path})`
  if (s.public && s.scopes.length > 0) throw new ConfigError('ERR_RULES_INVALID', `LAPSE_ROUTES: ${where} is public and also requires scopes`)
  const { segments: texts, trailingSlash } = splitPath(s.path)
  const segments = texts.map((text, i): Segment => {
    if (text === '**') {
      if (i !== texts.length - 1) throw new ConfigError('ERR_RULES_INVALID', `LAPSE_ROUTES: ${where} has "**" before the last segment`)
      return { kind: 'rest' }
    }
    if (text === '*') return { kind: 'one' }
    if (text.includes('*')) throw new ConfigError('ERR_RULES_INVALID', `LAPSE_ROUTES: ${where} mixes "*" with text in one segment`)
    if (text === '.' || text === '..') throw new ConfigError('ERR_RULES_INVALID', `LAPSE_ROUTES: ${where} has a dot segment`)
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
  })
  return { rule, segments, trailingSlash }
}

/** Two rules with the same path and a shared method: the second could never match. */
function rejectDuplicates(compiled: readonly Compiled[]): void {
  for (let i = 0; i < compiled.length; i++) {
    for (let j = 0; j < i; j++) {
      const a = compiled[j]!.rule
      const b = compiled[i]!.rule
      if (a.path !== b.path) continue
      const overlap = !a.methods || !b.methods || [...b.methods].some((m) => a.methods!.has(m))
      if (overlap) throw new ConfigError('ERR_RULES_DUPLICATE', `LAPSE_ROUTES: routes[${i}] (${b.path}) repeats routes[${j}] for the same methods`)
    }
  }
}

function splitPath(path: string): { segments: string[]; trailingSlash: boolean } {
  const segments = path.split('/').filter((s) => s !== '')
  return { segments, trailingSlash: path.length > 1 && path.endsWith('/') }
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
