// The revocation model of DESIGN.md in pure functions, shared by every RevocationStore.
import type { Identity, RevocationEntry, RevocationQuery, TokenRef } from '../core/types.js'

/** A map key for (claim, value, issuer); NUL cannot occur in a claim name or issuer we accept. */
export const keyOf = (claim: string, value: string, iss: string | undefined): string => `${claim}\u0000${iss ?? '*'}\u0000${value}`

/**
 * Revoked when the token was issued at or before T. A token without `iat` (only possible
 * when `iat` is not required) cannot prove it came later, so it is revoked: the safe side.
 * A `jti` entry names one token, which no later grant reuses, so T is not compared: an issuer
 * whose clock runs ahead of ours (Lapse accepts an `iat` up to LAPSE_CLOCK_SKEW in the future)
 * would otherwise stamp that very token "after" a revocation written moments after it was minted.
 */
export const entryMatches = (entry: RevocationEntry | undefined, iatS: number | undefined): boolean =>
  entry !== undefined && (iatS === undefined || entry.claim === 'jti' || iatS <= entry.issuedBeforeS)

export const MAX_VALUES_PER_CLAIM = 16

/** The values of one token that the set is keyed on, in `revocableClaims` order. */
export function toTokenRef(identity: Identity, revocableClaims: readonly string[]): TokenRef {
  const values: Array<readonly [string, string]> = []
  const add = (claim: string, value: unknown) => {
    if (typeof value === 'string' && value !== '') values.push([claim, value])
    else if (typeof value === 'number' && Number.isFinite(value)) values.push([claim, String(value)])
  }
  for (const claim of revocableClaims) {
    // The client is `client_id`, else `azp` (claims.ts, X-Auth-Client-Id, audit lines), so revoking
    // a `client_id` must reach a token that names its client only in `azp`.
    const value = identity.claims[claim] ?? (claim === 'client_id' ? identity.claims.azp : undefined)
    // A token of several tasks (`task: ["MIGR-42", "MIGR-43"]`) is revoked by any of them. The
    // bound keeps one check one round trip of a sane size; elements past it cannot be revoked.
    if (Array.isArray(value)) for (const element of value.slice(0, MAX_VALUES_PER_CLAIM)) add(claim, element)
    else add(claim, value)
  }
  return { iss: identity.iss, iatS: identity.iatS, values, memo: identity.memo }
}

/**
 * When an entry may leave the set: after T + max lifetime + skew every token it could match
 * has expired anyway. Without a lifetime policy the caller must give the expiry.
 */
export function expiryOf(issuedBeforeS: number, maxLifetimeS: number, clockSkewS: number): number | undefined {
  return maxLifetimeS > 0 ? issuedBeforeS + maxLifetimeS + clockSkewS : undefined
}

/** The filters of a RevocationQuery, applied to one entry (both stores filter the same way). */
export function queryMatches(q: RevocationQuery, e: RevocationEntry): boolean {
  if (q.claim !== undefined && e.claim !== q.claim) return false
  if (q.iss !== undefined && e.iss !== q.iss) return false
  return q.reasonContains === undefined || e.reason.toLowerCase().includes(q.reasonContains.toLowerCase())
}
