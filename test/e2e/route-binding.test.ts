// Route rules that bind a grant to its resource and its freshness, through a real Lapse and a
// recording upstream: captures compared with claims, RFC 9470 step-up challenges, the
// X-Auth-Bound-* headers, and start-up errors for malformed rules.
import t, { type Test } from 'tap'
import { manualClock } from '../../src/core/clock.js'
import { loadConfig } from '../../src/config/load.js'
import { compileRoutes } from '../../src/authorize/routes.js'
import { baseEnv, bearer, runApp, sendAudited } from '../fixtures/app.js'
import { assertDenied } from '../fixtures/deny.js'
import { testKeys } from '../fixtures/keys.js'
import { openClient, startLongLivedUpstream } from '../long-lived/upstream.js'

const T0_MS = Date.parse('2030-01-01T00:00:00Z')
const T0_S = T0_MS / 1000
const ROUTES = [
  { path: '/tenants/{tenant}/orders/**', scopes: ['orders:read'], claims: { tenant: '{tenant}', env: ['prod', 'staging'] } },
  { path: '/admin/**', scopes: ['orders:read'], max_token_age: 300, acr_values: ['phishing-resistant', 'mfa'] },
  { path: '/fresh/**', scopes: ['orders:read'], max_token_age: 300 },
]
const start = (t: Test, clock = manualClock(T0_MS)) => runApp(t, { routes: ROUTES, clock })
const mint = async (claims: Record<string, unknown> = {}) => (await testKeys()).mint(claims, { nowS: T0_S })

const CLAIM_MISMATCH = (claim: string) =>
  new RegExp(`^Bearer realm="lapse", error="insufficient_scope", error_description="token claim ${claim} does not match this route"$`)
const STEP_UP = (description: string, params: string) =>
  new RegExp(`^Bearer realm="lapse", error="insufficient_user_authentication", error_description="${description}", ${params}$`)

t.test('captures and claim binding: the right tenant passes, with X-Auth-Bound-Tenant', async (t) => {
  const lapse = await start(t)
  const { res, audit } = await sendAudited(lapse, '/tenants/acme/orders/7', {
    headers: [bearer(await mint({ tenant: 'acme', env: 'prod' }))],
  })
  t.equal(res.status, 200)
  t.equal(audit.reason, 'ok')
  t.equal(lapse.upstream.requests[0]?.headers['x-auth-bound-tenant'], 'acme')
  t.equal(lapse.upstream.requests[0]?.url, '/tenants/acme/orders/7')
})

t.test('another tenant → 403 claim_mismatch naming the claim, not the value; upstream untouched', async (t) => {
  const lapse = await start(t)
  const token = await mint({ tenant: 'acme', env: 'prod' })
  const { res, audit } = await sendAudited(lapse, '/tenants/globex/orders/7', { headers: [bearer(token)] })
  assertDenied(t, lapse, res, audit, {
    status: 403,
    challenge: CLAIM_MISMATCH('tenant'),
    error: 'insufficient_scope',
    reason: 'claim_mismatch',
    token,
  })
  t.notMatch(res.headers['www-authenticate'], /acme|globex/, 'no value in the challenge')
  t.notMatch(res.body, /acme|globex/, 'no value in the body')
})

t.test('a list claim: any element matches; none → claim_mismatch', async (t) => {
  const lapse = await start(t)
  const ok = await sendAudited(lapse, '/tenants/acme/orders', {
    headers: [bearer(await mint({ tenant: ['globex', 'acme'], env: ['dev', 'staging'] }))],
  })
  t.equal(ok.res.status, 200, 'a list holding the tenant and an allowed env')
  t.equal(lapse.upstream.requests[0]?.headers['x-auth-bound-tenant'], 'acme')
  const token = await mint({ tenant: ['globex', 'initech'], env: 'prod' })
  const { res, audit } = await sendAudited(lapse, '/tenants/acme/orders', { headers: [bearer(token)] })
  assertDenied(t, lapse, res, audit, {
    status: 403,
    challenge: CLAIM_MISMATCH('tenant'),
    error: 'insufficient_scope',
    reason: 'claim_mismatch',
    upstreamCalls: 1,
    token,
  })
})

t.test('a missing claim, or one of the wrong type, does not satisfy the rule', async (t) => {
  const lapse = await start(t)
  const cases: Array<[string, Record<string, unknown>, string]> = [
    ['no tenant', { tenant: undefined, env: 'prod' }, 'tenant'],
    ['tenant a number', { tenant: 42, env: 'prod' }, 'tenant'],
    ['tenant an object', { tenant: { id: 'acme' }, env: 'prod' }, 'tenant'],
    ['env not allowed', { tenant: 'acme', env: 'dev' }, 'env'],
    ['env missing', { tenant: 'acme' }, 'env'],
    ['env a list of wrong types', { tenant: 'acme', env: [1, true] }, 'env'],
  ]
  for (const [name, claims, claim] of cases) {
    const { res, audit } = await sendAudited(lapse, '/tenants/acme/orders', { headers: [bearer(await mint(claims))] })
    t.equal(res.status, 403, name)
    t.match(res.headers['www-authenticate'], CLAIM_MISMATCH(claim), `${name}: names ${claim}`)
    t.equal(audit.reason, 'claim_mismatch', name)
  }
  t.equal(lapse.upstream.calls, 0)
})

t.test('comparison is exact, on the segment decoded once', async (t) => {
  const lapse = await start(t)
  // %C3%A9 is é; the normalizer keeps it escaped, the capture decodes it once.
  const ok = await sendAudited(lapse, '/tenants/caf%C3%A9/orders', { headers: [bearer(await mint({ tenant: 'café', env: 'prod' }))] })
  t.equal(ok.res.status, 200)
  t.equal(lapse.upstream.requests[0]?.url, '/tenants/caf%C3%A9/orders', 'forwarded as normalized')
  t.equal(
    lapse.upstream.requests[0]?.headers['x-auth-bound-tenant'],
    'caf%C3%A9',
    'non-ASCII percent-encoded in the header value, as other identity headers',
  )
  // Decoded once only: a token for the escaped spelling does not match the decoded segment.
  const escaped = await sendAudited(lapse, '/tenants/caf%C3%A9/orders', {
    headers: [bearer(await mint({ tenant: 'caf%C3%A9', env: 'prod' }))],
  })
  t.equal(escaped.res.status, 403)
  // %20 stays escaped in the path; decoded once it is a space in the value.
  const space = await sendAudited(lapse, '/tenants/a%20b/orders', { headers: [bearer(await mint({ tenant: 'a b', env: 'prod' }))] })
  t.equal(space.res.status, 200)
  t.equal(lapse.upstream.requests[1]?.headers['x-auth-bound-tenant'], 'a b')
  // Case matters.
  const upper = await sendAudited(lapse, '/tenants/ACME/orders', { headers: [bearer(await mint({ tenant: 'acme', env: 'prod' }))] })
  t.equal(upper.res.status, 403)
  t.equal(lapse.upstream.calls, 2)
})

t.test('spoofed X-Auth-Bound-* headers are removed, in any spelling; only Lapse writes them', async (t) => {
  const lapse = await start(t)
  const token = await mint({ tenant: 'acme', env: 'prod' })
  const spoofed: Array<[string, string]> = [
    ['X-Auth-Bound-Tenant', 'globex'],
    ['x_auth_bound_tenant', 'globex'],
    ['X.Auth.Bound.Tenant', 'globex'],
    ['X-Auth-Bound-Env', 'prod'],
  ]
  const { res } = await sendAudited(lapse, '/tenants/acme/orders', { headers: [bearer(token), ...spoofed] })
  t.equal(res.status, 200)
  const got = lapse.upstream.requests[0]!.headers
  t.equal(got['x-auth-bound-tenant'], 'acme', "the bound value, not the client's")
  t.equal(got['x-auth-bound-env'], undefined)
  t.equal(got.x_auth_bound_tenant, undefined)
  t.equal(got['x.auth.bound.tenant'], undefined)
  // A rule with no capture: a spoofed header never reaches the upstream either.
  const fresh = await sendAudited(lapse, '/fresh/x', { headers: [bearer(token), ['X-Auth-Bound-Tenant', 'globex']] })
  t.equal(fresh.res.status, 200)
  t.equal(lapse.upstream.requests[1]!.headers['x-auth-bound-tenant'], undefined)
})

t.test('max_token_age: iat older than max → 401 RFC 9470 challenge with max_age and acr_values', async (t) => {
  const clock = manualClock(T0_MS)
  const lapse = await start(t, clock)
  const keys = await testKeys()
  const at = (ageS: number, claims: Record<string, unknown> = {}) =>
    keys.mint({ iat: T0_S - ageS, exp: T0_S + 300, ...claims }, { nowS: T0_S })
  t.equal((await sendAudited(lapse, '/fresh/x', { headers: [bearer(await at(300))] })).res.status, 200, 'exactly max_token_age old')
  const token = await at(301)
  const { res, audit } = await sendAudited(lapse, '/fresh/x', { headers: [bearer(token)] })
  assertDenied(t, lapse, res, audit, {
    status: 401,
    challenge: STEP_UP('a more recent authentication is required', 'max_age="300"'),
    error: 'insufficient_user_authentication',
    reason: 'token_too_old',
    upstreamCalls: 1,
    token,
  })
  // RFC 9470 §3: the age counts from auth_time when the token carries it.
  const reissued = await at(10, { auth_time: T0_S - 900 })
  t.equal((await sendAudited(lapse, '/fresh/x', { headers: [bearer(reissued)] })).res.status, 401, 'a fresh iat over an old authentication')
  t.equal((await sendAudited(lapse, '/fresh/x', { headers: [bearer(await at(10, { auth_time: T0_S - 100 }))] })).res.status, 200)
  t.equal(lapse.upstream.calls, 2)
})

t.test('acr_values: acr missing or not listed → 401 acr_insufficient with acr_values and max_age', async (t) => {
  const lapse = await start(t)
  const params = 'max_age="300", acr_values="phishing-resistant mfa"'
  for (const acr of [undefined, 'pwd', ['mfa']]) {
    const token = await mint({ acr })
    const { res, audit } = await sendAudited(lapse, '/admin/x', { headers: [bearer(token)] })
    assertDenied(t, lapse, res, audit, {
      status: 401,
      challenge: STEP_UP('a stronger authentication is required', params),
      error: 'insufficient_user_authentication',
      reason: 'acr_insufficient',
      token,
    })
  }
  t.equal((await sendAudited(lapse, '/admin/x', { headers: [bearer(await mint({ acr: 'mfa' }))] })).res.status, 200)
  const old = await (await testKeys()).mint({ acr: 'mfa', iat: T0_S - 400, exp: T0_S + 60 }, { nowS: T0_S })
  const { res, audit } = await sendAudited(lapse, '/admin/x', { headers: [bearer(old)] })
  assertDenied(t, lapse, res, audit, {
    status: 401,
    challenge: STEP_UP('a more recent authentication is required', params),
    error: 'insufficient_user_authentication',
    reason: 'token_too_old',
    upstreamCalls: 1,
  })
})

t.test('start-up errors for malformed rules name the location', async (t) => {
  const keys = await testKeys()
  const fails = (routes: object[], pattern: RegExp, env: Record<string, string> = {}) => {
    const config = () => compileRoutes(loadConfig({ ...baseEnv('http://127.0.0.1:9', keys.jwksPath, routes), ...env }).routes)
    t.throws(config, { code: 'ERR_RULES_INVALID', message: pattern }, pattern.source)
  }
  fails([{ path: '/t/{a}/x/{a}' }], /capture \{a\} is used twice.*\(at routes\[0\]\.path\)/)
  fails(
    [
      { path: '/ok', scopes: ['x'] },
      { path: '/t/{tenant}', claims: { tenant: '{tenat}' } },
    ],
    /"\{tenat\}" names no capture.*\(at routes\[1\]\.claims\.tenant\)/,
  )
  fails([{ path: '/t/x{a}' }], /not a whole \{name\} segment/)
  fails(
    [
      { path: '/t/{a}/{b}', claims: { tenant: '{a}', other: '{b}' }, scopes: ['x'] },
      { path: '/u/{a_b}/{a-b}', claims: { x: '{a_b}', y: '{a-b}' } },
    ],
    /would both be sent as x-auth-bound-a-b.*\(at routes\[1\]\.path\)/,
  )
  fails([{ path: '/t', claims: { tenant: [] } }], /\(at routes\[0\]\.claims\.tenant/)
  fails([{ path: '/t', claims: { 'bad claim': 'x' } }], /\(at routes\[0\]\.claims/)
  fails([{ path: '/t', max_token_age: -1 }], /\(at routes\[0\]\.max_token_age\)/)
  fails([{ path: '/t', acr_values: ['has space'] }], /\(at routes\[0\]\.acr_values\[0\]\)/)
  fails([{ path: '/t', max_uses: 0 }], /\(at routes\[0\]\.max_uses\)/)
  fails(
    [{ path: '/t', max_uses: 1 }],
    /max_uses counts uses per token, so it needs jti in LAPSE_REQUIRED_CLAIMS \(at routes\[0\]\.max_uses\)/,
    { LAPSE_REQUIRED_CLAIMS: 'iss,aud,exp,iat,sub' },
  )
  fails([{ path: '/t', public: true, claims: { a: 'b' } }], /public rule cannot require claims/)
  t.doesNotThrow(
    () => compileRoutes(loadConfig(baseEnv('http://127.0.0.1:9', keys.jwksPath, [{ path: '/t', max_uses: 1 }])).routes),
    'max_uses with the default required claims',
  )
})

t.test('a WebSocket upgrade is bound the same way: the upstream gets X-Auth-Bound-Tenant, another tenant is refused', async (t) => {
  const up = await startLongLivedUpstream(t)
  const seen: Array<Record<string, unknown>> = []
  up.wss.on('connection', (_ws, req) => seen.push(req.headers))
  const lapse = await runApp(t, {
    routes: [{ path: '/tenants/{tenant}/live', scopes: ['orders:read'], claims: { tenant: '{tenant}' } }],
    upstream: up.upstream,
    clock: manualClock(T0_MS),
  })
  const token = await mint({ tenant: 'acme' })
  const client = await openClient(lapse.url, token, '/tenants/acme/live')
  t.equal(await client.echo('hi'), 'hi')
  t.equal(seen[0]?.['x-auth-bound-tenant'], 'acme')
  const refused = await openClient(lapse.url, token, '/tenants/globex/live').catch((e: { status?: number }) => e)
  t.equal((refused as { status?: number }).status, 403)
  t.equal(seen.length, 1, 'the refused upgrade never reached the upstream')
})
