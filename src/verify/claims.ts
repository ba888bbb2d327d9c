// A verified claims set → the Identity Lapse relies on, or the first reason it cannot be used.
// Pure and synchronous: it runs on every request, cached signature or not, against the clock.
//
//   const identity = checkClaims(header, payload, policy, nowS)
import type { Claims, Denial, DenyReason, Identity } from '../core/types.js'

export interface ClaimPolicy {
  readonly issuers: ReadonlySet<string>
  readonly audiences: ReadonlySet<string>
  readonly clockSkewS: number
  /** 0 turns the lifetime policy off. */
  readonly maxLifetimeS: number
  readonly requiredClaims: readonly string[]
  /** Normalized (lower case, no `application/`); undefined accepts any `typ`. */
  readonly tokenTypes: ReadonlySet<string> | undefined
}

const deny = (reason: DenyReason, description?: string): Denial => ({ allow: false, reason, description })

const NUMERIC_DATES = ['exp', 'iat', 'nbf'] as const
// Printable, no control characters: these values become upstream header values.
const SAFE_TEXT = /^[^\u0000-\u001f\u007f]{1,1024}$/
// A lone UTF-16 surrogate (JSON's "\ud800") has no UTF-8 form: encodeURIComponent throws on it
// while the identity headers are built, and no upstream could read it. ES2024's isWellFormed
// (Node 20) is not in the ES2023 lib this project compiles against.
const wellFormed = (s: string): boolean => (s as unknown as { isWellFormed(): boolean }).isWellFormed()

export const normalizeType = (typ: string) => typ.toLowerCase().replace(/^application\//, '')

/** Checks the types of the claims Lapse reads; a wrong type is `malformed`, never coerced. */
function checkTypes(c: Claims): Denial | undefined {
  for (const name of NUMERIC_DATES) {
    const v = c[name]
    if (v !== undefined && (typeof v !== 'number' || !Number.isFinite(v))) return deny('malformed', `claim ${name} is not a number`)
  }
  for (const name of ['iss', 'sub', 'jti', 'client_id', 'azp', 'sid'] as const) {
    const v = c[name]
    if (v !== undefined && (typeof v !== 'string' || !SAFE_TEXT.test(v)))
      return deny('malformed', `claim ${name} is not a non-empty string`)
    if (v !== undefined && !wellFormed(v)) return deny('malformed', `claim ${name} is not well-formed Unicode`)
  }
  const aud = c.aud
  if (aud !== undefined && typeof aud !== 'string' && !(Array.isArray(aud) && aud.length > 0 && aud.every((a) => typeof a === 'string'))) {
    return deny('malformed', 'claim aud is not a string or a list of strings')
  }
  if (c.scope !== undefined && typeof c.scope !== 'string') return deny('malformed', 'claim scope is not a string')
  const scp = c.scp
  if (scp !== undefined && typeof scp !== 'string' && !(Array.isArray(scp) && scp.every((s) => typeof s === 'string'))) {
    return deny('malformed', 'claim scp is not a list of strings')
  }
  // Granted scopes become X-Auth-Scopes.
  if (typeof c.scope === 'string' && !wellFormed(c.scope)) return deny('malformed', 'claim scope is not well-formed Unicode')
  if (typeof scp === 'string' ? !wellFormed(scp) : Array.isArray(scp) && !scp.every((s) => wellFormed(s as string))) {
    return deny('malformed', 'claim scp is not well-formed Unicode')
  }
  return undefined
}

function grantedScopes(c: Claims): Set<string> {
  const scopes = new Set<string>()
  const add = (s: string) => {
    for (const part of s.split(' ')) if (part) scopes.add(part)
  }
  if (typeof c.scope === 'string') add(c.scope)
  if (typeof c.scp === 'string') add(c.scp)
  else if (Array.isArray(c.scp)) for (const s of c.scp as string[]) add(s)
  return scopes
}

export function checkClaims(header: { readonly typ?: unknown }, payload: unknown, policy: ClaimPolicy, nowS: number): Identity | Denial {
  if (!payload || typeof payload !== 'object' || Array.isArray(payload)) return deny('malformed', 'token payload is not a JSON object')
  const c = payload as Claims
  const typeDenial = checkTypes(c)
  if (typeDenial) return typeDenial
  if (policy.tokenTypes && (typeof header.typ !== 'string' || !policy.tokenTypes.has(normalizeType(header.typ)))) {
    return deny('malformed', 'token type is not accepted')
  }
  for (const name of policy.requiredClaims) {
    if (c[name] === undefined || c[name] === null || c[name] === '') return deny('missing_claim', `token lacks the ${name} claim`)
  }
  if (typeof c.iss !== 'string' || !policy.issuers.has(c.iss)) return deny('wrong_issuer')
  const aud = c.aud
  const audiences = typeof aud === 'string' ? [aud] : Array.isArray(aud) ? (aud as string[]) : []
  if (!audiences.some((a) => policy.audiences.has(a))) return deny('wrong_audience')

  const skew = policy.clockSkewS
  const exp = c.exp as number
  const iat = c.iat as number | undefined
  const nbf = c.nbf as number | undefined
  // RFC 7519 §4.1.4: the token must not be accepted on or after exp (plus the skew allowance).
  if (nowS >= exp + skew) return deny('expired')
  if (nbf !== undefined && nowS + skew < nbf) return deny('not_yet_valid')
  if (iat !== undefined && iat > nowS + skew) return deny('not_yet_valid', 'token was issued in the future')
  if (policy.maxLifetimeS > 0) {
    if (iat === undefined) return deny('missing_claim', 'token lacks the iat claim the lifetime policy needs')
    if (exp - iat > policy.maxLifetimeS) return deny('lifetime_exceeds_policy')
  }
  return {
    iss: c.iss,
    sub: c.sub as string | undefined,
    clientId: (c.client_id ?? c.azp) as string | undefined,
    jti: c.jti as string | undefined,
    iatS: iat,
    expS: exp,
    scopes: grantedScopes(c),
    claims: c,
    memo: {},
  }
}
