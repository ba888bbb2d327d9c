// `lapse <command>`: proxy, demo, token, revoke, lift. The only place that reads process.env.
import { parseArgs } from 'node:util'
import { writeSync } from 'node:fs'
import { resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { LapseError } from '../core/errors.js'
import type { Running, StartOptions } from '../main.js'
import { startDemoUpstream } from './demo-upstream.js'
import { DEV_AUDIENCE, DEV_ISSUER, loadDevKey, mintToken } from './dev-key.js'
import { randomBytes } from 'node:crypto'

const VERSION = '0.1.0'

const HELP = `lapse — verify every request's short-lived token at the moment of use

Usage: lapse <command> [options]

Commands:
  proxy     run the sidecar, configured by LAPSE_* variables or the YAML file in LAPSE_CONFIG;
            with LAPSE_DECISION_LISTEN (and no LAPSE_UPSTREAM) a decision service for
            nginx, Envoy/Istio, Traefik or Caddy (docs/ingress.md)
  demo      run the sidecar on embedded defaults with a demo upstream and a development key
            (--ttl <seconds> for the printed token, default 300)
  token     mint a development token with the demo's key
            --sub <subject> [--scope "<a b>"] [--ttl <seconds>] [--iss <issuer>] [--aud <audience>] [--claim k=v]...
  revoke    revoke through the admin API: --claim <name> --value <value> [--reason <text>]
            [--iss <issuer>] [--issued-before <epoch s | RFC 3339>] [--expires-at <…>]
            or many at once: --file <entries.jsonl | -> (one POST /v1/revocations body a line;
            answers each line, exits 1 if any failed)
  lift      lift a revocation: --claim <name> --value <value> [--iss <issuer>]
  dpop-proof  print a DPoP proof for one request: --method <GET…> --url <url> [--token <token>]
            [--nonce <nonce>] [--key <file>]; --jkt prints the key's thumbprint instead.
            The key (ES256) is made on first use, in $LAPSE_DEV_DIR/dpop-key.json by default.
            A token bound to it: lapse token --sub <subject> --jkt <thumbprint>
  revocations
            list the active revocations: [--claim <name>] [--iss <issuer>]
            [--reason-contains <text>] [--json] [--page-size <1-1000>, default 500]

The admin commands use LAPSE_ADMIN_URL (default http://127.0.0.1:9901) and
LAPSE_ADMIN_TOKEN or LAPSE_ADMIN_TOKEN_FILE. Configuration reference: docs/configuration.md.
`

type Env = Record<string, string | undefined>

function die(line: string, code = 2): never {
  writeErrSync(`lapse: ${line}\n`)
  process.exit(code)
}

/**
 * Written synchronously, whole: process.stderr on a pipe can still hold the line when exit comes.
 * A non-blocking pipe that is full answers EAGAIN; the write is retried for up to a second rather
 * than handed to the asynchronous stream, which exit would cut (seen under load: exit 2, no line).
 */
function writeErrSync(text: string): void {
  let rest = Buffer.from(text)
  const pause = new Int32Array(new SharedArrayBuffer(4))
  for (let tries = 0; rest.length > 0 && tries < 1000; ) {
    try {
      rest = rest.subarray(writeSync(2, rest))
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EAGAIN') return
      tries++
      Atomics.wait(pause, 0, 0, 1)
    }
  }
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
    case 'dpop-proof':
      return runDpopProof(rest, env)
    case 'revocations':
      return runRevocations(rest, env)
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

async function start(env: Env, opts: StartOptions = {}): Promise<Running> {
  // Loaded only for the commands that run the proxy: the admin commands start in a blink.
  const { startProxy, StartCancelled } = await import('../main.js')
  try {
    return await startProxy(env, opts)
  } catch (err) {
    // Stopped during the start (its log is flushed): a clean stop, like one after listening.
    if (err instanceof StartCancelled) process.exit(0)
    // A LapseError is one line naming the setting or the place and why (docs/errors.md).
    if (err instanceof LapseError) die(`${err.code} ${err.message}`)
    throw err
  }
}

/**
 * SIGTERM/SIGINT, handled from before the start: one that comes while Lapse waits for its keys and
 * the revocation set (LAPSE_STARTUP_WAIT) ends the start cleanly instead of killing the process.
 * Once running, as Kubernetes expects: /readyz answers 503 at once and requests are still served
 * for LAPSE_DRAIN_DELAY (endpoints take that long to stop sending traffic), answers saying
 * `Connection: close`; then Lapse stops accepting, in-flight requests get LAPSE_SHUTDOWN_TIMEOUT,
 * WebSockets a close 1001, and it exits 0 once the audit log is flushed. A second signal exits at
 * once. SIGHUP reloads the configuration.
 */
async function startClosingOnSignal(env: Env, extra: () => void = () => undefined): Promise<Running> {
  const starting = new AbortController()
  let onSignal = (signal: string) => starting.abort(signal)
  let onHangup = (): void => undefined
  process.on('SIGTERM', () => onSignal('SIGTERM'))
  process.on('SIGINT', () => onSignal('SIGINT'))
  // From the start too: SIGHUP's default action would end the process.
  process.on('SIGHUP', () => onHangup())
  const running = await start(env, { signal: starting.signal })
  let closing = false
  const stop = (signal: string, drainDelayS: number) => {
    if (closing) {
      running.deps.log.warn({ signal }, 'second signal: exiting at once')
      return running.deps.log.flush(() => process.exit(1))
    }
    closing = true
    const { shutdownTimeoutS } = running.config
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
  onSignal = (signal: string) => stop(signal, running.config.drainDelayS)
  onHangup = () => {
    if (!closing) void running.reload('SIGHUP')
  }
  // A signal between the end of the wait and the listen: close what just opened, without a drain
  // delay, since no endpoint has sent it traffic yet.
  if (starting.signal.aborted) stop(String(starting.signal.reason), 0)
  return running
}

async function runProxy(env: Env): Promise<void> {
  await startClosingOnSignal(env)
}

function flags(args: string[], options: Record<string, { type: 'string' | 'boolean'; multiple?: boolean }>) {
  try {
    return parseArgs({ args, options, strict: true, allowPositionals: false }).values as Record<
      string,
      string | string[] | boolean | undefined
    >
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
  const running = await startClosingOnSignal(demoEnv, () => upstream.server.close())
  const { maxLifetimeS, clockSkewS } = running.config
  // The demo would answer its own token 401 lifetime_exceeds_policy: say so instead of printing it.
  if (maxLifetimeS > 0 && ttlS > maxLifetimeS)
    die(`demo: --ttl ${ttlS} is longer than LAPSE_MAX_TOKEN_LIFETIME (${maxLifetimeS} s), so Lapse would refuse the token`)
  const nowS = Math.floor(Date.now() / 1000)
  const token = await mintToken(dev, {
    sub: 'demo-user',
    scope: 'demo:read',
    ttlS,
    nowS,
    iss: running.config.issuers[0],
    aud: running.config.audiences[0],
  })
  const p = running.addresses.proxy!
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
  const f = flags(args, {
    sub: { type: 'string' },
    scope: { type: 'string' },
    ttl: { type: 'string' },
    iss: { type: 'string' },
    aud: { type: 'string' },
    claim: { type: 'string', multiple: true },
    jkt: { type: 'string' },
  })
  if (typeof f.sub !== 'string' || f.sub === '') die('token: --sub is required')
  const extra: Record<string, string> = {}
  for (const pair of (f.claim as string[] | undefined) ?? []) {
    const eq = pair.indexOf('=')
    if (eq < 1) die(`token: --claim takes name=value, got "${pair}"`)
    extra[pair.slice(0, eq)] = pair.slice(eq + 1)
  }
  const dev = await loadDevKey(resolve(env.LAPSE_DEV_DIR ?? '.lapse-dev'))
  if (typeof f.jkt === 'string' && !/^[A-Za-z0-9_-]{43}$/.test(f.jkt))
    die('token: --jkt takes a JWK SHA-256 thumbprint (lapse dpop-proof --jkt)')
  const token = await mintToken(dev, {
    sub: f.sub as string,
    scope: f.scope as string | undefined,
    ttlS: seconds(f.ttl as string | undefined, 'ttl', 300),
    iss: f.iss as string | undefined,
    aud: f.aud as string | undefined,
    nowS: Math.floor(Date.now() / 1000),
    extra,
    // RFC 9449 §6.1: a DPoP-bound token names its key's thumbprint.
    cnf: typeof f.jkt === 'string' ? { jkt: f.jkt } : undefined,
  })
  process.stdout.write(`${token}\n`)
}

async function runDpopProof(args: string[], env: Env): Promise<void> {
  const f = flags(args, {
    method: { type: 'string' },
    url: { type: 'string' },
    token: { type: 'string' },
    nonce: { type: 'string' },
    key: { type: 'string' },
    jkt: { type: 'boolean' },
  })
  const { loadProofKey, makeProof, thumbprintOf } = await import('./dpop-proof.js')
  let key: Awaited<ReturnType<typeof loadProofKey>>
  try {
    key = await loadProofKey(resolve(typeof f.key === 'string' ? f.key : `${env.LAPSE_DEV_DIR ?? '.lapse-dev'}/dpop-key.json`))
  } catch (err) {
    return die(`dpop-proof: ${(err as Error).message}`)
  }
  if (f.jkt === true) return void process.stdout.write(`${await thumbprintOf(key)}\n`)
  if (typeof f.method !== 'string' || !/^[A-Za-z]+$/.test(f.method)) die('dpop-proof: --method is required (GET, POST…)')
  if (typeof f.url !== 'string' || !/^https?:\/\//.test(f.url)) die('dpop-proof: --url is required (http:// or https://)')
  let proof: string
  try {
    proof = await makeProof(key, {
      method: f.method as string,
      url: f.url as string,
      token: f.token as string | undefined,
      nonce: f.nonce as string | undefined,
      nowS: Math.floor(Date.now() / 1000),
    })
  } catch (err) {
    return die(`dpop-proof: ${(err as Error).message}`)
  }
  process.stdout.write(`${proof}\n`)
}

/** The admin API could not be reached at all (refused, timed out): no answer to report. */
class Unreachable extends Error {}

async function adminRequest(env: Env, method: string, path: string, body?: object): Promise<{ status: number; json: unknown }> {
  try {
    return await adminCall(env, method, path, body)
  } catch (err) {
    if (err instanceof Unreachable) die(err.message, 1)
    throw err
  }
}

async function adminCall(env: Env, method: string, path: string, body?: object): Promise<{ status: number; json: unknown }> {
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
    throw new Unreachable(`cannot reach the admin API at ${base}: ${why}`)
  }
  const text = await res.text()
  return { status: res.status, json: text ? JSON.parse(text) : null }
}

async function runRevoke(args: string[], env: Env): Promise<void> {
  const f = flags(args, {
    claim: { type: 'string' },
    value: { type: 'string' },
    reason: { type: 'string' },
    iss: { type: 'string' },
    'issued-before': { type: 'string' },
    'expires-at': { type: 'string' },
    file: { type: 'string' },
  })
  if (typeof f.file === 'string') {
    if (Object.keys(f).some((name) => name !== 'file' && f[name] !== undefined))
      die('revoke: --file takes the entries from the file; give no other option with it')
    return revokeFile(f.file, env)
  }
  if (!f.claim || !f.value) die('revoke: --claim and --value are required')
  const when = (v: unknown) => (typeof v === 'string' && /^\d+$/.test(v) ? Number(v) : v)
  const body = {
    claim: f.claim,
    value: f.value,
    reason: f.reason,
    iss: f.iss,
    issued_before: when(f['issued-before']),
    expires_at: when(f['expires-at']),
  }
  const { status, json } = await adminRequest(env, 'POST', '/v1/revocations', body)
  if (status !== 201)
    die(`revoke failed (${status}): ${(json as { error_description?: string })?.error_description ?? JSON.stringify(json)}`, 1)
  process.stdout.write(`${JSON.stringify(json)}\n`)
}

async function runLift(args: string[], env: Env): Promise<void> {
  const f = flags(args, { claim: { type: 'string' }, value: { type: 'string' }, iss: { type: 'string' } })
  if (!f.claim || !f.value) die('lift: --claim and --value are required')
  const q = f.iss ? `?iss=${encodeURIComponent(f.iss as string)}` : ''
  const { status, json } = await adminRequest(
    env,
    'DELETE',
    `/v1/revocations/${encodeURIComponent(f.claim as string)}/${encodeURIComponent(f.value as string)}${q}`,
  )
  if (status !== 204) die(`lift failed (${status}): ${(json as { error_description?: string })?.error_description ?? ''}`, 1)
  process.stdout.write('lifted\n')
}

const description = (json: unknown): string => {
  const d = json as { error_description?: unknown; error?: unknown } | null
  return typeof d?.error_description === 'string' ? d.error_description : typeof d?.error === 'string' ? d.error : JSON.stringify(json)
}

/**
 * `revoke --file`: one POST body a line (JSON lines; blank lines and `#` comments skipped), sent in
 * order, each answered on its own line by its line number, so an incident's list can be fixed and
 * rerun. A line the server refuses does not stop the rest; any failure makes the exit code 1.
 */
async function revokeFile(path: string, env: Env): Promise<void> {
  const { readFileSync } = await import('node:fs')
  let text: string
  try {
    text = readFileSync(path === '-' ? 0 : path, 'utf8')
  } catch (err) {
    return die(`revoke: cannot read ${path}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`)
  }
  let ok = 0
  let failed = 0
  const lines = text.split(/\r?\n/)
  for (const [i, raw] of lines.entries()) {
    const line = raw.trim()
    if (line === '' || line.startsWith('#')) continue
    const answer = (verdict: string) => process.stdout.write(`line ${i + 1}: ${verdict}\n`)
    let body: unknown
    try {
      body = JSON.parse(line)
    } catch {
      failed++
      answer('error: not valid JSON')
      continue
    }
    if (typeof body !== 'object' || body === null || Array.isArray(body)) {
      failed++
      answer('error: a line must be a JSON object, as the POST /v1/revocations body')
      continue
    }
    try {
      const { status, json } = await adminCall(env, 'POST', '/v1/revocations', body)
      if (status === 201) {
        ok++
        const e = json as { claim: string; value: string; iss: string | null }
        answer(`ok ${printable(e.claim)}=${printable(e.value)}${e.iss === null ? '' : ` (iss ${printable(e.iss)})`}`)
      } else {
        failed++
        answer(`error (${status}): ${printable(description(json))}`)
      }
    } catch (err) {
      if (!(err instanceof Unreachable)) throw err
      failed++
      answer(`error: ${err.message}`)
    }
  }
  process.stdout.write(`${ok} revoked, ${failed} failed\n`)
  if (failed > 0) process.exitCode = 1
}

interface ListedEntry {
  claim: string
  value: string
  iss: string | null
  issued_before: number
  expires_at: number
  reason: string
  by: string
}

/** `revocations`: every page of GET /v1/revocations, as a table or (--json) one JSON array. */
async function runRevocations(args: string[], env: Env): Promise<void> {
  const f = flags(args, {
    claim: { type: 'string' },
    iss: { type: 'string' },
    'reason-contains': { type: 'string' },
    json: { type: 'boolean' },
    'page-size': { type: 'string' },
  })
  const pageSize = Number(f['page-size'] ?? 500)
  if (!Number.isInteger(pageSize) || pageSize < 1 || pageSize > 1000) die('revocations: --page-size must be a whole number from 1 to 1000')
  const query = new URLSearchParams({ limit: String(pageSize) })
  if (f.claim !== undefined) query.set('claim', f.claim as string)
  if (f.iss !== undefined) query.set('iss', f.iss as string)
  if (f['reason-contains'] !== undefined) query.set('reason_contains', f['reason-contains'] as string)
  const entries: ListedEntry[] = []
  for (let cursor: string | null = null, first = true; first || cursor !== null; first = false) {
    if (cursor !== null) query.set('cursor', cursor)
    const { status, json } = await adminRequest(env, 'GET', `/v1/revocations?${query}`)
    if (status !== 200) die(`revocations failed (${status}): ${description(json)}`, 1)
    const page = json as { revocations: ListedEntry[]; next_cursor: string | null }
    entries.push(...page.revocations)
    cursor = page.next_cursor
  }
  if (f.json) {
    process.stdout.write(`${JSON.stringify(entries)}\n`)
    return
  }
  if (entries.length === 0) {
    process.stdout.write('no active revocations\n')
    return
  }
  const order = (e: ListedEntry) => `${e.claim}\u0000${e.value}\u0000${e.iss ?? ''}`
  entries.sort((a, b) => (order(a) < order(b) ? -1 : order(a) > order(b) ? 1 : 0))
  const time = (s: number) => new Date(s * 1000).toISOString().replace('.000Z', 'Z')
  const rows = [
    ['CLAIM', 'VALUE', 'ISSUER', 'T', 'EXPIRES', 'REASON', 'BY'],
    ...entries.map((e) => [e.claim, e.value, e.iss ?? '*', time(e.issued_before), time(e.expires_at), e.reason, e.by].map(printable)),
  ]
  const widths = rows[0]!.map((_, col) => Math.max(...rows.map((row) => row[col]!.length)))
  const text = rows.map((row) => row.map((cell, col) => (col === row.length - 1 ? cell : cell.padEnd(widths[col]!))).join('  ')).join('\n')
  process.stdout.write(`${text}\n`)
}

/**
 * A value from the set as it may be shown on a terminal: entries hold any text an admin wrote, so
 * control characters (an escape sequence could rewrite the screen) are shown escaped.
 */
function printable(text: string): string {
  return text.replace(/[\p{Cc}\u2028\u2029\u202a-\u202e\u2066-\u2069]/gu, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`)
}
