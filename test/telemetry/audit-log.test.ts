// The audit log: one JSON line per decision and per revocation change, with the fields an SRE
// needs to go from a line to its trace; allows as LAPSE_LOG_ALLOWS says, denials always.
import net from 'node:net'
import t from 'tap'
import { freePort } from '../fixtures/redis-server.js'
import { manualClock } from '../../src/core/clock.js'
import { ADMIN_TOKEN, bearer, decisions, runApp, send, waitFor } from '../fixtures/app.js'
import { startUpstream } from '../fixtures/upstream.js'
import { testKeys } from '../fixtures/keys.js'
import { startReal } from './harness.js'
import { inMemoryTelemetry, newTraceparent } from './in-memory.js'

const T0_MS = Date.parse('2030-01-01T00:00:00Z')
const T0_S = T0_MS / 1000
const ROUTES = [{ path: '/orders/**', methods: ['GET'], scopes: ['orders:read'] }]
const mint = async (claims: Record<string, unknown> = {}) => (await testKeys()).mint(claims, { nowS: T0_S })

t.test('a decision line carries time, trace and span ids, decision, reason, route, request, identity and latency', async (t) => {
  const mem = inMemoryTelemetry(t)
  const lapse = await runApp(t, { routes: ROUTES, clock: manualClock(T0_MS), telemetry: mem.telemetry })
  const tp = newTraceparent()
  await send(`${lapse.url}/orders/42?x=1`, {
    headers: [tp.header, bearer(await mint({ sub: 'ci-deployer', client_id: 'deploy-bot', jti: 'tok-1' }))],
  })
  const line = await waitFor(() => decisions(lapse)[0], 'the decision line')
  const span = await mem.authorizeSpan(tp.traceId)
  // The documented head, whatever format the logger handed in gives its own lines (docs/telemetry.md).
  t.match(line, {
    level: 'info',
    time: /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/,
    service: 'lapse',
    audit: 'decision',
    msg: 'decision',
    trace_id: tp.traceId,
    span_id: span.spanContext().spanId,
    decision: 'allow',
    reason: 'ok',
    route: '/orders/**',
    method: 'GET',
    path: '/orders/42',
    status: 200,
    sub: 'ci-deployer',
    client_id: 'deploy-bot',
    jti: 'tok-1',
    iat: T0_S,
    exp: T0_S + 300,
    remote: '127.0.0.1',
    latency_ms: Number,
  })
  t.notOk(JSON.stringify(line).includes('x=1'), 'no query string: it may carry anything')
})

t.test('LAPSE_LOG_ALLOWS=none: allows are not logged, denials are', async (t) => {
  const lapse = await runApp(t, { routes: ROUTES, clock: manualClock(T0_MS), env: { LAPSE_LOG_ALLOWS: 'none' } })
  await send(`${lapse.url}/orders/1`, { headers: [bearer(await mint())] })
  await send(`${lapse.url}/orders/1`)
  await send(`${lapse.url}/orders/2`, { headers: [bearer(await mint())] })
  await waitFor(() => decisions(lapse).length >= 1, 'the denial line')
  await send(`${lapse.url}/orders/3`) // a second denial, as a fence: lines are written in order
  await waitFor(() => decisions(lapse).length >= 2, 'the second denial line')
  t.same(
    decisions(lapse).map((l) => l.reason),
    ['missing_token', 'missing_token'],
  )
})

t.test('LAPSE_LOG_ALLOWS=sampled: the sample rate decides for allows; denials always', async (t) => {
  for (const [rate, allows] of [
    ['0', 0],
    ['1', 2],
  ] as const) {
    const lapse = await runApp(t, {
      routes: ROUTES,
      clock: manualClock(T0_MS),
      env: { LAPSE_LOG_ALLOWS: 'sampled', LAPSE_LOG_ALLOWS_SAMPLE_RATE: rate },
    })
    await send(`${lapse.url}/orders/1`, { headers: [bearer(await mint())] })
    await send(`${lapse.url}/orders/2`, { headers: [bearer(await mint())] })
    await send(`${lapse.url}/orders/3`)
    await waitFor(() => decisions(lapse).some((l) => l.decision === 'deny'), 'the denial line')
    if (allows) await waitFor(() => decisions(lapse).filter((l) => l.decision === 'allow').length === allows, 'the allow lines')
    t.equal(decisions(lapse).filter((l) => l.decision === 'allow').length, allows, `rate ${rate}: ${allows} allow lines`)
    await lapse.close()
  }
})

t.test('an allow that failed open is always logged, even with LAPSE_LOG_ALLOWS=none', async (t) => {
  const port = await freePort() // nothing listens there
  const lapse = await runApp(t, {
    routes: [{ path: '/orders/**', scopes: ['orders:read'], on_revocation_unavailable: 'open' }],
    clock: manualClock(T0_MS),
    env: { LAPSE_LOG_ALLOWS: 'none', LAPSE_REDIS_URL: `redis://127.0.0.1:${port}` },
  })
  t.equal((await send(`${lapse.url}/orders/1`, { headers: [bearer(await mint())] })).status, 200)
  const line = await waitFor(() => decisions(lapse)[0], 'the failed-open line')
  t.match(line, { decision: 'allow', reason: 'ok', failed_open: true })
})

t.test('LAPSE_LOG_LEVEL=warn quiets operational lines, not the audit trail', async (t) => {
  const lapse = await startReal(t, { OTEL_SDK_DISABLED: 'true', LAPSE_LOG_LEVEL: 'warn' }, { logLevel: 'warn' })
  const token = await (await testKeys()).mint()
  await send(`${lapse.url}/orders/1`)
  await send(`${lapse.url}/orders/1`, { headers: [bearer(token)] })
  await waitFor(() => lapse.lines().filter((l) => l.audit === 'decision').length === 2, 'both decision lines')
  t.notOk(
    lapse.lines().some((l) => l.msg === 'lapse is listening'),
    'info-level operational lines are quiet',
  )
})

t.test('revocation changes are audit lines too', async (t) => {
  const lapse = await runApp(t, { routes: ROUTES, clock: manualClock(T0_MS) })
  const headers = { authorization: `Bearer ${ADMIN_TOKEN}`, 'content-type': 'application/json' }
  t.equal(
    (
      await fetch(`${lapse.adminUrl}/v1/revocations`, {
        method: 'POST',
        headers,
        body: JSON.stringify({ claim: 'sub', value: 'contractor-7', reason: 'offboarded' }),
      })
    ).status,
    201,
  )
  t.equal((await fetch(`${lapse.adminUrl}/v1/revocations/sub/contractor-7`, { method: 'DELETE', headers })).status, 204)
  const lines = await waitFor(() => {
    const l = lapse.lines.filter((x) => x.audit === 'revocation')
    return l.length === 2 ? l : undefined
  }, 'two revocation lines')
  t.match(lines[0], { action: 'revoke', claim: 'sub', value: 'contractor-7', reason: 'offboarded', by: 'admin' })
  t.match(lines[1], { action: 'lift', claim: 'sub', value: 'contractor-7' })
  t.notOk('trace_id' in lines[0]! || 'trace_id' in lines[1]!, 'telemetry off and no traceparent: no trace id')
})

t.test(
  "a revocation change is a lapse.revocation.change span, child of the caller's trace, and its line carries the trace id",
  async (t) => {
    const mem = inMemoryTelemetry(t)
    const lapse = await runApp(t, { routes: ROUTES, clock: manualClock(T0_MS), telemetry: mem.telemetry })
    const base = { authorization: `Bearer ${ADMIN_TOKEN}`, 'content-type': 'application/json' }
    const [revoke, lift, missing] = [newTraceparent(), newTraceparent(), newTraceparent()]
    const body = JSON.stringify({ claim: 'sub', value: 'contractor-7', iss: 'https://issuer.test', reason: 'offboarded' })
    t.equal(
      (await fetch(`${lapse.adminUrl}/v1/revocations`, { method: 'POST', headers: { ...base, traceparent: revoke.header[1] }, body }))
        .status,
      201,
    )
    t.equal(
      (
        await fetch(`${lapse.adminUrl}/v1/revocations/sub/contractor-7?iss=https://issuer.test`, {
          method: 'DELETE',
          headers: { ...base, traceparent: lift.header[1] },
        })
      ).status,
      204,
    )
    t.equal(
      (
        await fetch(`${lapse.adminUrl}/v1/revocations/sub/nobody`, {
          method: 'DELETE',
          headers: { ...base, traceparent: missing.header[1] },
        })
      ).status,
      404,
    )

    const lines = await waitFor(() => {
      const l = lapse.lines.filter((x) => x.audit === 'revocation')
      return l.length === 2 ? l : undefined
    }, 'two revocation lines')
    for (const [i, tp, action] of [
      [0, revoke, 'revoke'],
      [1, lift, 'lift'],
    ] as const) {
      const [span] = (await mem.spansOf(tp.traceId, 'lapse.revocation.change')).filter((s) => s.name === 'lapse.revocation.change')
      t.equal(span?.parentSpanContext?.spanId, tp.parentSpanId, `${action}: the span is a child of the caller's span`)
      t.same(
        span?.attributes,
        {
          'lapse.revocation.action': action,
          'lapse.revocation.claim': 'sub',
          'lapse.revocation.value': 'contractor-7',
          'lapse.revocation.iss': 'https://issuer.test',
          'lapse.revocation.by': 'admin',
        },
        `${action}: the span says what changed and who changed it`,
      )
      t.equal(span?.status.code, 0, `${action}: not a fault`)
      t.match(lines[i], { action, trace_id: tp.traceId, span_id: span?.spanContext().spanId }, `${action}: the line leads to the span`)
    }
    const [nothing] = await mem.spansOf(missing.traceId, 'lapse.revocation.change')
    t.equal(nothing?.status.code, 0, 'lifting nothing: the span ends, not as a fault')
    t.equal(lapse.lines.filter((x) => x.audit === 'revocation').length, 2, 'and writes no line: nothing changed')
  },
)

t.test("telemetry off: a revocation line still names the caller's trace", async (t) => {
  const lapse = await runApp(t, { routes: ROUTES, clock: manualClock(T0_MS) })
  const tp = newTraceparent()
  const headers = { authorization: `Bearer ${ADMIN_TOKEN}`, 'content-type': 'application/json', traceparent: tp.header[1] }
  t.equal(
    (
      await fetch(`${lapse.adminUrl}/v1/revocations`, {
        method: 'POST',
        headers,
        body: JSON.stringify({ claim: 'jti', value: 'tok-9', reason: 'leaked' }),
      })
    ).status,
    201,
  )
  const line = await waitFor(() => lapse.lines.find((x) => x.audit === 'revocation'), 'the revocation line')
  t.match(line, { action: 'revoke', trace_id: tp.traceId, span_id: tp.parentSpanId })
})

t.test('a revocation write the set does not acknowledge: the span ends as a fault, with no audit line', async (t) => {
  const port = await freePort() // nothing listens there
  const mem = inMemoryTelemetry(t)
  const lapse = await runApp(t, {
    routes: ROUTES,
    clock: manualClock(T0_MS),
    telemetry: mem.telemetry,
    env: { LAPSE_REDIS_URL: `redis://127.0.0.1:${port}` },
  })
  const tp = newTraceparent()
  const headers = { authorization: `Bearer ${ADMIN_TOKEN}`, 'content-type': 'application/json', traceparent: tp.header[1] }
  t.equal(
    (
      await fetch(`${lapse.adminUrl}/v1/revocations`, {
        method: 'POST',
        headers,
        body: JSON.stringify({ claim: 'sub', value: 'x', reason: 'r' }),
      })
    ).status,
    503,
  )
  const [span] = await mem.spansOf(tp.traceId, 'lapse.revocation.change')
  t.equal(span?.status.code, 2, 'an error status')
  t.equal(span?.attributes['error.type'], 'ERR_REVOCATION_UNAVAILABLE')
  t.notOk(
    lapse.lines.some((x) => x.audit === 'revocation'),
    'no audit line: nothing changed',
  )
})

t.test('a client that leaves before any answer: the line has no status and says client_closed; the span no status code', async (t) => {
  const mem = inMemoryTelemetry(t)
  // An upstream that answers HTTP after 2 s and never answers an upgrade.
  const upstream = await startUpstream((_req, res) => {
    setTimeout(() => res.writeHead(200).end('late'), 2000).unref()
  })
  let upgrades = 0
  upstream.server.on('upgrade', () => {
    upgrades++
  })
  t.teardown(() => upstream.close())
  const lapse = await runApp(t, { routes: [{ path: '/orders/**' }], clock: manualClock(T0_MS), telemetry: mem.telemetry, upstream })
  const token = await mint({ sub: 'leaver' })
  const port = Number(new URL(lapse.url).port)
  // Sends a request head and leaves once the upstream has it, before any answer.
  const leave = async (head: string, tp: { header: [string, string] }, reached: () => boolean) => {
    const socket = net.connect(port, '127.0.0.1')
    await new Promise((resolve) => socket.once('connect', resolve))
    socket.write(`${head}traceparent: ${tp.header[1]}\r\nAuthorization: Bearer ${token}\r\n\r\n`)
    await waitFor(() => reached() || undefined, 'the request to reach the upstream')
    // A reset, not a FIN: a half-closed client may still be waiting for its answer (HTTP/1.1
    // allows it), so Lapse waits too, up to LAPSE_UPSTREAM_TIMEOUT, and answers it then.
    socket.resetAndDestroy()
  }
  const http = newTraceparent()
  await leave('GET /orders/1 HTTP/1.1\r\nHost: x\r\n', http, () => upstream.calls === 1)
  const ws = newTraceparent()
  await leave(
    'GET /orders/live HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n',
    ws,
    () => upgrades === 1,
  )
  for (const [what, tp] of [
    ['HTTP', http],
    ['WebSocket upgrade', ws],
  ] as const) {
    const line = await waitFor(() => decisions(lapse).find((l) => l.trace_id === tp.traceId), `the ${what} line`)
    t.match(line, { decision: 'allow', client_closed: true }, `${what}: the line says the client left`)
    t.notOk('status' in line, `${what}: and claims no status it never sent`)
    const span = await mem.authorizeSpan(tp.traceId)
    t.equal(span.attributes['http.response.status_code'], undefined, `${what}: the span has no status code`)
    t.equal(span.status.code, 0, `${what}: not a fault`)
  }
})
