// Method overrides (X-HTTP-Method-Override and kin, `_method`) are decided under every method they
// name, and forwarded unchanged; a rule for GET takes HEAD. A real Lapse in front of a recording
// upstream, real signed tokens, the clock pinned.
import t, { type Test } from 'tap'
import { manualClock } from '../../src/core/clock.js'
import { bearer, runApp, sendAudited } from '../fixtures/app.js'
import { assertDenied, CHALLENGE } from '../fixtures/deny.js'
import { testKeys } from '../fixtures/keys.js'

const T0_MS = Date.parse('2030-01-01T00:00:00Z')
const T0_S = T0_MS / 1000
const ROUTES = [
  { path: '/orders/**', methods: ['GET'], scopes: ['orders:read'] },
  { path: '/orders/**', methods: ['POST'], scopes: ['orders:write'] },
  { path: '/orders/**', methods: ['DELETE'], scopes: ['orders:delete'] },
  { path: '/forms/**', methods: ['POST'], public: true },
  { path: '/forms/**', methods: ['DELETE'], scopes: ['forms:admin'] },
]

const start = (t: Test) => runApp(t, { routes: ROUTES, clock: manualClock(T0_MS) })
const mint = async (scope: string) => (await testKeys()).mint({ scope }, { nowS: T0_S })

t.test('POST overridden to DELETE, token for POST only → 403 insufficient_scope for DELETE, upstream untouched', async (t) => {
  const lapse = await start(t)
  const token = await mint('orders:write')
  const plain = await sendAudited(lapse, '/orders/1', { method: 'POST', headers: [bearer(token)] })
  t.equal(plain.res.status, 200, 'the same POST without the override is allowed')
  for (const [name, value] of [
    ['X-HTTP-Method-Override', 'DELETE'],
    ['X-HTTP-Method', 'DELETE'],
    ['X-Method-Override', 'delete'],
    ['x-http-method-override', 'POST, DELETE'],
  ]) {
    const { res, audit } = await sendAudited(lapse, '/orders/1', { method: 'POST', headers: [bearer(token), [name!, value!]] })
    assertDenied(t, lapse, res, audit, {
      status: 403,
      challenge: CHALLENGE.insufficientScope('orders:delete'),
      error: 'insufficient_scope',
      reason: 'insufficient_scope',
      token,
      upstreamCalls: 1,
    })
  }
})

t.test("a token holding every named method's scopes → allowed, forwarded as sent, override header intact", async (t) => {
  const lapse = await start(t)
  const { res, audit } = await sendAudited(lapse, '/orders/1', {
    method: 'POST',
    headers: [bearer(await mint('orders:write orders:delete')), ['X-HTTP-Method-Override', 'DELETE']],
  })
  t.equal(res.status, 200)
  t.equal(audit.decision, 'allow')
  t.equal(lapse.upstream.calls, 1)
  const got = lapse.upstream.requests[0]!
  t.equal(got.method, 'POST', 'the method is forwarded as sent')
  t.equal(got.headers['x-http-method-override'], 'DELETE', 'the override is forwarded unchanged')
})

t.test('_method in the query is an override too, in every spelling an upstream reads as one', async (t) => {
  const lapse = await start(t)
  const token = await mint('orders:write')
  for (const query of [
    '_method=DELETE',
    'a=1&_method=delete',
    'a=1;_method=DELETE',
    '%5Fmethod=DELETE',
    '_method=POST&_method=DELETE',
    '.method=DELETE',
    '_method[]=DELETE',
    '_method=%44ELETE',
  ]) {
    const { res, audit } = await sendAudited(lapse, `/orders/1?${query}`, { method: 'POST', headers: [bearer(token)] })
    assertDenied(t, lapse, res, audit, {
      status: 403,
      challenge: CHALLENGE.insufficientScope('orders:delete'),
      error: 'insufficient_scope',
      reason: 'insufficient_scope',
      token,
    })
  }
  const both = await sendAudited(lapse, '/orders/1?a=1&_method=DELETE', {
    method: 'POST',
    headers: [bearer(await mint('orders:write orders:delete'))],
  })
  t.equal(both.res.status, 200, 'allowed with both scopes')
  t.equal(lapse.upstream.requests[0]?.url, '/orders/1?a=1&_method=DELETE', 'the query is forwarded unchanged')
})

t.test('header names that fold to an override name are overrides', async (t) => {
  const lapse = await start(t)
  const token = await mint('orders:write')
  for (const name of ['X_HTTP_Method_Override', 'x.http.method', 'X-Method_Override', 'x~http~method']) {
    const { res, audit } = await sendAudited(lapse, '/orders/1', { method: 'POST', headers: [bearer(token), [name, 'DELETE']] })
    assertDenied(t, lapse, res, audit, {
      status: 403,
      challenge: CHALLENGE.insufficientScope('orders:delete'),
      error: 'insufficient_scope',
      reason: `insufficient_scope`,
      token,
    })
  }
})

t.test('an override naming no valid method → 400 invalid_request, upstream untouched', async (t) => {
  const lapse = await start(t)
  const token = await mint('orders:write orders:delete')
  const cases: Array<[string, Array<[string, string]>]> = [
    ['/orders/1', [['X-HTTP-Method-Override', 'DEL ETE']]],
    ['/orders/1', [['X-HTTP-Method', 'DELETE, GE(T']]],
    [
      '/orders/1',
      [
        ['X-Method-Override', 'DELETE'],
        ['X-Method-Override', 'PUT/1'],
      ],
    ],
    ['/orders/1?_method=DEL%20ETE', []],
    ['/orders/1?_method=%FF', []],
  ]
  for (const [path, headers] of cases) {
    const { res, audit } = await sendAudited(lapse, path, { method: 'POST', headers: [bearer(token), ...headers] })
    assertDenied(t, lapse, res, audit, {
      status: 400,
      challenge: CHALLENGE.invalidRequest,
      error: 'invalid_request',
      reason: 'invalid_request',
      token,
    })
    t.equal(res.json().error_description, 'invalid method override')
  }
})

t.test('a public rule for the method sent does not make an override to a protected method public', async (t) => {
  const lapse = await start(t)
  const open = await sendAudited(lapse, '/forms/1', { method: 'POST' })
  t.equal(open.res.status, 200, 'the public POST itself needs no token')
  const anonymous = await sendAudited(lapse, '/forms/1', { method: 'POST', headers: [['X-HTTP-Method-Override', 'DELETE']] })
  assertDenied(t, lapse, anonymous.res, anonymous.audit, {
    status: 401,
    challenge: CHALLENGE.bare,
    error: 'unauthorized',
    reason: 'missing_token',
    upstreamCalls: 1,
  })
  const token = await mint('orders:write')
  const short = await sendAudited(lapse, '/forms/1?_method=DELETE', { method: 'POST', headers: [bearer(token)] })
  assertDenied(t, lapse, short.res, short.audit, {
    status: 403,
    challenge: CHALLENGE.insufficientScope('forms:admin'),
    error: 'insufficient_scope',
    reason: 'insufficient_scope',
    token,
    upstreamCalls: 1,
  })
  const allowed = await sendAudited(lapse, '/forms/1?_method=DELETE', { method: 'POST', headers: [bearer(await mint('forms:admin'))] })
  t.equal(allowed.res.status, 200, "allowed with the DELETE rule's scope")
})

t.test('an override to a method no rule covers → 403 no_route', async (t) => {
  const lapse = await start(t)
  const token = await mint('orders:write orders:delete orders:read')
  const { res, audit } = await sendAudited(lapse, '/orders/1', {
    method: 'POST',
    headers: [bearer(token), ['X-HTTP-Method-Override', 'PATCH']],
  })
  assertDenied(t, lapse, res, audit, { status: 403, challenge: undefined, error: 'forbidden', reason: 'no_route', token })
})

t.test('HEAD on a rule for GET is decided by that rule', async (t) => {
  const lapse = await start(t)
  const token = await mint('orders:read')
  const { res, audit } = await sendAudited(lapse, '/orders/1', { method: 'HEAD', headers: [bearer(token)] })
  t.equal(res.status, 200)
  t.equal(audit.decision, 'allow')
  t.equal(lapse.upstream.requests[0]?.method, 'HEAD')
  const short = await sendAudited(lapse, '/orders/1', { method: 'HEAD', headers: [bearer(await mint('orders:write'))] })
  t.equal(short.res.status, 403, 'and needs its scopes')
  t.equal(short.audit.reason, 'insufficient_scope')
  t.equal(lapse.upstream.calls, 1)
})
