// Lapse's one writer of stdout: audit lines (audit-line.ts) and pino's operational lines both go
// through it, so every line reaches fd 1 whole and in order. docs/operations.md#audit-log.
//
//   const sink = stdoutSink({ capBytes: 16 << 20 })   // one per process; main.ts createLogger
//   sink.write(line)                                  // never blocks, never throws
//   sink.flush(() => process.exit(0))                 // SIGTERM: once written (or stdout stopped taking them)
//
// Lines are copied as they come into a batch buffer (UTF-8) and written in batches: once
// FLUSH_BYTES are pending, or FLUSH_DELAY_MS after the first line of a batch, and synchronously on
// process exit (an uncaught exception too). Writes are synchronous system calls on a non-blocking
// descriptor: a pipe that is full answers EAGAIN at once, the rest is retried with a backoff, and
// requests carry on. While stdout takes nothing, at most `capBytes` wait; further lines are
// dropped and counted (`dropped`, the metric lapse.log.lines.dropped), and `notice` writes a line
// when dropping starts (at most once a minute) and when it stops.
//
// Why copy each line at once into a reused buffer: a line kept as a string until its batch is
// written is a young object that a garbage collection may have to move, and the text was copied
// twice more (joined, then encoded); under load that cost more than building the line (issue 27).
import { fstatSync, writeSync } from 'node:fs'
import { performance } from 'node:perf_hooks'

/** A batch is written once this many bytes wait (a quiet sidecar's after FLUSH_DELAY_MS). */
export const FLUSH_BYTES = 64 * 1024
/** The longest a line waits in memory when stdout takes lines: what SIGKILL can lose. */
export const FLUSH_DELAY_MS = 100
/** The most written in one turn of the event loop: a large backlog is written in steps. */
const WRITE_CHUNK_BYTES = 1024 * 1024
/** Written batch buffers kept for the next batches (a backlog's beyond these are left to the GC). */
const SPARE_BATCHES = 4
/** Retries of a full pipe back off up to this. */
const RETRY_MAX_MS = 50
/** At exit, a full pipe is retried for this long without progress, then what is left is lost. */
const EXIT_PATIENCE_MS = 500
/** flush(cb) gives up after this long without progress since it was asked (stdout blocked): cb is called anyway. */
const FLUSH_PATIENCE_MS = 1000
const NOTICE_INTERVAL_MS = 60_000

export interface DropNotice {
  /** True when dropping starts, false when stdout takes lines again. */
  readonly dropping: boolean
  /** Lines dropped since the last notice that ended dropping. */
  readonly dropped: number
}

export interface LineSinkOptions {
  readonly fd: number
  /** Bytes waiting to be written beyond which lines are dropped. */
  readonly capBytes: number
  /** The line to write when dropping starts or stops (written past the cap); none when undefined. */
  readonly notice?: ((n: DropNotice) => string | undefined) | undefined
}

export class LineSink {
  /** Lines dropped because stdout did not take them (or was closed). */
  dropped = 0
  /** Set once stdout failed for good (EPIPE, EBADF…): every line after is dropped. */
  broken: string | undefined = undefined

  private readonly capBytes: number
  private readonly fd: number
  private readonly notice: LineSinkOptions['notice']
  /** The batch lines are copied into, and how far it is filled. */
  private batch: Buffer
  private batchAt = 0
  private batchLines = 0
  /** Batches taken for writing, oldest first; the first may be partly written (`at`). */
  private queue: Batch[] = []
  /** Bytes in `queue` not yet written. */
  private queuedBytes = 0
  private spare: Buffer[] = []
  private timer: NodeJS.Timeout | undefined = undefined
  private immediate = false
  private retryMs = 0
  /** The last write found the pipe full: a retry timer is set. */
  private blocked = false
  private dropping = false
  private noticeOpen = false
  private lastNoticeMs = -Infinity
  private reported = 0
  private waiters: Array<() => void> = []
  private lastProgressMs = performance.now()
  private flushAskedMs = 0
  /** A batch is written once this much waits: FLUSH_BYTES, less under a small cap. */
  private readonly batchBytes: number

  constructor(opts: LineSinkOptions) {
    this.fd = opts.fd
    this.capBytes = opts.capBytes
    this.batchBytes = Math.max(1, Math.min(FLUSH_BYTES, Math.floor(opts.capBytes / 4)))
    this.notice = opts.notice
    this.batch = Buffer.allocUnsafeSlow(FLUSH_BYTES)
  }

  /** Bytes waiting to be written: what `capBytes` bounds. */
  get waitingBytes(): number {
    return this.queuedBytes + this.batchAt
  }

  /** Takes one whole line (ending in a newline). Always true: pino reads it as "no backpressure". */
  write(line: string): boolean {
    // line.length is the least the line takes in UTF-8: a line past the cap by its multi-byte
    // characters is still taken, the next one not.
    if (this.broken !== undefined || this.waitingBytes + line.length > this.capBytes) {
      this.drop()
      return true
    }
    this.append(line)
    // Already due: the next turn writes, or a full pipe's retry timer will.
    if (this.immediate || this.blocked) return true
    if (this.waitingBytes >= this.batchBytes) this.soon()
    else if (this.timer === undefined) this.later(FLUSH_DELAY_MS)
    return true
  }

  /** Calls `cb` once every line taken so far is written, or once stdout took nothing for FLUSH_PATIENCE_MS. */
  flush(cb: () => void = () => undefined): void {
    if (this.waitingBytes === 0 || this.broken !== undefined) return void setImmediate(cb)
    if (this.waiters.length === 0) this.flushAskedMs = performance.now()
    this.waiters.push(cb)
    this.pump()
  }

  /**
   * Writes what waits, synchronously: on exit, when no later turn of the event loop will. A full
   * pipe is retried for EXIT_PATIENCE_MS without progress; what it still refuses is lost.
   */
  flushSync(): void {
    this.clearTimer()
    this.closeNotice(true)
    const pause = new Int32Array(new SharedArrayBuffer(4))
    let waitedMs = 0
    while (this.broken === undefined && this.waitingBytes > 0) {
      const wrote = this.writeSome(Number.POSITIVE_INFINITY)
      if (wrote === 'blocked') {
        if (waitedMs >= EXIT_PATIENCE_MS) return
        Atomics.wait(pause, 0, 0, 5)
        waitedMs += 5
      } else if (wrote === 'progress') waitedMs = 0
    }
  }

  /** Copies a line into the batch; a full batch is queued and a new one begun. */
  private append(line: string): void {
    // At most 3 UTF-8 bytes per UTF-16 unit: a line that may not fit begins the next batch.
    if (this.batchAt + line.length * 3 > this.batch.length) {
      this.seal()
      if (line.length * 3 > this.batch.length) this.batch = Buffer.allocUnsafeSlow(line.length * 3)
    }
    this.batchAt += this.batch.write(line, this.batchAt)
    this.batchLines++
  }

  /** Queues the batch being filled (if anything is in it) and begins another. */
  private seal(): void {
    if (this.batchAt === 0) return
    this.queue.push({ buf: this.batch, at: 0, end: this.batchAt, lines: this.batchLines })
    this.queuedBytes += this.batchAt
    this.batch = this.spare.pop() ?? Buffer.allocUnsafeSlow(FLUSH_BYTES)
    this.batchAt = 0
    this.batchLines = 0
  }

  private drop(): void {
    this.dropped++
    if (this.dropping) return
    this.dropping = true
    const now = performance.now()
    if (this.noticeOpen || now - this.lastNoticeMs < NOTICE_INTERVAL_MS) return
    this.lastNoticeMs = now
    this.noticeOpen = true
    this.force(this.notice?.({ dropping: true, dropped: this.dropped - this.reported }))
  }

  /** Ends a dropping spell once half the cap is free again (or at exit): says how many were lost. */
  private closeNotice(atExit: boolean): void {
    if (!this.dropping && !atExit) return
    if (!atExit && this.waitingBytes > this.capBytes / 2) return
    this.dropping = false
    if (!(this.noticeOpen || (atExit && this.dropped > this.reported))) return
    this.noticeOpen = false
    const dropped = this.dropped - this.reported
    this.reported = this.dropped
    this.force(this.notice?.({ dropping: false, dropped }))
  }

  /** A notice is written even past the cap: one line per dropping spell. */
  private force(line: string | undefined): void {
    if (line === undefined || this.broken !== undefined) return
    this.append(line)
    this.soon()
  }

  private soon(): void {
    if (this.immediate) return
    this.clearTimer()
    this.immediate = true
    setImmediate(() => {
      this.immediate = false
      this.pump()
    })
  }

  private later(ms: number): void {
    this.clearTimer()
    this.timer = setTimeout(() => {
      this.timer = undefined
      this.pump()
    }, ms)
    // A pending batch must not keep a finished process alive: exit writes it (flushSync).
    this.timer.unref()
  }

  private clearTimer(): void {
    if (this.timer === undefined) return
    clearTimeout(this.timer)
    this.timer = undefined
  }

  private pump(): void {
    const wrote = this.writeSome(WRITE_CHUNK_BYTES)
    this.blocked = wrote === 'blocked'
    this.closeNotice(false)
    const now = performance.now()
    if (this.waitingBytes === 0 || this.broken !== undefined) {
      this.retryMs = 0
      this.release()
      return
    }
    if (wrote === 'blocked') {
      // Full pipe: back off, and let flush(cb) callers go once it has taken nothing for a while.
      this.retryMs = Math.min(Math.max(1, this.retryMs * 2), RETRY_MAX_MS)
      if (now - Math.max(this.lastProgressMs, this.flushAskedMs) >= FLUSH_PATIENCE_MS) this.release()
      this.later(this.retryMs)
      return
    }
    this.retryMs = 0
    // Progress, more to write: a backlog, or a pipe that took part of it.
    if (this.queue.length > 0 || this.batchAt >= this.batchBytes || this.waiters.length > 0) this.soon()
    else this.later(FLUSH_DELAY_MS)
  }

  private release(): void {
    for (const cb of this.waiters.splice(0)) cb()
  }

  /** One write(2) of up to `maxBytes` of the oldest batch; the batch being filled is taken when none waits. */
  private writeSome(maxBytes: number): 'progress' | 'blocked' | 'idle' {
    if (this.queue.length === 0) this.seal()
    const b = this.queue[0]
    if (b === undefined) return 'idle'
    let n: number
    try {
      n = writeSync(this.fd, b.buf, b.at, Math.min(b.end - b.at, maxBytes))
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code ?? 'EIO'
      if (code === 'EAGAIN' || code === 'EWOULDBLOCK' || code === 'EINTR') return 'blocked'
      // Closed or gone: nothing will be written again. What waited is lost, and counted.
      this.broken = code
      for (const q of this.queue) this.dropped += q.lines
      this.dropped += this.batchLines
      this.queue = []
      this.queuedBytes = 0
      this.batchAt = 0
      this.batchLines = 0
      return 'idle'
    }
    if (n === 0) return 'blocked'
    this.lastProgressMs = performance.now()
    b.at += n
    this.queuedBytes -= n
    if (b.at >= b.end) {
      this.queue.shift()
      if (b.buf.length === FLUSH_BYTES && this.spare.length < SPARE_BATCHES) this.spare.push(b.buf)
    }
    return 'progress'
  }
}

interface Batch {
  readonly buf: Buffer
  /** Written up to here. */
  at: number
  readonly end: number
  readonly lines: number
}

let stdout: LineSink | undefined

/**
 * The process's sink on fd 1, made on first use (later calls get the same one: two writers on
 * one descriptor could interleave their writes). Written out synchronously on exit.
 */
export function stdoutSink(opts: { capBytes: number; notice?: LineSinkOptions['notice'] }): LineSink {
  if (stdout) return stdout
  // Node opens a pipe or socket stdout non-blocking when process.stdout is first read; the sink's
  // own writes rely on that: a full pipe answers EAGAIN instead of stopping the event loop.
  try {
    const stat = fstatSync(1)
    if (stat.isFIFO() || stat.isSocket()) void process.stdout
  } catch {
    // fd 1 closed: the first write finds out and counts the lines as dropped.
  }
  const sink = new LineSink({ fd: 1, capBytes: opts.capBytes, notice: opts.notice })
  process.on('exit', () => sink.flushSync())
  stdout = sink
  return sink
}
