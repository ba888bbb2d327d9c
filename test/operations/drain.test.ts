// Drain and shutdown as Kubernetes expects, through a real `lapse proxy` process under a request
// loop: SIGTERM → /readyz 503 at once, serving on for LAPSE_DRAIN_DELAY with `Connection: close`
// and idle kept-alive connections closed, then no new connections while in-flight requests get
// LAPSE_SHUTDOWN_TIMEOUT, WebSockets a close 1001, exit 0. A second signal exits at once.
import { Agent, request } from 'node:http'
import { connect } from 'node:net'
import t, { type Test } from 'tap'
import { WebSocketServer } from 'ws'
import { send, waitFor } from '../fixtures/app.js'
import { startChildProxy } from '../fixtures/child-proxy.js'
import { AUDIENCE, ISSUER, testKeys } from '../fixtures/keys.js'
import { startUpstream } from '../fixtures/upstream.js'
import { openClient, sleep } from '../long-lived/upstream.js'

const DRAIN_S = 2
const SHUTDOWN_S = 3
const SLOW_MS = 2500

interface Outcome {
  startedMs: number
  endedMs: number
  status?: number
  connection?: string | undefined
  error?: string
}

function get(agent: Agent | false, url: string, token: string): Promise<{ status: number; connection: string | undefined }> {
  return new Promise((resolve, reject) => {
    const req = request(url, { agent, headers: { authorization: `Bearer ${token}` } }, (res) => {
      res.resume()
      res.on('end', () => resolve({ status: res.statusCode ?? 0, connection: res.headers.connection }))
      res.on('error', reject)
    })
    req.on('error', reject)
    req.end()
  })
}

async function startLapse(t: Test, env: Record<string, string> = {}) {
  // `/…/slow` answers after SLOW_MS; anything else at once; WebSockets echo.
  const upstream = await startUpstream((req, res) => {
    req.resume()
    const answer = () => res.writeHead(200, { 'content-type': 'application/json' }).end('{"ok":true}')
    if (req.url?.includes('slow')) setTimeout(answer, SLOW_MS)
    else answer()
  })
  const wss = new WebSocketServer({ server: upstream.server })
  wss.on('connection', (ws) => {
    ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }))
    ws.on('error', () => {})
  })
  t.teardown(async () => {
    for (const ws of wss.clients) ws.terminate()
    await new Promise<void>((resolve) => wss.close(() => resolve()))
    await upstream.close()
  })
  const keys = await testKeys()
  const lapse = await startChildProxy(t, {
    LAPSE_UPSTREAM: upstream.url,
    LAPSE_ISSUER: ISSUER,
    LAPSE_AUDIENCE: AUDIENCE,
    LAPSE_JWKS_FILE: keys.jwksPath,
    LAPSE_ROUTES: JSON.stringify([{ path: '/orders/**', scopes: ['orders:read'] }]),
    ...env,
  })
  return { lapse, token: await keys.mint() }
}

t.test(
  'SIGTERM under a request loop: readiness off at once, served through the drain delay, in-flight finished, WebSocket 1001, exit 0',
  async (t) => {
    const { lapse, token } = await startLapse(t, { LAPSE_DRAIN_DELAY: String(DRAIN_S), LAPSE_SHUTDOWN_TIMEOUT: String(SHUTDOWN_S) })
    const ws = await openClient(lapse.url, token, '/orders/live')
    t.equal(await ws.echo('before'), 'before', 'the WebSocket is open through Lapse')

    // An idle kept-alive connection: one request, then silence.
    const idle = connect(Number(new URL(lapse.url).port), '127.0.0.1')
    let idleClosedMs: number | undefined
    idle.on('close', () => {
      idleClosedMs = Date.now()
    })
    idle.on('error', () => {})
    await new Promise<void>((resolve) => {
      idle.write(`GET /orders/idle HTTP/1.1\r\nhost: x\r\nauthorization: Bearer ${token}\r\n\r\n`)
      idle.once('data', () => resolve())
    })

    const outcomes: Outcome[] = []
    let sigtermMs = Number.POSITIVE_INFINITY
    let stopMs = Number.POSITIVE_INFINITY
    const agents = Array.from({ length: 3 }, () => new Agent({ keepAlive: true, maxSockets: 1 }))
    t.teardown(() => {
      for (const a of agents) a.destroy()
    })
    const loop = async (agent: Agent) => {
      while (Date.now() < stopMs) {
        const o: Outcome = { startedMs: Date.now(), endedMs: 0 }
        try {
          const res = await get(agent, `${lapse.url}/orders/fast`, token)
          Object.assign(o, res)
        } catch (err) {
          o.error = (err as NodeJS.ErrnoException).code ?? (err as Error).message
        }
        o.endedMs = Date.now()
        outcomes.push(o)
      }
    }
    const loops = agents.map(loop)
    await sleep(300)

    sigtermMs = Date.now()
    // The loop keeps sending until just before the drain delay ends (the margin is for a busy host).
    stopMs = sigtermMs + DRAIN_S * 1000 - 300
    lapse.signal('SIGTERM')
    // The signal is delivered asynchronously: poll until the process has handled it.
    const ready = await waitFor(
      () => send(`${lapse.adminUrl}/readyz`).then((r) => (r.status === 503 ? r : undefined)),
      '/readyz 503',
      2000,
    ).catch(() => undefined)
    t.match(ready?.json(), { ready: false, draining: true }, '/readyz answers 503 at once')
    t.ok(Date.now() - sigtermMs < 1000, `within a second of the signal (${Date.now() - sigtermMs} ms)`)

    await sleep(1000)
    // Started in the drain, answered by the upstream after it: within the shutdown timeout.
    const slowStartedMs = Date.now()
    const slow = get(false, `${lapse.url}/orders/slow`, token).then(
      (r) => ({ ...r, endedMs: Date.now() }),
      (err: NodeJS.ErrnoException) => ({ error: err.code ?? err.message, endedMs: Date.now() }),
    )
    await Promise.all(loops)

    const wsClosed = await ws.closed
    await sleep(Math.max(0, sigtermMs + DRAIN_S * 1000 + 300 - Date.now()))
    await t.rejects(
      send(`${lapse.url}/orders/fast`, { headers: [['authorization', `Bearer ${token}`]] }),
      { code: 'ECONNREFUSED' },
      'after the drain delay, no new connection is accepted',
    )
    const slowDone = await slow
    const { code } = await lapse.exited
    const exitedMs = Date.now()

    const errors = outcomes.filter((o) => o.error !== undefined)
    t.same(errors, [], `no connection error during the drain delay (${outcomes.length} requests)`)
    t.ok(
      outcomes.every((o) => o.status === 200),
      'every request of the loop was answered 200',
    )
    const inDrain = outcomes.filter((o) => o.startedMs > sigtermMs + 100)
    t.ok(inDrain.length > 5, `requests were served during the drain (${inDrain.length})`)
    t.same(
      inDrain.filter((o) => o.connection !== 'close'),
      [],
      'each answer in the drain carries Connection: close',
    )
    // A second in, so that a busy client's next request is not met by the close (server.ts drain).
    t.ok(idleClosedMs !== undefined && idleClosedMs - sigtermMs < 1500, 'the idle kept-alive connection was closed early in the drain')
    t.ok(idleClosedMs !== undefined && idleClosedMs < sigtermMs + DRAIN_S * 1000, 'before the drain delay ended')
    t.match(slowDone, { status: 200 }, 'the request in flight when Lapse stopped accepting finished')
    t.ok(slowDone.endedMs - slowStartedMs >= SLOW_MS - 100, 'after the upstream answered')
    t.equal(wsClosed.code, 1001, 'the WebSocket got a close frame 1001 (going away)')
    t.ok(wsClosed.atMs >= sigtermMs + DRAIN_S * 1000 - 200, 'once the drain delay had passed')
    t.equal(code, 0, 'exit 0')
    t.ok(exitedMs - sigtermMs < (DRAIN_S + SHUTDOWN_S) * 1000 + 1500, 'within the drain delay and the shutdown timeout')
    t.match(lapse.output(), /"msg":"draining: \/readyz answers 503"/)
  },
)

t.test('a request still running at the shutdown timeout is cut, and Lapse exits 0 then', async (t) => {
  const { lapse, token } = await startLapse(t, { LAPSE_DRAIN_DELAY: '0', LAPSE_SHUTDOWN_TIMEOUT: '1' })
  const slow = get(false, `${lapse.url}/orders/slow`, token).then(
    (r) => r,
    (err: NodeJS.ErrnoException) => ({ error: err.code ?? err.message }),
  )
  await sleep(200)
  const sigtermMs = Date.now()
  lapse.signal('SIGTERM')
  t.match(await slow, { error: /ECONNRESET|socket hang up/ }, 'cut at the timeout, before the upstream answered')
  t.equal((await lapse.exited).code, 0)
  const tookMs = Date.now() - sigtermMs
  t.ok(tookMs >= 900 && tookMs < SLOW_MS, `exited at the shutdown timeout (${tookMs} ms)`)
})

t.test('a second signal exits at once', async (t) => {
  const { lapse } = await startLapse(t, { LAPSE_DRAIN_DELAY: '30' })
  const sigtermMs = Date.now()
  lapse.signal('SIGTERM')
  await waitFor(() => lapse.output().includes('draining'), 'the drain')
  t.equal((await send(`${lapse.adminUrl}/readyz`)).status, 503)
  lapse.signal('SIGTERM')
  const { code } = await lapse.exited
  t.ok(Date.now() - sigtermMs < 5000, 'long before the 30 s drain delay')
  t.equal(code, 1, 'exit 1: requests may have been cut')
  t.match(lapse.output(), /second signal: exiting at once/)
})
