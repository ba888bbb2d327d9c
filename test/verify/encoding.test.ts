// A token's text must be the one canonical encoding of what was signed (RFC 7515 §2, RFC 4648
// §3.5): base64url without padding and without bits past the last byte, and UTF-8 JSON. Node's
// decoder forgives all of that, so each variant below decodes to the very bytes of a valid token,
// and for the signature part, which no signature covers, it would verify: each must be refused
// as malformed, before any signature work, with the verification cache on and off.
import { CompactSign } from 'jose'
import t, { type Test } from 'tap'
import { bearer, runApp, sendAudited, type Lapse } from '../fixtures/app.js'
import { assertDenied, CHALLENGE } from '../fixtures/deny.js'
import { defaultClaims, testKeys } from '../fixtures/keys.js'

const keys = await testKeys()
const B64 = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_'

/** The part with its last character's unused low bits set: the same bytes to a lenient decoder. */
function withPaddingBits(part: string): string | undefined {
  const unused = part.length % 4 === 2 ? 4 : part.length % 4 === 3 ? 2 : 0
  if (unused === 0) return undefined
  const last = B64.indexOf(part[part.length - 1]!)
  return `${part.slice(0, -1)}${B64[last | 1]}`
}

const swap = (token: string, index: 0 | 1 | 2, f: (part: string) => string | undefined) => {
  const parts = token.split('.')
  const changed = f(parts[index]!)
  if (changed === undefined) return undefined
  parts[index] = changed
  return parts.join('.')
}

/** Each variant of `token`, named; a variant the token's shape cannot have is left out. */
function variants(token: string): Array<[string, string]> {
  const out: Array<[string, string | undefined]> = [
    ['signature with its padding bits set', swap(token, 2, withPaddingBits)],
    ['signature with + for -', swap(token, 2, (p) => (p.includes('-') ? p.replace('-', '+') : undefined))],
    ['signature with / for _', swap(token, 2, (p) => (p.includes('_') ? p.replace('_', '/') : undefined))],
    ['signature padded with =', swap(token, 2, (p) => (p.length % 4 === 0 ? undefined : `${p}${'='.repeat(4 - (p.length % 4))}`))],
    ['signature with a dangling character', swap(token, 2, (p) => (p.length % 4 === 0 ? `${p}A` : undefined))],
    ['signature with a ~ inside', swap(token, 2, (p) => `${p.slice(0, 10)}~${p.slice(10)}`)],
    ['payload with its padding bits set', swap(token, 1, withPaddingBits)],
    ['payload with a ~ inside', swap(token, 1, (p) => `${p.slice(0, 10)}~${p.slice(10)}`)],
    ['header with its padding bits set', swap(token, 0, withPaddingBits)],
    ['header padded with =', swap(token, 0, (p) => (p.length % 4 === 0 ? undefined : `${p}${'='.repeat(4 - (p.length % 4))}`))],
  ]
  return out.filter((v): v is [string, string] => v[1] !== undefined)
}

async function refusedAsMalformed(t: Test, lapse: Lapse, token: string) {
  const before = lapse.upstream.calls
  const { res, audit } = await sendAudited(lapse, '/orders/1', { headers: [bearer(token)] })
  assertDenied(t, lapse, res, audit, {
    status: 401,
    challenge: CHALLENGE.invalidToken,
    error: 'invalid_token',
    reason: 'malformed',
    token,
    upstreamCalls: before,
  })
}

for (const cacheSize of ['10000', '0']) {
  t.test(`every lenient spelling of a valid token is refused as malformed (LAPSE_TOKEN_CACHE_SIZE=${cacheSize})`, async (t) => {
    const lapse = await runApp(t, { env: { LAPSE_TOKEN_CACHE_SIZE: cacheSize } })
    let shapes = 0
    for (const alg of ['RS256', 'ES256'] as const) {
      // Tokens of several lengths, so every part ends on each of the three remainders somewhere.
      for (const sub of ['a', 'ab', 'abc']) {
        const token = await keys.mint({ sub }, { alg })
        // The valid token first: its header enters the cache of verified headers, so the header
        // variants meet that cache too.
        t.equal((await sendAudited(lapse, '/orders/1', { headers: [bearer(token)] })).res.status, 200, `${alg} ${sub}: the token itself`)
        for (const [name, variant] of variants(token)) {
          shapes++
          await t.test(`${alg}, sub ${sub}: ${name}`, (t) => refusedAsMalformed(t, lapse, variant))
        }
      }
    }
    t.ok(shapes >= 30, `${shapes} variants tried`)
  })
}

async function signedBytes(payload: Uint8Array): Promise<string> {
  const pair = keys.pairs.ES256
  return new CompactSign(payload).setProtectedHeader({ alg: pair.alg, kid: pair.kid }).sign(pair.privateKey)
}

t.test('the payload as UTF-8: a leading byte-order mark is skipped, bytes that are not UTF-8 are malformed', async (t) => {
  const lapse = await runApp(t, { env: { LAPSE_TOKEN_CACHE_SIZE: '0' } })
  const json = Buffer.from(JSON.stringify({ ...defaultClaims(Math.floor(Date.now() / 1000)), sub: 'bom-user' }))
  const withBom = await signedBytes(Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), json]))
  const { res } = await sendAudited(lapse, '/orders/1', { headers: [bearer(withBom)] })
  t.equal(res.status, 200, 'a BOM before the JSON is skipped, as TextDecoder skips it')
  t.equal(lapse.upstream.requests.at(-1)?.headers['x-auth-subject'], 'bom-user')
  // "sub": "\xff" — a byte that starts no UTF-8 sequence.
  const bad = Buffer.from(JSON.stringify({ ...defaultClaims(Math.floor(Date.now() / 1000)), sub: 'XX' }))
  bad[bad.indexOf('XX')] = 0xff
  await refusedAsMalformed(t, lapse, await signedBytes(bad))
})

t.test("the verifier's answer is the same whether or not extraction already checked a token's characters", async (t) => {
  // decide() passes `jws` when extract/bearer.ts found three base64url parts; the verifier then
  // checks only each part's ending. Every ending of every part, against the full check.
  const lapse = await runApp(t, { env: { LAPSE_TOKEN_CACHE_SIZE: '0' } })
  const verify = lapse.running.deps.verify
  const answer = async (token: string, jws?: boolean) => {
    const got = await verify.check(token, undefined, jws)
    return 'allow' in got ? `${got.reason}: ${got.description ?? ''}` : `allowed ${got.sub}`
  }
  let tried = 0
  let refused = 0
  for (const alg of ['RS256', 'ES256'] as const) {
    for (const sub of ['a', 'ab', 'abc']) {
      const token = await keys.mint({ sub }, { alg })
      t.equal(await answer(token, true), `allowed ${sub}`, `${alg} ${sub}: the token itself`)
      for (const index of [0, 1, 2] as const) {
        // The last character replaced by each digit (only the canonical one keeps its bits clear),
        // and one digit added (a dangling digit once in every four lengths).
        const endings = [...B64].map((d) => swap(token, index, (p) => `${p.slice(0, -1)}${d}`)!)
        endings.push(...[...'AQgw_'].map((d) => swap(token, index, (p) => `${p}${d}`)!))
        for (const variant of endings) {
          tried++
          const full = await answer(variant)
          if (full.startsWith('malformed: token is not canonical')) refused++
          t.equal(await answer(variant, true), full, `${alg} ${sub} part ${index}`)
        }
      }
    }
  }
  t.ok(tried > 1000 && refused > 100, `${tried} variants, ${refused} of them refused as not canonical`)

  // A hint wrong about the dots (no caller sends one; extraction's pattern cannot pass these)
  // changes nothing: the verifier checks the parts' boundaries itself.
  const token = await keys.mint({ sub: 'dots' })
  const [h, p, s] = token.split('.') as [string, string, string]
  for (const shape of [
    `${h}.${p}`,
    `${h}.${p}.${s}.${s}`,
    `${h}.${p}.${s}.${s}.${s}`,
    `.${p}.${s}`,
    `${h}..${s}`,
    `${h}.${p}.`,
    `${h}${p}${s}`,
  ]) {
    t.equal(
      await answer(shape, true),
      await answer(shape),
      `${shape
        .split('.')
        .map((x) => x.length)
        .join('.')}: the same answer`,
    )
  }
  t.match(await answer(`${h}.${p}.${s}.${s}.${s}`, true), /^malformed: encrypted tokens/, 'five parts are still a JWE')
})

t.test('a header with members named like a refusal (reason, allow, description) is still only a header', async (t) => {
  // The verifier tells a refused header from a parsed one by its shape: a JSON object an issuer
  // signed may carry any member names, and must not pass for Lapse's own refusal.
  for (const cacheSize of ['10000', '0']) {
    const lapse = await runApp(t, { env: { LAPSE_TOKEN_CACHE_SIZE: cacheSize } })
    const token = await keys.mint({ sub: 'named-members' }, { header: { reason: 'revoked', allow: false, description: 'x' } })
    const { res } = await sendAudited(lapse, '/orders/1', { headers: [bearer(token)] })
    t.equal(res.status, 200, `allowed (LAPSE_TOKEN_CACHE_SIZE=${cacheSize})`)
    t.equal(lapse.upstream.requests.at(-1)?.headers['x-auth-subject'], 'named-members')
  }
})
