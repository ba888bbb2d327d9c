// Busy-host soak: a real Lapse in this process (dist/, so `npm run build` first) in front of a
// healthy redis-server, while other processes keep every core busy and Lapse's own event loop is
// stalled now and then; counts the 503s, which should be none (LAPSE_REVOCATION_TIMEOUT measures
// Redis's silence, not our stalls).
//
//   npm run build && node bench/busy-soak.mjs [--seconds 60] [--burners 2] [--stall-ms 80] [--stall-every-ms 500] [--timeout-ms 50]
import { spawn } from 'node:child_process'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { Agent, createServer, request } from 'node:http'
import net from 'node:net'
import os from 'node:os'
import { join } from 'node:path'
import { parseArgs } from 'node:util'
import { exportJWK, generateKeyPair, SignJWT } from 'jose'
import pino from 'pino'
import { loadConfig } from '../dist/config/load.js'
import { buildDeps, createSidecar } from '../dist/main.js'

const { values: args } = parseArgs({
  options: {
    seconds: { type: 'string', default: '60' },
    burners: { type: 'string', default: String(os.availableParallelism()) },
    'stall-ms': { type: 'string', default: '80' },
    'stall-every-ms': { type: 'string', default: '500' },
    'timeout-ms': { type: 'string', default: '50' },
    concurrency: { type: 'string', default: '16' },
  },
})
const ISS = 'https://idp.example/'
const AUD = 'orders-api'
const dir = mkdtempSync(join(os.tmpdir(), 'lapse-soak-'))
const { privateKey, publicKey } = await generateKeyPair('ES256')
const jwks = join(dir, 'jwks.json')
writeFileSync(jwks, JSON.stringify({ keys: [{ ...(await exportJWK(publicKey)), kid: 'k1', alg: 'ES256', use: 'sig' }] }))
const upstream = createServer((_req, res) => res.end('ok'))
await new Promise((resolve) => upstream.listen(0, '127.0.0.1', resolve))
const redis = await startRedis()
const config = loadConfig({
  LAPSE_LISTEN: '127.0.0.1:0',
  LAPSE_ADMIN_LISTEN: '127.0.0.1:0',
  LAPSE_UPSTREAM: `http://127.0.0.1:${upstream.address().port}`,
  LAPSE_ISSUER: ISS,
  LAPSE_AUDIENCE: AUD,
  LAPSE_JWKS_FILE: jwks,
  LAPSE_ROUTES: JSON.stringify([{ path: '/**', scopes: ['orders:read'] }]),
  LAPSE_LOG_ALLOWS: 'none',
  // Cache off: every request is a Redis read, the worst case for false refusals.
  LAPSE_REDIS_URL: redis.url,
  LAPSE_REVOCATION_TIMEOUT: args['timeout-ms'],
  LAPSE_REVOCATION_CACHE: 'false',
})
const deps = await buildDeps(config, { log: pino({ level: 'silent' }) })
const app = createSidecar(deps)
const { proxy } = await app.listen()
while (!deps.revocations.ready()) await new Promise((resolve) => setTimeout(resolve, 20))

const burners = Array.from({ length: Number(args.burners) }, () => spawn(process.execPath, ['-e', 'for (;;) {}'], { stdio: 'ignore' }))
// Interrupted: leave no busy process or redis-server behind.
for (const sig of ['SIGINT', 'SIGTERM'])
  process.once(sig, () => {
    for (const b of burners) b.kill('SIGKILL')
    latency.kill('SIGKILL')
    redis.kill()
    process.exit(130)
  })
const stall = setInterval(
  () =>
    setImmediate(() => {
      const until = performance.now() + Number(args['stall-ms'])
      while (performance.now() < until) {
        /* a GC pause, a big JSON.parse */
      }
    }),
  Number(args['stall-every-ms']),
)

const agent = new Agent({ keepAlive: true, maxSockets: Number(args.concurrency) })
const get = (token) =>
  new Promise((resolve) => {
    const req = request(
      { host: proxy.host, port: proxy.port, path: '/orders/1', agent, headers: { authorization: `Bearer ${token}` } },
      (res) => {
        res.resume()
        res.on('end', () => resolve(res.statusCode))
      },
    )
    req.on('error', () => resolve('error'))
    req.end()
  })
const now = Math.floor(Date.now() / 1000)
const tokens = await Promise.all(
  Array.from({ length: Number(args.concurrency) }, (_, i) =>
    new SignJWT({ scope: 'orders:read' })
      .setProtectedHeader({ alg: 'ES256', kid: 'k1' })
      .setIssuer(ISS)
      .setAudience(AUD)
      .setSubject(`soak-${i}`)
      .setJti(`j-${i}`)
      .setIssuedAt(now)
      .setExpirationTime(now + 3600)
      .sign(privateKey),
  ),
)
// Redis's own latency over the same window, from another process pinging every 5 ms: a refusal
// while this saw Redis take longer than the budget is Redis's silence (a starved server), not a
// stall of Lapse's own loop.
const PINGER = `import { Redis } from 'ioredis'
const r = new Redis(process.argv[1]); const rtts = []
const t = setInterval(async () => { const s = performance.now(); await r.ping(); rtts.push(performance.now() - s) }, 5)
process.on('SIGTERM', () => { clearInterval(t); rtts.sort((a, b) => a - b)
  console.log(JSON.stringify({ pings: rtts.length, max_ms: +rtts.at(-1).toFixed(1), over_budget: rtts.filter((x) => x > ${Number(args['timeout-ms'])}).length })); process.exit(0) })`
const latency = spawn(process.execPath, ['--input-type=module', '-e', PINGER, redis.url], {
  cwd: new URL('..', import.meta.url),
  stdio: ['ignore', 'pipe', 'inherit'],
})
let latencyOut = ''
latency.stdout.on('data', (c) => {
  latencyOut += c
})
const counts = {}
const endAt = performance.now() + Number(args.seconds) * 1000
await Promise.all(
  tokens.map(async (token) => {
    while (performance.now() < endAt) {
      const status = await get(token)
      counts[status] = (counts[status] ?? 0) + 1
    }
  }),
)
clearInterval(stall)
for (const b of burners) b.kill('SIGKILL')
latency.kill('SIGTERM')
await new Promise((resolve) => latency.once('exit', resolve))
const total = Object.values(counts).reduce((a, b) => a + b, 0)
console.log(
  JSON.stringify({
    seconds: Number(args.seconds),
    burners: burners.length,
    stall_ms: Number(args['stall-ms']),
    stall_every_ms: Number(args['stall-every-ms']),
    timeout_ms: Number(args['timeout-ms']),
    requests: total,
    statuses: counts,
    refused_503: counts[503] ?? 0,
    redis_ping_from_another_process: JSON.parse(latencyOut || 'null'),
    load_avg: os.loadavg().map((l) => +l.toFixed(2)),
  }),
)
await app.close()
await deps.revocations.close()
deps.keys.close()
deps.forwarder.close()
agent.destroy()
upstream.close()
await redis.stop()
rmSync(dir, { recursive: true, force: true })
process.exitCode = counts[503] ? 1 : 0

async function startRedis() {
  const port = await new Promise((resolve) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => {
      const p = s.address().port
      s.close(() => resolve(p))
    })
  })
  const child = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', dir], {
    stdio: 'ignore',
  })
  for (let i = 0; i < 200; i++) {
    const up = await new Promise((resolve) => {
      const s = net
        .connect(port, '127.0.0.1', () => {
          s.destroy()
          resolve(true)
        })
        .on('error', () => resolve(false))
    })
    if (up) break
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
  return {
    url: `redis://127.0.0.1:${port}`,
    kill: () => child.kill('SIGKILL'),
    stop: () =>
      new Promise((resolve) => {
        child.once('exit', resolve)
        child.kill('SIGTERM')
      }),
  }
}
