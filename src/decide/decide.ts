// One request → one Decision: extract → verify → revocation → authorize. No sockets here;
// the stages it calls hide their I/O (keys, Redis) behind the interfaces in Deps.
//
//   const outcome = await decide({ method, url, authorization, rawHeaders }, deps)   // an Outcome, or a promise of one
//   outcome.decision.allow ? forward(outcome.target) : answer(outcome.decision)
import { performance } from 'node:perf_hooks'
import { boundFields, captureValues, checkBinding } from '../authorize/binding.js'
import type { RouteMatcher } from '../authorize/routes.js'
import { nowS } from '../core/clock.js'
import { checkScopes } from '../authorize/scopes.js'
import { checkProof, jktOf, proofFieldsOf, type DpopPolicy, type ProofResult } from '../bind/dpop.js'
import { checkCertBinding, type ClientCert } from '../bind/mtls.js'
import { peerAllowed } from '../bind/peers.js'
import { extractBearer } from '../extract/bearer.js'
import { extractOverrides } from '../extract/method-override.js'
import { normalizeTarget } from '../target/request-target.js'
import { toTokenRef } from '../revocation/model.js'
import type { Verifier } from '../verify/verify-token.js'
import type {
  Binding,
  Clock,
  Decision,
  Denial,
  Identity,
  Outcome,
  RevocationStore,
  Rule,
  StepTracer,
  Target,
  TokenRef,
  UseCounter,
} from '../core/types.js'

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
  /** The target is forwarded as sent by a front proxy (the decision API): see normalizeTarget. */
  readonly asSent?: boolean | undefined
  /** The original request's host when a front proxy names it apart from Host (forward auth's X-Forwarded-Host): DPoP's htu is checked against it. */
  readonly originalHost?: string | undefined
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
  /** Counts the uses of rules with `max_uses`; shares the revocation set's store. */
  readonly uses: UseCounter
  /** A use count lives until the token's `exp` plus this. */
  readonly clockSkewS: number
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
  const target = normalizeTarget(input.url, input.asSent)
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

  const request: Checked = {
    input,
    deps,
    rule,
    others,
    target,
    forwarded,
    token: extracted.token,
    scheme: extracted.scheme,
    binding: undefined,
    nonce: undefined,
  }
  const verified = deps.verify.check(extracted.token, input.steps, extracted.jws)
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
  /** The DPoP proof's binding, once the request has proved it. */
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

function proveDpop(identity: Identity, jkt: string | undefined, c: Checked): Outcome | Promise<Outcome> {
  const refuse = (reason: Denial['reason'], description: string, nonce?: string): Outcome => ({
    decision: deny({ reason, description, rule: c.rule, identity }),
    target: c.target,
    revocationMs: undefined,
    dpopNonce: nonce,
  })
  // RFC 9449 §7.1: the DPoP scheme is for DPoP-bound tokens.
  if (jkt === undefined) return refuse('dpop_key_mismatch', 'token is not DPoP-bound')
  // RFC 9449 §7.2: a bound token sent as a bearer token is the downgrade a thief would try.
  if (c.scheme !== 'dpop') return refuse('dpop_key_mismatch', 'a DPoP-bound token needs the DPoP scheme and a proof')
  const policy = c.deps.dpop
  if (policy === undefined) return refuse('dpop_proof_invalid', 'DPoP proofs are not accepted here')
  const fields = proofFieldsOf(c.input.rawHeaders)
  const { proofs } = fields
  const host = c.input.originalHost ?? fields.host
  const proved = (got: ProofResult): Outcome | Promise<Outcome> => {
    if ('reason' in got) return refuse(got.reason, got.description, got.nonce)
    const outcome = checkRevocation(identity, { ...c, binding: got.binding, nonce: got.nonce })
    if (got.nonce === undefined) return outcome
    const nonce = got.nonce
    return outcome instanceof Promise ? outcome.then((o) => withNonce(o, nonce)) : withNonce(outcome, nonce)
  }
  // A proof whose key is known and a replay cache in memory answer without a promise (bind/dpop.ts).
  const got = checkProof(
    { method: c.input.method, path: c.target.path, host, proofs, token: c.token, jkt, normalizePath, memo: identity.memo },
    policy,
  )
  return got instanceof Promise ? got.then(proved) : proved(got)
}

/** RFC 9449 §8: the client's nonce was of the previous step, so the answer carries the current one. */
const withNonce = (o: Outcome, nonce: string): Outcome => ({ ...o, dpopNonce: nonce })

/** An htu path normalized as a request target is, so the two compare equal (RFC 9449 §4.3 check 9). */
function normalizePath(path: string): string | undefined {
  const t = normalizeTarget(path)
  return 'reason' in t ? undefined : t.path
}

/** Whether the rule wants a bound token (its own `sender_constrained`, else LAPSE_SENDER_CONSTRAINED) and none was proved. */
function unbound(rule: Rule, binding: Binding | undefined, deps: DecideDeps): boolean {
  return binding === undefined && !rule.public && (rule.senderConstrained ?? deps.senderConstrained ?? false)
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
    return await (input.steps
      ? input.steps.run('revocation_lookup', () => deps.revocations.isRevoked(ref))
      : deps.revocations.isRevoked(ref))
  } catch {
    return 'unknown'
  }
}

function conclude(identity: Identity, revoked: boolean | 'unknown', revocationMs: number, c: Checked): Outcome | Promise<Outcome> {
  const { rule, target, forwarded, deps } = c
  if (revoked === true) return { decision: deny({ reason: 'revoked', rule, identity }), target, revocationMs }
  const cert = checkCertBinding(identity.claims, c.input.clientCert)
  if (cert === 'mtls_key_mismatch') return { decision: deny({ reason: cert, rule, identity }), target, revocationMs }
  // A DPoP proof already checked stays the binding reported; either satisfies sender_constrained.
  const binding = c.binding ?? cert
  if (c.others !== undefined) return concludeEach(identity, revoked, revocationMs, c, binding)

  // Authorization comes after the token checks so an anonymous caller cannot map the route table.
  if (!rule) return { decision: deny({ reason: 'no_route', identity }), target, revocationMs }
  if (!peerAllowed(rule.peers, c.input.clientCert?.peer))
    return { decision: deny({ reason: 'peer_not_allowed', rule, identity }), target, revocationMs }
  const short = checkScopes(identity.scopes, rule.scopes)
  if (short) return { decision: { ...short, rule, identity }, target, revocationMs }
  if (unbound(rule, binding, deps))
    return { decision: deny({ reason: 'sender_constraint_required', rule, identity }), target, revocationMs }
  const ruleBinding = rule.binding
  let bound: readonly string[] | undefined
  if (ruleBinding !== undefined) {
    const values = captureValues(ruleBinding, target.path)
    const refused = checkBinding(ruleBinding, identity, values, nowS(deps.clock))
    if (refused) return { decision: deny({ ...refused, rule, identity }), target, revocationMs }
    bound = boundFields(ruleBinding, values)
  }
  if (revoked === 'unknown' && rule.onRevocationUnavailable !== 'open')
    return { decision: deny({ reason: 'revocation_unavailable', rule, identity }), target, revocationMs }
  if (ruleBinding === undefined) {
    // A rule with no binding, the common case: the decision as it always was.
    if (revoked === 'unknown')
      return { decision: { allow: true, rule, identity, failedOpen: true, binding }, target: forwarded, revocationMs }
    return { decision: { allow: true, rule, identity, binding }, target: forwarded, revocationMs }
  }
  const allowed: Decision =
    revoked === 'unknown'
      ? { allow: true, rule, identity, failedOpen: true, binding, bound }
      : { allow: true, rule, identity, binding, bound }
  // Counted last, so that only a request every other check allowed spends a use.
  if (ruleBinding.maxUses !== undefined) return takeUses([rule], 0, allowed, revocationMs, c)
  return { decision: allowed, target: forwarded, revocationMs }
}

const USE_COUNTER_DOWN = 'use counter is unavailable'

/**
 * Takes one use under each of `limited[from…]`, in order, then answers `allowed` carrying the
 * last use's number. A spent rule is token_reused; a counter that cannot answer fails closed
 * as the revocation check does, or open where the rule says so (no use is counted then).
 */
function takeUses(limited: readonly Rule[], from: number, allowed: Decision, revocationMs: number, c: Checked): Outcome | Promise<Outcome> {
  const { deps, target, forwarded } = c
  const identity = allowed.identity!
  for (let i = from; i < limited.length; i++) {
    const rule = limited[i]!
    const max = rule.binding!.maxUses!
    // config/load.ts refuses max_uses unless jti is a required claim.
    if (identity.jti === undefined) return { decision: deny({ reason: 'missing_claim', rule, identity }), target, revocationMs }
    let taken: number | Promise<number> | 'unknown'
    try {
      taken = deps.uses.take(
        { scope: rule.binding!.useScope, iss: identity.iss, jti: identity.jti, memo: identity.memo },
        max,
        identity.expS + deps.clockSkewS,
      )
    } catch {
      taken = 'unknown'
    }
    if (taken instanceof Promise) {
      return taken
        .then(
          (n) => n,
          (): 'unknown' => 'unknown',
        )
        .then((n) => {
          const refused = refusedUse(rule, n, max, identity, target, revocationMs)
          return refused ?? takeUses(limited, i + 1, withUse(allowed, n, rule), revocationMs, c)
        })
    }
    const refused = refusedUse(rule, taken, max, identity, target, revocationMs)
    if (refused) return refused
    allowed = withUse(allowed, taken, rule)
  }
  return { decision: allowed, target: forwarded, revocationMs }
}

function refusedUse(
  rule: Rule,
  n: number | 'unknown',
  max: number,
  identity: Identity,
  target: Target,
  revocationMs: number,
): Outcome | undefined {
  if (n === 'unknown') {
    if (rule.onRevocationUnavailable === 'open') return undefined
    return { decision: deny({ reason: 'revocation_unavailable', rule, identity, description: USE_COUNTER_DOWN }), target, revocationMs }
  }
  if (n > max) return { decision: deny({ reason: 'token_reused', rule, identity, use: n }), target, revocationMs }
  return undefined
}

function withUse(allowed: Decision, n: number | 'unknown', rule: Rule): Decision {
  if (!allowed.allow) return allowed
  if (n === 'unknown') return { ...allowed, rule, failedOpen: true, use: undefined }
  return { ...allowed, rule, use: n }
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
 * the stricter applies. Every rule with a use limit spends one use.
 */
function concludeEach(
  identity: Identity,
  revoked: false | 'unknown',
  revocationMs: number,
  c: Checked,
  binding: Binding | undefined,
): Outcome | Promise<Outcome> {
  const { input, rule, others, target, forwarded, deps } = c
  let governing: Rule | undefined
  let bound: readonly string[] | undefined
  let limited: Rule[] | undefined
  for (const r of [rule, ...others!]) {
    if (!r) return { decision: deny({ reason: 'no_route', identity }), target, revocationMs }
    if (!peerAllowed(r.peers, input.clientCert?.peer))
      return { decision: deny({ reason: 'peer_not_allowed', rule: r, identity }), target, revocationMs }
    if (r.public) continue
    const short = checkScopes(identity.scopes, r.scopes)
    if (short) return { decision: { ...short, rule: r, identity }, target, revocationMs }
    if (unbound(r, binding, deps))
      return { decision: deny({ reason: 'sender_constraint_required', rule: r, identity }), target, revocationMs }
    if (r.binding !== undefined) {
      const values = captureValues(r.binding, target.path)
      const refused = checkBinding(r.binding, identity, values, nowS(deps.clock))
      if (refused) return { decision: deny({ ...refused, rule: r, identity }), target, revocationMs }
      bound ??= boundFields(r.binding, values)
      if (r.binding.maxUses !== undefined) (limited ??= []).push(r)
    }
    if (revoked === 'unknown' && r.onRevocationUnavailable !== 'open')
      return { decision: deny({ reason: 'revocation_unavailable', rule: r, identity }), target, revocationMs }
    if (governing === undefined || (r.cutStreamsAtExpiry && !governing.cutStreamsAtExpiry)) governing = r
  }
  const allowedRule = governing ?? rule!
  const allowed: Decision =
    revoked === 'unknown' && governing !== undefined
      ? { allow: true, rule: allowedRule, identity, failedOpen: true, binding, bound }
      : { allow: true, rule: allowedRule, identity, binding, bound }
  if (limited !== undefined) {
    // The governing rule is reported, whichever rule's use came last.
    const counted = takeUses(limited, 0, allowed, revocationMs, c)
    const keep = (o: Outcome): Outcome => (o.decision.allow ? { ...o, decision: { ...o.decision, rule: allowedRule } } : o)
    return counted instanceof Promise ? counted.then(keep) : keep(counted)
  }
  return { decision: allowed, target: forwarded, revocationMs }
}

/** The token's TokenRef, built once per token (its memo's `tokenRef` slot) for these revocable claims. */
function tokenRefOf(identity: Identity, revocableClaims: readonly string[]): TokenRef {
  const known = identity.memo.tokenRef
  if (known !== undefined && known.claims === revocableClaims) return known.ref
  const ref = toTokenRef(identity, revocableClaims)
  identity.memo.tokenRef = { claims: revocableClaims, ref }
  return ref
}
