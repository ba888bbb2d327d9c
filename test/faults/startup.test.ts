// Start-up and shutdown of `lapse proxy` as deployed (a child process of bin/lapse.js): the proxy
// port opens only once the keys are loaded and the revocation set has answered, or after
// LAPSE_STARTUP_WAIT, and then answers 503; a clean SIGTERM is not reported as an outage, also
// when it comes during that wait.
import net from 'node:net'
import t, { type Test } from 'tap'
import { bearer, send, baseEnv, waitFor } from '../fixtures/app.js'
import { startChildProxy } from '../fixtures/child-proxy.js'
import { testKeys } from '../fixtures/keys.js'
import { freePort, sleep, startRedis } from '../fixtures/redis-server.js'
import { startUpstream } from '../fixtures/upstream.js'

const keys = await testKeys()
const ROUTES = [{ path: '/orders/**', scopes: ['orders:read'] }]

async function proxyEnv(t: Test, redisPort: number, extra: Record<string, string> = {}) {
  const upstream = await startUpstream()
  t.teardown(() => upstream.close())
  const { LAPSE_LISTEN: _l, LAPSE_ADMIN_LISTEN: _a, ...env } = baseEnv(upstream.url, keys.jwksPath, ROUTES)
  return { upstream, env: { ...env, LAPSE_REDIS_URL: `redis://127.0.0.1:${redisPort}`, LAPSE_REDIS_PREFIX: 'startup', ...extra } }
}

type Outcome = number | 'refused'

async function attempt(url: string, token: string): Promise<Outcome> {
  try {
    return (await send(`${url}/orders/1`, { headers: [bearer(token)] })).status
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ECONNREFUSED') return 'refused'
    throw err
  }
}

t.test('started before Redis is reachable: the port stays closed until the set answers, and no request gets 503', async (t) => {
  const redisPort = await freePort()
  const { upstream, env } = await proxyEnv(t, redisPort, { LAPSE_STARTUP_WAIT: '30000' })
  const lapse = await startChildProxy(t, env, { wait: false })
  const token = await keys.mint({ sub: 'early' })
  const outcomes: Outcome[] = []
  const redisAt = performance.now() + 1500
  let redisStarted = false
  while (outcomes.filter((o) => o === 200).length < 20) {
    if (!redisStarted && performance.now() >= redisAt) {
      redisStarted = true
      const redis = await startRedis({ port: redisPort })
      t.teardown(() => redis.stop())
    }
    outcomes.push(await attempt(lapse.url, token))
    if (outcomes.at(-1) === 'refused') await sleep(10)
    if (outcomes.length > 5000) break
  }
  const counts: Record<string, number> = {}
  for (const o of outcomes) counts[o] = (counts[o] ?? 0) + 1
  t.comment(`outcomes: ${JSON.stringify(counts)}`)
  t.ok((counts.refused ?? 0) > 0, 'the port was closed while Redis was away')
  t.notOk(counts[503], 'no 503 once the port opened')
  t.equal(counts[200], 20)
  t.equal(upstream.calls, 20)
})

t.test('Redis never comes: the port opens after LAPSE_STARTUP_WAIT and answers 503', async (t) => {
  const redisPort = await freePort()
  const WAIT_MS = 4000
  const { upstream, env } = await proxyEnv(t, redisPort, { LAPSE_STARTUP_WAIT: String(WAIT_MS) })
  const started = performance.now()
  const lapse = await startChildProxy(t, env, { wait: false })
  const token = await keys.mint({ sub: 'never' })
  let outcome: Outcome = 'refused'
  while (outcome === 'refused' && performance.now() - started < 15_000) {
    outcome = await attempt(lapse.url, token)
    if (outcome === 'refused') await sleep(20)
  }
  const openedMs = performance.now() - started
  t.comment(`port opened ${openedMs.toFixed(0)} ms after spawn (LAPSE_STARTUP_WAIT=${WAIT_MS})`)
  t.ok(openedMs >= WAIT_MS, `the port opened after the wait (${openedMs.toFixed(0)} ms)`)
  t.equal(outcome, 503, 'and answers 503')
  const res = await send(`${lapse.url}/orders/2`, { headers: [bearer(token)] })
  t.equal(res.status, 503)
  t.equal(res.json().error, 'temporarily_unavailable')
  t.equal(upstream.calls, 0, 'nothing reached the upstream')
  t.equal((await send(`${lapse.adminUrl}/readyz`)).status, 503, '/readyz says not ready')
  // The log is flushed asynchronously (at most a second later).
  await waitFor(() => /LAPSE_STARTUP_WAIT/.test(lapse.output()), 'the start-up warning, naming the setting', 3000)
  t.pass('the start-up warning names the setting')
})

t.test('a clean SIGTERM logs no "revocation set unreachable"', async (t) => {
  const redis = await startRedis()
  t.teardown(() => redis.stop())
  const { env } = await proxyEnv(t, redis.port)
  const lapse = await startChildProxy(t, env)
  t.equal(await attempt(lapse.url, await keys.mint({ sub: 'bye' })), 200)
  await lapse.stop()
  const out = lapse.output()
  t.match(out, /revocation set reachable/, 'the start was logged (the log is being read)')
  t.notMatch(out, /unreachable/, 'no outage warning on shutdown')
})

for (const signal of ['SIGTERM', 'SIGINT'] as const) {
  t.test(`${signal} during the start-up wait: exit 0, no outage warning, nothing listening`, async (t) => {
    // A Redis that accepts and never answers: its first connection shows that Lapse is in the wait
    // (the store connects after the keys are loaded, right before the wait).
    const silent = net.createServer((socket) => {
      sockets.add(socket)
      socket.on('error', () => {})
    })
    const sockets = new Set<net.Socket>()
    const redisPort = await new Promise<number>((resolve) =>
      silent.listen(0, '127.0.0.1', () => resolve((silent.address() as net.AddressInfo).port)),
    )
    t.teardown(() => {
      for (const s of sockets) s.destroy()
      silent.close()
    })
    const { upstream, env } = await proxyEnv(t, redisPort, { LAPSE_STARTUP_WAIT: '30000' })
    const lapse = await startChildProxy(t, env, { wait: false })
    await waitFor(() => sockets.size > 0, 'Lapse connecting to its Redis', 10_000)
    t.equal(await attempt(lapse.url, await keys.mint({ sub: 'waiting' })), 'refused', 'the proxy port is closed during the wait')
    const stopped = performance.now()
    const exit = await lapse.stop(signal)
    const tookMs = performance.now() - stopped
    t.comment(`${signal} during the wait: exit ${JSON.stringify(exit)} ${tookMs.toFixed(0)} ms later`)
    t.same(exit, { code: 0, signal: null }, 'a clean exit, not the default signal death')
    t.ok(tookMs < 5000, 'without waiting out LAPSE_STARTUP_WAIT')
    const out = lapse.output()
    t.match(out, new RegExp(`"signal":"${signal}"`), 'the shutdown is logged with its signal')
    t.notMatch(out, /unreachable/, 'no outage warning')
    t.notMatch(out, /LAPSE_STARTUP_WAIT/, 'no "listening before ready" warning')
    t.notMatch(out, /lapse is listening/, 'it never listened')
    t.equal(await attempt(lapse.url, await keys.mint({ sub: 'after' })), 'refused', 'nothing listens on the proxy port')
    t.equal(
      await send(`${lapse.adminUrl}/healthz`).then(
        () => 'open',
        (e: NodeJS.ErrnoException) => e.code,
      ),
      'ECONNREFUSED',
      'nor on the admin port',
    )
    t.equal(upstream.calls, 0)
  })
}
