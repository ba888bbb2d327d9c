// Revocation reads started in the same turn of the event loop or the next, sent to Redis as one MGET.
//
//   const batch = createReadBatch({ mget: (keys) => data.mget(...keys), parse, timeoutMs: 50,
//     maxKeys: 512, ready, beforeSend: () => cache?.ticket(), afterRead: (ticket, keys, answers) => … })
//   const answers = await batch.read(tokenKeys)   // this token's answers, in its keys' order
//
// Why: a round trip's cost is mostly fixed per command, so concurrent checks share one; a batch
// takes no read once its MGET has left. docs/revocation.md#shared-reads; figures (why two turns,
// not one or three) in bench/README.md.
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
  const hold = () => {
    setImmediate(flush)
  }

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
      return new Promise<StoredAnswer[]>((resolve, reject) => {
        waiters.push({ slots, resolve, reject })
      })
    },
  }
}

function fail(waiters: readonly Waiter[], err: Error) {
  for (const waiter of waiters) waiter.reject(err)
}
