// The use counter: memory, Redis and Redis Cluster against one shared case suite, plus what only
// Redis has: the key layout under the revocation set's hash tag, one round trip per use, and
// failing within the budget when Redis is gone.
import t from 'tap'
import { manualClock } from '../../src/core/clock.js'
import { createMemoryUseCounter } from '../../src/revocation/use-counter-memory.js'
import { createRedisUseCounter, useKeyOf } from '../../src/revocation/use-counter-redis.js'
import { startRedis, startRedisCluster, waitFor } from '../fixtures/redis-server.js'
import { runUseCounterCases } from './use-counter.cases.js'

t.test('memory', async (t) => {
  runUseCounterCases(t, async () => {
    const clock = manualClock(Date.parse('2030-01-01T00:00:00Z'))
    const counter = createMemoryUseCounter({ clock })
    return {
      counter,
      clock,
      async checkExpiry(t, key, expiresAtS) {
        clock.set(expiresAtS * 1000 - 1)
        t.equal(counter.take(key, 1, expiresAtS), 2, 'still counted a millisecond before')
        clock.set(expiresAtS * 1000)
        t.equal(counter.take(key, 1, expiresAtS + 100), 1, 'gone at expiresAtS')
      },
    }
  })
})

let prefixes = 0
t.test('Redis', async (t) => {
  const redis = await startRedis()
  t.teardown(() => redis.stop())
  const raw = redis.client()
  runUseCounterCases(t, async (t) => {
    const clock = manualClock(Date.now())
    const prefix = `u${++prefixes}`
    const counter = createRedisUseCounter({ url: redis.url, prefix, timeoutMs: 1000 })
    t.teardown(() => counter.close())
    await waitFor(() => counter.ready(), 5000, 'counter ready')
    return {
      counter,
      clock,
      async checkExpiry(t, key, expiresAtS) {
        const redisKey = useKeyOf(prefix, key)
        t.match(redisKey, new RegExp(`^\\{${prefix}\\}:use:[A-Za-z0-9_-]{43}$`), 'under the prefix hash tag, hashed')
        t.equal(await raw.pexpiretime(redisKey), expiresAtS * 1000, 'PEXPIREAT exp + skew')
      },
    }
  })

  t.test('one round trip per use, whatever the server had cached', async (t) => {
    const counter = createRedisUseCounter({ url: redis.url, prefix: `u${++prefixes}`, timeoutMs: 1000 })
    t.teardown(() => counter.close())
    await waitFor(() => counter.ready(), 5000, 'counter ready')
    await counter.take({ scope: 's', iss: 'i', jti: 'warm' }, 1, Math.floor(Date.now() / 1000) + 60)
    const scripts = async () =>
      [...(await raw.info('commandstats')).matchAll(/cmdstat_(?:evalsha|eval):calls=(\d+)/g)].reduce((sum, m) => sum + Number(m[1]), 0)
    const before = await scripts()
    await counter.take({ scope: 's', iss: 'i', jti: 'one' }, 1, Math.floor(Date.now() / 1000) + 60)
    t.equal((await scripts()) - before, 1, 'one script call')
  })

  t.test('Redis gone: refused within the budget (ERR_REVOCATION_UNAVAILABLE)', async (t) => {
    const down = await startRedis()
    const counter = createRedisUseCounter({ url: down.url, prefix: 'gone', timeoutMs: 100 })
    t.teardown(() => counter.close())
    await waitFor(() => counter.ready(), 5000, 'counter ready')
    await counter.take({ scope: 's', iss: 'i', jti: 'x' }, 1, Math.floor(Date.now() / 1000) + 60)
    await down.kill()
    const started = Date.now()
    await t.rejects(Promise.resolve(counter.take({ scope: 's', iss: 'i', jti: 'y' }, 1, Math.floor(Date.now() / 1000) + 60)), {
      code: 'ERR_REVOCATION_UNAVAILABLE',
    })
    t.ok(Date.now() - started < 1000, 'within the budget')
    await down.stop()
  })
})

t.test('Redis Cluster (three masters)', async (t) => {
  const cluster = await startRedisCluster()
  t.teardown(() => cluster.stop())
  const raws = cluster.nodes.map((node) => node.client())
  runUseCounterCases(t, async (t) => {
    const clock = manualClock(Date.now())
    const prefix = `c${++prefixes}`
    const counter = createRedisUseCounter({ url: cluster.url, prefix, timeoutMs: 2000 })
    t.teardown(() => counter.close())
    await waitFor(
      async () => {
        try {
          await counter.take({ scope: 'warm', iss: 'i', jti: 'up' }, 1000, Math.floor(Date.now() / 1000) + 60)
          return true
        } catch {
          return false
        }
      },
      10_000,
      'cluster counter ready',
    )
    return {
      counter,
      clock,
      async checkExpiry(t, key, expiresAtS) {
        const redisKey = useKeyOf(prefix, key)
        const found: number[] = []
        for (const r of raws) {
          // A node that does not own the slot answers MOVED.
          const at = await r.pexpiretime(redisKey).catch(() => undefined)
          if (at !== undefined && at > 0) found.push(at)
        }
        t.same(found, [expiresAtS * 1000], 'one key, on one node, expiring at exp + skew')
      },
    }
  })
})
