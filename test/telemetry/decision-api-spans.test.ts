// A decision request is traced like a proxied one: one lapse.authorize span, child of the front
// proxy's traceparent, with the original request's method and normalized path, and the decision.
import t from 'tap'
import { manualClock } from '../../src/core/clock.js'
import { bearer, runApp, send } from '../fixtures/app.js'
import { defaultClaims, testKeys } from '../fixtures/keys.js'
import { GUARDED_ROUTES, T0_MS, T0_S } from '../hardening/helpers.js'
import { inMemoryTelemetry, newTraceparent } from './in-memory.js'

const mint = async (over: Record<string, unknown> = {}) => (await testKeys()).mint({ ...defaultClaims(T0_S), ...over }, { nowS: T0_S })

t.test("the span carries the original method and path, the decision and the status; its parent is the front proxy's trace", async (t) => {
  const mem = inMemoryTelemetry(t)
  const lapse = await runApp(t, {
    routes: GUARDED_ROUTES,
    clock: manualClock(T0_MS),
    telemetry: mem.telemetry,
    env: { LAPSE_DECISION_LISTEN: '127.0.0.1:0', LAPSE_UPSTREAM: undefined },
  })
  const token = await mint()

  const allowed = newTraceparent()
  const a = await send(`${lapse.decisionUrl}/v1/decide/nginx`, {
    headers: [allowed.header, bearer(token), ['x-original-method', 'DELETE'], ['x-original-uri', '/orders/%37?x=1']],
  })
  t.equal(a.status, 200)
  const span = await mem.authorizeSpan(allowed.traceId)
  t.equal(span.parentSpanContext?.spanId, allowed.parentSpanId, 'child of the incoming traceparent')
  t.match(span.attributes, {
    'http.request.method': 'DELETE',
    'url.path': '/orders/7',
    'lapse.decision': 'allow',
    'lapse.reason': 'ok',
    'http.route': '/orders/**',
    'http.response.status_code': 200,
    'enduser.id': 'ci-deployer',
  })

  const denied = newTraceparent()
  const expired = await mint({ iat: T0_S - 400, exp: T0_S - 100 })
  const d = await send(`${lapse.decisionUrl}/v1/decide/envoy/orders/1`, { method: 'PATCH', headers: [denied.header, bearer(expired)] })
  t.equal(d.status, 401)
  const deny = await mem.authorizeSpan(denied.traceId)
  t.match(deny.attributes, {
    'http.request.method': 'PATCH',
    'url.path': '/orders/1',
    'lapse.decision': 'deny',
    'lapse.reason': 'expired',
    'http.response.status_code': 401,
  })
  t.equal(deny.status.code, 0, 'a denial is an expected outcome: status UNSET')

  const points = await mem.points('lapse.decisions')
  t.ok(
    points.some((p) => p.attributes['lapse.reason'] === 'expired'),
    'the decision is counted in lapse.decisions',
  )
})
