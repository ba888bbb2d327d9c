// Every denial speaks RFC 6750 from this one table: status, challenge and a short human phrase.
// The answers that are not decisions have their table in answers.ts, and share its one shape.
//
//   const { status, headers, body } = toAnswer(denial, realm)
import { errorAnswer, RETRY_AFTER_S, type Answer } from './answers.js'
import type { Denial, DenyReason } from './types.js'

type Challenge =
  | 'none'
  | 'bare'
  | 'invalid_token'
  | 'invalid_request'
  | 'insufficient_scope'
  // RFC 9449 §7.1: the DPoP scheme's challenges, with the algorithms proofs may use.
  | 'dpop_proof'
  | 'dpop_token'
  | 'dpop_nonce'
  // RFC 9449 §7.1 with RFC 6750: a route that wants a bound token offers both schemes.
  | 'bearer_and_dpop'
  // RFC 9470 §3 and route binding (authorize/binding.ts).
  | 'claim_mismatch'
  | 'insufficient_user_authentication'

interface ReasonRow {
  readonly status: 400 | 401 | 403 | 421 | 431 | 503
  readonly challenge: Challenge
  readonly error: string
  readonly description: string
}

// Record<DenyReason, …> makes the compiler keep this table complete.
export const REASONS: Readonly<Record<DenyReason, ReasonRow>> = {
  // RFC 6750 §3.1: no error code when the request carried no credentials at all.
  missing_token: { status: 401, challenge: 'bare', error: 'unauthorized', description: 'a bearer token is required' },
  invalid_request: { status: 400, challenge: 'invalid_request', error: 'invalid_request', description: 'malformed request' },
  malformed: { status: 401, challenge: 'invalid_token', error: 'invalid_token', description: 'token is malformed' },
  alg_not_allowed: { status: 401, challenge: 'invalid_token', error: 'invalid_token', description: 'token algorithm is not allowed' },
  unknown_key: { status: 401, challenge: 'invalid_token', error: 'invalid_token', description: 'token signing key is unknown' },
  bad_signature: { status: 401, challenge: 'invalid_token', error: 'invalid_token', description: 'token signature is invalid' },
  expired: { status: 401, challenge: 'invalid_token', error: 'invalid_token', description: 'token expired' },
  not_yet_valid: { status: 401, challenge: 'invalid_token', error: 'invalid_token', description: 'token is not yet valid' },
  wrong_issuer: { status: 401, challenge: 'invalid_token', error: 'invalid_token', description: 'token issuer is not accepted' },
  wrong_audience: { status: 401, challenge: 'invalid_token', error: 'invalid_token', description: 'token audience is not accepted' },
  missing_claim: { status: 401, challenge: 'invalid_token', error: 'invalid_token', description: 'token lacks a required claim' },
  lifetime_exceeds_policy: {
    status: 401,
    challenge: 'invalid_token',
    error: 'invalid_token',
    description: 'token lifetime exceeds policy',
  },
  revoked: { status: 401, challenge: 'invalid_token', error: 'invalid_token', description: 'token was revoked' },
  insufficient_scope: {
    status: 403,
    challenge: 'insufficient_scope',
    error: 'insufficient_scope',
    description: 'token scopes do not cover this route',
  },
  // No rule means deny; there is nothing a client could fix with another token.
  no_route: { status: 403, challenge: 'none', error: 'forbidden', description: 'no route rule allows this request' },
  // Fail closed, honestly: 503 tells the client to retry rather than that its token is bad.
  keys_unavailable: { status: 503, challenge: 'none', error: 'temporarily_unavailable', description: 'verification keys are unavailable' },
  revocation_unavailable: {
    status: 503,
    challenge: 'none',
    error: 'temporarily_unavailable',
    description: 'revocation set is unavailable',
  },
  // RFC 9110 §15.5.20: a valid Host this sidecar does not serve (LAPSE_HOSTS); the client may
  // retry on a connection to the right server. Decided before any token is looked at.
  host_not_allowed: { status: 421, challenge: 'none', error: 'misdirected_request', description: 'this host is not served here' },
  // RFC 6585 §5: a head with more fields than LAPSE_MAX_HEADER_FIELDS. An invalid request in
  // RFC 6750's terms (§3.1 "otherwise malformed"), so its challenge is invalid_request's; the
  // status says what is wrong with it.
  too_many_header_fields: { status: 431, challenge: 'invalid_request', error: 'invalid_request', description: 'too many header fields' },
  // RFC 9449 §4.3 and §7.1: a proof that fails a check is an invalid proof, not an invalid token.
  dpop_proof_invalid: { status: 401, challenge: 'dpop_proof', error: 'invalid_dpop_proof', description: 'DPoP proof is invalid' },
  // RFC 9449 §11.1: a proof is accepted once; a second use is a replay.
  dpop_replayed: { status: 401, challenge: 'dpop_proof', error: 'invalid_dpop_proof', description: 'DPoP proof was already used' },
  // RFC 9449 §7.1: the token is bound to another key than the proof's (or sent without its proof).
  dpop_key_mismatch: { status: 401, challenge: 'dpop_token', error: 'invalid_token', description: 'token is not bound to the proof key' },
  // RFC 9449 §9: the client retries with the nonce of the DPoP-Nonce header.
  dpop_nonce_required: { status: 401, challenge: 'dpop_nonce', error: 'use_dpop_nonce', description: 'DPoP proof needs a current nonce' },
  sender_constraint_required: {
    status: 401,
    challenge: 'bearer_and_dpop',
    error: 'invalid_token',
    description: 'this route accepts only sender-constrained tokens',
  },
  // Fail closed, as revocation_unavailable: a proof whose single use cannot be recorded is refused.
  dpop_replay_unavailable: {
    status: 503,
    challenge: 'none',
    error: 'temporarily_unavailable',
    description: 'DPoP replay cache is unavailable',
  },
  // A route rule binds the grant to a tenant, an environment…: the token is valid but not for
  // this resource. RFC 6750 §3.1's insufficient_scope is the 403 code for a token short of what
  // the resource needs; the description names the claim (from the rule), never a value.
  claim_mismatch: {
    status: 403,
    challenge: 'claim_mismatch',
    error: 'insufficient_scope',
    description: 'token claims do not match this route',
  },
  // RFC 9470 §3: a step-up challenge, 401 with the max_age / acr_values the rule requires, so the
  // client fetches a fresher or stronger token.
  token_too_old: {
    status: 401,
    challenge: 'insufficient_user_authentication',
    error: 'insufficient_user_authentication',
    description: 'a more recent authentication is required',
  },
  acr_insufficient: {
    status: 401,
    challenge: 'insufficient_user_authentication',
    error: 'insufficient_user_authentication',
    description: 'a stronger authentication is required',
  },
  // The rule's max_uses are spent: the token no longer works here, as an expired one would not.
  token_reused: { status: 401, challenge: 'invalid_token', error: 'invalid_token', description: 'token has no uses left on this route' },
  // RFC 8705 §3: a certificate-bound token on a connection without that certificate is refused
  // with 401 and invalid_token.
  mtls_key_mismatch: {
    status: 401,
    challenge: 'invalid_token',
    error: 'invalid_token',
    description: 'token is bound to another client certificate',
  },
  // RFC 9110 §15.5.4: the calling workload (its SPIFFE ID) may not use this route; another token
  // would not change that, so no challenge, as for no_route.
  peer_not_allowed: { status: 403, challenge: 'none', error: 'forbidden', description: 'this workload may not call this route' },
}

/** What the DPoP challenges name besides the table's row: the proof algorithms, and the nonce to use. */
export interface DpopAnswer {
  /** LAPSE_DPOP_ALGORITHMS, space-separated (RFC 9449 §7.1 `algs`). */
  readonly algs: string
  /** The current nonce when LAPSE_DPOP_NONCE is on: a `dpop_nonce` answer carries it in `DPoP-Nonce`. */
  readonly nonce?: string | undefined
  /** The token came under the DPoP scheme: a token error is answered in that scheme's challenge (RFC 9449 §7.1). */
  readonly scheme?: boolean | undefined
}

/** Quotes a value for an auth-param; our descriptions and scope names never contain `"` or `\`, but be safe. */
const quote = (value: string) => `"${value.replace(/["\\]/g, '')}"`

export function toChallenge(denial: Denial, realm: string, dpop?: DpopAnswer): string | undefined {
  const row = REASONS[denial.reason]
  const description = denial.description ?? row.description
  const dpopScheme = () => `DPoP realm=${quote(realm)}, algs=${quote(dpop?.algs ?? '')}`
  switch (row.challenge) {
    case 'none':
      return undefined
    case 'bare':
      return `Bearer realm=${quote(realm)}`
    case 'dpop_proof':
    case 'dpop_token':
    case 'dpop_nonce':
      return `${dpopScheme()}, error="${row.error}", error_description=${quote(description)}`
    // RFC 9110 §11.6.1: one field may carry several challenges, comma-separated.
    case 'bearer_and_dpop':
      return `Bearer realm=${quote(realm)}, error="invalid_token", error_description=${quote(description)}, ${dpopScheme()}`
    case 'insufficient_scope':
      return `Bearer realm=${quote(realm)}, error="insufficient_scope", error_description=${quote(description)}, scope=${quote((denial.requiredScopes ?? []).join(' '))}`
    case 'claim_mismatch':
      return `Bearer realm=${quote(realm)}, error="insufficient_scope", error_description=${quote(description)}`
    case 'insufficient_user_authentication':
      return stepUpChallenge(denial, description, realm)
    default:
      if (row.challenge === 'invalid_token' && dpop?.scheme)
        return `${dpopScheme()}, error="invalid_token", error_description=${quote(description)}`
      return `Bearer realm=${quote(realm)}, error="${row.challenge}", error_description=${quote(description)}`
  }
}

/** RFC 9470 §3: the rule's freshness and strength requirements, both when it has both. */
function stepUpChallenge(denial: Denial, description: string, realm: string): string {
  const binding = denial.rule?.binding
  let challenge = `Bearer realm=${quote(realm)}, error="insufficient_user_authentication", error_description=${quote(description)}`
  if (binding?.maxTokenAgeS !== undefined) challenge += `, max_age=${quote(String(binding.maxTokenAgeS))}`
  if (binding?.acrValues !== undefined) challenge += `, acr_values=${quote(binding.acrValues.join(' '))}`
  return challenge
}

const RETRY = { 'retry-after': String(RETRY_AFTER_S) }

export function toAnswer(denial: Denial, realm: string, dpop?: DpopAnswer): Answer {
  const row = REASONS[denial.reason]
  const challenge = toChallenge(denial, realm, dpop)
  // Fail closed, honestly: a 503 tells the client to retry (RFC 9110 §10.2.3).
  const retry = row.status === 503
  let headers: Record<string, string> | undefined =
    challenge === undefined
      ? retry
        ? RETRY
        : undefined
      : retry
        ? { 'www-authenticate': challenge, ...RETRY }
        : { 'www-authenticate': challenge }
  // RFC 9449 §9: the nonce the client is to put in its next proof.
  if (row.challenge === 'dpop_nonce' && dpop?.nonce !== undefined) headers = { ...headers, 'dpop-nonce': dpop.nonce }
  return errorAnswer(row.status, row.error, denial.description ?? row.description, headers)
}
