// LAPSE_REVOCATION_TIMEOUT measures Redis's silence, not our own stalls: on a host whose CPU is
// taken (a busy-looping process, and synchronous 80 ms stalls of Lapse's own event loop) a healthy
// Redis answers every check, so nothing is refused; a frozen Redis is still refused within the budget.
import { spawn } from 'node:child_process'
import t, { type Test } from 'tap'
import { bearer, runApp, send, type Lapse } from '../fixtures/app.js'
import { testKeys } from '../fixtures/keys.js'
import { redisEnv, redisFor, untilReady } from '../revocation-e2e/helpers.js'

const keys = await testKeys()
const BUDGET_MS = 50 // the default
const REQUESTS = 400
const CONCURRENCY = 8

/** A process that keeps one core busy until the test ends. */
function burnCore(t: Test) {
  const child = spawn(process.execPath, ['-e', 'for (;;) {}'], { stdio: 'ignore' })
  t.teardown(() => {
    child.kill('SIGKILL')
  })
}

/** Blocks this process's event loop for `ms` every `everyMs`: a GC pause, a big JSON.parse, a slow log write. */
function stallLoop(t: Test, ms: number, everyMs: number) {
  // Run from the check phase, where the checks' MGETs are sent: the reply lands during the stall
  // and waits in the socket while the timers phase comes first.
  const timer = setInterval(
    () =>
      setImmediate(() => {
        const until = performance.now() + ms
        while (performance.now() < until) {
          /* stalled */
        }
      }),
    everyMs,
  )
  t.teardown(() => clearInterval(timer))
}

async function load(lapse: Lapse, tokens: string[]): Promise<Map<number, number>> {
  const statuses = new Map<number, number>()
  let next = 0
  await Promise.all(
    Array.from({ length: CONCURRENCY }, async (_, w) => {
      while (next < REQUESTS) {
        next++
        const res = await send(`${lapse.url}/orders/${next}`, { headers: [bearer(tokens[w]!)] })
        statuses.set(res.status, (statuses.get(res.status) ?? 0) + 1)
      }
    }),
  )
  return statuses
}

t.test('busy host, healthy Redis: no 503 over a few hundred checks', async (t) => {
  const redis = await redisFor(t)
  const lapse = await runApp(t, {
    env: redisEnv(redis, 'busy', { LAPSE_REVOCATION_TIMEOUT: String(BUDGET_MS), LAPSE_REVOCATION_CACHE: 'false' }),
  })
  await untilReady(lapse)
  const tokens = await Promise.all(Array.from({ length: CONCURRENCY }, (_, i) => keys.mint({ sub: `busy-${i}` })))
  burnCore(t)
  stallLoop(t, 80, 150)
  const statuses = await load(lapse, tokens)
  t.comment(`statuses: ${JSON.stringify(Object.fromEntries(statuses))}`)
  t.same(Object.fromEntries(statuses), { 200: REQUESTS }, `all ${REQUESTS} allowed: no false 503`)
  t.equal(lapse.upstream.calls, REQUESTS)
})

t.test('Redis frozen (SIGSTOP): every check refused within the budget plus one turn; SIGCONT: allowed again', async (t) => {
  const redis = await redisFor(t)
  const lapse = await runApp(t, {
    env: redisEnv(redis, 'frozen', { LAPSE_REVOCATION_TIMEOUT: String(BUDGET_MS), LAPSE_REVOCATION_CACHE: 'false' }),
  })
  await untilReady(lapse)
  const token = await keys.mint({ sub: 'frozen' })
  t.equal((await send(`${lapse.url}/orders/0`, { headers: [bearer(token)] })).status, 200)
  redis.pause()
  const MARGIN_MS = 250
  let slowest = 0
  for (let i = 1; i <= 10; i++) {
    const started = performance.now()
    const res = await send(`${lapse.url}/orders/${i}`, { headers: [bearer(token)] })
    slowest = Math.max(slowest, performance.now() - started)
    t.equal(res.status, 503, `request ${i} refused`)
    t.equal(res.json().error, 'temporarily_unavailable')
  }
  t.equal(lapse.upstream.calls, 1, 'none reached the upstream')
  t.ok(slowest <= BUDGET_MS + MARGIN_MS, `slowest refusal ${slowest.toFixed(0)} ms (budget ${BUDGET_MS} + margin ${MARGIN_MS})`)
  t.comment(`frozen Redis: slowest refusal ${slowest.toFixed(0)} ms`)
  redis.resume()
  await untilReady(lapse)
  t.equal((await send(`${lapse.url}/orders/11`, { headers: [bearer(token)] })).status, 200, 'allowed again after SIGCONT')
})
