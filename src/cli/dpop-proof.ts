// `lapse dpop-proof`: a DPoP proof (RFC 9449 §4.2) for one request, to try DPoP with curl. The
// key is an ES256 private JWK in a file, made on first use; `--jkt` prints its thumbprint, the
// `cnf.jkt` a token bound to it carries (`lapse token --jkt`).
//
//   const key = await loadProofKey('.lapse-dev/dpop-key.json')
//   const proof = await makeProof(key, { method: 'GET', url: 'http://127.0.0.1:8080/hello', token })
import { createHash, randomUUID } from 'node:crypto'
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs'
import { dirname } from 'node:path'
import { calculateJwkThumbprint, exportJWK, generateKeyPair, importJWK, SignJWT, type JWK } from 'jose'

const ALG = 'ES256'
// RFC 7518 §6.2.2: the private member of an EC key; never in a proof.
const PRIVATE = new Set(['d'])

export interface ProofKey {
  readonly privateJwk: JWK
  readonly publicJwk: JWK
}

export async function loadProofKey(path: string): Promise<ProofKey> {
  if (!existsSync(path)) {
    mkdirSync(dirname(path), { recursive: true, mode: 0o700 })
    const { privateKey } = await generateKeyPair(ALG, { extractable: true })
    writeFileSync(path, JSON.stringify({ ...(await exportJWK(privateKey)), alg: ALG }, null, 2), { mode: 0o600 })
  }
  const privateJwk = JSON.parse(readFileSync(path, 'utf8')) as JWK
  if (privateJwk.kty !== 'EC' || privateJwk.crv !== 'P-256' || typeof privateJwk.d !== 'string')
    throw new Error(`${path} is not an EC P-256 private JWK`)
  const publicJwk = Object.fromEntries(
    Object.entries(privateJwk).filter(([k]) => !PRIVATE.has(k) && ['kty', 'crv', 'x', 'y'].includes(k)),
  ) as JWK
  return { privateJwk, publicJwk }
}

export const thumbprintOf = (key: ProofKey): Promise<string> => calculateJwkThumbprint(key.publicJwk, 'sha256')

export async function makeProof(
  key: ProofKey,
  req: {
    readonly method: string
    readonly url: string
    readonly token?: string | undefined
    readonly nonce?: string | undefined
    readonly nowS: number
  },
): Promise<string> {
  const url = new URL(req.url)
  // RFC 9449 §4.2: htu is the target URI without query and fragment.
  url.search = ''
  url.hash = ''
  const claims: Record<string, unknown> = { jti: randomUUID(), htm: req.method, htu: url.href, iat: req.nowS }
  if (req.token !== undefined) claims.ath = createHash('sha256').update(req.token).digest('base64url')
  if (req.nonce !== undefined) claims.nonce = req.nonce
  return new SignJWT(claims)
    .setProtectedHeader({ alg: ALG, typ: 'dpop+jwt', jwk: key.publicJwk })
    .sign(await importJWK(key.privateJwk, ALG))
}
