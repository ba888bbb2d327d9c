// The revocation set in Redis, shared by every sidecar that points at it.
//
//   const store = createRedisStore({ url: 'redis://:pw@10.0.0.5:6379', prefix: 'lapse',
//     timeoutMs: 50, clock: systemClock, cache: true, log })
//   await store.isRevoked({ iss, iatS, values: [['sub', 'ci'], ['jti', 'x1']] }) // one MGET
//
// Why: one hash-tagged slot, one MGET per check, writes that publish their event atomically, a
// cache trusted only while a PING proves the event channel is current, and fail closed:
// docs/revocation.md#the-redis-set (key layout, local cache, fail closed).
import { performance } from 'node:perf_hooks'
import type { ConnectionOptions } from 'node:tls'
import { Cluster, Redis, type ClusterOptions, type RedisOptions } from 'ioredis'
import { nowS } from '../core/clock.js'
import {
  InvalidCursorError,
  RevocationUnavailableError,
  type Clock,
  type RevocationEntry,
  type RevocationEvent,
  type RevocationQuery,
  type RevocationStore,
  type TokenRef,
} from '../core/types.js'
import { createAnswerCache, type AnswerCache, type StoredAnswer } from './answer-cache.js'
import { bounded } from './bounded.js'
import { createReadBatch } from './read-batch.js'
import { entryMatches, queryMatches } from './model.js'
import { parseRedisUrl, type RedisTarget } from './redis-url.js'

// Every tunable of the Redis set, with the reason for its value.
const DEFAULTS = {
  // Operator writes and reads (admin API, CLI) are rare and must not fail on a slow moment.
  adminTimeoutMs: 2000,
  // A connection with unanswered commands and no byte received for this long is dead
  // (a frozen or partitioned server); tearing it down makes checks fail fast instead of
  // each waiting out its own timeout, and starts the reconnect.
  socketTimeoutMs: 2000,
  connectTimeoutMs: 2000,
  // Reconnect delays grow by this step up to the cap, forever: Lapse must recover by itself.
  reconnectStepMs: 50,
  reconnectCapMs: 1000,
  // How often the event connection proves it is delivering, and how old that proof may be before
  // the cache stops answering. The gap bounds a silent channel failure.
  heartbeatMs: 250,
  cacheStalenessMs: 1000,
  // jti values are unique per token: the cache must not grow with every token ever seen.
  cacheMaxEntries: 100_000,
  // Checks that miss the cache in two consecutive turns of the loop share one MGET (read-batch.ts); a
  // burst beyond this many distinct keys is split so no single reply grows without bound.
  batchMaxKeys: 512,
  // Readiness asks the node that holds the set (on Cluster, the owner of the `{prefix}` slot) this
  // often; an unanswered or failed probe makes /readyz 503 at once, so a load balancer drains an
  // instance that would refuse every check even while the client as a whole looks connected.
  probeIntervalMs: 250,
  // A probe may take this long (or the check budget, if larger) before it counts as failed.
  probeTimeoutMs: 300,
  // Cluster only: how often the slot map is reread (see connectData).
  slotsRefreshMs: 1000,
  // A page of the list (admin API) takes at most this many SCAN steps, so a node that holds many
  // other keys answers a short page with a cursor instead of walking its whole keyspace at once.
  listMaxScanSteps: 50,
}

export type RedisStoreTuning = typeof DEFAULTS

interface Log {
  warn(obj: object, msg: string): void
  info(obj: object, msg: string): void
}

/** What the servers holding the set keep across a restart (CONFIG GET appendonly / save). */
export type Persistence = 'aof' | 'rdb' | 'none' | 'unknown'

export interface RedisRevocationStore extends RevocationStore {
  /** Known after the first answer of CONFIG GET; `unknown` where CONFIG is refused. */
  persistence(): Persistence
  /** Whether the event channel is subscribed and its heartbeat is fresh. */
  eventsLive(): boolean
  /** Whether `isRevoked` may answer from the local cache right now. */
  cacheActive(): boolean
}

export function createRedisStore(opts: {
  url: string
  prefix: string
  timeoutMs: number
  clock: Clock
  cache: boolean
  log?: Log
  /** Extra TLS options for the rediss forms (a private CA, a client certificate). */
  tls?: ConnectionOptions
  tuning?: Partial<RedisStoreTuning>
}): RedisRevocationStore {
  const tuning = { ...DEFAULTS, ...opts.tuning }
  const log = opts.log ?? { warn() {}, info() {} }
  const target = withTls(parseRedisUrl(opts.url), opts.tls)
  const keys = keyLayout(opts.prefix)
  const data = connectData(target, tuning)
  let closing = false
  watchHealth(data, target.safeUrl, log, () => closing)
  const listeners = new Set<(event: RevocationEvent) => void>()
  const cache: AnswerCache | undefined = opts.cache
    ? createAnswerCache({ maxEntries: tuning.cacheMaxEntries, isFresh: () => channel.fresh(), nowS: () => nowS(opts.clock) })
    : undefined

  const deliver = (text: string) => {
    const event = parseEvent(text)
    if (!event) {
      cache?.drop()
      log.warn({ channel: keys.channel }, 'unreadable revocation event: local cache dropped')
      return
    }
    cache?.invalidate(keys.entry(event.entry.claim, event.entry.value, event.entry.iss))
    for (const listener of listeners) notify(listener, event, log)
  }
  const channel = openEventChannel({
    connect: subscriberFactory(target, data, tuning),
    channel: keys.channel,
    tuning,
    log,
    onMessage: deliver,
    onLost: () => cache?.drop(),
  })

  const connected = () => data.status === 'ready'
  const probe = watchSlot(data, `${keys.base}probe`, {
    intervalMs: tuning.probeIntervalMs,
    timeoutMs: Math.max(tuning.probeTimeoutMs, opts.timeoutMs),
  })
  const ready = () => connected() && probe.answering()
  let persistence: Persistence = 'unknown'
  data.on('ready', () => {
    void readPersistence(data).then((mode) => {
      if (closing) return
      if (mode !== persistence && (mode === 'none' || mode === 'rdb')) {
        log.warn(
          { redis: target.safeUrl, persistence: mode },
          mode === 'none'
            ? 'Redis keeps the revocation set in memory only (appendonly no, no snapshots): a Redis restart forgets every revocation; set appendonly yes'
            : 'Redis keeps the revocation set in periodic snapshots only (appendonly no): a Redis restart forgets the revocations since the last snapshot; set appendonly yes',
        )
      }
      persistence = mode
    })
  })
  let warnedUnreadable = false
  const noteUnreadable = (answers: readonly StoredAnswer[]) => {
    if (warnedUnreadable || !answers.includes('unreadable')) return
    warnedUnreadable = true
    log.warn({ prefix: opts.prefix }, 'unreadable revocation entry in Redis: matching tokens are denied (logged once)')
  }

  const reads = createReadBatch({
    mget: (batch) => data.mget(...batch),
    parse: parseStored,
    timeoutMs: opts.timeoutMs,
    maxKeys: tuning.batchMaxKeys,
    // The connection, not the probe: a check may still succeed where the last probe failed.
    ready: connected,
    beforeSend: () => cache?.ticket(),
    afterRead(ticket, batch, answers) {
      noteUnreadable(answers)
      cache?.fill(ticket, batch, answers)
    },
  })

  // A token reused on many requests keeps one TokenRef (decide/decide.ts), so its keys are built
  // once, in the token's memo (they carry this store's prefix): building them was most of a cached check.
  const tokenKeysOf = (ref: TokenRef): readonly string[] => {
    const memo = ref.memo
    const known = memo?.redisKeys
    if (known !== undefined && known.ref === ref && known.layout === keys) return known.keys
    const built = keysOfToken(keys, ref)
    if (memo !== undefined) memo.redisKeys = { ref, layout: keys, keys: built }
    return built
  }

  return {
    kind: 'redis',
    isRevokedNow(ref: TokenRef) {
      const tokenKeys = tokenKeysOf(ref)
      if (tokenKeys.length === 0) return false
      const hit = cache?.read(tokenKeys)
      return hit ? anyMatches(hit, ref.iatS) : undefined
    },
    async isRevoked(ref: TokenRef) {
      const tokenKeys = tokenKeysOf(ref)
      if (tokenKeys.length === 0) return false
      const hit = cache?.read(tokenKeys)
      if (hit) return anyMatches(hit, ref.iatS)
      return anyMatches(await reads.read(tokenKeys), ref.iatS)
    },
    async put(entry) {
      const stored = toStored(entry)
      const key = keys.entry(stored.claim, stored.value, stored.iss)
      // Redis rejects EX 0; an entry already past its expiry matches only expired tokens, so a
      // one-second stay is harmless and keeps the write (and its event) uniform.
      const ttlS = Math.max(1, stored.expiresAtS - nowS(opts.clock))
      const event: RevocationEvent = { kind: 'revoked', entry: stored }
      // Not connected: nothing was sent (the offline queue is off), so the entry is certainly not written.
      if (!connected()) throw new RevocationUnavailableError('Redis was unreachable: the revocation was not written')
      try {
        await bounded(
          data.eval(PUT_SCRIPT, 1, key, JSON.stringify(stored), ttlS, keys.channel, JSON.stringify(event)),
          tuning.adminTimeoutMs,
          'revocation write',
        )
      } catch (err) {
        throw writeFailure(err, tuning.adminTimeoutMs)
      }
      // Our own event is on its way too; invalidating now makes this sidecar exact at once.
      cache?.invalidate(key)
      return stored
    },
    async get(claim, value, iss) {
      const raw = await bounded(data.get(keys.entry(claim, value, iss)), tuning.adminTimeoutMs, 'revocation read')
      const stored = parseStored(raw)
      if (stored === 'unreadable') throw new Error(`stored revocation entry for ${claim} is unreadable`)
      return stored ?? undefined
    },
    async lift(claim, value, iss) {
      const key = keys.entry(claim, value, iss)
      const removed = await bounded(data.eval(LIFT_SCRIPT, 1, key, keys.channel), tuning.adminTimeoutMs, 'revocation lift')
      cache?.invalidate(key)
      if (typeof removed !== 'string') return undefined
      const entry = parseStored(removed)
      // Removed all the same: an entry stored in a shape this version cannot read is named by its key.
      if (entry === null || entry === 'unreadable')
        return { claim, value, iss, issuedBeforeS: 0, reason: '', by: '', createdAtS: 0, expiresAtS: 0 }
      return entry
    },
    list: (query) =>
      listPage(data, keys, query, { nowS: nowS(opts.clock), timeoutMs: tuning.adminTimeoutMs, maxSteps: tuning.listMaxScanSteps }),
    subscribe(listener) {
      listeners.add(listener)
      return () => {
        listeners.delete(listener)
      }
    },
    ready,
    persistence: () => persistence,
    eventsLive: channel.fresh,
    cacheActive: () => cache !== undefined && channel.fresh(),
    async close() {
      // A shutdown is not an outage: the data connection's close must not log one.
      closing = true
      probe.stop()
      listeners.clear()
      cache?.drop()
      await Promise.all([channel.close(), quietly(data)])
    },
  }
}

// --- key layout --------------------------------------------------------------------------------

interface KeyLayout {
  /** `{<prefix>}:rev:`, what every entry key starts with. */
  readonly base: string
  entry(claim: string, value: string, iss: string | undefined): string
  readonly channel: string
}

function keyLayout(prefix: string): KeyLayout {
  // A brace in the prefix would move the hash tag and split one check across slots on Cluster.
  if (prefix === '' || /[{}]/.test(prefix)) throw new TypeError('redis prefix must be non-empty and contain no { or }')
  const base = `{${prefix}}:rev:`
  return {
    base,
    entry: (claim, value, iss) => `${base}${encode(claim)}:${iss === undefined ? '*' : encode(iss)}:${encode(value)}`,
    channel: `${prefix}:events`,
  }
}

// encodeURIComponent leaves !'()* alone; escaping them too leaves only RFC 3986 unreserved
// characters and `%`, so no component can contain the separator or the any-issuer `*`.
// Most parts (claim names, UUIDs, plain subjects) are unreserved already and are used as they are.
const UNRESERVED = /^[A-Za-z0-9._~-]*$/
const encode = (part: string) =>
  UNRESERVED.test(part) ? part : encodeText(part).replace(/[!'()*]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`)

/**
 * encodeURIComponent, except that it throws on a lone UTF-16 surrogate, which a signed custom
 * claim (`task`) may hold: the whole check would fail, and a rule with on_revocation_unavailable
 * open would let the token through unchecked on its other values. Such a unit is written as the
 * three bytes WTF-8 gives it (`%ED%A0%80`), which no UTF-8 text encodes to, so it names no other value.
 */
function encodeText(part: string): string {
  if ((part as unknown as { isWellFormed(): boolean }).isWellFormed()) return encodeURIComponent(part)
  let out = ''
  for (const ch of part) {
    const c = ch.charCodeAt(0)
    if (ch.length === 1 && c >= 0xd800 && c <= 0xdfff) {
      out += [0xe0 | (c >> 12), 0x80 | ((c >> 6) & 0x3f), 0x80 | (c & 0x3f)].map((b) => `%${b.toString(16).toUpperCase()}`).join('')
    } else {
      out += encodeURIComponent(ch)
    }
  }
  return out
}

function keysOfToken(keys: KeyLayout, ref: TokenRef): string[] {
  const out: string[] = []
  // Every request builds these: the issuer is encoded once, not once per claim.
  const iss = encode(ref.iss)
  for (const [claim, value] of ref.values) {
    const head = `${keys.base}${encode(claim)}:`
    const tail = `:${encode(value)}`
    out.push(`${head}${iss}${tail}`, `${head}*${tail}`)
  }
  return out
}

// --- listing -----------------------------------------------------------------------------------

// SCAN runs in a script whose one key is inside the set's hash tag: on Cluster the script goes to
// the node owning that slot, which holds every key of the set, so the walk is one node's SCAN.
// The pattern carries the same tag, so the keys it answers are all in that slot.
const SCAN_SCRIPT = `return redis.call('SCAN', ARGV[1], 'MATCH', ARGV[2], 'COUNT', ARGV[3])`

// Keys SCAN found beyond a full page ride in the cursor; a bucket rarely holds more than a few.
const MAX_CURSOR_KEYS = 1000
// Under the admin API's bound on a cursor (admin/list-query.ts), with room for the filters in the URL.
const MAX_CURSOR_CHARS = 6000

/**
 * The cursor is the SCAN cursor ('' once SCAN has gone round) and the keys found but not yet
 * answered, as base64url JSON. SCAN answers whole hash buckets, so a step may find more keys than
 * the page has room for: carrying them keeps the page bound without losing them.
 */
interface ListState {
  c: string
  k: string[]
}

function decodeListCursor(cursor: string | undefined, base: string): ListState {
  if (cursor === undefined) return { c: '0', k: [] }
  let state: unknown
  try {
    state = JSON.parse(Buffer.from(cursor, 'base64url').toString('utf8'))
  } catch {
    throw new InvalidCursorError('the cursor is not one this set made')
  }
  const s = state as Partial<ListState> | null
  // The keys are read back with MGET: only keys of this set, never any key a client names.
  if (
    typeof s !== 'object' ||
    s === null ||
    typeof s.c !== 'string' ||
    !/^(\d{1,20})?$/.test(s.c) ||
    s.c === '0' ||
    !Array.isArray(s.k) ||
    s.k.length > MAX_CURSOR_KEYS ||
    !s.k.every((key) => typeof key === 'string' && key.startsWith(base))
  ) {
    throw new InvalidCursorError('the cursor is not one this set made')
  }
  return { c: s.c, k: s.k }
}

async function listPage(
  data: DataClient,
  keys: KeyLayout,
  query: RevocationQuery,
  o: { nowS: number; timeoutMs: number; maxSteps: number },
) {
  const state = decodeListCursor(query.cursor, keys.base)
  // The claim and issuer filters narrow the SCAN itself; encoded parts hold no glob character.
  const pattern = `${keys.base}${query.claim === undefined ? '*' : encode(query.claim)}:${query.iss === undefined ? '*' : encode(query.iss)}:*`
  const entries: RevocationEntry[] = []
  let scan = state.c
  let pending = state.k
  let steps = 0
  while (entries.length < query.limit) {
    if (pending.length > 0) {
      const batch = pending.slice(0, query.limit - entries.length)
      pending = pending.slice(batch.length)
      const raws = await bounded(data.mget(...batch), o.timeoutMs, 'revocation list')
      for (const raw of raws) {
        // Gone since SCAN saw it (lifted or expired), or unreadable: not an active entry to show.
        const entry = parseStored(raw)
        if (entry !== null && entry !== 'unreadable' && entry.expiresAtS > o.nowS && queryMatches(query, entry)) entries.push(entry)
      }
      continue
    }
    if (scan === '' || steps >= o.maxSteps) break
    // COUNT is what the page still has room for, so a step rarely finds keys beyond it.
    const count = query.limit - entries.length
    const reply = (await bounded(data.eval(SCAN_SCRIPT, 1, `${keys.base}probe`, scan, pattern, count), o.timeoutMs, 'revocation list')) as [
      string,
      string[],
    ]
    steps++
    scan = reply[0] === '0' ? '' : reply[0]
    pending = reply[1]
  }
  let next = scan === '' && pending.length === 0 ? undefined : Buffer.from(JSON.stringify({ c: scan, k: pending })).toString('base64url')
  if (next !== undefined && next.length > MAX_CURSOR_CHARS) {
    // Keys of long values (a 1024-character value percent-encodes to kilobytes) would make a
    // cursor no URL can carry: they join this page instead, the one case a page exceeds the limit.
    const raws = await bounded(data.mget(...pending), o.timeoutMs, 'revocation list')
    for (const raw of raws) {
      const entry = parseStored(raw)
      if (entry !== null && entry !== 'unreadable' && entry.expiresAtS > o.nowS && queryMatches(query, entry)) entries.push(entry)
    }
    next = scan === '' ? undefined : Buffer.from(JSON.stringify({ c: scan, k: [] })).toString('base64url')
  }
  return { entries, next }
}

// --- stored values and events ------------------------------------------------------------------

// SET and PUBLISH in one script: atomic, so an acknowledged write always has its event.
const PUT_SCRIPT = `
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
redis.call('PUBLISH', ARGV[3], ARGV[4])
return 1`

// GET, DEL and PUBLISH in one script: the entry answered is the entry removed, whatever writes race it.
const LIFT_SCRIPT = `
local stored = redis.call('GET', KEYS[1])
if not stored then return false end
redis.call('DEL', KEYS[1])
redis.call('PUBLISH', ARGV[1], '{"kind":"lifted","entry":' .. stored .. '}')
return stored`

/** Only the entry's own fields go to Redis, in a fixed shape. */
function toStored(entry: RevocationEntry): RevocationEntry {
  const { claim, value, iss, issuedBeforeS, reason, by, createdAtS, expiresAtS } = entry
  return { claim, value, ...(iss === undefined ? {} : { iss }), issuedBeforeS, reason, by, createdAtS, expiresAtS }
}

function parseStored(raw: string | null): StoredAnswer {
  if (raw === null) return null
  try {
    return asEntry(JSON.parse(raw)) ?? 'unreadable'
  } catch {
    return 'unreadable'
  }
}

function asEntry(value: unknown): RevocationEntry | undefined {
  if (typeof value !== 'object' || value === null) return undefined
  const v = value as Record<string, unknown>
  const isNum = (x: unknown): x is number => typeof x === 'number' && Number.isFinite(x)
  if (typeof v.claim !== 'string' || typeof v.value !== 'string') return undefined
  if (!isNum(v.issuedBeforeS) || !isNum(v.expiresAtS)) return undefined
  if (v.iss !== undefined && typeof v.iss !== 'string') return undefined
  return toStored({
    claim: v.claim,
    value: v.value,
    iss: v.iss,
    issuedBeforeS: v.issuedBeforeS,
    expiresAtS: v.expiresAtS,
    reason: typeof v.reason === 'string' ? v.reason : '',
    by: typeof v.by === 'string' ? v.by : '',
    createdAtS: isNum(v.createdAtS) ? v.createdAtS : v.issuedBeforeS,
  })
}

function parseEvent(text: string): RevocationEvent | undefined {
  try {
    const event = JSON.parse(text) as { kind?: unknown; entry?: unknown }
    const entry = asEntry(event.entry)
    if (!entry || (event.kind !== 'revoked' && event.kind !== 'lifted')) return undefined
    return { kind: event.kind, entry }
  } catch {
    return undefined
  }
}

// Something unreadable under a token's key counts as revoked: we cannot prove it is not.
const anyMatches = (answers: readonly StoredAnswer[], iatS: number | undefined) =>
  answers.some((answer) => answer === 'unreadable' || entryMatches(answer ?? undefined, iatS))

// A throwing listener must not break delivery to the others, nor ioredis's reply parser that
// emits the message.
function notify(listener: (event: RevocationEvent) => void, event: RevocationEvent, log: Log) {
  try {
    listener(event)
  } catch (err) {
    log.warn({ error: (err as Error).message }, 'revocation event listener failed')
  }
}

// --- connections -------------------------------------------------------------------------------

/** The commands we use, common to a Redis connection and a Cluster. */
export interface DataClient {
  readonly status: string
  mget(...keys: string[]): Promise<Array<string | null>>
  get(key: string): Promise<string | null>
  config(op: 'GET', name: string): Promise<unknown>
  set(key: string, value: string, px: 'PX', ms: number, nx: 'NX'): Promise<'OK' | null>
  eval(script: string, numKeys: number, ...args: Array<string | number>): Promise<unknown>
  quit(): Promise<unknown>
  disconnect(): void
  // eslint-disable-next-line @typescript-eslint/no-explicit-any -- ioredis types its listeners so
  // biome-ignore lint/suspicious/noExplicitAny: ioredis's listener type, whatever the event
  on(event: string, listener: (...args: any[]) => void): unknown
}

/**
 * A data connection configured as the set's own (no offline queue, no retries, the same reconnects):
 * for other state that lives beside the set (revocation/replay-redis.ts).
 */
export function connectBeside(url: string, tls?: ConnectionOptions): DataClient {
  return connectData(withTls(parseRedisUrl(url), tls), DEFAULTS)
}

function withTls(target: RedisTarget, extra: ConnectionOptions | undefined): RedisTarget {
  if (!extra || !target.options.tls) return target
  const tls = { ...target.options.tls, ...extra }
  if (target.kind === 'sentinel') return { ...target, options: { ...target.options, tls, sentinelTLS: tls } }
  return { ...target, options: { ...target.options, tls } } as RedisTarget
}

function connectOptions(t: RedisStoreTuning): RedisOptions {
  return {
    // Nothing queues while Redis is away: a check either goes out now or fails closed now.
    enableOfflineQueue: false,
    maxRetriesPerRequest: 0,
    autoResendUnfulfilledCommands: false,
    socketTimeout: t.socketTimeoutMs,
    connectTimeout: t.connectTimeoutMs,
    // After a Sentinel failover the old master answers READONLY: reconnect to find the new one.
    reconnectOnError: (err) => err.message.startsWith('READONLY'),
  }
}

const backoff = (t: RedisStoreTuning) => (attempt: number) => Math.min(attempt * t.reconnectStepMs, t.reconnectCapMs)

/**
 * A data connection configured as the revocation set's (no offline queue, reconnect forever), for
 * other shared state on the same Redis (use-counter-redis.ts).
 */
export function connectRedis(url: string, tls?: ConnectionOptions): Redis | Cluster {
  return connectData(withTls(parseRedisUrl(url), tls), DEFAULTS) as Redis | Cluster
}

function connectData(target: RedisTarget, t: RedisStoreTuning): DataClient {
  if (target.kind !== 'cluster') {
    return new Redis({ ...target.options, ...connectOptions(t), retryStrategy: backoff(t), connectionName: 'lapse' })
  }
  const options: ClusterOptions = {
    enableOfflineQueue: false,
    clusterRetryStrategy: backoff(t),
    // After a failover the promoted replica owns the set's slot; without a periodic refresh the
    // client learns that only from a MOVED, which a dead owner never sends, so checks would fail
    // until a restart. One CLUSTER SLOTS a second bounds how long that takes.
    slotsRefreshInterval: t.slotsRefreshMs,
    redisOptions: { ...target.options, ...connectOptions(t), connectionName: 'lapse' },
  }
  return new Cluster(target.nodes, options)
}

/** Logs the transitions of the data connection, once each, never the password. */
function watchHealth(data: DataClient, safeUrl: string, log: Log, closing: () => boolean) {
  let state: 'starting' | 'up' | 'down' = 'starting'
  let lastError: string | undefined
  data.on('error', (err: Error) => {
    lastError = err.message
  })
  data.on('ready', () => {
    if (state !== 'up') log.info({ redis: safeUrl }, 'revocation set reachable')
    state = 'up'
  })
  data.on('close', () => {
    if (closing()) return
    if (state !== 'down') log.warn({ redis: safeUrl, error: lastError }, 'revocation set unreachable: checks fail closed until it is back')
    state = 'down'
  })
}

/** The admin write's failure in Lapse's words; the client library's own message stays the cause. */
function writeFailure(err: unknown, budgetMs: number): Error {
  const timedOut = err instanceof RevocationUnavailableError && /no answer within/.test(err.message)
  return new RevocationUnavailableError(
    timedOut
      ? `the revocation set did not acknowledge the write within ${budgetMs} ms: the revocation may not be stored (read it back before relying on it)`
      : 'Redis was unreachable: the revocation was not written',
    { cause: err },
  )
}

/**
 * Whether the node holding the set answers now: a GET of a key inside the set's hash tag, so on
 * Cluster it goes to the owner of that one slot, through the same client the checks use. Probed at
 * once when the client connects, then every `intervalMs`; answering() is false from the first
 * failed or timed-out probe (or closed connection) until the next answered one. A dead node fails
 * a probe at once, a frozen one within `intervalMs` + `timeoutMs`.
 */
function watchSlot(data: DataClient, key: string, o: { intervalMs: number; timeoutMs: number }) {
  let ok = false
  let inFlight = false
  let stopped = false
  const run = () => {
    if (inFlight || stopped) return
    if (data.status !== 'ready') {
      ok = false
      return
    }
    inFlight = true
    bounded(data.get(key), o.timeoutMs, 'readiness probe').then(
      () => {
        inFlight = false
        if (!stopped) ok = true
      },
      () => {
        inFlight = false
        ok = false
      },
    )
  }
  const timer = setInterval(run, o.intervalMs)
  timer.unref()
  data.on('ready', run)
  data.on('close', () => {
    ok = false
  })
  return {
    answering: () => ok,
    stop() {
      stopped = true
      ok = false
      clearInterval(timer)
    },
  }
}

/** AOF, RDB snapshots only, neither, or unknown where CONFIG is refused (managed Redis often disables it). */
async function readPersistence(data: DataClient): Promise<Persistence> {
  // On Cluster every master holds its own config; the set lives on one of them, so report the weakest.
  const targets: DataClient[] = data instanceof Cluster ? (data.nodes('master') as unknown as DataClient[]) : [data]
  const modes: Persistence[] = []
  for (const node of targets) {
    try {
      const [aof, save] = (await Promise.all([
        bounded(node.config('GET', 'appendonly'), DEFAULTS.adminTimeoutMs, 'CONFIG GET'),
        bounded(node.config('GET', 'save'), DEFAULTS.adminTimeoutMs, 'CONFIG GET'),
      ])) as [unknown, unknown]
      const value = (reply: unknown) => (Array.isArray(reply) ? String(reply[1] ?? '') : '')
      modes.push(value(aof) === 'yes' ? 'aof' : value(save).trim() !== '' ? 'rdb' : 'none')
    } catch {
      modes.push('unknown')
    }
  }
  for (const mode of ['none', 'rdb', 'unknown', 'aof'] as const) if (modes.includes(mode)) return mode
  return 'unknown'
}

export async function quietly(client: { status: string; quit(): Promise<unknown>; disconnect(): void }) {
  if (client.status !== 'ready') return client.disconnect()
  await client.quit().catch(() => client.disconnect())
}

// --- event channel -----------------------------------------------------------------------------

/** A fresh subscriber connection each time: we own its lifecycle, so we see every gap. */
function subscriberFactory(target: RedisTarget, data: DataClient, t: RedisStoreTuning): () => Redis {
  const options: RedisOptions = {
    ...connectOptions(t),
    // No silent reconnects or resubscribes: a gap must drop the cache, so we redo both ourselves.
    retryStrategy: () => null,
    autoResubscribe: false,
    connectionName: 'lapse-events',
  }
  if (target.kind !== 'cluster') return () => new Redis({ ...target.options, ...options })
  // Any node will do: PUBLISH reaches every node of a Cluster. Rotate so a dead node is left behind.
  const cluster = data instanceof Cluster ? data : undefined
  let turn = 0
  return () => {
    const known = (cluster?.nodes('master') ?? []).map((node) => ({ host: node.options.host, port: node.options.port }))
    const nodes = known.length > 0 ? known : target.nodes
    const node = nodes[turn++ % nodes.length] ?? target.nodes[0]
    return new Redis({ ...target.options, ...node, ...options })
  }
}

interface EventChannel {
  fresh(): boolean
  close(): Promise<void>
}

function openEventChannel(deps: {
  connect: () => Redis
  channel: string
  tuning: RedisStoreTuning
  log: Log
  onMessage(text: string): void
  onLost(): void
}): EventChannel {
  const { tuning, log } = deps
  let conn: Redis | undefined
  let live = false
  let confirmedAtMs = -Infinity
  let attempts = 0
  let closed = false
  let restartTimer: NodeJS.Timeout | undefined

  const start = () => {
    const c = deps.connect()
    conn = c
    c.on('error', () => {}) // 'close' follows, and that is what we act on
    c.on('ready', () => void subscribe(c))
    c.on('message', (channel: string, text: string) => {
      if (c === conn && channel === deps.channel) deps.onMessage(text)
    })
    c.on('close', () => lose(c))
    c.on('end', () => restart(c))
  }
  const subscribe = async (c: Redis) => {
    const sentAtMs = performance.now()
    try {
      await c.subscribe(deps.channel)
    } catch {
      c.disconnect()
      return
    }
    if (c !== conn || closed) return
    live = true
    confirmedAtMs = sentAtMs
    if (attempts > 0) log.info({ channel: deps.channel }, 'revocation events flowing again')
    attempts = 0
  }
  const lose = (c: Redis) => {
    if (c !== conn) return
    if (live && !closed) log.warn({ channel: deps.channel }, 'revocation events lost: local cache dropped until resubscribed')
    live = false
    deps.onLost()
  }
  const restart = (c: Redis) => {
    if (c !== conn || closed) return
    attempts++
    restartTimer = setTimeout(start, Math.min(attempts * tuning.reconnectStepMs, tuning.reconnectCapMs))
  }
  const heartbeat = setInterval(() => {
    const c = conn
    if (!live || !c) return
    const sentAtMs = performance.now()
    c.ping().then(
      () => {
        if (c === conn && live) confirmedAtMs = Math.max(confirmedAtMs, sentAtMs)
      },
      () => {},
    )
  }, tuning.heartbeatMs)
  heartbeat.unref()
  start()

  return {
    fresh: () => live && performance.now() - confirmedAtMs <= tuning.cacheStalenessMs,
    async close() {
      closed = true
      live = false
      clearInterval(heartbeat)
      clearTimeout(restartTimer)
      if (conn) await quietly(conn)
    },
  }
}
