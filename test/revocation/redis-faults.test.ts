// The Redis set when things go wrong: killed, frozen and restarted servers, authentication,
// sockets and TLS, several sidecars sharing one set, and the cache's guarantee under all that.
import { performance } from 'node:perf_hooks'
import t, { type Test } from 'tap'
import { manualClock, nowS } from '../../src/core/clock.js'
import { RevocationUnavailableError, type RevocationStore, type TokenRef } from '../../src/core/types.js'
import { createRedisStore, type RedisRevocationStore, type RedisStoreTuning } from '../../src/revocation/redis-store.js'
import { sleep, startLatencyProxy, startRedis, waitFor } from '../fixtures/redis-server.js'
import { entryAt, eventDuring, tokenRef } from './store.cases.js'

const TIMEOUT_MS = 50 // the design's default budget, used where the budget is what is tested
const RELAXED_MS = 1000 // elsewhere: a busy CI box must not turn a functional test into a timeout
const MARGIN_MS = 250 // "timeout plus a small margin": generous, so a loaded CI box does not flake

let stores = 0
function openStore(
  t: Test,
  url: string,
  opts: {
    cache: boolean
    timeoutMs?: number
    prefix?: string
    tuning?: Partial<RedisStoreTuning>
    tls?: { ca: string }
  },
) {
  const clock = manualClock(Date.now())
  const store = createRedisStore({
    url,
    prefix: opts.prefix ?? `f${++stores}`,
    timeoutMs: opts.timeoutMs ?? RELAXED_MS,
    clock,
    cache: opts.cache,
    ...(opts.tuning ? { tuning: opts.tuning } : {}),
    ...(opts.tls ? { tls: opts.tls } : {}),
  })
  t.teardown(() => store.close())
  return { store, clock }
}

const live = (store: RedisRevocationStore) => waitFor(() => store.ready() && store.eventsLive(), 5000, 'store ready')

interface Outcome {
  startedMs: number
  ms: number
  result: 'revoked' | 'allowed' | 'unavailable' | 'other' | 'hang'
}

/** Starts a check every `everyMs` for `forMs`, and waits for all of them (a hang is recorded, not waited out). */
async function checkContinuously(store: RevocationStore, token: TokenRef, forMs: number, everyMs = 2): Promise<Outcome[]> {
  const pending: Array<Promise<Outcome>> = []
  const endMs = performance.now() + forMs
  while (performance.now() < endMs) {
    pending.push(timedCheck(store, token))
    await sleep(everyMs)
  }
  return Promise.all(pending)
}

async function timedCheck(store: RevocationStore, token: TokenRef): Promise<Outcome> {
  const startedMs = performance.now()
  const check = store.isRevoked(token).then(
    (revoked): Outcome['result'] => (revoked ? 'revoked' : 'allowed'),
    (err: unknown): Outcome['result'] => (err instanceof RevocationUnavailableError ? 'unavailable' : 'other'),
  )
  const result = await Promise.race([check, sleep(5000).then(() => 'hang' as const)])
  return { startedMs, ms: performance.now() - startedMs, result }
}

async function failsClosed(t: Test, work: Promise<unknown>, msg = 'fails closed: RevocationUnavailableError') {
  const err = await work.then(
    () => undefined,
    (e: unknown) => e,
  )
  t.ok(err instanceof RevocationUnavailableError, msg)
}

const count = (outcomes: Outcome[], result: Outcome['result']) => outcomes.filter((o) => o.result === result).length
const slowest = (outcomes: Outcome[]) => Math.max(0, ...outcomes.map((o) => o.ms))

t.test('Redis killed mid-run: every check fails closed within the budget; restarted: answers again, same store', async (t) => {
  const redis = await startRedis()
  t.teardown(() => redis.stop())
  const { store, clock } = openStore(t, redis.url, { cache: false, timeoutMs: TIMEOUT_MS })
  await live(store)
  const token = tokenRef(nowS(clock), [['sub', 'alice']])
  t.equal(await store.isRevoked(token), false)

  let killedAtMs = Infinity
  const run = checkContinuously(store, token, 1200)
  await sleep(300)
  await redis.kill()
  killedAtMs = performance.now()
  const outcomes = await run
  const afterKill = outcomes.filter((o) => o.startedMs >= killedAtMs)
  t.ok(afterKill.length > 100, `${afterKill.length} checks after the kill`)
  t.equal(count(afterKill, 'unavailable'), afterKill.length, 'every check after the kill: revocation_unavailable')
  t.equal(count(outcomes, 'hang') + count(outcomes, 'other'), 0, 'none hangs, none fails another way')
  t.ok(slowest(outcomes) <= TIMEOUT_MS + MARGIN_MS, `slowest check ${slowest(outcomes).toFixed(1)} ms`)
  t.equal(store.ready(), false, 'not ready while Redis is down')
  await failsClosed(t, store.put(entryAt(clock, 'sub', 'alice')), 'a write fails closed too')

  await redis.restart()
  await waitFor(() => store.ready(), 5000, 'ready again after the restart')
  t.equal(await store.isRevoked(token), false, 'answers again without a new store')
  await store.put(entryAt(clock, 'sub', 'alice'))
  t.equal(await store.isRevoked(token), true)
})

t.test('Redis frozen (SIGSTOP): checks fail closed within the budget, ready() goes false, recovers on SIGCONT', async (t) => {
  const redis = await startRedis()
  t.teardown(() => redis.stop())
  const { store, clock } = openStore(t, redis.url, { cache: false, timeoutMs: TIMEOUT_MS, tuning: { socketTimeoutMs: 1000 } })
  await live(store)
  const token = tokenRef(nowS(clock), [['jti', 'j-1']])
  t.equal(await store.isRevoked(token), false)

  redis.pause()
  // A burst in one turn shares one MGET (read-batch.ts): its budget must hold for every check in it.
  const burst = await Promise.all(Array.from({ length: 50 }, (_, i) => timedCheck(store, tokenRef(nowS(clock), [['jti', `burst-${i}`]]))))
  t.equal(count(burst, 'unavailable'), burst.length, 'a burst of 50 checks: every one revocation_unavailable')
  t.ok(slowest(burst) <= TIMEOUT_MS + MARGIN_MS, `slowest check of the burst ${slowest(burst).toFixed(1)} ms`)
  const outcomes = await checkContinuously(store, token, 600, 5)
  t.equal(count(outcomes, 'unavailable'), outcomes.length, 'every check: revocation_unavailable')
  t.ok(slowest(outcomes) <= TIMEOUT_MS + MARGIN_MS, `slowest check ${slowest(outcomes).toFixed(1)} ms`)
  await waitFor(() => !store.ready(), 3000, 'not ready once the silent connection is torn down')

  redis.resume()
  await waitFor(() => store.ready(), 5000, 'ready after SIGCONT')
  t.equal(await store.isRevoked(token), false)
})

t.test('cache on, Redis frozen: cached answers stop within cacheStalenessMs, then checks fail closed', async (t) => {
  const redis = await startRedis()
  t.teardown(() => redis.stop())
  const stalenessMs = 500
  const { store, clock } = openStore(t, redis.url, {
    cache: true,
    timeoutMs: TIMEOUT_MS,
    tuning: { cacheStalenessMs: stalenessMs, heartbeatMs: 100 },
  })
  await live(store)
  const token = tokenRef(nowS(clock), [['sub', 'bob']])
  t.equal(await store.isRevoked(token), false)
  t.equal(store.cacheActive(), true)

  redis.pause()
  const pausedAtMs = performance.now()
  const outcomes = await checkContinuously(store, token, stalenessMs + 800, 5)
  const firstRefusal = outcomes.find((o) => o.result !== 'allowed')
  t.ok(firstRefusal, 'the cache stopped answering')
  const refusedAfterMs = (firstRefusal?.startedMs ?? Infinity) - pausedAtMs
  t.ok(refusedAfterMs <= stalenessMs + MARGIN_MS, `cached answers for ${refusedAfterMs.toFixed(0)} ms after the freeze`)
  const later = outcomes.filter((o) => o.startedMs >= (firstRefusal?.startedMs ?? Infinity))
  t.equal(count(later, 'unavailable'), later.length, 'from then on every check fails closed')
  t.equal(store.cacheActive(), false)
})

t.test('password-protected Redis: the right password works, a wrong one never gets ready and fails closed', async (t) => {
  const password = 'pä ss:w/o@rd'
  const redis = await startRedis({ password })
  t.teardown(() => redis.stop())
  const { store, clock } = openStore(t, redis.url, { cache: false })
  await live(store)
  await store.put(entryAt(clock, 'client_id', 'ci'))
  t.equal(await store.isRevoked(tokenRef(nowS(clock), [['client_id', 'ci']])), true)

  for (const url of [redis.url.replace(encodeURIComponent(password), 'wrong'), `redis://127.0.0.1:${redis.port}`]) {
    const { store: denied } = openStore(t, url, { cache: false })
    await sleep(300)
    t.equal(denied.ready(), false, 'not ready')
    await failsClosed(t, denied.isRevoked(tokenRef(nowS(clock), [['client_id', 'ci']])))
  }
})

t.test('Unix socket: checks, writes and events', async (t) => {
  const redis = await startRedis({ unixSocket: true })
  t.teardown(() => redis.stop())
  t.match(redis.url, /^unix:\/\/\//)
  const { store, clock } = openStore(t, redis.url, { cache: true })
  await live(store)
  const entry = entryAt(clock, 'task', 'TASK-9')
  await eventDuring(
    store,
    (e) => e.entry.value === 'TASK-9',
    () => store.put(entry),
  )
  t.equal(await store.isRevoked(tokenRef(entry.issuedBeforeS, [['task', 'TASK-9']])), true)
})

t.test('TLS (rediss://): works with the private CA, refuses an unverified server', async (t) => {
  const redis = await startRedis({ tls: true })
  t.teardown(() => redis.stop())
  t.match(redis.url, /^rediss:\/\//)
  const { store, clock } = openStore(t, redis.url, { cache: true, tls: { ca: redis.tlsCa ?? '' } })
  await live(store)
  await store.put(entryAt(clock, 'sid', 's-1'))
  t.equal(await store.isRevoked(tokenRef(nowS(clock), [['sid', 's-1']])), true)

  const { store: unverified } = openStore(t, redis.url, { cache: false })
  await sleep(300)
  t.equal(unverified.ready(), false, 'a certificate we cannot verify is not trusted')
  await failsClosed(t, unverified.isRevoked(tokenRef(nowS(clock), [['sid', 's-1']])))
})

t.test('three sidecars share one set: a revocation through one is denied by all, cache on and off', async (t) => {
  const redis = await startRedis()
  t.teardown(() => redis.stop())
  for (const cache of [false, true]) {
    const prefix = `shared-${cache}`
    const [a, b, c] = [0, 1, 2].map(() => openStore(t, redis.url, { cache, prefix }).store) as [
      RedisRevocationStore,
      RedisRevocationStore,
      RedisRevocationStore,
    ]
    await Promise.all([a, b, c].map(live))
    const clock = manualClock(Date.now())
    const token = tokenRef(nowS(clock), [['sub', 'ci-deployer']])
    for (const s of [a, b, c]) t.equal(await s.isRevoked(token), false, `allowed before (cache ${cache})`)
    const heard = [b, c].map((s) =>
      eventDuring(
        s,
        (e) => e.entry.value === 'ci-deployer',
        () => Promise.resolve(),
      ),
    )
    await a.put(entryAt(clock, 'sub', 'ci-deployer'))
    t.equal(await a.isRevoked(token), true, 'the writer denies as soon as its write is acknowledged')
    await Promise.all(heard)
    t.equal(await b.isRevoked(token), true, 'denied at B once the event arrived')
    t.equal(await c.isRevoked(token), true, 'denied at C once the event arrived')
  }
})

t.test('cache on: no check started after the event is delivered is allowed, under concurrent checks', async (t) => {
  const redis = await startRedis()
  t.teardown(() => redis.stop())
  const prefix = 'race'
  const { store: a, clock } = openStore(t, redis.url, { cache: true, prefix })
  const { store: b } = openStore(t, redis.url, { cache: true, prefix })
  await Promise.all([live(a), live(b)])
  let violations = 0
  let checked = 0
  for (let round = 0; round < 25; round++) {
    const value = `r-${round}`
    const token = tokenRef(nowS(clock), [['jti', value]])
    t.equal(await b.isRevoked(token), false)
    let delivered = false
    const off = b.subscribe((e) => {
      if (e.entry.value === value) delivered = true
    })
    const checks: Array<Promise<void>> = []
    const hammer = setInterval(() => {
      for (let i = 0; i < 4; i++) {
        const afterDelivery = delivered
        checks.push(
          b.isRevoked(token).then(
            (revoked) => {
              checked++
              if (afterDelivery && !revoked) violations++
            },
            () => {},
          ),
        )
      }
    }, 0)
    await a.put(entryAt(clock, 'jti', value))
    await waitFor(() => delivered, 3000, 'event delivered')
    await sleep(5)
    clearInterval(hammer)
    await Promise.all(checks)
    off()
  }
  t.ok(checked > 100, `${checked} concurrent checks`)
  t.equal(violations, 0, 'never allowed after the invalidation was delivered')
})

t.test('cache on: a read that left before the revocation but lands after its event is not cached', async (t) => {
  const redis = await startRedis()
  t.teardown(() => redis.stop())
  // B's data connection (named `lapse`) gets its replies 200 ms late; its event connection does not.
  const proxy = await startLatencyProxy(redis.port, { delayMs: 200, marker: '\r\n$5\r\nlapse\r\n' })
  t.teardown(() => proxy.stop())
  const prefix = 'stale-read'
  const { store: a, clock } = openStore(t, redis.url, { cache: true, prefix })
  const { store: b } = openStore(t, proxy.url, { cache: true, prefix })
  await Promise.all([live(a), live(b)])
  const token = tokenRef(nowS(clock), [['jti', 'late']])

  const early = b.isRevoked(token) // executed by Redis now, answered 200 ms later
  await sleep(50)
  await eventDuring(
    b,
    (e) => e.entry.value === 'late',
    () => a.put(entryAt(clock, 'jti', 'late')),
  )
  t.equal(await early, false, 'the early read answers for its own moment')
  t.equal(await b.isRevoked(token), true, 'its stale answer was not cached')
})

t.test('cache on: when the event connection dies the whole cache is dropped, and rebuilt after resubscribing', async (t) => {
  const redis = await startRedis()
  t.teardown(() => redis.stop())
  const prefix = 'drop'
  const { store, clock } = openStore(t, redis.url, { cache: true, prefix })
  await live(store)
  const raw = redis.client()
  const T = nowS(clock)
  const eve = tokenRef(T, [['sub', 'eve']])
  const fay = tokenRef(T, [['sub', 'fay']])
  t.equal(await store.isRevoked(eve), false)
  t.equal(await store.isRevoked(fay), false)

  // Written behind Lapse's back, without an event: the cache cannot know.
  const write = (value: string) => raw.set(`{${prefix}}:rev:sub:*:${value}`, JSON.stringify(entryAt(clock, 'sub', value)), 'EX', 600)
  await write('eve')
  await write('fay')
  t.equal(await store.isRevoked(eve), false, 'answered from the cache: no event, no invalidation')

  await raw.client('KILL', 'TYPE', 'pubsub')
  await waitFor(() => !store.cacheActive(), 2000, 'cache bypassed once the channel is gone')
  t.equal(await store.isRevoked(eve), true, 'checks go to Redis')
  t.equal(await store.isRevoked(fay), true, 'every cached answer was dropped, not just one')

  await waitFor(() => store.cacheActive(), 5000, 'cache back after resubscribing')
  t.equal(await store.isRevoked(fay), true)
})
