// Local cache of revocation-set reads, kept honest by the set's invalidation events.
//
//   const cache = createAnswerCache({ maxEntries: 100_000, isFresh: () => channel.fresh(), nowS })
//   const hit = cache.read(keys)               // every key cached and the channel fresh, or undefined
//   const ticket = cache.ticket()              // before the Redis read …
//   cache.fill(ticket, keys, values)           // … after it: dropped if an event came in between
//   cache.invalidate(key); cache.drop()        // on an event; when the channel is lost
//
// Why (fresh channel only, the epoch, drop all after a gap): docs/revocation.md#local-cache.
import type { RevocationEntry } from '../core/types.js'

/** What one key holds: an entry, nothing, or something unreadable (which counts as revoked). */
export type StoredAnswer = RevocationEntry | null | 'unreadable'

export interface AnswerCache {
  read(keys: readonly string[]): StoredAnswer[] | undefined
  ticket(): number | undefined
  fill(ticket: number | undefined, keys: readonly string[], values: readonly StoredAnswer[]): void
  invalidate(key: string): void
  drop(): void
  readonly size: number
}

export function createAnswerCache(opts: { maxEntries: number; isFresh: () => boolean; nowS: () => number }): AnswerCache {
  const answers = new Map<string, StoredAnswer>()
  let epoch = 0

  // An entry past its expiry has left Redis; re-reading it costs one round trip and keeps
  // this cache from answering "revoked" longer than the set itself does.
  const usable = (answer: StoredAnswer | undefined) =>
    answer !== undefined && !(answer !== null && answer !== 'unreadable' && answer.expiresAtS <= opts.nowS())

  const store = (key: string, value: StoredAnswer) => {
    answers.delete(key)
    // Insertion order makes the Map a FIFO: jti values are unique per token, so without a
    // bound the cache would grow with every token ever seen.
    while (answers.size >= opts.maxEntries) {
      const oldest = answers.keys().next()
      if (oldest.done) break
      answers.delete(oldest.value)
    }
    answers.set(key, value)
  }

  return {
    read(keys) {
      if (!opts.isFresh()) return undefined
      const hits: StoredAnswer[] = []
      for (const key of keys) {
        const answer = answers.get(key)
        if (!usable(answer)) return undefined
        hits.push(answer as StoredAnswer)
      }
      return hits
    },
    ticket: () => (opts.isFresh() ? epoch : undefined),
    fill(ticket, keys, values) {
      if (ticket === undefined || ticket !== epoch || !opts.isFresh()) return
      if (values.length !== keys.length) return
      keys.forEach((key, i) => {
        store(key, values[i] as StoredAnswer)
      })
    },
    invalidate(key) {
      epoch++
      answers.delete(key)
    },
    drop() {
      epoch++
      answers.clear()
    },
    get size() {
      return answers.size
    },
  }
}
