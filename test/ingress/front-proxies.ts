// Real front proxies for the decision API: nginx and Caddy started on free loopback ports from
// the shipped files in deploy/, rendered with the test's ports, in front of a recording upstream
// and a Lapse that runs as a decision service only.
//
//   const lapse = await startDecisionService(t)
//   const front = await startNginx(t, lapse)      // or startCaddy(t, lapse); skipped when not installed
//   const res = await send(`${front.url}/orders/1`, { headers: [bearer(token)] })
import { spawn, spawnSync } from 'node:child_process'
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { createServer, connect } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { Test } from 'tap'
import { manualClock } from '../../src/core/clock.js'
import { runApp, waitFor, type Lapse } from '../fixtures/app.js'
import { GUARDED_ROUTES, T0_MS } from '../hardening/helpers.js'

export const DECISION_TOKEN = 'test-decision-token-0123456789'
const DEPLOY = join(import.meta.dirname, '..', '..', 'deploy')

const find = (name: string, paths: readonly string[]): string | undefined =>
  paths.find((p) => existsSync(p)) ??
  (spawnSync('sh', ['-c', `command -v ${name}`])
    .stdout.toString()
    .trim() ||
    undefined)

export const NGINX = find('nginx', ['/usr/sbin/nginx', '/usr/local/sbin/nginx', '/usr/local/nginx/sbin/nginx'])
export const CADDY = find('caddy', ['/usr/bin/caddy', '/usr/local/bin/caddy'])

export const freePort = () =>
  new Promise<number>((resolve) => {
    const s = createServer().listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port
      s.close(() => resolve(port))
    })
  })

const accepting = (port: number) =>
  new Promise<boolean>((resolve) => {
    const s = connect(port, '127.0.0.1')
    s.once('connect', () => (s.destroy(), resolve(true)))
    s.once('error', () => resolve(false))
  })

/** A shipped file with its {{PLACEHOLDERS}} filled in; a placeholder left over is a test bug. */
export function render(file: string, values: Readonly<Record<string, string>>): string {
  const text = readFileSync(join(DEPLOY, file), 'utf8').replace(/\{\{([A-Z_]+)\}\}/g, (m, name: string) => values[name] ?? m)
  const left = /\{\{[A-Z_]+\}\}/.exec(text)
  if (left) throw new Error(`${file}: ${left[0]} was not filled in`)
  return text
}

/** Lapse as a decision service only (no LAPSE_UPSTREAM), GUARDED_ROUTES unless given, clock at T0; its recording upstream is the front proxy's. */
export function startDecisionService(
  t: Test,
  env: Record<string, string | undefined> = {},
  routes: readonly object[] = GUARDED_ROUTES,
): Promise<Lapse> {
  return runApp(t, {
    routes,
    clock: manualClock(T0_MS),
    env: {
      LAPSE_UPSTREAM: undefined,
      LAPSE_LISTEN: undefined,
      LAPSE_DECISION_LISTEN: '127.0.0.1:0',
      LAPSE_DECISION_TOKEN: DECISION_TOKEN,
      ...env,
    },
  })
}

export interface Front {
  readonly url: string
  readonly port: number
}

const portOf = (url: string) => new URL(url).port

async function run(
  t: Test,
  what: string,
  bin: string,
  args: string[],
  port: number,
  dir: string,
  env: NodeJS.ProcessEnv = process.env,
): Promise<Front> {
  const child = spawn(bin, args, { stdio: ['ignore', 'ignore', 'pipe'], env })
  let stderr = ''
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()))
  t.teardown(async () => {
    if (child.exitCode === null && child.signalCode === null) {
      const exited = new Promise((r) => child.once('exit', r))
      child.kill('SIGTERM')
      await exited
    }
    rmSync(dir, { recursive: true, force: true })
  })
  await waitFor(async () => child.exitCode !== null || (await accepting(port)), `${what} to listen`, 15_000)
  if (child.exitCode !== null) throw new Error(`${what} did not start: ${stderr}`)
  return { url: `http://127.0.0.1:${port}`, port }
}

/** What deploy/nginx/example-mtls.conf needs: the server's certificate and the CA client certificates are verified against. */
export interface NginxTls {
  readonly certFile: string
  readonly keyFile: string
  readonly clientCaFile: string
}

/**
 * nginx with deploy/nginx/example.conf and the two files it includes, as shipped; with `tls`,
 * example-mtls.conf instead (HTTPS, client certificates verified and handed to Lapse).
 */
export async function startNginx(t: Test, lapse: Lapse, tls?: NginxTls): Promise<Front> {
  const dir = mkdtempSync(join(tmpdir(), 'lapse-nginx-'))
  const port = await freePort()
  const values = {
    LISTEN: `127.0.0.1:${port}`,
    UPSTREAM: `127.0.0.1:${lapse.upstream.port}`,
    LAPSE_DECISION_ADDRESS: `127.0.0.1:${portOf(lapse.decisionUrl!)}`,
    LAPSE_DECISION_TOKEN: DECISION_TOKEN,
    ...(tls ? { SERVER_CERT_FILE: tls.certFile, SERVER_KEY_FILE: tls.keyFile, CLIENT_CA_FILE: tls.clientCaFile } : {}),
  }
  for (const file of ['lapse-decision.conf', 'lapse-protect.conf']) writeFileSync(join(dir, file), render(`nginx/${file}`, values))
  writeFileSync(join(dir, 'example.conf'), render(tls ? 'nginx/example-mtls.conf' : 'nginx/example.conf', values))
  const temp = ['client_body', 'proxy', 'fastcgi', 'uwsgi', 'scgi'].map((k) => `${k}_temp_path ${join(dir, k)};`).join(' ')
  writeFileSync(
    join(dir, 'nginx.conf'),
    `master_process off;
events { worker_connections 64; }
http {
  access_log off;
  ${temp}
  include ${join(dir, 'example.conf')};
}
`,
  )
  return run(
    t,
    'nginx',
    NGINX!,
    ['-p', dir, '-c', join(dir, 'nginx.conf'), '-g', `daemon off; pid ${join(dir, 'nginx.pid')}; error_log stderr;`],
    port,
    dir,
  )
}

/** Caddy with deploy/caddy/Caddyfile, as shipped. */
export async function startCaddy(t: Test, lapse: Lapse): Promise<Front> {
  const dir = mkdtempSync(join(tmpdir(), 'lapse-caddy-'))
  const port = await freePort()
  const values = {
    SITE: `http://:${port}`,
    UPSTREAM: `127.0.0.1:${lapse.upstream.port}`,
    LAPSE_DECISION_ADDRESS: `127.0.0.1:${portOf(lapse.decisionUrl!)}`,
    LAPSE_DECISION_TOKEN: DECISION_TOKEN,
  }
  // The test's Caddy has no admin endpoint and no automatic HTTPS, and binds loopback only: global
  // options ahead of the site, which is any host name on the test's port.
  const caddyfile = join(dir, 'Caddyfile')
  writeFileSync(caddyfile, `{\n\tadmin off\n\tauto_https off\n\tdefault_bind 127.0.0.1\n}\n\n${render('caddy/Caddyfile', values)}`)
  const env = { ...process.env, HOME: dir, XDG_DATA_HOME: join(dir, 'data'), XDG_CONFIG_HOME: join(dir, 'config') }
  return run(t, 'caddy', CADDY!, ['run', '--config', caddyfile, '--adapter', 'caddyfile'], port, dir, env)
}
