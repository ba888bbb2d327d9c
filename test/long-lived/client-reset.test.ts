// Node hands an upgrading socket over without its own error handling: a client that resets the
// connection while Lapse decides or waits for the upstream must cost that connection only, never
// the process.
import { connect } from 'node:net'
import t from 'tap'
import { manualClock } from '../../src/core/clock.js'
import { bearer, decisions, runApp, send, waitFor } from '../fixtures/app.js'
import { testKeys } from '../fixtures/keys.js'
import { startUpstream } from '../fixtures/upstream.js'
import { sleep } from './upstream.js'

const T0_MS = Date.parse('2030-01-01T00:00:00Z')
const UPSTREAM_DELAY_MS = 300

t.test('a client that resets its WebSocket upgrade before the upstream answers → that connection ends, Lapse keeps serving', async (t) => {
  const upstream = await startUpstream()
  // Answers 101 only after a while, so the reset lands while Lapse waits for it.
  upstream.server.on('upgrade', (_req, socket) => {
    socket.on('error', () => {})
    setTimeout(
      () => socket.destroyed || socket.write('HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n'),
      UPSTREAM_DELAY_MS,
    )
  })
  t.teardown(() => upstream.close())
  const lapse = await runApp(t, { upstream, clock: manualClock(T0_MS) })
  const token = await (await testKeys()).mint({}, { nowS: T0_MS / 1000 })
  const { port } = new URL(lapse.url)

  for (let i = 0; i < 3; i++) {
    const client = connect(Number(port), '127.0.0.1')
    client.on('error', () => {})
    await new Promise<void>((resolve) => client.once('connect', resolve))
    client.write(
      `GET /orders/live HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${token}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n` +
        'Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n',
    )
    await waitFor(() => upstream.calls === i + 1, 'the upgrade to reach the upstream')
    client.resetAndDestroy()
  }
  await sleep(UPSTREAM_DELAY_MS * 2)
  const res = await send(`${lapse.url}/orders/1`, { headers: [bearer(token)] })
  t.equal(res.status, 200, 'Lapse still answers')
  await waitFor(() => decisions(lapse).length === 4, 'every audit line')
})
