// A real Sentinel failover under load: a master, its replica and a Sentinel (down-after 1000 ms),
// four Lapse instances sharing the set through Sentinel (two with the local cache on, the default,
// two with it off). A revoked subject and a valid one are requested on every instance in a loop
// while the master is SIGKILLed and the replica promoted, until every instance answers normally.
//
// What must hold: the revoked token is never allowed (401 revoked or 503, never 2xx, never at the
// upstream); every refusal of the valid token is a 503, answered within the budget, never a hang;
// the revocations the replica had received before the kill survive the failover. Redis replicates
// asynchronously and Lapse's 201 does not wait for a replica, so the test waits until the replica
// holds every entry before the kill: an entry acknowledged but not yet replicated can be lost
// (docs/revocation.md "Durability").
import t from 'tap'
import { bearer, runApp, send, type Lapse } from '../fixtures/app.js'
import { testKeys } from '../fixtures/keys.js'
import { sleep, startRedisSentinel, waitFor } from '../fixtures/redis-server.js'
import { startUpstream } from '../fixtures/upstream.js'
import { admin, entryKey } from '../revocation-e2e/helpers.js'

const PREFIX = 'failover'
const SURVIVORS = 40
const LOOP_LIMIT_MS = 25_000
const MAX_ROUNDS = 20_000
/** A refusal must come within this: Lapse fails closed at once, it does not queue (issue 28). */
const ANSWER_WITHIN_MS = 1500

interface Sample {
  readonly instance: string
  readonly kind: 'revoked' | 'valid'
  readonly at: number
  readonly ms: number
  readonly status: number
  readonly error?: string
  readonly description?: string
}

t.test('Sentinel failover under load: no revoked token allowed, only 503s in the outage, revocations kept', async (t) => {
  const sentinel = await startRedisSentinel({ replica: true, downAfterMs: 1000, failoverTimeoutMs: 2000 })
  t.teardown(() => sentinel.stop())
  const replica = sentinel.replica!
  const upstream = await startUpstream()
  t.teardown(() => upstream.close())

  const instances: Array<{ name: string; lapse: Lapse }> = []
  for (const [name, cache] of [
    ['cache-on-1', undefined],
    ['cache-on-2', undefined],
    ['cache-off-1', 'false'],
    ['cache-off-2', 'false'],
  ] as const) {
    const lapse = await runApp(t, {
      upstream,
      env: { LAPSE_REDIS_URL: sentinel.url, LAPSE_REDIS_PREFIX: PREFIX, ...(cache ? { LAPSE_REVOCATION_CACHE: cache } : {}) },
    })
    await waitFor(async () => (await send(`${lapse.adminUrl}/readyz`)).status === 200, 10_000, `${name} ready`)
    instances.push({ name, lapse })
  }

  const keys = await testKeys()
  const revokedToken = await keys.mint({ sub: 'failover-revoked' })
  const validToken = await keys.mint({ sub: 'failover-valid' })
  // Written through one instance, read by all: the set is shared.
  const subjects = ['failover-revoked', ...Array.from({ length: SURVIVORS }, (_, i) => `failover-survivor-${i}`)]
  for (const value of subjects) {
    const res = await admin(instances[0]!.lapse, 'POST', '/v1/revocations', { body: { claim: 'sub', value, reason: 'failover test' } })
    t.equal(res.status, 201, `revoke ${value}`, { diagnostic: false })
  }
  const entryKeys = subjects.map((value) => entryKey(PREFIX, 'sub', value))
  const onReplica = replica.client()
  await waitFor(async () => (await onReplica.mget(...entryKeys)).every((v) => v !== null), 5000, 'every entry on the replica')
  t.pass(`the replica holds all ${subjects.length} entries before the kill`)

  const samples: Sample[] = []
  const one = async (instance: string, lapse: Lapse, kind: Sample['kind'], n: number) => {
    const start = performance.now()
    const res = await send(`${lapse.url}/orders/${kind}-${n}`, { headers: [bearer(kind === 'revoked' ? revokedToken : validToken)] }).catch(
      (err: NodeJS.ErrnoException) => ({ status: 0, json: () => ({ error: err.code ?? err.message }) }),
    )
    const ms = performance.now() - start
    let body: { error?: string; error_description?: string } = {}
    if (res.status !== 200) body = res.json() as typeof body
    samples.push({
      instance,
      kind,
      at: start,
      ms,
      status: res.status,
      ...(body.error ? { error: body.error } : {}),
      ...(body.error_description ? { description: body.error_description } : {}),
    })
  }
  let stop = false
  let rounds = 0
  const loopStart = performance.now()
  const loop = (async () => {
    while (!stop && rounds < MAX_ROUNDS && performance.now() - loopStart < LOOP_LIMIT_MS) {
      rounds++
      await Promise.all(instances.flatMap(({ name, lapse }) => [one(name, lapse, 'revoked', rounds), one(name, lapse, 'valid', rounds)]))
    }
  })()

  await sleep(1000)
  const killedAt = performance.now()
  await sentinel.master.kill()
  await waitFor(async () => (await sentinel.masterPort()) === replica.port, 15_000, 'Sentinel promoted the replica')
  const promotedAt = performance.now()
  // Normal again: on every instance the last 10 answers of each token, all asked after the
  // promotion, are 200 for the valid token and 401 for the revoked one.
  const normal = () =>
    instances.every(({ name }) =>
      (['valid', 'revoked'] as const).every((kind) => {
        const last = samples.filter((s) => s.instance === name && s.kind === kind && s.at > promotedAt).slice(-10)
        return last.length === 10 && last.every((s) => s.status === (kind === 'valid' ? 200 : 401))
      }),
    )
  let recovered = true
  await waitFor(normal, Math.max(1000, LOOP_LIMIT_MS - (performance.now() - loopStart) - 500), 'every instance answering normally').catch(
    () => {
      recovered = false
    },
  )
  const normalAt = performance.now()
  stop = true
  await loop
  t.ok(recovered, 'every instance answers normally again after the promotion, without a restart')
  t.ok(normalAt - promotedAt < 5000, `within 5 s of the promotion (${(normalAt - promotedAt).toFixed(0)} ms)`)

  const revoked = samples.filter((s) => s.kind === 'revoked')
  const valid = samples.filter((s) => s.kind === 'valid')
  t.equal(
    revoked.filter((s) => s.status >= 200 && s.status < 300).length,
    0,
    `no wrongful allow in ${revoked.length} requests with the revoked token`,
  )
  t.same(
    revoked.filter(
      (s) => !(s.status === 401 && s.description === 'token was revoked') && !(s.status === 503 && s.error === 'temporarily_unavailable'),
    ),
    [],
    'the revoked token got only 401 revoked or 503',
  )
  t.notOk(
    upstream.requests.some((r) => r.url.startsWith('/orders/revoked-')),
    'the upstream never saw a revoked request',
  )
  t.same(
    valid.filter((s) => s.status !== 200 && !(s.status === 503 && s.error === 'temporarily_unavailable')),
    [],
    'every refusal of the valid token is 503 temporarily_unavailable',
  )
  const slowest = Math.max(...samples.map((s) => s.ms))
  t.ok(slowest < ANSWER_WITHIN_MS, `every answer within ${ANSWER_WITHIN_MS} ms (slowest ${slowest.toFixed(0)} ms): no hang`)

  const refused = valid.filter((s) => s.status === 503 && s.at >= killedAt)
  t.ok(refused.length > 0, 'the outage was seen (the valid token got 503 after the kill)')
  // A 503 before the kill is a check that missed its budget on this busy host (issue 28 finding 2).
  const before = valid.filter((s) => s.status === 503 && s.at < killedAt).map((s) => s.instance)
  const from = Math.min(...refused.map((s) => s.at))
  const to = Math.max(...refused.map((s) => s.at + s.ms))
  const perInstance = instances.map(({ name }) => {
    const own = refused.filter((s) => s.instance === name)
    return own.length === 0
      ? `${name} none`
      : `${name} ${(Math.max(...own.map((s) => s.at + s.ms)) - Math.min(...own.map((s) => s.at))).toFixed(0)} ms`
  })
  t.comment(
    `${rounds} rounds, ${samples.length} requests (${revoked.length} with the revoked token, ${revoked.filter((s) => s.status >= 200 && s.status < 300).length} allowed); ${before.length} valid-token 503s before the kill${before.length ? ` (${before.join(', ')})` : ''}`,
  )
  t.comment(
    `promotion ${(promotedAt - killedAt).toFixed(0)} ms after the kill (down-after-milliseconds 1000); 503 window ${(to - from).toFixed(0)} ms ` +
      `(first ${(from - killedAt).toFixed(0)} ms, last ${(to - killedAt).toFixed(0)} ms after the kill; ${refused.length} valid-token 503s); ` +
      `last 503 ${(to - promotedAt).toFixed(0)} ms after the promotion; normal on every instance ${(normalAt - killedAt).toFixed(0)} ms after the kill`,
  )
  t.comment(`503 window per instance: ${perInstance.join(', ')}; slowest answer ${slowest.toFixed(0)} ms`)

  // The failover kept what the replica had: read back through another instance, and on the new master.
  const reads = await Promise.all(subjects.map((value) => admin(instances[3]!.lapse, 'GET', `/v1/revocations/sub/${value}`)))
  t.equal(
    reads.filter((r) => r.status === 200).length,
    subjects.length,
    `${subjects.length}/${subjects.length} revocations survived the failover`,
  )
  t.ok(
    (await onReplica.mget(...entryKeys)).every((v) => v !== null),
    'and the promoted master holds them',
  )
})
