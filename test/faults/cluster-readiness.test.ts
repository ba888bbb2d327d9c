// The same through Sentinel: its master gone → 503 within a second, back → 200.
//
// Redis Cluster keeps the whole revocation set in the one slot of its `{prefix}` hash tag. With the
// node owning that slot gone, every check is refused: /readyz must say so within a second, so a
// load balancer drains the instance, and say ready again once the slot is served, without a restart.
import t, { type Test } from 'tap'
import { Redis } from 'ioredis'
import { bearer, runApp, send, waitFor, type Lapse } from '../fixtures/app.js'
import { testKeys } from '../fixtures/keys.js'
import { startRedisCluster, startRedisSentinel, type RedisCluster, type RedisServer } from '../fixtures/redis-server.js'

const PREFIX = 'faults'

/** The master that serves the slot of `{PREFIX}`, asked of a node of the cluster other than `dead`. */
async function ownerOf(cluster: RedisCluster, dead?: RedisServer): Promise<RedisServer> {
  const ask = cluster.nodes.find((n) => n !== dead)!
  const probe = new Redis({ host: '127.0.0.1', port: ask.port, lazyConnect: true })
  try {
    const slot = Number(await probe.call('CLUSTER', 'KEYSLOT', `{${PREFIX}}`))
    const ranges = (await probe.call('CLUSTER', 'SLOTS')) as Array<[number, number, [string, number]]>
    const range = ranges.find(([from, to]) => slot >= from && slot <= to)
    const node = cluster.nodes.find((n) => n.port === Number(range?.[2][1]))
    if (!node) throw new Error(`no owner found for slot ${slot}`)
    return node
  } finally {
    probe.disconnect()
  }
}

/** Polls /readyz every 10 ms until it answers `status`; resolves how long that took. */
async function readyzBecomes(lapse: Lapse, status: number, withinMs: number): Promise<number> {
  const start = performance.now()
  await waitFor(async () => (await send(`${lapse.adminUrl}/readyz`)).status === status, `/readyz ${status}`, withinMs)
  return performance.now() - start
}

async function lapseOn(t: Test, cluster: { url: string }): Promise<Lapse> {
  const lapse = await runApp(t, {
    env: { LAPSE_REDIS_URL: cluster.url, LAPSE_REDIS_PREFIX: PREFIX, LAPSE_REVOCATION_TIMEOUT: '500', LAPSE_REVOCATION_CACHE: 'false' },
  })
  await readyzBecomes(lapse, 200, 10_000)
  return lapse
}

t.test("three masters: the owner of the set's slot killed → /readyz 503 within 1 s; restarted → 200, no restart of Lapse", async (t) => {
  const cluster = await startRedisCluster()
  t.teardown(() => cluster.stop())
  const lapse = await lapseOn(t, cluster)
  const token = await (await testKeys()).mint({ sub: 'cluster-reader' })
  t.equal((await send(`${lapse.url}/orders/1`, { headers: [bearer(token)] })).status, 200)

  const owner = await ownerOf(cluster)
  await owner.kill()
  const downMs = await readyzBecomes(lapse, 503, 5000)
  t.ok(downMs < 1000, `/readyz 503 ${downMs.toFixed(0)} ms after the owner died`)
  t.comment(`readiness: 503 ${downMs.toFixed(0)} ms after the owner node was killed`)
  const refused = await send(`${lapse.url}/orders/2`, { headers: [bearer(token)] })
  t.equal(refused.status, 503, 'and the checks are indeed refused')
  t.equal(refused.json().error, 'temporarily_unavailable')
  t.equal(lapse.upstream.calls, 1, 'the refused request never reached the upstream')

  await owner.restart()
  const upMs = await readyzBecomes(lapse, 200, 10_000)
  t.comment(`readiness: 200 ${upMs.toFixed(0)} ms after the owner node was restarted`)
  t.equal((await send(`${lapse.url}/orders/3`, { headers: [bearer(token)] })).status, 200, 'checks answered again')
})

t.test('a replica per master: the owner killed → /readyz 503 within 1 s; its replica promoted → 200, no restart of Lapse', async (t) => {
  const cluster = await startRedisCluster({ replicas: 1, nodeTimeoutMs: 1000 })
  t.teardown(() => cluster.stop())
  const lapse = await lapseOn(t, cluster)
  const token = await (await testKeys()).mint({ sub: 'cluster-reader' })
  t.equal((await send(`${lapse.url}/orders/1`, { headers: [bearer(token)] })).status, 200)

  const owner = await ownerOf(cluster)
  await owner.kill()
  const downMs = await readyzBecomes(lapse, 503, 5000)
  t.ok(downMs < 1000, `/readyz 503 ${downMs.toFixed(0)} ms after the owner died`)
  const upMs = await readyzBecomes(lapse, 200, 20_000)
  t.comment(
    `readiness: 503 ${downMs.toFixed(0)} ms after the owner was killed, 200 again ${(downMs + upMs).toFixed(0)} ms after (failover, cluster-node-timeout 1000 ms)`,
  )
  t.not((await ownerOf(cluster, owner)).port, owner.port, 'a replica now owns the slot')
  t.equal((await send(`${lapse.url}/orders/2`, { headers: [bearer(token)] })).status, 200, 'checks answered by the promoted replica')
})

t.test('Sentinel: the master killed → /readyz 503 within 1 s; restarted → 200, no restart of Lapse', async (t) => {
  const sentinel = await startRedisSentinel()
  t.teardown(() => sentinel.stop())
  const lapse = await lapseOn(t, sentinel)
  const token = await (await testKeys()).mint({ sub: 'sentinel-reader' })
  t.equal((await send(`${lapse.url}/orders/1`, { headers: [bearer(token)] })).status, 200)
  await sentinel.master.kill()
  const downMs = await readyzBecomes(lapse, 503, 5000)
  t.ok(downMs < 1000, `/readyz 503 ${downMs.toFixed(0)} ms after the master died`)
  await sentinel.master.restart()
  const upMs = await readyzBecomes(lapse, 200, 10_000)
  t.comment(`readiness: 503 ${downMs.toFixed(0)} ms after the master was killed, 200 ${upMs.toFixed(0)} ms after its restart`)
  t.equal((await send(`${lapse.url}/orders/2`, { headers: [bearer(token)] })).status, 200, 'checks answered again')
})
