// The stdout sink over a real pipe (a FIFO in a temporary directory): lines reach it whole and in
// order; while nobody reads, what waits stays under the cap, the rest is dropped and counted, and
// notices say so; closed for good, lines are counted and never thrown about. The same sink on a
// process's real stdout, written out when the process dies of an uncaught exception: crash.test.ts.
import { spawnSync } from 'node:child_process'
import { closeSync, constants, mkdtempSync, openSync, readSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { StringDecoder } from 'node:string_decoder'
import t, { type Test } from 'tap'
import { LineSink, type DropNotice } from '../../src/telemetry/line-sink.js'
import { waitFor } from '../fixtures/app.js'

/** A FIFO opened for writing (the sink's end, non-blocking) and for reading (the test's end). */
function fifo(t: Test): { writeFd: number; readFd: number; read(): string; closeReader(): void } {
  const dir = mkdtempSync(join(tmpdir(), 'lapse-sink-'))
  const path = join(dir, 'stdout')
  const made = spawnSync('mkfifo', [path])
  if (made.status !== 0) throw new Error(`mkfifo: ${made.stderr}`)
  // The reader first: a non-blocking open for writing fails while a FIFO has no reader.
  let readFd: number | undefined = openSync(path, constants.O_RDONLY | constants.O_NONBLOCK)
  const writeFd = openSync(path, constants.O_WRONLY | constants.O_NONBLOCK)
  t.teardown(() => {
    closeSync(writeFd)
    if (readFd !== undefined) closeSync(readFd)
    rmSync(dir, { recursive: true, force: true })
  })
  const chunk = Buffer.alloc(1 << 16)
  // A character split between two reads is held back until its last byte comes.
  const decoder = new StringDecoder('utf8')
  return {
    writeFd,
    readFd,
    /** Everything the pipe holds now. */
    read() {
      let text = ''
      for (;;) {
        let n: number
        try {
          n = readSync(readFd!, chunk, 0, chunk.length, null)
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code === 'EAGAIN') break
          throw err
        }
        if (n === 0) break
        text += decoder.write(chunk.subarray(0, n))
      }
      return text
    },
    closeReader() {
      closeSync(readFd!)
      readFd = undefined
    },
  }
}

const line = (i: number, pad = '') => `${JSON.stringify({ i, pad })}\n`

function notices(): { seen: DropNotice[]; notice: (n: DropNotice) => string } {
  const seen: DropNotice[] = []
  return {
    seen,
    notice: (n) => {
      seen.push(n)
      return `${JSON.stringify({ notice: n.dropping ? 'dropping' : 'resumed', dropped: n.dropped })}\n`
    },
  }
}

t.test('a reader that keeps up gets every line whole and in order, ASCII or not, across many batches', async (t) => {
  const pipe = fifo(t)
  const sink = new LineSink({ fd: pipe.writeFd, capBytes: 16 << 20 })
  let got = ''
  const reader = setInterval(() => {
    got += pipe.read()
  }, 1)
  t.teardown(() => clearInterval(reader))
  const sent: string[] = []
  for (let i = 0; i < 20_000; i++) {
    // Lines of many lengths, some not ASCII (written as UTF-8), some longer than a batch.
    const l = line(i, i % 7 === 0 ? 'é→𝄞'.repeat(i % 50) : i % 1999 === 0 ? 'z'.repeat(70_000 + i) : 'x'.repeat(i % 500))
    sent.push(l)
    sink.write(l)
    if (i % 1000 === 0) await new Promise((r) => setImmediate(r))
  }
  await new Promise<void>((resolve) => sink.flush(resolve))
  await waitFor(() => got.length >= sent.join('').length || undefined, 'every line read')
  t.equal(sink.dropped, 0, 'nothing dropped')
  t.ok(got === sent.join(''), 'the bytes read are the lines written, in order')
})

t.test(
  'nobody reading: what waits stays under the cap, the rest is dropped, counted and noticed; reading again gets whole lines',
  async (t) => {
    const pipe = fifo(t)
    const capBytes = 64 * 1024
    const { seen, notice } = notices()
    const sink = new LineSink({ fd: pipe.writeFd, capBytes, notice })
    const total = 5000
    let most = 0
    for (let i = 0; i < total; i++) {
      sink.write(line(i, 'y'.repeat(200)))
      most = Math.max(most, sink.waitingBytes)
      // Turns of the event loop, so the sink writes until the pipe is full.
      if (i % 100 === 0) await new Promise((r) => setImmediate(r))
    }
    t.ok(most <= capBytes + 200, `at most the cap waits (most: ${most} bytes)`)
    t.ok(sink.dropped > 0, `lines were dropped (${sink.dropped})`)
    t.same(seen, [{ dropping: true, dropped: 1 }], 'one notice when dropping started')

    // Reading again: every line that was kept comes out whole, then the notice that dropping ended.
    let got = ''
    await waitFor(() => {
      got += pipe.read()
      return got.includes('"resumed"') || undefined
    }, 'the notice that dropping ended')
    await new Promise<void>((resolve) => sink.flush(resolve))
    got += pipe.read()
    const lines = got.split('\n')
    t.equal(lines.pop(), '', 'the text ends with a whole line')
    const parsed = lines.map((l) => JSON.parse(l) as { i?: number; notice?: string; dropped?: number })
    const kept = parsed.filter((p) => p.i !== undefined).map((p) => p.i!)
    t.same(
      kept,
      [...kept].sort((a, b) => a - b),
      'kept lines in order',
    )
    t.equal(kept.length + sink.dropped, total, 'every line is either written or counted as dropped')
    t.same(
      parsed.filter((p) => p.notice).map((p) => p.notice),
      ['dropping', 'resumed'],
      'the two notices are lines of the same output',
    )
    t.equal(seen[1]?.dropped, sink.dropped, 'the second notice says how many were dropped')
  },
)

t.test('flush(cb) waits for a reader, and gives up on one that never comes', async (t) => {
  const pipe = fifo(t)
  const sink = new LineSink({ fd: pipe.writeFd, capBytes: 16 << 20 })
  // More than the pipe holds.
  for (let i = 0; i < 2000; i++) sink.write(line(i, 'z'.repeat(100)))
  let flushed = false
  sink.flush(() => {
    flushed = true
  })
  // Nobody reads: the callback still comes (after a second without progress), lines still wait.
  await waitFor(() => flushed || undefined, 'the flush callback of a blocked pipe')
  t.ok(sink.waitingBytes > 0, 'lines still wait for the pipe')
  let got = ''
  let done = false
  sink.flush(() => {
    done = true
  })
  await waitFor(() => {
    got += pipe.read()
    return done || undefined
  }, 'the flush callback once read')
  got += pipe.read()
  t.equal(got.split('\n').length - 1, 2000, 'every line came out once read')
  t.equal(sink.waitingBytes, 0)
})

t.test('a pipe whose reader is gone (EPIPE): lines are counted as dropped, nothing throws', async (t) => {
  const pipe = fifo(t)
  const sink = new LineSink({ fd: pipe.writeFd, capBytes: 16 << 20 })
  pipe.closeReader()
  for (let i = 0; i < 10; i++) sink.write(line(i))
  await new Promise<void>((resolve) => sink.flush(resolve))
  sink.write(line(10))
  t.equal(sink.broken, 'EPIPE')
  t.equal(sink.dropped, 11, 'the lines that waited and the one after')
})
