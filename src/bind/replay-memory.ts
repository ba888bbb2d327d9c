// The DPoP replay cache of one process: each key is recorded once until it expires.
//
//   const replay = createMemoryReplayCache({ clock })
//   await replay.firstUse(`${jkt}:${jti}`, ttlMs)   // true, then false until ttlMs has passed
//   replay.firstUseNow(`${jkt}:${jti}`, ttlMs)       // the same answer, without a promise
import type { Clock, ReplayCache } from '../core/types.js'

export function createMemoryReplayCache(opts: { readonly clock: Clock }): ReplayCache {
  // key → expiry (epoch ms). Insertion order is nearly expiry order (every proof gets about the
  // same lifetime), so expired keys are swept from the front and the sweep stops at the first live one.
  const seen = new Map<string, number>()
  const sweep = (nowMs: number) => {
    for (const [key, expiresMs] of seen) {
      if (expiresMs > nowMs) return
      seen.delete(key)
    }
  }
  const firstUseNow = (key: string, ttlMs: number): boolean => {
    const nowMs = opts.clock.now()
    sweep(nowMs)
    const expiresMs = seen.get(key)
    if (expiresMs !== undefined && expiresMs > nowMs) return false
    // Re-inserted, not updated: it moves to the back, where its expiry belongs.
    seen.delete(key)
    seen.set(key, nowMs + ttlMs)
    return true
  }
  return {
    kind: 'memory',
    firstUse: (key, ttlMs) => Promise.resolve(firstUseNow(key, ttlMs)),
    firstUseNow,
    async close() {
      seen.clear()
    },
  }
}
