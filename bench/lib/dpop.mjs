// DPoP for the benchmark's row 8: an ES256 key held by the load generator, the thumbprint a
// bound token carries, and a proof signed synchronously (node:crypto) for every request, since
// autocannon's setupRequest cannot wait.
//
//   const holder = await makeDpopHolder(dir)      // holder.jkt, holder.keyFile
//   const prove = proofSigner(JSON.parse(readFileSync(holder.keyFile)))
//   req.headers.dpop = prove('GET', 'http://127.0.0.1:8080/v1/items', token)
import { createHash, createPrivateKey, randomUUID, sign } from 'node:crypto'
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { calculateJwkThumbprint, exportJWK, generateKeyPair } from 'jose'

export async function makeDpopHolder(dir) {
  const { privateKey } = await generateKeyPair('ES256', { extractable: true })
  const jwk = await exportJWK(privateKey)
  const keyFile = join(dir, 'dpop-key.json')
  writeFileSync(keyFile, JSON.stringify(jwk))
  const { kty, crv, x, y } = jwk
  return { keyFile, jkt: await calculateJwkThumbprint({ kty, crv, x, y }, 'sha256') }
}

const b64u = (value) => Buffer.from(value).toString('base64url')

/** (htm, htu, token) → a proof: a new jti and iat each time, the token's ath hashed once. */
export function proofSigner(privateJwk) {
  const key = createPrivateKey({ key: privateJwk, format: 'jwk' })
  const { kty, crv, x, y } = privateJwk
  const header = b64u(JSON.stringify({ typ: 'dpop+jwt', alg: 'ES256', jwk: { kty, crv, x, y } }))
  const aths = new Map()
  return (htm, htu, token) => {
    let ath = aths.get(token)
    if (ath === undefined) aths.set(token, (ath = createHash('sha256').update(token).digest('base64url')))
    const payload = b64u(JSON.stringify({ jti: randomUUID(), htm, htu, iat: Math.floor(Date.now() / 1000), ath }))
    const input = `${header}.${payload}`
    return `${input}.${sign('sha256', Buffer.from(input), { key, dsaEncoding: 'ieee-p1363' }).toString('base64url')}`
  }
}
