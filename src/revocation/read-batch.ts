// Revocation reads started in the same turn of the event loop or the next, sent to Redis as one MGET.
//
//   const batch = createReadBatch({ mget: (keys) => data.mget(...keys), parse, timeoutMs: 50,
//     maxKeys: 512, ready, beforeSend: () => cache?.ticket(), afterRead: (ticket, keys, answers) => … })
//   const answers = await batch.read(tokenKeys)   // this token's answers, in its keys' order
//
// Why: a check that misses the local cache (every fresh token's jti, or every check with the cache
// off) costs one round trip, and on a busy sidecar most of that is fixed per command: the write
// syscall, Redis's own read and write, the wake-up for the reply. Requests arrive on many
// connections in the same poll phase of the loop; deferring their reads past it collects them
// and sends one MGET of the distinct keys. A key asked for by several requests (a token reused
// across concurrent requests, a shared `sub`) is read and parsed once.
//
// Why two turns: on a saturated sidecar one poll phase holds only a few requests (3–4 in the
// benchmark's row 4b), so holding the batch through the next poll phase as well roughly halves
// the MGETs (6–7 requests each): row 4b × 1.04 req/s pooled over two A/B runs, and at a fixed
// moderate rate p50 −13% and × 0.86 CPU per request, because fewer round trips leave less
// queueing (bench/README.md). Holding it for a third turn bought nothing measurable. The wait is
// counted in turns, not time: on an idle loop a turn is one poll with a zero timeout (a lone
// check's p50 went 44 → 47–48 µs in bench/revocation.mjs), so a lone read is not held back.
//
// What it does not change:
// - Fail closed: a read when the data connection is not ready rejects at once, as before; a batch
//   whose MGET fails or does not answer within `timeoutMs` rejects every read in it. The clock
//   starts when the batch is sent, and the batch is sent in the turn after the one its first read
//   started in, so a read waits at most those two turns plus `timeoutMs`.
// - Every read is sent after it started: a batch takes no reads once its MGET has left, so a
//   revocation acknowledged before a check began is always seen by that check.
// - The cache's epoch rule (answer-cache.ts): the ticket is taken when the batch is sent, before
//   its MGET leaves, and the answers are offered to the cache once per batch.
// - Cluster: every key shares the `{prefix}` hash tag, so a batch is still one slot's MGET.
// - An idle sidecar: a lone read is one MGET, two `setImmediate` hops later (microseconds).
import { RevocationUnavailableError } from '../core/types.js'
import type { StoredAnswer } from './answer-cache.js'
import { bounded } from './bounded.js'

export interface ReadBatch {
  /** The stored answer of every key, in order; rejects with RevocationUnavailableError. */
  read(keys: readonly string[]): Promise<StoredAnswer[]>
}

interface Waiter {
  /** Where each of the caller's keys sits in the batch's distinct keys. */
  readonly slots: number[]
  resolve(answers: StoredAnswer[]): void
  reject(err: Error): void
}

export function createReadBatch<Ticket>(opts: {
  mget(keys: string[]): Promise<Array<string | null>>
  parse(raw: string | null): StoredAnswer
  timeoutMs: number
  /** Keys per MGET: a burst larger than this goes out as several MGETs in the same turn. */
  maxKeys: number
  ready(): boolean
  beforeSend(): Ticket
  afterRead(ticket: Ticket, keys: readonly string[], answers: readonly StoredAnswer[]): void
}): ReadBatch {
  let keys: string[] = []
  let slotOf = new Map<string, number>()
  let waiters: Waiter[] = []
  let scheduled = false

  const flush = () => {
    scheduled = false
    const batchKeys = keys
    const batchWaiters = waiters
    keys = []
    slotOf = new Map()
    waiters = []
    if (!opts.ready()) {
      fail(batchWaiters, new RevocationUnavailableError('revocation set not connected'))
      return
    }
    const ticket = opts.beforeSend()
    bounded(readAll(batchKeys), opts.timeoutMs, 'revocation check').then(
      (raw) => {
        const answers = raw.map(opts.parse)
        opts.afterRead(ticket, batchKeys, answers)
        for (const waiter of batchWaiters) waiter.resolve(waiter.slots.map((slot) => answers[slot] as StoredAnswer))
      },
      (err: Error) => fail(batchWaiters, err),
    )
  }

  // The first hop ends the turn the batch's first read started in; the batch is sent at the end of
  // the next, so the reads of that turn's poll phase join it.
  const hold = () => { setImmediate(flush) }

  const readAll = async (all: string[]): Promise<Array<string | null>> => {
    if (all.length <= opts.maxKeys) return opts.mget(all)
    const parts: Array<Promise<Array<string | null>>> = []
    for (let at = 0; at < all.length; at += opts.maxKeys) parts.push(opts.mget(all.slice(at, at + opts.maxKeys)))
    return (await Promise.all(parts)).flat()
  }

  return {
    read(tokenKeys) {
      if (!opts.ready()) return Promise.reject(new RevocationUnavailableError('revocation set not connected'))
      const slots: number[] = []
      for (const key of tokenKeys) {
        let slot = slotOf.get(key)
        if (slot === undefined) {
          slot = keys.push(key) - 1
          slotOf.set(key, slot)
        }
        slots.push(slot)
      }
      if (!scheduled) {
        scheduled = true
        setImmediate(hold)
      }
      return new Promise<StoredAnswer[]>((resolve, reject) => { waiters.push({ slots, resolve, reject }) })
    },
  }
}

function fail(waiters: readonly Waiter[], err: Error) {
  for (const waiter of waiters) waiter.reject(err)
}
