// A DPoP proof (RFC 9449) checked against the request it came with and the token it binds:
// every check of §4.3, the key binding of §7 (cnf.jkt), single use (§11.1) and nonces (§8–9).
//
//   const got = await checkProof({ method, path, host, proofs, token, jkt, normalizePath }, policy)   // a promise only when it must wait
//   'reason' in got ? deny(got.reason) : allow({ binding: got.binding })
import { hash, type webcrypto } from 'node:crypto'
import { calculateJwkThumbprint, importJWK, type JWK } from 'jose'
import { isCryptoKey, verifySignature } from '../core/signature.js'
import type { Binding, Clock, DenyReason, ReplayCache, TokenMemo } from '../core/types.js'
import type { Nonces } from './nonce.js'

type CryptoKey = webcrypto.CryptoKey

export interface DpopPolicy {
  /** LAPSE_DPOP_ALGORITHMS: asymmetric only. */
  readonly algorithms: ReadonlySet<string>
  /** LAPSE_DPOP_MAX_AGE, seconds. */
  readonly maxAgeS: number
  readonly clockSkewS: number
  /** LAPSE_PUBLIC_ORIGINS as URL origins; undefined: the request's Host, with http or https. */
  readonly publicOrigins: ReadonlySet<string> | undefined
  /** Present when LAPSE_DPOP_NONCE is on. */
  readonly nonces: Nonces | undefined
  readonly replay: ReplayCache
  readonly clock: Clock
}

export interface ProofRequest {
  readonly method: string
  /** The normalized path the request was decided on. */
  readonly path: string
  /** The request's Host (already validated by the head check), for htu when no public origin is set. */
  readonly host: string | undefined
  /** Every DPoP header field value the request carried. */
  readonly proofs: readonly string[]
  /** The access token, for `ath`. */
  readonly token: string
  /** The token's `cnf.jkt`. */
  readonly jkt: string
  /** Normalizes the path of `htu` as the request's own path was; undefined when it is not a valid path. */
  readonly normalizePath: (path: string) => string | undefined
  /** The token's memo: its proof key is imported once, not on every request. */
  readonly memo?: TokenMemo | undefined
}

export type ProofResult =
  | { readonly binding: Binding; readonly nonce?: string | undefined }
  | { readonly reason: DenyReason; readonly description: string; readonly nonce?: string | undefined }

// A proof is a small JWS: a public key, a few claims. Larger is not a proof.
const MAX_PROOF_BYTES = 8192
// A jti long enough for any random value (RFC 9449 §4.2 asks for 96 bits at least).
const MAX_JTI_LENGTH = 256
const COMPACT_JWS = /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$/
// RFC 9449 §4.3 check 7: the header's key is public. These members hold private or symmetric key material (RFC 7518 §6).
const PRIVATE_MEMBERS = ['d', 'p', 'q', 'dp', 'dq', 'qi', 'oth', 'k']

const invalid = (description: string) => ({ reason: 'dpop_proof_invalid' as const, description })

/**
 * The proof's answer, without a promise when nothing has to wait: its key already imported (this
 * token's memo, or the policy's memo of keys by thumbprint) and a replay cache that answers in
 * process (memory). A promise for a key seen the first time, or a replay cache in Redis.
 */
export function checkProof(req: ProofRequest, policy: DpopPolicy): ProofResult | Promise<ProofResult> {
  // RFC 9449 §4.3 check 1: exactly one DPoP field.
  if (req.proofs.length !== 1) return invalid(req.proofs.length === 0 ? 'a DPoP proof is required' : 'more than one DPoP header')
  const proof = req.proofs[0]!
  if (proof.length > MAX_PROOF_BYTES || !COMPACT_JWS.test(proof)) return invalid('DPoP proof is not a compact JWS')
  const dot1 = proof.indexOf('.')
  const dot2 = proof.indexOf('.', dot1 + 1)
  const headerText = proof.slice(0, dot1)
  const claims = parseJson(proof.slice(dot1 + 1, dot2))
  // A client signs every proof under one header (its key, alg and typ): one that passed before
  // with this policy passes again, so its checks and parse are skipped (see rememberHeader).
  let checked = headerMemos.get(policy)?.get(headerText)
  if (checked === undefined) {
    const header = parseJson(headerText)
    if (header === undefined || claims === undefined) return invalid('DPoP proof is not valid JSON')
    const got = checkHeader(header, policy)
    if ('reason' in got) return got
    checked = got
  } else if (claims === undefined) return invalid('DPoP proof is not valid JSON')
  const { alg, jwk } = checked

  // Check 3: the claims a proof must carry.
  if (typeof claims.jti !== 'string' || claims.jti === '' || claims.jti.length > MAX_JTI_LENGTH)
    return invalid('DPoP proof jti is missing or invalid')
  if (typeof claims.iat !== 'number' || !Number.isFinite(claims.iat)) return invalid('DPoP proof iat is missing')
  // Check 8: htm is the method, exactly (methods are case-sensitive, RFC 9110 §9.1).
  if (claims.htm !== req.method) return invalid('DPoP proof htm does not match the method')
  // Check 9: htu is this request's URI, without query and fragment.
  if (typeof claims.htu !== 'string' || !htuMatches(claims.htu, req, policy)) return invalid('DPoP proof htu does not match the request')
  // Check 11: iat within the window; the skew covers clocks that run ahead as well as behind.
  const nowS = policy.clock.now() / 1000
  if (claims.iat > nowS + policy.clockSkewS) return invalid('DPoP proof iat is in the future')
  if (claims.iat < nowS - policy.maxAgeS - policy.clockSkewS) return invalid('DPoP proof is too old')
  // Check 12 (with a token): ath is the token's hash.
  if (claims.ath !== athOf(req)) return invalid('DPoP proof ath does not match the token')

  // Check 6: the signature, under the header's own key and algorithm, checked synchronously by
  // node:crypto (core/signature.ts). A key is imported and its thumbprint computed once: kept in
  // the token's memo, and in the policy's memo by thumbprint for the next token bound to it.
  const signed = { input: Buffer.from(proof.slice(0, dot2), 'latin1'), signature: Buffer.from(proof.slice(dot2 + 1), 'base64url') }
  const known = knownKey(req, policy, jwk, alg)
  if (known !== undefined) {
    if (!verifies(alg, known.key, signed)) return invalid('DPoP proof signature is invalid')
    // A known key is one that matched its token's cnf.jkt (rememberKey).
    rememberHeader(policy, headerText, checked)
    return afterSignature(known.thumbprint, claims, req, policy)
  }
  return importKey(jwk, alg).then(
    (imported) => {
      if (imported === undefined || !verifies(alg, imported.key, signed)) return invalid('DPoP proof signature is invalid')
      // Only a key that matched the binding and verified a proof is kept, and only its header.
      if (imported.thumbprint === req.jkt) {
        rememberKey(req, policy, imported)
        rememberHeader(policy, headerText, checked)
      }
      return afterSignature(imported.thumbprint, claims, req, policy)
    },
    () => invalid('DPoP proof signature is invalid'),
  )
}

/** What the proof's header says, once it passed checks 4, 5 and 7 and names no critical extension. */
interface ProofHeader {
  readonly alg: string
  readonly jwk: Readonly<Record<string, unknown>>
}

/** RFC 9449 §4.3 checks 4, 5 and 7 on the header: a pure function of its text and the policy's algorithms. */
function checkHeader(header: Record<string, unknown>, policy: DpopPolicy): ProofHeader | ReturnType<typeof invalid> {
  // Check 4: typ.
  if (typeof header.typ !== 'string' || header.typ.toLowerCase() !== 'dpop+jwt') return invalid('DPoP proof typ is not dpop+jwt')
  // Check 5: an asymmetric algorithm the policy accepts (the setting holds no other).
  if (typeof header.alg !== 'string' || !policy.algorithms.has(header.alg)) return invalid('DPoP proof algorithm is not allowed')
  // RFC 7515 §4.1.11: an extension the verifier does not understand must fail; Lapse knows none
  // (jose, which checked proofs before, understood only b64, which no DPoP proof has a use for).
  if ('crit' in header) return invalid('DPoP proof header has critical extensions')
  const jwk = header.jwk
  if (!isObject(jwk) || typeof jwk.kty !== 'string' || jwk.kty === 'oct') return invalid('DPoP proof has no public jwk')
  // Check 7: a private key in the header is refused, not silently used as its public half.
  if (PRIVATE_MEMBERS.some((m) => m in jwk)) return invalid('DPoP proof jwk holds private key material')
  return { alg: header.alg, jwk: Object.freeze(jwk) }
}

// Proof headers that passed, per policy, by their encoded text: decoding, parsing and checking a
// header was a measurable part of every proof (bench/README.md), and a client repeats one header.
// Only the header of a proof whose key matched its token's cnf.jkt and whose signature verified
// enters, so only keys the issuer bound a token to; bounded all the same, oldest first out.
const HEADERS_KEPT = 256
const headerMemos = new WeakMap<DpopPolicy, Map<string, ProofHeader>>()

function rememberHeader(policy: DpopPolicy, text: string, header: ProofHeader): void {
  let kept = headerMemos.get(policy)
  if (kept === undefined) headerMemos.set(policy, (kept = new Map()))
  if (kept.has(text)) return
  if (kept.size >= HEADERS_KEPT) kept.delete(kept.keys().next().value!)
  kept.set(text, header)
}

/** An imported proof key: the members it was imported from, the key, its RFC 7638 thumbprint. */
interface ProofKey {
  readonly members: KeyMembers
  readonly key: CryptoKey
  readonly thumbprint: string
}

/**
 * What a key import reads: the algorithm (an RSA key imported for PS256 cannot verify RS256), the
 * public members RFC 7638 §3.2 hashes, and the members that can make an import refuse or restrict
 * the key (`alg`, `use`, `ext`). Equal members, the same imported key. A jwk with `key_ops` (an
 * array) is never taken for a known one: it is imported, and checked, every time.
 */
type KeyMembers = readonly unknown[]

const membersOf = (jwk: Readonly<Record<string, unknown>>, alg: string): KeyMembers => [
  alg,
  jwk.kty,
  jwk.crv,
  jwk.x,
  jwk.y,
  jwk.n,
  jwk.e,
  jwk.alg,
  jwk.use,
  jwk.ext,
]

function sameMembers(a: KeyMembers, jwk: Readonly<Record<string, unknown>>, alg: string): boolean {
  return (
    jwk.key_ops === undefined &&
    a[0] === alg &&
    a[1] === jwk.kty &&
    a[2] === jwk.crv &&
    a[3] === jwk.x &&
    a[4] === jwk.y &&
    a[5] === jwk.n &&
    a[6] === jwk.e &&
    a[7] === jwk.alg &&
    a[8] === jwk.use &&
    a[9] === jwk.ext
  )
}

// Proof keys by thumbprint, per policy: a client keeps its key across the tokens it is issued, so
// a new token bound to a known key skips the import. Only keys that matched a token's cnf.jkt and
// verified a proof enter (a token names the thumbprint, and only the issuer mints tokens), so
// nobody can fill it with keys of their own; bounded all the same, oldest first out.
const KEYS_BY_THUMBPRINT = 1024
const keyMemos = new WeakMap<DpopPolicy, Map<string, ProofKey>>()

function knownKey(req: ProofRequest, policy: DpopPolicy, jwk: Readonly<Record<string, unknown>>, alg: string): ProofKey | undefined {
  const mine = req.memo?.dpopKey as ProofKey | undefined
  if (mine !== undefined && sameMembers(mine.members, jwk, alg)) return mine
  // The token names its key's thumbprint: a key kept under it, with the same members, is that key.
  const kept = keyMemos.get(policy)?.get(req.jkt)
  if (kept === undefined || !sameMembers(kept.members, jwk, alg)) return undefined
  if (req.memo !== undefined) req.memo.dpopKey = kept
  return kept
}

function rememberKey(req: ProofRequest, policy: DpopPolicy, key: ProofKey): void {
  if (req.memo !== undefined) req.memo.dpopKey = key
  let keys = keyMemos.get(policy)
  if (keys === undefined) keyMemos.set(policy, (keys = new Map()))
  if (keys.size >= KEYS_BY_THUMBPRINT && !keys.has(key.thumbprint)) keys.delete(keys.keys().next().value!)
  keys.set(key.thumbprint, key)
}

/** jose imports the key (and refuses a malformed one) and computes its thumbprint; undefined when it cannot. */
async function importKey(jwk: Readonly<Record<string, unknown>>, alg: string): Promise<ProofKey | undefined> {
  const thumbprint = await calculateJwkThumbprint(jwk as JWK, 'sha256')
  const key = await importJWK(jwk as JWK, alg)
  if (!isCryptoKey(key)) return undefined
  return { members: membersOf(jwk, alg), key, thumbprint }
}

function verifies(alg: string, key: CryptoKey, signed: { readonly input: Buffer; readonly signature: Buffer }): boolean {
  try {
    return verifySignature(alg, key, signed.input, signed.signature)
  } catch {
    // A key unfit for the algorithm (another curve, a short RSA key): not a valid proof.
    return false
  }
}

/** The checks after the signature: the binding (§7.1), the nonce (§8–9) and single use (§11.1). */
function afterSignature(
  thumbprint: string,
  claims: Record<string, unknown>,
  req: ProofRequest,
  policy: DpopPolicy,
): ProofResult | Promise<ProofResult> {
  // RFC 9449 §7.1: the token is bound to this key.
  if (thumbprint !== req.jkt) return { reason: 'dpop_key_mismatch', description: 'token is not bound to the proof key' }

  // Check 10 (§9): a nonce of the current or the previous step.
  let nonce: string | undefined
  if (policy.nonces) {
    const step = policy.nonces.check(claims.nonce)
    if (step === undefined)
      return { reason: 'dpop_nonce_required', description: 'DPoP proof needs a current nonce', nonce: policy.nonces.current() }
    // The client's nonce is of the previous step: the answer gives it the current one.
    if (step === 'previous') nonce = policy.nonces.current()
  }

  // §11.1: once per proof lifetime, across every sidecar sharing the cache. Keyed by the key's
  // thumbprint too, so no client can use up another's jti.
  const key = `${thumbprint}:${claims.jti as string}`
  const { replay } = policy
  if (replay.firstUseNow !== undefined) {
    let first: boolean
    try {
      first = replay.firstUseNow(key, lifetimeMs(policy))
    } catch {
      return REPLAY_UNAVAILABLE
    }
    return first ? { binding: { kind: 'dpop', thumbprint }, nonce } : REPLAYED
  }
  return replay.firstUse(key, lifetimeMs(policy)).then(
    (first): ProofResult => (first ? { binding: { kind: 'dpop', thumbprint }, nonce } : REPLAYED),
    () => REPLAY_UNAVAILABLE,
  )
}

const REPLAY_UNAVAILABLE: ProofResult = { reason: 'dpop_replay_unavailable', description: 'DPoP replay cache is unavailable' }
const REPLAYED: ProofResult = { reason: 'dpop_replayed', description: 'DPoP proof was already used' }

/** How long a proof stays acceptable: its age limit and the skew on both sides of its iat. */
export const lifetimeMs = (policy: Pick<DpopPolicy, 'maxAgeS' | 'clockSkewS'>): number => (policy.maxAgeS + 2 * policy.clockSkewS) * 1000

/** The token's hash as `ath` carries it (RFC 9449 §4.2), once per token (its memo's `dpopAth` slot). */
function athOf(req: ProofRequest): string {
  const known = req.memo?.dpopAth
  if (known !== undefined) return known
  const ath = hash('sha256', req.token, 'base64url')
  if (req.memo !== undefined) req.memo.dpopAth = ath
  return ath
}

// The htu values that matched, per policy, by htu, Host and path: a client sends the same few
// URIs over and over, and parsing two URLs was a measurable part of every proof (bench/README.md).
// The answer is a pure function of the three (and of the policy's fixed origins); a miss is
// worked out in full. Bounded, oldest first out, so varied htus cost their sender only.
const HTU_MATCHES = 256
const htuMemos = new WeakMap<DpopPolicy, Map<string, true>>()

function htuMatches(htu: string, req: ProofRequest, policy: DpopPolicy): boolean {
  let seen = htuMemos.get(policy)
  if (seen === undefined) htuMemos.set(policy, (seen = new Map()))
  // No header value and no request target holds a line feed, so the Host and the path end the key
  // unambiguously, whatever the htu holds.
  const key = `${htu}\n${req.host ?? ''}\n${req.path}`
  if (seen.has(key)) return true
  if (!htuMatchesAfresh(htu, req, policy.publicOrigins)) return false
  if (seen.size >= HTU_MATCHES) seen.delete(seen.keys().next().value!)
  seen.set(key, true)
  return true
}

/**
 * RFC 9449 §4.3 check 9 with RFC 3986 §6.2.2–6.2.3 normalization: the WHATWG parser lower-cases
 * scheme and host, drops a default port and resolves dot segments; the path is then normalized
 * as the request's was. Query and fragment are not part of htu.
 */
function htuMatchesAfresh(htu: string, req: ProofRequest, origins: ReadonlySet<string> | undefined): boolean {
  let url: URL
  try {
    url = new URL(htu)
  } catch {
    return false
  }
  if ((url.protocol !== 'https:' && url.protocol !== 'http:') || url.username !== '' || url.password !== '') return false
  if (req.normalizePath(url.pathname) !== req.path) return false
  if (origins !== undefined) return origins.has(url.origin)
  if (req.host === undefined) return false
  // Unset: the Host the request was sent to, over http or https, since TLS often ends in front.
  try {
    return new URL(`${url.protocol}//${req.host}`).origin === url.origin
  } catch {
    return false
  }
}

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v)

function parseJson(part: string): Record<string, unknown> | undefined {
  try {
    const value: unknown = JSON.parse(Buffer.from(part, 'base64url').toString('utf8'))
    return isObject(value) ? value : undefined
  } catch {
    return undefined
  }
}

/** The token's `cnf.jkt` (RFC 9449 §6.1), when it is DPoP-bound. */
export function jktOf(claims: Readonly<Record<string, unknown>>): string | undefined {
  const cnf = claims.cnf
  return isObject(cnf) && typeof cnf.jkt === 'string' ? cnf.jkt : undefined
}

/**
 * Every DPoP header field value and the Host, from the raw list in one pass: Node's `headers`
 * keeps only one of duplicate DPoP fields, and a second proof must be seen to be refused.
 */
export function proofFieldsOf(raw: readonly string[]): { proofs: string[]; host: string | undefined } {
  const proofs: string[] = []
  let host: string | undefined
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i]!
    if (name.length !== 4) continue
    const lower = name.toLowerCase()
    if (lower === 'dpop') proofs.push(raw[i + 1]!)
    else if (lower === 'host') host ??= raw[i + 1]!
  }
  return { proofs, host }
}
