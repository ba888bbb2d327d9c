// Bodies stream through Lapse both ways: a 100 MB upload and a large download pass without
// being buffered. Lapse runs in this process, so its memory is this process's RSS.
import { request as httpRequest } from 'node:http'
import { Readable } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import { setFlagsFromString } from 'node:v8'
import { runInNewContext } from 'node:vm'
import t, { type Test } from 'tap'
import { manualClock } from '../../src/core/clock.js'
import { runApp } from '../fixtures/app.js'
import { testKeys } from '../fixtures/keys.js'
import { startUpstream } from '../fixtures/upstream.js'

const T0_MS = Date.parse('2030-01-01T00:00:00Z')
const MB = 1024 * 1024
const TOTAL = 100 * MB
const CHUNK = Buffer.alloc(64 * 1024, 'x')
// Buffering 100 MB would add at least 100 MB; streaming stays near a few socket buffers.
const MAX_RSS_GROWTH = 60 * MB

// Chunks that were already passed on are garbage, yet count in RSS until V8 collects them; a
// collection before each sample makes RSS show what is held, not what is waiting to be freed.
setFlagsFromString('--expose-gc')
const gc = runInNewContext('gc') as () => void

/** Samples RSS while the transfer runs; returns the peak growth over the starting point. */
function watchRss() {
  gc()
  const base = process.memoryUsage().rss
  let peak = base
  const sample = () => {
    gc()
    peak = Math.max(peak, process.memoryUsage().rss)
  }
  const timer = setInterval(sample, 50)
  return () => {
    clearInterval(timer)
    sample()
    return peak - base
  }
}

t.test('100 MB streamed upload reaches the upstream whole and is not buffered by Lapse', async (t) => {
  let upstreamBytes = 0
  let clientSentAtFirstUpstreamByte = -1
  let clientSent = 0
  const upstream = await startUpstream((req, res) => {
    req.on('data', (chunk: Buffer) => {
      if (upstreamBytes === 0) clientSentAtFirstUpstreamByte = clientSent
      upstreamBytes += chunk.length
    })
    req.on('end', () => res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ received: upstreamBytes })))
  })
  t.teardown(() => upstream.close())
  const lapse = await runApp(t, {
    upstream,
    clock: manualClock(T0_MS),
    routes: [{ path: '/upload', methods: ['PUT'], scopes: ['files:write'] }],
  })
  const token = await (await testKeys()).mint({ scope: 'files:write', iat: T0_MS / 1000, exp: T0_MS / 1000 + 300 }, { nowS: T0_MS / 1000 })

  async function* body() {
    for (let sent = 0; sent < TOTAL; sent += CHUNK.length) {
      clientSent += CHUNK.length
      yield CHUNK
    }
  }
  const stopWatch = watchRss()
  const answer = await new Promise<{ status: number; json: unknown }>((resolve, reject) => {
    const url = new URL(`${lapse.url}/upload`)
    const req = httpRequest({
      host: url.hostname,
      port: url.port,
      path: url.pathname,
      method: 'PUT',
      agent: false,
      headers: { authorization: `Bearer ${token}`, 'content-type': 'application/octet-stream', 'transfer-encoding': 'chunked' },
    })
    req.on('response', (res) => {
      const chunks: Buffer[] = []
      res.on('data', (c: Buffer) => chunks.push(c))
      res.on('end', () => resolve({ status: res.statusCode ?? 0, json: JSON.parse(Buffer.concat(chunks).toString('utf8')) }))
    })
    req.on('error', reject)
    pipeline(Readable.from(body()), req).catch(reject)
  })
  const growth = stopWatch()
  t.equal(answer.status, 200)
  t.same(answer.json, { received: TOTAL }, 'every byte arrived')
  t.equal(upstreamBytes, TOTAL)
  t.ok(
    clientSentAtFirstUpstreamByte >= 0 && clientSentAtFirstUpstreamByte < 16 * MB,
    `the upstream got bytes while the client was still sending (${Math.round(clientSentAtFirstUpstreamByte / MB)} MB sent)`,
  )
  t.ok(growth < MAX_RSS_GROWTH, `RSS grew by ${Math.round(growth / MB)} MB, under ${MAX_RSS_GROWTH / MB} MB`)
})

t.test('large streamed download reaches the client whole and is not buffered by Lapse', async (t) => {
  let upstreamSent = 0
  const upstream = await startUpstream((req, res) => {
    req.resume()
    res.writeHead(200, { 'content-type': 'application/octet-stream' })
    const out = Readable.from(
      (async function* () {
        for (; upstreamSent < TOTAL; upstreamSent += CHUNK.length) yield CHUNK
      })(),
    )
    out.pipe(res)
  })
  t.teardown(() => upstream.close())
  const lapse = await runApp(t, { upstream, clock: manualClock(T0_MS), routes: [{ path: '/download', scopes: ['files:read'] }] })
  const token = await (await testKeys()).mint({ scope: 'files:read' }, { nowS: T0_MS / 1000 })

  const stopWatch = watchRss()
  let received = 0
  let upstreamSentAtFirstClientByte = -1
  const status = await new Promise<number>((resolve, reject) => {
    const url = new URL(`${lapse.url}/download`)
    const req = httpRequest({
      host: url.hostname,
      port: url.port,
      path: url.pathname,
      agent: false,
      headers: { authorization: `Bearer ${token}` },
    })
    req.on('response', (res) => {
      res.on('data', (c: Buffer) => {
        if (received === 0) upstreamSentAtFirstClientByte = upstreamSent
        received += c.length
      })
      res.on('end', () => resolve(res.statusCode ?? 0))
      res.on('error', reject)
    })
    req.on('error', reject)
    req.end()
  })
  const growth = stopWatch()
  t.equal(status, 200)
  t.equal(received, TOTAL, 'every byte arrived')
  t.ok(
    upstreamSentAtFirstClientByte >= 0 && upstreamSentAtFirstClientByte < 16 * MB,
    `the client got bytes while the upstream was still sending (${Math.round(upstreamSentAtFirstClientByte / MB)} MB sent)`,
  )
  t.ok(growth < MAX_RSS_GROWTH, `RSS grew by ${Math.round(growth / MB)} MB, under ${MAX_RSS_GROWTH / MB} MB`)
})

/** An upstream that streams `total` bytes as fast as its client lets it, counting what it sent. */
async function endlessishUpstream(t: Test, total: number) {
  const state = { sent: 0, closedEarly: false }
  const upstream = await startUpstream((req, res) => {
    req.resume()
    res.writeHead(200, { 'content-type': 'application/octet-stream' })
    res.once('close', () => {
      if (!res.writableFinished) state.closedEarly = true
    })
    const out = Readable.from(
      (async function* () {
        for (; state.sent < total; state.sent += CHUNK.length) yield CHUNK
      })(),
    )
    out.pipe(res)
  })
  t.teardown(() => upstream.close())
  return { upstream, state }
}

t.test('a client that stops reading holds the upstream back: backpressure reaches the upstream, nothing piles up in Lapse', async (t) => {
  const { upstream, state } = await endlessishUpstream(t, TOTAL)
  const lapse = await runApp(t, { upstream, clock: manualClock(T0_MS), routes: [{ path: '/download', scopes: ['files:read'] }] })
  const token = await (await testKeys()).mint({ scope: 'files:read' }, { nowS: T0_MS / 1000 })

  const stopWatch = watchRss()
  const url = new URL(`${lapse.url}/download`)
  const req = httpRequest({
    host: url.hostname,
    port: url.port,
    path: url.pathname,
    agent: false,
    headers: { authorization: `Bearer ${token}` },
  })
  const res = await new Promise<import('node:http').IncomingMessage>((resolve, reject) => {
    req.on('response', resolve)
    req.on('error', reject)
    req.end()
  })
  res.pause()
  // Give the upstream ample time to push everything if nothing held it back.
  await new Promise((r) => setTimeout(r, 1500))
  const sentWhilePaused = state.sent
  t.ok(
    sentWhilePaused < 24 * MB,
    `while the client reads nothing the upstream has sent ${Math.round(sentWhilePaused / MB)} MB of ${TOTAL / MB} (socket buffers only)`,
  )

  let received = 0
  res.on('data', (c: Buffer) => {
    received += c.length
  })
  res.resume()
  await new Promise((resolve) => res.once('end', resolve))
  const growth = stopWatch()
  t.equal(received, TOTAL, 'after resuming, every byte arrives')
  t.ok(growth < MAX_RSS_GROWTH, `RSS grew by ${Math.round(growth / MB)} MB, under ${MAX_RSS_GROWTH / MB} MB`)
})

t.test('a client that hangs up mid-download stops the upstream request', async (t) => {
  const { upstream, state } = await endlessishUpstream(t, TOTAL)
  const lapse = await runApp(t, { upstream, clock: manualClock(T0_MS), routes: [{ path: '/download', scopes: ['files:read'] }] })
  const token = await (await testKeys()).mint({ scope: 'files:read' }, { nowS: T0_MS / 1000 })
  const url = new URL(`${lapse.url}/download`)
  const req = httpRequest({
    host: url.hostname,
    port: url.port,
    path: url.pathname,
    agent: false,
    headers: { authorization: `Bearer ${token}` },
  })
  await new Promise<void>((resolve, reject) => {
    req.on('response', (res) => {
      let received = 0
      res.on('data', (c: Buffer) => {
        received += c.length
        if (received >= 2 * MB) {
          req.destroy()
          resolve()
        }
      })
    })
    req.on('error', () => {})
    req.once('error', reject)
    req.end()
  })
  const deadline = Date.now() + 3000
  while (!state.closedEarly && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20))
  t.ok(state.closedEarly, 'the upstream response was closed before it finished')
  t.ok(state.sent < TOTAL, `the upstream stopped after ${Math.round(state.sent / MB)} MB`)
})
