// A POST /v1/revocations body → a RevocationEntry, or a clear reason it is refused. Pure.
//
//   parseRevocation({ claim: 'sub', value: 'ci-deployer', reason: '…' }, { config, nowS, by })
import type { Config } from '../config/load.js'
import type { RevocationEntry } from '../core/types.js'
import { expiryOf } from '../revocation/model.js'

const MAX_FUTURE_T_S = 86_400
// With the lifetime policy off, tokens may live any time, so no expiry follows from the policy.
// The longest LAPSE_MAX_TOKEN_LIFETIME accepts (schema.ts) is the cap, so a typo of a decade does
// not pin the entry in the set for good.
const MAX_EXPIRY_WITHOUT_POLICY_S = 31_536_000
const FIELDS = new Set(['claim', 'value', 'reason', 'iss', 'issued_before', 'expires_at'])

export function parseRevocation(body: unknown, ctx: { config: Config; nowS: number; by: string }): RevocationEntry | { error: string } {
  if (!body || typeof body !== 'object' || Array.isArray(body)) return { error: 'the body must be a JSON object' }
  const b = body as Record<string, unknown>
  const unknown = Object.keys(b).find((k) => !FIELDS.has(k))
  if (unknown) return { error: `unknown field "${unknown}"` }
  const { config, nowS } = ctx
  if (typeof b.claim !== 'string' || b.claim === '') return { error: '"claim" is required' }
  if (!config.revocableClaims.includes(b.claim))
    return { error: `"${b.claim}" is not a revocable claim (LAPSE_REVOCABLE_CLAIMS: ${config.revocableClaims.join(', ')})` }
  if (typeof b.value !== 'string' || b.value === '' || b.value.length > 1024)
    return { error: '"value" must be a non-empty string of at most 1024 characters' }
  // A lone UTF-16 surrogate has no UTF-8 form: no token carries it, and no Redis key can hold it.
  if (!(b.value as unknown as { isWellFormed(): boolean }).isWellFormed()) return { error: '"value" is not well-formed Unicode' }
  if (b.reason !== undefined && (typeof b.reason !== 'string' || b.reason.length > 512))
    return { error: '"reason" must be a string of at most 512 characters' }
  if (b.iss !== undefined && (typeof b.iss !== 'string' || !config.issuers.includes(b.iss)))
    return { error: '"iss" must be one of the configured issuers (LAPSE_ISSUER)' }
  const issuedBeforeS = b.issued_before === undefined ? nowS : toEpochS(b.issued_before)
  if (issuedBeforeS === undefined) return { error: '"issued_before" must be epoch seconds or an RFC 3339 time' }
  // A T in the future also refuses tokens minted until then (a pause), but a typo of a year
  // would pin the entry in the set for good: a day ahead is the limit.
  if (issuedBeforeS > nowS + MAX_FUTURE_T_S) return { error: '"issued_before" may be at most 24 hours in the future' }
  let expiresAtS = expiryOf(issuedBeforeS, config.maxLifetimeS, config.clockSkewS)
  // A jti entry refuses its token whatever the token's iat, T included: it must outlast any token
  // alive now, minted up to a skew ahead (iat) and accepted up to a skew past its exp.
  if (b.claim === 'jti' && expiresAtS !== undefined) expiresAtS = Math.max(expiresAtS, nowS + config.maxLifetimeS + 2 * config.clockSkewS)
  if (b.expires_at !== undefined) {
    const given = toEpochS(b.expires_at)
    if (given === undefined) return { error: '"expires_at" must be epoch seconds or an RFC 3339 time' }
    const latest = latestExpiry(issuedBeforeS, nowS, config)
    if (given > latest.atS) return { error: `"expires_at" may be at most ${new Date(latest.atS * 1000).toISOString()} (${latest.why})` }
    // The policy's expiry is the longest any matching token can live; a shorter one would free tokens early.
    expiresAtS = expiresAtS === undefined ? given : Math.max(expiresAtS, given)
  }
  if (expiresAtS === undefined) return { error: '"expires_at" is required while LAPSE_MAX_TOKEN_LIFETIME is 0' }
  if (expiresAtS <= nowS) return { error: 'every token issued before "issued_before" has expired already' }
  return {
    claim: b.claim,
    value: b.value,
    iss: b.iss as string | undefined,
    issuedBeforeS,
    reason: (b.reason as string | undefined) ?? '',
    by: ctx.by,
    createdAtS: nowS,
    expiresAtS,
  }
}

/**
 * How late `expires_at` may be. With the lifetime policy on, a token issued by T lives until
 * T + max lifetime + skew at most, and one alive now until now + the same: later, an entry could
 * only outstay every token it matches. (Now counts because a `jti` entry ignores T.)
 */
function latestExpiry(issuedBeforeS: number, nowS: number, config: Config): { atS: number; why: string } {
  if (config.maxLifetimeS > 0) {
    return {
      atS: Math.max(issuedBeforeS, nowS) + config.maxLifetimeS + config.clockSkewS,
      why: 'the later of "issued_before" and now, plus LAPSE_MAX_TOKEN_LIFETIME and LAPSE_CLOCK_SKEW',
    }
  }
  return { atS: nowS + MAX_EXPIRY_WITHOUT_POLICY_S, why: '365 days from now while LAPSE_MAX_TOKEN_LIFETIME is 0' }
}

function toEpochS(v: unknown): number | undefined {
  if (typeof v === 'number' && Number.isInteger(v) && v > 0) return v
  if (typeof v === 'string' && /^\d{4}-\d\d-\d\dT/.test(v)) {
    const ms = Date.parse(v)
    return Number.isNaN(ms) ? undefined : Math.floor(ms / 1000)
  }
  return undefined
}
