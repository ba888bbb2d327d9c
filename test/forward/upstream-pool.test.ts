// Lapse's connections to the upstream are bounded (LAPSE_UPSTREAM_MAX_CONNECTIONS); a request that
// finds them all busy waits for one, but only within LAPSE_UPSTREAM_TIMEOUT, and one that gave up
// waiting is never sent afterwards.
import { request, type ClientRequest } from 'node:http'
import t from 'tap'
import { manualClock } from '../../src/core/clock.js'
import { bearer, decisions, runApp, send, waitFor } from '../fixtures/app.js'
import { testKeys } from '../fixtures/keys.js'
import { startUpstream } from '../fixtures/upstream.js'

const T0_S = Date.parse('2030-01-01T00:00:00Z') / 1000
const TIMEOUT_MS = 300

t.test('all upstream connections busy: a queued request gets 504 within the timeout and never reaches the upstream', async (t) => {
  const upstream = await startUpstream((req, res) => {
    req.resume()
    // A response that starts and never ends holds its connection past any header timeout.
    if (req.url === '/orders/stream') return void res.writeHead(200, { 'content-type': 'text/event-stream' }).write('data: 1\n\n')
    res.writeHead(200, { 'content-type': 'application/json' }).end('{"ok":true}')
  })
  t.teardown(() => upstream.close())
  const lapse = await runApp(t, {
    upstream,
    clock: manualClock(T0_S * 1000),
    env: { LAPSE_UPSTREAM_MAX_CONNECTIONS: '1', LAPSE_UPSTREAM_TIMEOUT: String(TIMEOUT_MS) },
  })
  const token = await (await testKeys()).mint({}, { nowS: T0_S })

  // The one connection is taken by a stream that never ends.
  const stream: ClientRequest = request(`${lapse.url}/orders/stream`, { headers: Object.fromEntries([bearer(token)]), agent: false })
  stream.on('error', () => {})
  const streaming = new Promise<number>((resolve) => stream.on('response', (res) => resolve(res.statusCode ?? 0)))
  stream.end()
  t.equal(await streaming, 200, 'the stream is flowing')
  const startedMs = Date.now()
  const queued = await send(`${lapse.url}/orders/queued`, { headers: [bearer(token)] })
  const waitedMs = Date.now() - startedMs
  t.equal(queued.status, 504, 'the queued request is answered 504')
  t.equal(queued.json().error, 'gateway_timeout')
  t.ok(waitedMs < TIMEOUT_MS + 700, `within the timeout plus a margin (${waitedMs} ms, timeout ${TIMEOUT_MS} ms)`)

  // The client leaves the stream, which frees the connection; the request that gave up waiting
  // was dropped, not sent late.
  stream.destroy()
  const after = await send(`${lapse.url}/orders/after`, { headers: [bearer(token)] })
  t.equal(after.status, 200)
  t.same(
    upstream.requests.map((r) => r.url),
    ['/orders/stream', '/orders/after'],
    'the upstream never saw the request that gave up waiting',
  )
  const line = await waitFor(() => decisions(lapse).find((l) => l.path === '/orders/queued'), 'the audit line of the queued request')
  t.match(line, { decision: 'allow', status: 504, upstream_failure: 'upstream_timeout' })
})

t.test('requests started at different times each time out on their own deadline, and answers in between are untouched', async (t) => {
  // One timer serves every pending request's deadline (forward.ts, Deadlines): a request must not be
  // cut at an earlier request's deadline, nor wait for a later one's.
  const upstream = await startUpstream((req, res) => {
    req.resume()
    if (req.url?.startsWith('/orders/hang')) return
    res.writeHead(200, { 'content-type': 'application/json' }).end('{"ok":true}')
  })
  t.teardown(() => upstream.close())
  const lapse = await runApp(t, { upstream, clock: manualClock(T0_S * 1000), env: { LAPSE_UPSTREAM_TIMEOUT: String(TIMEOUT_MS) } })
  const token = await (await testKeys()).mint({}, { nowS: T0_S })
  const timed = async (path: string) => {
    const startedMs = Date.now()
    const res = await send(`${lapse.url}${path}`, { headers: [bearer(token)] })
    return { status: res.status, tookMs: Date.now() - startedMs }
  }
  const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))
  const pending = [timed('/orders/hang-1')]
  await sleep(TIMEOUT_MS / 2)
  pending.push(timed('/orders/hang-2'))
  // Answered while both wait: leaving the list from the middle must not disturb the others.
  const quick = await timed('/orders/quick')
  await sleep(TIMEOUT_MS / 2 - 50)
  pending.push(timed('/orders/hang-3'))
  const results = await Promise.all(pending)
  t.equal(quick.status, 200)
  for (const [i, r] of results.entries()) {
    t.equal(r.status, 504, `hang-${i + 1} timed out`)
    t.ok(r.tookMs >= TIMEOUT_MS - 5, `hang-${i + 1} waited its whole budget (${r.tookMs} ms of ${TIMEOUT_MS})`)
    t.ok(r.tookMs < TIMEOUT_MS + 700, `hang-${i + 1} was not kept waiting for a later deadline (${r.tookMs} ms)`)
  }
  const after = await timed('/orders/after')
  t.equal(after.status, 200, 'a request after all the timeouts is served')
  t.equal(upstream.requests.filter((r) => r.url?.startsWith('/orders/hang')).length, 3, 'all three reached the upstream')
})
