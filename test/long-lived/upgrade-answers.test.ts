// A 101 is tunnelled only when it is the answer RFC 6455 §4.2.2 requires (Upgrade: websocket,
// Connection: upgrade, the Sec-WebSocket-Accept of the client's key). Any other 101 gets the
// client a 502, closes both connections, and nothing is relayed either way.
import { createHash } from 'node:crypto'
import t from 'tap'
import { decisions, waitFor } from '../fixtures/app.js'
import { startRawUpstream, type RawAnswer } from '../fixtures/raw-upstream.js'
import { rawHttp, sleep, startGuarded } from '../hardening/helpers.js'

const KEY = 'dGhlIHNhbXBsZSBub25jZQ=='
const ACCEPT = createHash('sha1').update(`${KEY}258EAFA5-E914-47DA-95CA-C5AB0DC85B11`).digest('base64')
const UPGRADE = `GET /public/ws HTTP/1.1\r\nHost: lapse.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: ${KEY}\r\n\r\n`

/** A 101 with `fields`, followed at once by bytes that would reach the client only through a tunnel. */
const switching = (fields: string): RawAnswer => ({ bytes: `HTTP/1.1 101 Switching Protocols\r\n${fields}\r\nFROM-UPSTREAM`, tunnel: true })

const INVALID: Array<[string, string]> = [
  [
    'a wrong Sec-WebSocket-Accept',
    `Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ${Buffer.alloc(20).toString('base64')}\r\n`,
  ],
  ['no Sec-WebSocket-Accept', 'Upgrade: websocket\r\nConnection: Upgrade\r\n'],
  ['no Upgrade', `Connection: Upgrade\r\nSec-WebSocket-Accept: ${ACCEPT}\r\n`],
  ['Upgrade: h2c', `Upgrade: h2c\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ${ACCEPT}\r\n`],
  ['no Connection', `Upgrade: websocket\r\nSec-WebSocket-Accept: ${ACCEPT}\r\n`],
  ['Connection: keep-alive', `Upgrade: websocket\r\nConnection: keep-alive\r\nSec-WebSocket-Accept: ${ACCEPT}\r\n`],
]

for (const [name, fields] of INVALID) {
  t.test(`a 101 with ${name} → 502, both connections closed, nothing tunnelled`, async (t) => {
    const up = await startRawUpstream(t, () => switching(fields))
    const lapse = await startGuarded(t, { LAPSE_UPSTREAM: up.url })
    // The client's first WebSocket bytes ride with its handshake, as a browser's may.
    const res = await rawHttp(lapse.url, [UPGRADE, 'FROM-CLIENT'])
    t.equal(res.status, 502)
    t.match(res.body, /"error":"bad_gateway"/)
    t.notMatch(res.head + res.body, /FROM-UPSTREAM|101/, 'no upstream byte reached the client')
    t.ok(res.closedByServer, `the client connection is closed (${res.elapsedMs} ms)`)
    await waitFor(() => up.connections[0]?.closed, 'the upstream connection to be closed')
    await sleep(50)
    t.notMatch(up.connections[0]!.text(), /FROM-CLIENT/, 'no client byte reached the upstream')
    const audit = await waitFor(() => decisions(lapse).at(-1), 'the audit line')
    t.match(audit, { decision: 'allow', status: 502, upstream_failure: 'upstream_unavailable' })
    t.ok(
      lapse.lines.some((l) => l.msg === 'upstream upgrade failed' && l.err === 'ERR_UPSTREAM_BAD_HANDSHAKE'),
      'a log line says the handshake answer was invalid, with its docs/errors.md code',
    )
  })
}

t.test('a valid 101 (any case, Connection listing more tokens) is tunnelled both ways', async (t) => {
  const up = await startRawUpstream(t, () =>
    switching(`upgrade: WebSocket\r\nconnection: keep-alive, Upgrade\r\nSec-WebSocket-Accept: ${ACCEPT}\r\n`),
  )
  const lapse = await startGuarded(t, { LAPSE_UPSTREAM: up.url })
  const res = await rawHttp(lapse.url, [UPGRADE, 'FROM-CLIENT'], 500)
  t.equal(res.status, 101)
  t.match(res.body, /FROM-UPSTREAM/)
  await waitFor(() => /FROM-CLIENT/.test(up.connections[0]?.text() ?? ''), 'the client bytes to reach the upstream')
  const audit = await waitFor(() => decisions(lapse).at(-1), 'the audit line')
  t.match(audit, { decision: 'allow', status: 101 })
})
