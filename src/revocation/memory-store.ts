// The revocation set in process memory: the embedded default for one instance and development.
//
//   const store = createMemoryStore({ clock })
//   await store.put(entry); await store.isRevoked({ iss, iatS, values: [['sub', 'ci']] })
//
// Same contract as the Redis set, so both run one shared test suite (test/revocation/*.cases.ts).
import {
  InvalidCursorError,
  type Clock,
  type RevocationEntry,
  type RevocationEvent,
  type RevocationStore,
  type TokenRef,
} from '../core/types.js'
import { entryMatches, keyOf, queryMatches } from './model.js'

export function createMemoryStore(opts: { clock: Clock }): RevocationStore {
  // The set, keyed as the admin API names an entry: (claim, issuer or any, value).
  const entries = new Map<string, RevocationEntry>()
  // The same entries by value alone, for the per-request check: it looks up the token's own claim
  // values (strings JSON.parse already made) instead of building and hashing a key string for each
  // claim under both its issuer and "any issuer" (figures: bench/README.md).
  // A value's list holds at most one entry per (claim, issuer), so it stays a few entries long.
  const byValue = new Map<string, RevocationEntry[]>()
  const listeners = new Set<(event: RevocationEvent) => void>()
  const nowS = () => Math.floor(opts.clock.now() / 1000)

  const add = (key: string, entry: RevocationEntry) => {
    const replaced = entries.get(key)
    if (replaced !== undefined) unindex(replaced)
    entries.set(key, entry)
    const list = byValue.get(entry.value)
    if (list === undefined) byValue.set(entry.value, [entry])
    else list.push(entry)
  }
  const unindex = (entry: RevocationEntry) => {
    const list = byValue.get(entry.value)
    if (list === undefined) return
    const at = list.indexOf(entry)
    if (at !== -1) list.splice(at, 1)
    if (list.length === 0) byValue.delete(entry.value)
  }
  const remove = (key: string, entry: RevocationEntry) => {
    entries.delete(key)
    unindex(entry)
  }

  const live = (key: string): RevocationEntry | undefined => {
    const entry = entries.get(key)
    if (entry && entry.expiresAtS <= nowS()) {
      remove(key, entry)
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
    for (const [key, entry] of entries) if (entry.expiresAtS <= now) remove(key, entry)
  }

  const isRevokedNow = (ref: TokenRef) => {
    let now: number | undefined
    for (const [claim, value] of ref.values) {
      const list = byValue.get(value)
      if (list === undefined) continue
      for (const entry of list) {
        if (entry.claim !== claim || (entry.iss !== undefined && entry.iss !== ref.iss)) continue
        // An expired entry matches nothing; the next write sweeps it out.
        now ??= nowS()
        if (entry.expiresAtS > now && entryMatches(entry, ref.iatS)) return true
      }
    }
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
      add(keyOf(entry.claim, entry.value, entry.iss), entry)
      emit({ kind: 'revoked', entry })
      return entry
    },
    async get(claim, value, iss) {
      return live(keyOf(claim, value, iss))
    },
    async lift(claim, value, iss) {
      const key = keyOf(claim, value, iss)
      const entry = live(key)
      if (!entry) return undefined
      remove(key, entry)
      emit({ kind: 'lifted', entry })
      return entry
    },
    async list(query) {
      // The cursor is the last key answered: the walk goes in key order, so an entry present
      // throughout is answered exactly once, whatever is written or lifted between pages.
      let after = ''
      if (query.cursor !== undefined) {
        after = Buffer.from(query.cursor, 'base64url').toString('utf8')
        if (after.split('\u0000').length !== 3 || Buffer.from(after, 'utf8').toString('base64url') !== query.cursor)
          throw new InvalidCursorError('the cursor is not one this set made')
      }
      const now = nowS()
      const found: Array<[string, RevocationEntry]> = []
      for (const [key, entry] of entries) if (key > after && entry.expiresAtS > now && queryMatches(query, entry)) found.push([key, entry])
      found.sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
      const page = found.slice(0, query.limit)
      const last = page.at(-1)
      return {
        entries: page.map(([, entry]) => entry),
        next: found.length > query.limit && last ? Buffer.from(last[0], 'utf8').toString('base64url') : undefined,
      }
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
