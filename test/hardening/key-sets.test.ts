// Key-set rules beyond the Wycheproof vectors: what filterKeys keeps (sound keys, no false
// alarms) and what it drops, and HMAC key length checked against the token's algorithm.
import { generateKeyPairSync, randomBytes } from 'node:crypto'
import t from 'tap'
import { exportJWK, type JWK } from 'jose'
import { KNOWN_ALGORITHMS } from '../../src/config/schema.js'
import { manualClock } from '../../src/core/clock.js'
import { createKeyResolver, filterKeys } from '../../src/verify/keys.js'
import { testKeys, writeJwks } from '../fixtures/keys.js'

const ALL = [...KNOWN_ALGORITHMS]
const rsaJwk = async (publicExponent = 65537, modulusLength = 2048) =>
  ({
    ...(await exportJWK(generateKeyPairSync('rsa', { modulusLength, publicExponent }).publicKey)),
    kid: `rsa-${randomBytes(3).toString('hex')}`,
  }) as JWK
// RSA key generation is slow: two keys serve every test below.
const [rsaA, rsaB] = await Promise.all([rsaJwk(), rsaJwk()])

t.test('sound keys are kept: no false alarm on fresh keys', async (t) => {
  const keys = await testKeys()
  t.equal(filterKeys(keys.jwks, ALL).keys.length, keys.jwks.keys.length, 'the four test keys (RSA, RSA-PSS, P-256, Ed25519)')
  const fresh = [rsaA, rsaB, await rsaJwk(3)]
  t.equal(filterKeys({ keys: fresh }, ALL).keys.length, 3, 'fresh 2048-bit RSA keys (e = 65537 or 3) pass the ROCA and exponent checks')
})

t.test('keys anyone could forge with, or that cannot be used as published, are dropped', async (t) => {
  const good = rsaA
  const ec = (await testKeys()).pairs.ES256.publicJwk
  const cases: Array<[string, unknown]> = [
    ['RSA public exponent 1', { ...good, e: 'AQ' }],
    ['RSA public exponent 2 (even)', { ...good, e: 'Ag' }],
    ['RSA 1024-bit modulus', await rsaJwk(65537, 1024)],
    [
      'EC point moved off the curve',
      { ...ec, y: Buffer.from(Buffer.from(ec.y!, 'base64url').map((b, i) => (i === 31 ? b ^ 1 : b))).toString('base64url') },
    ],
    ['EC key with the wrong curve name', { ...ec, crv: 'P-384' }],
    ['EC key with a private part', { ...ec, d: 'AAAA' }],
    ['RSA key with a private part', { ...good, d: 'AAAA' }],
    ['key for encryption', { ...good, use: 'enc' }],
    ['key_ops without verify', { ...good, key_ops: ['encrypt'] }],
    ['alg not allowed', { ...good, alg: 'RS1' }],
    ['kid not a string', { ...good, kid: 7 }],
    ['not an object', 'key'],
    ['unknown kty', { kty: 'XYZ' }],
  ]
  for (const [what, key] of cases) t.same(filterKeys({ keys: [key] }, ALL).keys, [], `${what}: dropped`)
})

t.test('duplicate kids: ambiguity drops every contender, a plain repeat is kept once', async (t) => {
  const a = rsaA
  const b = { ...rsaB, kid: a.kid }
  t.same(filterKeys({ keys: [a, b] }, ALL).keys, [], 'two different RSA keys under one kid: neither kept')
  t.same(filterKeys({ keys: [a, { ...a }] }, ALL).keys, [a], 'the same key twice: kept once')
  const ec = { ...(await testKeys()).pairs.ES256.publicJwk, kid: a.kid }
  t.equal(filterKeys({ keys: [a, ec] }, ALL).keys.length, 2, 'one kid for an RSA and an EC key (RFC 7517 §4.5 alternatives): both kept')
})

t.test('HMAC secrets: only when configured, never next to public keys, long enough for the hash', async (t) => {
  const secret = { kty: 'oct', kid: 'hs', k: randomBytes(32).toString('base64url') }
  t.same(filterKeys({ keys: [secret] }, ['RS256']).keys, [], 'no HS* algorithm allowed: dropped')
  t.same(filterKeys({ keys: [secret] }, ['HS256']).keys, [secret], 'HS256 allowed: kept')
  t.same(filterKeys({ keys: [{ ...secret, alg: 'HS512' }] }, ['HS512']).keys, [], 'a 256-bit secret declared for HS512: dropped')
  const rsa = rsaA
  t.same(filterKeys({ keys: [secret, rsa] }, ['HS256', 'RS256']).keys, [rsa], 'a secret published with public keys: the secret is dropped')

  // A 256-bit secret without `alg` serves HS256 but not HS512 (RFC 7518 §3.2).
  const resolver = createKeyResolver(
    { jwksFile: writeJwks([secret as JWK]), refreshS: 300, cooldownS: 30, timeoutMs: 1000, algorithms: ['HS256', 'HS512'] },
    { clock: manualClock(0) },
  )
  await resolver.start()
  t.ok(await resolver.getKey({ alg: 'HS256', kid: 'hs' }), 'HS256: the secret is found')
  await t.rejects(resolver.getKey({ alg: 'HS512', kid: 'hs' }), { code: 'ERR_JWKS_NO_MATCHING_KEY' }, 'HS512: no key long enough')
  resolver.close()
})
