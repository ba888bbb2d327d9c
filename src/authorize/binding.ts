// A rule's binding beyond scopes: its claim requirements (literals or path captures) and its
// freshness (RFC 9470 max_age / acr_values). Pure and synchronous; the use limit, which needs
// shared state, is counted by decide/decide.ts after every other check allowed.
//
//   const values = captureValues(binding, target.path)        // the decoded {name} segments
//   const refused = checkBinding(binding, identity, values, nowS)
//   if (!refused) forward with boundFields(binding, values)    // X-Auth-Bound-* headers
import type { Identity, RuleBinding } from '../core/types.js'

export interface BindingRefusal {
  readonly reason: 'claim_mismatch' | 'token_too_old' | 'acr_insufficient'
  readonly description?: string | undefined
}

const TOO_OLD: BindingRefusal = Object.freeze({ reason: 'token_too_old' })
const WEAK: BindingRefusal = Object.freeze({ reason: 'acr_insufficient' })
const NONE: ReadonlyArray<string | undefined> = Object.freeze([])

/**
 * The captured segments of a path the rule matched, each decoded once: the normalizer leaves only
 * `/ ? # %`, non-ASCII and other reserved bytes escaped, always as valid UTF-8
 * (target/request-target.ts), so decoding cannot fail and the value is what an upstream that
 * decodes its path once reads there.
 */
export function captureValues(binding: RuleBinding, path: string): ReadonlyArray<string | undefined> {
  const captures = binding.captures
  if (captures.length === 0) return NONE
  const values: Array<string | undefined> = []
  // A normalized path starts with `/` and has no empty segment: segment i follows the (i+1)-th slash.
  let segment = 0
  let start = 1
  for (const c of captures) {
    while (segment < c.segment) {
      start = path.indexOf('/', start) + 1
      segment++
    }
    const end = path.indexOf('/', start)
    const raw = end === -1 ? path.slice(start) : path.slice(start, end)
    values.push(raw.includes('%') ? decodeOnce(raw) : raw)
  }
  return values
}

/** Never fails on a normalized path; if it ever did, the capture would have no value, so it matches no claim and is not sent. */
function decodeOnce(segment: string): string | undefined {
  try {
    return decodeURIComponent(segment)
  } catch {
    return undefined
  }
}

/** Why the token does not satisfy the rule's binding, or undefined when it does. */
export function checkBinding(
  binding: RuleBinding,
  identity: Identity,
  values: ReadonlyArray<string | undefined>,
  nowS: number,
): BindingRefusal | undefined {
  const claims = identity.claims
  for (const req of binding.claims) {
    const held = claims[req.claim]
    // A claim holding a list satisfies the requirement when any element does.
    const ok = Array.isArray(held)
      ? held.some((v) => satisfies(req.literals, req.captures, values, v))
      : satisfies(req.literals, req.captures, values, held)
    if (!ok) return { reason: 'claim_mismatch', description: req.description }
  }
  if (binding.acrValues !== undefined) {
    const acr = claims.acr
    if (typeof acr !== 'string' || !binding.acrValues.includes(acr)) return WEAK
  }
  if (binding.maxTokenAgeS !== undefined) {
    // RFC 9470 §3: max_age counts from the last active authentication, auth_time (RFC 9068
    // §2.2.1) when the token says; else from iat, which is never earlier. A token that says
    // neither cannot show it is fresh.
    const authTime = claims.auth_time
    const since = typeof authTime === 'number' && Number.isFinite(authTime) ? authTime : identity.iatS
    if (since === undefined || nowS - since > binding.maxTokenAgeS) return TOO_OLD
  }
  return undefined
}

/** Exact comparison: a literal with ===, a capture with the decoded segment (a string claim only). */
function satisfies(
  literals: ReadonlyArray<string | number | boolean>,
  refs: readonly number[],
  values: ReadonlyArray<string | undefined>,
  held: unknown,
): boolean {
  if (typeof held !== 'string' && typeof held !== 'number' && typeof held !== 'boolean') return false
  if (literals.includes(held)) return true
  if (typeof held !== 'string') return false
  for (const i of refs) if (values[i] === held) return true
  return false
}

/** The X-Auth-Bound-* fields of the captures a claim bound, as a flat name, value list (values as decoded: http/headers.ts cleans them); undefined when none. */
export function boundFields(binding: RuleBinding, values: ReadonlyArray<string | undefined>): readonly string[] | undefined {
  let fields: string[] | undefined
  const captures = binding.captures
  for (let i = 0; i < captures.length; i++) {
    const header = captures[i]!.header
    const value = values[i]
    if (header !== undefined && value !== undefined) (fields ??= []).push(header, value)
  }
  return fields
}
