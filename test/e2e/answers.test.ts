// Every row of DESIGN.md's answers table, through real sockets: a real Lapse in front of a real
// upstream, real signed tokens, the clock pinned.
import { createServer } from 'node:http'
import t, { type Test } from 'tap'
import { manualClock } from '../../src/core/clock.js'
import { bearer, runApp, sendAudited, waitFor, type Lapse } from '../fixtures/app.js'
import { assertDenied, CHALLENGE } from '../fixtures/deny.js'
import { newKeyPair, testKeys } from '../fixtures/keys.js'
import { startSilentServer, startUpstream } from '../fixtures/upstream.js'

const T0_MS = Date.parse('2030-01-01T00:00:00Z')
const T0_S = T0_MS / 1000
const ROUTES = [
  { path: '/healthz', public: true },
  { path: '/orders/**', methods: ['GET'], scopes: ['orders:read'] },
  { path: '/orders/**', methods: ['POST'], scopes: ['orders:read', 'orders:write'] },
]

const start = (t: Test, env: Record<string, string | undefined> = {}) => runApp(t, { routes: ROUTES, clock: manualClock(T0_MS), env })
const mint = async (claims: Record<string, unknown> = {}, opts: Parameters<Awaited<ReturnType<typeof testKeys>>['mint']>[1] = {}) =>
  (await testKeys()).mint(claims, { nowS: T0_S, ...opts })

/** A 401 invalid_token row: status, challenge, body, reason, upstream untouched, no token in logs. */
async function expectInvalidToken(t: Test, lapse: Lapse, token: string, reason: string, upstreamCalls = 0) {
  const { res, audit } = await sendAudited(lapse, '/orders/1', { headers: [bearer(token)] })
  assertDenied(t, lapse, res, audit, {
    status: 401,
    challenge: CHALLENGE.invalidToken,
    error: 'invalid_token',
    reason,
    token,
    upstreamCalls,
  })
}

t.test('valid token, scopes covered → 200 from the upstream (the baseline every deny row differs from)', async (t) => {
  const lapse = await start(t)
  const { res, audit } = await sendAudited(lapse, '/orders/1', { headers: [bearer(await mint())] })
  t.equal(res.status, 200)
  t.equal(lapse.upstream.calls, 1)
  t.equal(audit.decision, 'allow')
  t.equal(audit.reason, 'ok')
})

t.test('protected route, no token → 401 with a bare challenge (no error code), upstream untouched', async (t) => {
  const lapse = await start(t)
  const { res, audit } = await sendAudited(lapse, '/orders/1')
  assertDenied(t, lapse, res, audit, { status: 401, challenge: CHALLENGE.bare, error: 'unauthorized', reason: 'missing_token' })
})

t.test('another auth scheme (Basic) counts as no bearer token → 401 bare challenge', async (t) => {
  const lapse = await start(t)
  const { res, audit } = await sendAudited(lapse, '/orders/1', { headers: [['authorization', 'Basic dXNlcjpwYXNz']] })
  assertDenied(t, lapse, res, audit, { status: 401, challenge: CHALLENGE.bare, error: 'unauthorized', reason: 'missing_token' })
})

t.test('public route, no token → 200 from the upstream', async (t) => {
  const lapse = await start(t)
  const { res } = await sendAudited(lapse, '/healthz')
  t.equal(res.status, 200)
  t.equal(lapse.upstream.calls, 1)
})

t.test('malformed token → 401 invalid_token (malformed), upstream untouched', async (t) => {
  for (const [what, value] of [
    ['not a JWT', 'Bearer not-a-jwt'],
    ['two segments', 'Bearer eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0'],
    ['header is not JSON', 'Bearer bm90LWpzb24.eyJzdWIiOiJ4In0.c2ln'],
    ['characters outside b64token', 'Bearer a.b.c!'],
    ['scheme without credentials', 'Bearer'],
  ] as const) {
    await t.test(what, async (t) => {
      const lapse = await start(t)
      const { res, audit } = await sendAudited(lapse, '/orders/1', { headers: [['authorization', value]] })
      assertDenied(t, lapse, res, audit, { status: 401, challenge: CHALLENGE.invalidToken, error: 'invalid_token', reason: 'malformed' })
    })
  }
})

t.test('bad signature → 401 invalid_token (bad_signature), upstream untouched', async (t) => {
  const lapse = await start(t)
  const a = await mint({ sub: 'alice' })
  const b = await mint({ sub: 'mallory' })
  // Alice's header and payload with the signature of another token from the same key.
  const forged = `${a.split('.').slice(0, 2).join('.')}.${b.split('.')[2]}`
  await expectInvalidToken(t, lapse, forged, 'bad_signature')
})

t.test('payload edited after signing → 401 invalid_token (bad_signature)', async (t) => {
  const lapse = await start(t)
  const [h, , s] = (await mint({ scope: 'orders:read' })).split('.')
  const payload = Buffer.from(
    JSON.stringify({
      iss: 'https://issuer.test',
      aud: 'orders-api',
      sub: 'root',
      jti: 'x',
      iat: T0_S,
      exp: T0_S + 60,
      scope: 'orders:read orders:write',
    }),
  ).toString('base64url')
  await expectInvalidToken(t, lapse, `${h}.${payload}.${s}`, 'bad_signature')
})

t.test('unknown key → 401 invalid_token (unknown_key), upstream untouched', async (t) => {
  const lapse = await start(t)
  const stranger = await newKeyPair('ES256', 'not-in-the-jwks')
  await expectInvalidToken(t, lapse, await mint({}, { pair: stranger }), 'unknown_key')
})

t.test('algorithm not allowed → 401 invalid_token (alg_not_allowed), upstream untouched', async (t) => {
  const lapse = await start(t, { LAPSE_ALGORITHMS: 'ES256' })
  await expectInvalidToken(t, lapse, await mint({}, { alg: 'RS256' }), 'alg_not_allowed')
})

t.test('wrong iss → 401 invalid_token (wrong_issuer), upstream untouched', async (t) => {
  const lapse = await start(t)
  await expectInvalidToken(t, lapse, await mint({ iss: 'https://evil.test' }), 'wrong_issuer')
})

t.test('wrong aud → 401 invalid_token (wrong_audience), upstream untouched', async (t) => {
  const lapse = await start(t)
  await expectInvalidToken(t, lapse, await mint({ aud: ['billing-api', 'other'] }), 'wrong_audience')
})

t.test('expired → 401 invalid_token (expired), upstream untouched', async (t) => {
  const lapse = await start(t)
  await expectInvalidToken(t, lapse, await mint({ iat: T0_S - 600, exp: T0_S - 60 }), 'expired')
})

t.test('not yet valid (nbf ahead) → 401 invalid_token (not_yet_valid), upstream untouched', async (t) => {
  const lapse = await start(t)
  await expectInvalidToken(t, lapse, await mint({ nbf: T0_S + 120 }), 'not_yet_valid')
})

t.test('lifetime over policy → 401 invalid_token (lifetime_exceeds_policy), upstream untouched', async (t) => {
  const lapse = await start(t)
  // Still valid right now; only exp - iat is too long for LAPSE_MAX_TOKEN_LIFETIME (3600).
  await expectInvalidToken(t, lapse, await mint({ iat: T0_S, exp: T0_S + 3601 }), 'lifetime_exceeds_policy')
})

t.test('missing required claim → 401 invalid_token (missing_claim), upstream untouched', async (t) => {
  for (const claim of ['jti', 'sub', 'iat', 'exp']) {
    await t.test(`without ${claim}`, async (t) => {
      const lapse = await start(t)
      await expectInvalidToken(t, lapse, await mint({ [claim]: undefined }), 'missing_claim')
    })
  }
})

t.test('revoked (jti in the revocation set) → 401 invalid_token (revoked), upstream untouched', async (t) => {
  const lapse = await start(t)
  const jti = 'revoked-token-1'
  const token = await mint({ jti })
  await lapse.running.deps.revocations.put({
    claim: 'jti',
    value: jti,
    issuedBeforeS: T0_S,
    reason: 'test',
    by: 'test',
    createdAtS: T0_S,
    expiresAtS: T0_S + 3630,
  })
  await expectInvalidToken(t, lapse, token, 'revoked')
})

t.test('revoked subject, token issued after T → still accepted (the revocation model)', async (t) => {
  const lapse = await start(t)
  await lapse.running.deps.revocations.put({
    claim: 'sub',
    value: 'ci-deployer',
    issuedBeforeS: T0_S - 10,
    reason: 'test',
    by: 'test',
    createdAtS: T0_S - 10,
    expiresAtS: T0_S + 3600,
  })
  const { res } = await sendAudited(lapse, '/orders/1', { headers: [bearer(await mint({ sub: 'ci-deployer' }))] })
  t.equal(res.status, 200)
  const old = await mint({ sub: 'ci-deployer', iat: T0_S - 10, exp: T0_S + 60 })
  await expectInvalidToken(t, lapse, old, 'revoked', 1)
})

t.test('insufficient scope → 403 insufficient_scope with scope="…", upstream untouched', async (t) => {
  const lapse = await start(t)
  const token = await mint({ scope: 'orders:read' })
  const { res, audit } = await sendAudited(lapse, '/orders/1', { method: 'POST', headers: [bearer(token)] })
  assertDenied(t, lapse, res, audit, {
    status: 403,
    challenge: CHALLENGE.insufficientScope('orders:read orders:write'),
    error: 'insufficient_scope',
    reason: 'insufficient_scope',
    token,
  })
})

t.test('scp (array) is understood like scope (string)', async (t) => {
  const lapse = await start(t)
  const token = await mint({ scope: undefined, scp: ['orders:read', 'orders:write'] })
  const { res } = await sendAudited(lapse, '/orders/1', { method: 'POST', headers: [bearer(token)] })
  t.equal(res.status, 200)
  t.equal(lapse.upstream.requests[0]?.headers['x-auth-scopes'], 'orders:read orders:write')
})

t.test('no route matches → 403 without a challenge, upstream untouched', async (t) => {
  const lapse = await start(t)
  const token = await mint()
  for (const [method, path] of [
    ['GET', '/admin'],
    ['DELETE', '/orders/1'],
  ] as const) {
    const { res, audit } = await sendAudited(lapse, path, { method, headers: [bearer(token)] })
    assertDenied(t, lapse, res, audit, { status: 403, challenge: undefined, error: 'forbidden', reason: 'no_route', token })
  }
})

t.test('two credentials → 400 invalid_request, upstream untouched', async (t) => {
  const token = await mint()
  await t.test('two Authorization headers', async (t) => {
    const lapse = await start(t)
    const { res, audit } = await sendAudited(lapse, '/orders/1', { headers: [bearer(token), bearer(token)] })
    assertDenied(t, lapse, res, audit, {
      status: 400,
      challenge: CHALLENGE.invalidRequest,
      error: 'invalid_request',
      reason: 'invalid_request',
      token,
    })
  })
  await t.test('header and query string, even where query tokens are allowed', async (t) => {
    const lapse = await start(t, { LAPSE_ALLOW_QUERY_TOKEN: 'true' })
    const { res, audit } = await sendAudited(lapse, `/orders/1?access_token=${token}`, { headers: [bearer(token)] })
    assertDenied(t, lapse, res, audit, {
      status: 400,
      challenge: CHALLENGE.invalidRequest,
      error: 'invalid_request',
      reason: 'invalid_request',
      token,
    })
  })
  await t.test('header and a percent-encoded access_token name in the query string', async (t) => {
    const lapse = await start(t, { LAPSE_ALLOW_QUERY_TOKEN: 'true' })
    const { res, audit } = await sendAudited(lapse, `/orders/1?access%5Ftoken=${token}`, { headers: [bearer(token)] })
    assertDenied(t, lapse, res, audit, {
      status: 400,
      challenge: CHALLENGE.invalidRequest,
      error: 'invalid_request',
      reason: 'invalid_request',
      token,
    })
  })
})

t.test('token in the query string → 400 invalid_request, upstream untouched', async (t) => {
  const lapse = await start(t)
  const token = await mint()
  for (const query of [`access_token=${token}`, `x=1&access_token=${token}`, `access%5Ftoken=${token}`]) {
    const { res, audit } = await sendAudited(lapse, `/orders/1?${query}`)
    assertDenied(t, lapse, res, audit, {
      status: 400,
      challenge: CHALLENGE.invalidRequest,
      error: 'invalid_request',
      reason: 'invalid_request',
      token,
    })
  }
})

t.test(
  'token in the query string with LAPSE_ALLOW_QUERY_TOKEN=true → accepted, access_token stripped from the forwarded query',
  async (t) => {
    const lapse = await start(t, { LAPSE_ALLOW_QUERY_TOKEN: 'true' })
    const token = await mint()
    const { res, audit } = await sendAudited(lapse, `/orders/1?x=1&access_token=${token}&y=a%20b`)
    t.equal(res.status, 200)
    t.equal(audit.reason, 'ok')
    t.equal(lapse.upstream.calls, 1)
    t.equal(lapse.upstream.requests[0]!.url, '/orders/1?x=1&y=a%20b')
    t.notOk(lapse.upstream.requests[0]!.url.includes(token.split('.')[2]!), 'the token is not forwarded in the URL')
    await sendAudited(lapse, `/orders/2?access_token=${token}`)
    t.equal(lapse.upstream.requests[1]!.url, '/orders/2', 'a query that held only the token is dropped whole')
  },
)

t.test('path that cannot be normalized → 400 invalid_request, upstream untouched', async (t) => {
  const lapse = await start(t)
  const token = await mint()
  for (const path of ['/orders/%2F..%2Fadmin', '/orders/1;jsessionid=x', '/../orders/1', '/orders/%C0%AE%C0%AE/x', '/orders/%00']) {
    const { res, audit } = await sendAudited(lapse, path, { headers: [bearer(token)] })
    assertDenied(t, lapse, res, audit, {
      status: 400,
      challenge: CHALLENGE.invalidRequest,
      error: 'invalid_request',
      reason: 'invalid_request',
      token,
    })
  }
})

t.test('keys unavailable (JWKS URL that never answers) → 503 with Retry-After, no challenge, upstream untouched', async (t) => {
  const silent = await startSilentServer(t)
  const lapse = await start(t, { LAPSE_JWKS_FILE: undefined, LAPSE_JWKS_URL: `${silent.url}/jwks.json`, LAPSE_JWKS_TIMEOUT: '200' })
  await waitFor(() => silent.connections() > 0, 'Lapse to ask the JWKS endpoint')
  const token = await mint()
  const { res, audit } = await sendAudited(lapse, '/orders/1', { headers: [bearer(token)] })
  assertDenied(t, lapse, res, audit, {
    status: 503,
    challenge: undefined,
    error: 'temporarily_unavailable',
    reason: 'keys_unavailable',
    token,
  })
})

t.test('upstream down → 502, answered by Lapse', async (t) => {
  const closed = createServer()
  await new Promise<void>((resolve) => closed.listen(0, '127.0.0.1', resolve))
  const port = (closed.address() as { port: number }).port
  await new Promise((resolve) => closed.close(resolve))
  const lapse = await start(t, { LAPSE_UPSTREAM: `http://127.0.0.1:${port}` })
  const { res, audit } = await sendAudited(lapse, '/orders/1', { headers: [bearer(await mint())] })
  t.equal(res.status, 502)
  t.equal(res.headers['www-authenticate'], undefined)
  t.equal(res.json().error, 'bad_gateway')
  t.equal(audit.decision, 'allow')
  t.equal(audit.status, 502)
  t.equal(audit.upstream_failure, 'upstream_unavailable')
})

t.test('upstream too slow → 504 after LAPSE_UPSTREAM_TIMEOUT', async (t) => {
  const slow = await startUpstream(() => undefined)
  t.teardown(() => slow.close())
  const lapse = await runApp(t, { routes: ROUTES, clock: manualClock(T0_MS), upstream: slow, env: { LAPSE_UPSTREAM_TIMEOUT: '200' } })
  const started = Date.now()
  const { res, audit } = await sendAudited(lapse, '/orders/1', { headers: [bearer(await mint())] })
  t.equal(res.status, 504)
  t.equal(res.headers['www-authenticate'], undefined)
  t.equal(res.json().error, 'gateway_timeout')
  t.equal(slow.calls, 1, 'the upstream got the request and never answered')
  t.equal(audit.upstream_failure, 'upstream_timeout')
  t.ok(
    lapse.lines.some((l) => l.msg === 'upstream request failed' && l.err === 'ERR_UPSTREAM_TIMEOUT'),
    'the warning carries the docs/errors.md code',
  )
  t.ok(Date.now() - started < 10_000, 'answered well before any client would give up')
})
