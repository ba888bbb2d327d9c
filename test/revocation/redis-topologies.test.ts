// The shared RevocationStore contract through Sentinel and on a three-master Cluster, where the
// hash tag must keep every key of one check in one slot.
import { setTimeout as sleep } from 'node:timers/promises'
import t, { type Test } from 'tap'
import type { Redis } from 'ioredis'
import { manualClock, nowS } from '../../src/core/clock.js'
import type { RevocationEntry } from '../../src/core/types.js'
import { createRedisStore } from '../../src/revocation/redis-store.js'
import { startRedisCluster, startRedisSentinel, waitFor } from '../fixtures/redis-server.js'
import { entryAt, listAll, runStoreCases, tokenRef, type StoreFactory } from './store.cases.js'

let stores = 0
/** A store on its own prefix, ready and receiving events; `clients` are the servers to inspect. */
const factoryFor =
  (url: string, clients: () => Redis[], cache: boolean): StoreFactory =>
  async (t: Test) => {
    const clock = manualClock(Date.now())
    const prefix = `topo${++stores}`
    const store = createRedisStore({ url, prefix, timeoutMs: 1000, clock, cache })
    t.teardown(() => store.close())
    await waitFor(() => store.ready() && store.eventsLive(), 10_000, 'store ready')
    return {
      store,
      clock,
      async elapse(seconds: number) {
        clock.set(clock.now() + seconds * 1000)
        await sleep(seconds * 1000)
      },
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
  t.test('cache off', async (t) =>
    runStoreCases(
      t,
      factoryFor(sentinel.url, () => [raw], false),
    ),
  )
  t.test('cache on', async (t) =>
    runStoreCases(
      t,
      factoryFor(sentinel.url, () => [raw], true),
    ),
  )
})

t.test('Cluster (three masters)', async (t) => {
  const cluster = await startRedisCluster()
  t.teardown(() => cluster.stop())
  const raws = cluster.nodes.map((node) => node.client())
  t.test('cache off', async (t) =>
    runStoreCases(
      t,
      factoryFor(cluster.url, () => raws, false),
    ),
  )
  t.test('cache on', async (t) =>
    runStoreCases(
      t,
      factoryFor(cluster.url, () => raws, true),
    ),
  )

  t.test("the list is one node's SCAN: every key of the set is on the node owning the tag's slot", async (t) => {
    const { store, clock } = await factoryFor(cluster.url, () => raws, false)(t)
    const put = []
    for (let i = 0; i < 40; i++) put.push(await store.put(entryAt(clock, 'task', `SPREAD-${i}`)))
    const prefix = `topo${stores}`
    const perNode = await Promise.all(raws.map(async (raw) => (await raw.keys(`{${prefix}}:rev:*`)).length))
    t.same(
      perNode.filter((n) => n > 0),
      [40],
      'all 40 keys on one node',
    )
    const pages = await listAll(t, store, { limit: 7 })
    t.ok(pages.length >= 6, `${pages.length} pages`)
    t.same(
      pages
        .flat()
        .map((e) => e.value)
        .sort(),
      put.map((e) => e.value).sort(),
      'every entry listed once',
    )
  })

  t.test('a check of many claims is one MGET on one node, and any node relays the events', async (t) => {
    const { store, clock } = await factoryFor(cluster.url, () => raws, true)(t)
    // Values chosen so that, without the hash tag, their keys would spread over the nodes.
    const values = Array.from({ length: 12 }, (_, i): [string, string] => ['task', `TASK-${i}`])
    await store.put(entryAt(clock, 'task', 'TASK-11'))
    t.equal(await store.isRevoked(tokenRef(nowS(clock), values)), true)
    t.equal(await store.isRevoked(tokenRef(nowS(clock), values.slice(0, 11))), false)
  })
})
