// Verification keys from a JWKS file or URL, kept usable while the issuer's endpoint is down.
//
//   const keys = createKeyResolver({ jwksUrl, refreshS: 300, cooldownS: 30, timeoutMs: 5000, algorithms }, { clock, log })
//   await keys.start()                       // file: loads or throws; URL: first fetch in the background
//   const key = await keys.getKey(header)    // jose key, or throws (mapped to a deny reason by verify)
//
// Why not jose's createRemoteJWKSet (it refetches on the request path, failing requests while the
// issuer is down): docs/design.md#keys-that-survive-the-issuer.
import { createPublicKey, type JsonWebKey, type KeyObject } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { createLocalJWKSet, importJWK, errors, type JSONWebKeySet, type JWK, type JWSHeaderParameters } from 'jose'
import { request } from 'undici'
import { LapseError } from '../core/errors.js'
import type { Clock, StepTracer } from '../core/types.js'

export type VerificationKey = Awaited<ReturnType<ReturnType<typeof createLocalJWKSet>>> | Uint8Array

export interface KeyResolver {
  /** `steps`: the decision waiting on this lookup, so a refetch it triggers is one of its child spans. */
  getKey(header: JWSHeaderParameters, steps?: StepTracer): Promise<VerificationKey>
  /**
   * The key a successful `getKey` already gave for this header's `alg` and `kid` in the current key
   * set, else undefined (then call `getKey`). Synchronous: it lets a fresh token whose key is
   * known be verified without a promise. Asymmetric keys only.
   */
  knownKey(header: JWSHeaderParameters): VerificationKey | undefined
  /** Every candidate key when the header names no `kid` and several keys fit; bounded. */
  candidates(header: JWSHeaderParameters): Promise<VerificationKey[]>
  ready(): boolean
  /** Changes whenever the key set changes, so verified-token caches can drop stale entries. */
  generation(): number
  stats(): { keys: number; lastRefreshMs: number | undefined; lastError: string | undefined }
  start(): Promise<void>
  close(): void
}

export class KeysUnavailableError extends LapseError {
  constructor(message: string) {
    super('ERR_KEYS_UNAVAILABLE', message)
  }
}

export interface KeySource {
  readonly jwksUrl?: string | undefined
  readonly jwksFile?: string | undefined
  readonly refreshS: number
  readonly cooldownS: number
  readonly timeoutMs: number
  readonly algorithms: readonly string[]
}

interface Log {
  warn(obj: object, msg: string): void
  info(obj: object, msg: string): void
}

const MAX_JWKS_BYTES = 512 * 1024
const NO_USABLE_KEY = new LapseError('ERR_JWKS_NO_USABLE_KEY', 'the key set holds no usable key')
// Only lookups that found exactly one key are remembered, so the memo is bounded by the key set
// (keys × algorithms), not by what clients put in `kid`; the cap is a second fence.
const MAX_KNOWN_KEYS = 256
const MAX_CANDIDATES = 4
const MIN_RSA_BITS = 2048

/** Keys a verifier must never trust, whatever an issuer publishes (docs/security.md#hostile-key-sets). */
export function filterKeys(jwks: unknown, algorithms: readonly string[], log?: Log): JSONWebKeySet {
  if (!jwks || typeof jwks !== 'object' || !Array.isArray((jwks as { keys?: unknown }).keys)) {
    throw new LapseError('ERR_JWKS_INVALID', 'JSON Web Key Set malformed: no "keys" array')
  }
  const allowHmac = algorithms.some((a) => a.startsWith('HS'))
  const usable: Array<{ index: number; jwk: JWK }> = []
  for (const [i, key] of (jwks as { keys: unknown[] }).keys.entries()) {
    const why = rejectKey(key, algorithms, allowHmac)
    if (why) {
      log?.warn({ index: i, why }, 'ignoring a key in the key set')
      continue
    }
    usable.push({ index: i, jwk: key as JWK })
  }
  // Two different keys under one kid (and kty): which one the issuer meant cannot be known, so
  // neither is trusted (RFC 7517 §4.5). An exact repeat of one key is harmless and kept once.
  const bySlot = new Map<string, Set<string>>()
  for (const { jwk } of usable) {
    if (jwk.kid === undefined) continue
    const slot = `${jwk.kid}\u0000${jwk.kty}`
    bySlot.set(slot, (bySlot.get(slot) ?? new Set()).add(JSON.stringify(jwk)))
  }
  const kept: JWK[] = []
  const seen = new Set<string>()
  for (const { index, jwk } of usable) {
    if (jwk.kid !== undefined) {
      const slot = `${jwk.kid}\u0000${jwk.kty}`
      if (bySlot.get(slot)!.size > 1) {
        log?.warn({ index, kid: jwk.kid, why: 'duplicate kid with different keys' }, 'ignoring a key in the key set')
        continue
      }
      if (seen.has(slot)) continue
      seen.add(slot)
    }
    kept.push(jwk)
  }
  // A secret next to public keys is a secret someone published: ignore it, keep the public keys.
  if (kept.some((k) => k.kty === 'oct') && kept.some((k) => k.kty !== 'oct')) {
    log?.warn({ why: 'symmetric key in a set that also holds public keys' }, 'ignoring the symmetric keys of the key set')
    return { keys: kept.filter((k) => k.kty !== 'oct') }
  }
  return { keys: kept }
}

function rejectKey(key: unknown, algorithms: readonly string[], allowHmac: boolean): string | undefined {
  if (!key || typeof key !== 'object' || Array.isArray(key)) return 'not an object'
  const k = key as Record<string, unknown>
  if (typeof k.kty !== 'string') return 'no kty'
  if (k.kid !== undefined && (typeof k.kid !== 'string' || k.kid.length > 256)) return 'kid is not a short string'
  if (k.use !== undefined && k.use !== 'sig') return 'use is not "sig"'
  if (k.alg !== undefined && (typeof k.alg !== 'string' || !algorithms.includes(k.alg))) return 'alg is not allowed'
  if (k.key_ops !== undefined && (!Array.isArray(k.key_ops) || !k.key_ops.includes('verify'))) return 'key_ops lacks "verify"'
  switch (k.kty) {
    case 'RSA':
      if ('d' in k || 'p' in k || 'q' in k) return 'private key material in a public key set'
      if (typeof k.n !== 'string' || typeof k.e !== 'string') return 'RSA key without n or e'
      if (Math.floor((k.n.replace(/=+$/, '').length * 6) / 8) * 8 < MIN_RSA_BITS - 8) return `RSA modulus shorter than ${MIN_RSA_BITS} bits`
      return rejectKeyMaterial(k)
    case 'EC':
      if ('d' in k) return 'private key material in a public key set'
      if (!['P-256', 'P-384', 'P-521'].includes(String(k.crv))) return 'unsupported EC curve'
      return rejectKeyMaterial(k)
    case 'OKP':
      if ('d' in k) return 'private key material in a public key set'
      if (!['Ed25519', 'Ed448'].includes(String(k.crv))) return 'unsupported OKP curve'
      return rejectKeyMaterial(k)
    case 'oct': {
      // A shared secret only ever verifies when HMAC was configured on purpose.
      if (!allowHmac) return 'symmetric key while no HS* algorithm is allowed'
      // RFC 7518 §3.2: a key at least as long as the hash output.
      const minBytes = hmacKeyBytes(k.alg)
      if (typeof k.k !== 'string' || base64urlBytes(k.k) < minBytes) return `symmetric key shorter than ${minBytes * 8} bits`
      return undefined
    }
    default:
      return 'unsupported kty'
  }
}

/** HS384 and HS512 need 48- and 64-byte keys; anything else (HS256, no alg) 32. */
const hmacKeyBytes = (alg: unknown): number => (alg === 'HS512' ? 64 : alg === 'HS384' ? 48 : 32)
const base64urlBytes = (s: string): number => Math.floor((s.replace(/=+$/, '').length * 6) / 8)

/**
 * Parses the key as OpenSSL will use it, so a point off its curve, a key of the wrong size for
 * its curve or a broken modulus is refused at loading rather than at first use; and refuses RSA
 * keys anyone can forge with: public exponent 1 (or even), and ROCA moduli.
 */
function rejectKeyMaterial(k: Record<string, unknown>): string | undefined {
  let details: KeyObject['asymmetricKeyDetails']
  try {
    details = createPublicKey({ key: k as JsonWebKey, format: 'jwk' }).asymmetricKeyDetails
  } catch {
    return 'key material is not a valid public key'
  }
  if (k.kty !== 'RSA') return undefined
  const e = details?.publicExponent
  if (e === undefined || e < 3n || e % 2n === 0n) return 'RSA public exponent is not odd and at least 3'
  if (hasRocaFingerprint(BigInt(`0x${Buffer.from(k.n as string, 'base64url').toString('hex') || '0'}`))) {
    return 'RSA modulus has the ROCA fingerprint (CVE-2017-15361): its private key can be recovered'
  }
  return undefined
}

// ROCA (CVE-2017-15361): primes made by the affected Infineon library are 65537^a mod M plus a
// multiple of M, a primorial, so for every small prime r dividing M the modulus mod r lies in the
// subgroup generated by 65537 mod r (Nemec et al., "The Return of Coppersmith's Attack"). For
// moduli of 1984 bits and more M holds the first 126 primes, up to 701: a random modulus passes
// all of them with probability about 2^-167. (Lapse accepts no smaller modulus.)
const ROCA_PRIMES = Array.from({ length: 699 }, (_, i) => i + 3).filter((r) => {
  for (let d = 2; d * d <= r; d++) if (r % d === 0) return false
  return true
})

function hasRocaFingerprint(n: bigint): boolean {
  for (const r of ROCA_PRIMES) {
    const residue = Number(n % BigInt(r))
    const g = 65537 % r
    let x = 1
    let inSubgroup = false
    do {
      if (x === residue) {
        inSubgroup = true
        break
      }
      x = (x * g) % r
    } while (x !== 1)
    if (!inSubgroup) return false
  }
  return true
}

/** `deps.steps` traces the background fetches (each its own trace); request-triggered ones use the request's. */
export function createKeyResolver(source: KeySource, deps: { clock: Clock; log?: Log; steps?: StepTracer }): KeyResolver {
  let jwks: JSONWebKeySet | undefined
  let local: ReturnType<typeof createLocalJWKSet> | undefined
  let generation = 0
  let lastRefreshMs: number | undefined
  let lastError: string | undefined
  let lastAttemptMs = -Infinity
  let inflight: Promise<void> | undefined
  let timer: NodeJS.Timeout | undefined
  let closed = false
  const hmacCache = new Map<string, Promise<VerificationKey>>()
  // Replaced, not cleared, with the key set: a lookup that began before a refresh and ends after it
  // writes into the old map and is forgotten with it.
  let known = new Map<string, VerificationKey>()
  const knownId = (header: JWSHeaderParameters) => `${header.alg}\u0000${header.kid ?? ''}\u0000${header.kid === undefined ? 0 : 1}`

  const install = (set: JSONWebKeySet) => {
    if (jwks && JSON.stringify(jwks) === JSON.stringify(set)) return
    jwks = set
    local = createLocalJWKSet(set)
    hmacCache.clear()
    known = new Map()
    generation++
  }

  const fetchOnce = async (): Promise<void> => {
    lastAttemptMs = deps.clock.now()
    try {
      const set = filterKeys(await fetchJwks(source.jwksUrl!, source.timeoutMs), source.algorithms, deps.log)
      // A set with no usable key (an issuer glitch serving {"keys":[]}, or only keys Lapse refuses)
      // is a failed refresh, not a rotation to nothing: installed, it would refuse every token as
      // unknown_key while /readyz said ready. Before any good set it leaves keys_unavailable.
      if (set.keys.length === 0) throw NO_USABLE_KEY
      install(set)
      lastRefreshMs = deps.clock.now()
      lastError = undefined
    } catch (err) {
      lastError = (err as { code?: string }).code ?? (err as Error).name
      deps.log?.warn(
        { err: lastError, keys: jwks?.keys.length ?? 0 },
        jwks ? 'JWKS fetch failed; keeping the last good key set' : 'JWKS fetch failed; no key set loaded yet',
      )
      throw err
    }
  }
  /** Coalesced: concurrent callers share one fetch. */
  const refresh = () =>
    (inflight ??= fetchOnce().finally(() => {
      inflight = undefined
    }))

  const schedule = (delayMs: number) => {
    if (closed) return
    timer = setTimeout(() => {
      ;(deps.steps ? deps.steps.run('jwks_fetch', refresh) : refresh()).then(
        () => schedule(source.refreshS * 1000),
        // Before the first success retry soon; afterwards the old keys serve until the next round.
        () => schedule(jwks ? source.refreshS * 1000 : Math.min(source.cooldownS * 1000, 5000)),
      )
    }, delayMs)
    timer.unref()
  }

  const selectHmac = (header: JWSHeaderParameters): Promise<VerificationKey> => {
    const matching = (jwks?.keys ?? []).filter(
      (k) =>
        k.kty === 'oct' &&
        (header.kid === undefined || k.kid === header.kid) &&
        (k.alg === undefined || k.alg === header.alg) &&
        // A 256-bit key without `alg` may serve HS256 but not HS384/HS512 (RFC 7518 §3.2).
        base64urlBytes(k.k ?? '') >= hmacKeyBytes(header.alg),
    )
    if (matching.length !== 1)
      return Promise.reject(matching.length ? new errors.JWKSMultipleMatchingKeys() : new errors.JWKSNoMatchingKey())
    const id = `${header.alg}:${matching[0]!.kid ?? ''}`
    let key = hmacCache.get(id)
    if (!key) {
      key = importJWK(matching[0]!, header.alg) as Promise<VerificationKey>
      hmacCache.set(id, key)
    }
    return key
  }

  const lookup = (header: JWSHeaderParameters): Promise<VerificationKey> => {
    if (!local) return Promise.reject(new KeysUnavailableError('no verification keys loaded yet'))
    if (typeof header.alg === 'string' && header.alg.startsWith('HS')) return selectHmac(header)
    return local(header)
  }

  const cooldownPassed = () => source.jwksUrl !== undefined && deps.clock.now() - lastAttemptMs >= source.cooldownS * 1000

  /** `lookup`, remembering an asymmetric key found for the key set it was found in. */
  const lookupAndRemember = async (header: JWSHeaderParameters): Promise<VerificationKey> => {
    const memo = known
    const key = await lookup(header)
    const asymmetric = typeof header.alg === 'string' && !header.alg.startsWith('HS')
    if (asymmetric && memo === known && memo.size < MAX_KNOWN_KEYS) memo.set(knownId(header), key)
    return key
  }

  return {
    async getKey(header, steps) {
      try {
        return await lookupAndRemember(header)
      } catch (err) {
        if ((err as { code?: string }).code !== 'ERR_JWKS_NO_MATCHING_KEY' || !cooldownPassed()) throw err
        // An unknown kid may mean the issuer rotated: look once, then answer.
        await (steps ? steps.run('jwks_fetch', refresh) : refresh()).catch(() => undefined)
        return lookupAndRemember(header)
      }
    },
    knownKey: (header) => known.get(knownId(header)),
    async candidates(header) {
      try {
        return [await lookup(header)]
      } catch (err) {
        if ((err as { code?: string }).code !== 'ERR_JWKS_MULTIPLE_MATCHING_KEYS') throw err
        const keys: VerificationKey[] = []
        for await (const key of err as errors.JWKSMultipleMatchingKeys) {
          keys.push(key as VerificationKey)
          if (keys.length >= MAX_CANDIDATES) break
        }
        return keys
      }
    },
    ready: () => local !== undefined,
    generation: () => generation,
    stats: () => ({ keys: jwks?.keys.length ?? 0, lastRefreshMs, lastError }),
    async start() {
      if (source.jwksFile) {
        const text = readFileSync(source.jwksFile, 'utf8')
        install(filterKeys(JSON.parse(text), source.algorithms, deps.log))
        lastRefreshMs = deps.clock.now()
        if (jwks!.keys.length === 0) throw NO_USABLE_KEY
        return
      }
      schedule(0)
    },
    close() {
      closed = true
      if (timer) clearTimeout(timer)
    },
  }
}

async function fetchJwks(url: string, timeoutMs: number): Promise<unknown> {
  const res = await request(url, {
    method: 'GET',
    headers: { accept: 'application/jwk-set+json, application/json' },
    headersTimeout: timeoutMs,
    bodyTimeout: timeoutMs,
    signal: AbortSignal.timeout(timeoutMs),
  } as Parameters<typeof request>[1])
  if (res.statusCode !== 200) {
    await res.body.dump()
    throw new LapseError('ERR_JWKS_HTTP_STATUS', `JWKS endpoint answered ${res.statusCode}`)
  }
  const chunks: Buffer[] = []
  let size = 0
  for await (const chunk of res.body) {
    size += (chunk as Buffer).length
    if (size > MAX_JWKS_BYTES) {
      res.body.destroy()
      throw new LapseError('ERR_JWKS_TOO_LARGE', 'JWKS document too large')
    }
    chunks.push(chunk as Buffer)
  }
  try {
    return JSON.parse(Buffer.concat(chunks).toString('utf8'))
  } catch {
    throw new LapseError('ERR_JWKS_INVALID', 'JWKS document is not JSON')
  }
}
