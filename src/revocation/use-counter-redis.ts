// The use counter in the revocation set's Redis, shared by every sidecar that points at it.
//
//   const uses = createRedisUseCounter({ url, prefix: 'lapse', timeoutMs: 50 })
//   await uses.take({ scope, iss, jti }, 3, expS + skewS)   // one EVALSHA: 1, 2, 3, then 4 (refused)
//
// One key per (rule, issuer, jti), `{<prefix>}:use:<sha-256>`: in the revocation set's hash tag
// (one slot on Cluster), hashed because iss and jti can hold any Unicode. One atomic script per
// allowed request reads the count, refuses at the limit without counting, else increments and
// sets the key to expire with the token. docs/configuration.md#binding-a-grant-to-its-resource.
import { createHash } from 'node:crypto'
import type { ConnectionOptions } from 'node:tls'
import type { Cluster, Redis } from 'ioredis'
import type { UseCounter, UseKey } from '../core/types.js'
import { bounded } from './bounded.js'
import { connectRedis } from './redis-store.js'
import { useId } from './use-counter-memory.js'

// KEYS[1] the count; ARGV[1] max, ARGV[2] expiry (epoch ms). Answers the use's number, or max + 1.
const TAKE_SCRIPT = `
local max = tonumber(ARGV[1])
local n = tonumber(redis.call('GET', KEYS[1]) or '0')
if n >= max then return max + 1 end
n = redis.call('INCR', KEYS[1])
redis.call('PEXPIREAT', KEYS[1], ARGV[2])
return n`

type Client = (Redis | Cluster) & { lapseTakeUse(key: string, max: number, expiresAtMs: number): Promise<number> }

export function createRedisUseCounter(opts: { url: string; prefix: string; timeoutMs: number; tls?: ConnectionOptions }): UseCounter {
  if (opts.prefix === '' || /[{}]/.test(opts.prefix)) throw new TypeError('redis prefix must be non-empty and contain no { or }')
  const client = connectRedis(opts.url, opts.tls) as Client
  // ioredis sends EVALSHA, and EVAL once when the server does not know the script yet.
  client.defineCommand('lapseTakeUse', { numberOfKeys: 1, lua: TAKE_SCRIPT })
  return {
    kind: 'redis',
    ready: () => client.status === 'ready',
    take(key: UseKey, max: number, expiresAtS: number): Promise<number> {
      return bounded(client.lapseTakeUse(memoizedKey(opts.prefix, key), max, expiresAtS * 1000), opts.timeoutMs, 'use count')
    },
    async close() {
      if (client.status !== 'ready') return client.disconnect()
      await client.quit().catch(() => client.disconnect())
    },
  }
}

/**
 * useKeyOf, hashed once per token and rule scope (the token's memo's `useKey` slot): a token
 * reused on many requests of a limited rule asks with the same key every time.
 */
function memoizedKey(prefix: string, key: UseKey): string {
  const known = key.memo?.useKey
  if (known !== undefined && known.scope === key.scope && known.prefix === prefix) return known.key
  const built = useKeyOf(prefix, key)
  if (key.memo !== undefined) key.memo.useKey = { scope: key.scope, prefix, key: built }
  return built
}

/** The Redis key of one token's uses under one rule (for tests and operators). */
export function useKeyOf(prefix: string, key: UseKey): string {
  return `{${prefix}}:use:${createHash('sha256').update(useId(key)).digest('base64url')}`
}
