// The Redis set against the shared RevocationStore contract (cache off and on), plus what only
// Redis has: the key layout, the TTL in Redis, one round trip per check, cached checks.
import { execFileSync } from 'node:child_process'
import { setTimeout as sleep } from 'node:timers/promises'
import t, { type Test } from 'tap'
import type { Redis } from 'ioredis'
import { manualClock, nowS } from '../../src/core/clock.js'
import { createRedisStore, type RedisStoreTuning } from '../../src/revocation/redis-store.js'
import { startRedis, waitFor, type RedisServer } from '../fixtures/redis-server.js'
import { entryAt, runStoreCases, tokenRef, type StoreFactory } from './store.cases.js'

const redis = await startRedis()
t.teardown(() => redis.stop())
const raw = redis.client()

let stores = 0
const ISS_A = 'https://idp-a.example/'
const ISS_B = 'https://idp-b.example/'
/** A store on its own prefix, ready and receiving events; closed at the end of the test. */
async function openStore(t: Test, server: RedisServer, opts: { cache: boolean; prefix?: string; tuning?: Partial<RedisStoreTuning> }) {
  const clock = manualClock(Date.now())
  const prefix = opts.prefix ?? `t${++stores}`
  // A generous budget: these tests are about answers; the budget is tested in redis-faults.test.ts.
  const store = createRedisStore({
    url: server.url,
    prefix,
    timeoutMs: 1000,
    clock,
    cache: opts.cache,
    ...(opts.tuning ? { tuning: opts.tuning } : {}),
  })
  t.teardown(() => store.close())
  await waitFor(() => store.ready() && store.eventsLive(), 5000, 'store ready')
  return { store, clock, prefix }
}

const factory =
  (cache: boolean): StoreFactory =>
  async (t) => {
    const { store, clock, prefix } = await openStore(t, redis, { cache })
    return {
      store,
      clock,
      async elapse(seconds) {
        clock.set(clock.now() + seconds * 1000)
        await sleep(seconds * 1000)
      },
      async checkExpiry(t, entry) {
        const [key] = await raw.keys(`{${prefix}}:rev:*`)
        const ttlS = await raw.ttl(key ?? '')
        const expected = entry.expiresAtS - Math.floor(clock.now() / 1000)
        t.ok(ttlS <= expected && ttlS >= expected - 2, `Redis TTL ${ttlS} s is expiresAtS - now (${expected} s)`)
      },
    }
  }

t.test('cache off', async (t) => runStoreCases(t, factory(false)))
t.test('cache on', async (t) => runStoreCases(t, factory(true)))

t.test('key layout: one key per (claim, iss-or-any, value) under the prefix hash tag', async (t) => {
  const { store, clock, prefix } = await openStore(t, redis, { cache: false })
  await store.put(entryAt(clock, 'sub', 'ci-deployer', { iss: 'https://idp.example/' }))
  await store.put(entryAt(clock, 'task', 'TASK-1'))
  const keys = (await raw.keys(`{${prefix}}:*`)).sort()
  t.same(keys, [`{${prefix}}:rev:sub:https%3A%2F%2Fidp.example%2F:ci-deployer`, `{${prefix}}:rev:task:*:TASK-1`])
  const stored = JSON.parse((await raw.get(keys[1] ?? '')) ?? '{}') as Record<string, unknown>
  t.match(stored, { claim: 'task', value: 'TASK-1', reason: 'ticket SEC-1', by: 'test' })
})

t.test('values that need percent-encoding: what a revocation writes is what a check reads', async (t) => {
  // A check builds its keys on its own path (once per request); it must land on the key a put wrote.
  const awkward = ['ci/runner 7', 'a:b{c}*', 'naïve-ünïcode', "it's (quoted)!", '%41', 'plain-UUID_1.2~3']
  for (const cache of [false, true]) {
    const { store, clock } = await openStore(t, redis, { cache })
    const iatS = Math.floor(clock.now() / 1000) - 1
    for (const [i, value] of awkward.entries()) {
      const claim = i % 2 ? 'sub' : 'task:x'
      const iss = i % 3 ? 'https://idp.example/tenant?a=1' : undefined
      await store.put(entryAt(clock, claim, value, iss === undefined ? {} : { iss }))
      const ref = tokenRef(
        iatS,
        [
          ['jti', `j${i}`],
          [claim, value],
        ],
        iss ?? 'https://other.example/',
      )
      t.equal(
        await store.isRevoked(ref),
        true,
        `cache ${cache ? 'on' : 'off'}: ${claim}=${JSON.stringify(value)} revoked${iss ? ' for its issuer' : ' for any issuer'}`,
      )
      t.equal(
        await store.isRevoked(tokenRef(iatS, [[claim, `${value}x`]])),
        false,
        `cache ${cache ? 'on' : 'off'}: a neighbouring value is not`,
      )
    }
  }
})

t.test('a check of a token with five claims is one MGET, cached checks none', async (t) => {
  const { store, clock } = await openStore(t, redis, { cache: true })
  const token = tokenRef(Math.floor(clock.now() / 1000), [
    ['jti', 'j'],
    ['sub', 's'],
    ['client_id', 'c'],
    ['sid', 'x'],
    ['task', 'k'],
  ])
  const before = await commandCalls(raw)
  t.equal(await store.isRevoked(token), false)
  const after = await commandCalls(raw)
  t.equal(after.mget - before.mget, 1, 'one MGET')
  t.equal(after.total - before.total, 1, 'and nothing else')
  t.equal(store.cacheActive(), true)
  t.equal(await store.isRevoked(token), false)
  t.equal((await commandCalls(raw)).total - after.total, 0, 'answered from the cache')
})

t.test('checks started in the same turn share one MGET of their distinct keys, and each gets its own answer', async (t) => {
  for (const cache of [false, true]) {
    const { store, clock, prefix } = await openStore(t, redis, { cache })
    const iatS = nowS(clock) - 10
    await store.put(entryAt(clock, 'sub', 'revoked-sub'))
    await store.put(entryAt(clock, 'jti', 'revoked-jti', { iss: ISS_A }))
    // 30 checks: a shared sub on all of them, a revoked sub on every third, a revoked jti (for
    // one issuer only) on every fifth, and every token's own jti.
    const refs = Array.from({ length: 30 }, (_, i) =>
      tokenRef(
        iatS,
        [
          ['jti', i % 5 === 0 ? 'revoked-jti' : `j-${cache}-${i}`],
          ['sub', i % 3 === 0 ? 'revoked-sub' : 'shared-sub'],
        ],
        i % 2 ? ISS_A : ISS_B,
      ),
    )
    const expected = refs.map((_, i) => i % 3 === 0 || (i % 5 === 0 && i % 2 === 1))
    const log = await recordCommands(raw)
    const answers = await Promise.all(refs.map((ref) => store.isRevoked(ref)))
    const mgets = (await log.stop()).filter((args) => args[0]?.toLowerCase() === 'mget')
    t.same(answers, expected, `cache ${cache ? 'on' : 'off'}: every check has its own token's answer`)
    t.equal(mgets.length, 1, `cache ${cache ? 'on' : 'off'}: one MGET for all 30 checks`)
    const keys = mgets[0]?.slice(1) ?? []
    t.equal(new Set(keys).size, keys.length, 'no key asked twice')
    // Distinct jti values: 24 own + 1 revoked; each with the issuer's key and the any-issuer key;
    // subs: 2 values × (2 issuers + any) = 6 keys.
    // 24 own jti values × (issuer, any-issuer) + the revoked jti under both issuers and any
    // + 2 sub values × (2 issuers + any).
    t.equal(keys.length, 24 * 2 + 3 + 2 * 3, 'the distinct keys of the 30 tokens')
    t.ok(
      keys.every((key) => key.startsWith(`{${prefix}}:rev:`)),
      'all under the prefix hash tag',
    )
  }
})

t.test('a check started in the next turn of the loop joins the batch; one started after the batch left gets its own MGET', async (t) => {
  for (const cache of [false, true]) {
    const { store, clock } = await openStore(t, redis, { cache })
    const ref = (jti: string) => tokenRef(nowS(clock) - 10, [['jti', `${jti}-${cache}`]])
    const log = await recordCommands(raw)
    const checks: Array<Promise<boolean>> = [store.isRevoked(ref('first'))]
    // Immediates run in the order they were queued: this one in the turn the batch is held
    // through, the nested one in the turn after, once the batch's MGET has gone.
    await new Promise<void>((resolve) =>
      setImmediate(() => {
        checks.push(store.isRevoked(ref('next-turn')))
        setImmediate(() => {
          checks.push(store.isRevoked(ref('after-send')))
          resolve()
        })
      }),
    )
    t.same(await Promise.all(checks), [false, false, false])
    const mgets = (await log.stop()).filter((args) => args[0]?.toLowerCase() === 'mget')
    const jtis = mgets.map((args) => [...new Set(args.slice(1).map((key) => key.split(':').pop()))])
    t.same(jtis, [[`first-${cache}`, `next-turn-${cache}`], [`after-send-${cache}`]], `cache ${cache ? 'on' : 'off'}: two MGETs`)
  }
})

t.test('a check that starts while an MGET of its own keys is in flight is not answered by it', async (t) => {
  // The in-flight MGET ran before the revocation was written; a check that began after the write
  // must read again, or it would miss a revocation acknowledged before it started.
  const { store, clock, prefix } = await openStore(t, redis, { cache: false })
  const ref = tokenRef(nowS(clock) - 10, [['jti', 'in-flight']])
  const log = await recordCommands(raw)
  const first = store.isRevoked(ref)
  await new Promise<void>((resolve) => setImmediate(() => setImmediate(resolve))) // the batch has been sent
  // Everything below is synchronous, so this process cannot read the first MGET's reply meanwhile.
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 100) // Redis answers into our socket
  const entry = JSON.stringify(entryAt(clock, 'jti', 'in-flight'))
  execFileSync('redis-cli', ['-h', '127.0.0.1', '-p', String(redis.port), 'SET', `{${prefix}}:rev:jti:*:in-flight`, entry], {
    timeout: 10_000,
  })
  const second = store.isRevoked(ref)
  t.equal(await second, true, 'the check that began after the write sees it')
  await first // either answer: this test is about the second
  const commands = (await log.stop()).map((args) => args[0]?.toLowerCase()).filter((name) => name === 'mget' || name === 'set')
  // Normally MGET, SET, MGET; on a starved machine Redis may run the first MGET after the SET too.
  t.equal(commands.filter((name) => name === 'mget').length, 2, 'two MGETs')
  t.ok(commands.lastIndexOf('mget') > commands.indexOf('set'), 'the second after the write', { commands })
})

t.test('a burst beyond batchMaxKeys goes out as several MGETs in the same turn, answers unchanged', async (t) => {
  const { store, clock } = await openStore(t, redis, { cache: false, tuning: { batchMaxKeys: 8 } })
  const iatS = nowS(clock) - 10
  await store.put(entryAt(clock, 'jti', 'j-7'))
  const refs = Array.from({ length: 10 }, (_, i) =>
    tokenRef(iatS, [
      ['jti', `j-${i}`],
      ['sub', `s-${i}`],
    ]),
  )
  const log = await recordCommands(raw)
  const answers = await Promise.all(refs.map((ref) => store.isRevoked(ref)))
  const mgets = (await log.stop()).filter((args) => args[0]?.toLowerCase() === 'mget')
  t.same(
    answers,
    refs.map((_, i) => i === 7),
    'only the token with the revoked jti',
  )
  t.same(
    mgets.map((args) => args.length - 1),
    [8, 8, 8, 8, 8],
    '40 keys in MGETs of at most 8',
  )
})

t.test('isRevokedNow answers only from a fresh local cache, and a revocation elsewhere takes the answer away', async (t) => {
  const here = await openStore(t, redis, { cache: true, prefix: 'now-shared' })
  const other = await openStore(t, redis, { cache: true, prefix: 'now-shared' })
  const token = tokenRef(Math.floor(here.clock.now() / 1000) - 10, [
    ['jti', 'j-now'],
    ['sub', 'ci-now'],
  ])
  t.equal(here.store.isRevokedNow!(token), undefined, 'nothing cached yet: ask Redis')
  t.equal(await here.store.isRevoked(token), false)
  t.equal(here.store.isRevokedNow!(token), false, 'now answered in-process')
  // Another sidecar revokes; its event must take the cached "not revoked" away before anything else.
  await other.store.put(entryAt(other.clock, 'sub', 'ci-now'))
  await waitFor(() => here.store.isRevokedNow!(token) !== false, 3000, 'the event invalidates the cached answer')
  t.equal(here.store.isRevokedNow!(token), undefined, 'invalidated: ask Redis again')
  t.equal(await here.store.isRevoked(token), true)
  t.equal(here.store.isRevokedNow!(token), true, 'and the revoked answer is cached')

  const uncached = await openStore(t, redis, { cache: false, prefix: 'now-shared' })
  t.equal(await uncached.store.isRevoked(token), true)
  t.equal(uncached.store.isRevokedNow!(token), undefined, 'without the cache every check is a read')
  t.equal(here.store.isRevokedNow!(tokenRef(1, [])), false, 'a token with no revocable value needs no read')
})

t.test('a put writes and publishes in one step: its event reaches a bare subscriber', async (t) => {
  const { store, clock, prefix } = await openStore(t, redis, { cache: false })
  const listener = redis.client()
  const got = new Promise<string>((resolve) => listener.on('message', (_channel: string, text: string) => resolve(text)))
  await listener.subscribe(`${prefix}:events`)
  const entry = await store.put(entryAt(clock, 'sid', 'sess-1'))
  t.same(JSON.parse(await got), { kind: 'revoked', entry })
})

t.test('unreadable data under a token key counts as revoked (fail closed)', async (t) => {
  const { store, clock, prefix } = await openStore(t, redis, { cache: false })
  await raw.set(`{${prefix}}:rev:sub:*:mallory`, 'not json')
  t.equal(await store.isRevoked(tokenRef(Math.floor(clock.now() / 1000), [['sub', 'mallory']])), true)
  await t.rejects(store.get('sub', 'mallory'))
})

t.test('a prefix with a brace is refused: it would move the hash tag', async (t) => {
  t.throws(() => createRedisStore({ url: redis.url, prefix: 'a{b}', timeoutMs: 50, clock: manualClock(0), cache: false }))
})

/** Every command the server runs from now until stop(), with its arguments (Redis MONITOR). */
async function recordCommands(client: Redis) {
  const monitor = await client.monitor()
  const seen: string[][] = []
  monitor.on('monitor', (_time: string, args: string[]) => {
    seen.push(args)
  })
  return {
    async stop(): Promise<string[][]> {
      // The feed is a separate connection: a marker sent last and seen means all before it arrived.
      const marker = `end-of-record-${Math.random()}`
      await client.echo(marker)
      await waitFor(() => seen.some((args) => args[1] === marker), 3000, 'the monitor feed caught up')
      monitor.disconnect()
      return seen
    },
  }
}

/** Calls seen by the server so far: one INFO is not counted by itself (its stats are taken first). */
async function commandCalls(client: Redis): Promise<{ mget: number; total: number }> {
  const info = await client.info('commandstats')
  let mget = 0
  let total = 0
  for (const [, name, calls] of info.matchAll(/^cmdstat_([^:]+):calls=(\d+)/gm)) {
    // Our own INFO, and the heartbeats of the event connection, are not the check's round trips.
    if (name === 'info' || name === 'ping') continue
    total += Number(calls)
    if (name === 'mget') mget = Number(calls)
  }
  return { mget, total }
}

t.test('list: keys SCAN found beyond a page ride in the cursor; keys too long for a URL join the page instead', async (t) => {
  const { store, clock } = await openStore(t, redis, { cache: false })
  // 60 short and 12 long entries: a SCAN step of COUNT 1 answers a whole hash bucket, so over
  // 72 keys some step finds two or more, one more than a page of one has room for.
  const put = []
  for (let i = 0; i < 60; i++) put.push(await store.put(entryAt(clock, 'sub', `short-${i}`)))
  for (let i = 0; i < 12; i++) put.push(await store.put(entryAt(clock, 'task', `${'é'.repeat(1000)}${i}`)))
  const seen: string[] = []
  let carried = 0
  let oversized = 0
  let cursor: string | undefined
  let pages = 0
  do {
    const page = await store.list({ limit: 1, cursor })
    pages++
    seen.push(...page.entries.map((e) => e.value))
    if (page.entries.length > 1) oversized++
    cursor = page.next
    if (cursor !== undefined) {
      t.ok(cursor.length <= 6000, `a cursor of ${cursor.length} characters fits a URL`)
      const state = JSON.parse(Buffer.from(cursor, 'base64url').toString('utf8')) as { k: string[] }
      if (state.k.length > 0) carried++
    }
  } while (cursor !== undefined && pages < 1000)
  t.same(seen.sort(), put.map((e) => e.value).sort(), 'every entry once')
  t.ok(carried > 0, `keys carried in ${carried} cursors`)
  t.ok(oversized <= 12, `${oversized} pages over the limit, only for long keys`)
  t.comment(`${pages} pages, ${carried} cursors carrying keys, ${oversized} pages over the limit of 1`)
})

t.test('list: a page takes at most listMaxScanSteps SCAN steps, and answers a short page with a cursor', async (t) => {
  const { store, clock, prefix } = await openStore(t, redis, { cache: false, tuning: { listMaxScanSteps: 3 } })
  await store.put(entryAt(clock, 'sub', 'needle'))
  // Other data on the same node: SCAN walks it too, and MATCH filters it out only afterwards.
  const pipeline = raw.pipeline()
  for (let i = 0; i < 3000; i++) pipeline.set(`other-app:${prefix}:${i}`, 'x', 'EX', 60)
  await pipeline.exec()
  const log = await recordCommands(raw)
  const first = await store.list({ limit: 1 })
  const scans = (await log.stop()).filter((args) => args[0]?.toLowerCase() === 'scan')
  t.ok(scans.length <= 3, `${scans.length} SCAN steps for the first page`)
  t.ok(first.entries.length === 1 || first.next !== undefined, 'the entry, or a cursor to go on with')
  const seen = [...first.entries]
  for (let cursor = first.next, pages = 1; cursor !== undefined && pages < 5000; pages++) {
    const page = await store.list({ limit: 1, cursor })
    seen.push(...page.entries)
    cursor = page.next
  }
  t.same(
    seen.map((e) => e.value),
    ['needle'],
    'the walk finds it, once',
  )
})
