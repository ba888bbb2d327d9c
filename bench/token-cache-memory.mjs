// What one cached token costs in memory: a real Lapse in this process (dist/, so `npm run build`
// first) is sent N requests, each with its own RS256 token, and the heap and RSS are read after a
// full GC before and after. Every per-token structure is counted: the verified-token cache
// (LAPSE_TOKEN_CACHE_SIZE), the token's revocation keys and, with --redis, the revocation answer
// cache, and with --audit an audit line for every allow (LAPSE_LOG_ALLOWS=all, the default; lines
// to /dev/null through the stdout sink), whose per-token text is kept in the token's memo.
//
//   npm run build && node --expose-gc bench/token-cache-memory.mjs [--tokens 10000] [--redis] [--audit]
import { spawn } from 'node:child_process'
import { mkdtempSync, openSync, rmSync, writeFileSync } from 'node:fs'
import { createServer, request } from 'node:http'
import net from 'node:net'
import os from 'node:os'
import { join } from 'node:path'
import { parseArgs } from 'node:util'
import { randomUUID } from 'node:crypto'
import { exportJWK, generateKeyPair, SignJWT } from 'jose'
import { createRequire } from 'node:module'
import { loadConfig } from '../dist/config/load.js'
import { buildDeps, createSidecar } from '../dist/main.js'
import { LineSink } from '../dist/telemetry/line-sink.js'

// Lapse's own pino, not bench/'s copy: the recorder finds a logger's stream by that copy's symbol.
const pino = createRequire(new URL('../package.json', import.meta.url))('pino')

if (typeof globalThis.gc !== 'function') {
  console.error('run with node --expose-gc')
  process.exit(2)
}
const { values: args } = parseArgs({
  options: {
    tokens: { type: 'string', default: '10000' },
    redis: { type: 'boolean', default: false },
    audit: { type: 'boolean', default: false },
  },
})
const N = Number(args.tokens)
const ISS = 'https://idp.example/'
const AUD = 'orders-api'

const dir = mkdtempSync(join(os.tmpdir(), 'lapse-mem-'))
const { privateKey, publicKey } = await generateKeyPair('RS256')
const jwks = join(dir, 'jwks.json')
writeFileSync(jwks, JSON.stringify({ keys: [{ ...(await exportJWK(publicKey)), kid: 'k1', alg: 'RS256', use: 'sig' }] }))

const upstream = createServer((_req, res) => res.end('ok'))
await new Promise((resolve) => upstream.listen(0, '127.0.0.1', resolve))
const redis = args.redis ? await startRedis() : undefined

const config = loadConfig({
  LAPSE_LISTEN: '127.0.0.1:0',
  LAPSE_ADMIN_LISTEN: '127.0.0.1:0',
  LAPSE_UPSTREAM: `http://127.0.0.1:${upstream.address().port}`,
  LAPSE_ISSUER: ISS,
  LAPSE_AUDIENCE: AUD,
  LAPSE_JWKS_FILE: jwks,
  LAPSE_ROUTES: JSON.stringify([{ path: '/**', scopes: ['orders:read'] }]),
  LAPSE_TOKEN_CACHE_SIZE: String(N),
  LAPSE_LOG_ALLOWS: args.audit ? 'all' : 'none',
  ...(redis ? { LAPSE_REDIS_URL: redis.url, LAPSE_REVOCATION_TIMEOUT: '1000' } : {}),
})
const log = args.audit
  ? pino({ level: 'info' }, new LineSink({ fd: openSync('/dev/null', 'w'), capBytes: 16 << 20 }))
  : pino({ level: 'silent' })
const deps = await buildDeps(config, { log })
const app = createSidecar(deps)
const { proxy } = await app.listen()
while (!deps.revocations.ready()) await new Promise((resolve) => setTimeout(resolve, 20))

const agent = new (await import('node:http')).Agent({ keepAlive: true, maxSockets: 16 })
const get = (token) =>
  new Promise((resolve, reject) => {
    const req = request(
      { host: proxy.host, port: proxy.port, path: '/orders/1', agent, headers: { authorization: `Bearer ${token}` } },
      (res) => {
        res.resume()
        res.on('end', () => resolve(res.statusCode))
      },
    )
    req.on('error', reject)
    req.end()
  })
const mint = (i) => {
  const now = Math.floor(Date.now() / 1000)
  return new SignJWT({ scope: 'orders:read', client_id: 'deploy-pipeline', sid: randomUUID() })
    .setProtectedHeader({ alg: 'RS256', kid: 'k1', typ: 'at+jwt' })
    .setIssuer(ISS)
    .setAudience(AUD)
    .setSubject(`user-${i}`)
    .setJti(randomUUID())
    .setIssuedAt(now)
    .setExpirationTime(now + 600)
    .sign(privateKey)
}

// Warm up with the same number of requests on one token: code, pools and buffers exist before we measure.
const warm = await mint(-1)
for (let i = 0; i < 2000; i++) await get(warm)
// Mint first, so the tokens' own strings are in both readings.
const tokens = []
for (let i = 0; i < N; i++) tokens.push(await mint(i))
const read = () => {
  globalThis.gc()
  globalThis.gc()
  const m = process.memoryUsage()
  return { heap: m.heapUsed, rss: m.rss }
}
const before = read()
for (let at = 0; at < N; at += 16) {
  const statuses = await Promise.all(tokens.slice(at, at + 16).map(get))
  if (statuses.some((s) => s !== 200)) throw new Error(`a request was answered ${statuses.find((s) => s !== 200)}`)
}
const after = read()
const perEntry = (after.heap - before.heap) / N
const token = tokens[0]
console.log(
  JSON.stringify({
    tokens: N,
    token_chars: token.length,
    redis: Boolean(redis),
    token_cache: deps.verify.cacheSize(),
    heap_mib: { before: +(before.heap / 2 ** 20).toFixed(1), after: +(after.heap / 2 ** 20).toFixed(1) },
    rss_mib: { before: +(before.rss / 2 ** 20).toFixed(1), after: +(after.rss / 2 ** 20).toFixed(1) },
    heap_bytes_per_token: Math.round(perEntry),
    heap_mib_per_1000_tokens: +((perEntry * 1000) / 2 ** 20).toFixed(2),
    rss_mib_per_1000_tokens: +((((after.rss - before.rss) / N) * 1000) / 2 ** 20).toFixed(2),
  }),
)
tokens.length = 0
await app.close()
await deps.revocations.close()
deps.keys.close()
deps.forwarder.close()
agent.destroy()
upstream.close()
await redis?.stop()
rmSync(dir, { recursive: true, force: true })

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
    stop: () =>
      new Promise((resolve) => {
        child.once('exit', resolve)
        child.kill('SIGTERM')
      }),
  }
}
