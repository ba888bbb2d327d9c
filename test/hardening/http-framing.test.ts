// Request smuggling shapes, oversized heads and slow clients, sent raw over a socket. Node's
// parser (llhttp, strict: insecureHTTPParser is off) must refuse the ambiguous framings, Lapse
// must forward none of them, and slow or stalled clients must be cut by the configured timeouts
// without Lapse buffering what they send.
import { connect } from 'node:net'
import { gzipSync } from 'node:zlib'
import t from 'tap'
import { manualClock } from '../../src/core/clock.js'
import { bearer, runApp, send } from '../fixtures/app.js'
import { defaultClaims, testKeys } from '../fixtures/keys.js'
import { startBodyRecorder, startUpstream } from '../fixtures/upstream.js'
import { GUARDED_ROUTES, rawHttp, sleep, startGuarded, T0_MS, T0_S } from './helpers.js'

// The smuggled requests aim at /admin; the carrier goes to a public route, so only the framing
// checks stand between it and the upstream.
const ROUTES = GUARDED_ROUTES
const start = startGuarded
const SMUGGLED = 'GET /admin/secrets HTTP/1.1\r\nHost: lapse.test\r\n\r\n'

t.test('request smuggling shapes are refused by the parser and never forwarded', async (t) => {
  const lapse = await start(t)
  const head = 'POST /public/upload HTTP/1.1\r\nHost: lapse.test\r\n'
  const shapes: Array<[string, string]> = [
    ['Content-Length and Transfer-Encoding (CL.TE)', `${head}Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n${SMUGGLED}`],
    ['Transfer-Encoding and Content-Length (TE.CL)', `${head}Transfer-Encoding: chunked\r\nContent-Length: 60\r\n\r\n0\r\n\r\n${SMUGGLED}`],
    ['two different Content-Length values', `${head}Content-Length: 0\r\nContent-Length: ${SMUGGLED.length}\r\n\r\n${SMUGGLED}`],
    [
      'two equal Content-Length values',
      `${head}Content-Length: ${SMUGGLED.length}\r\nContent-Length: ${SMUGGLED.length}\r\n\r\n${SMUGGLED}`,
    ],
    ['a Content-Length list', `${head}Content-Length: 0, ${SMUGGLED.length}\r\n\r\n${SMUGGLED}`],
    ['a signed Content-Length', `${head}Content-Length: +0\r\n\r\n${SMUGGLED}`],
    ['obs-fold in an ordinary header', `${head}X-Note: a\r\n folded\r\nContent-Length: 0\r\n\r\n${SMUGGLED}`],
    ['obs-fold hiding Transfer-Encoding', `${head}Transfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n${SMUGGLED}`],
    ['a space before the colon of Transfer-Encoding', `${head}Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n${SMUGGLED}`],
    ['chunked then another coding', `${head}Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n${SMUGGLED}`],
    ['Transfer-Encoding twice', `${head}Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n${SMUGGLED}`],
    ['bare LF line endings', `POST /public/upload HTTP/1.1\nHost: lapse.test\nContent-Length: 0\n\n${SMUGGLED}`],
    ['bare CR line endings', `POST /public/upload HTTP/1.1\rHost: lapse.test\rContent-Length: 0\r\r\n${SMUGGLED}`],
    ['CR inside a header value', `${head}X-Note: a\rContent-Length: 0\r\n\r\n${SMUGGLED}`],
    ['NUL inside a header value', `${head}X-Note: a\u0000b\r\nContent-Length: 0\r\n\r\n${SMUGGLED}`],
    ['a space inside a header name', `${head}Content Length: 0\r\n\r\n${SMUGGLED}`],
    ['no Host header', `POST /public/upload HTTP/1.1\r\nContent-Length: 0\r\n\r\n${SMUGGLED}`],
  ]
  for (const [attack, bytes] of shapes) {
    const res = await rawHttp(lapse.url, bytes)
    t.equal(res.status, 400, `${attack}: 400`)
    t.ok(res.closedByServer, `${attack}: connection closed`)
  }
  t.same(
    lapse.upstream.requests.map((r) => `${r.method} ${r.url}`),
    [],
    'upstream received nothing, neither carrier nor smuggled request',
  )
})

t.test('a body Node cannot frame is never relayed as a request', async (t) => {
  const lapse = await start(t)
  const token = (await testKeys()).mint(defaultClaims(T0_S), { nowS: T0_S })
  for (const [attack, bytes] of [
    // The parser refuses these only once the head is complete: whatever reached the upstream
    // (at most the head of the carrier) must not include the smuggled request.
    [
      'unknown transfer coding (xchunked)',
      `POST /public/upload HTTP/1.1\r\nHost: lapse.test\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n${SMUGGLED}`,
    ],
    [
      'invalid chunk size',
      `POST /public/upload HTTP/1.1\r\nHost: lapse.test\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n${SMUGGLED}`,
    ],
    [
      'chunk extension ended by a bare LF',
      `POST /public/upload HTTP/1.1\r\nHost: lapse.test\r\nTransfer-Encoding: chunked\r\n\r\n5;\nx\r\nhello\r\n0\r\n\r\n${SMUGGLED}`,
    ],
  ] as const) {
    const res = await rawHttp(lapse.url, bytes)
    t.ok(res.closedByServer, `${attack}: connection closed`)
    t.same(lapse.upstream.requests, [], `${attack}: sent in one piece, nothing reaches the upstream`)
    // Head first, body later: the head may be relayed (Lapse streams), the smuggled bytes never.
    const [carrierHead, body] = [bytes.slice(0, bytes.indexOf('\r\n\r\n') + 4), bytes.slice(bytes.indexOf('\r\n\r\n') + 4)]
    const split = await rawHttp(lapse.url, [carrierHead, async () => sleep(100), body])
    t.ok(split.closedByServer, `${attack}, head then body: connection closed`)
    t.notOk(
      lapse.upstream.requests.some((r) => r.url.startsWith('/admin')),
      `${attack}, head then body: the smuggled request never reaches the upstream`,
    )
  }
  // A refused request's body is never parsed as a request: Lapse answers and closes.
  const refused = await rawHttp(
    lapse.url,
    `POST /orders/1 HTTP/1.1\r\nHost: lapse.test\r\nContent-Length: ${SMUGGLED.length}\r\n\r\n${SMUGGLED}`,
  )
  t.equal(refused.status, 401, 'refused carrier: 401')
  t.ok(refused.closedByServer, 'refused carrier with a body: connection closed')
  t.notOk(refused.body.includes('HTTP/1.1'), 'only one answer on the wire')
  // An allowed request's body is relayed as a body, framed by Lapse, never as a second request.
  const allowed = await rawHttp(
    lapse.url,
    `POST /orders/1 HTTP/1.1\r\nHost: lapse.test\r\nAuthorization: Bearer ${await token}\r\nContent-Length: ${SMUGGLED.length}\r\nConnection: close\r\n\r\n${SMUGGLED}`,
  )
  t.equal(allowed.status, 200, 'allowed request with a request-shaped body: 200')
  t.same(
    lapse.upstream.requests.map((r) => `${r.method} ${r.url}`).filter((r) => r.includes('admin')),
    [],
    'no /admin request upstream',
  )
})

t.test('a request transfer coding other than chunked → 501, connection closed, nothing forwarded', async (t) => {
  // The upstream records each body: a coding Lapse cannot undo must not arrive as a plain body.
  const { upstream, bodies } = await startBodyRecorder('latin1')
  t.teardown(() => upstream.close())
  const lapse = await start(t, {}, upstream)
  const token = await (await testKeys()).mint(defaultClaims(T0_S), { nowS: T0_S })
  const gzipped = gzipSync('hello')
  const chunked = Buffer.concat([Buffer.from(`${gzipped.length.toString(16)}\r\n`), gzipped, Buffer.from('\r\n0\r\n\r\n')])
  for (const [coding, te] of [
    ['gzip, chunked', 'Transfer-Encoding: gzip, chunked'],
    ['gzip then chunked on two lines', 'Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked'],
    ['deflate, chunked', 'Transfer-Encoding: deflate, chunked'],
    ['upper-case GZIP, Chunked', 'Transfer-Encoding: GZIP, Chunked'],
    ['identity, chunked (identity is no coding since RFC 7230)', 'Transfer-Encoding: identity, chunked'],
    ['an unknown coding, chunked', 'Transfer-Encoding: x-custom, chunked'],
  ] as const) {
    for (const [route, auth] of [
      ['/public/upload', ''],
      ['/orders/1', `Authorization: Bearer ${token}\r\n`],
    ] as const) {
      const res = await rawHttp(lapse.url, [`POST ${route} HTTP/1.1\r\nHost: lapse.test\r\n${auth}${te}\r\n\r\n`, chunked])
      t.equal(res.status, 501, `${coding} on ${route}: 501`)
      t.match(res.body, /"error":"not_implemented"/, `${coding} on ${route}: a JSON body says so`)
      t.ok(res.closedByServer, `${coding} on ${route}: connection closed`)
    }
  }
  t.equal(upstream.calls, 0, 'upstream received nothing')

  // A WebSocket upgrade is refused the same way, before any decision.
  const ws = await rawHttp(
    lapse.url,
    `GET /public/ws HTTP/1.1\r\nHost: lapse.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n`,
  )
  t.equal(ws.status, 501, 'upgrade with gzip, chunked: 501')
  t.equal(upstream.calls, 0, 'upstream received no upgrade')

  // Plain chunked, in any letter case or with an empty list element, is still relayed as its bytes.
  for (const te of ['chunked', 'Chunked', 'CHUNKED', ', chunked']) {
    const res = await rawHttp(
      lapse.url,
      `POST /public/upload HTTP/1.1\r\nHost: lapse.test\r\nTransfer-Encoding: ${te}\r\nConnection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n`,
    )
    t.equal(res.status, 200, `Transfer-Encoding: ${te}: forwarded`)
    t.equal(bodies.at(-1), 'abc', `Transfer-Encoding: ${te}: the body arrived as sent`)
  }
})

t.test('duplicate Host: 400, nothing forwarded (RFC 9112 §3.2; more in request-head.test.ts)', async (t) => {
  const lapse = await start(t)
  const res = await rawHttp(lapse.url, 'GET /public/x HTTP/1.1\r\nHost: good.test\r\nHost: evil.test\r\nConnection: close\r\n\r\n')
  t.equal(res.status, 400)
  t.equal(lapse.upstream.calls, 0)
})

t.test('oversized request heads: 431 and closed, nothing forwarded', async (t) => {
  const lapse = await start(t)
  const token = await (await testKeys()).mint(defaultClaims(T0_S), { nowS: T0_S })
  const auth = `Authorization: Bearer ${token}\r\n`
  for (const [attack, extra] of [
    ['one 20 KB header', `X-Big: ${'a'.repeat(20_000)}\r\n`],
    ['many small headers adding up to 20 KB', Array.from({ length: 1000 }, (_, i) => `X-H${i}: ${'a'.repeat(12)}\r\n`).join('')],
    ['a 20 KB request target', ''],
  ] as const) {
    const target = attack.includes('target') ? `/orders/${'a'.repeat(20_000)}` : '/orders/1'
    const res = await rawHttp(lapse.url, `GET ${target} HTTP/1.1\r\nHost: lapse.test\r\n${auth}${extra}\r\n`)
    t.equal(res.status, 431, `${attack}: 431`)
    t.ok(res.closedByServer, `${attack}: connection closed`)
  }
  t.equal(lapse.upstream.calls, 0, 'upstream received nothing')

  // Node keeps the first 1000 fields in req.headers and drops the rest, yet frames the body with
  // all of them; a head longer than LAPSE_MAX_HEADER_FIELDS is refused whole, so a spoofed
  // identity header hidden past any limit goes nowhere either.
  const upstream = await startUpstream()
  upstream.server.maxHeadersCount = 0
  t.teardown(() => upstream.close())
  const roomy = await runApp(t, { routes: ROUTES, clock: manualClock(T0_MS), upstream, env: { LAPSE_MAX_HEADER_BYTES: '65536' } })
  const filler = Array.from({ length: 1200 }, (_, i) => `a${i}: b\r\n`).join('')
  const res = await rawHttp(
    roomy.url,
    `GET /orders/1 HTTP/1.1\r\nHost: lapse.test\r\n${auth}${filler}X-Auth-Subject: admin\r\nConnection: close\r\n\r\n`,
  )
  t.equal(res.status, 431, '1200 headers: 431')
  t.equal(upstream.calls, 0, 'nothing forwarded')
})

t.test('slow clients: the header timeout closes a slowloris connection', async (t) => {
  const lapse = await start(t, { LAPSE_CLIENT_HEADER_TIMEOUT: '1000' })
  // One header byte every 100 ms, forever: each byte resets no timer, the head never completes.
  const drip = Array.from({ length: 60 }, () => [async () => sleep(100), 'X'] as const).flat()
  const res = await rawHttp(lapse.url, ['GET /public/x HTTP/1.1\r\nHost: lapse.test\r\nX-Slow: ', ...drip], 8000)
  t.ok(res.closedByServer, 'Lapse closed the connection')
  t.ok(res.elapsedMs < 3500, `closed within the header timeout plus its check interval (${res.elapsedMs} ms)`)
  t.ok(res.status === 408 || res.status === 0, 'answered 408 or simply closed')
  t.equal(lapse.upstream.calls, 0, 'upstream received nothing')
})

t.test('slow clients: the idle timeout closes a connection whose body stalls', async (t) => {
  let completed = 0
  let aborted = 0
  const upstream = await startUpstream((req, res) => {
    req.resume()
    req.on('end', () => {
      completed++
      res.end('ok')
    })
    req.on('aborted', () => aborted++)
    req.on('error', () => undefined)
  })
  t.teardown(() => upstream.close())
  const lapse = await runApp(t, { routes: ROUTES, clock: manualClock(T0_MS), upstream, env: { LAPSE_CLIENT_IDLE_TIMEOUT: '1000' } })
  const token = await (await testKeys()).mint(defaultClaims(T0_S), { nowS: T0_S })
  // An allowed upload that promises 1 MB and sends 10 bytes.
  const res = await rawHttp(
    lapse.url,
    [`POST /orders/1 HTTP/1.1\r\nHost: lapse.test\r\nAuthorization: Bearer ${token}\r\nContent-Length: 1000000\r\n\r\n`, '0123456789'],
    8000,
  )
  t.ok(res.closedByServer, 'Lapse closed the stalled connection')
  t.ok(res.elapsedMs >= 900 && res.elapsedMs < 3500, `after about the idle timeout (${res.elapsedMs} ms)`)
  await sleep(100)
  t.equal(completed, 0, 'the upstream never saw the body complete')
  t.equal(upstream.calls, 1, 'the upstream saw the one allowed request start, and nothing else')

  // A refused upload is answered at once and closed, without waiting for (or reading) its body.
  const refused = await rawHttp(
    lapse.url,
    ['POST /orders/1 HTTP/1.1\r\nHost: lapse.test\r\nContent-Length: 100000000\r\n\r\n', 'partial'],
    8000,
  )
  t.equal(refused.status, 401, 'refused upload: 401')
  t.ok(refused.closedByServer && refused.elapsedMs < 900, `refused upload: closed at once (${refused.elapsedMs} ms)`)
  void aborted
})

t.test('no unbounded buffering: an upload to an upstream that does not read is held back', async (t) => {
  const upstream = await startUpstream(() => {
    /* never reads, never answers */
  })
  t.teardown(() => upstream.close())
  const lapse = await runApp(t, { routes: ROUTES, clock: manualClock(T0_MS), upstream, env: { LAPSE_UPSTREAM_TIMEOUT: '60000' } })
  const total = 256 * 1024 * 1024
  const { hostname, port } = new URL(lapse.url)
  const socket = connect(Number(port), hostname)
  t.teardown(() => socket.destroy())
  await new Promise<void>((r) => socket.once('connect', () => r()))
  socket.write(`POST /public/upload HTTP/1.1\r\nHost: lapse.test\r\nContent-Length: ${total}\r\n\r\n`)
  const chunk = Buffer.alloc(1024 * 1024, 0x61)
  let offered = 0
  // Offer the body as fast as the socket takes it, for one second.
  const until = Date.now() + 1000
  while (Date.now() < until && offered < total) {
    if (socket.write(chunk)) offered += chunk.length
    else {
      offered += chunk.length
      await Promise.race([new Promise((r) => socket.once('drain', r)), sleep(200)])
    }
  }
  await sleep(200)
  const accepted = socket.bytesWritten
  t.ok(
    accepted < 64 * 1024 * 1024,
    `Lapse and the kernel took ${Math.round(accepted / 1048576)} MiB of ${total / 1048576} MiB: backpressure, not buffering`,
  )
  t.ok(socket.writableLength > 0 || offered < total, 'the rest waits in the client')
})

t.test('Connection: close is honoured on forwarded requests (no lingering sockets)', async (t) => {
  const lapse = await start(t)
  const token = await (await testKeys()).mint(defaultClaims(T0_S), { nowS: T0_S })
  for (const [what, target, auth] of [
    ['public route', '/public/x', ''],
    ['protected route, allowed', '/orders/1', `Authorization: Bearer ${token}\r\n`],
  ] as const) {
    const res = await rawHttp(lapse.url, `GET ${target} HTTP/1.1\r\nHost: lapse.test\r\n${auth}Connection: close\r\n\r\n`)
    t.equal(res.status, 200, `${what}: 200`)
    t.match(res.head, /\r\nconnection: close(\r\n|$)/i, `${what}: the answer says close`)
    t.ok(res.closedByServer && res.elapsedMs < 1000, `${what}: Lapse closed the connection (${res.elapsedMs} ms)`)
  }
})

t.test('the baseline: an ordinary request on the same routes is forwarded', async (t) => {
  const lapse = await start(t)
  const token = await (await testKeys()).mint(defaultClaims(T0_S), { nowS: T0_S })
  const res = await send(`${lapse.url}/orders/1`, { headers: [bearer(token)] })
  t.equal(res.status, 200)
})
