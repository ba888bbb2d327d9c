// Issue 21 item 1: a WebSocket upgrade that declares a body. Lapse used to forward its
// Content-Length but never its body, and then reuse the upstream connection: the next upgrade on
// it lost its first bytes and the rest ran as a request of the client's choosing, anonymously and
// unaudited. Such an upgrade is now refused with 400 before any decision, and a connection that
// carried an upgrade is never reused. Run against a recording upstream and against a real nginx.
import { spawn, spawnSync } from 'node:child_process'
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { connect, createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t, { type Test } from 'tap'
import { decisions, waitFor } from '../fixtures/app.js'
import { keepAliveAnswer, startRawUpstream, type RawRequest } from '../fixtures/raw-upstream.js'
import { rawHttp, sleep, startGuarded } from './helpers.js'

const KEY = 'dGhlIHNhbXBsZSBub25jZQ=='
const upgradeHead = (path: string, extra = '') =>
  `GET ${path} HTTP/1.1\r\nHost: lapse.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: ${KEY}\r\n${extra}\r\n`
/** Connection 2 of the issue: its last header's value is the request to smuggle. */
const SMUGGLER = upgradeHead('/public/ws2', 'X-A: GET /admin/secret HTTP/1.1\r\n')

/** As the nginx: /admin/secret answers 200 SECRET, anything else 426, keeping the connection. */
const likeNginx = (req: RawRequest) =>
  req.path === '/admin/secret' ? keepAliveAnswer('200 OK', 'SECRET') : keepAliveAnswer('426 Upgrade Required', 'upgrade required')

/**
 * How many bytes Lapse writes upstream before the smuggled request line of SMUGGLER: the
 * Content-Length that makes connection 1 swallow exactly that much of connection 2 (160 in the issue).
 */
async function smugglingOffset(t: Test): Promise<number> {
  const probe = await startRawUpstream(t, likeNginx)
  const lapse = await startGuarded(t, { LAPSE_UPSTREAM: probe.url })
  const res = await rawHttp(lapse.url, SMUGGLER)
  t.equal(res.status, 426, 'the probe reaches the upstream')
  const text = probe.connections[0]!.text()
  const offset = text.indexOf('GET /admin/secret') - text.indexOf('GET /public/ws2')
  t.ok(offset > 0, `Lapse writes ${offset} bytes before the smuggled request line`)
  await lapse.close()
  return offset
}

t.test('the two-connection sequence of the issue: connection 1 gets 400, /admin/secret never reaches the upstream', async (t) => {
  const offset = await smugglingOffset(t)
  const up = await startRawUpstream(t, likeNginx)
  const lapse = await startGuarded(t, { LAPSE_UPSTREAM: up.url })

  const first = await rawHttp(lapse.url, upgradeHead('/public/nows', `Content-Length: ${offset}\r\n`))
  t.equal(first.status, 400, 'an upgrade declaring a body is refused')
  t.match(first.head, /www-authenticate: Bearer realm="lapse", error="invalid_request"/i)
  t.match(first.body, /"error":"invalid_request"/)
  t.ok(first.closedByServer, 'and its connection closed')
  await sleep(50)
  const second = await rawHttp(lapse.url, SMUGGLER)
  t.equal(second.status, 426, 'connection 2 gets the upstream answer to its own upgrade')
  t.notMatch(second.body, /SECRET/, 'the client never reads the admin answer')

  t.notOk(
    up.requests.some((r) => r.path === '/admin/secret'),
    'the upstream never saw GET /admin/secret',
  )
  t.notOk(
    up.requests.some((r) => r.path === '/public/nows'),
    'nor the refused upgrade',
  )
  t.same(
    up.requests.map((r) => r.path),
    ['/public/ws2'],
  )
  const audit = await waitFor(
    () => decisions(lapse).find((l) => l.path === '/public/nows' || l.reason === 'invalid_request'),
    'the audit line of the refusal',
  )
  t.match(audit, { decision: 'deny', reason: 'invalid_request', status: 400 })
})

t.test('the same with Transfer-Encoding: chunked, with or without a body: 400, the upstream untouched', async (t) => {
  const up = await startRawUpstream(t, likeNginx)
  const lapse = await startGuarded(t, { LAPSE_UPSTREAM: up.url })
  for (const body of ['', '0\r\n\r\n', '1e\r\nGET /admin/secret HTTP/1.1\r\n\r\n\r\n0\r\n\r\n']) {
    const res = await rawHttp(lapse.url, upgradeHead('/public/nows', 'Transfer-Encoding: chunked\r\n') + body)
    t.equal(res.status, 400, `chunked, body ${JSON.stringify(body)}`)
    t.match(res.body, /"error":"invalid_request"/)
  }
  await sleep(50)
  const second = await rawHttp(lapse.url, SMUGGLER)
  t.notMatch(second.body, /SECRET/)
  t.same(
    up.requests.map((r) => r.path),
    ['/public/ws2'],
    'only the innocent upgrade reached the upstream',
  )
  t.equal(decisions(lapse).filter((l) => l.reason === 'invalid_request').length, 3, 'each refusal audited')
})

t.test('Content-Length: 0 is no body: the upgrade is forwarded', async (t) => {
  const up = await startRawUpstream(t, likeNginx)
  const lapse = await startGuarded(t, { LAPSE_UPSTREAM: up.url })
  const res = await rawHttp(lapse.url, upgradeHead('/public/nows', 'Content-Length: 0\r\n'))
  t.equal(res.status, 426)
  t.same(
    up.requests.map((r) => r.path),
    ['/public/nows'],
  )
})

t.test('an upstream connection that carried an upgrade answered with 426 is closed, never reused', async (t) => {
  const up = await startRawUpstream(t, likeNginx)
  const lapse = await startGuarded(t, { LAPSE_UPSTREAM: up.url })
  for (const path of ['/public/a', '/public/b', '/public/c']) {
    const res = await rawHttp(lapse.url, upgradeHead(path))
    t.equal(res.status, 426, path)
    await sleep(20)
  }
  t.equal(up.connections.length, 3, 'each upgrade on its own upstream connection')
  t.same(
    up.connections.map((c) => c.requests.length),
    [1, 1, 1],
  )
  await waitFor(() => up.connections.every((c) => c.closed), 'Lapse to close every upstream connection')
  t.pass('every upstream connection closed by Lapse')
})

// --- against a real nginx ------------------------------------------------------------------------

const NGINX =
  ['/usr/sbin/nginx', '/usr/local/sbin/nginx', '/usr/local/nginx/sbin/nginx'].find((p) => existsSync(p)) ??
  (spawnSync('sh', ['-c', 'command -v nginx']).stdout.toString().trim() || undefined)

const freePort = () =>
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

/** nginx on a free loopback port with the locations; its access log names each request's connection. */
async function startNginx(t: Test, bin: string) {
  const dir = mkdtempSync(join(tmpdir(), 'lapse-nginx-'))
  const port = await freePort()
  const temp = ['client_body', 'proxy', 'fastcgi', 'uwsgi', 'scgi'].map((k) => `${k}_temp_path ${join(dir, k)};`).join(' ')
  const conf = join(dir, 'nginx.conf')
  writeFileSync(
    conf,
    `master_process off;
events { worker_connections 64; }
http {
  log_format conn '$connection $request $status';
  access_log ${join(dir, 'access.log')} conn;
  ${temp}
  server {
    listen 127.0.0.1:${port};
    location /public/ { return 426 'upgrade required'; }
    location = /admin/secret { return 200 'SECRET'; }
  }
}
`,
  )
  const child = spawn(bin, ['-p', dir, '-c', conf, '-g', `daemon off; pid ${join(dir, 'nginx.pid')}; error_log stderr;`], {
    stdio: ['ignore', 'ignore', 'pipe'],
  })
  let stderr = ''
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()))
  t.teardown(async () => {
    if (child.exitCode === null) {
      const exited = new Promise((r) => child.once('exit', r))
      child.kill('SIGTERM')
      await exited
    }
    rmSync(dir, { recursive: true, force: true })
  })
  await waitFor(async () => child.exitCode !== null || (await accepting(port)), 'nginx to listen')
  if (child.exitCode !== null) throw new Error(`nginx did not start: ${stderr}`)
  return {
    url: `http://127.0.0.1:${port}`,
    accessLog: () => (existsSync(join(dir, 'access.log')) ? readFileSync(join(dir, 'access.log'), 'utf8') : ''),
  }
}

t.test(
  'the two-connection sequence against a real nginx: its access log never shows /admin/secret',
  { skip: NGINX ? false : "no nginx binary found (.ci/run installs Debian's nginx-light)" },
  async (t) => {
    const offset = await smugglingOffset(t)
    const nginx = await startNginx(t, NGINX!)
    const lapse = await startGuarded(t, { LAPSE_UPSTREAM: nginx.url })

    // Warm the upstream connection first, as any earlier user would have.
    const before = await rawHttp(lapse.url, upgradeHead('/public/warm'))
    t.equal(before.status, 426, 'nginx answers the upgrade 426')
    await sleep(50)
    const first = await rawHttp(lapse.url, upgradeHead('/public/nows', `Content-Length: ${offset}\r\n`))
    t.equal(first.status, 400, 'connection 1 is refused')
    await sleep(50)
    const second = await rawHttp(lapse.url, SMUGGLER)
    t.notMatch(second.body, /SECRET/, 'the client never reads SECRET')
    t.equal(second.status, 426)

    const log = await waitFor(
      () => (/\/public\/ws2|\/admin\/secret/.test(nginx.accessLog()) ? nginx.accessLog() : undefined),
      'nginx to log connection 2',
    )
    t.notMatch(log, /\/admin\/secret/, 'nginx never ran GET /admin/secret')
    t.notMatch(log, /\/public\/nows/, 'nor saw the refused upgrade')
    const connectionsOf = log
      .trim()
      .split('\n')
      .map((l) => l.split(' ')[0])
    t.equal(new Set(connectionsOf).size, connectionsOf.length, 'each upgrade came on its own nginx connection')
  },
)
