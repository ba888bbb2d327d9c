// `lapse <command>`: proxy, demo, token, revoke, lift. The only place that reads process.env.
import { parseArgs } from 'node:util'
import { writeSync } from 'node:fs'
import { resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { LapseError } from '../core/errors.js'
import type { Running } from '../main.js'
import { startDemoUpstream } from './demo-upstream.js'
import { DEV_AUDIENCE, DEV_ISSUER, loadDevKey, mintToken } from './dev-key.js'
import { randomBytes } from 'node:crypto'

const VERSION = '0.1.0'

const HELP = `lapse — verify every request's short-lived token at the moment of use

Usage: lapse <command> [options]

Commands:
  proxy     run the sidecar, configured by LAPSE_* variables or the YAML file in LAPSE_CONFIG
  demo      run the sidecar on embedded defaults with a demo upstream and a development key
            (--ttl <seconds> for the printed token, default 300)
  token     mint a development token with the demo's key
            --sub <subject> [--scope "<a b>"] [--ttl <seconds>] [--iss <issuer>] [--aud <audience>] [--claim k=v]...
  revoke    revoke through the admin API: --claim <name> --value <value> [--reason <text>]
            [--iss <issuer>] [--issued-before <epoch s | RFC 3339>] [--expires-at <…>]
  lift      lift a revocation: --claim <name> --value <value> [--iss <issuer>]

The admin commands use LAPSE_ADMIN_URL (default http://127.0.0.1:9901) and
LAPSE_ADMIN_TOKEN or LAPSE_ADMIN_TOKEN_FILE. Configuration reference: docs/configuration.md.
`

type Env = Record<string, string | undefined>

function die(line: string, code = 2): never {
  // Written synchronously: process.stderr on a pipe can still hold the line when exit comes.
  try {
    writeSync(2, `lapse: ${line}\n`)
  } catch {
    process.stderr.write(`lapse: ${line}\n`)
  }
  process.exit(code)
}

export async function main(argv: string[], env: Env): Promise<void> {
  const [command, ...rest] = argv
  switch (command) {
    case 'proxy':
      return runProxy(env)
    case 'demo':
      return runDemo(rest, env)
    case 'token':
      return runToken(rest, env)
    case 'revoke':
      return runRevoke(rest, env)
    case 'lift':
      return runLift(rest, env)
    case '--version':
    case '-v':
      process.stdout.write(`${VERSION}\n`)
      return
    case undefined:
    case 'help':
    case '--help':
    case '-h':
      process.stdout.write(HELP)
      return
    default:
      die(`unknown command "${command}" (try lapse --help)`)
  }
}

async function start(env: Env): Promise<Running> {
  // Loaded only for the commands that run the proxy: the admin commands start in a blink.
  const { startProxy } = await import('../main.js')
  try {
    return await startProxy(env)
  } catch (err) {
    // A LapseError is one line naming the setting or the place and why (docs/errors.md).
    if (err instanceof LapseError) die(`${err.code} ${err.message}`)
    throw err
  }
}

/**
 * SIGTERM/SIGINT, as Kubernetes expects: /readyz answers 503 at once and requests are still served
 * for LAPSE_DRAIN_DELAY (endpoints take that long to stop sending traffic), answers saying
 * `Connection: close`; then Lapse stops accepting, in-flight requests get LAPSE_SHUTDOWN_TIMEOUT,
 * WebSockets a close 1001, and it exits 0 once the audit log is flushed. A second signal exits at once.
 * SIGHUP reloads the configuration.
 */
function closeOnSignal(running: Running, extra: () => void = () => undefined): void {
  let closing = false
  const stop = (signal: string) => {
    if (closing) {
      running.deps.log.warn({ signal }, 'second signal: exiting at once')
      return running.deps.log.flush(() => process.exit(1))
    }
    closing = true
    const { drainDelayS, shutdownTimeoutS } = running.config
    running.deps.log.info({ signal, drain_delay_s: drainDelayS, shutdown_timeout_s: shutdownTimeoutS }, 'draining: /readyz answers 503')
    running.drain()
    const force = setTimeout(() => process.exit(0), (drainDelayS + shutdownTimeoutS) * 1000 + 1000)
    force.unref()
    setTimeout(() => {
      running.deps.log.info({ signal }, 'shutting down: no new connections')
      running.close(shutdownTimeoutS * 1000).finally(() => {
        extra()
        // Exit once the audit log is on disk: an exporter still retrying a dead collector, or a
        // Redis reconnect timer, must not hold a terminated sidecar for seconds.
        running.deps.log.flush(() => process.exit(0))
      })
    }, drainDelayS * 1000)
  }
  process.on('SIGTERM', () => stop('SIGTERM'))
  process.on('SIGINT', () => stop('SIGINT'))
  process.on('SIGHUP', () => {
    if (!closing) void running.reload('SIGHUP')
  })
}

async function runProxy(env: Env): Promise<void> {
  closeOnSignal(await start(env))
}

function flags(args: string[], options: Record<string, { type: 'string' | 'boolean'; multiple?: boolean }>) {
  try {
    return parseArgs({ args, options, strict: true, allowPositionals: false }).values as Record<string, string | string[] | boolean | undefined>
  } catch (err) {
    return die((err as Error).message)
  }
}

function seconds(value: string | undefined, name: string, fallback: number): number {
  if (value === undefined) return fallback
  const n = Number(value)
  if (!Number.isInteger(n) || n <= 0) die(`--${name} must be a whole number of seconds`)
  return n
}

async function runDemo(args: string[], env: Env): Promise<void> {
  const f = flags(args, { ttl: { type: 'string' } })
  const ttlS = seconds(f.ttl as string | undefined, 'ttl', 300)
  const dev = await loadDevKey(resolve(env.LAPSE_DEV_DIR ?? '.lapse-dev'))
  const upstream = await startDemoUpstream()
  const adminToken = env.LAPSE_ADMIN_TOKEN ?? randomBytes(18).toString('base64url')
  const demoEnv: Env = {
    LAPSE_LISTEN: '127.0.0.1:8080',
    LAPSE_ISSUER: DEV_ISSUER,
    LAPSE_AUDIENCE: DEV_AUDIENCE,
    LAPSE_JWKS_FILE: dev.jwksPath,
    // A laptop has no endpoints to leave: Ctrl-C stops at once.
    LAPSE_DRAIN_DELAY: '0',
    LAPSE_ROUTES: JSON.stringify([
      { path: '/healthz', public: true },
      { path: '/**', methods: ['GET', 'HEAD'], scopes: ['demo:read'] },
      { path: '/**', methods: ['POST', 'PUT', 'PATCH', 'DELETE'], scopes: ['demo:write'] },
    ]),
    // No collector on a laptop: export only once the user sets any OTEL_* variable (/metrics is served either way).
    ...(Object.keys(env).some((k) => k.startsWith('OTEL_')) ? {} : { OTEL_TRACES_EXPORTER: 'none', OTEL_METRICS_EXPORTER: 'none' }),
    ...env,
    LAPSE_UPSTREAM: upstream.url,
    LAPSE_ADMIN_TOKEN: adminToken,
  }
  const running = await start(demoEnv)
  closeOnSignal(running, () => upstream.server.close())
  const { maxLifetimeS, clockSkewS } = running.config
  // The demo would answer its own token 401 lifetime_exceeds_policy: say so instead of printing it.
  if (maxLifetimeS > 0 && ttlS > maxLifetimeS) die(`demo: --ttl ${ttlS} is longer than LAPSE_MAX_TOKEN_LIFETIME (${maxLifetimeS} s), so Lapse would refuse the token`)
  const nowS = Math.floor(Date.now() / 1000)
  const token = await mintToken(dev, { sub: 'demo-user', scope: 'demo:read', ttlS, nowS, iss: running.config.issuers[0], aud: running.config.audiences[0] })
  const p = running.addresses.proxy
  const a = running.addresses.admin
  const host = (h: string) => (h.includes(':') ? `[${h}]` : h)
  // This checkout's own CLI by its path: `npx lapse` run from another folder would fetch whatever
  // the registry calls `lapse` and run it with the admin token in its environment.
  const bin = fileURLToPath(new URL('../../bin/lapse.js', import.meta.url))
  const lapseCmd = `node ${/^[\w./@:-]+$/.test(bin) ? bin : `'${bin.replaceAll("'", "'\\''")}'`}`
  // Printed once, to the terminal of whoever ran the demo: the point of the demo is to paste it.
  process.stderr.write(`
Lapse demo is running: ${host(p.host)}:${p.port} → demo upstream ${upstream.url}
A token for subject demo-user, scope demo:read, valid ${ttlS} s:

  curl -i -H "Authorization: Bearer ${token}" http://${host(p.host)}:${p.port}/hello

After ${ttlS + clockSkewS} s (its lifetime and the ${clockSkewS} s LAPSE_CLOCK_SKEW allows) the same command answers 401 invalid_token.
Revoke it sooner with:

  LAPSE_ADMIN_URL=http://${host(a.host)}:${a.port} LAPSE_ADMIN_TOKEN=${adminToken} ${lapseCmd} revoke --claim sub --value demo-user --reason "trying it out"

Mint more with: ${lapseCmd} token --sub me --scope demo:read --ttl 60
`)
}

async function runToken(args: string[], env: Env): Promise<void> {
  const f = flags(args, { sub: { type: 'string' }, scope: { type: 'string' }, ttl: { type: 'string' }, iss: { type: 'string' }, aud: { type: 'string' }, claim: { type: 'string', multiple: true } })
  if (typeof f.sub !== 'string' || f.sub === '') die('token: --sub is required')
  const extra: Record<string, string> = {}
  for (const pair of (f.claim as string[] | undefined) ?? []) {
    const eq = pair.indexOf('=')
    if (eq < 1) die(`token: --claim takes name=value, got "${pair}"`)
    extra[pair.slice(0, eq)] = pair.slice(eq + 1)
  }
  const dev = await loadDevKey(resolve(env.LAPSE_DEV_DIR ?? '.lapse-dev'))
  const token = await mintToken(dev, {
    sub: f.sub as string,
    scope: f.scope as string | undefined,
    ttlS: seconds(f.ttl as string | undefined, 'ttl', 300),
    iss: f.iss as string | undefined,
    aud: f.aud as string | undefined,
    nowS: Math.floor(Date.now() / 1000),
    extra,
  })
  process.stdout.write(`${token}\n`)
}

async function adminRequest(env: Env, method: string, path: string, body?: object): Promise<{ status: number; json: unknown }> {
  const base = env.LAPSE_ADMIN_URL ?? 'http://127.0.0.1:9901'
  let token = env.LAPSE_ADMIN_TOKEN
  if (!token && env.LAPSE_ADMIN_TOKEN_FILE) {
    const { readFileSync } = await import('node:fs')
    token = readFileSync(env.LAPSE_ADMIN_TOKEN_FILE, 'utf8').trim()
  }
  if (!token) die('LAPSE_ADMIN_TOKEN or LAPSE_ADMIN_TOKEN_FILE is required for admin commands')
  let res: Response
  try {
    res = await fetch(new URL(path, base), {
      method,
      headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json', 'user-agent': `lapse-cli/${VERSION}` },
      body: body ? JSON.stringify(body) : undefined,
      signal: AbortSignal.timeout(10_000),
    })
  } catch (err) {
    // fetch says only "fetch failed"; the cause has the useful part (ECONNREFUSED, a timeout).
    const cause = (err as { cause?: { code?: unknown; message?: unknown } }).cause
    const why = typeof cause?.code === 'string' ? cause.code : typeof cause?.message === 'string' ? cause.message : (err as Error).message
    return die(`cannot reach the admin API at ${base}: ${why}`, 1)
  }
  const text = await res.text()
  return { status: res.status, json: text ? JSON.parse(text) : null }
}

async function runRevoke(args: string[], env: Env): Promise<void> {
  const f = flags(args, { claim: { type: 'string' }, value: { type: 'string' }, reason: { type: 'string' }, iss: { type: 'string' }, 'issued-before': { type: 'string' }, 'expires-at': { type: 'string' } })
  if (!f.claim || !f.value) die('revoke: --claim and --value are required')
  const when = (v: unknown) => (typeof v === 'string' && /^\d+$/.test(v) ? Number(v) : v)
  const body = { claim: f.claim, value: f.value, reason: f.reason, iss: f.iss, issued_before: when(f['issued-before']), expires_at: when(f['expires-at']) }
  const { status, json } = await adminRequest(env, 'POST', '/v1/revocations', body)
  if (status !== 201) die(`revoke failed (${status}): ${(json as { error_description?: string })?.error_description ?? JSON.stringify(json)}`, 1)
  process.stdout.write(`${JSON.stringify(json)}\n`)
}

async function runLift(args: string[], env: Env): Promise<void> {
  const f = flags(args, { claim: { type: 'string' }, value: { type: 'string' }, iss: { type: 'string' } })
  if (!f.claim || !f.value) die('lift: --claim and --value are required')
  const q = f.iss ? `?iss=${encodeURIComponent(f.iss as string)}` : ''
  const { status, json } = await adminRequest(env, 'DELETE', `/v1/revocations/${encodeURIComponent(f.claim as string)}/${encodeURIComponent(f.value as string)}${q}`)
  if (status !== 204) die(`lift failed (${status}): ${(json as { error_description?: string })?.error_description ?? ''}`, 1)
  process.stdout.write('lifted\n')
}
