// The vocabulary every stage speaks. Stages import from here, never from each other.
//
//   const decision = await decide(request, deps)
//   if (!decision.allow) writeDenial(res, decision)
import { LapseError } from './errors.js'

// The names are the `lapse.reason` values of DESIGN.md: stable, never reused once retired.
export type DenyReason =
  | 'missing_token'
  | 'invalid_request'
  | 'malformed'
  | 'alg_not_allowed'
  | 'unknown_key'
  | 'bad_signature'
  | 'expired'
  | 'not_yet_valid'
  | 'wrong_issuer'
  | 'wrong_audience'
  | 'missing_claim'
  | 'lifetime_exceeds_policy'
  | 'revoked'
  | 'insufficient_scope'
  | 'no_route'
  | 'keys_unavailable'
  | 'revocation_unavailable'
  | 'host_not_allowed'
  | 'too_many_header_fields'
  | 'dpop_proof_invalid'
  | 'dpop_replayed'
  | 'dpop_key_mismatch'
  | 'dpop_nonce_required'
  | 'sender_constraint_required'
  | 'dpop_replay_unavailable'
  | 'claim_mismatch'
  | 'token_too_old'
  | 'acr_insufficient'
  | 'token_reused'
  | 'mtls_key_mismatch'
  | 'peer_not_allowed'

export type Reason = DenyReason | 'ok'

/** A JWT claims set after signature verification; values are untrusted until checked. */
export type Claims = Readonly<Record<string, unknown>>

/** The claims Lapse relies on, after `checkClaims` has validated their types. */
export interface Identity {
  readonly iss: string
  readonly sub: string | undefined
  readonly clientId: string | undefined
  readonly jti: string | undefined
  readonly iatS: number | undefined
  readonly expS: number
  readonly scopes: ReadonlySet<string>
  readonly claims: Claims
  /** Work done once per token and reused while the verifier caches this Identity. */
  readonly memo: TokenMemo
}

/**
 * What later stages work out from a verified token, kept for the next request with the same token:
 * the verifier caches the Identity, so one memo serves every request until the token leaves its
 * cache. Created empty by the verifier (verify/claims.ts), filled by the slots' owners. Mutable, and
 * never shared between tokens: a slot holds only what its owner derived from this token.
 */
export interface TokenMemo {
  /** decide/decide.ts: the token as the revocation set is asked about it, for one list of revocable claims. */
  tokenRef?: { readonly claims: readonly string[]; readonly ref: TokenRef } | undefined
  /** revocation/redis-store.ts: the Redis keys of `ref`, built by the store whose key layout (prefix) is `layout`. */
  redisKeys?: { readonly ref: TokenRef; readonly layout: object; readonly keys: readonly string[] } | undefined
  /** http/headers.ts: the identity headers (X-Auth-*), as a flat name, value list. */
  headerFields?: readonly string[] | undefined
  /**
   * bind/dpop.ts: the proof key of this DPoP-bound token, imported once: the algorithm and RFC 7638
   * members it was imported from, the key, and its thumbprint (which matched the token's `cnf.jkt`).
   */
  dpopKey?: { readonly members: readonly unknown[]; readonly key: unknown; readonly thumbprint: string } | undefined
  /** revocation/use-counter-redis.ts: the Redis key of this token's uses under one rule's scope, for one key prefix. */
  useKey?: { readonly scope: string; readonly prefix: string; readonly key: string } | undefined
  /** bind/dpop.ts: the token's SHA-256 as a proof's `ath` carries it. */
  dpopAth?: string | undefined
  /** telemetry/audit-line.ts: the token's fields of an audit line (sub … exp), as JSON text. */
  auditFields?: string | undefined
  /** telemetry/audit-line.ts: the middle of this token's last audit line, and the fields it was made from. */
  auditLast?: AuditLineMiddle | undefined
}

/** The fields of an audit line that decide its middle (telemetry/audit-line.ts), and the middle's text. */
export interface AuditLineMiddle {
  readonly path: string | undefined
  readonly status: number | undefined
  readonly route: string | undefined
  readonly method: string
  readonly remote: string | undefined
  readonly decision: string
  readonly reason: string
  readonly failedOpen: boolean
  readonly binding: string | undefined
  readonly keyThumbprint: string | undefined
  readonly maxUses: number | undefined
  readonly text: string
}

export interface Rule {
  /** Position in the route table, stable for one configuration: used as `lapse.route`. */
  readonly id: string
  /** The rule's path pattern as written: a low-cardinality template for spans and metrics. */
  readonly path: string
  readonly methods: ReadonlySet<string> | undefined
  readonly scopes: readonly string[]
  readonly public: boolean
  /** `open` lets requests through when the revocation set cannot answer; default `closed`. */
  readonly onRevocationUnavailable: 'closed' | 'open'
  /** Whether a streamed response is cut when its token lapses; WebSockets always are. */
  readonly cutStreamsAtExpiry: boolean
  /** `sender_constrained`: only bound tokens (DPoP, mTLS); undefined follows LAPSE_SENDER_CONSTRAINED. */
  readonly senderConstrained?: boolean | undefined
  /** The rule's binding (captures, claims, freshness, use limit); undefined when it has none. */
  readonly binding?: RuleBinding | undefined
  /** SPIFFE ID patterns of the workloads that may call (bind/peers.ts); undefined lets any caller. */
  readonly peers?: readonly string[] | undefined
}

/** The key a sender-constrained token was bound to, and checked against on this request. */
export interface Binding {
  readonly kind: 'dpop' | 'mtls'
  readonly thumbprint: string
}

/** What a route rule binds a grant to beyond its scopes (authorize/binding.ts checks it). */
export interface RuleBinding {
  /** The `{name}` segments of the path, in order. */
  readonly captures: readonly RouteCapture[]
  readonly claims: readonly ClaimRequirement[]
  /** RFC 9470 `max_age`: seconds since the token's authentication (`auth_time`, else `iat`). */
  readonly maxTokenAgeS: number | undefined
  /** RFC 9470 `acr_values`: the token's `acr` must be one of them. */
  readonly acrValues: readonly string[] | undefined
  readonly maxUses: number | undefined
  /** What the use counter keys this rule's uses on, besides the token: its path and methods as written. */
  readonly useScope: string
}

export interface RouteCapture {
  readonly name: string
  /** Index of the captured segment in the normalized path. */
  readonly segment: number
  /** `x-auth-bound-<name>` folded, when a claim requirement binds this capture; else undefined. */
  readonly header: string | undefined
}

export interface ClaimRequirement {
  readonly claim: string
  /** Literal values the claim may hold (compared with ===). */
  readonly literals: ReadonlyArray<string | number | boolean>
  /** Indexes into `captures` whose decoded segment the claim may equal. */
  readonly captures: readonly number[]
  /** The challenge's phrase: names the claim, never a value. */
  readonly description: string
}

/** Counts the uses of one token under one rule, across every sidecar sharing the store. */
export interface UseCounter {
  /**
   * Takes one use of the token under a limit of `max`: the use's number (1…max), or `max + 1`
   * when every use is already taken (then nothing is counted). The count lives until
   * `expiresAtS`. Throws (or rejects with) RevocationUnavailableError when it cannot answer
   * within its budget. The memory counter answers at once; Redis's with a promise.
   */
  take(key: UseKey, max: number, expiresAtS: number): number | Promise<number>
  /** Whether a take now goes out rather than failing at once (memory: always). */
  ready(): boolean
  /** Human name for logs: `memory`, `redis`. */
  readonly kind: string
  close(): Promise<void>
}

export interface UseKey {
  /** The rule's `useScope`. */
  readonly scope: string
  readonly iss: string
  readonly jti: string
  /** The memo of the token iss and jti are from: a store keeps the key it derives there (Redis: a hash). */
  readonly memo?: TokenMemo | undefined
}

export type Decision =
  | {
      readonly allow: true
      readonly rule: Rule
      readonly identity: Identity | undefined
      readonly failedOpen?: true
      /** The key a sender-constrained token was bound to, checked on this request. */
      readonly binding?: Binding | undefined
      /** The X-Auth-Bound-* fields of the rule's bound captures, as a flat name, value list; values as decoded, not yet header-safe. */
      readonly bound?: readonly string[] | undefined
      /** Which use of the token this is, under a rule with `max_uses`. */
      readonly use?: number | undefined
    }
  | {
      readonly allow: false
      readonly reason: DenyReason
      readonly rule?: Rule | undefined
      readonly identity?: Identity | undefined
      readonly requiredScopes?: readonly string[] | undefined
      /** A short human phrase for `error_description`; never token content. */
      readonly description?: string | undefined
      /** token_reused: the use that was refused (`max_uses` + 1). */
      readonly use?: number | undefined
    }

export type Denial = Extract<Decision, { allow: false }>

/** A request target after normalization (target/request-target.ts). */
export interface Target {
  readonly path: string
  /** Without the leading `?`; forwarded verbatim. */
  readonly query: string
  readonly hasQuery: boolean
}

/** What decide() answers for one request. */
export interface Outcome {
  readonly decision: Decision
  /** The normalized target: what was matched is what is forwarded. */
  readonly target: Target | undefined
  /** Milliseconds spent asking the revocation set; undefined when it was not asked. */
  readonly revocationMs: number | undefined
  /** A DPoP nonce the answer carries in `DPoP-Nonce` (RFC 9449 §8–9); undefined for none. */
  readonly dpopNonce?: string | undefined
}

export interface Clock {
  /** Epoch milliseconds. */
  now(): number
}

/**
 * The I/O one decision waits on, handed over so telemetry can make each step a child span of the
 * decision (telemetry/recorder.ts). Optional everywhere: without it the work simply runs.
 */
export interface StepTracer {
  run<T>(step: Step, work: () => Promise<T>): Promise<T>
  /**
   * A step answered in-process without waiting (a revocation answer from memory or the local
   * cache), recorded as `run` would have recorded it: timed from `startedPerfMs`
   * (performance.now()) to now, and a child span when the decision is traced.
   */
  ran(step: Step, startedPerfMs: number, result: unknown): void
}

export type Step = 'jwks_fetch' | 'revocation_lookup'

/** What the revocation set is asked about one token: its issuer, `iat` and revocable claim values. */
export interface TokenRef {
  readonly iss: string
  readonly iatS: number | undefined
  readonly values: ReadonlyArray<readonly [claim: string, value: string]>
  /** The memo of the token the ref was made from (revocation/model.ts toTokenRef); absent on a hand-made ref. */
  readonly memo?: TokenMemo | undefined
}

/** A revocation `(claim, value, T)`: tokens with `claim = value` and `iat <= T` are revoked. */
export interface RevocationEntry {
  readonly claim: string
  readonly value: string
  /** Only tokens of this issuer; undefined means every issuer. */
  readonly iss?: string | undefined
  /** T, epoch seconds. */
  readonly issuedBeforeS: number
  readonly reason: string
  /** Who wrote it: an admin token's name, or `cli`. */
  readonly by: string
  readonly createdAtS: number
  /** When the entry leaves the set: every token it could match has expired by then. */
  readonly expiresAtS: number
}

export interface RevocationEvent {
  readonly kind: 'revoked' | 'lifted'
  readonly entry: RevocationEntry
}

/** Thrown (as a rejected promise) when the set cannot answer within its budget: fail closed. */
export class RevocationUnavailableError extends LapseError {
  constructor(message: string, options?: ErrorOptions) {
    super('ERR_REVOCATION_UNAVAILABLE', message, options)
  }
}

export interface RevocationStore {
  /** Is any of the token's values revoked at or after its `iat`? Rejects with RevocationUnavailableError. */
  isRevoked(ref: TokenRef): Promise<boolean>
  /**
   * The same answer when the store holds it in process (the memory set; Redis's local cache while
   * it is fresh), else undefined: then ask `isRevoked`. Never waits and never throws. It spares
   * the hot path a promise per request (bench row 3).
   */
  isRevokedNow?(ref: TokenRef): boolean | undefined
  /** Resolves only once the entry is durable in the set (for Redis: acknowledged). */
  put(entry: RevocationEntry): Promise<RevocationEntry>
  get(claim: string, value: string, iss?: string): Promise<RevocationEntry | undefined>
  /** Removes the entry and resolves it, in one atomic step; undefined when there was none. */
  lift(claim: string, value: string, iss?: string): Promise<RevocationEntry | undefined>
  /**
   * One page of the active entries that match the query. Following `next` until it is undefined
   * yields every entry present throughout the walk at least once; one written or removed meanwhile
   * may or may not appear. Rejects with InvalidCursorError, or RevocationUnavailableError.
   */
  list(query: RevocationQuery): Promise<RevocationPage>
  /** Revocations and lifts from any sidecar sharing the set, as they happen. Returns an unsubscribe. */
  subscribe(listener: (event: RevocationEvent) => void): () => void
  /** Whether the set can answer right now (for `/readyz`). */
  ready(): boolean
  /** Human name for logs: `memory`, `redis`. */
  readonly kind: string
  close(): Promise<void>
}

/** Thrown (as a rejected promise) when the DPoP replay cache cannot answer within its budget: fail closed. */
export class ReplayUnavailableError extends LapseError {
  constructor(message: string, options?: ErrorOptions) {
    super('ERR_REPLAY_UNAVAILABLE', message, options)
  }
}

/** Values seen once, across every sidecar sharing the cache: DPoP proof `jti`s (RFC 9449 §11.1). */
export interface ReplayCache {
  /**
   * Records `key` for `ttlMs`, atomically: true the first time, false while it is still recorded.
   * Rejects with ReplayUnavailableError when it cannot answer within its budget.
   */
  firstUse(key: string, ttlMs: number): Promise<boolean>
  /**
   * The same, answered in process without a promise (the memory cache); absent where every
   * answer waits (Redis). Throws where firstUse would reject.
   */
  firstUseNow?(key: string, ttlMs: number): boolean
  /** Whether it can answer right now; absent: always. */
  ready?(): boolean
  /** Human name for logs: `memory`, `redis`. */
  readonly kind: string
  close(): Promise<void>
}

/** What `RevocationStore.list` is asked: filters on the entry's own fields, and where to resume. */
export interface RevocationQuery {
  /** Only entries of this claim. */
  readonly claim?: string | undefined
  /** Only entries bound to this issuer (an any-issuer entry has none, so it is not selected). */
  readonly iss?: string | undefined
  /** Only entries whose reason contains this text, compared case-insensitively. */
  readonly reasonContains?: string | undefined
  /** Where to resume: a `next` the same store answered; absent on the first page. */
  readonly cursor?: string | undefined
  /** The most entries one page holds. A page may hold fewer and still have a `next`. */
  readonly limit: number
}

export interface RevocationPage {
  readonly entries: readonly RevocationEntry[]
  /** Opaque; undefined once the set has been walked. */
  readonly next: string | undefined
}

/** Thrown by `list` when the cursor is not one the store made: the caller's mistake, a 400. */
export class InvalidCursorError extends Error {
  override readonly name = 'InvalidCursorError'
}
