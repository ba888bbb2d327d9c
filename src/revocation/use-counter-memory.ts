// The use counter in process memory: exact for one sidecar, the default without LAPSE_REDIS_URL.
//
//   const uses = createMemoryUseCounter({ clock })
//   uses.take({ scope, iss, jti }, 1, expS + skewS)   // 1, then 2 (= max + 1: refused)
import type { Clock, UseCounter, UseKey } from '../core/types.js'

// Expired counts are swept after this many new ones, so the map is bounded by the token rate.
const SWEEP_EVERY = 1024

interface Count {
  n: number
  readonly expiresAtMs: number
}

export function createMemoryUseCounter(opts: { clock: Clock }): UseCounter {
  const counts = new Map<string, Count>()
  let added = 0
  const sweep = (nowMs: number) => {
    for (const [key, count] of counts) if (count.expiresAtMs <= nowMs) counts.delete(key)
  }
  return {
    kind: 'memory',
    ready: () => true,
    take(key: UseKey, max: number, expiresAtS: number): number {
      const nowMs = opts.clock.now()
      const id = useId(key)
      let count = counts.get(id)
      if (count !== undefined && count.expiresAtMs <= nowMs) count = undefined
      if (count === undefined) {
        if (++added % SWEEP_EVERY === 0) sweep(nowMs)
        count = { n: 0, expiresAtMs: expiresAtS * 1000 }
        counts.set(id, count)
      }
      // Refused uses are not counted: only allowed requests spend a use.
      if (count.n >= max) return max + 1
      return ++count.n
    },
    async close() {
      counts.clear()
    },
  }
}

/** One string for (rule, issuer, jti), unambiguous whatever Unicode they hold. */
export const useId = (key: UseKey): string => JSON.stringify([key.scope, key.iss, key.jti])
