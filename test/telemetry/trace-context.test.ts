// W3C trace context through Lapse: the decision span is a child of the caller's span, the upstream
// gets a traceparent whose parent is the decision span, the decision's I/O are child spans, and an
// audit line names its trace.
import { createServer } from 'node:http'
import { SpanStatusCode } from '@opentelemetry/api'
import pino from 'pino'
import t from 'tap'
import { manualClock } from '../../src/core/clock.js'
import { bearer, decisions, runApp, send, waitFor } from '../fixtures/app.js'
import { newKeyPair, testKeys } from '../fixtures/keys.js'
import { startTelemetry } from '../../src/telemetry/settings.js'
import { inMemoryTelemetry, newTraceparent } from './in-memory.js'

const T0_MS = Date.parse('2030-01-01T00:00:00Z')
const T0_S = T0_MS / 1000
const ROUTES = [{ path: '/orders/**', scopes: ['orders:read'] }]
const TRACEPARENT = /^00-([0-9a-f]{32})-([0-9a-f]{16})-(0[01])$/

const mint = async (claims: Record<string, unknown> = {}, opts: Parameters<Awaited<ReturnType<typeof testKeys>>['mint']>[1] = {}) =>
  (await testKeys()).mint(claims, { nowS: T0_S, ...opts })

t.test('a request with traceparent → child decision span; the upstream sees the same trace with the Lapse span as parent', async (t) => {
  const mem = inMemoryTelemetry(t)
  const lapse = await runApp(t, { routes: ROUTES, clock: manualClock(T0_MS), telemetry: mem.telemetry })
  const tp = newTraceparent()
  const res = await send(`${lapse.url}/orders/7`, { headers: [tp.header, ['tracestate', 'vendor=abc'], bearer(await mint())] })
  t.equal(res.status, 200)
  const span = await mem.authorizeSpan(tp.traceId)
  t.equal(span.spanContext().traceId, tp.traceId)
  t.equal(span.parentSpanContext?.spanId, tp.parentSpanId)

  const seen = lapse.upstream.requests[0]!.headers
  const m = TRACEPARENT.exec(String(seen.traceparent))
  t.ok(m, 'the upstream got a W3C traceparent')
  t.equal(m![1], tp.traceId, 'same trace id')
  t.equal(m![2], span.spanContext().spanId, 'parent = the decision span')
  t.not(m![2], tp.parentSpanId, "a new parent span id, not the caller's")
  t.equal(m![3], '01', 'sampled')
  t.equal(seen.tracestate, 'vendor=abc', 'tracestate carried on')

  const audit = await waitFor(() => decisions(lapse).at(-1), 'the audit line')
  t.equal(audit.trace_id, tp.traceId, 'the audit line leads to the trace')
  t.equal(audit.span_id, span.spanContext().spanId, 'and to the decision span')
})

t.test('a request without traceparent → a new root span, and the upstream joins its trace', async (t) => {
  const mem = inMemoryTelemetry(t)
  const lapse = await runApp(t, { routes: ROUTES, clock: manualClock(T0_MS), telemetry: mem.telemetry })
  t.equal((await send(`${lapse.url}/orders/7`, { headers: [bearer(await mint())] })).status, 200)
  const span = await waitFor(() => mem.spans().find((s) => s.name === 'lapse.authorize'), 'the decision span')
  t.equal(span.parentSpanContext, undefined, 'a root span')
  const m = TRACEPARENT.exec(String(lapse.upstream.requests[0]!.headers.traceparent))
  t.equal(m?.[1], span.spanContext().traceId)
  t.equal(m?.[2], span.spanContext().spanId)
})

t.test('a client-sent traceparent is replaced, never forwarded alongside ours', async (t) => {
  const mem = inMemoryTelemetry(t)
  const lapse = await runApp(t, { routes: ROUTES, clock: manualClock(T0_MS), telemetry: mem.telemetry })
  const tp = newTraceparent()
  await send(`${lapse.url}/orders/7`, { headers: [tp.header, bearer(await mint())] })
  const raw = lapse.upstream.requests[0]!.rawHeaders
  const names = raw.filter((_, i) => i % 2 === 0).map((n) => n.toLowerCase())
  t.equal(names.filter((n) => n === 'traceparent').length, 1, 'one traceparent header upstream')
})

t.test('the revocation lookup is a child span of the decision, with its answer', async (t) => {
  const mem = inMemoryTelemetry(t)
  const lapse = await runApp(t, { routes: ROUTES, clock: manualClock(T0_MS), telemetry: mem.telemetry })
  const tp = newTraceparent()
  await send(`${lapse.url}/orders/7`, { headers: [tp.header, bearer(await mint())] })
  const decision = await mem.authorizeSpan(tp.traceId)
  const lookup = (await mem.spansOf(tp.traceId, 'lapse.revocation.lookup')).find((s) => s.name === 'lapse.revocation.lookup')!
  t.equal(lookup.parentSpanContext?.spanId, decision.spanContext().spanId)
  t.equal(lookup.attributes['lapse.revocation.revoked'], false)
  t.equal(lookup.status.code, SpanStatusCode.UNSET)
})

t.test('a JWKS fetch caused by an unknown kid (key rotation) is a child span of the decision that waited for it', async (t) => {
  const keys = await testKeys()
  const rotated = await newKeyPair('ES256', 'rotated-in')
  let served = keys.jwks.keys
  let fetches = 0
  const jwks = createServer((_req, res) => {
    fetches++
    res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ keys: served }))
  })
  await new Promise<void>((resolve) => jwks.listen(0, '127.0.0.1', resolve))
  t.teardown(() => jwks.close())
  const clock = manualClock(T0_MS)
  const mem = inMemoryTelemetry(t)
  const lapse = await runApp(t, {
    routes: ROUTES,
    clock,
    telemetry: mem.telemetry,
    env: {
      LAPSE_JWKS_FILE: undefined,
      LAPSE_JWKS_URL: `http://127.0.0.1:${(jwks.address() as { port: number }).port}/jwks.json`,
      LAPSE_JWKS_COOLDOWN: '1',
    },
  })
  await waitFor(() => lapse.running.deps.keys.ready(), 'the first key set')
  const background = await waitFor(() => mem.spans().find((s) => s.name === 'lapse.jwks.fetch'), 'the background fetch span')
  t.equal(background.parentSpanContext, undefined, 'a background fetch is a trace of its own')

  served = [...keys.jwks.keys, rotated.publicJwk]
  clock.advance(5000) // past the unknown-kid cooldown
  const tp = newTraceparent()
  const res = await send(`${lapse.url}/orders/7`, { headers: [tp.header, bearer(await mint({}, { pair: rotated }))] })
  t.equal(res.status, 200, 'the rotated key was fetched and the token accepted')
  t.equal(fetches, 2)
  const decision = await mem.authorizeSpan(tp.traceId)
  const fetch = (await mem.spansOf(tp.traceId, 'lapse.jwks.fetch')).find((s) => s.name === 'lapse.jwks.fetch')!
  t.equal(fetch.parentSpanContext?.spanId, decision.spanContext().spanId, 'child of the decision span')
  t.equal(fetch.status.code, SpanStatusCode.UNSET)
})

t.test('a caller that is not sampled: nothing is recorded, the trace still reaches the upstream', async (t) => {
  const mem = inMemoryTelemetry(t)
  const lapse = await runApp(t, { routes: ROUTES, clock: manualClock(T0_MS), telemetry: mem.telemetry })
  const tp = newTraceparent()
  await send(`${lapse.url}/orders/7`, { headers: [['traceparent', `00-${tp.traceId}-${tp.parentSpanId}-00`], bearer(await mint())] })
  const m = TRACEPARENT.exec(String(lapse.upstream.requests[0]!.headers.traceparent))
  t.equal(m?.[1], tp.traceId, 'same trace')
  t.equal(m?.[3], '00', 'still not sampled')
  await waitFor(() => decisions(lapse).length === 1, 'the audit line')
  t.equal(mem.spans().length, 0, 'no span recorded')
})

// Twice: with the API's global no-op (an embedder that registered no SDK), and as the CLI runs
// with OTEL_SDK_DISABLED=true, where Lapse knows nothing records and skips the span work.
for (const how of ['no SDK registered', 'OTEL_SDK_DISABLED=true'] as const)
  t.test(`telemetry off (${how}): the caller's traceparent reaches the upstream unchanged, none is invented`, async (t) => {
    const telemetry =
      how === 'no SDK registered'
        ? undefined
        : await startTelemetry({ OTEL_SDK_DISABLED: 'true' }, { log: pino({ level: 'silent' }), clock: manualClock(T0_MS) })
    if (telemetry) t.equal(telemetry.tracing, false, 'Lapse knows nothing records')
    const lapse = await runApp(t, { routes: ROUTES, clock: manualClock(T0_MS), telemetry })
    const tp = newTraceparent()
    await send(`${lapse.url}/orders/7`, { headers: [tp.header, ['tracestate', 'vendor=abc'], bearer(await mint())] })
    await send(`${lapse.url}/orders/8`, { headers: [bearer(await mint())] })
    t.equal(lapse.upstream.requests[0]!.headers.traceparent, tp.header[1])
    t.equal(lapse.upstream.requests[1]!.headers.traceparent, undefined)
    const lines = await waitFor(() => (decisions(lapse).length === 2 ? decisions(lapse) : undefined), 'two audit lines')
    t.equal(lines[0]!.trace_id, tp.traceId, "the audit line still names the caller's trace")
    t.equal(lines[0]!.span_id, tp.parentSpanId, "and the caller's span")
    t.equal(lines[1]!.trace_id, undefined, 'no trace, no made-up id')
    t.equal(lapse.upstream.requests[0]!.headers.tracestate, 'vendor=abc', 'tracestate passed on')
    t.equal(lapse.upstream.requests[1]!.headers.tracestate, undefined, 'none invented')
  })
