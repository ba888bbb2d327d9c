// Hostile tokens, end to end: each case is an attack on the verification stage, sent through a
// real Lapse in front of a recording upstream. Every one must get a clear 401 (or the documented
// answer) with its reason in the audit line, and the upstream must receive nothing.
import { createHmac, createPublicKey } from 'node:crypto'
import { createServer } from 'node:http'
import t, { type Test } from 'tap'
import { CompactEncrypt, generateSecret } from 'jose'
import { manualClock } from '../../src/core/clock.js'
import { bearer, runApp, send, sendAudited, type Lapse } from '../fixtures/app.js'
import { AUDIENCE, ISSUER, defaultClaims, newKeyPair, testKeys } from '../fixtures/keys.js'
import { assertNoSecrets } from '../fixtures/secrets.js'
import { assertNothingLeaked, b64url, headerOf, rawHttp, signRaw } from './helpers.js'

const T0_MS = Date.parse('2030-01-01T00:00:00Z')
const T0_S = T0_MS / 1000
const ROUTES = [{ path: '/orders/**', scopes: ['orders:read'] }]

const start = (t: Test, env: Record<string, string> = {}) => runApp(t, { routes: ROUTES, clock: manualClock(T0_MS), env })
const claims = (over: Record<string, unknown> = {}) => ({ ...defaultClaims(T0_S), ...over })
const claimsText = (over: Record<string, unknown> = {}) => JSON.stringify(claims(over))

/** Sends `token` and checks the denial: status, invalid_token challenge, reason, upstream untouched. */
async function refused(t: Test, lapse: Lapse, attack: string, token: string, reasons: string | readonly string[], status = 401) {
  const want = typeof reasons === 'string' ? [reasons] : reasons
  const { res, audit } = await sendAudited(lapse, '/orders/1', { headers: [bearer(token)] })
  t.equal(res.status, status, `${attack}: ${status}`)
  if (status === 401)
    t.match(
      res.headers['www-authenticate'],
      /^Bearer realm="lapse", error="invalid_token", error_description="[^"]+"$/,
      `${attack}: invalid_token challenge`,
    )
  t.ok(want.includes(String(audit.reason)), `${attack}: reason ${want.join(' or ')}`, { got: audit.reason })
  t.equal(lapse.upstream.calls, 0, `${attack}: upstream received nothing`)
  assertNoSecrets(
    t,
    [{ where: 'the answer', text: `${JSON.stringify(res.headers)}\n${res.body}` }, ...lapse.rawLines],
    [{ name: `the ${attack} token`, value: token }],
  )
}

t.test('alg "none" in every letter case is never verified', async (t) => {
  const keys = await testKeys()
  const lapse = await start(t)
  const sent: Record<string, string> = {}
  for (let mask = 0; mask < 16; mask++) {
    const alg = [...'none'].map((c, i) => (mask & (1 << i) ? c.toUpperCase() : c)).join('')
    const unsigned = `${b64url(JSON.stringify({ alg, kid: keys.pairs.ES256.kid }))}.${b64url(claimsText())}`
    // RFC 7519 §6.1 unsecured JWT: an empty signature — not a signed JWT at all.
    await refused(t, lapse, `alg "${alg}" with an empty signature`, `${unsigned}.`, 'malformed')
    // The same with a signature-shaped tail, so the allowlist itself is what refuses it.
    const tailed = `${unsigned}.${b64url('x'.repeat(64))}`
    sent[alg] = tailed
    await refused(t, lapse, `alg "${alg}" with a signature`, tailed, 'alg_not_allowed')
  }
  assertNothingLeaked(t, lapse, sent)
})

t.test('algorithm confusion: HS256 signed with the public key as the secret', async (t) => {
  const keys = await testKeys()
  for (const allowHmac of [false, true]) {
    const lapse = await start(t, allowHmac ? { LAPSE_ALGORITHMS: 'RS256,ES256,HS256' } : {})
    const where = allowHmac ? 'HS256 allowed, no HMAC key configured' : 'default allowlist'
    for (const alg of ['RS256', 'ES256'] as const) {
      const pair = keys.pairs[alg]
      const pub = createPublicKey({ key: pair.publicJwk as import('node:crypto').JsonWebKey, format: 'jwk' })
      const secrets: Record<string, string | Buffer> = {
        'PEM of the public key': pub.export({ type: 'spki', format: 'pem' }),
        'DER of the public key': pub.export({ type: 'spki', format: 'der' }),
        'JWK of the public key': JSON.stringify(pair.publicJwk),
      }
      for (const [what, secret] of Object.entries(secrets)) {
        const input = `${b64url(JSON.stringify({ alg: 'HS256', kid: pair.kid }))}.${b64url(claimsText())}`
        const token = `${input}.${createHmac('sha256', secret).update(input).digest('base64url')}`
        // Default: HS256 is not allowed at all. With HS256 allowed: an RSA/EC key never serves HMAC.
        await refused(
          t,
          lapse,
          `HS256 keyed with the ${alg} key's ${what} (${where})`,
          token,
          allowHmac ? 'unknown_key' : 'alg_not_allowed',
        )
      }
    }
  }
})

t.test('keys named by the token itself (jwk, jku, x5u, x5c) are never fetched or trusted', async (t) => {
  const keys = await testKeys()
  const attacker = await newKeyPair('ES256', 'attacker-key')
  let fetched = 0
  const evil = createServer((_req, res) => {
    fetched++
    res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ keys: [attacker.publicJwk] }))
  })
  await new Promise<void>((r) => evil.listen(0, '127.0.0.1', r))
  t.teardown(() => new Promise<void>((r) => evil.close(() => r())))
  const evilUrl = `http://127.0.0.1:${(evil.address() as { port: number }).port}/jwks.json`
  const spki = createPublicKey({ key: attacker.publicJwk as import('node:crypto').JsonWebKey, format: 'jwk' })
    .export({ type: 'spki', format: 'der' })
    .toString('base64')
  const lapse = await start(t)
  const legit = keys.pairs.ES256.kid
  const cases: Array<[string, Record<string, unknown>, string | readonly string[]]> = [
    ['embedded jwk, no kid', { alg: 'ES256', jwk: attacker.publicJwk }, 'bad_signature'],
    ['embedded jwk, the legitimate kid', { alg: 'ES256', kid: legit, jwk: attacker.publicJwk }, 'bad_signature'],
    ['embedded jwk, its own kid', { alg: 'ES256', kid: attacker.kid, jwk: attacker.publicJwk }, 'unknown_key'],
    ['jku pointing at the attacker', { alg: 'ES256', kid: attacker.kid, jku: evilUrl }, 'unknown_key'],
    ['jku pointing at the attacker, the legitimate kid', { alg: 'ES256', kid: legit, jku: evilUrl }, 'bad_signature'],
    ['x5u pointing at the attacker', { alg: 'ES256', kid: attacker.kid, x5u: evilUrl }, 'unknown_key'],
    ['x5c carrying the attacker key', { alg: 'ES256', x5c: [spki] }, 'bad_signature'],
  ]
  for (const [attack, header, reason] of cases) {
    await refused(t, lapse, attack, await signRaw(attacker, JSON.stringify(header), claimsText()), reason)
  }
  t.equal(fetched, 0, 'the URL named in jku/x5u was never fetched')
})

t.test('hostile kid values: path traversal, SQL, very long', async (t) => {
  const keys = await testKeys()
  const attacker = await newKeyPair('ES256')
  const lapse = await start(t)
  const kids = {
    'path traversal to /dev/null': '../../../../../../../dev/null',
    'absolute path': '/etc/passwd',
    'file URL': 'file:///dev/null',
    'SQL injection': "' OR '1'='1' --",
    'SQL UNION': "x' UNION SELECT 'AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA' --",
    'NUL byte': 'es256\u0000admin',
    'very long (5000 characters)': 'k'.repeat(5000),
  }
  for (const [attack, kid] of Object.entries(kids)) {
    await refused(
      t,
      lapse,
      `kid: ${attack}, attacker's key`,
      await signRaw(attacker, JSON.stringify({ alg: 'ES256', kid }), claimsText()),
      'unknown_key',
    )
    // The legitimate key behind a hostile kid: the kid names no key, so nothing verifies it.
    await refused(
      t,
      lapse,
      `kid: ${attack}, legitimate key`,
      await signRaw(keys.pairs.ES256, JSON.stringify({ alg: 'ES256', kid }), claimsText()),
      'unknown_key',
    )
  }
  // Past LAPSE_MAX_TOKEN_BYTES the token is refused before it is even decoded.
  await refused(
    t,
    lapse,
    'kid: 7000 characters (token over 8 KiB)',
    await signRaw(attacker, JSON.stringify({ alg: 'ES256', kid: 'k'.repeat(7000) }), claimsText()),
    'malformed',
  )
  // Not a string at all: NoSQL-style operators.
  await refused(
    t,
    lapse,
    'kid: an object',
    await signRaw(keys.pairs.ES256, JSON.stringify({ alg: 'ES256', kid: { $ne: '' } }), claimsText()),
    'malformed',
  )

  // The classic /dev/null attack needs HMAC: with HS256 allowed and no secret configured, an
  // empty-key HMAC finds no key to verify with.
  const hmac = await start(t, { LAPSE_ALGORITHMS: 'ES256,HS256' })
  const input = `${b64url(JSON.stringify({ alg: 'HS256', kid: '../../../../../../dev/null' }))}.${b64url(claimsText())}`
  await refused(
    t,
    hmac,
    'kid /dev/null with an empty HMAC secret',
    `${input}.${createHmac('sha256', '').update(input).digest('base64url')}`,
    'unknown_key',
  )
})

t.test('header parameters a verifier must not ignore: crit, b64', async (t) => {
  const keys = await testKeys()
  const pair = keys.pairs.ES256
  const lapse = await start(t)
  await refused(
    t,
    lapse,
    'unknown crit extension',
    await signRaw(pair, headerOf(pair, { crit: ['http://evil.example/skip-exp'], 'http://evil.example/skip-exp': true }), claimsText()),
    'malformed',
  )
  await refused(
    t,
    lapse,
    'crit naming a registered claim',
    await signRaw(pair, headerOf(pair, { crit: ['exp'], exp: 1 }), claimsText()),
    'malformed',
  )
  await refused(
    t,
    lapse,
    'b64: false (unencoded payload, RFC 7797)',
    await signRaw(pair, headerOf(pair, { b64: false, crit: ['b64'] }), claimsText()),
    'malformed',
  )
  await refused(t, lapse, 'b64: false without crit', await signRaw(pair, headerOf(pair, { b64: false }), claimsText()), 'malformed')
})

t.test('signature tampering: zeros (CVE-2022-21449), trailing garbage, swaps, stripped segments', async (t) => {
  const keys = await testKeys()
  const lapse = await start(t)
  const good = await keys.mint({}, { nowS: T0_S })
  const other = await keys.mint({ sub: 'someone-else' }, { nowS: T0_S, header: { typ: 'at+jwt' } })
  const [h, p, s] = good.split('.') as [string, string, string]
  const [h2, p2, s2] = other.split('.') as [string, string, string]
  const cases: Array<[string, string, string | readonly string[]]> = [
    ['ECDSA signature of 64 zero bytes (r = s = 0, CVE-2022-21449)', `${h}.${p}.${b64url(new Uint8Array(64))}`, 'bad_signature'],
    [
      'ECDSA signature r = s = n (the curve order)',
      `${h}.${p}.${b64url(Buffer.from('ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551'.repeat(2), 'hex'))}`,
      'bad_signature',
    ],
    ['trailing garbage after the signature', `${good}AAAA`, 'bad_signature'],
    ['trailing padding after the signature', `${good}==`, 'malformed'],
    ['a fourth segment', `${good}.AAAA`, 'malformed'],
    ['a trailing dot', `${good}.`, 'malformed'],
    ['signature stripped', `${h}.${p}.`, 'malformed'],
    ['signature and its dot stripped', `${h}.${p}`, 'malformed'],
    ['header stripped', `.${p}.${s}`, 'malformed'],
    ['payload stripped', `${h}..${s}`, 'malformed'],
    // The claims read as a header carry no alg: refused by the allowlist or as malformed.
    ['header and payload swapped', `${p}.${h}.${s}`, ['malformed', 'alg_not_allowed']],
    ["another token's payload under this signature", `${h}.${p2}.${s}`, 'bad_signature'],
    ["another token's signature", `${h}.${p}.${s2}`, 'bad_signature'],
    ["another token's header", `${h2}.${p}.${s}`, 'bad_signature'],
    ['one flipped bit in the signature', `${h}.${p}.${s.slice(0, 10)}${s[10] === 'A' ? 'B' : 'A'}${s.slice(11)}`, 'bad_signature'],
  ]
  for (const [attack, token, reason] of cases) await refused(t, lapse, attack, token, reason)
  assertNothingLeaked(t, lapse, { good, other })
})

t.test('other token shapes: JWE, nested JWT, non-JSON and duplicate-key payloads and headers', async (t) => {
  const keys = await testKeys()
  const pair = keys.pairs.ES256
  const lapse = await start(t)
  const jwe = await new CompactEncrypt(Buffer.from(claimsText()))
    .setProtectedHeader({ alg: 'dir', enc: 'A256GCM' })
    .encrypt(await generateSecret('A256GCM'))
  await refused(t, lapse, 'JWE (five parts) where a JWS is expected', jwe, 'malformed')
  const inner = await keys.mint({}, { nowS: T0_S })
  await refused(
    t,
    lapse,
    'nested JWT (cty: JWT, payload is a compact token)',
    await signRaw(pair, headerOf(pair, { cty: 'JWT' }), inner),
    'malformed',
  )
  await refused(t, lapse, 'nested JWT in a JSON string payload', await signRaw(pair, headerOf(pair), JSON.stringify(inner)), 'malformed')
  const shapes: Array<[string, string | Uint8Array]> = [
    ['payload is not JSON', 'sub=admin'],
    ['payload is a JSON array', JSON.stringify([claims()])],
    ['payload is JSON null', 'null'],
    ['payload is a JSON number', '42'],
    ['payload is not UTF-8', Uint8Array.from([0x7b, 0x22, 0xc0, 0xaf, 0x22, 0x3a, 0x31, 0x7d])],
    ['payload with trailing bytes after the JSON', `${claimsText()}garbage`],
  ]
  for (const [attack, payload] of shapes) await refused(t, lapse, attack, await signRaw(pair, headerOf(pair), payload), 'malformed')

  // JSON.parse keeps the last of two equal names; another parser may keep the first.
  const body = claimsText().slice(1, -1)
  const dupes: Array<[string, string, string]> = [
    ['payload repeats sub (first wins elsewhere: "admin")', headerOf(pair), `{"sub":"admin",${body}}`],
    ['payload repeats scope', headerOf(pair), `{${body},"scope":"admin:all"}`],
    ['payload repeats sub with an escaped name', headerOf(pair), `{"s\\u0075b":"admin",${body}}`],
    ['payload repeats a nested member', headerOf(pair), `{${body},"act":{"sub":"a","sub":"b"}}`],
    ['header repeats alg ("none" first)', `{"alg":"none","alg":"ES256","kid":"${pair.kid}"}`, claimsText()],
    ['header repeats kid', `{"alg":"ES256","kid":"other","kid":"${pair.kid}"}`, claimsText()],
  ]
  for (const [attack, header, payload] of dupes) await refused(t, lapse, attack, await signRaw(pair, header, payload), 'malformed')
})

t.test('claims of the wrong type are refused, never coerced', async (t) => {
  const keys = await testKeys()
  const lapse = await start(t)
  const cases: Array<[string, Record<string, unknown>, string]> = [
    ['exp as a string', { exp: String(T0_S + 300) }, 'malformed'],
    ['exp as an object', { exp: { $gt: 0 } }, 'malformed'],
    ['iat as a string', { iat: String(T0_S) }, 'malformed'],
    ['nbf as a boolean', { nbf: true }, 'malformed'],
    ['aud as an object', { aud: { [AUDIENCE]: true } }, 'malformed'],
    ['aud as an empty list', { aud: [] }, 'malformed'],
    ['aud as a list with a number', { aud: [AUDIENCE, 7] }, 'malformed'],
    ['iss as a list', { iss: [ISSUER] }, 'malformed'],
    ['scope as a number', { scope: 42 }, 'malformed'],
    ['scope as a list', { scope: ['orders:read'] }, 'malformed'],
    ['scp as an object', { scp: { 'orders:read': true } }, 'malformed'],
    ['sub as a number', { sub: 1 }, 'malformed'],
    ['sub as an empty string', { sub: '' }, 'malformed'],
    ['sub with a newline (header injection upstream)', { sub: 'ci\r\nX-Auth-Subject: admin' }, 'malformed'],
    ['jti as a list', { jti: ['a'] }, 'malformed'],
    ['client_id as an object', { client_id: { id: 'x' } }, 'malformed'],
  ]
  for (const [attack, over, reason] of cases) await refused(t, lapse, attack, await keys.mint(over, { nowS: T0_S }), reason)
})

t.test('time claims: iat in the future, exp far beyond the lifetime policy', async (t) => {
  const keys = await testKeys()
  const lapse = await start(t)
  const cases: Array<[string, Record<string, unknown>, string]> = [
    ['iat an hour in the future', { iat: T0_S + 3600, exp: T0_S + 3900 }, 'not_yet_valid'],
    ['nbf an hour in the future', { nbf: T0_S + 3600 }, 'not_yet_valid'],
    ['exp ten years out (lifetime policy 1 h)', { exp: T0_S + 10 * 365 * 86_400 }, 'lifetime_exceeds_policy'],
    ['exp at the largest safe integer', { exp: Number.MAX_SAFE_INTEGER }, 'lifetime_exceeds_policy'],
    ['exp ten years out without iat', { iat: undefined, exp: T0_S + 10 * 365 * 86_400 }, 'missing_claim'],
    ['iat far in the past to stretch the window', { iat: T0_S - 10 * 365 * 86_400 }, 'lifetime_exceeds_policy'],
    ['exp already passed', { iat: T0_S - 600, exp: T0_S - 300 }, 'expired'],
    ['no exp at all', { exp: undefined }, 'missing_claim'],
  ]
  for (const [attack, over, reason] of cases) await refused(t, lapse, attack, await keys.mint(over, { nowS: T0_S }), reason)
})

t.test('tokens several hundred kilobytes long', async (t) => {
  const keys = await testKeys()
  const lapse = await start(t)
  const huge = await keys.mint({ pad: 'x'.repeat(300_000) }, { nowS: T0_S })
  // Over LAPSE_MAX_HEADER_BYTES (16 KiB): Node's parser answers 431 before Lapse sees a request.
  const res = await rawHttp(lapse.url, [
    `GET /orders/1 HTTP/1.1\r\nHost: lapse\r\nAuthorization: Bearer `,
    ...chunksOf(huge, 16_384),
    '\r\n\r\n',
  ])
  t.equal(res.status, 431, '300 KB token in the header: 431')
  t.equal(lapse.upstream.calls, 0, 'upstream received nothing')

  // Under the header limit but over LAPSE_MAX_TOKEN_BYTES (8 KiB): refused before it is decoded.
  await refused(t, lapse, '10 KB token', await keys.mint({ pad: 'x'.repeat(10_000) }, { nowS: T0_S }), 'malformed')

  // Even with a 1 MiB header allowance, the token length cap (at most 64 KiB) holds.
  const roomy = await start(t, { LAPSE_MAX_HEADER_BYTES: '1048576' })
  await refused(t, roomy, '300 KB token with a 1 MiB header allowance', huge, 'malformed')
  assertNothingLeaked(t, roomy, { huge })
})

t.test('a valid token still passes every check here (the baseline the attacks differ from)', async (t) => {
  const keys = await testKeys()
  const lapse = await start(t)
  const res = await send(`${lapse.url}/orders/1`, { headers: [bearer(await keys.mint({}, { nowS: T0_S }))] })
  t.equal(res.status, 200)
  t.equal(lapse.upstream.calls, 1)
})

function chunksOf(s: string, size: number): string[] {
  const out: string[] = []
  for (let i = 0; i < s.length; i += size) out.push(s.slice(i, i + size))
  return out
}
