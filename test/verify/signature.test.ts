// src/core/signature.ts against jose, differentially: for every Wycheproof JWS vector with an
// asymmetric key, and for thousands of mutated tokens of every asymmetric algorithm, the
// synchronous node:crypto check must give exactly jose's answer — valid, invalid, or a key unfit
// for the algorithm (a TypeError in both).
import { generateKeyPairSync, sign } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import fc from 'fast-check'
import t from 'tap'
import { compactVerify, exportJWK, generateKeyPair, importJWK, SignJWT, type JWK } from 'jose'
import { handlesAlgorithm, verifySignature } from '../../src/core/signature.js'

type Verdict = 'valid' | 'invalid' | 'unfit' | `other: ${string}`
type Key = Awaited<ReturnType<typeof importJWK>>

async function joseVerdict(jws: string, key: Key): Promise<Verdict> {
  try {
    await compactVerify(jws, key)
    return 'valid'
  } catch (err) {
    if ((err as { code?: string }).code === 'ERR_JWS_SIGNATURE_VERIFICATION_FAILED') return 'invalid'
    if (err instanceof TypeError) return 'unfit'
    return `other: ${(err as { code?: string }).code ?? String(err)}`
  }
}

/** `alg`: what Lapse's precheck read from the header (the key's own algorithm here). */
function syncVerdict(jws: string, key: Key, alg: string): Verdict {
  const lastDot = jws.lastIndexOf('.')
  try {
    const ok = verifySignature(
      alg,
      key as never,
      Buffer.from(jws.slice(0, lastDot), 'latin1'),
      Buffer.from(jws.slice(lastDot + 1), 'base64url'),
    )
    return ok ? 'valid' : 'invalid'
  } catch (err) {
    return err instanceof TypeError ? 'unfit' : `other: ${String(err)}`
  }
}

const here = dirname(fileURLToPath(import.meta.url))
const sigFile = JSON.parse(readFileSync(join(here, '..', 'fixtures', 'wycheproof', 'json_web_signature_test.json'), 'utf8')) as {
  testGroups: Array<{ comment: string; public?: JWK; tests: Array<{ tcId: number; comment: string; jws: string; result: string }> }>
}

t.test('Wycheproof: the same answer as jose on every vector with an asymmetric key', async (t) => {
  const compared = { valid: 0, invalid: 0, unfit: 0 }
  for (const group of sigFile.testGroups) {
    if (!group.public || typeof group.public.alg !== 'string' || !handlesAlgorithm(group.public.alg)) continue
    let key: Key
    try {
      key = await importJWK(group.public, group.public.alg)
    } catch {
      continue
    }
    for (const vector of group.tests) {
      const parts = vector.jws.split('.')
      if (parts.length !== 3) continue
      let alg: unknown
      try {
        alg = JSON.parse(Buffer.from(parts[0]!, 'base64url').toString('utf8')).alg
      } catch {
        continue
      }
      if (typeof alg !== 'string' || !handlesAlgorithm(alg)) continue
      const expected = await joseVerdict(vector.jws, key)
      // Structural faults jose raises before the signature (JWSInvalid) are Lapse's precheck's.
      if (expected.startsWith('other')) continue
      t.equal(syncVerdict(vector.jws, key, alg), expected, `tc${vector.tcId} ${group.comment}/${vector.comment}`)
      compared[expected as 'valid' | 'invalid' | 'unfit']++
    }
  }
  t.ok(compared.valid >= 30 && compared.invalid >= 100, 'the comparison covered valid and invalid signatures', compared)
  t.comment(`compared with jose: ${compared.valid} valid, ${compared.invalid} invalid, ${compared.unfit} with a key unfit for the alg`)
})

// The group orders, to turn an ECDSA signature (r, s) into (r, n − s): OpenSSL and WebCrypto
// both accept it, and neither may differ from the other on it.
const ORDERS: Record<string, bigint> = {
  ES256: 0xffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551n,
  ES384: 0xffffffffffffffffffffffffffffffffffffffffffffffffc7634d81f4372ddf581a0db248b0a77aecec196accc52973n,
  ES512:
    0x01fffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffa51868783bf2f966b7fcc0148f709a5d03bb5c9b8899c47aebb6fb71e91386409n,
}

const toBig = (b: Buffer) => BigInt(`0x${b.toString('hex') || '0'}`)
const fromBig = (n: bigint, bytes: number) =>
  Buffer.from(
    n
      .toString(16)
      .padStart(bytes * 2, '0')
      .slice(-bytes * 2),
    'hex',
  )

type Mutation =
  | { kind: 'none' }
  | { kind: 'flip-signature'; at: number; bit: number }
  | { kind: 'flip-signing-input'; at: number }
  | { kind: 'truncate-signature'; by: number }
  | { kind: 'extend-signature'; bytes: number[] }
  | { kind: 'zero-signature' }
  | { kind: 'ecdsa-high-s' }
  | { kind: 'ecdsa-swap-r-s' }
  | { kind: 'ecdsa-r-plus-n' }

const mutation: fc.Arbitrary<Mutation> = fc.oneof(
  fc.constant({ kind: 'none' as const }),
  fc.record({ kind: fc.constant('flip-signature' as const), at: fc.nat(), bit: fc.integer({ min: 0, max: 7 }) }),
  fc.record({ kind: fc.constant('flip-signing-input' as const), at: fc.nat() }),
  fc.record({ kind: fc.constant('truncate-signature' as const), by: fc.integer({ min: 1, max: 8 }) }),
  fc.record({
    kind: fc.constant('extend-signature' as const),
    bytes: fc.array(fc.integer({ min: 0, max: 255 }), { minLength: 1, maxLength: 4 }),
  }),
  fc.constant({ kind: 'zero-signature' as const }),
  fc.constant({ kind: 'ecdsa-high-s' as const }),
  fc.constant({ kind: 'ecdsa-swap-r-s' as const }),
  fc.constant({ kind: 'ecdsa-r-plus-n' as const }),
)

const B64URL = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_'

function mutate(jws: string, alg: string, m: Mutation): string {
  const lastDot = jws.lastIndexOf('.')
  const input = jws.slice(0, lastDot)
  let sig = Buffer.from(jws.slice(lastDot + 1), 'base64url')
  const half = sig.length / 2
  switch (m.kind) {
    case 'none':
      return jws
    case 'flip-signature':
      sig[m.at % sig.length]! ^= 1 << m.bit
      break
    case 'flip-signing-input': {
      // Swap one base64url digit for another, keeping the dot where it is.
      const at = m.at % input.length
      if (input[at] === '.') return jws
      const other = B64URL[(B64URL.indexOf(input[at]!) + 1) % 64]!
      return `${input.slice(0, at)}${other}${input.slice(at + 1)}.${jws.slice(lastDot + 1)}`
    }
    case 'truncate-signature':
      sig = sig.subarray(0, Math.max(0, sig.length - m.by))
      break
    case 'extend-signature':
      sig = Buffer.concat([sig, Buffer.from(m.bytes)])
      break
    case 'zero-signature':
      sig = Buffer.alloc(sig.length)
      break
    case 'ecdsa-high-s': {
      const n = ORDERS[alg]
      if (!n) return jws
      sig = Buffer.concat([sig.subarray(0, half), fromBig(n - toBig(sig.subarray(half)), half)])
      break
    }
    case 'ecdsa-swap-r-s':
      if (!ORDERS[alg]) return jws
      sig = Buffer.concat([sig.subarray(half), sig.subarray(0, half)])
      break
    case 'ecdsa-r-plus-n': {
      const n = ORDERS[alg]
      if (!n) return jws
      sig = Buffer.concat([fromBig(toBig(sig.subarray(0, half)) + n, half), sig.subarray(half)])
      break
    }
  }
  return `${input}.${sig.toString('base64url')}`
}

const ALGS = ['RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512', 'ES256', 'ES384', 'ES512', 'EdDSA'] as const

t.test('mutated tokens: the same answer as jose for every asymmetric algorithm', async (t) => {
  for (const alg of ALGS) {
    const { privateKey, publicKey } = await generateKeyPair(alg, { extractable: true })
    const key = await importJWK(await exportJWK(publicKey), alg)
    const jws = await new SignJWT({ sub: 'ci-deploy', scope: 'orders:read' })
      .setProtectedHeader({ alg, kid: 'k1' })
      .setIssuedAt()
      .sign(privateKey)
    const seen = new Set<Verdict>()
    await fc.assert(
      fc.asyncProperty(mutation, async (m) => {
        const token = mutate(jws, alg, m)
        const expected = await joseVerdict(token, key)
        // A header no longer JSON is refused by Lapse's precheck before any key is involved.
        if (expected.startsWith('other')) return true
        seen.add(expected)
        return syncVerdict(token, key, alg) === expected
      }),
      { numRuns: 300, seed: 0x1a95e },
    )
    t.same([...seen].sort(), ['invalid', 'valid'], `${alg}: valid and invalid tokens both compared, and always agreed`)
  }
})

t.test('a key unfit for the algorithm is refused by both, never used', async (t) => {
  const rs = await generateKeyPair('RS256', { extractable: true })
  const rsJwk = await exportJWK(rs.publicKey)
  const rsToken = await new SignJWT({}).setProtectedHeader({ alg: 'RS256' }).sign(rs.privateKey)
  const es = await generateKeyPair('ES256', { extractable: true })
  const esToken = await new SignJWT({}).setProtectedHeader({ alg: 'ES256' }).sign(es.privateKey)
  const p384 = await importJWK(await exportJWK((await generateKeyPair('ES384', { extractable: true })).publicKey), 'ES384')

  const weak = generateKeyPairSync('rsa', { modulusLength: 1024 })
  // jose will not sign with it either, so the token is made by hand.
  const weakInput = `${Buffer.from('{"alg":"RS256"}').toString('base64url')}.${Buffer.from('{}').toString('base64url')}`
  const weakToken = `${weakInput}.${sign('sha256', Buffer.from(weakInput), weak.privateKey).toString('base64url')}`
  const weakKey = await importJWK(weak.publicKey.export({ format: 'jwk' }) as JWK, 'RS256')

  const cases: Array<[string, string, string, Key]> = [
    ['an RS256 token, its key imported for PS256', rsToken, 'RS256', await importJWK(rsJwk, 'PS256')],
    ['an RS256 token, its key imported for RS384', rsToken, 'RS256', await importJWK(rsJwk, 'RS384')],
    ['an ES256 token, a P-384 key', esToken, 'ES256', p384],
    ['an ES256 token, an RSA key', esToken, 'ES256', await importJWK(rsJwk, 'RS256')],
    ['an RS256 token, a 1024-bit key', weakToken, 'RS256', weakKey],
  ]
  for (const [name, token, alg, key] of cases) {
    t.equal(await joseVerdict(token, key), 'unfit', `${name}: jose refuses the key`)
    t.equal(syncVerdict(token, key, alg), 'unfit', `${name}: so does the synchronous check`)
  }
})
