// DPoP keys and proofs for tests. Valid proofs come from panva's `dpop` package, a client nobody
// here wrote; a mutation (one claim or header changed) is signed with jose under the same key, so
// it fails exactly the one check it breaks.
//
//   const holder = await newHolder()
//   const token = await keys.mint({ cnf: { jkt: holder.jkt } })
//   const proof = await holder.proof(`${lapse.url}/orders/1`, 'GET', token)
import { createHash, randomUUID } from 'node:crypto'
import { calculateThumbprint, generateKeyPair, generateProof, type KeyPair } from 'dpop'
import { exportJWK, SignJWT, type JWK } from 'jose'

export interface Holder {
  readonly pair: KeyPair
  readonly jwk: JWK
  readonly jkt: string
  /** A valid proof, from the dpop package. */
  proof(htu: string, htm: string, token: string, nonce?: string): Promise<string>
  /** A proof signed with jose under this key: the dpop package's claims and header, with `claims` and `header` changed. */
  mutated(opts: {
    htu: string
    htm: string
    token: string
    claims?: Record<string, unknown>
    header?: Record<string, unknown>
  }): Promise<string>
}

export async function newHolder(alg: 'ES256' | 'RS256' | 'PS256' | 'Ed25519' = 'ES256'): Promise<Holder> {
  const pair = await generateKeyPair(alg, { extractable: true })
  const jwk = await exportJWK(pair.publicKey)
  const jkt = await calculateThumbprint(pair.publicKey)
  return {
    pair,
    jwk,
    jkt,
    proof: (htu, htm, token, nonce) => generateProof(pair, htu, htm, nonce, token),
    async mutated({ htu, htm, token, claims = {}, header = {} }) {
      const body = { iat: Math.floor(Date.now() / 1000), jti: randomUUID(), htu, htm, ath: ath(token), ...claims }
      for (const [k, v] of Object.entries(body)) if (v === undefined) delete (body as Record<string, unknown>)[k]
      const protectedHeader = { alg, typ: 'dpop+jwt', jwk, ...header }
      for (const [k, v] of Object.entries(protectedHeader)) if (v === undefined) delete (protectedHeader as Record<string, unknown>)[k]
      return new SignJWT(body).setProtectedHeader(protectedHeader as never).sign(pair.privateKey)
    },
  }
}

export const ath = (token: string) => createHash('sha256').update(token).digest('base64url')
