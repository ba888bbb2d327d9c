// token → Identity, or the reason it cannot be used. Signatures are checked against the keys jose
// imported from the KeyResolver's key set (signature.ts says why node:crypto does the arithmetic);
// a verified token is cached (bounded, keyed by the token) so a token reused on many requests pays
// for its signature once, while its time claims are checked on every request.
//
//   const verify = createVerifier({ policy, algorithms, keys, clock, cacheSize: 10_000 })
//   const result = await verify(token)   // Identity | Denial
//   const now = verify.check(token)      // the same answer, a promise only when something waits
import { isUtf8 } from 'node:buffer'
import { compactVerify, errors, type JWSHeaderParameters } from 'jose'
import type { Clock, Denial, DenyReason, Identity, StepTracer } from '../core/types.js'
import { checkClaims, type ClaimPolicy } from './claims.js'
import { repeatsMember } from './duplicate-keys.js'
import type { KeyResolver, VerificationKey } from './keys.js'
import { handlesAlgorithm, isCryptoKey, verifySignature as verifySigSync } from '../core/signature.js'

export interface VerifierOptions {
  readonly policy: ClaimPolicy
  readonly algorithms: readonly string[]
  readonly keys: KeyResolver
  readonly clock: Clock
  readonly cacheSize: number
}

/** `steps` lets a key fetch this token triggers (unknown kid) appear as a child span of the decision. */
export type Verifier = ((token: string, steps?: StepTracer) => Promise<Identity | Denial>) & {
  /**
   * The answer when the verification cache alone gives it (a token verified before, keys
   * unchanged), else undefined: then call the verifier. Spares the hot path a promise.
   */
  cached(token: string): Identity | Denial | undefined
  /**
   * True when this exact string is in the verification cache: it passed every structural check
   * then (a compact JWS of canonical base64url parts), whatever its claims say now. Lets
   * extraction skip re-checking the characters of a token seen before.
   */
  knows(token: string): boolean
  /**
   * The verifier's answer, without a promise when nothing has to wait: a cached token, a token
   * refused before any key is needed, or a fresh token whose key an earlier lookup already found
   * (KeyResolver.knownKey; the signature check itself is synchronous, signature.ts). A promise
   * only for a key lookup (first use of a kid, an unknown kid, several candidates) or HMAC.
   * `jws`: the caller found the token's characters to be base64url's alphabet and dots
   * (extract/bearer.ts), so they are not scanned again; the parts' boundaries and canonical
   * endings still are, and a token of another shape takes the full check.
   */
  check(token: string, steps?: StepTracer, jws?: boolean): Identity | Denial | Promise<Identity | Denial>
  cacheSize(): number
  /** Headers kept parsed (those of verified tokens), at most HEADER_CACHE_SIZE. */
  headerCacheSize(): number
}

// Every jose error code mapped by code, never by message; the compiler keeps this complete.
const JOSE_REASONS: Record<errors.JOSEErrorCode, DenyReason> = {
  ERR_JOSE_ALG_NOT_ALLOWED: 'alg_not_allowed',
  ERR_JOSE_GENERIC: 'malformed',
  ERR_JOSE_NOT_SUPPORTED: 'alg_not_allowed',
  ERR_JWE_DECRYPTION_FAILED: 'malformed',
  ERR_JWE_INVALID: 'malformed',
  ERR_JWK_INVALID: 'unknown_key',
  ERR_JWKS_INVALID: 'keys_unavailable',
  ERR_JWKS_MULTIPLE_MATCHING_KEYS: 'unknown_key',
  ERR_JWKS_NO_MATCHING_KEY: 'unknown_key',
  ERR_JWKS_TIMEOUT: 'keys_unavailable',
  ERR_JWS_INVALID: 'malformed',
  ERR_JWS_SIGNATURE_VERIFICATION_FAILED: 'bad_signature',
  ERR_JWT_CLAIM_VALIDATION_FAILED: 'malformed',
  ERR_JWT_EXPIRED: 'expired',
  ERR_JWT_INVALID: 'malformed',
}

const LAPSE_REASONS: Record<string, DenyReason> = { ERR_KEYS_UNAVAILABLE: 'keys_unavailable' }

const deny = (reason: DenyReason, description?: string): Denial => ({ allow: false, reason, description })

/** Maps anything a key lookup or jose threw to a reason; an unknown failure still denies. */
export function reasonOf(err: unknown): DenyReason {
  const code = (err as { code?: unknown })?.code
  if (typeof code === 'string') {
    if (code in JOSE_REASONS) return JOSE_REASONS[code as errors.JOSEErrorCode]
    if (code in LAPSE_REASONS) return LAPSE_REASONS[code]!
  }
  // jose throws a TypeError when a key cannot serve the header's alg (e.g. an RSA key for ES256).
  return 'bad_signature'
}

interface Cached {
  /** The whole token: a hit on the fingerprint counts only when this equals the token asked about. */
  readonly token: string
  readonly identity: Identity
  readonly nbfS: number | undefined
  readonly generation: number
}

/**
 * A part's bytes as UTF-8 text, or undefined when they are not UTF-8. A leading byte-order mark
 * is dropped, as TextDecoder (which did this before) drops it; validating first and then slicing
 * is cheaper than TextDecoder's fatal mode, and gives the same text.
 */
function utf8Text(bytes: Buffer): string | undefined {
  if (!isUtf8(bytes)) return undefined
  const bom = bytes.length >= 3 && bytes[0] === 0xef && bytes[1] === 0xbb && bytes[2] === 0xbf
  return bytes.toString('utf8', bom ? 3 : 0)
}

// The cache is keyed by a token's last FINGERPRINT_CHARS characters (signature bytes), not the
// whole token: a Map hashes its string key on every lookup, a request's token is a new string each
// time, and hashing 700-odd characters of an RS256 token was a third of a cached decision
// (bench/README.md). The fingerprint only finds the entry; a hit needs the entry's token to equal
// the token character for character, so a forged token that copies a cached signature is a miss,
// and is verified (and refused) like any other.
const FINGERPRINT_CHARS = 32
const fingerprint = (token: string): string => (token.length <= FINGERPRINT_CHARS ? token : token.slice(-FINGERPRINT_CHARS))

// Headers of tokens whose signature verified, parsed, by their encoded text. An issuer signs
// every token with one of a few headers ({"alg","kid","typ"} per key), so a fresh token's header
// is almost always one seen before, and decoding, parsing and checking it again was a measurable
// part of a fresh token's decision (bench/README.md). The answer is a pure function of the text
// (and of the verifier's fixed algorithm list), so a hit is exactly what parsing would give. Only headers that verified are
// kept: nobody without the issuer's key can add one, so forged headers cannot churn it.
const HEADER_CACHE_SIZE = 64

export function createVerifier(opts: VerifierOptions): Verifier {
  const cache = new Map<string, Cached>()
  const headers = new Map<string, JWSHeaderParameters>()
  const { policy, keys, clock } = opts
  const algorithms = new Set(opts.algorithms)
  const joseOptions = { algorithms: [...opts.algorithms] }

  const remember = (token: string, entry: Cached) => {
    if (opts.cacheSize === 0) return
    const key = fingerprint(token)
    // Oldest first out: bounded memory without touching the map on every hit.
    if (cache.size >= opts.cacheSize && !cache.has(key)) cache.delete(cache.keys().next().value!)
    cache.set(key, entry)
  }

  const lookUp = (token: string): Cached | undefined => {
    // With the cache off nothing is ever found: spare every fresh token the fingerprint's slice.
    if (opts.cacheSize === 0) return undefined
    const hit = cache.get(fingerprint(token))
    return hit !== undefined && hit.token === token ? hit : undefined
  }

  const cached = (token: string): Identity | Denial | undefined => {
    const hit = lookUp(token)
    if (hit === undefined) return undefined
    if (hit.generation !== keys.generation()) {
      cache.delete(fingerprint(token))
      return undefined
    }
    const stale = checkTime(hit, policy.clockSkewS, Math.floor(clock.now() / 1000))
    if (!stale) return hit.identity
    if (stale.reason === 'expired') cache.delete(fingerprint(token))
    return stale
  }

  const rememberHeader = (pre: Prechecked) => {
    if (pre.known) return
    const encoded = pre.parts[0]
    if (headers.size >= HEADER_CACHE_SIZE && !headers.has(encoded)) headers.delete(headers.keys().next().value!)
    // Shared by every later token with this header: nothing may change it.
    headers.set(encoded, Object.freeze(pre.header))
  }

  /** The payload's claims once the signature held: the Identity (cached) or the reason. */
  const accept = (token: string, payloadBytes: Buffer, pre: Prechecked, generation: number, nowS: number): Identity | Denial => {
    rememberHeader(pre)
    const header = pre.header
    let payload: unknown
    try {
      const text = utf8Text(payloadBytes)
      if (text === undefined) return deny('malformed', 'token payload is not JSON')
      payload = JSON.parse(text)
      if (repeatsMember(text, payload)) return deny('malformed', 'token payload repeats a claim')
    } catch {
      return deny('malformed', 'token payload is not JSON')
    }
    const result = checkClaims(header, payload, policy, nowS)
    if ('allow' in result) return result
    remember(token, { token, identity: result, nbfS: result.claims.nbf as number | undefined, generation })
    return result
  }

  const check = (token: string, steps?: StepTracer, jws?: boolean): Identity | Denial | Promise<Identity | Denial> => {
    const known = cached(token)
    if (known !== undefined) return known
    const nowS = Math.floor(clock.now() / 1000)
    const pre = precheck(token, algorithms, headers, jws === true)
    if ('reason' in pre) return pre
    const generation = keys.generation()
    const alg = pre.header.alg!
    const key = keys.knownKey(pre.header)
    if (key !== undefined && isCryptoKey(key) && handlesAlgorithm(alg)) {
      let good: boolean
      try {
        good = verifySigSync(alg, key, signingInputOf(token, pre.parts), pre.signature)
      } catch (err) {
        return deny(reasonOf(err))
      }
      return good ? accept(token, pre.payload, pre, generation, nowS) : deny('bad_signature')
    }
    return verifySignature(token, pre, keys, joseOptions, steps).then(
      (payloadBytes) => accept(token, payloadBytes, pre, generation, nowS),
      (err: unknown) => deny(reasonOf(err)),
    )
  }
  const verify = async (token: string, steps?: StepTracer): Promise<Identity | Denial> => check(token, steps)
  return Object.assign(verify, {
    cached,
    knows: (token: string) => lookUp(token) !== undefined,
    check,
    cacheSize: () => cache.size,
    headerCacheSize: () => headers.size,
  })
}

function checkTime(c: Cached, skewS: number, nowS: number): Denial | undefined {
  if (nowS >= c.identity.expS + skewS) return deny('expired')
  if (c.nbfS !== undefined && nowS + skewS < c.nbfS) return deny('not_yet_valid')
  if (c.identity.iatS !== undefined && c.identity.iatS > nowS + skewS) return deny('not_yet_valid', 'token was issued in the future')
  return undefined
}

interface Prechecked {
  readonly header: JWSHeaderParameters
  /** The token's three parts, each canonical base64url; the first (the encoded header) keys the header cache. */
  readonly parts: readonly [string, string, string]
  /** The second and third parts decoded (exactly: they are canonical). */
  readonly payload: Buffer
  readonly signature: Buffer
  /** Whether the header came from the cache of verified headers. */
  readonly known: boolean
}

/** The token's three parts, when it is three non-empty base64url parts with canonical endings. */
function partsOf(token: string, shaped: boolean): [string, string, string] | Denial {
  // The caller's one pass checked the characters (extract/bearer.ts). The dots are cheap to check
  // again, so a hint that was wrong about them falls back to the full check below.
  const first = shaped ? token.indexOf('.') : -1
  const second = first > 0 ? token.indexOf('.', first + 1) : -1
  if (second > first + 1 && second < token.length - 1 && token.indexOf('.', second + 1) === -1) {
    const parts: [string, string, string] = [token.slice(0, first), token.slice(first + 1, second), token.slice(second + 1)]
    return canonicalEnding(parts[0]) && canonicalEnding(parts[1]) && canonicalEnding(parts[2])
      ? parts
      : deny('malformed', 'token is not canonical base64url')
  }
  const split = token.split('.')
  if (split.length === 5) return deny('malformed', 'encrypted tokens (JWE) are not accepted')
  if (split.length !== 3 || split.some((p) => p === '')) return deny('malformed', 'token is not a signed JWT')
  const parts = split as [string, string, string]
  return parts.every(isCanonicalBase64url) ? parts : deny('malformed', 'token is not canonical base64url')
}

/** Cheap structural checks before any key is looked up or any signature computed. */
function precheck(
  token: string,
  algorithms: ReadonlySet<string>,
  verifiedHeaders: ReadonlyMap<string, JWSHeaderParameters>,
  shaped: boolean,
): Prechecked | Denial {
  // The signature covers the encoded text, so a lenient decoder that skips stray characters or
  // ignores non-zero padding bits would accept many encodings of one signed value (for the
  // signature part, which no signature covers, a forger's free variants of a valid token).
  const parts = partsOf(token, shaped)
  if ('reason' in parts) return parts
  const seen = verifiedHeaders.get(parts[0])
  let header = seen
  if (header === undefined) {
    // Wrapped: a header is any JSON object, so one with a "reason" member must not pass for a Denial.
    const checked = headerOf(parts[0], algorithms)
    if (!('header' in checked)) return checked
    header = checked.header
  }
  // Only once the header is one Lapse accepts, so a refused token costs no more decoding.
  // Canonical, so these decodings are exact.
  const payload = Buffer.from(parts[1], 'base64url')
  const signature = Buffer.from(parts[2], 'base64url')
  return { header, parts, payload, signature, known: seen !== undefined }
}

/** A header not seen on a verified token: decoded, parsed and checked. */
function headerOf(encoded: string, algorithms: ReadonlySet<string>): { readonly header: JWSHeaderParameters } | Denial {
  let header: JWSHeaderParameters
  try {
    const text = utf8Text(Buffer.from(encoded, 'base64url'))
    if (text === undefined) return deny('malformed', 'token header is not valid')
    const parsed: unknown = JSON.parse(text)
    if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed))
      return deny('malformed', 'token header is not a JSON object')
    if (repeatsMember(text, parsed)) return deny('malformed', 'token header repeats a member')
    header = parsed as JWSHeaderParameters
  } catch {
    return deny('malformed', 'token header is not valid')
  }
  if (typeof header.alg !== 'string' || !algorithms.has(header.alg)) return deny('alg_not_allowed')
  // RFC 7797 unencoded payloads have no place in a bearer token.
  if ('b64' in header) return deny('malformed', 'token header uses b64')
  // RFC 7515 §4.1.11: an extension the verifier does not understand must fail; Lapse knows none.
  if ('crit' in header) return deny('malformed', 'token header has critical extensions')
  if (header.kid !== undefined && typeof header.kid !== 'string') return deny('malformed', 'token kid is not a string')
  return { header }
}

const B64URL_DIGITS = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_'

/**
 * RFC 7515 §2: base64url without padding, and (RFC 4648 §3.5) no bits set past the last byte.
 * (Encoding the decoding and comparing is an exact check too, and measured ≈ 0.5 µs cheaper in a
 * tight loop, but it leaves two more strings per fresh token and no A/B under load could tell the
 * two apart: bench/README.md.)
 */
function isCanonicalBase64url(s: string): boolean {
  return /^[A-Za-z0-9_-]+$/.test(s) && canonicalEnding(s)
}

/**
 * Of a non-empty string of base64url digits: no dangling digit (a length of 4n + 1 encodes no
 * whole byte) and no bits set past the last byte.
 */
function canonicalEnding(s: string): boolean {
  if (s.length % 4 === 1) return false
  const last = B64URL_DIGITS.indexOf(s[s.length - 1]!)
  return s.length % 4 === 2 ? (last & 0x0f) === 0 : s.length % 4 === 3 ? (last & 0x03) === 0 : true
}

/** The signature covers the token's text up to its last dot: header "." payload, as bytes (it is ASCII). */
const signingInputOf = (token: string, [header, payload]: readonly [string, string, string]): Buffer =>
  Buffer.from(token.slice(0, header.length + 1 + payload.length), 'latin1')

/**
 * The token's payload bytes once its signature verifies with a key the resolver gives for its
 * header; throws (a jose error or a TypeError, mapped by reasonOf) otherwise.
 */
async function verifySignature(
  token: string,
  { header, parts, payload, signature }: Prechecked,
  keys: KeyResolver,
  options: { algorithms: string[] },
  steps: StepTracer | undefined,
): Promise<Buffer> {
  const alg = header.alg!
  const signingInput = signingInputOf(token, parts)

  // True when `key` verifies the token, false when the signature does not match it.
  const check = async (key: VerificationKey): Promise<boolean> => {
    if (isCryptoKey(key) && handlesAlgorithm(alg)) return verifySigSync(alg, key, signingInput, signature)
    // HMAC secrets (only when configured) stay with jose.
    try {
      await compactVerify(token, key as never, options)
      return true
    } catch (err) {
      if ((err as { code?: string }).code === 'ERR_JWS_SIGNATURE_VERIFICATION_FAILED') return false
      throw err
    }
  }

  let key: VerificationKey | undefined
  try {
    key = await keys.getKey(header, steps)
  } catch (err) {
    if ((err as { code?: string }).code !== 'ERR_JWKS_MULTIPLE_MATCHING_KEYS') throw err
  }
  if (key !== undefined) {
    if (await check(key)) return payload
    throw new errors.JWSSignatureVerificationFailed()
  }
  // No kid and several keys fit: try each (bounded), as a verifier must when kid is absent.
  for (const candidate of await keys.candidates(header)) if (await check(candidate)) return payload
  throw new errors.JWSSignatureVerificationFailed()
}
