import { connect } from 'node:net'
import { SpanStatusCode } from '@opentelemetry/api'
import t, { type Test } from 'tap'
import type { ConnectionRegistry } from '../../src/connections/connections.js'
import { manualClock } from '../../src/core/clock.js'
import { createApp } from '../../src/http/server.js'
import { decisions, runApp, waitFor, type Lapse } from '../fixtures/app.js'
import { newKeyPair, testKeys } from '../fixtures/keys.js'
import { GUARDED_ROUTES, rawHttp, sleep, T0_MS, T0_S } from '../hardening/helpers.js'
import { inMemoryTelemetry, newTraceparent, type MemoryTelemetry } from '../telemetry/in-memory.js'
import { startSlowJwks } from '../fixtures/slow-jwks.js'

const WS = 'Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n'

async function start(t: Test, env: Record<string, string> = {}): Promise<{ lapse: Lapse; mem: MemoryTelemetry }> {
  const mem = inMemoryTelemetry(t)
  const lapse = await runApp(t, { routes: GUARDED_ROUTES, clock: manualClock(T0_MS), telemetry: mem.telemetry, env })
  return { lapse, mem }
}

/** The one audit line and the one span of the trace, once the exchange has ended, checked together. */
async function expectEnded(
  t: Test,
  lapse: Lapse,
  mem: MemoryTelemetry,
  traceId: string,
  want: { status: number; answer: string },
  what: string,
) {
  const span = await mem.authorizeSpan(traceId)
  t.equal(span.attributes['http.response.status_code'], want.status, `${what}: the span has the status`)
  const line = await waitFor(() => decisions(lapse).find((l) => l.trace_id === traceId), `${what}: the audit line`)
  t.match(line, { status: want.status, answer: want.answer }, `${what}: the audit line names the answer`)
  // Long enough for a second close to be seen: finish() is idempotent.
  await sleep(200)
  t.equal(decisions(lapse).filter((l) => l.trace_id === traceId).length, 1, `${what}: exactly one audit line`)
  t.equal(
    mem.spans().filter((s) => s.name === 'lapse.authorize' && s.spanContext().traceId === traceId).length,
    1,
    `${what}: exactly one span`,
  )
}

t.test('a transfer coding Lapse cannot undo → 501 with an audit line and a span, for requests and upgrades alike', async (t) => {
  const { lapse, mem } = await start(t)
  const req = newTraceparent()
  const res = await rawHttp(
    lapse.url,
    `POST /public/upload HTTP/1.1\r\nHost: lapse.test\r\ntraceparent: ${req.header[1]}\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n`,
  )
  t.equal(res.status, 501)
  t.match(res.head, /cache-control: no-store/i, 'no-store, as every JSON answer')
  await expectEnded(t, lapse, mem, req.traceId, { status: 501, answer: 'unsupported_transfer_coding' }, 'a request')

  const up = newTraceparent()
  const ws = await rawHttp(
    lapse.url,
    `GET /public/ws HTTP/1.1\r\nHost: lapse.test\r\ntraceparent: ${up.header[1]}\r\n${WS}Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n`,
  )
  t.equal(ws.status, 501)
  t.match(ws.head, /cache-control: no-store/i, 'written raw: no-store too')
  t.same(JSON.parse(ws.body), { error: 'not_implemented', error_description: 'only the chunked transfer coding is accepted' })
  await expectEnded(t, lapse, mem, up.traceId, { status: 501, answer: 'unsupported_transfer_coding' }, 'an upgrade')
  t.equal(lapse.upstream.calls, 0, 'the upstream was not reached')
})

t.test(
  'at the highest field limit, an unproxied upgrade of 1,000 fields is served like the same request, and 1,001 → 431 with an audit line and a span',
  async (t) => {
    const { lapse, mem } = await start(t, { LAPSE_MAX_HEADER_FIELDS: '1000', LAPSE_MAX_HEADER_BYTES: '65536' })
    // Host, traceparent, Connection, Upgrade, Content-Length and the padding.
    const head = (tp: string, padding: number) =>
      `POST /public/x HTTP/1.1\r\nHost: x\r\ntraceparent: ${tp}\r\nConnection: Upgrade\r\nUpgrade: foo\r\n${'a:\r\n'.repeat(padding)}Content-Length: 0\r\n\r\n`
    const at = await rawHttp(lapse.url, head(newTraceparent().header[1], 995))
    t.equal(at.status, 200, '1,000 fields: Node kept them all, so the request is replayed and served')
    t.equal(lapse.upstream.calls, 1)

    const tp = newTraceparent()
    const over = await rawHttp(lapse.url, head(tp.header[1], 996))
    t.equal(over.status, 431)
    t.match(over.head, /cache-control: no-store/i)
    t.same(JSON.parse(over.body), { error: 'invalid_request', error_description: 'too many header fields' })
    const span = await mem.authorizeSpan(tp.traceId)
    t.equal(span.attributes['http.response.status_code'], 431, 'the span has the status')
    const line = await waitFor(() => decisions(lapse).find((l) => l.trace_id === tp.traceId), 'the audit line')
    t.match(line, { status: 431, reason: 'too_many_header_fields' })
    t.equal(lapse.upstream.calls, 1, 'the refused one was not forwarded')
  },
)

t.test("the parser's refusals carry the same JSON answer, no-store included", async (t) => {
  const { lapse } = await start(t)
  const res = await rawHttp(lapse.url, 'POST /public/x HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab')
  t.equal(res.status, 400)
  t.match(res.head, /cache-control: no-store/i)
  t.same(JSON.parse(res.body), { error: 'invalid_request', error_description: 'malformed HTTP request' })
  t.equal(lapse.upstream.calls, 0)
})

t.test(
  'a client that leaves while its request is decided: the upstream is never asked, one audit line says client_closed, nothing stays registered',
  async (t) => {
    const keys = await testKeys()
    const old = keys.pairs.ES256
    const rotated = await newKeyPair('ES256', 'rotated')
    const jwks = await startSlowJwks(t, [old], [old, rotated], 400)
    const clock = manualClock(T0_MS)
    const lapse = await runApp(t, { clock, env: { LAPSE_JWKS_FILE: undefined, LAPSE_JWKS_URL: jwks.url, LAPSE_JWKS_COOLDOWN: '1' } })
    await waitFor(() => lapse.running.deps.keys.ready(), 'the first JWKS fetch')
    // Past the unknown-kid cooldown, so the new kid triggers a refetch.
    clock.advance(2000)
    // Signed by a key the issuer has just published: its decision waits for the (slow) refetch.
    const token = await keys.mint({}, { nowS: T0_S, pair: rotated })

    const client = connect(Number(new URL(lapse.url).port), '127.0.0.1')
    client.on('error', () => {})
    await new Promise<void>((r) => client.once('connect', r))
    client.write(`GET /orders/1 HTTP/1.1\r\nHost: lapse.test\r\nAuthorization: Bearer ${token}\r\n\r\n`)
    await waitFor(() => jwks.hits() === 2, 'the refetch to start')
    client.resetAndDestroy()
    await sleep(600)

    t.equal(lapse.upstream.calls, 0, 'the upstream never saw the request')
    const lines = decisions(lapse)
    t.equal(lines.length, 1, 'one audit line')
    t.match(lines[0], { decision: 'allow', reason: 'ok', path: '/orders/1', client_closed: true }, 'with the decision, and the client gone')
    t.notOk('status' in lines[0]!, 'no status: no answer reached anyone')
    t.equal((lapse.running.deps.connections as ConnectionRegistry).size, 0, 'nothing left in the connection registry')
  },
)

t.test(
  'an exception inside Lapse after an allow → 500 internal_error, one audit line, a fault on the span, nothing left registered',
  async (t) => {
    const { lapse, mem } = await start(t)
    // The same Lapse, its upstream side broken: a Forwarder that throws, as a bug in it would.
    const boom = () => {
      throw new Error('a bug in the forwarder')
    }
    const broken = createApp({ ...lapse.running.deps, forwarder: { web: boom, ws: boom, close() {} } })
    const at = await broken.listen()
    t.teardown(() => broken.close())
    const url = `http://127.0.0.1:${at.port}`
    const token = await (await testKeys()).mint({ scope: 'orders:read' }, { nowS: T0_S })

    const req = newTraceparent()
    const res = await rawHttp(
      url,
      `GET /orders/1 HTTP/1.1\r\nHost: lapse.test\r\ntraceparent: ${req.header[1]}\r\nAuthorization: Bearer ${token}\r\n\r\n`,
    )
    t.equal(res.status, 500)
    t.same(JSON.parse(res.body), { error: 'internal_error', error_description: 'internal error' })
    await expectEnded(t, lapse, mem, req.traceId, { status: 500, answer: 'internal_error' }, 'a request')
    const span = await mem.authorizeSpan(req.traceId)
    t.equal(span.status.code, SpanStatusCode.ERROR, 'a fault')
    t.equal(span.attributes['error.type'], 'internal_error')

    const up = newTraceparent()
    const ws = await rawHttp(
      url,
      `GET /orders/live HTTP/1.1\r\nHost: lapse.test\r\ntraceparent: ${up.header[1]}\r\nAuthorization: Bearer ${token}\r\n${WS}\r\n`,
    )
    t.equal(ws.status, 500)
    await expectEnded(t, lapse, mem, up.traceId, { status: 500, answer: 'internal_error' }, 'an upgrade')

    // Past the tick that registers a response still open (http/exchange.ts YoungExchanges).
    await sleep(250)
    t.equal((lapse.running.deps.connections as ConnectionRegistry).size, 0, 'nothing left in the connection registry')
    t.equal(lapse.upstream.calls, 0)
  },
)
