// Every server a row can hit, started on first use and kept for the whole run (so rounds can
// interleave rows without restarts): the stub upstream, the floors, the fastify assembly, a
// private redis-server, an OTLP sink, and Lapse in each configuration the rows need.
//
//   const fleet = createFleet(ctx)
//   const { url, child } = await fleet.ensure('lapse-mem')
//   await fleet.close()
import { existsSync } from 'node:fs'
import { join } from 'node:path'
import { nginxBinary, writeNginxConf } from './nginx.mjs'
import { startRedis } from './redis.mjs'
import { freePort, spawnPinned, stop, waitHttp } from './proc.mjs'
import { SCOPE } from './keys.mjs'

export const ROUTES = JSON.stringify([{ path: '/**', scopes: [SCOPE] }])

/** Lapse configurations by server name: what each adds to the common environment. */
const LAPSE_VARIANTS = {
  // Rows 3 (and the "telemetry off" side of row 7): memory revocation set, verification cache on.
  'lapse-mem': () => ({}),
  // Row 3b: row 3 with one rule whose captured segment must equal the token's client_id, sent
  // on as X-Auth-Bound-Client (docs/binding.md).
  'lapse-bound': () => ({
    LAPSE_ROUTES: JSON.stringify([{ path: '/v1/{client}', scopes: [SCOPE], claims: { client_id: '{client}' } }]),
  }),
  // Row 3l: row 3 with the default audit line for every allow; its stdout goes to the run's
  // lapse-mem-audit.log, a regular file.
  'lapse-mem-audit': () => ({ LAPSE_LOG_ALLOWS: 'all' }),
  // Row 3ln: the same, its stdout on /dev/null (spawned so below).
  'lapse-mem-audit-null': () => ({ LAPSE_LOG_ALLOWS: 'all' }),
  'lapse-redis-cache': ({ redisUrl }) => ({ LAPSE_REDIS_URL: redisUrl, LAPSE_REVOCATION_CACHE: 'true' }),
  'lapse-redis-nocache': ({ redisUrl }) => ({ LAPSE_REDIS_URL: redisUrl, LAPSE_REVOCATION_CACHE: 'false' }),
  // Row 4u: row 4a's route with a use limit no run reaches, so every request is allowed and
  // counted: one atomic script in Redis per request (src/revocation/use-counter-redis.ts).
  'lapse-redis-uses': ({ redisUrl }) => ({
    LAPSE_REDIS_URL: redisUrl,
    LAPSE_REVOCATION_CACHE: 'true',
    LAPSE_ROUTES: JSON.stringify([{ path: '/**', scopes: [SCOPE], max_uses: 1_000_000_000 }]),
  }),
  // Row 5: no verification cache, so every request pays its signature check even when the
  // 10,000-token pool comes round again.
  'lapse-verify': () => ({ LAPSE_TOKEN_CACHE_SIZE: '0' }),
  // Row 7: the SDK on, exporting to a loopback port where nothing listens.
  'lapse-otel': ({ closedPort }) => ({ OTEL_SDK_DISABLED: undefined, OTEL_EXPORTER_OTLP_ENDPOINT: `http://127.0.0.1:${closedPort}` }),
  // Row 7r: the SDK on, exporting to a loopback sink that takes everything (what recording costs).
  'lapse-otel-live': ({ collectorUrl }) => ({ OTEL_SDK_DISABLED: undefined, OTEL_EXPORTER_OTLP_ENDPOINT: collectorUrl }),
  // Row 3m: row 3 serving HTTPS, a client certificate required (lib/pki.mjs).
  'lapse-mtls': ({ pki }) => ({
    LAPSE_TLS_CERT_FILE: pki.serverCertFile,
    LAPSE_TLS_KEY_FILE: pki.serverKeyFile,
    LAPSE_TLS_CLIENT_CA_FILE: pki.caFile,
    LAPSE_TLS_CLIENT_AUTH: 'require',
  }),
  // Row na: a decision service only, asked by nginx's auth_request (docs/ingress.md).
  'lapse-decision': ({ decisionPort }) => ({
    LAPSE_UPSTREAM: undefined,
    LAPSE_DECISION_LISTEN: `127.0.0.1:${decisionPort}`,
    LAPSE_DECISION_TOKEN: DECISION_TOKEN,
  }),
}

/** The shared secret between the bench's nginx and its decision service. */
const DECISION_TOKEN = 'bench-decision-token-0123456789'

export const lapseEntry = (root) => join(root, 'bin', 'lapse.js')
// "<variant>@base" is the same configuration on the commit an A/B run compares against (--against).
const variantOf = (name) => name.replace(/@base$/, '')
export const isLapseServer = (name) => variantOf(name) in LAPSE_VARIANTS

/** The inherited environment without any LAPSE_* or OTEL_* setting that could skew a row. */
function cleanEnv() {
  const env = {}
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('LAPSE_') && !k.startsWith('OTEL_')) env[k] = v
  return env
}

export function createFleet(ctx) {
  const started = new Map()
  const starting = new Map()
  const node = process.execPath
  const lib = (file) => join(ctx.benchDir, 'lib', file)

  const profileFlags = (name) =>
    ctx.cpuProfDir ? ['--cpu-prof', `--cpu-prof-dir=${ctx.cpuProfDir}`, `--cpu-prof-name=${name}.cpuprofile`] : []

  async function startNodeServer(name, script, args) {
    const port = await freePort()
    // The floors are profiled with Lapse, so the two profiles can be told apart function by function.
    const flags = name === 'upstream' || name === 'collector' ? [] : profileFlags(name)
    const child = spawnPinned(node, [...flags, lib(script), String(port), ...args], { cpu: ctx.pin.servers, name, logDir: ctx.logDir })
    const url = `http://127.0.0.1:${port}`
    await waitHttp(`${url}/ready-probe`, { child, status: 200 })
    return { name, url, child }
  }

  async function startLapse(name) {
    const variant = variantOf(name)
    const lapseRoot = name === variant ? ctx.root : ctx.baseRoot
    if (!lapseRoot) throw new Error(`${name}: no base tree (run with --against)`)
    const entry = lapseEntry(lapseRoot)
    if (!existsSync(entry)) throw new Error(`Lapse is not there yet (${entry} missing)`)
    const upstream = await ensure('upstream')
    const extra = { redisUrl: undefined, closedPort: undefined, collectorUrl: undefined, pki: ctx.pki, decisionPort: undefined }
    if (variant.startsWith('lapse-redis')) extra.redisUrl = (await ensure('redis')).url
    if (variant === 'lapse-otel') extra.closedPort = await freePort()
    if (variant === 'lapse-otel-live') extra.collectorUrl = (await ensure('collector')).url
    if (variant === 'lapse-decision') extra.decisionPort = await freePort()
    const [port, adminPort] = [await freePort(), await freePort()]
    const env = {
      ...cleanEnv(),
      LAPSE_LISTEN: `127.0.0.1:${port}`,
      LAPSE_ADMIN_LISTEN: `127.0.0.1:${adminPort}`,
      // Stopped with SIGTERM between rows: no endpoints to leave.
      LAPSE_DRAIN_DELAY: '0',
      LAPSE_UPSTREAM: upstream.url,
      LAPSE_ISSUER: ctx.iss,
      LAPSE_AUDIENCE: ctx.aud,
      LAPSE_JWKS_FILE: ctx.keys.jwksFile,
      LAPSE_ROUTES: ROUTES,
      LAPSE_LOG_ALLOWS: 'none',
      LAPSE_MAX_TOKEN_LIFETIME: String(ctx.maxLifetimeS),
      OTEL_SDK_DISABLED: 'true',
      ...LAPSE_VARIANTS[variant](extra),
    }
    for (const k of Object.keys(env)) if (env[k] === undefined) delete env[k]
    const child = spawnPinned(node, [...profileFlags(name), entry, 'proxy'], {
      cpu: ctx.pin.servers,
      name,
      logDir: ctx.logDir,
      env,
      cwd: lapseRoot,
      outPath: variant === 'lapse-mem-audit-null' ? '/dev/null' : undefined,
    })
    await waitHttp(`http://127.0.0.1:${adminPort}/readyz`, { child, timeoutMs: 20_000 })
    const decision = extra.decisionPort && `127.0.0.1:${extra.decisionPort}`
    return {
      name,
      url: `${variant === 'lapse-mtls' ? 'https' : 'http'}://127.0.0.1:${port}`,
      adminUrl: `http://127.0.0.1:${adminPort}`,
      child,
      env,
      decision,
    }
  }

  /** Rows n and na: nginx alone, or with auth_request to the decision service (`lapse-decision`). */
  async function startNginx(name) {
    const bin = nginxBinary()
    if (!bin) throw new Error('no nginx binary found')
    const upstream = await ensure('upstream')
    const lapse = name === 'nginx-lapse' ? await ensure('lapse-decision') : undefined
    const decision = lapse && { address: lapse.decision, token: DECISION_TOKEN }
    const port = await freePort()
    const dir = join(ctx.logDir, name)
    const conf = writeNginxConf({ root: ctx.root, dir, port, upstreamUrl: upstream.url, decision })
    const child = spawnPinned(bin, ['-p', dir, '-c', conf, '-g', 'daemon off; master_process off;'], {
      cpu: ctx.pin.servers,
      name,
      logDir: ctx.logDir,
    })
    const url = `http://127.0.0.1:${port}`
    await waitHttp(`${url}/ready-probe`, { child, status: 200 })
    // `helper`: the other process the row's requests cost CPU in (run.mjs reports it apart).
    return { name, url, child, helper: lapse?.child }
  }

  async function start(name) {
    switch (name) {
      case 'upstream':
        return startNodeServer(name, 'upstream.mjs', [])
      case 'collector':
        return startNodeServer(name, 'collector.mjs', [])
      case 'floor-http-proxy':
        return startNodeServer(name, 'floor-http-proxy.mjs', [(await ensure('upstream')).url])
      case 'floor-undici':
        return startNodeServer(name, 'floor-undici.mjs', [(await ensure('upstream')).url])
      case 'fastify':
      case 'fastify-cache': {
        const upstream = (await ensure('upstream')).url
        const port = await freePort()
        const env = { ...process.env, BENCH_FASTIFY_JWT_CACHE: name === 'fastify-cache' ? 'true' : 'false' }
        const child = spawnPinned(node, [lib('fastify-jwt.mjs'), String(port), upstream, ctx.keys.rsPemFile, ctx.iss, ctx.aud, SCOPE], {
          cpu: ctx.pin.servers,
          name,
          logDir: ctx.logDir,
          env,
        })
        const url = `http://127.0.0.1:${port}`
        await waitHttp(`${url}/ready-probe`, { child, status: 401 })
        return { name, url, child }
      }
      case 'nginx':
      case 'nginx-lapse':
        return startNginx(name)
      case 'redis': {
        const redis = await startRedis({ cpu: ctx.pin.redis, logDir: ctx.logDir })
        return { name, ...redis }
      }
      default:
        if (isLapseServer(name)) return startLapse(name)
        throw new Error(`unknown server ${name}`)
    }
  }

  /** Starts `name` once; concurrent callers share the start. */
  function ensure(name) {
    if (started.has(name)) return Promise.resolve(started.get(name))
    if (!starting.has(name)) {
      starting.set(
        name,
        start(name)
          .then((s) => {
            started.set(name, s)
            return s
          })
          .finally(() => starting.delete(name)),
      )
    }
    return starting.get(name)
  }

  async function close() {
    // Lapse first (its profile is written on a clean exit), then what it depends on.
    const order = [...started.values()].sort((a, b) => rank(a.name) - rank(b.name))
    for (const s of order) await stop(s.child, 5000)
    started.clear()
  }
  const rank = (name) => (isLapseServer(name) ? 0 : ['redis', 'upstream', 'collector'].includes(name) ? 2 : 1)

  const pids = () => [...started.values()].map((s) => s.child.pid).filter(Boolean)
  return { ensure, close, pids, get: (name) => started.get(name) }
}
