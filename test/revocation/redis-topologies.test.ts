// The shared RevocationStore contract through Sentinel and on a three-master Cluster, where the
// hash tag must keep every key of one check in one slot.
import t, { type Test } from 'tap'
import type { Redis } from 'ioredis'
import { manualClock, nowS } from '../../src/core/clock.js'
import type { RevocationEntry } from '../../src/core/types.js'
import { createRedisStore } from '../../src/revocation/redis-store.js'
import { startRedisCluster, startRedisSentinel, waitFor } from '../fixtures/redis-server.js'
import { entryAt, runStoreCases, tokenRef, type StoreFactory } from './store.cases.js'

let stores = 0
/** A store on its own prefix, ready and receiving events; `clients` are the servers to inspect. */
const factoryFor = (url: string, clients: () => Redis[], cache: boolean): StoreFactory => async (t: Test) => {
  const clock = manualClock(Date.now())
  const prefix = `topo${++stores}`
  const store = createRedisStore({ url, prefix, timeoutMs: 1000, clock, cache })
  t.teardown(() => store.close())
  await waitFor(() => store.ready() && store.eventsLive(), 10_000, 'store ready')
  return {
    store,
    clock,
    async checkExpiry(t: Test, entry: RevocationEntry) {
      const expected = entry.expiresAtS - nowS(clock)
      const ttls: number[] = []
      for (const client of clients()) for (const key of await client.keys(`{${prefix}}:rev:*`)) ttls.push(await client.ttl(key))
      t.equal(ttls.length, 1, 'one key, on one node')
      t.ok((ttls[0] ?? -1) <= expected && (ttls[0] ?? -1) >= expected - 2, `Redis TTL ${ttls[0]} s is expiresAtS - now (${expected} s)`)
    },
  }
}

t.test('Sentinel (password-protected master)', async (t) => {
  const sentinel = await startRedisSentinel({ password: 'sentinel-pw' })
  t.teardown(() => sentinel.stop())
  t.match(sentinel.url, /^redis-sentinel:\/\//)
  const raw = sentinel.master.client()
  t.test('cache off', async (t) => runStoreCases(t, factoryFor(sentinel.url, () => [raw], false)))
  t.test('cache on', async (t) => runStoreCases(t, factoryFor(sentinel.url, () => [raw], true)))
})

t.test('Cluster (three masters)', async (t) => {
  const cluster = await startRedisCluster()
  t.teardown(() => cluster.stop())
  const raws = cluster.nodes.map((node) => node.client())
  t.test('cache off', async (t) => runStoreCases(t, factoryFor(cluster.url, () => raws, false)))
  t.test('cache on', async (t) => runStoreCases(t, factoryFor(cluster.url, () => raws, true)))

  t.test('a check of many claims is one MGET on one node, and any node relays the events', async (t) => {
    const { store, clock } = await factoryFor(cluster.url, () => raws, true)(t)
    // Values chosen so that, without the hash tag, their keys would spread over the nodes.
    const values = Array.from({ length: 12 }, (_, i): [string, string] => ['task', `TASK-${i}`])
    await store.put(entryAt(clock, 'task', 'TASK-11'))
    t.equal(await store.isRevoked(tokenRef(nowS(clock), values)), true)
    t.equal(await store.isRevoked(tokenRef(nowS(clock), values.slice(0, 11))), false)
  })
})
