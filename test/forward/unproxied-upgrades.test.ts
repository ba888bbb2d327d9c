// Lapse proxies one upgrade, a GET asking for websocket. Every other request carrying Upgrade
// (h2c from `curl --http2`, an unknown protocol, a POST asking for websocket) is decided and
// served as the ordinary HTTP/1.1 request it also is (RFC 9110 §7.8), and its audit line says the
// status the client really got. An upstream that answers a WebSocket upgrade with an ordinary
// answer gets that status in the audit line too, not 101.
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http'
import t, { type Test } from 'tap'
import { manualClock } from '../../src/core/clock.js'
import { bearer, decisions, runApp, send, waitFor, type Lapse } from '../fixtures/app.js'
import { testKeys } from '../fixtures/keys.js'
import { startUpstream } from '../fixtures/upstream.js'
import { rawHttp } from '../hardening/helpers.js'

const T0_MS = Date.parse('2030-01-01T00:00:00Z')
const T0_S = T0_MS / 1000
const ROUTES = [{ path: '/orders/**', scopes: ['orders:read'] }]

/** An upstream that echoes method, path, headers and body; its 'upgrade' listener records and drops. */
async function start(t: Test) {
  const upstream = await startUpstream((req: IncomingMessage, res: ServerResponse) => {
    const chunks: Buffer[] = []
    req.on('data', (c: Buffer) => chunks.push(c))
    req.on('end', () => {
      const text = JSON.stringify({ method: req.method, body: Buffer.concat(chunks).toString() })
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) }).end(text)
    })
  })
  t.teardown(() => upstream.close())
  const lapse = await runApp(t, { upstream, routes: ROUTES, clock: manualClock(T0_MS) })
  const token = await (await testKeys()).mint({}, { nowS: T0_S })
  return { lapse, upstream, token }
}

const lastAudit = (lapse: Lapse, count: number) => waitFor(() => decisions(lapse)[count - 1], 'the audit line')

t.test('Upgrade: h2c as `curl --http2` sends it → the ordinary HTTP/1.1 answer, the upgrade headers not forwarded', async (t) => {
  const { lapse, upstream, token } = await start(t)
  const res = await rawHttp(
    lapse.url,
    `GET /orders/1 HTTP/1.1\r\nHost: lapse.test\r\nUser-Agent: curl/8\r\nAccept: */*\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n` +
      `HTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\nAuthorization: Bearer ${token}\r\n\r\n`,
  )
  t.equal(res.status, 200, 'HTTP/1.1 200, not a dropped connection')
  t.match(res.head, /^HTTP\/1\.1 200 OK\r\n/)
  t.match(JSON.parse(res.body), { method: 'GET' })
  t.ok(res.closedByServer, 'the connection closes after the answer')
  t.equal(upstream.calls, 1)
  const got = upstream.requests[0]!
  t.equal(got.url, '/orders/1')
  t.notOk(got.headers.upgrade, 'no Upgrade upstream')
  t.notOk(got.headers['http2-settings'], 'no HTTP2-Settings (named in Connection) upstream')
  t.equal(got.headers['x-auth-subject'], 'ci-deployer', "the identity headers are Lapse's")
  t.match(await lastAudit(lapse, 1), { decision: 'allow', reason: 'ok', method: 'GET', path: '/orders/1', status: 200 })
})

t.test(
  'Upgrade: foo, and a POST asking for websocket, with bodies → forwarded as ordinary requests, bodies framed by the parser',
  async (t) => {
    const { lapse, upstream, token } = await start(t)
    const cases: Array<[string, string, string]> = [
      [
        'GET, Upgrade: foo',
        `GET /orders/foo HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: foo\r\nAuthorization: Bearer ${token}\r\n\r\n`,
        '',
      ],
      [
        'POST, Upgrade: websocket, Content-Length',
        `POST /orders/post HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n` +
          `Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nAuthorization: Bearer ${token}\r\nContent-Length: 5\r\n\r\nhello`,
        'hello',
      ],
      // The chunked body arrives after the head, and holds what would be a second request if read raw.
      [
        'POST, Upgrade: websocket, chunked',
        `POST /orders/chunked HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nAuthorization: Bearer ${token}\r\n` +
          'Transfer-Encoding: chunked\r\n\r\n',
        'GET /orders/smuggled HTTP/1.1\r\nHost: x\r\n\r\n',
      ],
    ]
    for (const [i, [what, head, body]] of cases.entries()) {
      const chunked = head.includes('chunked')
      const rest = chunked ? [`${body.length.toString(16)}\r\n${body}\r\n`, '0\r\n\r\n'] : []
      const res = await rawHttp(lapse.url, [head, ...rest])
      t.equal(res.status, 200, `${what}: 200`)
      t.same(
        JSON.parse(res.body),
        { method: what.slice(0, what.indexOf(',')), body },
        `${what}: the upstream got the method and the body whole`,
      )
      t.match(await lastAudit(lapse, i + 1), { decision: 'allow', status: 200 }, `${what}: the audit line says 200`)
    }
    t.same(
      upstream.requests.map((r) => r.url),
      ['/orders/foo', '/orders/post', '/orders/chunked'],
      'one upstream request each, nothing smuggled',
    )
    t.notOk(
      upstream.requests.some((r) => r.headers.upgrade),
      'no Upgrade upstream',
    )
  },
)

t.test('an unproxied upgrade is decided like any request: no token → 401, the upstream untouched', async (t) => {
  const { lapse, upstream } = await start(t)
  const res = await rawHttp(
    lapse.url,
    'GET /orders/1 HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n',
  )
  t.equal(res.status, 401)
  t.match(res.head, /www-authenticate: Bearer realm="lapse"/i)
  t.equal(upstream.calls, 0)
  t.match(await lastAudit(lapse, 1), { decision: 'deny', reason: 'missing_token', status: 401 })
})

t.test('an unproxied upgrade whose head Node kept only in part (1000+ fields) → 431, never replayed without its framing', async (t) => {
  const { lapse, upstream, token } = await start(t)
  const padding = 'a:\r\n'.repeat(1100)
  const res = await rawHttp(
    lapse.url,
    `POST /orders/1 HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: foo\r\nAuthorization: Bearer ${token}\r\n${padding}` +
      'Content-Length: 44\r\n\r\nGET /orders/smuggled HTTP/1.1\r\nHost: x\r\n\r\n',
  )
  t.equal(res.status, 431)
  t.ok(res.closedByServer)
  t.equal(upstream.calls, 0, 'nothing forwarded, the body least of all')
})

t.test('an upstream that answers a WebSocket upgrade with an ordinary 200 → the client gets it, and so does the audit line', async (t) => {
  const server = createServer(
    (_req, res) => void res.writeHead(200, { 'content-type': 'text/plain', 'content-length': '11' }).end('not a ws\r\n\r'),
  )
  server.on('upgrade', (_req, socket) =>
    socket.end('HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 8\r\nConnection: close\r\n\r\nno ws 4u'),
  )
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(() => server.close())
  const url = `http://127.0.0.1:${(server.address() as { port: number }).port}`
  const lapse = await runApp(t, { routes: ROUTES, clock: manualClock(T0_MS), env: { LAPSE_UPSTREAM: url } })
  const token = await (await testKeys()).mint({}, { nowS: T0_S })
  const res = await rawHttp(
    lapse.url,
    `GET /orders/live HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n` +
      `Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nAuthorization: Bearer ${token}\r\n\r\n`,
  )
  t.equal(res.status, 200)
  t.equal(res.body, 'no ws 4u')
  const audit = await lastAudit(lapse, 1)
  t.match(audit, { decision: 'allow', status: 200 }, 'the audit line says 200, not 101')
  t.notOk(audit.upstream_failure)
})

t.test('an ordinary chunked answer to a WebSocket upgrade reaches an HTTP client framed: no stale Transfer-Encoding', async (t) => {
  const server = createServer()
  server.on('upgrade', (_req, socket) =>
    socket.end(
      'HTTP/1.1 426 Upgrade Required\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\nKeep-Alive: timeout=5\r\n\r\n' +
        '6\r\nuse h2\r\n9\r\n, not ws.\r\n0\r\n\r\n',
    ),
  )
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(() => server.close())
  const url = `http://127.0.0.1:${(server.address() as { port: number }).port}`
  const lapse = await runApp(t, { routes: ROUTES, clock: manualClock(T0_MS), env: { LAPSE_UPSTREAM: url } })
  const token = await (await testKeys()).mint({}, { nowS: T0_S })
  // Node's own client parses the answer by its headers: a chunked header over de-chunked bytes is a parse error.
  const got = await send(`${lapse.url}/orders/live`, {
    headers: [
      ['connection', 'Upgrade'],
      ['upgrade', 'websocket'],
      ['sec-websocket-version', '13'],
      ['sec-websocket-key', 'dGhlIHNhbXBsZSBub25jZQ=='],
      bearer(token),
    ],
  })
  t.equal(got.status, 426)
  t.equal(got.body, 'use h2, not ws.', 'the body, whole')
  t.equal(got.headers['transfer-encoding'], undefined, 'no Transfer-Encoding for bytes that are not chunked')
  t.equal(got.headers['keep-alive'], undefined, "nor the upstream hop's Keep-Alive")
  t.equal(got.headers.connection, 'close', 'the body ends with the connection')
  t.match(await lastAudit(lapse, 1), { decision: 'allow', status: 426 })
})
