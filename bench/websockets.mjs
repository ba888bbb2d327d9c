// Long-lived connections at scale: thousands of WebSockets open through Lapse (dist/), then one
// revocation cuts a share of them and expiry cuts the rest. Loopback only, bounded in time.
//
//   npm run build && node bench/websockets.mjs                        # 9,000 connections, half revoked
//   node bench/websockets.mjs --connections 20000 --affected 0.25     # with ulimit -n ≥ 40512
//   node bench/websockets.mjs --help
//
// Measures, each against a floor run in the same session (a plain http-proxy WebSocket pass-through,
// no auth, that closes its connections by writing a close frame to each client at once):
// - registry alone (in process, no sockets): track / untrack / event cost at 50,000 entries;
// - memory per open WebSocket in the Lapse process: (RSS after - RSS before) / n, after gc;
// - revocation → close: from the admin POST to each affected client's `close` (1008), p50/p99/max;
// - expiry → close: from each token's exp (LAPSE_CLOCK_SKEW=0, system clock) to its client's `close`.
// LAPSE_BENCH_PROF=<dir> also writes a CPU profile of Lapse across the cuts and a heap snapshot
// with every connection open (for lib/profile-summary.mjs and Chrome DevTools).
// Processes: this one (clients), Lapse (`--role proxy`) or the floor (`--role floor`), a ws echo
// upstream (`--role upstream`).
import { fork, spawnSync } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync, openSync, writeFileSync } from 'node:fs'
import { tmpdir, cpus, loadavg } from 'node:os'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import { performance } from 'node:perf_hooks'
import v8 from 'node:v8'
import vm from 'node:vm'
import WebSocket, { WebSocketServer } from 'ws'
import { makeKeys, mintToken } from './lib/keys.mjs'

v8.setFlagsFromString('--expose-gc')
const gc = vm.runInNewContext('gc')
const here = dirname(fileURLToPath(import.meta.url))
const root = join(here, '..')
const ISS = 'https://issuer.bench'
const AUD = 'bench-api'
const ADMIN_TOKEN = 'bench-admin-token-0123456789'

const { values: opts } = parseArgs({
  options: {
    role: { type: 'string', default: 'main' },
    connections: { type: 'string', default: '9000' },
    affected: { type: 'string', default: '0.5' },
    'expiry-s': { type: 'string', default: '0' },
    concurrency: { type: 'string', default: '200' },
    'registry-n': { type: 'string', default: '50000' },
    'timeout-s': { type: 'string', default: '300' },
    help: { type: 'boolean', default: false },
  },
})

if (opts.help) {
  console.log(`node bench/websockets.mjs [options]
  --connections N   WebSockets to hold open (default 9000; Lapse needs 2N + 512 open files)
  --affected F      share of them whose subject is revoked (default 0.5)
  --expiry-s S      the others' tokens expire S seconds after opening ends (default 0: auto, ≥ 20 s)
  --concurrency C   handshakes in flight while opening (default 200)
  --registry-n N    entries for the in-process registry measurement (default 50000)
  --timeout-s S     the whole run is killed after S seconds (default 300)`)
  process.exit(0)
}

// --- child roles ----------------------------------------------------------------------------------

async function runUpstream() {
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0, perMessageDeflate: false, backlog: 4096 })
  wss.on('connection', (ws) => {
    ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }))
    ws.on('error', () => {})
  })
  await new Promise((r) => wss.once('listening', r))
  process.send({ ready: true, port: wss.address().port })
}

/** The floor: what any Node proxy pays to hold and to close WebSockets, without Lapse. */
async function runFloor() {
  const { Agent, createServer } = await import('node:http')
  const { default: httpProxy } = await import('http-proxy')
  const agent = new Agent({ keepAlive: true, maxSockets: 256 })
  const proxy = httpProxy.createProxyServer({ target: process.env.FLOOR_UPSTREAM, agent, ws: true, xfwd: false })
  proxy.on('error', (_err, _req, socket) => socket.destroy?.())
  const open = new Map() // client socket → upstream socket
  proxy.on('proxyReqWs', (proxyReq, _req, socket) => proxyReq.once('upgrade', (_res, upstream) => open.set(socket, upstream)))
  const server = createServer((_req, res) => res.writeHead(404).end())
  server.on('upgrade', (req, socket, head) => {
    socket.once('close', () => open.delete(socket))
    proxy.ws(req, socket, head)
  })
  await new Promise((r) => server.listen(0, '127.0.0.1', r))
  // RFC 6455 close frame: 1008 "cut"; the same to every client, the upstream side just ended.
  const frame = Buffer.from([0x88, 5, 0x03, 0xf0, 0x63, 0x75, 0x74])
  process.on('message', async (msg) => {
    if (msg === 'cut') {
      for (const [client, upstream] of open) {
        client.unpipe()
        upstream.unpipe()
        client.end(frame)
        upstream.end()
        client.resume()
      }
      process.send({ cut: true })
    }
    if (msg === 'memory') {
      for (let i = 0; i < 3; i++) gc()
      await new Promise((r) => setTimeout(r, 200))
      gc()
      process.send({ memory: process.memoryUsage(), tracked: open.size })
    }
  })
  process.send({ ready: true, proxy: server.address().port })
}

async function runProxy() {
  const { startProxy } = await import(join(root, 'dist', 'main.js'))
  const running = await startProxy(process.env)
  // LAPSE_BENCH_PROF=<dir>: a CPU profile of Lapse from the revocation to the end of the expiry.
  let session
  process.on('message', async (msg) => {
    if (msg === 'profile' && process.env.LAPSE_BENCH_PROF) {
      const { Session } = await import('node:inspector')
      session = new Session()
      session.connect()
      session.post('Profiler.enable', () => session.post('Profiler.start', () => process.send({ profile: true })))
      return
    }
    if (msg === 'profile-stop' && session) {
      session.post('Profiler.stop', (_err, { profile }) => {
        writeFileSync(join(process.env.LAPSE_BENCH_PROF, 'lapse-ws.cpuprofile'), JSON.stringify(profile))
        process.send({ 'profile-stop': true })
      })
      return
    }
    if (msg === 'snapshot' && process.env.LAPSE_BENCH_PROF) {
      const { writeHeapSnapshot } = await import('node:v8')
      process.send({ snapshot: writeHeapSnapshot(join(process.env.LAPSE_BENCH_PROF, `lapse-${Date.now()}.heapsnapshot`)) })
      return
    }
    if (msg === 'memory') {
      for (let i = 0; i < 3; i++) gc()
      await new Promise((r) => setTimeout(r, 200))
      gc()
      process.send({ memory: process.memoryUsage(), tracked: running.deps.connections?.size })
    }
  })
  process.on('SIGTERM', async () => {
    await running.close()
    process.exit(0)
  })
  process.send({ ready: true, proxy: running.addresses.proxy.port, admin: running.addresses.admin.port })
}

// --- main ---------------------------------------------------------------------------------------

function openFilesLimit() {
  const m = /^Max open files\s+(\d+|unlimited)\s+(\d+|unlimited)/m.exec(readFileSync('/proc/self/limits', 'utf8'))
  return m ? { soft: Number(m[1]) || Infinity, hard: Number(m[2]) || Infinity } : { soft: Infinity, hard: Infinity }
}

/**
 * Lapse holds two descriptors per WebSocket (client and upstream side). Re-runs this script under a
 * raised soft `ulimit -n` when the hard limit allows; otherwise says how many connections fit.
 */
function ensureOpenFiles(n) {
  const need = 2 * n + 512
  const { soft, hard } = openFilesLimit()
  if (soft >= need) return
  if (hard < need || process.env.LAPSE_BENCH_REEXEC) {
    console.error(`! ${n} connections need ${need} open files in the Lapse process; the limit is ${soft} (hard ${hard}).`)
    console.error(`  Raise it (ulimit -n ${need}, as a user allowed to) or use --connections ${Math.floor((hard - 512) / 2)}`)
    process.exit(2)
  }
  console.error(`# raising the open files limit from ${soft} to ${need} and re-running`)
  const args = process.argv
    .slice(1)
    .map((a) => `'${a.replace(/'/g, `'\\''`)}'`)
    .join(' ')
  const res = spawnSync('sh', ['-c', `ulimit -n ${need} && exec '${process.execPath}' ${args}`], {
    stdio: 'inherit',
    env: { ...process.env, LAPSE_BENCH_REEXEC: '1' },
  })
  process.exit(res.status ?? 1)
}

function spawnRole(role, { env, execArgv = [], logFile }) {
  const out = openSync(logFile, 'a')
  const child = fork(fileURLToPath(import.meta.url), ['--role', role], { env, execArgv, stdio: ['ignore', out, out, 'ipc'] })
  const ready = new Promise((resolve, reject) => {
    child.once('message', resolve)
    child.once('exit', (code) => reject(new Error(`${role} exited ${code} before ready (see ${logFile})`)))
  })
  return { child, ready }
}

const ask = (child, what) =>
  new Promise((resolve) => {
    const onMessage = (msg) => {
      if (msg && typeof msg === 'object' && what in msg) {
        child.off('message', onMessage)
        resolve(msg)
      }
    }
    child.on('message', onMessage)
    child.send(what)
  })

function quantiles(values) {
  const s = [...values].sort((a, b) => a - b)
  const q = (p) => (s.length ? s[Math.min(s.length - 1, Math.ceil(p * s.length) - 1)] : NaN)
  return { n: s.length, p50: q(0.5), p90: q(0.9), p99: q(0.99), max: s.at(-1) ?? NaN, min: s[0] ?? NaN }
}
const ms = (x) => (Number.isFinite(x) ? `${x.toFixed(1)} ms` : 'n/a')
const log = (...a) => console.log(...a)

/** Opens one client; resolves once open, with how and when it closed. */
function openClient(url, token) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, { headers: { authorization: `Bearer ${token}` }, perMessageDeflate: false, handshakeTimeout: 30_000 })
    const client = { ws, closed: undefined, closedAt: undefined }
    ws.on('error', () => {})
    ws.once('close', (code, reason) => {
      client.closed = { code, reason: reason.toString() }
      client.closedAt = performance.now()
      client.closedWall = Date.now()
      client.onClose?.()
    })
    ws.once('open', () => resolve(client))
    ws.once('unexpected-response', (_req, res) => reject(new Error(`upgrade answered ${res.statusCode}`)))
    ws.once('close', () => reject(new Error('closed before open')))
  })
}

async function openAll(url, tokens, concurrency) {
  const clients = new Array(tokens.length)
  let next = 0
  let failed = 0
  const worker = async () => {
    while (next < tokens.length) {
      const i = next++
      try {
        clients[i] = await openClient(url, tokens[i])
      } catch (err) {
        failed++
        if (failed <= 3) log(`! open ${i}: ${err.message}`)
      }
    }
  }
  await Promise.all(Array.from({ length: concurrency }, worker))
  return { clients, failed }
}

const waitAll = (clients, timeoutMs) =>
  new Promise((resolve) => {
    let left = clients.filter((c) => !c.closed).length
    if (left === 0) return resolve(true)
    const timer = setTimeout(() => resolve(false), timeoutMs)
    for (const c of clients) {
      if (c.closed) continue
      c.onClose = () => {
        if (--left === 0) {
          clearTimeout(timer)
          resolve(true)
        }
      }
    }
  })

async function echoSample(clients, count) {
  const open = clients.filter((c) => c && !c.closed)
  const sample = Array.from({ length: Math.min(count, open.length) }, (_, i) => open[Math.floor((i * open.length) / count)])
  const answers = await Promise.all(
    sample.map(
      (c) =>
        new Promise((resolve) => {
          const timer = setTimeout(() => resolve(false), 5000)
          c.ws.once('message', (d) => {
            clearTimeout(timer)
            resolve(d.toString() === 'ping')
          })
          c.ws.send('ping')
        }),
    ),
  )
  return { asked: sample.length, echoed: answers.filter(Boolean).length }
}

async function registryAlone(n) {
  const { createConnectionRegistry } = await import(join(root, 'dist', 'connections', 'connections.js'))
  const { createMemoryStore } = await import(join(root, 'dist', 'revocation', 'memory-store.js'))
  const now = Date.now()
  const nowS = Math.floor(now / 1000)
  const clock = { now: () => now }
  const store = createMemoryStore({ clock })
  const silent = { info() {}, warn() {}, error() {}, debug() {} }
  const registry = createConnectionRegistry({
    clock,
    revocations: store,
    log: silent,
    revocableClaims: ['jti', 'sub', 'client_id', 'sid'],
    clockSkewS: 30,
    recheckIntervalS: 3600,
  })
  const exchanges = Array.from({ length: n }, (_, i) => {
    const claims = {
      iss: ISS,
      sub: `user-${i % 1000}`,
      client_id: `client-${i % 50}`,
      jti: `jti-${i}-${Math.random()}`,
      iat: nowS,
      exp: nowS + 60 + (i % 3600),
    }
    return {
      identity: {
        iss: ISS,
        sub: claims.sub,
        clientId: claims.client_id,
        jti: claims.jti,
        iatS: nowS,
        expS: claims.exp,
        scopes: new Set(),
        claims,
        memo: {},
      },
      kind: 'websocket',
      cutAtExpiry: true,
      trace: { startedMs: now },
      close() {},
    }
  })
  gc()
  const heap0 = process.memoryUsage().heapUsed
  let t = performance.now()
  const untracks = exchanges.map((e) => registry.track(e))
  const trackUs = ((performance.now() - t) * 1000) / n
  gc()
  const heapPerEntry = (process.memoryUsage().heapUsed - heap0) / n
  t = performance.now()
  await store.put({
    claim: 'sub',
    value: 'user-7',
    issuedBeforeS: nowS,
    reason: 'bench',
    by: 'bench',
    createdAtS: nowS,
    expiresAtS: nowS + 7200,
  })
  const eventMs = performance.now() - t
  t = performance.now()
  for (const u of untracks) u()
  const untrackUs = ((performance.now() - t) * 1000) / n
  registry.close()
  return { n, trackUs, untrackUs, eventMs, eventAffected: n / 1000, heapPerEntry }
}

/** The same opening, memory reading and mass close through the floor proxy. */
async function floorPhase({ n, keys, upstreamPort, dir, affected, children }) {
  const floor = spawnRole('floor', {
    env: { ...process.env, FLOOR_UPSTREAM: `http://127.0.0.1:${upstreamPort}` },
    execArgv: ['--expose-gc'],
    logFile: join(dir, 'floor.log'),
  })
  children.push(floor.child)
  const { proxy: port } = await floor.ready
  const url = `ws://127.0.0.1:${port}/ws/feed`
  const token = await mintToken(keys, 'ES256', { iss: ISS, aud: AUD, ttlS: 600, sub: 'floor' })
  const warm = await openAll(url, Array(200).fill(token), 50)
  for (const c of warm.clients) c?.ws.close()
  await waitAll(warm.clients.filter(Boolean), 5000)
  const base = await ask(floor.child, 'memory')
  const opened = await openAll(url, Array(affected).fill(token), Number(opts.concurrency))
  const rest = await openAll(url, Array(n - affected).fill(token), Number(opts.concurrency))
  const full = await ask(floor.child, 'memory')
  const clients = [...opened.clients, ...rest.clients].filter(Boolean)
  const perConnKiB = (full.memory.rss - base.memory.rss) / clients.length / 1024
  const heapPerConnKiB = (full.memory.heapUsed - base.memory.heapUsed) / clients.length / 1024
  // The floor cuts all n at once; Lapse cuts `affected` on a revocation. Compare like with like:
  // close only the first `affected` by terminating the others locally first.
  for (const c of rest.clients) c?.ws.terminate()
  await waitAll(rest.clients.filter(Boolean), 10_000)
  const victims = opened.clients.filter(Boolean)
  const t = performance.now()
  await ask(floor.child, 'cut')
  await waitAll(victims, 60_000)
  const close = quantiles(victims.filter((c) => c.closed).map((c) => c.closedAt - t))
  log(
    `floor (plain http-proxy, no auth): ${clients.length} open, ${perConnKiB.toFixed(1)} KiB RSS per connection, ${heapPerConnKiB.toFixed(1)} KiB heap; closing ${victims.length} at once → client close p50 ${ms(close.p50)}, p99 ${ms(close.p99)}, max ${ms(close.max)}`,
  )
  floor.child.kill('SIGTERM')
  return { connections: clients.length, memoryPerConnectionKiB: perConnKiB, heapPerConnectionKiB: heapPerConnKiB, closeMs: close }
}

async function main() {
  const n = Number(opts.connections)
  const affectedShare = Number(opts.affected)
  ensureOpenFiles(n)
  const hardStop = setTimeout(() => {
    log('! timeout: the run took longer than --timeout-s')
    process.exit(3)
  }, Number(opts['timeout-s']) * 1000)
  hardStop.unref()

  const dir = mkdtempSync(join(tmpdir(), 'lapse-ws-bench-'))
  const children = []
  const cleanup = () => {
    for (const c of children) if (c.exitCode === null) c.kill('SIGKILL')
  }
  process.on('exit', cleanup)
  process.on('SIGINT', () => process.exit(130))

  const node = process.version
  const cpu = cpus()[0]?.model ?? 'unknown'
  let commit = 'unknown'
  try {
    commit = spawnSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: root, encoding: 'utf8' }).stdout.trim() || commit
  } catch {}
  log(
    `# Lapse long-lived connections bench — ${new Date().toISOString()} — commit ${commit}, Node ${node}, ${cpus().length} × ${cpu}, load average ${loadavg()[0].toFixed(1)}`,
  )

  const reg = await registryAlone(Number(opts['registry-n']))
  log(
    `registry alone, ${reg.n} entries: track ${reg.trackUs.toFixed(2)} µs, untrack ${reg.untrackUs.toFixed(2)} µs, one event cutting ${reg.eventAffected}: ${reg.eventMs.toFixed(2)} ms, ~${Math.round(reg.heapPerEntry)} B heap/entry`,
  )

  const keys = await makeKeys(dir)
  const upstream = spawnRole('upstream', { env: process.env, logFile: join(dir, 'upstream.log') })
  children.push(upstream.child)
  const { port: upstreamPort } = await upstream.ready
  const floorResult = await floorPhase({ n, keys, upstreamPort, dir, affected: Math.round(n * affectedShare), children })

  const proxyEnv = {
    ...process.env,
    LAPSE_LISTEN: '127.0.0.1:0',
    LAPSE_ADMIN_LISTEN: '127.0.0.1:0',
    LAPSE_UPSTREAM: `http://127.0.0.1:${upstreamPort}`,
    LAPSE_ISSUER: ISS,
    LAPSE_AUDIENCE: AUD,
    LAPSE_JWKS_FILE: keys.jwksFile,
    LAPSE_ROUTES: JSON.stringify([{ path: '/ws/**', scopes: ['bench:read'] }]),
    LAPSE_ADMIN_TOKEN: ADMIN_TOKEN,
    LAPSE_CLOCK_SKEW: '0',
    LAPSE_TOKEN_CACHE_SIZE: '0',
    LAPSE_CLIENT_IDLE_TIMEOUT: '0',
    // No collector on loopback: spans would only queue and be dropped (the HTTP bench's row 3 does the same).
    OTEL_SDK_DISABLED: process.env.OTEL_SDK_DISABLED ?? 'true',
  }
  const proxy = spawnRole('proxy', { env: proxyEnv, execArgv: ['--expose-gc'], logFile: join(dir, 'lapse.log') })
  children.push(proxy.child)
  const ports = await proxy.ready
  const url = `ws://127.0.0.1:${ports.proxy}/ws/feed`

  // Warm up code paths and pools, then the baseline.
  const warmTokens = await Promise.all(
    Array.from({ length: 200 }, (_, i) => mintToken(keys, 'ES256', { iss: ISS, aud: AUD, ttlS: 600, sub: `warm-${i}` })),
  )
  const warm = await openAll(url, warmTokens, 50)
  for (const c of warm.clients) c?.ws.close()
  await waitAll(warm.clients.filter(Boolean), 5000)
  const base = await ask(proxy.child, 'memory')

  const affected = Math.round(n * affectedShare)
  const expiryS = Number(opts['expiry-s']) || Math.max(20, Math.ceil(n / 500))
  log(`minting ${n} ES256 tokens (${affected} of subject "victim", the others expiring ${expiryS} s after opening ends)…`)
  // The others' exp must land after opening and the revocation: estimated opening time + expiryS.
  const openEstimateS = Math.ceil(n / 400) + 5
  const tokens = []
  for (let i = 0; i < n; i += 256) {
    const batch = Array.from({ length: Math.min(256, n - i) }, (_, j) => {
      const k = i + j
      return k < affected
        ? mintToken(keys, 'ES256', { iss: ISS, aud: AUD, ttlS: 3000, sub: 'victim' })
        : mintToken(keys, 'ES256', { iss: ISS, aud: AUD, ttlS: openEstimateS + expiryS, sub: `user-${k}` })
    })
    tokens.push(...(await Promise.all(batch)))
  }
  const expOf = (token) => JSON.parse(Buffer.from(token.split('.')[1], 'base64url').toString()).exp

  let t = performance.now()
  const opened = await openAll(url, tokens, Number(opts.concurrency))
  const openS = (performance.now() - t) / 1000
  const clients = opened.clients.filter(Boolean)
  log(`opened ${clients.length}/${n} in ${openS.toFixed(1)} s (${Math.round(clients.length / openS)}/s), ${opened.failed} failed`)
  const full = await ask(proxy.child, 'memory')
  const perConn = (k) => (full.memory[k] - base.memory[k]) / clients.length
  log(
    `Lapse memory with ${full.tracked} tracked: RSS ${(full.memory.rss / 2 ** 20).toFixed(0)} MiB (baseline ${(base.memory.rss / 2 ** 20).toFixed(0)} MiB) → ${(perConn('rss') / 1024).toFixed(1)} KiB RSS per connection, ${(perConn('heapUsed') / 1024).toFixed(1)} KiB heap, ${(perConn('external') / 1024).toFixed(1)} KiB external`,
  )
  if (process.env.LAPSE_BENCH_PROF) log(`heap snapshot: ${(await ask(proxy.child, 'snapshot')).snapshot}`)
  const before = await echoSample(clients, 200)
  log(`echo sample before the revocation: ${before.echoed}/${before.asked}`)

  if (process.env.LAPSE_BENCH_PROF) await ask(proxy.child, 'profile')
  // Revocation: one admin call, every connection of subject "victim" is cut.
  const victims = clients.filter((_c, i) => opened.clients[i] && i < affected)
  const others = clients.filter((c) => !victims.includes(c))
  const othersSet = new Set(others)
  t = performance.now()
  const res = await fetch(`http://127.0.0.1:${ports.admin}/v1/revocations`, {
    method: 'POST',
    headers: { authorization: `Bearer ${ADMIN_TOKEN}`, 'content-type': 'application/json' },
    body: JSON.stringify({ claim: 'sub', value: 'victim', reason: 'bench' }),
  })
  const ackMs = performance.now() - t
  await res.arrayBuffer()
  const allCut = await waitAll(victims, 60_000)
  const revokeLat = quantiles(victims.filter((c) => c.closed).map((c) => c.closedAt - t))
  const codes = victims.filter((c) => c.closed?.code === 1008).length
  log(
    `revocation (HTTP ${res.status}, acknowledged in ${ms(ackMs)}): ${revokeLat.n}/${victims.length} closed${allCut ? '' : ' (timed out)'}, ${codes} with 1008; POST → close p50 ${ms(revokeLat.p50)}, p90 ${ms(revokeLat.p90)}, p99 ${ms(revokeLat.p99)}, max ${ms(revokeLat.max)}`,
  )
  const wrongly = others.filter((c) => c.closed).length
  const after = await echoSample(others, 200)
  log(`others: ${wrongly} closed by mistake; echo sample after the revocation: ${after.echoed}/${after.asked}`)

  // Expiry: the others' tokens lapse at their own exp (skew 0); lateness = close - exp.
  const lastExp = Math.max(...others.map((c) => expOf(tokens[opened.clients.indexOf(c)])))
  const waitMs = lastExp * 1000 - Date.now() + 5000
  log(`waiting ${(waitMs / 1000).toFixed(0)} s for the others' tokens to expire…`)
  const allExpired = await waitAll(others, Math.max(waitMs, 5000))
  const lateness = quantiles(others.filter((c) => c.closed).map((c) => c.closedWall - expOf(tokens[opened.clients.indexOf(c)]) * 1000))
  const early = others.filter((c) => c.closed && c.closedWall < expOf(tokens[opened.clients.indexOf(c)]) * 1000).length
  log(
    `expiry: ${lateness.n}/${others.length} closed${allExpired ? '' : ' (timed out)'}, ${others.filter((c) => c.closed?.code === 1008).length} with 1008, ${early} before their exp; exp → close p50 ${ms(lateness.p50)}, p90 ${ms(lateness.p90)}, p99 ${ms(lateness.p99)}, max ${ms(lateness.max)}`,
  )
  log(
    `ratios against the floor: memory per connection ${(perConn('rss') / 1024 / floorResult.memoryPerConnectionKiB).toFixed(2)}× RSS, ${(perConn('heapUsed') / 1024 / floorResult.heapPerConnectionKiB).toFixed(2)}× heap, close p50 ${(revokeLat.p50 / floorResult.closeMs.p50).toFixed(2)}×, p99 ${(revokeLat.p99 / floorResult.closeMs.p99).toFixed(2)}×`,
  )
  if (process.env.LAPSE_BENCH_PROF) await ask(proxy.child, 'profile-stop')
  const end = await ask(proxy.child, 'memory')
  log(`after every cut: ${end.tracked} tracked, RSS ${(end.memory.rss / 2 ** 20).toFixed(0)} MiB`)
  void othersSet

  const summary = {
    date: new Date().toISOString(),
    commit,
    node,
    cpu,
    cpus: cpus().length,
    loadAverage1m: loadavg()[0],
    registry: reg,
    connections: clients.length,
    openPerS: Math.round(clients.length / openS),
    memoryPerConnectionKiB: { rss: perConn('rss') / 1024, heapUsed: perConn('heapUsed') / 1024, external: perConn('external') / 1024 },
    revocation: { affected: victims.length, closed1008: codes, ackMs, closeMs: revokeLat },
    floor: floorResult,
    ratios: {
      memoryPerConnection: perConn('rss') / 1024 / floorResult.memoryPerConnectionKiB,
      heapPerConnection: perConn('heapUsed') / 1024 / floorResult.heapPerConnectionKiB,
      closeP50: revokeLat.p50 / floorResult.closeMs.p50,
      closeP99: revokeLat.p99 / floorResult.closeMs.p99,
    },
    expiry: { affected: others.length, closedEarly: early, latenessMs: lateness },
  }
  log(JSON.stringify(summary))
  clearTimeout(hardStop)
  for (const c of clients) c.ws.terminate()
  proxy.child.kill('SIGTERM')
  upstream.child.kill('SIGTERM')
  await new Promise((r) => setTimeout(r, 500))
  cleanup()
  rmSync(dir, { recursive: true, force: true })
}

// Last, so every const above is initialized.
if (opts.role === 'upstream') await runUpstream()
else if (opts.role === 'floor') await runFloor()
else if (opts.role === 'proxy') await runProxy()
else await main()
