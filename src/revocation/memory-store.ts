// The revocation set in process memory: the embedded default for one instance and development.
//
//   const store = createMemoryStore({ clock })
//   await store.put(entry); await store.isRevoked({ iss, iatS, values: [['sub', 'ci']] })
//
// Same contract as the Redis set, so both run one shared test suite (test/revocation/*.cases.ts).
import type { Clock, RevocationEntry, RevocationEvent, RevocationStore, TokenRef } from '../pipeline/types.js'
import { entryMatches, keyOf } from './model.js'

// A token reused on many requests keeps one TokenRef (pipeline/decide.ts), so its keys are built
// once: a fresh key string would be hashed again on every lookup.
const KEYS = Symbol('lapse.memory-keys')
type Keyed = TokenRef & { [KEYS]?: readonly string[] }
function keysOf(ref: Keyed): readonly string[] {
  const known = ref[KEYS]
  if (known !== undefined) return known
  const keys = ref.values.flatMap(([claim, value]) => [keyOf(claim, value, ref.iss), keyOf(claim, value, undefined)])
  if (Object.isExtensible(ref)) ref[KEYS] = keys
  return keys
}

export function createMemoryStore(opts: { clock: Clock }): RevocationStore {
  const entries = new Map<string, RevocationEntry>()
  const listeners = new Set<(event: RevocationEvent) => void>()
  const nowS = () => Math.floor(opts.clock.now() / 1000)

  const live = (key: string): RevocationEntry | undefined => {
    const entry = entries.get(key)
    if (entry && entry.expiresAtS <= nowS()) {
      entries.delete(key)
      return undefined
    }
    return entry
  }
  const emit = (event: RevocationEvent) => {
    for (const listener of listeners) listener(event)
  }
  // Expired entries would otherwise stay until looked up; a sweep on write keeps the map
  // bounded by the revocation rate, like the TTLs do in Redis.
  const sweep = () => {
    const now = nowS()
    for (const [key, entry] of entries) if (entry.expiresAtS <= now) entries.delete(key)
  }

  const isRevokedNow = (ref: TokenRef) => {
    for (const key of keysOf(ref)) if (entryMatches(live(key), ref.iatS)) return true
    return false
  }

  return {
    kind: 'memory',
    isRevokedNow,
    async isRevoked(ref: TokenRef) {
      return isRevokedNow(ref)
    },
    async put(entry) {
      sweep()
      entries.set(keyOf(entry.claim, entry.value, entry.iss), entry)
      emit({ kind: 'revoked', entry })
      return entry
    },
    async get(claim, value, iss) {
      return live(keyOf(claim, value, iss))
    },
    async lift(claim, value, iss) {
      const key = keyOf(claim, value, iss)
      const entry = live(key)
      if (!entry) return false
      entries.delete(key)
      emit({ kind: 'lifted', entry })
      return true
    },
    subscribe(listener) {
      listeners.add(listener)
      return () => listeners.delete(listener)
    },
    ready: () => true,
    async close() {
      listeners.clear()
    },
  }
}
