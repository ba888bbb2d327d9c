// The audit log's guarantees, through a real `lapse proxy` process and its real stdout (a pipe):
// one whole JSON line per decision; the lines of requests answered just before SIGTERM are on
// stdout when the process has exited; with a stdout nobody reads, Lapse keeps answering, holds at
// most LAPSE_LOG_BUFFER_BYTES, drops and counts the rest (lapse_log_lines_dropped_total), and
// once read again writes whole lines; and SIGTERM does not wait for a stdout that never drains.
// docs/operations.md#audit-log. (A process that crashes: test/telemetry/line-sink-exit.test.ts.)
import { spawn } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { Agent, request } from 'node:http'
import { fileURLToPath } from 'node:url'
import t, { type Test } from 'tap'
import { send, waitFor } from '../fixtures/app.js'
import { startChildProxy } from '../fixtures/child-proxy.js'
import { AUDIENCE, ISSUER, testKeys } from '../fixtures/keys.js'
import { freePort } from '../fixtures/redis-server.js'
import { startUpstream } from '../fixtures/upstream.js'

const BIN = fileURLToPath(new URL('../../bin/lapse.js', import.meta.url))

async function settings(t: Test): Promise<Record<string, string>> {
  const upstream = await startUpstream()
  t.teardown(() => upstream.close())
  const keys = await testKeys()
  return {
    LAPSE_UPSTREAM: upstream.url,
    LAPSE_ISSUER: ISSUER,
    LAPSE_AUDIENCE: AUDIENCE,
    LAPSE_JWKS_FILE: keys.jwksPath,
    LAPSE_ROUTES: JSON.stringify([{ path: '/orders/**', scopes: ['orders:read'] }]),
  }
}

/** GETs over `connections` kept-alive connections; resolves with every status, in request order. */
async function load(t: Test, base: string, requests: Array<{ path: string; token?: string }>, connections = 10): Promise<number[]> {
  const agent = new Agent({ keepAlive: true, maxSockets: connections })
  t.teardown(() => agent.destroy())
  const statuses = new Array<number>(requests.length)
  let next = 0
  const one = (i: number) =>
    new Promise<number>((resolve, reject) => {
      const { path, token } = requests[i]!
      const req = request(`${base}${path}`, { agent, headers: token ? { authorization: `Bearer ${token}` } : {} }, (res) => {
        res.resume()
        res.on('end', () => resolve(res.statusCode ?? 0))
        res.on('error', reject)
      })
      req.on('error', reject)
      req.end()
    })
  await Promise.all(
    Array.from({ length: connections }, async () => {
      while (next < requests.length) {
        const i = next++
        statuses[i] = await one(i)
      }
    }),
  )
  return statuses
}

type Line = Record<string, unknown>

/** Every line of `text`, parsed; fails the test on a line that is not whole JSON. */
function parse(t: Test, text: string): Line[] {
  const lines = text.split('\n')
  t.equal(lines.pop(), '', 'the output ends with a whole line')
  const parsed: Line[] = []
  for (const l of lines) {
    try {
      parsed.push(JSON.parse(l) as Line)
    } catch {
      t.fail(`not a whole JSON line: ${l.slice(0, 200)}`)
    }
  }
  return parsed
}

/** 150 allows, each with a token of its own (its jti names its line), and 50 denials, each on a path of its own. */
async function mixed(): Promise<Array<{ path: string; token?: string; jti?: string }>> {
  const keys = await testKeys()
  const out: Array<{ path: string; token?: string; jti?: string }> = []
  for (let i = 0; i < 200; i++) {
    if (i % 4 === 3) out.push({ path: `/orders/denied-${i}` })
    else {
      const jti = `jti-${i}`
      out.push({ path: `/orders/${i}`, token: await keys.mint({ jti }), jti })
    }
  }
  return out
}

const TIME = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/

/** What is wrong with `l` as the line of `r`; nothing when it is right. */
function problems(l: Line, r: { path: string; jti?: string }): string[] {
  const want: Line = {
    level: 'info',
    service: 'lapse',
    audit: 'decision',
    route: '/orders/**',
    method: 'GET',
    remote: '127.0.0.1',
    msg: 'decision',
    ...(r.jti ? { decision: 'allow', reason: 'ok', status: 200, jti: r.jti } : { decision: 'deny', reason: 'missing_token', status: 401 }),
  }
  const out = Object.entries(want)
    .filter(([k, v]) => l[k] !== v)
    .map(([k]) => `${r.path}: ${k} is ${JSON.stringify(l[k])}`)
  if (typeof l.time !== 'string' || !TIME.test(l.time)) out.push(`${r.path}: time ${JSON.stringify(l.time)}`)
  if (typeof l.latency_ms !== 'number') out.push(`${r.path}: no latency_ms`)
  if (r.jti && !(typeof l.sub === 'string' && typeof l.iat === 'number' && typeof l.exp === 'number'))
    out.push(`${r.path}: no sub, iat, exp`)
  return out
}

function assertOneLineEach(t: Test, decisions: Line[], requests: Array<{ path: string; jti?: string }>) {
  t.equal(decisions.length, requests.length, 'as many decision lines as requests')
  const wrong: string[] = []
  for (const r of requests) {
    const mine = decisions.filter((l) => l.path === r.path)
    if (mine.length !== 1) wrong.push(`${r.path}: ${mine.length} lines`)
    else wrong.push(...problems(mine[0]!, r))
  }
  t.same(wrong, [], 'one line for each request, with its fields')
}

t.test('every decision gets exactly one whole JSON line on stdout', async (t) => {
  const lapse = await startChildProxy(t, await settings(t))
  const requests = await mixed()
  const statuses = await load(t, lapse.url, requests)
  t.same(
    statuses,
    requests.map((r) => (r.token ? 200 : 401)),
    'every request answered',
  )
  const written = () =>
    lapse
      .output()
      .split('\n')
      .filter((l) => l.includes('"audit":"decision"')).length
  // Within a flush delay (100 ms), with no signal to hurry them.
  await waitFor(() => written() >= requests.length || undefined, 'a line per request')
  t.equal((await lapse.stop()).code, 0)
  // Everything the process wrote, now that it has exited: no line more, none less, none broken.
  assertOneLineEach(
    t,
    parse(t, lapse.output()).filter((l) => l.audit === 'decision'),
    requests,
  )
})

t.test('SIGTERM right after the last answer: the lines of every request answered are on stdout after exit', async (t) => {
  const lapse = await startChildProxy(t, await settings(t))
  const requests = await mixed()
  await load(t, lapse.url, requests)
  // At once: lines of the last ~100 ms still wait in the sink.
  const exited = await lapse.stop('SIGTERM')
  t.equal(exited.code, 0, 'exit 0')
  assertOneLineEach(
    t,
    parse(t, lapse.output()).filter((l) => l.audit === 'decision'),
    requests,
  )
})

/** `lapse proxy` with stdout a pipe the test does not read until it calls `read()`; metrics on /metrics. */
async function startUnread(t: Test, env: Record<string, string>) {
  const [port, adminPort] = [await freePort(), await freePort()]
  const child = spawn(process.execPath, [BIN, 'proxy'], {
    env: {
      PATH: process.env.PATH ?? '',
      // Metrics on (Prometheus on the admin port), nothing exported.
      OTEL_TRACES_EXPORTER: 'none',
      OTEL_METRICS_EXPORTER: 'none',
      LAPSE_LISTEN: `127.0.0.1:${port}`,
      LAPSE_ADMIN_LISTEN: `127.0.0.1:${adminPort}`,
      LAPSE_DRAIN_DELAY: '0',
      ...env,
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)))
  t.teardown(async () => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL')
    await exited
  })
  let stderr = ''
  child.stderr.on('data', (c: Buffer) => {
    stderr += c.toString()
  })
  const adminUrl = `http://127.0.0.1:${adminPort}`
  await waitFor(
    () =>
      send(`${adminUrl}/healthz`).then(
        (r) => r.status === 200,
        () => false,
      ),
    'lapse proxy listening',
    10_000,
  ).catch((err: Error) => {
    throw new Error(`${err.message}\n${stderr}`)
  })
  let out = ''
  return {
    url: `http://127.0.0.1:${port}`,
    adminUrl,
    child,
    exited,
    /** Starts reading stdout; the text read so far. */
    read: () => {
      if (child.stdout.listenerCount('data') === 0)
        child.stdout.on('data', (c: Buffer) => {
          out += c.toString()
        })
      return out
    },
    rssBytes: () => Number(/VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${child.pid}/status`, 'utf8'))![1]) * 1024,
  }
}

const dropped = async (adminUrl: string) => {
  const m = /^lapse_log_lines_dropped_total(?:\{[^}]*\})? (\d+)/m.exec((await send(`${adminUrl}/metrics`)).body)
  return m ? Number(m[1]) : undefined
}

t.test(
  'a stdout nobody reads: Lapse keeps answering, holds at most the buffer, counts what it drops; read again, whole lines',
  async (t) => {
    const CAP = 65536
    const lapse = await startUnread(t, { ...(await settings(t)), LAPSE_LOG_BUFFER_BYTES: String(CAP) })
    const token = await (await testKeys()).mint()
    // About 1 MB of audit lines: many times the buffer and the pipe.
    const N = 3000
    const statuses = await load(
      t,
      lapse.url,
      Array.from({ length: N }, (_, i) => ({ path: `/orders/${i}`, token })),
    )
    t.ok(
      statuses.every((s) => s === 200),
      'every request answered while stdout took nothing',
    )
    const rss = lapse.rssBytes()
    t.ok(rss < 256 * 1024 * 1024, `RSS stays bounded (${Math.round(rss / 1048576)} MiB)`)
    const lost = await dropped(lapse.adminUrl)
    t.ok(lost !== undefined && lost > 0, `lapse_log_lines_dropped_total counts the dropped lines (${lost})`)

    // Read again: what was held comes out, then the notice that dropping ended.
    await waitFor(() => /stdout takes lines again/.test(lapse.read()) || undefined, 'the notice that stdout takes lines again', 10_000)
    const text = lapse.read()
    const lines = parse(t, text.slice(0, text.lastIndexOf('\n') + 1))
    const decisions = lines.filter((l) => l.audit === 'decision')
    t.equal(decisions.length + lost!, N, 'every decision is either on stdout or counted as dropped')
    t.ok(
      decisions.every((l) => l.decision === 'allow' && typeof l.path === 'string'),
      'the lines that come out are whole decision lines',
    )
    const held = decisions.reduce((n, l) => n + JSON.stringify(l).length + 1, 0)
    // The buffer, the pipe's 64 KiB and what this process read ahead before it stopped reading.
    t.ok(held <= CAP + 256 * 1024, `what was held is bounded by the buffer (${held} bytes of lines)`)
    const warnings = lines.filter((l) => l.log === 'stdout')
    t.match(warnings[0], { level: 'warn', buffer_bytes: CAP, msg: /stdout takes no lines/ }, 'a warning when dropping started')
    t.match(warnings.at(-1), { level: 'warn', msg: /stdout takes lines again/ }, 'one when it ended')
    t.equal(
      warnings.reduce((n, l) => n + (typeof l.dropped === 'number' ? l.dropped : 0), 0),
      lost,
      'the warnings that dropping ended count every dropped line',
    )
    t.equal(await dropped(lapse.adminUrl), lost, 'nothing more dropped once read')
  },
)

t.test('SIGTERM while stdout takes nothing: Lapse still exits 0', async (t) => {
  // A shutdown timeout longer than this test's: an exit that waited for stdout would time the test out.
  const lapse = await startUnread(t, { ...(await settings(t)), LAPSE_LOG_BUFFER_BYTES: '65536', LAPSE_SHUTDOWN_TIMEOUT: '300' })
  t.setTimeout(60_000)
  const token = await (await testKeys()).mint()
  await load(
    t,
    lapse.url,
    Array.from({ length: 1000 }, (_, i) => ({ path: `/orders/${i}`, token })),
  )
  lapse.child.kill('SIGTERM')
  t.equal(await lapse.exited, 0)
})
