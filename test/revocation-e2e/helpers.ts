// Shared by the revocation end-to-end suites: Lapse in front of a real redis-server, the admin
// API spoken over HTTP, and the key layout read back with a raw client.
//
//   const redis = await redisFor(t)
//   const lapse = await runApp(t, { env: redisEnv(redis, 'p1') }); await untilReady(lapse)
//   const entry = await revoke(t, lapse, { claim: 'sub', value: 'ci', reason: 'test' })
//   t.ok(await redis.client().get(entryKey('p1', 'sub', 'ci')))
import type { Test } from 'tap'
import { ADMIN_TOKEN, send, waitFor, type Lapse, type Sent } from '../fixtures/app.js'
import { startRedis, type RedisServer, type RedisServerOptions } from '../fixtures/redis-server.js'
import type { Redis } from 'ioredis'
import type { RedisRevocationStore } from '../../src/revocation/redis-store.js'

export const OTHER_ISSUER = 'https://other-issuer.test'

/** A redis-server on a free port for this test (never the shared 6379), stopped at its end. */
export async function redisFor(t: Test, opts: RedisServerOptions = {}): Promise<RedisServer> {
  const redis = await startRedis(opts)
  t.teardown(() => redis.stop())
  return redis
}

/**
 * The env that points Lapse at `redis` under its own prefix, so suites sharing a server never meet.
 * The check budget is relaxed to 1 s: on a loaded CI box a functional test must not turn into a
 * 503; the suites that test the budget itself set LAPSE_REVOCATION_TIMEOUT.
 */
export function redisEnv(
  redis: RedisServer,
  prefix: string,
  extra: Record<string, string | undefined> = {},
): Record<string, string | undefined> {
  return { LAPSE_REDIS_URL: redis.url, LAPSE_REDIS_PREFIX: prefix, LAPSE_REVOCATION_TIMEOUT: '1000', ...extra }
}

/** Lapse answers 503 until its Redis connection is up: wait for /readyz, as a load balancer would. */
export async function untilReady(lapse: Lapse, withinMs = 5000): Promise<void> {
  await waitFor(async () => (await send(`${lapse.adminUrl}/readyz`)).status === 200, 'Lapse ready', withinMs)
}

/** With the cache on: wait until the event channel is subscribed, so answers are really cached. */
export async function untilCacheActive(lapse: Lapse, withinMs = 5000): Promise<void> {
  const store = lapse.running.deps.revocations as RedisRevocationStore
  await waitFor(() => store.cacheActive(), 'revocation cache active', withinMs)
}

export interface AdminOptions {
  readonly body?: unknown
  /** null: no Authorization header at all. */
  readonly token?: string | null
  readonly contentType?: string | null
}

/** One admin API request; a string body is sent as written, anything else as JSON. */
export function admin(lapse: Pick<Lapse, 'adminUrl'>, method: string, path: string, opts: AdminOptions = {}): Promise<Sent> {
  const headers: Array<[string, string]> = []
  const token = opts.token === undefined ? ADMIN_TOKEN : opts.token
  if (token !== null) headers.push(['authorization', `Bearer ${token}`])
  const contentType = opts.contentType === undefined ? 'application/json' : opts.contentType
  if (opts.body !== undefined && contentType !== null) headers.push(['content-type', contentType])
  const body = opts.body === undefined ? undefined : typeof opts.body === 'string' ? opts.body : JSON.stringify(opts.body)
  return send(`${lapse.adminUrl}${path}`, { method, headers, ...(body === undefined ? {} : { body }) })
}

/** POST /v1/revocations with the admin token; asserts the 201 and returns the stored entry. */
export async function revoke(t: Test, lapse: Lapse, body: Record<string, unknown>): Promise<Record<string, unknown>> {
  const res = await admin(lapse, 'POST', '/v1/revocations', { body })
  t.equal(res.status, 201, `revoke ${String(body.claim)}=${String(body.value)} → 201`)
  return res.json() as Record<string, unknown>
}

// The store's component encoding (docs/revocation.md#key-layout): RFC 3986 unreserved characters only.
const encode = (part: string) => encodeURIComponent(part).replace(/[!'()*]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`)

/** `{<prefix>}:rev:<claim>:<iss or *>:<value>`, the documented key of one entry. */
export const entryKey = (prefix: string, claim: string, value: string, iss?: string): string =>
  `{${prefix}}:rev:${encode(claim)}:${iss === undefined ? '*' : encode(iss)}:${encode(value)}`

/** How many MGETs the server has answered: a cached check sends none. */
export async function mgetCalls(raw: Redis): Promise<number> {
  const info = await raw.info('commandstats')
  const m = /^cmdstat_mget:calls=(\d+)/m.exec(info)
  return m ? Number(m[1]) : 0
}

/** The revocation audit lines (`revoke`, `lift`), newest last. */
export const revocationAudits = (lapse: Lapse) => lapse.lines.filter((l) => l.audit === 'revocation')

export const nowS = () => Math.floor(Date.now() / 1000)
