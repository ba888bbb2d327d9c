// The Redis DPoP replay cache against the shared contract on a real redis-server, plus what only
// Redis has: the key layout beside the revocation set, and failing closed within the budget.
import t from 'tap'
import { createRedisReplayCache } from '../../src/revocation/replay-redis.js'
import { startRedis, startRedisCluster, waitFor } from '../fixtures/redis-server.js'
import { runReplayCases } from './replay.cases.js'

const redis = await startRedis()
t.teardown(() => redis.stop())
let prefixes = 0

async function open(t: Parameters<Parameters<typeof runReplayCases>[1]>[0], prefix = `r${++prefixes}`, timeoutMs = 1000) {
  const cache = createRedisReplayCache({ url: redis.url, prefix, timeoutMs })
  t.teardown(() => cache.close())
  await waitFor(() => cache.ready(), 5000, 'replay cache ready')
  return cache
}

t.test('the shared contract', async (t) => {
  runReplayCases(t, async (t) => ({ cache: await open(t), expire: (ms) => new Promise((resolve) => setTimeout(resolve, ms)) }))
})

t.test("one key per proof, in the revocation set's hash tag, with its expiry in Redis", async (t) => {
  const cache = await open(t, 'lapse-x')
  t.equal(await cache.firstUse('thumb:jti-9', 90_000), true)
  const raw = redis.client()
  const keys = await raw.keys('*lapse-x*')
  t.same(keys, ['{lapse-x}:dpop:thumb:jti-9'])
  const ttl = await raw.pttl(keys[0]!)
  t.ok(ttl > 85_000 && ttl <= 90_000, `PTTL ${ttl}`)
})

t.test('two caches on one Redis share the record: a key used at one is refused at the other', async (t) => {
  const a = await open(t, 'shared')
  const b = await open(t, 'shared')
  t.equal(await a.firstUse('k:1', 60_000), true)
  t.equal(await b.firstUse('k:1', 60_000), false)
})

t.test('a frozen server → ReplayUnavailableError within the budget, never an answer', async (t) => {
  const cache = await open(t, 'frozen', 100)
  redis.pause()
  t.teardown(() => redis.resume())
  const started = Date.now()
  await t.rejects(cache.firstUse('k:1', 60_000), { code: 'ERR_REPLAY_UNAVAILABLE' })
  t.ok(Date.now() - started < 1000, 'answered within the budget')
  redis.resume()
})

t.test('the shared contract on a three-node Cluster: every key in the one slot of the hash tag', async (t) => {
  const cluster = await startRedisCluster()
  t.teardown(() => cluster.stop())
  let n = 0
  runReplayCases(t, async (t) => {
    const cache = createRedisReplayCache({ url: cluster.url, prefix: `c${++n}`, timeoutMs: 2000 })
    t.teardown(() => cache.close())
    await waitFor(() => cache.ready(), 10_000, 'cluster replay cache ready')
    return { cache, expire: (ms) => new Promise((resolve) => setTimeout(resolve, ms)) }
  })
})
