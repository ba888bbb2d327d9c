// One request → one Decision: extract → verify → revocation → authorize. No sockets here;
// the stages it calls hide their I/O (keys, Redis) behind the interfaces in Deps.
//
//   const outcome = await decide({ method, url, authorization, rawHeaders }, deps)   // an Outcome, or a promise of one
//   outcome.decision.allow ? forward(outcome.target) : answer(outcome.decision)
import { performance } from 'node:perf_hooks'
import type { RouteMatcher } from '../authorize/routes.js'
import { checkScopes } from '../authorize/scopes.js'
import { checkProof, jktOf, proofFieldsOf, type DpopPolicy } from '../bind/dpop.js'
import { checkCertBinding, type ClientCert } from '../bind/mtls.js'
import { peerAllowed } from '../bind/peers.js'
import { extractBearer } from '../extract/bearer.js'
import { extractOverrides } from '../extract/method-override.js'
import { normalizeTarget } from '../target/request-target.js'
import { toTokenRef } from '../revocation/model.js'
import type { Verifier } from '../verify/verify-token.js'
import type { Binding, Clock, Decision, Denial, Identity, Outcome, RevocationStore, Rule, StepTracer, Target, TokenRef } from '../core/types.js'

export interface DecisionInput {
  readonly method: string
  readonly url: string
  /** Every Authorization header the client sent (`req.headersDistinct.authorization`). */
  readonly authorization: readonly string[] | undefined
  /** The header list as sent, name then value (`req.rawHeaders`): method overrides are read from it. */
  readonly rawHeaders: readonly string[]
  /**
   * The client certificate of the connection (TLS) or of the mesh's XFCC header, with its
   * thumbprint and SPIFFE ID; undefined when there is none.
   */
  readonly clientCert?: ClientCert | undefined
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
  /** How DPoP proofs are checked (bind/dpop.ts); absent, a DPoP-bound token is refused. */
  readonly dpop?: DpopPolicy | undefined
  /** LAPSE_SENDER_CONSTRAINED: the default of a protected rule without `sender_constrained`. */
  readonly senderConstrained?: boolean | undefined
}

const deny = (d: Omit<Denial, 'allow'>): Denial => ({ allow: false, ...d })

/**
 * A token the verifier answers at once (from its cache, or checked against a key it already
 * knows) and a revocation set that answers in-process (memory, or Redis's local cache) decide
 * without a promise; anything that waits (a key fetch, a Redis read) returns one. http/exchange.ts
 * handles both.
 */
export function decide(input: DecisionInput, deps: DecideDeps): Outcome | Promise<Outcome> {
  const target = normalizeTarget(input.url)
  if ('reason' in target) return { decision: deny(target), target: undefined, revocationMs: undefined }
  const overrides = extractOverrides(input.rawHeaders, target.query)
  if (overrides !== undefined && 'reason' in overrides) return { decision: deny(overrides), target: undefined, revocationMs: undefined }
  const rule = deps.match(input.method, target.path)
  // The rules of the other methods the request names, each decided as its own request would be.
  const others = overrides === undefined ? undefined : rulesOf(overrides, input.method, target.path, deps.match)
  const extracted = extractBearer(input.authorization, target.query, deps, deps.verify.knows)
  if ('reason' in extracted) return { decision: deny({ ...extracted, rule }), target, revocationMs: undefined }
  // A query that held only access_token is forwarded without one, not as a bare `?`.
  const forwarded = extracted.query === target.query ? target : { ...target, query: extracted.query, hasQuery: extracted.query !== '' }
  if (rule?.public && (others === undefined || others.every((r) => r?.public))) {
    const refused = peerRefused(rule, others, input.clientCert)
    if (refused) return { decision: deny({ reason: 'peer_not_allowed', rule: refused }), target, revocationMs: undefined }
    return { decision: { allow: true, rule, identity: undefined }, target: forwarded, revocationMs: undefined }
  }
  if (extracted.token === undefined) return { decision: deny({ reason: 'missing_token', rule }), target, revocationMs: undefined }

  const request: Checked = { input, deps, rule, others, target, forwarded, token: extracted.token, scheme: extracted.scheme, binding: undefined, nonce: undefined }
  const verified = deps.verify.check(extracted.token, input.steps)
  if (!(verified instanceof Promise)) return afterVerify(verified, request)
  return verified.then((identity) => afterVerify(identity, request))
}

/** The first matching rule of each override method other than the request's own, in order. */
function rulesOf(methods: readonly string[], own: string, path: string, match: RouteMatcher): ReadonlyArray<Rule | undefined> | undefined {
  const rules: Array<Rule | undefined> = []
  for (const m of methods) if (m !== own) rules.push(match(m, path))
  return rules.length === 0 ? undefined : rules
}

/** What the stages after verification need of the request. */
interface Checked {
  readonly input: DecisionInput
  readonly deps: DecideDeps
  readonly rule: Rule | undefined
  /** The rules of the override methods (extract/method-override.ts); undefined without one. */
  readonly others: ReadonlyArray<Rule | undefined> | undefined
  readonly target: Target
  /** The target as forwarded (without a query-string token). */
  readonly forwarded: Target
  readonly token: string
  /** `dpop` when the token came under the DPoP scheme. */
  readonly scheme: 'dpop' | undefined
  /** The sender constraint the request proved, once it has. */
  readonly binding: Binding | undefined
  /** A DPoP nonce for the answer (RFC 9449 §9). */
  readonly nonce: string | undefined
}

function afterVerify(verified: Identity | Denial, c: Checked): Outcome | Promise<Outcome> {
  if ('allow' in verified) return { decision: { ...verified, rule: c.rule }, target: c.target, revocationMs: undefined }
  // A token bound to a key, or one sent under the DPoP scheme, is decided on its proof first.
  const jkt = jktOf(verified.claims)
  if (jkt === undefined && c.scheme === undefined) return checkRevocation(verified, c)
  return proveDpop(verified, jkt, c)
}

async function proveDpop(identity: Identity, jkt: string | undefined, c: Checked): Promise<Outcome> {
  const refuse = (reason: Denial['reason'], description: string, nonce?: string): Outcome =>
    ({ decision: deny({ reason, description, rule: c.rule, identity }), target: c.target, revocationMs: undefined, dpopNonce: nonce })
  // RFC 9449 §7.1: the DPoP scheme is for DPoP-bound tokens.
  if (jkt === undefined) return refuse('dpop_key_mismatch', 'token is not DPoP-bound')
  // RFC 9449 §7.2: a bound token sent as a bearer token is the downgrade a thief would try.
  if (c.scheme !== 'dpop') return refuse('dpop_key_mismatch', 'a DPoP-bound token needs the DPoP scheme and a proof')
  const policy = c.deps.dpop
  if (policy === undefined) return refuse('dpop_proof_invalid', 'DPoP proofs are not accepted here')
  const { proofs, host } = proofFieldsOf(c.input.rawHeaders)
  const got = await checkProof({ method: c.input.method, path: c.target.path, host, proofs, token: c.token, jkt, normalizePath, memo: identity.memo }, policy)
  if ('reason' in got) return refuse(got.reason, got.description, got.nonce)
  return checkRevocation(identity, { ...c, binding: got.binding, nonce: got.nonce })
}

/** An htu path normalized as a request target is, so the two compare equal (RFC 9449 §4.3 check 9). */
function normalizePath(path: string): string | undefined {
  const t = normalizeTarget(path)
  return 'reason' in t ? undefined : t.path
}

function checkRevocation(identity: Identity, c: Checked): Outcome | Promise<Outcome> {
  const { deps, input } = c
  const startedMs = deps.clock.now()
  const ref = tokenRefOf(identity, deps.revocableClaims)
  const startedPerfMs = performance.now()
  let now: boolean | undefined
  try {
    now = deps.revocations.isRevokedNow?.(ref)
  } catch {
    now = undefined
  }
  if (now !== undefined) {
    input.steps?.ran('revocation_lookup', startedPerfMs, now)
    return conclude(identity, now, deps.clock.now() - startedMs, c)
  }
  return lookUp(ref, c).then((revoked) => conclude(identity, revoked, deps.clock.now() - startedMs, c))
}

async function lookUp(ref: TokenRef, { input, deps }: Checked): Promise<boolean | 'unknown'> {
  try {
    return await (input.steps ? input.steps.run('revocation_lookup', () => deps.revocations.isRevoked(ref)) : deps.revocations.isRevoked(ref))
  } catch {
    return 'unknown'
  }
}

function conclude(identity: Identity, revoked: boolean | 'unknown', revocationMs: number, c: Checked): Outcome {
  const decision = decideOn(identity, revoked, c)
  const target = decision.allow ? c.forwarded : c.target
  return c.nonce === undefined ? { decision, target, revocationMs } : { decision, target, revocationMs, dpopNonce: c.nonce }
}

function decideOn(identity: Identity, revoked: boolean | 'unknown', proved: Checked): Decision {
  const { rule } = proved
  if (revoked === true) return deny({ reason: 'revoked', rule, identity })
  // RFC 8705 §3: a certificate-bound token is checked against the connection's certificate.
  const cert = checkCertBinding(identity.claims, proved.input.clientCert)
  if (cert === 'mtls_key_mismatch') return deny({ reason: cert, rule, identity })
  // A proof already checked (DPoP) stays the binding reported; either satisfies the policy.
  const c = cert === undefined || proved.binding !== undefined ? proved : { ...proved, binding: cert }
  if (c.others !== undefined) return decideEach(identity, revoked, c)

  // Authorization comes after the token checks so an anonymous caller cannot map the route table.
  if (!rule) return deny({ reason: 'no_route', identity })
  if (!peerAllowed(rule.peers, c.input.clientCert?.peer)) return deny({ reason: 'peer_not_allowed', rule, identity })
  const short = checkScopes(identity.scopes, rule.scopes)
  if (short) return { ...short, rule, identity }
  if (unbound(rule, c)) return deny({ reason: 'sender_constraint_required', rule, identity })
  if (revoked === 'unknown') {
    if (rule.onRevocationUnavailable !== 'open') return deny({ reason: 'revocation_unavailable', rule, identity })
    return allowed(rule, identity, c, true)
  }
  return allowed(rule, identity, c, false)
}

/** Whether the rule wants a bound token (its own `sender_constrained`, else LAPSE_SENDER_CONSTRAINED) and none was proved. */
function unbound(rule: Rule, c: Checked): boolean {
  return c.binding === undefined && !rule.public && (rule.senderConstrained ?? c.deps.senderConstrained ?? false)
}

function allowed(rule: Rule, identity: Identity, c: Checked, failedOpen: boolean): Decision {
  // The usual request is neither: its decision keeps the shape it always had.
  if (c.binding === undefined) return failedOpen ? { allow: true, rule, identity, failedOpen } : { allow: true, rule, identity }
  return failedOpen ? { allow: true, rule, identity, failedOpen, binding: c.binding } : { allow: true, rule, identity, binding: c.binding }
}

/** The first of the rules (the request's own, then the override methods') whose `peers` refuse the caller. */
function peerRefused(rule: Rule, others: ReadonlyArray<Rule | undefined> | undefined, cert: ClientCert | undefined): Rule | undefined {
  if (!peerAllowed(rule.peers, cert?.peer)) return rule
  return others?.find((r) => r !== undefined && !peerAllowed(r.peers, cert?.peer))
}

/**
 * A request that names other methods is allowed only if each method's rule allows it; the first
 * refusal, in the order the methods came (its own first), is the answer. The allowing rule
 * reported is the first protected one, or one of them that cuts streams at expiry if any does:
 * the stricter applies.
 */
function decideEach(identity: Identity, revoked: false | 'unknown', c: Checked): Decision {
  const { rule, others } = c
  let governing: Rule | undefined
  for (const r of [rule, ...others!]) {
    if (!r) return deny({ reason: 'no_route', identity })
    if (!peerAllowed(r.peers, c.input.clientCert?.peer)) return deny({ reason: 'peer_not_allowed', rule: r, identity })
    if (r.public) continue
    const short = checkScopes(identity.scopes, r.scopes)
    if (short) return { ...short, rule: r, identity }
    if (unbound(r, c)) return deny({ reason: 'sender_constraint_required', rule: r, identity })
    if (revoked === 'unknown' && r.onRevocationUnavailable !== 'open') return deny({ reason: 'revocation_unavailable', rule: r, identity })
    if (governing === undefined || (r.cutStreamsAtExpiry && !governing.cutStreamsAtExpiry)) governing = r
  }
  return allowed(governing ?? rule!, identity, c, revoked === 'unknown' && governing !== undefined)
}

/** The token's TokenRef, built once per token (its memo's `tokenRef` slot) for these revocable claims. */
function tokenRefOf(identity: Identity, revocableClaims: readonly string[]): TokenRef {
  const known = identity.memo.tokenRef
  if (known !== undefined && known.claims === revocableClaims) return known.ref
  const ref = toTokenRef(identity, revocableClaims)
  identity.memo.tokenRef = { claims: revocableClaims, ref }
  return ref
}
