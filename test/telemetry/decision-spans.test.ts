// Every `lapse.reason` of DESIGN.md produces exactly one `lapse.authorize` span, child of the
// caller's trace, with the design's attributes; status ERROR only for Lapse's own 5xx answers.
// Real Lapse, real upstream, real signed tokens, spans from the SDK's in-memory exporter.
import { SpanKind, SpanStatusCode } from '@opentelemetry/api'
import type { ReadableSpan } from '@opentelemetry/sdk-trace-base'
import { freePort } from '../fixtures/redis-server.js'
import t, { type Test } from 'tap'
import { manualClock } from '../../src/core/clock.js'
import { REASONS } from '../../src/core/reasons.js'
import { bearer, runApp, send, waitFor, type Lapse } from '../fixtures/app.js'
import { newKeyPair, testKeys } from '../fixtures/keys.js'
import { startSilentServer } from '../fixtures/upstream.js'
import { inMemoryTelemetry, newTraceparent, type MemoryTelemetry } from './in-memory.js'
import { newHolder } from '../bind/dpop-helpers.js'

const T0_MS = Date.parse('2030-01-01T00:00:00Z')
const T0_S = T0_MS / 1000
const ROUTES = [
  { path: '/healthz', public: true },
  { path: '/orders/**', methods: ['GET'], scopes: ['orders:read'] },
  { path: '/ci/**', scopes: ['orders:read'], peers: ['spiffe://prod.example/ns/ci/*'] },
  // Route binding (docs/configuration.md#route-rules).
  { path: '/tenants/{tenant}/**', scopes: ['orders:read'], claims: { tenant: '{tenant}' } },
  { path: '/fresh/**', scopes: ['orders:read'], max_token_age: 60 },
  { path: '/strong/**', scopes: ['orders:read'], acr_values: ['mfa'] },
  { path: '/once/**', scopes: ['orders:read'], max_uses: 1 },
]
// DESIGN.md "Telemetry": the `lapse.reason` values, verbatim, and host_not_allowed (LAPSE_HOSTS).
const DESIGN_REASONS = [
  'ok',
  'missing_token',
  'malformed',
  'bad_signature',
  'unknown_key',
  'alg_not_allowed',
  'expired',
  'not_yet_valid',
  'wrong_issuer',
  'wrong_audience',
  'lifetime_exceeds_policy',
  'missing_claim',
  'revoked',
  'insufficient_scope',
  'no_route',
  'revocation_unavailable',
  'keys_unavailable',
  'invalid_request',
  'host_not_allowed',
  'too_many_header_fields',
  // docs/binding.md: DPoP and the sender_constrained policy.
  'dpop_proof_invalid',
  'dpop_replayed',
  'dpop_key_mismatch',
  'dpop_nonce_required',
  'sender_constraint_required',
  'dpop_replay_unavailable',
  // Issue 23 (docs/binding.md).
  'mtls_key_mismatch',
  'peer_not_allowed',
  // Route binding: claims, RFC 9470 freshness, use limits.
  'claim_mismatch',
  'token_too_old',
  'acr_insufficient',
  'token_reused',
]

const mint = async (claims: Record<string, unknown> = {}, opts: Parameters<Awaited<ReturnType<typeof testKeys>>['mint']>[1] = {}) =>
  (await testKeys()).mint(claims, { nowS: T0_S, ...opts })

interface Case {
  readonly path?: string
  readonly headers?: Array<[string, string]>
  readonly status: number
  /** Attributes the span must carry (exact values). */
  readonly attrs?: Record<string, unknown>
  /** Attributes the span must not carry. */
  readonly absent?: readonly string[]
}

const covered = new Set<string>()

/** One request in a trace of its own; returns its single decision span after the common checks. */
async function expectSpan(t: Test, lapse: Lapse, mem: MemoryTelemetry, reason: string, c: Case): Promise<ReadableSpan> {
  const tp = newTraceparent()
  const res = await send(`${lapse.url}${c.path ?? '/orders/1'}`, { headers: [tp.header, ...(c.headers ?? [])] })
  t.equal(res.status, c.status, `${reason}: status`)
  const span = await mem.authorizeSpan(tp.traceId)
  t.equal(span.kind, SpanKind.SERVER, `${reason}: a server span`)
  t.equal(span.parentSpanContext?.spanId, tp.parentSpanId, `${reason}: child of the caller's span`)
  const a = span.attributes
  t.equal(a['lapse.decision'], reason === 'ok' ? 'allow' : 'deny', `${reason}: lapse.decision`)
  t.equal(a['lapse.reason'], reason, `${reason}: lapse.reason`)
  t.equal(a['http.request.method'], 'GET', `${reason}: http.request.method`)
  t.equal(a['http.response.status_code'], c.status, `${reason}: http.response.status_code`)
  t.equal(a['url.scheme'], 'http', `${reason}: url.scheme`)
  t.equal(a['client.address'], '127.0.0.1', `${reason}: client.address`)
  for (const [k, v] of Object.entries(c.attrs ?? {})) t.same(a[k], v, `${reason}: ${k}`)
  for (const k of c.absent ?? []) t.notOk(k in a, `${reason}: no ${k}`)
  if (c.status === 503) {
    t.equal(span.status.code, SpanStatusCode.ERROR, `${reason}: a fault is an error`)
    t.equal(a['error.type'], reason, `${reason}: error.type`)
  } else {
    t.equal(span.status.code, SpanStatusCode.UNSET, `${reason}: a denial is not an error`)
    t.notOk('error.type' in a, `${reason}: no error.type`)
  }
  covered.add(reason)
  return span
}

const ORDERS_RULE = { 'lapse.route': '1', 'http.route': '/orders/**', 'lapse.scopes.required': 'orders:read' }

t.test('every reason on one Lapse: one lapse.authorize span each, with the design attributes', async (t) => {
  const mem = inMemoryTelemetry(t)
  const lapse = await runApp(t, { routes: ROUTES, clock: manualClock(T0_MS), telemetry: mem.telemetry })

  const good = await mint({ sub: 'ci-deployer', client_id: 'deploy-bot', jti: 'tok-ok', exp: T0_S + 120 })
  const okSpan = await expectSpan(t, lapse, mem, 'ok', {
    headers: [bearer(good)],
    status: 200,
    attrs: {
      ...ORDERS_RULE,
      'url.path': '/orders/1',
      'enduser.id': 'ci-deployer',
      'lapse.client_id': 'deploy-bot',
      'lapse.token.jti': 'tok-ok',
      'lapse.token.expires_in_s': 120,
    },
  })
  t.equal(lapse.upstream.calls, 1)
  t.equal(okSpan.name, 'lapse.authorize')

  await expectSpan(t, lapse, mem, 'missing_token', { status: 401, attrs: ORDERS_RULE, absent: ['enduser.id', 'lapse.token.jti'] })
  await expectSpan(t, lapse, mem, 'malformed', { headers: [['authorization', 'Bearer not-a-jwt']], status: 401, absent: ['enduser.id'] })
  const [h, p] = (await mint({ sub: 'alice' })).split('.')
  const otherSig = (await mint({ sub: 'mallory' })).split('.')[2]
  await expectSpan(t, lapse, mem, 'bad_signature', { headers: [bearer(`${h}.${p}.${otherSig}`)], status: 401, absent: ['enduser.id'] })
  const stranger = await newKeyPair('ES256', 'not-in-the-jwks')
  await expectSpan(t, lapse, mem, 'unknown_key', { headers: [bearer(await mint({}, { pair: stranger }))], status: 401 })
  await expectSpan(t, lapse, mem, 'expired', {
    headers: [bearer(await mint({ iat: T0_S - 600, exp: T0_S - 60 }))],
    status: 401,
    absent: ['enduser.id'],
  })
  await expectSpan(t, lapse, mem, 'not_yet_valid', { headers: [bearer(await mint({ nbf: T0_S + 600, exp: T0_S + 900 }))], status: 401 })
  await expectSpan(t, lapse, mem, 'wrong_issuer', { headers: [bearer(await mint({ iss: 'https://evil.test' }))], status: 401 })
  await expectSpan(t, lapse, mem, 'wrong_audience', { headers: [bearer(await mint({ aud: 'billing-api' }))], status: 401 })
  await expectSpan(t, lapse, mem, 'lifetime_exceeds_policy', { headers: [bearer(await mint({ exp: T0_S + 86_400 }))], status: 401 })
  await expectSpan(t, lapse, mem, 'missing_claim', { headers: [bearer(await mint({ jti: undefined }))], status: 401 })
  await expectSpan(t, lapse, mem, 'mtls_key_mismatch', {
    headers: [bearer(await mint({ cnf: { 'x5t#S256': 'bm90LXRoaXMtY2VydGlmaWNhdGU' } }))],
    status: 401,
    attrs: ORDERS_RULE,
  })
  await expectSpan(t, lapse, mem, 'peer_not_allowed', {
    path: '/ci/1',
    headers: [bearer(good)],
    status: 403,
    attrs: { 'lapse.route': '2', 'http.route': '/ci/**' },
  })
  await expectSpan(t, lapse, mem, 'claim_mismatch', {
    path: '/tenants/acme/1',
    headers: [bearer(await mint({ tenant: 'globex' }))],
    status: 403,
    attrs: { 'lapse.route': '3', 'http.route': '/tenants/{tenant}/**' },
  })
  await expectSpan(t, lapse, mem, 'token_too_old', {
    path: '/fresh/1',
    headers: [bearer(await mint({ iat: T0_S - 600, exp: T0_S + 600 }))],
    status: 401,
    attrs: { 'lapse.route': '4' },
  })
  await expectSpan(t, lapse, mem, 'acr_insufficient', {
    path: '/strong/1',
    headers: [bearer(await mint({ acr: 'pwd' }))],
    status: 401,
    attrs: { 'lapse.route': '5' },
  })
  const once = await mint({ jti: 'tok-once' })
  t.equal((await send(`${lapse.url}/once/1`, { headers: [bearer(once)] })).status, 200, 'the first use passes')
  await expectSpan(t, lapse, mem, 'token_reused', {
    path: '/once/1',
    headers: [bearer(once)],
    status: 401,
    attrs: { 'lapse.route': '6', 'lapse.token.jti': 'tok-once' },
  })

  // Revoked: the identity is known (the token verified), so the span says whose grant was refused.
  const revokedToken = await mint({ sub: 'contractor-7', jti: 'tok-revoked' })
  await lapse.running.deps.revocations.put({
    claim: 'sub',
    value: 'contractor-7',
    issuedBeforeS: T0_S,
    reason: 'offboarded',
    by: 'test',
    createdAtS: T0_S,
    expiresAtS: T0_S + 7200,
  })
  await expectSpan(t, lapse, mem, 'revoked', {
    headers: [bearer(revokedToken)],
    status: 401,
    attrs: { ...ORDERS_RULE, 'enduser.id': 'contractor-7', 'lapse.token.jti': 'tok-revoked', 'lapse.token.expires_in_s': 300 },
  })

  await expectSpan(t, lapse, mem, 'insufficient_scope', {
    headers: [bearer(await mint({ sub: 'reader', scope: 'billing:read' }))],
    status: 403,
    attrs: { ...ORDERS_RULE, 'enduser.id': 'reader' },
  })
  await expectSpan(t, lapse, mem, 'no_route', {
    path: '/admin/users',
    headers: [bearer(good)],
    status: 403,
    attrs: { 'enduser.id': 'ci-deployer' },
    absent: ['lapse.route', 'http.route'],
  })
  // Two credentials is a malformed request; the raw path never becomes an attribute when it is refused.
  await expectSpan(t, lapse, mem, 'invalid_request', { headers: [bearer(good), bearer(good)], status: 400 })
  await expectSpan(t, lapse, mem, 'invalid_request', {
    path: '/orders/%2F..%2Fadmin',
    headers: [bearer(good)],
    status: 400,
    absent: ['url.path'],
  })
  t.equal(lapse.upstream.calls, 2, 'only the allowed requests (ok, and the first use of /once) reached the upstream')

  const decisionSpans = mem.spans().filter((s) => s.name === 'lapse.authorize')
  const traces = new Set(decisionSpans.map((s) => s.spanContext().traceId))
  t.equal(decisionSpans.length, traces.size, 'exactly one decision span per request')
})

t.test('alg_not_allowed: one span, reason alg_not_allowed', async (t) => {
  const mem = inMemoryTelemetry(t)
  const lapse = await runApp(t, { routes: ROUTES, clock: manualClock(T0_MS), telemetry: mem.telemetry, env: { LAPSE_ALGORITHMS: 'ES256' } })
  await expectSpan(t, lapse, mem, 'alg_not_allowed', { headers: [bearer(await mint({}, { alg: 'RS256' }))], status: 401 })
})

t.test('keys_unavailable: 503, span status ERROR with error.type', async (t) => {
  const silent = await startSilentServer(t)
  const mem = inMemoryTelemetry(t)
  const lapse = await runApp(t, {
    routes: ROUTES,
    clock: manualClock(T0_MS),
    telemetry: mem.telemetry,
    env: { LAPSE_JWKS_FILE: undefined, LAPSE_JWKS_URL: `${silent.url}/jwks.json`, LAPSE_JWKS_TIMEOUT: '200' },
  })
  await waitFor(() => silent.connections() > 0, 'Lapse to ask the JWKS endpoint')
  await expectSpan(t, lapse, mem, 'keys_unavailable', { headers: [bearer(await mint())], status: 503, attrs: ORDERS_RULE })
})

t.test('revocation_unavailable: Redis unreachable → 503, span status ERROR, the lookup child span failed', async (t) => {
  // A port nothing listens on: the store refuses at once (no offline queue), so the check fails closed.
  const port = await freePort() // nothing listens there
  const mem = inMemoryTelemetry(t)
  const lapse = await runApp(t, {
    routes: ROUTES,
    clock: manualClock(T0_MS),
    telemetry: mem.telemetry,
    env: { LAPSE_REDIS_URL: `redis://127.0.0.1:${port}` },
  })
  const span = await expectSpan(t, lapse, mem, 'revocation_unavailable', {
    headers: [bearer(await mint({ sub: 'ci-deployer' }))],
    status: 503,
    attrs: { ...ORDERS_RULE, 'enduser.id': 'ci-deployer' },
  })
  const lookups = (await mem.spansOf(span.spanContext().traceId, 'lapse.revocation.lookup')).filter(
    (s) => s.name === 'lapse.revocation.lookup',
  )
  t.equal(lookups.length, 1, 'one revocation lookup span')
  t.equal(lookups[0]!.parentSpanContext?.spanId, span.spanContext().spanId, 'child of the decision span')
  t.equal(lookups[0]!.status.code, SpanStatusCode.ERROR)
  t.equal(lookups[0]!.attributes['error.type'], 'ERR_REVOCATION_UNAVAILABLE')
})

t.test('refusals of the head, before any decision: host_not_allowed (421) and too_many_header_fields (431), one span each', async (t) => {
  const mem = inMemoryTelemetry(t)
  const lapse = await runApp(t, {
    routes: ROUTES,
    clock: manualClock(T0_MS),
    telemetry: mem.telemetry,
    env: { LAPSE_HOSTS: 'api.example.com' },
  })
  const good = await mint({ sub: 'ci-deployer' })
  // Decided before the token is read: no identity, no rule, no path.
  // The client's Host is 127.0.0.1:<port>, which LAPSE_HOSTS does not list.
  await expectSpan(t, lapse, mem, 'host_not_allowed', {
    headers: [bearer(good)],
    status: 421,
    absent: ['enduser.id', 'lapse.route', 'url.path'],
  })
  const padding = Array.from({ length: 100 }, (_, i): [string, string] => [`x-pad-${i}`, 'a'])
  // The field count is checked first, so the Host does not matter here.
  await expectSpan(t, lapse, mem, 'too_many_header_fields', {
    headers: [bearer(good), ...padding],
    status: 431,
    absent: ['enduser.id', 'url.path'],
  })
  t.equal(lapse.upstream.calls, 0, 'the upstream was not reached')
})

t.test('DPoP: an allowed span names the binding and the key thumbprint; each DPoP reason has its span', async (t) => {
  // Real time: the dpop package dates its proofs now.
  const mem = inMemoryTelemetry(t)
  const nonceSecret = 'a-nonce-secret-every-sidecar-shares-0123'
  const lapse = await runApp(t, { routes: [...ROUTES, { path: '/strict/**', sender_constrained: true }], telemetry: mem.telemetry })
  const holder = await newHolder()
  const keys = await testKeys()
  const token = await keys.mint({ cnf: { jkt: holder.jkt } })
  const proof = await holder.proof(`${lapse.url}/orders/1`, 'GET', token)
  const dpop = (p: string): Array<[string, string]> => [
    ['authorization', `DPoP ${token}`],
    ['dpop', p],
  ]
  await expectSpan(t, lapse, mem, 'ok', {
    headers: dpop(proof),
    status: 200,
    attrs: { 'lapse.token.binding': 'dpop', 'lapse.token.key_thumbprint': holder.jkt },
  })
  await expectSpan(t, lapse, mem, 'dpop_replayed', { headers: dpop(proof), status: 401, absent: ['lapse.token.binding'] })
  await expectSpan(t, lapse, mem, 'dpop_proof_invalid', {
    headers: dpop(await holder.proof(`${lapse.url}/orders/2`, 'GET', token)),
    status: 401,
  })
  await expectSpan(t, lapse, mem, 'dpop_key_mismatch', { headers: [bearer(token)], status: 401 })
  await expectSpan(t, lapse, mem, 'sender_constraint_required', { path: '/strict/1', headers: [bearer(await keys.mint())], status: 401 })

  const nonced = await runApp(t, {
    routes: ROUTES,
    telemetry: mem.telemetry,
    env: { LAPSE_DPOP_NONCE: 'true', LAPSE_DPOP_NONCE_SECRET: nonceSecret },
  })
  await expectSpan(t, nonced, mem, 'dpop_nonce_required', {
    headers: dpop(await holder.proof(`${nonced.url}/orders/1`, 'GET', token)),
    status: 401,
  })

  // The replay cache on a Redis port nothing listens on: refused at once, fail closed.
  const port = await freePort()
  const down = await runApp(t, { routes: ROUTES, telemetry: mem.telemetry, env: { LAPSE_REDIS_URL: `redis://127.0.0.1:${port}` } })
  await expectSpan(t, down, mem, 'dpop_replay_unavailable', {
    headers: dpop(await holder.proof(`${down.url}/orders/1`, 'GET', token)),
    status: 503,
  })
})

t.test('the tests above cover every reason of DESIGN.md and of the reasons table', async (t) => {
  // Runs last (tap runs subtests in order): `covered` is filled by the tests above.
  t.same([...covered].sort(), [...DESIGN_REASONS].sort(), 'every DESIGN.md reason produced its span')
  t.same([...Object.keys(REASONS), 'ok'].sort(), [...DESIGN_REASONS].sort(), 'DESIGN.md and core/reasons.ts list the same reasons')
})
