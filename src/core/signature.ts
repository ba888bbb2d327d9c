// The signature check itself: node:crypto's one-shot verify, synchronous, over a KeyObject made
// once per key; jose still parses and imports each key (verify/keys.ts for tokens, bind/dpop.ts
// for DPoP proofs). Here in core because both stages use it and neither may import the other.
//
//   const ok = verifySignature('RS256', cryptoKey, signingInput, signature)  // true | false; throws TypeError on a key unfit for alg
//
// Why not jose's WebCrypto verify (a thread-pool hop per token): docs/design.md#signatures-on-the-event-loop;
// figures in bench/README.md. test/verify/signature.test.ts holds it to jose's answer on Wycheproof.
import { constants, KeyObject, verify, type webcrypto } from 'node:crypto'

type CryptoKey = webcrypto.CryptoKey

interface Scheme {
  /** What the CryptoKey must have been imported as: WebCrypto algorithm name, hash, curve. */
  readonly name: 'RSASSA-PKCS1-v1_5' | 'RSA-PSS' | 'ECDSA' | 'Ed25519'
  readonly hash: 'sha256' | 'sha384' | 'sha512' | null
  readonly webHash?: 'SHA-256' | 'SHA-384' | 'SHA-512'
  readonly curve?: 'P-256' | 'P-384' | 'P-521'
  /** ECDSA: r ‖ s, each as long as the curve's order (RFC 7518 §3.4). */
  readonly signatureBytes?: number
}

const rsa = (name: 'RSASSA-PKCS1-v1_5' | 'RSA-PSS', bits: 256 | 384 | 512): Scheme => ({ name, hash: `sha${bits}`, webHash: `SHA-${bits}` })
const ecdsa = (bits: 256 | 384 | 512, curve: 'P-256' | 'P-384' | 'P-521', signatureBytes: number): Scheme => ({
  name: 'ECDSA',
  hash: `sha${bits}`,
  curve,
  signatureBytes,
})

// A Map, not an object: an `alg` such as "toString" must not find anything on a prototype.
const SCHEMES: ReadonlyMap<string, Scheme> = new Map(
  Object.entries({
    RS256: rsa('RSASSA-PKCS1-v1_5', 256),
    RS384: rsa('RSASSA-PKCS1-v1_5', 384),
    RS512: rsa('RSASSA-PKCS1-v1_5', 512),
    PS256: rsa('RSA-PSS', 256),
    PS384: rsa('RSA-PSS', 384),
    PS512: rsa('RSA-PSS', 512),
    ES256: ecdsa(256, 'P-256', 64),
    ES384: ecdsa(384, 'P-384', 96),
    ES512: ecdsa(512, 'P-521', 132),
    EdDSA: { name: 'Ed25519', hash: null },
    Ed25519: { name: 'Ed25519', hash: null },
  } satisfies Record<string, Scheme>),
)

const MIN_RSA_BITS = 2048

/** Whether `verifySignature` handles `alg`; the rest (HMAC) stays with jose. */
export const handlesAlgorithm = (alg: string): boolean => SCHEMES.has(alg)

export const isCryptoKey = (key: unknown): key is CryptoKey =>
  (key as { [Symbol.toStringTag]?: unknown })?.[Symbol.toStringTag] === 'CryptoKey'

// A CryptoKey lives as long as the key set that imported it, so the KeyObject goes with it.
const keyObjects = new WeakMap<CryptoKey, { alg: string; options: Parameters<typeof verify>[2] }>()

/**
 * Checks `signature` over `signingInput` (the token's ASCII text up to its last dot) with `key`,
 * which must have been imported for `alg`: a key of another algorithm, hash or curve, one not
 * meant for verifying, or an RSA key under 2048 bits is a TypeError, as it is in jose.
 */
export function verifySignature(alg: string, key: CryptoKey, signingInput: Buffer, signature: Buffer): boolean {
  const scheme = SCHEMES.get(alg)
  if (!scheme) throw new TypeError(`${alg} is not an asymmetric JWS algorithm`)
  let prepared = keyObjects.get(key)
  // A key is checked against the algorithm once; jose imported it for that one algorithm.
  if (prepared?.alg !== alg) prepared = prepare(alg, scheme, key)
  // ECDSA: RFC 7518 fixes the length, and anything else is not a signature; checked here rather
  // than left to how Node turns r ‖ s into DER.
  if (scheme.signatureBytes !== undefined && signature.length !== scheme.signatureBytes) return false
  try {
    return verify(scheme.hash, signingInput, prepared.options, signature)
  } catch {
    // OpenSSL refusing to parse a signature is a failed check, as jose reports it.
    return false
  }
}

function checkFits(alg: string, scheme: Scheme, key: CryptoKey): void {
  const algorithm = key.algorithm as { name: string; hash?: { name?: string }; namedCurve?: string; modulusLength?: number }
  if (key.type !== 'public' || !key.usages.includes('verify')) throw new TypeError(`${alg}: the key is not a public key for verifying`)
  if (algorithm.name !== scheme.name) throw new TypeError(`${alg}: the key was imported for ${algorithm.name}`)
  if (scheme.webHash !== undefined && algorithm.hash?.name !== scheme.webHash)
    throw new TypeError(`${alg}: the key was imported for ${algorithm.hash?.name ?? 'no hash'}`)
  if (scheme.curve !== undefined && algorithm.namedCurve !== scheme.curve)
    throw new TypeError(`${alg}: the key is on ${algorithm.namedCurve ?? 'no curve'}`)
  if (scheme.name.startsWith('RSA') && !((algorithm.modulusLength ?? 0) >= MIN_RSA_BITS))
    throw new TypeError(`${alg} requires a key of at least ${MIN_RSA_BITS} bits`)
}

function prepare(alg: string, scheme: Scheme, key: CryptoKey) {
  checkFits(alg, scheme, key)
  const keyObject = KeyObject.from(key)
  const options =
    scheme.name === 'RSA-PSS'
      ? // RFC 7518 §3.5: the salt is as long as the hash; any other length fails, as in WebCrypto.
        { key: keyObject, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: constants.RSA_PSS_SALTLEN_DIGEST }
      : scheme.name === 'ECDSA'
        ? { key: keyObject, dsaEncoding: 'ieee-p1363' as const }
        : keyObject
  const prepared = { alg, options }
  keyObjects.set(key, prepared)
  return prepared
}
