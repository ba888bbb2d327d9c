// Revocation set benchmark: what one check costs (Redis round trip, cached, in memory) and how
// long a revocation acknowledged at sidecar A takes to reach sidecar B (event, first deny).
//
//   npm run build && node bench/revocation.mjs [--calls 20000] [--trials 500]
//
// Loopback only: it starts its own redis-server on a free port (never 6379) and stops it.
// Sidecars A and B are two stores in this one process, each with its own connections, so the
// propagation figures include both stores sharing one event loop.
import { spawn } from 'node:child_process'
import { mkdtempSync, rmSync } from 'node:fs'
import net from 'node:net'
import os from 'node:os'
import { join } from 'node:path'
import { parseArgs } from 'node:util'
import { manualClock } from '../dist/core/clock.js'
import { createMemoryStore } from '../dist/revocation/memory-store.js'
import { createRedisStore } from '../dist/revocation/redis-store.js'

const { values: args } = parseArgs({
  options: { calls: { type: 'string', default: '20000' }, trials: { type: 'string', default: '500' } },
})
const CALLS = Number(args.calls)
const TRIALS = Number(args.trials)
const WARMUP = 2000
const CONCURRENCY = 32
const ISS = 'https://idp.example/'

const nowNs = () => process.hrtime.bigint()
const ms = (ns) => Number(ns) / 1e6
const sleep = (t) => new Promise((resolve) => setTimeout(resolve, t))

const redis = await startRedis()
const clock = manualClock(Date.now())
const nowS = () => Math.floor(clock.now() / 1000)
const opened = []
const open = (cache, prefix = 'bench') => {
  const store = createRedisStore({ url: redis.url, prefix, timeoutMs: 1000, clock, cache })
  opened.push(store)
  return store
}

try {
  const rows = []
  // A token with the four default revocable claims: one MGET of eight keys (issuer + any-issuer).
  const token = {
    iss: ISS,
    iatS: nowS(),
    values: [
      ['jti', 'j-1'],
      ['sub', 'alice'],
      ['client_id', 'c-1'],
      ['sid', 's-1'],
    ],
  }
  const memory = createMemoryStore({ clock })
  const uncached = open(false)
  const cached = open(true)
  await until(() => uncached.ready() && cached.ready() && cached.cacheActive())
  await memory.put(entry('sub', 'someone-else'))
  await uncached.put(entry('sub', 'someone-else'))

  rows.push(['check, Redis round trip (MGET 8 keys)', ...summary(await timeCalls(uncached, token)), await throughput(uncached, token)])
  rows.push(['check, cached (cache on, hit)', ...summary(await timeCalls(cached, token)), await throughput(cached, token)])
  rows.push(['check, in-memory set', ...summary(await timeCalls(memory, token)), await throughput(memory, token)])
  rows.push(['put (SET EX + PUBLISH, acknowledged)', ...summary(await timePuts(uncached)), ''])

  const a = open(false, 'prop')
  const bCached = open(true, 'prop')
  const bUncached = open(false, 'prop')
  await until(() => [a, bCached, bUncached].every((s) => s.ready() && s.eventsLive()))
  const prop = await propagation(a, bCached, bUncached)
  rows.push(['ack at A → event delivered at B', ...summary(prop.event), ''])
  rows.push(['ack at A → first deny at B (cache on)', ...summary(prop.denyCached), ''])
  rows.push(['ack at A → first deny at B (cache off)', ...summary(prop.denyUncached), ''])

  print(rows)
} finally {
  await Promise.all(opened.map((s) => s.close()))
  await redis.stop()
}

function entry(claim, value) {
  const t = nowS()
  return { claim, value, issuedBeforeS: t, reason: 'bench', by: 'bench', createdAtS: t, expiresAtS: t + 3630 }
}

async function timeCalls(store, ref) {
  for (let i = 0; i < WARMUP; i++) await store.isRevoked(ref)
  const samples = new Float64Array(CALLS)
  for (let i = 0; i < CALLS; i++) {
    const start = nowNs()
    await store.isRevoked(ref)
    samples[i] = ms(nowNs() - start)
  }
  return samples
}

async function throughput(store, ref, forMs = 500) {
  let done = 0
  const endAt = performance.now() + forMs
  const worker = async () => {
    while (performance.now() < endAt) {
      await store.isRevoked(ref)
      done++
    }
  }
  await Promise.all(Array.from({ length: CONCURRENCY }, worker))
  return `${Math.round(done / (forMs / 1000)).toLocaleString('en-US')}/s`
}

async function timePuts(store) {
  const samples = new Float64Array(Math.min(TRIALS * 4, 2000))
  for (let i = 0; i < samples.length; i++) {
    const start = nowNs()
    await store.put(entry('jti', `put-${i}`))
    samples[i] = ms(nowNs() - start)
  }
  return samples
}

async function propagation(a, bCached, bUncached) {
  const event = []
  const denyCached = []
  const denyUncached = []
  for (let i = 0; i < TRIALS; i++) {
    const value = `t-${i}`
    const ref = { iss: ISS, iatS: nowS(), values: [['jti', value]] }
    await bCached.isRevoked(ref) // a cached "not revoked" the event must invalidate
    let heardAt
    const heard = new Promise((resolve) => {
      const off = bCached.subscribe((e) => {
        if (e.entry.value === value) {
          heardAt = nowNs()
          off()
          resolve()
        }
      })
    })
    await a.put(entry('jti', value))
    const ackAt = nowNs()
    const [cachedMs, uncachedMs] = await Promise.all([firstDeny(bCached, ref, ackAt), firstDeny(bUncached, ref, ackAt)])
    denyCached.push(cachedMs)
    denyUncached.push(uncachedMs)
    await heard
    // Delivery can beat the acknowledgement to this event loop: then the event "took" 0 ms.
    event.push(Math.max(0, ms(heardAt - ackAt)))
  }
  return { event: Float64Array.from(event), denyCached: Float64Array.from(denyCached), denyUncached: Float64Array.from(denyUncached) }
}

// Checks back to back until the first deny. A cached answer needs no I/O, so each turn yields to
// the event loop (as a proxy serving requests does); otherwise the event could never be read.
async function firstDeny(store, ref, sinceNs) {
  while (!(await store.isRevoked(ref))) await new Promise(setImmediate)
  return ms(nowNs() - sinceNs)
}

function summary(samples) {
  const sorted = Float64Array.from(samples).sort()
  const at = (q) => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]
  const fmt = (v) => (v < 0.01 ? `${(v * 1000).toFixed(2)} µs` : v < 1 ? `${(v * 1000).toFixed(0)} µs` : `${v.toFixed(2)} ms`)
  return [String(sorted.length), fmt(at(0.5)), fmt(at(0.99)), fmt(sorted[sorted.length - 1])]
}

function print(rows) {
  const head = ['measure', 'n', 'p50', 'p99', 'max', `checks/s (${CONCURRENCY} in flight)`]
  const all = [head, ...rows]
  const widths = head.map((_, i) => Math.max(...all.map((r) => String(r[i]).length)))
  const line = (r) => `| ${r.map((c, i) => String(c).padEnd(widths[i])).join(' | ')} |`
  const cpu = os.cpus()[0]?.model ?? 'unknown CPU'
  console.log(
    `revocation bench — ${new Date().toISOString()} — Node ${process.version} — ${cpu} × ${os.cpus().length} — redis-server on loopback\n`,
  )
  console.log(line(head))
  console.log(`|${widths.map((w) => '-'.repeat(w + 2)).join('|')}|`)
  for (const r of rows) console.log(line(r))
}

async function until(check, withinMs = 10_000) {
  const deadline = Date.now() + withinMs
  while (!check()) {
    if (Date.now() > deadline) throw new Error('stores did not get ready')
    await sleep(10)
  }
}

async function startRedis() {
  const port = await new Promise((resolve, reject) => {
    const s = net.createServer().once('error', reject)
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address()
      s.close(() => resolve(port))
    })
  })
  const dir = mkdtempSync(join(os.tmpdir(), 'lapse-bench-redis-'))
  const child = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', dir], {
    stdio: 'ignore',
  })
  const stop = async () => {
    if (child.exitCode === null) {
      const gone = new Promise((resolve) => child.once('exit', resolve))
      child.kill('SIGTERM')
      await gone
    }
    rmSync(dir, { recursive: true, force: true })
  }
  for (let i = 0; i < 250; i++) {
    if (await answersPing(port)) return { url: `redis://127.0.0.1:${port}`, stop }
    await sleep(20)
  }
  await stop()
  throw new Error('redis-server did not start')
}

function answersPing(port) {
  return new Promise((resolve) => {
    const socket = net.connect({ host: '127.0.0.1', port })
    const done = (ok) => {
      socket.destroy()
      resolve(ok)
    }
    socket.once('error', () => done(false))
    socket.once('connect', () => socket.write('PING\r\n'))
    socket.once('data', () => done(true))
  })
}
