// Long-lived exchanges (WebSockets, streamed responses) indexed so that their token's lapse cuts
// them: by expiry deadline, under one timer for all, and by revocable claim value.
//
//   const registry = createConnectionRegistry({ clock, revocations, revocableClaims, clockSkewS, recheckIntervalS, log })
//   const untrack = registry.track({ identity, kind: 'websocket', cutAtExpiry: true, trace, close: (cut) => … })
//   untrack()            // the exchange ended on its own
//   registry.close()     // stops the timers and the subscription
//
// Why: close bounds (expiry, event, re-check) and costs: docs/long-lived.md#bounds, #cost.
import type { Logger } from 'pino'
import type { Clock, Identity, RevocationEntry, RevocationEvent, RevocationStore, TokenRef } from '../core/types.js'
import { entryMatches, keyOf, toTokenRef } from '../revocation/model.js'

export type CutReason = 'expired' | 'revoked'

/** Why and when an exchange was cut: handed to its `close`, and written to its span and audit line. */
export interface Cut {
  readonly reason: CutReason
  readonly kind: TrackedExchange['kind']
  /** From the start of the request or upgrade to the cut. */
  readonly livedMs: number
}

/** What a cut adds to the exchange's audit line and span (Recorder.finish `note`). */
export const noteOf = (cut: Cut | undefined): Record<string, unknown> | undefined =>
  cut && { cut: cut.reason, connection: cut.kind, lived_ms: Math.round(cut.livedMs) }

export interface TrackedExchange {
  readonly identity: Identity
  readonly kind: 'websocket' | 'stream'
  /** Streams follow their route's `cut_streams_at_expiry`; WebSockets are always cut. Revocation always cuts. */
  readonly cutAtExpiry: boolean
  readonly trace: { readonly startedMs: number }
  /** Ends the exchange: a WebSocket with a close frame 1008, a stream by destroying the response. */
  close(cut: Cut): void
}

export interface ConnectionTracker {
  /** Registers an open exchange; the returned function unregisters it (idempotent). */
  track(exchange: TrackedExchange): () => void
  /** Stops the timers and the revocation subscription; open exchanges are left to the server's close. */
  close(): void
}

export interface ConnectionRegistry extends ConnectionTracker {
  readonly size: number
  /** Cuts every exchange whose deadline has passed on the clock; the timer calls it. */
  expireDue(): number
  /** Asks the revocation set about every open exchange, in batches; the interval calls it. */
  recheck(): Promise<RecheckResult>
}

export interface RecheckResult {
  readonly checked: number
  readonly cut: number
  /** Exchanges the set could not answer for: left open, asked again at the next re-check. */
  readonly unknown: number
}

export interface ConnectionRegistryOptions {
  readonly clock: Clock
  readonly revocations: RevocationStore
  readonly revocableClaims: readonly string[]
  readonly clockSkewS: number
  readonly recheckIntervalS: number
  readonly log: Logger
  /** Longest sleep of the expiry timer: how late a cut may be when the clock jumps. */
  readonly tickMs?: number
}

const DEFAULTS = {
  tickMs: 250,
  /** Concurrent revocation lookups during a re-check. */
  recheckBatch: 256,
  /** Exchanges closed per turn of the event loop when many are cut at once. */
  cutBatch: 256,
  /**
   * Events remembered for exchanges that register after them: the revocation read of a decision can
   * leave before a revocation and answer after its event (replies and events travel apart).
   */
  recentEventsMs: 10_000,
  recentEventsMax: 4096,
}

interface Tracked {
  readonly exchange: TrackedExchange
  readonly ref: TokenRef
  /** Keys of `byValue` holding this exchange. */
  readonly valueKeys: readonly string[]
  /** Whole epoch seconds; undefined when expiry does not cut it. */
  readonly deadlineS: number | undefined
  open: boolean
}

const valueKey = (claim: string, value: string) => `${claim}\u0000${value}`

/** The revocation model (revocation/model.ts), applied to one open exchange. */
const revokes = (entry: RevocationEntry, ref: TokenRef) =>
  (entry.iss === undefined || entry.iss === ref.iss) && entryMatches(entry, ref.iatS)

export function createConnectionRegistry(opts: ConnectionRegistryOptions): ConnectionRegistry {
  const { clock, log } = opts
  const tickMs = opts.tickMs ?? DEFAULTS.tickMs
  const all = new Set<Tracked>()
  // A value held by one exchange (every jti) maps to it directly: no Set per request.
  const byValue = new Map<string, Tracked | Set<Tracked>>()
  const buckets = new Map<number, Set<Tracked>>()
  const deadlines = new MinHeap()
  const recent = new Map<string, { entry: RevocationEntry; atMs: number }>()
  let timer: NodeJS.Timeout | undefined
  let timerDueMs = Infinity
  let interval: NodeJS.Timeout | undefined
  let rechecking: Promise<RecheckResult> | undefined
  let closed = false

  const drop = (t: Tracked) => {
    if (!t.open) return
    t.open = false
    all.delete(t)
    for (const key of t.valueKeys) {
      const held = byValue.get(key)
      if (held === t) byValue.delete(key)
      else if (held instanceof Set) {
        held.delete(t)
        if (held.size === 1) byValue.set(key, held.values().next().value!)
      }
    }
    if (t.deadlineS === undefined) return
    const bucket = buckets.get(t.deadlineS)
    if (!bucket) return
    bucket.delete(t)
    // The heap keeps the second until it passes or the heap is compacted (see track).
    if (bucket.size === 0) buckets.delete(t.deadlineS)
  }

  // Cuts run in batches: a revocation of a subject with 10,000 connections must not freeze the event
  // loop for every other request, and each batch's close frames and FINs leave before the next starts.
  const queue: Array<{ t: Tracked; reason: CutReason }> = []
  let draining = false
  const drain = () => {
    const batch = queue.splice(0, DEFAULTS.cutBatch)
    for (const { t, reason } of batch) {
      try {
        t.exchange.close({ reason, kind: t.exchange.kind, livedMs: Math.max(0, clock.now() - t.exchange.trace.startedMs) })
      } catch (err) {
        log.error({ err: (err as Error).message, reason }, 'closing a long-lived connection failed')
      }
    }
    draining = queue.length > 0
    if (draining) setImmediate(drain)
  }
  /** Unregisters at once, so nothing cuts it twice; `flush` closes it. */
  const cut = (t: Tracked, reason: CutReason) => {
    if (!t.open) return
    drop(t)
    queue.push({ t, reason })
  }
  /** After a loop of cuts: the first batch now, the rest one batch per turn of the event loop. */
  const flush = () => {
    if (!draining && queue.length > 0) drain()
  }

  // --- expiry: buckets of whole seconds, a min-heap of their seconds, one timer -----------------

  const earliest = (): number | undefined => {
    for (;;) {
      const s = deadlines.peek()
      if (s === undefined || buckets.has(s)) return s
      deadlines.pop()
    }
  }

  const arm = () => {
    if (timer) clearTimeout(timer)
    timer = undefined
    timerDueMs = Infinity
    const next = earliest()
    if (next === undefined || closed) return
    const nowMs = clock.now()
    const delayMs = Math.max(0, Math.min(next * 1000 - nowMs, tickMs))
    timerDueMs = nowMs + delayMs
    timer = setTimeout(onTimer, delayMs)
    timer.unref()
  }

  function onTimer() {
    timer = undefined
    expireDue()
    arm()
  }

  function expireDue(): number {
    const nowMs = clock.now()
    let count = 0
    for (;;) {
      const s = earliest()
      if (s === undefined || s * 1000 > nowMs) break
      deadlines.pop()
      const bucket = buckets.get(s)!
      buckets.delete(s)
      for (const t of bucket) {
        cut(t, 'expired')
        count++
      }
    }
    flush()
    return count
  }

  // --- revocation: events by value, a memory of recent ones, the periodic re-check ---------------

  const forgetOld = () => {
    const oldestMs = clock.now() - DEFAULTS.recentEventsMs
    for (const [key, r] of recent) {
      if (r.atMs > oldestMs && recent.size <= DEFAULTS.recentEventsMax) break
      recent.delete(key)
    }
  }

  const revokedRecently = (ref: TokenRef): boolean => {
    if (recent.size === 0) return false
    forgetOld()
    for (const [claim, value] of ref.values) {
      const bound = recent.get(keyOf(claim, value, ref.iss))
      if (bound && entryMatches(bound.entry, ref.iatS)) return true
      const any = recent.get(keyOf(claim, value, undefined))
      if (any && entryMatches(any.entry, ref.iatS)) return true
    }
    return false
  }

  const onEvent = (event: RevocationEvent) => {
    const { entry } = event
    const key = keyOf(entry.claim, entry.value, entry.iss)
    recent.delete(key)
    if (event.kind === 'lifted') return
    recent.set(key, { entry, atMs: clock.now() })
    forgetOld()
    const held = byValue.get(valueKey(entry.claim, entry.value))
    if (!held) return
    let count = 0
    for (const t of held instanceof Set ? [...held] : [held]) {
      if (!revokes(entry, t.ref)) continue
      cut(t, 'revoked')
      count++
    }
    flush()
    if (count > 0) log.info({ claim: entry.claim, connections_cut: count }, 'revocation cut open connections')
  }
  const unsubscribe = opts.revocations.subscribe(onEvent)

  async function runRecheck(): Promise<RecheckResult> {
    const snapshot = [...all]
    let cutCount = 0
    let unknown = 0
    for (let i = 0; i < snapshot.length; i += DEFAULTS.recheckBatch) {
      const batch = snapshot.slice(i, i + DEFAULTS.recheckBatch).filter((t) => t.open)
      const answers = await Promise.allSettled(batch.map((t) => opts.revocations.isRevoked(t.ref)))
      answers.forEach((a, j) => {
        if (a.status === 'rejected') unknown++
        else if (a.value) {
          cut(batch[j]!, 'revoked')
          cutCount++
        }
      })
      flush()
    }
    if (cutCount > 0) log.warn({ connections_cut: cutCount }, 're-check cut connections whose revocation event was missed')
    if (unknown > 0) log.warn({ unknown }, 'revocation set did not answer for open connections: kept, asked again at the next re-check')
    return { checked: snapshot.length, cut: cutCount, unknown }
  }

  const recheck = (): Promise<RecheckResult> => {
    rechecking ??= runRecheck().finally(() => {
      rechecking = undefined
    })
    return rechecking
  }

  const onInterval = () => {
    // Stopped lazily, so traffic of short requests does not start and stop it on every request.
    if (all.size === 0) {
      clearInterval(interval)
      interval = undefined
      return
    }
    recheck().catch((err: unknown) => log.error({ err: (err as Error).message }, 'connection re-check failed'))
  }

  return {
    get size() {
      return all.size
    },

    track(exchange) {
      const ref = toTokenRef(exchange.identity, opts.revocableClaims)
      const deadlineS = exchange.cutAtExpiry || exchange.kind === 'websocket' ? exchange.identity.expS + opts.clockSkewS : undefined
      const t: Tracked = { exchange, ref, valueKeys: ref.values.map(([c, v]) => valueKey(c, v)), deadlineS, open: true }
      if (closed) return () => {}
      all.add(t)
      for (const key of t.valueKeys) {
        const held = byValue.get(key)
        if (!held) byValue.set(key, t)
        else if (held instanceof Set) held.add(t)
        else byValue.set(key, new Set([held, t]))
      }
      if (deadlineS !== undefined) {
        let bucket = buckets.get(deadlineS)
        if (!bucket) {
          buckets.set(deadlineS, (bucket = new Set()))
          deadlines.push(deadlineS)
          // Emptied buckets leave their second in the heap; rebuild before those outnumber the live ones.
          if (deadlines.size > 2 * buckets.size + 64) deadlines.reset(buckets.keys())
        }
        bucket.add(t)
        if (deadlineS * 1000 < timerDueMs) arm()
      }
      if (!interval) {
        interval = setInterval(onInterval, opts.recheckIntervalS * 1000)
        interval.unref()
      }
      // Never synchronously: the caller has not finished setting the exchange up.
      if (revokedRecently(ref)) {
        queueMicrotask(() => {
          cut(t, 'revoked')
          flush()
        })
      }
      return () => drop(t)
    },

    expireDue,
    recheck,

    close() {
      closed = true
      unsubscribe()
      if (timer) clearTimeout(timer)
      if (interval) clearInterval(interval)
      timer = interval = undefined
    },
  }
}

/** A binary min-heap of numbers: the expiry seconds that have a bucket (and some that no longer do). */
class MinHeap {
  private items: number[] = []

  get size(): number {
    return this.items.length
  }

  peek(): number | undefined {
    return this.items[0]
  }

  push(value: number): void {
    const a = this.items
    let i = a.push(value) - 1
    while (i > 0) {
      const parent = (i - 1) >> 1
      if (a[parent]! <= value) break
      a[i] = a[parent]!
      i = parent
    }
    a[i] = value
  }

  pop(): number | undefined {
    const a = this.items
    const top = a[0]
    const last = a.pop()
    if (a.length > 0 && last !== undefined) this.siftDown(0, last)
    return top
  }

  reset(values: Iterable<number>): void {
    this.items = [...values]
    for (let i = (this.items.length >> 1) - 1; i >= 0; i--) this.siftDown(i, this.items[i]!)
  }

  private siftDown(start: number, value: number): void {
    const a = this.items
    const n = a.length
    let i = start
    for (;;) {
      let child = 2 * i + 1
      if (child >= n) break
      if (child + 1 < n && a[child + 1]! < a[child]!) child++
      if (a[child]! >= value) break
      a[i] = a[child]!
      i = child
    }
    a[i] = value
  }
}
