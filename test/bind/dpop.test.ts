// DPoP (RFC 9449) through a real Lapse: proofs from panva's `dpop` package and oauth4webapi, every
// check failing alone, the Bearer downgrade, the sender_constrained policy, and what the upstream
// and the audit line get.
import t, { type Test } from 'tap'
import * as oauth from 'oauth4webapi'
import { compileRoutes } from '../../src/authorize/routes.js'
import { decisions, runApp, sendAudited, type Lapse } from '../fixtures/app.js'
import { assertDenied } from '../fixtures/deny.js'
import { testKeys } from '../fixtures/keys.js'
import { newHolder } from './dpop-helpers.js'

const keys = await testKeys()
const holder = await newHolder()

const PROOF_INVALID = /^DPoP realm="lapse", algs="ES256 EdDSA RS256 PS256", error="invalid_dpop_proof", error_description="[^"]+"$/
const TOKEN_INVALID = /^DPoP realm="lapse", algs="ES256 EdDSA RS256 PS256", error="invalid_token", error_description="[^"]+"$/

const dpopAuth = (token: string): [string, string] => ['authorization', `DPoP ${token}`]

async function bound(claims: Record<string, unknown> = {}) {
  return keys.mint({ cnf: { jkt: holder.jkt }, ...claims })
}

function proofDenied(t: Test, lapse: Lapse, got: Awaited<ReturnType<typeof sendAudited>>, reason = 'dpop_proof_invalid', token?: string) {
  const tokenReason = reason === 'dpop_key_mismatch'
  assertDenied(t, lapse, got.res, got.audit, {
    status: 401,
    challenge: tokenReason ? TOKEN_INVALID : PROOF_INVALID,
    error: tokenReason ? 'invalid_token' : 'invalid_dpop_proof',
    reason,
    ...(token ? { token } : {}),
  })
}

t.test('a proof from the dpop package is accepted; the upstream gets X-Auth-Binding: dpop, never a client copy', async (t) => {
  const lapse = await runApp(t)
  const token = await bound()
  const url = `${lapse.url}/orders/1`
  const got = await sendAudited(lapse, '/orders/1?page=2', {
    headers: [dpopAuth(token), ['dpop', await holder.proof(url, 'GET', token)], ['x-auth-binding', 'mtls']],
  })
  t.equal(got.res.status, 200)
  t.equal(lapse.upstream.calls, 1)
  t.equal(lapse.upstream.requests[0]!.headers['x-auth-binding'], 'dpop', 'Lapse says which binding it checked')
  t.equal(lapse.upstream.requests[0]!.url, '/orders/1?page=2', 'htu leaves the query out')
  t.equal(got.audit.binding, 'dpop')
  t.equal(got.audit.key_thumbprint, holder.jkt)
  const proofSignature = (await holder.proof(url, 'GET', token)).split('.')[2]!
  t.ok(
    lapse.rawLines.every((l) => !l.includes(proofSignature.slice(0, 20))),
    'no proof in the log',
  )
})

t.test("oauth4webapi's DPoP handle gets through, with every algorithm of the default list it can sign", async (t) => {
  const lapse = await runApp(t)
  for (const alg of ['ES256', 'RS256', 'PS256'] as const) {
    const h = await newHolder(alg)
    const handle = oauth.DPoP({}, h.pair)
    const token = await keys.mint({ cnf: { jkt: await handle.calculateThumbprint() } })
    const res = await oauth.protectedResourceRequest(token, 'GET', new URL(`${lapse.url}/orders/${alg}`), undefined, undefined, {
      DPoP: handle,
      [oauth.allowInsecureRequests]: true,
    })
    t.equal(res.status, 200, alg)
  }
  t.equal(lapse.upstream.calls, 3)
})

t.test('each check of RFC 9449 §4.3 failing alone → 401 invalid_dpop_proof, upstream untouched', async (t) => {
  const lapse = await runApp(t)
  const url = `${lapse.url}/orders/1`
  const token = await bound()
  const other = await bound()
  const rsa = await newHolder('PS256')
  const cases: Array<[string, () => Promise<Array<[string, string]>>]> = [
    ['no DPoP header', async () => []],
    [
      'two DPoP headers',
      async () => [
        ['dpop', await holder.proof(url, 'GET', token)],
        ['dpop', await holder.proof(url, 'GET', token)],
      ],
    ],
    ['not a JWS', async () => [['dpop', 'not-a-proof']]],
    ['typ is jwt', async () => [['dpop', await holder.mutated({ htu: url, htm: 'GET', token, header: { typ: 'JWT' } })]]],
    ['no jwk', async () => [['dpop', await holder.mutated({ htu: url, htm: 'GET', token, header: { jwk: undefined } })]]],
    [
      'a private member in the jwk',
      async () => [['dpop', await holder.mutated({ htu: url, htm: 'GET', token, header: { jwk: { ...holder.jwk, d: 'AAAA' } } })]],
    ],
    [
      'a jwk that did not sign it',
      async () => [['dpop', await holder.mutated({ htu: url, htm: 'GET', token, header: { jwk: rsa.jwk, alg: 'ES256' } })]],
    ],
    [
      'a broken signature',
      async () => {
        const p = await holder.proof(url, 'GET', token)
        return [['dpop', `${p.slice(0, -4)}${p.endsWith('AAAA') ? 'BBBB' : 'AAAA'}`]]
      },
    ],
    ['htm POST on a GET', async () => [['dpop', await holder.proof(url, 'POST', token)]]],
    ['htm in lower case', async () => [['dpop', await holder.proof(url, 'get', token)]]],
    ['htu of another path', async () => [['dpop', await holder.proof(`${lapse.url}/orders/2`, 'GET', token)]]],
    ['htu of another host', async () => [['dpop', await holder.proof(url.replace('127.0.0.1', 'localhost'), 'GET', token)]]],
    ['htu of another scheme', async () => [['dpop', await holder.proof(url.replace('http:', 'ftp:'), 'GET', token)]]],
    ['ath of another token', async () => [['dpop', await holder.proof(url, 'GET', other)]]],
    ['no ath', async () => [['dpop', await holder.mutated({ htu: url, htm: 'GET', token, claims: { ath: undefined } })]]],
    ['no jti', async () => [['dpop', await holder.mutated({ htu: url, htm: 'GET', token, claims: { jti: undefined } })]]],
    [
      'iat as a string',
      async () => [['dpop', await holder.mutated({ htu: url, htm: 'GET', token, claims: { iat: String(Math.floor(Date.now() / 1000)) } })]],
    ],
  ]
  for (const [name, headers] of cases) {
    await t.test(name, async (t) =>
      proofDenied(
        t,
        lapse,
        await sendAudited(lapse, '/orders/1', { headers: [dpopAuth(token), ...(await headers())] }),
        'dpop_proof_invalid',
        token,
      ),
    )
  }
})

t.test('an algorithm outside LAPSE_DPOP_ALGORITHMS → dpop_proof_invalid, the challenge naming the list', async (t) => {
  const lapse = await runApp(t, { env: { LAPSE_DPOP_ALGORITHMS: 'ES256' } })
  const rsa = await newHolder('PS256')
  const token = await keys.mint({ cnf: { jkt: rsa.jkt } })
  const got = await sendAudited(lapse, '/orders/1', {
    headers: [dpopAuth(token), ['dpop', await rsa.proof(`${lapse.url}/orders/1`, 'GET', token)]],
  })
  assertDenied(t, lapse, got.res, got.audit, {
    status: 401,
    challenge: /^DPoP realm="lapse", algs="ES256", error="invalid_dpop_proof"/,
    error: 'invalid_dpop_proof',
    reason: 'dpop_proof_invalid',
  })
})

t.test('iat outside LAPSE_DPOP_MAX_AGE plus the skew, on either side → dpop_proof_invalid; inside → allowed', async (t) => {
  // How old the proof is when Lapse reads it: 60 s plus 30 s of skew, or 30 s of skew ahead.
  for (const [ageS, allowed] of [
    [60 + 30 + 3, false],
    [60 + 30 - 3, true],
    [-(30 - 3), true],
    [-(30 + 5), false],
  ] as const) {
    // Lapse's clock is moved instead of the proof's iat, which the dpop package sets to now.
    const nowMs = () => Date.now() + ageS * 1000
    await t.test(`proof iat ${ageS > 0 ? `${ageS} s old` : `${-ageS} s ahead`}`, async (t) => {
      const lapse = await runApp(t, { clock: { now: nowMs } })
      const token = await keys.mint({ cnf: { jkt: holder.jkt } }, { nowS: Math.floor(nowMs() / 1000) })
      const got = await sendAudited(lapse, '/orders/1', {
        headers: [dpopAuth(token), ['dpop', await holder.proof(`${lapse.url}/orders/1`, 'GET', token)]],
      })
      if (allowed) t.equal(got.res.status, 200)
      else proofDenied(t, lapse, got)
    })
  }
})

t.test('a proof is accepted once: the same proof again → dpop_replayed', async (t) => {
  const lapse = await runApp(t)
  const token = await bound()
  const proof = await holder.proof(`${lapse.url}/orders/1`, 'GET', token)
  const first = await sendAudited(lapse, '/orders/1', { headers: [dpopAuth(token), ['dpop', proof]] })
  t.equal(first.res.status, 200)
  const again = await sendAudited(lapse, '/orders/1', { headers: [dpopAuth(token), ['dpop', proof]] })
  assertDenied(t, lapse, again.res, again.audit, {
    status: 401,
    challenge: PROOF_INVALID,
    error: 'invalid_dpop_proof',
    reason: 'dpop_replayed',
    upstreamCalls: 1,
  })
})

t.test(
  'one token, many requests: each new proof passes; once its key is known, another key or a forged signature still fails',
  async (t) => {
    const lapse = await runApp(t)
    const token = await bound()
    const url = `${lapse.url}/orders/1`
    for (let i = 0; i < 3; i++)
      t.equal(
        (await sendAudited(lapse, '/orders/1', { headers: [dpopAuth(token), ['dpop', await holder.proof(url, 'GET', token)]] })).res.status,
        200,
        `request ${i + 1}`,
      )
    const thief = await newHolder()
    const stolen = await sendAudited(lapse, '/orders/1', { headers: [dpopAuth(token), ['dpop', await thief.proof(url, 'GET', token)]] })
    assertDenied(t, lapse, stolen.res, stolen.audit, {
      status: 401,
      challenge: TOKEN_INVALID,
      error: 'invalid_token',
      reason: 'dpop_key_mismatch',
      upstreamCalls: 3,
    })
    // The holder's public key in the header, the thief's signature: the known key does not vouch for it.
    const forged = await thief.mutated({ htu: url, htm: 'GET', token, header: { jwk: holder.jwk, alg: 'ES256' } })
    const got = await sendAudited(lapse, '/orders/1', { headers: [dpopAuth(token), ['dpop', forged]] })
    assertDenied(t, lapse, got.res, got.audit, {
      status: 401,
      challenge: PROOF_INVALID,
      error: 'invalid_dpop_proof',
      reason: 'dpop_proof_invalid',
      upstreamCalls: 3,
    })
  },
)

t.test('a token bound to another key → dpop_key_mismatch (invalid_token)', async (t) => {
  const lapse = await runApp(t)
  const thief = await newHolder()
  const token = await bound()
  proofDenied(
    t,
    lapse,
    await sendAudited(lapse, '/orders/1', {
      headers: [dpopAuth(token), ['dpop', await thief.proof(`${lapse.url}/orders/1`, 'GET', token)]],
    }),
    'dpop_key_mismatch',
  )
})

t.test('the Bearer downgrade: a DPoP-bound token under Bearer is refused, with or without a proof', async (t) => {
  const lapse = await runApp(t)
  const token = await bound()
  proofDenied(
    t,
    lapse,
    await sendAudited(lapse, '/orders/1', { headers: [['authorization', `Bearer ${token}`]] }),
    'dpop_key_mismatch',
    token,
  )
  const proof = await holder.proof(`${lapse.url}/orders/1`, 'GET', token)
  proofDenied(
    t,
    lapse,
    await sendAudited(lapse, '/orders/1', {
      headers: [
        ['authorization', `Bearer ${token}`],
        ['dpop', proof],
      ],
    }),
    'dpop_key_mismatch',
    token,
  )
  // Also once the token is in the verifier's cache from an allowed DPoP request.
  t.equal(
    (
      await sendAudited(lapse, '/orders/1', {
        headers: [dpopAuth(token), ['dpop', await holder.proof(`${lapse.url}/orders/1`, 'GET', token)]],
      })
    ).res.status,
    200,
  )
  const cached = await sendAudited(lapse, '/orders/1', { headers: [['authorization', `Bearer ${token}`]] })
  assertDenied(t, lapse, cached.res, cached.audit, {
    status: 401,
    challenge: TOKEN_INVALID,
    error: 'invalid_token',
    reason: 'dpop_key_mismatch',
    upstreamCalls: 1,
    token,
  })
})

t.test('an unbound token under the DPoP scheme → dpop_key_mismatch; DPoP with two credentials stays invalid_request', async (t) => {
  const lapse = await runApp(t)
  const token = await keys.mint()
  proofDenied(
    t,
    lapse,
    await sendAudited(lapse, '/orders/1', {
      headers: [dpopAuth(token), ['dpop', await holder.proof(`${lapse.url}/orders/1`, 'GET', token)]],
    }),
    'dpop_key_mismatch',
  )
  const b = await bound()
  const two = await sendAudited(lapse, '/orders/1', {
    headers: [dpopAuth(b), ['authorization', `Bearer ${b}`], ['dpop', await holder.proof(`${lapse.url}/orders/1`, 'GET', b)]],
  })
  t.equal(two.res.status, 400)
  t.equal(two.audit.reason, 'invalid_request')
  t.equal(lapse.upstream.calls, 0)
})

t.test('LAPSE_PUBLIC_ORIGINS: htu must name a listed origin, not the Host', async (t) => {
  const lapse = await runApp(t, { env: { LAPSE_PUBLIC_ORIGINS: 'https://orders.example.com, https://api.example.com:8443' } })
  const token = await bound()
  for (const origin of ['https://orders.example.com', 'https://ORDERS.example.com:443', 'https://api.example.com:8443']) {
    const got = await sendAudited(lapse, '/orders/1', {
      headers: [dpopAuth(token), ['dpop', await holder.proof(`${origin}/orders/./1`, 'GET', token)]],
    })
    t.equal(got.res.status, 200, `${origin}, compared after normalization`)
  }
  const calls = lapse.upstream.calls
  for (const htu of [`${lapse.url}/orders/1`, 'http://orders.example.com/orders/1', 'https://api.example.com/orders/1']) {
    const got = await sendAudited(lapse, '/orders/1', { headers: [dpopAuth(token), ['dpop', await holder.proof(htu, 'GET', token)]] })
    assertDenied(t, lapse, got.res, got.audit, {
      status: 401,
      challenge: PROOF_INVALID,
      error: 'invalid_dpop_proof',
      reason: 'dpop_proof_invalid',
      upstreamCalls: calls,
    })
  }
})

t.test('without LAPSE_PUBLIC_ORIGINS, htu may say http or https for the Host', async (t) => {
  const lapse = await runApp(t)
  const token = await bound()
  const host = lapse.url.slice('http://'.length)
  for (const htu of [`http://${host}/orders/1`, `https://${host}/orders/1`, `HTTP://${host}/orders/%31`]) {
    const got = await sendAudited(lapse, '/orders/1', { headers: [dpopAuth(token), ['dpop', await holder.proof(htu, 'GET', token)]] })
    t.equal(got.res.status, 200, htu)
  }
})

t.test('sender_constrained: a plain bearer token → 401 with Bearer and DPoP challenges; a bound one passes', async (t) => {
  const lapse = await runApp(t, {
    routes: [{ path: '/orders/**', scopes: ['orders:read'], sender_constrained: true }, { path: '/open/**' }],
  })
  const plain = await keys.mint()
  const got = await sendAudited(lapse, '/orders/1', { headers: [['authorization', `Bearer ${plain}`]] })
  assertDenied(t, lapse, got.res, got.audit, {
    status: 401,
    challenge:
      /^Bearer realm="lapse", error="invalid_token", error_description="[^"]+", DPoP realm="lapse", algs="ES256 EdDSA RS256 PS256"$/,
    error: 'invalid_token',
    reason: 'sender_constraint_required',
    token: plain,
  })
  t.equal(
    (await sendAudited(lapse, '/open/1', { headers: [['authorization', `Bearer ${plain}`]] })).res.status,
    200,
    'a rule without it takes bearer tokens',
  )
  const token = await bound()
  t.equal(
    (
      await sendAudited(lapse, '/orders/1', {
        headers: [dpopAuth(token), ['dpop', await holder.proof(`${lapse.url}/orders/1`, 'GET', token)]],
      })
    ).res.status,
    200,
  )
})

t.test('LAPSE_SENDER_CONSTRAINED=true: every protected route wants a bound token, unless its rule says false', async (t) => {
  const lapse = await runApp(t, {
    env: { LAPSE_SENDER_CONSTRAINED: 'true' },
    routes: [
      { path: '/orders/**', scopes: ['orders:read'] },
      { path: '/legacy/**', methods: ['POST'], sender_constrained: false },
      { path: '/legacy/**', methods: ['DELETE'] },
      { path: '/health', public: true },
    ],
  })
  const plain = await keys.mint()
  const got = await sendAudited(lapse, '/orders/1', { headers: [['authorization', `Bearer ${plain}`]] })
  assertDenied(t, lapse, got.res, got.audit, {
    status: 401,
    challenge: /^Bearer realm="lapse", error="invalid_token", .*, DPoP realm="lapse", algs="/,
    error: 'invalid_token',
    reason: 'sender_constraint_required',
  })
  t.equal(
    (await sendAudited(lapse, '/legacy/1', { method: 'POST', headers: [['authorization', `Bearer ${plain}`]] })).res.status,
    200,
    'the rule that opts out takes bearer tokens',
  )
  t.equal((await sendAudited(lapse, '/health')).res.status, 200, 'public routes stay public')
  // A POST that names DELETE is decided by both rules: the DELETE rule wants a bound token.
  const override = await sendAudited(lapse, '/legacy/1', {
    method: 'POST',
    headers: [
      ['authorization', `Bearer ${plain}`],
      ['x-http-method-override', 'DELETE'],
    ],
  })
  assertDenied(t, lapse, override.res, override.audit, {
    status: 401,
    challenge: /DPoP realm="lapse"/,
    error: 'invalid_token',
    reason: 'sender_constraint_required',
    upstreamCalls: 2,
  })
})

t.test('a rule both public and sender_constrained fails the boot', async (t) => {
  t.throws(
    () =>
      compileRoutes([
        {
          path: '/x',
          scopes: [],
          public: true,
          on_revocation_unavailable: 'closed',
          cut_streams_at_expiry: true,
          sender_constrained: true,
        },
      ]),
    { code: 'ERR_RULES_INVALID', message: /routes\[0\].*public and also sender_constrained/ },
  )
})

t.test('the decision span and audit line name the binding, never the proof', async (t) => {
  const lapse = await runApp(t)
  const token = await bound()
  await sendAudited(lapse, '/orders/1', { headers: [dpopAuth(token), ['dpop', await holder.proof(`${lapse.url}/orders/1`, 'GET', token)]] })
  const line = decisions(lapse).at(-1)!
  t.equal(line.binding, 'dpop')
  t.equal(line.key_thumbprint, holder.jkt)
  t.notOk(JSON.stringify(line).includes('dpop+jwt'))
})

t.test('a token error under the DPoP scheme is answered in the DPoP challenge (RFC 9449 §7.1), upstream untouched', async (t) => {
  const lapse = await runApp(t)
  const [h, p] = (await bound()).split('.')
  const forged = `${h}.${p}.${(await bound({ sub: 'mallory' })).split('.')[2]}`
  const got = await sendAudited(lapse, '/orders/1', {
    headers: [dpopAuth(forged), ['dpop', await holder.proof(`${lapse.url}/orders/1`, 'GET', forged)]],
  })
  assertDenied(t, lapse, got.res, got.audit, {
    status: 401,
    challenge: TOKEN_INVALID,
    error: 'invalid_token',
    reason: 'bad_signature',
    token: forged,
  })
  const bearer = await sendAudited(lapse, '/orders/1', { headers: [['authorization', `Bearer ${forged}`]] })
  t.match(bearer.res.headers['www-authenticate'], /^Bearer /, 'under Bearer, the Bearer challenge')
})
