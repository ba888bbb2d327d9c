// LAPSE_UPSTREAM_TIMEOUT bounds a WebSocket upgrade until the upstream's 101 head is complete,
// however slowly it arrives: an upstream that trickles its head a byte at a time gets the client
// a 504 at the deadline, not an answer at the token's expiry.
import { createServer, type Socket } from 'node:net'
import t, { type Test } from 'tap'
import { manualClock } from '../../src/core/clock.js'
import { decisions, runApp, waitFor } from '../fixtures/app.js'
import { testKeys } from '../fixtures/keys.js'
import { rawHttp } from '../hardening/helpers.js'
import { inMemoryTelemetry } from '../telemetry/in-memory.js'
import { openClient, sleep, startLongLivedUpstream } from './upstream.js'

const T0 = Date.parse('2030-01-01T00:00:00Z')
const TIMEOUT_MS = 500
// The deadline timer fires on time; the rest is loopback and the event loop.
const LATE_MS = 700

/** A raw upstream that starts a 101 at once and then sends one more header byte every `everyMs`. */
async function startTrickler(t: Test, everyMs: number) {
  const sockets = new Set<Socket>()
  let closed = 0
  const server = createServer((s) => {
    sockets.add(s)
    s.on('error', () => {})
    s.once('close', () => {
      sockets.delete(s)
      closed++
    })
    s.once('data', () => {
      s.write('HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nX-Slow: ')
      const timer = setInterval(() => (s.destroyed ? clearInterval(timer) : s.write('a')), everyMs)
      s.once('close', () => clearInterval(timer))
    })
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(() => {
    for (const s of sockets) s.destroy()
    server.close()
  })
  return {
    url: `http://127.0.0.1:${(server.address() as { port: number }).port}`,
    get open() {
      return sockets.size
    },
    get closed() {
      return closed
    },
  }
}

const upgrade = (token: string) =>
  `GET /orders/live HTTP/1.1\r\nHost: lapse.test\r\nAuthorization: Bearer ${token}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n` +
  'Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n'

t.test(
  'an upstream trickling its 101 head → 504 upstream_timeout at the deadline, both sides closed, audit line and span say so',
  async (t) => {
    const keys = await testKeys()
    const clock = manualClock(T0)
    const mem = inMemoryTelemetry(t)
    const trickler = await startTrickler(t, 100)
    const lapse = await runApp(t, {
      clock,
      telemetry: mem.telemetry,
      env: { LAPSE_UPSTREAM: trickler.url, LAPSE_UPSTREAM_TIMEOUT: String(TIMEOUT_MS) },
    })
    // The token is good for an hour: only the upgrade deadline can end this wait.
    const token = await keys.mint({ exp: T0 / 1000 + 3600 }, { nowS: T0 / 1000 })

    const res = await rawHttp(lapse.url, upgrade(token), TIMEOUT_MS + 3000)
    t.equal(res.status, 504, 'the client gets 504, not the trickled 101')
    t.ok(
      res.elapsedMs >= TIMEOUT_MS - 50 && res.elapsedMs < TIMEOUT_MS + LATE_MS,
      `answered at the deadline (${res.elapsedMs} ms, budget ${TIMEOUT_MS} ms)`,
    )
    t.ok(res.closedByServer, 'and the client connection is closed')
    t.match(JSON.parse(res.body), { error: 'gateway_timeout' })
    await waitFor(() => trickler.closed === 1 && trickler.open === 0, 'the upstream connection to be closed')

    const audit = await waitFor(() => decisions(lapse).at(-1), 'the audit line')
    t.match(audit, { decision: 'allow', reason: 'ok', status: 504, upstream_failure: 'upstream_timeout' })
    const span = await waitFor(() => mem.spans().find((s) => s.name === 'lapse.authorize'), 'the decision span')
    t.equal(span.attributes['http.response.status_code'], 504)
    t.equal(span.attributes['error.type'], 'upstream_timeout')
    t.equal(span.status.code, 2, 'span status ERROR')
  },
)

t.test('the deadline ends with the 101: a WebSocket answered in time stays open past it', async (t) => {
  const keys = await testKeys()
  const clock = manualClock(T0)
  const up = await startLongLivedUpstream(t)
  const lapse = await runApp(t, { upstream: up.upstream, clock, env: { LAPSE_UPSTREAM_TIMEOUT: String(TIMEOUT_MS) } })
  const client = await openClient(lapse.url, await keys.mint({}, { nowS: T0 / 1000 }))
  await sleep(TIMEOUT_MS * 2)
  t.equal(await client.echo('still here'), 'still here')
  client.ws.close(1000)
  const audit = await waitFor(() => decisions(lapse).at(-1), 'the audit line')
  t.match(audit, { decision: 'allow', status: 101 })
  t.notOk(audit.upstream_failure)
})
