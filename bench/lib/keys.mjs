// Keys and tokens for the benchmark, made fresh each run with jose: an RS256 and an ES256 pair,
// a JWKS file of the public halves for Lapse, a PEM for the fastify row, and signed tokens.
//
//   const keys = await makeKeys(dir)            // keys.jwksFile, keys.rsPemFile
//   const token = await mintToken(keys, 'RS256', { iss, aud, ttlS: 600 })
//   const pool = await mintPool(keys, 'ES256', 10_000, claims)
import { randomUUID } from 'node:crypto'
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { exportJWK, exportSPKI, generateKeyPair, SignJWT } from 'jose'

export const SCOPE = 'bench:read'

export async function makeKeys(dir) {
  const rs = await generateKeyPair('RS256', { modulusLength: 2048, extractable: true })
  const es = await generateKeyPair('ES256', { extractable: true })
  const jwk = async (pair, alg, kid) => ({ ...(await exportJWK(pair.publicKey)), alg, kid, use: 'sig' })
  const jwks = { keys: [await jwk(rs, 'RS256', 'bench-rs'), await jwk(es, 'ES256', 'bench-es')] }
  const jwksFile = join(dir, 'jwks.json')
  writeFileSync(jwksFile, JSON.stringify(jwks))
  const rsPemFile = join(dir, 'rs256.pub.pem')
  writeFileSync(rsPemFile, await exportSPKI(rs.publicKey))
  return {
    jwksFile,
    rsPemFile,
    private: { RS256: { key: rs.privateKey, kid: 'bench-rs' }, ES256: { key: es.privateKey, kid: 'bench-es' } },
  }
}

/** One token with the claims Lapse requires by default; `jti` is unique, `iat` is now. */
export function mintToken(keys, alg, { iss, aud, ttlS, sub = 'bench-client', cnf }) {
  const { key, kid } = keys.private[alg]
  const iat = Math.floor(Date.now() / 1000)
  return new SignJWT({ scope: SCOPE, client_id: 'bench', ...(cnf ? { cnf } : {}) })
    .setProtectedHeader({ alg, kid, typ: 'JWT' })
    .setIssuer(iss)
    .setAudience(aud)
    .setSubject(sub)
    .setJti(randomUUID())
    .setIssuedAt(iat)
    .setExpirationTime(iat + ttlS)
    .sign(key)
}

/** `count` distinct tokens; signing runs on libuv's pool, so batches keep both cores busy. */
export async function mintPool(keys, alg, count, claims) {
  const tokens = []
  const batch = 64
  for (let i = 0; i < count; i += batch) {
    const n = Math.min(batch, count - i)
    tokens.push(...(await Promise.all(Array.from({ length: n }, (_, j) => mintToken(keys, alg, { ...claims, sub: `bench-${i + j}` })))))
  }
  return tokens
}
