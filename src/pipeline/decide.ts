// One request → one Decision: extract → verify → revocation → authorize. No sockets here;
// the stages it calls hide their I/O (keys, Redis) behind the interfaces in Deps.
//
//   const outcome = await decide({ method, url, authorization }, deps)
//   outcome.decision.allow ? forward(outcome.target) : answer(outcome.decision)
import type { RouteMatcher } from '../authorize/routes.js'
import { checkScopes } from '../authorize/scopes.js'
import { extractBearer } from '../extract/bearer.js'
import { normalizeTarget, type Target } from '../extract/request-target.js'
import { toTokenRef } from '../revocation/model.js'
import type { Verifier } from '../verify/verify-token.js'
import type { Clock, Decision, Denial, RevocationStore, StepTracer } from './types.js'

export interface DecisionInput {
  readonly method: string
  readonly url: string
  /** Every Authorization header the client sent (`req.headersDistinct.authorization`). */
  readonly authorization: readonly string[] | undefined
  /** Makes the key fetch and revocation lookup child spans of the decision; optional. */
  readonly steps?: StepTracer | undefined
}

export interface DecideDeps {
  readonly match: RouteMatcher
  readonly verify: Verifier
  readonly revocations: RevocationStore
  readonly revocableClaims: readonly string[]
  readonly allowQueryToken: boolean
  readonly maxTokenBytes: number
  readonly clock: Clock
}

export interface Outcome {
  readonly decision: Decision
  /** The normalized target: what was matched is what is forwarded. */
  readonly target: Target | undefined
  /** Milliseconds spent asking the revocation set; undefined when it was not asked. */
  readonly revocationMs: number | undefined
}

const deny = (d: Omit<Denial, 'allow'>): Denial => ({ allow: false, ...d })

export async function decide(input: DecisionInput, deps: DecideDeps): Promise<Outcome> {
  const target = normalizeTarget(input.url)
  if ('reason' in target) return { decision: deny(target), target: undefined, revocationMs: undefined }
  const rule = deps.match(input.method, target.path)
  const extracted = extractBearer(input.authorization, target.query, deps)
  if ('reason' in extracted) return { decision: deny({ ...extracted, rule }), target, revocationMs: undefined }
  // A query that held only access_token is forwarded without one, not as a bare `?`.
  const forwarded = extracted.query === target.query ? target : { ...target, query: extracted.query, hasQuery: extracted.query !== '' }
  if (rule?.public) return { decision: { allow: true, rule, identity: undefined }, target: forwarded, revocationMs: undefined }
  if (extracted.token === undefined) return { decision: deny({ reason: 'missing_token', rule }), target, revocationMs: undefined }

  const verified = await deps.verify(extracted.token, input.steps)
  if ('allow' in verified) return { decision: { ...verified, rule }, target, revocationMs: undefined }
  const identity = verified

  const startedMs = deps.clock.now()
  let revoked: boolean | 'unknown'
  try {
    const ref = toTokenRef(identity, deps.revocableClaims)
    revoked = await (input.steps ? input.steps.run('revocation_lookup', () => deps.revocations.isRevoked(ref)) : deps.revocations.isRevoked(ref))
  } catch {
    revoked = 'unknown'
  }
  const revocationMs = deps.clock.now() - startedMs
  if (revoked === true) return { decision: deny({ reason: 'revoked', rule, identity }), target, revocationMs }

  // Authorization comes after the token checks so an anonymous caller cannot map the route table.
  if (!rule) return { decision: deny({ reason: 'no_route', identity }), target, revocationMs }
  const short = checkScopes(identity.scopes, rule.scopes)
  if (short) return { decision: { ...short, rule, identity }, target, revocationMs }
  if (revoked === 'unknown') {
    if (rule.onRevocationUnavailable !== 'open') return { decision: deny({ reason: 'revocation_unavailable', rule, identity }), target, revocationMs }
    return { decision: { allow: true, rule, identity, failedOpen: true }, target: forwarded, revocationMs }
  }
  return { decision: { allow: true, rule, identity }, target: forwarded, revocationMs }
}
