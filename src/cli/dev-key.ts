// The development signing key of `lapse demo` and `lapse token`: made on first use, kept in
// LAPSE_DEV_DIR (default ./.lapse-dev), never used unless a configuration points at its JWKS.
//
//   const dev = await loadDevKey(dir)     // creates it when missing
//   const token = await mintToken(dev, { sub: 'me', scope: 'demo:read', ttlS: 300, iss, aud })
import { mkdirSync, readFileSync, writeFileSync, existsSync } from 'node:fs'
import { randomUUID } from 'node:crypto'
import { join } from 'node:path'
import { exportJWK, generateKeyPair, importJWK, SignJWT, type JWK } from 'jose'

export const DEV_ISSUER = 'https://lapse.dev.invalid'
export const DEV_AUDIENCE = 'lapse-demo'
const ALG = 'ES256'

export interface DevKey {
  readonly privateJwk: JWK
  readonly jwksPath: string
  readonly kid: string
}

export async function loadDevKey(dir: string): Promise<DevKey> {
  const keyPath = join(dir, 'dev-key.json')
  const jwksPath = join(dir, 'jwks.json')
  if (!existsSync(keyPath) || !existsSync(jwksPath)) {
    mkdirSync(dir, { recursive: true, mode: 0o700 })
    const { privateKey, publicKey } = await generateKeyPair(ALG, { extractable: true })
    const kid = `dev-${randomUUID().slice(0, 8)}`
    const priv = { ...(await exportJWK(privateKey)), kid, alg: ALG, use: 'sig' }
    const pub = { ...(await exportJWK(publicKey)), kid, alg: ALG, use: 'sig' }
    writeFileSync(keyPath, JSON.stringify(priv, null, 2), { mode: 0o600 })
    writeFileSync(jwksPath, JSON.stringify({ keys: [pub] }, null, 2))
  }
  const privateJwk = JSON.parse(readFileSync(keyPath, 'utf8')) as JWK
  return { privateJwk, jwksPath, kid: privateJwk.kid ?? '' }
}

export interface MintOptions {
  readonly sub: string
  readonly scope?: string | undefined
  readonly ttlS: number
  readonly iss?: string | undefined
  readonly aud?: string | undefined
  readonly nowS: number
  readonly extra?: Record<string, string> | undefined
  /** The confirmation claim (RFC 7800), e.g. `{ jkt }` for a DPoP-bound token. */
  readonly cnf?: Record<string, string> | undefined
}

export async function mintToken(dev: DevKey, o: MintOptions): Promise<string> {
  const key = await importJWK(dev.privateJwk, ALG)
  const claims: Record<string, unknown> = { ...o.extra }
  if (o.scope) claims.scope = o.scope
  if (o.cnf) claims.cnf = o.cnf
  return new SignJWT(claims)
    .setProtectedHeader({ alg: ALG, kid: dev.kid, typ: 'at+jwt' })
    .setIssuer(o.iss ?? DEV_ISSUER)
    .setAudience(o.aud ?? DEV_AUDIENCE)
    .setSubject(o.sub)
    .setJti(randomUUID())
    .setIssuedAt(o.nowS)
    .setExpirationTime(o.nowS + o.ttlS)
    .sign(key)
}
