// Durability is the operator's choice in Redis; Lapse reads it at start (CONFIG GET appendonly /
// save), warns once when a Redis restart would forget revocations, and gauges it
// (lapse.revocation.persistent, attribute lapse.revocation.persistence).
import t, { type Test } from 'tap'
import { runApp, waitFor, type Lapse } from '../fixtures/app.js'
import { inMemoryTelemetry } from '../telemetry/in-memory.js'
import type { RedisRevocationStore } from '../../src/revocation/redis-store.js'
import { redisEnv, redisFor, untilReady } from './helpers.js'

const WARNING = /^Redis keeps the revocation set/

async function lapseOn(t: Test, args: string[], prefix: string) {
  const redis = await redisFor(t, { args })
  const mem = inMemoryTelemetry(t)
  const lapse = await runApp(t, { env: redisEnv(redis, prefix), telemetry: mem.telemetry })
  await untilReady(lapse)
  const store = lapse.running.deps.revocations as RedisRevocationStore
  return { lapse, mem, store }
}

const warnings = (lapse: Lapse) => lapse.lines.filter((l) => WARNING.test(String(l.msg)))

for (const [mode, args, value] of [
  ['none', [], 0],
  ['rdb', ['--save', '3600 1'], 0],
  ['aof', ['--appendonly', 'yes'], 1],
] as const) {
  t.test(`${mode}: read at start, ${value ? 'no warning' : 'one warning'}, gauge ${value}`, async (t) => {
    const { lapse, mem, store } = await lapseOn(t, [...args], `p-${mode}`)
    await waitFor(() => store.persistence() !== 'unknown', 'persistence read', 3000)
    t.equal(store.persistence(), mode)
    const points = await mem.points('lapse.revocation.persistent')
    t.equal(points.length, 1)
    t.equal(points[0]?.value, value)
    t.equal(points[0]?.attributes['lapse.revocation.persistence'], mode)
    if (value) {
      t.equal(warnings(lapse).length, 0, 'no durability warning')
    } else {
      t.equal(warnings(lapse).length, 1, 'warned once')
      t.match(warnings(lapse)[0], { level: 40, persistence: mode, msg: /a Redis restart forgets .*set appendonly yes/ })
    }
  })
}

t.test('CONFIG refused (managed Redis): unknown, no warning, no gauge, and Lapse works', async (t) => {
  const { lapse, mem, store } = await lapseOn(t, ['--rename-command', 'CONFIG', ''], 'p-refused')
  // The refusal comes back at once; give it the same time the others needed.
  await new Promise((resolve) => setTimeout(resolve, 300))
  t.equal(store.persistence(), 'unknown')
  t.equal(warnings(lapse).length, 0)
  t.same(await mem.points('lapse.revocation.persistent'), [])
  t.equal(lapse.running.deps.revocations.ready(), true)
})
