#!/usr/bin/env node
// The Lapse benchmark, one command: starts a stub upstream, the baselines, a private
// redis-server and Lapse in each configuration on loopback, drives every row with autocannon at
// a fixed concurrency for a bounded time over interleaved rounds, and prints the table, the
// targets of issue 7, and writes results/<date>-<commit>.json.
//
//   npm run bench                                   # every row, 3 s × 8 rounds
//   node run.mjs --duration 2 --rounds 1 --rows 1,2,3
//   node run.mjs --soak 600                         # row 5 (RS256) for 10 minutes: RSS flatness
//   node run.mjs --help
import { spawnSync } from 'node:child_process'
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs'
import { cpus, loadavg, tmpdir } from 'node:os'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import { request as httpsRequest } from 'node:https'
import { makeKeys, mintPool, mintToken } from './lib/keys.mjs'
import { makeDpopHolder, proofSigner } from './lib/dpop.mjs'
import { clientTls, makeBenchPki } from './lib/pki.mjs'
import { canPin, cpuMs, cpuSplitMs, killAllSync, machineBusyMs, rssKb, runJson } from './lib/proc.mjs'
import { appendResultsLog, checkTargets, formatChecks, formatTable, median, shouldRecord, summarize, updateReadme } from './lib/report.mjs'
import { formatMicro } from './micro/decision.bench.mjs'
import { adjacentGroups, defaultRowIds, defineRows } from './lib/rows.mjs'
import { createFleet, isLapseServer, lapseEntry } from './lib/servers.mjs'

const HELP = `usage: node run.mjs [options]

  --duration S      seconds measured per row and round (default 3)
  --rounds N        interleaved rounds; the table shows medians (default 8: enough for each
                    check's interval, which needs 5 or more)
  --connections C   concurrent keep-alive connections (default 10)
  --rate R          cap the load at R requests/s over all connections (default: as fast as
                    the server answers; the smoke test caps it so it does not starve other tests)
  --warmup S        unmeasured load before a row's first round (default duration/4, 1..3 s)
  --rows LIST       comma-separated row ids (default: all but 6c); see README.md
  --pool N          tokens per algorithm in row 5's pool (default 10000)
  --soak S          only row 5 (RS256) for S seconds, sampling Lapse's RSS (the flatness check);
                    with no --rows it has no table, so README.md and RESULTS.md stay as they are
  --engine E        Lapse's forwarding engine for row 2: http-proxy | undici (default: read from dist/)
  --results-dir D   where the JSON goes (default bench/results)
  --quiet-wait S    before each measurement wait while other work keeps the machine busy,
                    at most S seconds over the whole run (default 120; 0 never waits)
  --no-record       do not update README.md and RESULTS.md (the JSON is still written)
  --no-build        do not run the root build first (dist/ must be current)
  --no-pin          do not pin processes with taskset
  --micro-time MS   time per micro-benchmark round of the decision alone (default 500; 0 skips it)
  --cpu-prof        run Lapse and the floors under --cpu-prof; profiles go to bench/profiles/
  --against REF     A/B: also run every selected Lapse row on git commit REF (built in a temporary
                    copy that shares node_modules), as row "<id>@base" next to it in every round,
                    and print each pair's ratio per round; implies --no-record
  --keep            keep the run's temporary directory (keys, logs)
`

const benchDir = dirname(fileURLToPath(import.meta.url))
const root = resolve(benchDir, '..')
const PATH = '/v1/items'
const ISS = 'https://issuer.bench.lapse.test'
const AUD = 'bench-api'

const { values: args } = parseArgs({
  options: {
    duration: { type: 'string', default: '3' },
    rounds: { type: 'string', default: '8' },
    connections: { type: 'string', default: '10' },
    warmup: { type: 'string' },
    rate: { type: 'string' },
    'quiet-wait': { type: 'string', default: '120' },
    rows: { type: 'string' },
    pool: { type: 'string', default: '10000' },
    soak: { type: 'string' },
    engine: { type: 'string' },
    'results-dir': { type: 'string', default: join(benchDir, 'results') },
    'no-record': { type: 'boolean', default: false },
    'no-build': { type: 'boolean', default: false },
    'no-pin': { type: 'boolean', default: false },
    'micro-time': { type: 'string', default: '500' },
    'cpu-prof': { type: 'boolean', default: false },
    keep: { type: 'boolean', default: false },
    against: { type: 'string' },
    help: { type: 'boolean', short: 'h', default: false },
  },
})
if (args.help) {
  process.stdout.write(HELP)
  process.exit(0)
}

const int = (name, min, max) => {
  const n = Number(args[name])
  if (!Number.isInteger(n) || n < min || n > max) {
    process.stderr.write(`--${name} must be an integer in ${min}..${max}, got ${args[name]}\n`)
    process.exit(2)
  }
  return n
}
const settings = {
  durationS: int('duration', 1, 600),
  rounds: int('rounds', 1, 20),
  connections: int('connections', 1, 1000),
  pool: int('pool', 1, 100_000),
  soakS: args.soak === undefined ? 0 : int('soak', 10, 7200),
  microTimeMs: int('micro-time', 0, 10_000),
  rate: args.rate === undefined ? undefined : int('rate', 1, 1_000_000),
  quietWaitS: int('quiet-wait', 0, 3600),
}
// Other work above this share of the machine's CPU makes a measurement suspect (flagged), and
// above QUIET_SHARE before one starts makes the run wait (within --quiet-wait).
const NOISY_SHARE = 0.05
const QUIET_SHARE = 0.1
// Seconds of load (warm-up included) every row-7 instance gets before it is measured (settleSpansPaused).
const SETTLE_MIN_LOAD_S = 12
let quietBudgetMs = settings.quietWaitS * 1000
settings.warmupS = args.warmup === undefined ? Math.min(3, Math.max(1, Math.round(settings.durationS / 4))) : int('warmup', 0, 60)

const log = (line) => process.stdout.write(`${line}\n`)
const sleep = (ms) => new Promise((r) => setTimeout(r, ms))

// ---- the machine and the commit ------------------------------------------------------------

function git(...gitArgs) {
  const r = spawnSync('git', gitArgs, { cwd: root, encoding: 'utf8' })
  return r.status === 0 ? r.stdout.trim() : undefined
}
function describeCommit() {
  const sha = git('rev-parse', '--short=10', 'HEAD')
  if (!sha) return 'uncommitted'
  const dirty = git('status', '--porcelain', '--untracked-files=no', '--', 'src', 'bin', 'package.json', 'package-lock.json')
  return dirty ? `${sha}-dirty` : sha
}
function cpuModel() {
  const model = cpus()[0]?.model?.trim()
  return model && model !== 'unknown' ? model : 'unknown CPU'
}
const cpuCount = cpus().length
const pinned = !args['no-pin'] && canPin(cpuCount)
// The load generator (and redis-server, standing in for a remote service) on CPU 0; the server
// under test and the upstream share CPU 1, like a sidecar shares its pod's cores.
const pin = pinned ? { loadgen: 0, redis: 0, servers: 1 } : { loadgen: undefined, redis: undefined, servers: undefined }
const pinningText = pinned
  ? 'pinned with taskset: load generator and redis-server on CPU 0, upstream and server under test on CPU 1'
  : `not pinned (${args['no-pin'] ? '--no-pin' : cpuCount < 2 ? 'one CPU' : 'taskset unavailable'})`
const now = new Date()
const meta = {
  date: now.toISOString(),
  commit: describeCommit(),
  node: process.version,
  cpu: { model: cpuModel(), count: cpuCount },
  pinning: { enabled: pinned, ...pin },
  pinningText,
  pinningShort: pinned ? 'taskset 0/1' : 'none',
  settings,
  // Other work on the machine moves every row; the load averages tell whether it was quiet.
  loadavgAtStart: loadavg().map((x) => Number(x.toFixed(2))),
}

// ---- what to run ---------------------------------------------------------------------------

/**
 * Which engine Lapse forwards plain HTTP with, read from its build, so row 2 is the floor on the
 * same engine. Lapse keeps http-proxy for WebSocket upgrades, which no row measures: undici in the
 * build means undici for HTTP.
 */
function detectEngine() {
  if (args.engine) return args.engine
  const dir = join(root, 'dist', 'http')
  if (!existsSync(dir)) return 'http-proxy'
  const text = readdirSync(dir)
    .filter((f) => f.endsWith('.js'))
    .map((f) => readFileSync(join(dir, f), 'utf8'))
    .join('\n')
  const usesUndici = /from ['"]undici['"]/.test(text)
  return usesUndici ? 'undici' : 'http-proxy'
}

/** Whether Lapse's build starts an OpenTelemetry SDK at all (row 7 means nothing without one). */
function detectTelemetrySdk() {
  const dir = join(root, 'dist')
  if (!existsSync(dir)) return false
  const files = readdirSync(dir, { recursive: true }).filter((f) => String(f).endsWith('.js'))
  return files.some((f) => /@opentelemetry\/sdk-(node|trace-node|trace-base)/.test(readFileSync(join(dir, String(f)), 'utf8')))
}

function buildLapse(dir = root) {
  log(`building Lapse (npm run build in ${dir}) …`)
  const r = spawnSync('npm', ['run', 'build', '--silent'], { cwd: dir, encoding: 'utf8', timeout: 300_000 })
  if (r.status !== 0) return `build failed in ${dir}: ${(r.stdout + r.stderr).trim().split('\n').slice(-15).join('\n')}`
  return undefined
}

/**
 * The tree of commit `ref`, built, for the "@base" rows of an A/B run. It shares the root's
 * node_modules: an A/B run compares our code, and a commit that changes dependencies should be
 * compared by two full runs instead (noted in the log).
 */
function prepareBase(ref) {
  const sha = git('rev-parse', '--short=10', `${ref}^{commit}`)
  if (!sha) throw new Error(`--against ${ref}: not a commit`)
  const dir = join(runDir, `base-${sha}`)
  mkdirSync(dir)
  const archive = spawnSync('sh', ['-c', `git archive ${sha} | tar -x -C '${dir}'`], { cwd: root, encoding: 'utf8' })
  if (archive.status !== 0) throw new Error(`--against ${ref}: git archive failed: ${archive.stderr}`)
  symlinkSync(join(root, 'node_modules'), join(dir, 'node_modules'))
  if (git('diff', '--quiet', sha, '--', 'package-lock.json') === undefined) {
    log(`! --against ${ref}: its package-lock.json differs; it runs with this tree's node_modules`)
  }
  const error = buildLapse(dir)
  if (error) throw new Error(`--against ${ref}: ${error}`)
  return { ref, sha, dir }
}

// ---- main ----------------------------------------------------------------------------------

const runDir = mkdtempSync(join(tmpdir(), 'lapse-bench-'))
const cpuProfDir = args['cpu-prof'] ? join(benchDir, 'profiles') : undefined
if (cpuProfDir) mkdirSync(cpuProfDir, { recursive: true })
let fleet
let failed = false

const onSignal = (sig) => {
  killAllSync()
  process.stderr.write(`\n${sig}: stopped, children killed\n`)
  process.exit(130)
}
process.on('SIGINT', onSignal)
process.on('SIGTERM', onSignal)
process.on('exit', killAllSync)

try {
  await main()
} catch (err) {
  failed = true
  process.stderr.write(`bench failed: ${err.stack ?? err}\n`)
} finally {
  await fleet?.close().catch(() => {})
  if (args.keep || failed) log(`run directory (keys, server logs): ${runDir}`)
  else rmSync(runDir, { recursive: true, force: true })
}
process.exit(failed ? 1 : 0)

async function main() {
  let buildError
  // Build before reading the engine from dist/.
  const preRows = args.rows ? args.rows.split(',') : undefined
  const mayNeedLapse = settings.soakS > 0 || !preRows || preRows.some((id) => /^[3457]/.test(id.trim()))
  if (mayNeedLapse && !args['no-build'] && existsSync(join(root, 'src'))) buildError = buildLapse()
  const base = args.against ? prepareBase(args.against) : undefined

  const engine = detectEngine()
  const rows = defineRows({ engine })
  const ids = args.rows
    ? args.rows
        .split(',')
        .map((s) => s.trim())
        .filter(Boolean)
    : settings.soakS > 0
      ? []
      : defaultRowIds(rows)
  const unknown = ids.filter((id) => !rows.some((r) => r.id === id))
  if (unknown.length) throw new Error(`unknown rows: ${unknown.join(', ')} (known: ${rows.map((r) => r.id).join(', ')})`)
  const selected = rows
    .filter((r) => ids.includes(r.id))
    .flatMap((r) =>
      base && isLapseServer(r.server)
        ? [r, { ...r, id: `${r.id}@base`, label: `${r.label} @ ${base.sha}`, server: `${r.server}@base`, pairOf: r.id }]
        : [r],
    )
  if (base) meta.against = { ref: base.ref, commit: base.sha }
  meta.engine = engine
  meta.telemetrySdk = detectTelemetrySdk()
  if (selected.some((r) => r.id === '7') && !meta.telemetrySdk) {
    log('! row 7: no OpenTelemetry SDK set-up found in dist/, so telemetry cannot be on: row 7 is row 3 again')
  }

  log(
    `Lapse bench — ${meta.date}, commit ${meta.commit}, Node ${meta.node}, ${cpuCount} × ${meta.cpu.model}, load average ${meta.loadavgAtStart.join(' ')}`,
  )
  log(`${pinningText}`)
  log(
    `${settings.connections} connections${settings.rate ? ` capped at ${settings.rate} req/s` : ''}, ${settings.durationS} s per row (warm-up ${settings.warmupS} s), ${settings.rounds} round(s); forwarding engine: ${engine}`,
  )

  // Tokens must outlive the whole run (soak included), inside Lapse's lifetime policy.
  const plannedS = selected.length * settings.rounds * (settings.durationS + 4) + settings.soakS + settings.quietWaitS + 120
  const ttlS = 600 + plannedS
  const maxLifetimeS = Math.max(3600, ttlS + 60)
  const keys = await makeKeys(runDir)
  const claims = { iss: ISS, aud: AUD, ttlS }
  const token = await mintToken(keys, 'RS256', claims)
  // Row 8: the proof key is the load generator's; the token names its thumbprint.
  const dpopHolder = selected.some((r) => r.auth === 'dpop') ? await makeDpopHolder(runDir) : undefined
  const dpopToken = dpopHolder ? await mintToken(keys, 'RS256', { ...claims, cnf: { jkt: dpopHolder.jkt } }) : undefined
  // Row 3m: certificates from openssl, and a token bound to the client certificate (RFC 8705).
  const pki = selected.some((r) => r.auth === 'mtls') ? makeBenchPki(runDir) : undefined
  const mtlsToken = pki ? await mintToken(keys, 'RS256', { ...claims, cnf: { 'x5t#S256': pki.thumbprint } }) : undefined
  const poolFiles = {}
  for (const alg of new Set(
    selected
      .filter((r) => r.auth === 'pool')
      .map((r) => r.alg)
      .concat(settings.soakS > 0 ? ['RS256'] : []),
  )) {
    const t0 = Date.now()
    const pool = await mintPool(keys, alg, settings.pool, claims)
    poolFiles[alg] = join(runDir, `pool-${alg}.json`)
    writeFileSync(poolFiles[alg], JSON.stringify(pool))
    log(`minted ${pool.length} ${alg} tokens in ${((Date.now() - t0) / 1000).toFixed(1)} s`)
  }

  fleet = createFleet({ root, baseRoot: base?.dir, benchDir, logDir: runDir, pin, keys, iss: ISS, aud: AUD, maxLifetimeS, cpuProfDir, pki })
  const upstream = await fleet.ensure('upstream')
  const expectedBody = await (await fetch(`${upstream.url}${PATH}`)).text()

  // Start every server now, one at a time, so no start competes with a measurement.
  const rowErrors = new Map()
  const servers = [...new Set(selected.map((r) => r.server).concat(settings.soakS > 0 ? ['lapse-verify'] : []))]
  const bootRssKb = {}
  for (const name of servers) {
    if (isLapseServer(name) && (buildError || !existsSync(lapseEntry(root)))) {
      rowErrors.set(name, buildError ?? `Lapse is not built: ${lapseEntry(root)} missing`)
      continue
    }
    try {
      const s = await fleet.ensure(name)
      if (isLapseServer(name)) bootRssKb[name] = rssKb(s.child.pid)
    } catch (err) {
      rowErrors.set(name, err.message)
    }
  }

  const headersFor = (row, i = 0) => {
    if (row.auth === 'token') return { authorization: `Bearer ${token}` }
    if (row.auth === 'mtls') return { authorization: `Bearer ${mtlsToken}` }
    if (row.auth === 'pool') return { authorization: `Bearer ${JSON.parse(readFileSync(poolFiles[row.alg], 'utf8'))[i]}` }
    if (row.auth === 'dpop') {
      const prove = proofSigner(JSON.parse(readFileSync(dpopHolder.keyFile, 'utf8')))
      return {
        authorization: `DPoP ${dpopToken}`,
        dpop: prove('GET', `${fleet.get(row.server).url}${row.path ?? PATH}`.replace(/[?#].*$/, ''), dpopToken),
      }
    }
    return {}
  }

  // One request per row before any load: a 200 with the upstream's body, or the row is void.
  for (const row of selected) {
    if (rowErrors.has(row.server)) continue
    const { url } = fleet.get(row.server)
    try {
      const res =
        row.auth === 'mtls'
          ? await probeTls(`${url}${row.path ?? PATH}`, headersFor(row), pki)
          : await fetch(`${url}${row.path ?? PATH}`, { headers: headersFor(row), signal: AbortSignal.timeout(5000) })
      const body = await res.text()
      if (res.status !== 200 || body !== expectedBody) {
        rowErrors.set(row.server, `probe answered ${res.status} ${res.headers.get('www-authenticate') ?? ''} ${body.slice(0, 200)}`)
      }
    } catch (err) {
      rowErrors.set(row.server, `probe failed: ${err.message}`)
    }
  }
  for (const [server, error] of rowErrors) log(`! ${server}: ${error.split('\n')[0]}`)

  const measurements = new Map(selected.map((r) => [r.id, []]))
  const memory = { samples: [] }

  /** Waits (within the run's budget) until other work leaves the machine mostly idle. */
  async function waitQuiet() {
    while (quietBudgetMs > 0) {
      const share = await foreignShareOver(1000)
      if (share === undefined || share < QUIET_SHARE) return
      log(`  … the machine is busy with other work (${(share * 100).toFixed(0)}% of its CPU); waiting`)
      const t0 = Date.now()
      await sleep(Math.min(4000, quietBudgetMs))
      quietBudgetMs -= Date.now() - t0 + 1000
    }
  }
  /** Share of all CPUs busy with anything but our processes over `ms`. */
  async function foreignShareOver(ms) {
    const ours0 = ourCpuMs()
    const busy0 = machineBusyMs()
    const t0 = Date.now()
    await sleep(ms)
    const busy1 = machineBusyMs()
    if (busy0 === undefined || busy1 === undefined) return undefined
    return Math.max(0, busy1 - busy0 - (ourCpuMs() - ours0)) / ((Date.now() - t0) * cpuCount)
  }
  const ourCpuMs = () => {
    const self = process.cpuUsage()
    return fleet.pids().reduce((sum, pid) => sum + (cpuMs(pid) ?? 0), (self.user + self.system) / 1000)
  }

  async function measure(row, durationS) {
    const { url, child, helper } = fleet.get(row.server)
    // A fixed-rate row keeps its rate unless --rate caps the whole run lower.
    const rate = Math.min(row.rate ?? Infinity, settings.rate ?? Infinity)
    const cfg = {
      url: `${url}${row.path ?? PATH}`,
      connections: settings.connections,
      durationS,
      rate: Number.isFinite(rate) ? rate : undefined,
    }
    if (row.auth === 'token') cfg.token = token
    if (row.auth === 'mtls') Object.assign(cfg, { token: mtlsToken, tls: pki })
    if (row.auth === 'pool') cfg.tokenFile = poolFiles[row.alg]
    if (row.auth === 'dpop') cfg.dpop = { token: dpopToken, keyFile: dpopHolder.keyFile }
    const cfgPath = join(runDir, `load-${row.id}.json`)
    writeFileSync(cfgPath, JSON.stringify(cfg))
    // Row 5's memory figures are this tree's: an A/B run's base twin is not sampled.
    const sampleRss = row.auth === 'pool' && !row.pairOf
    const rss = []
    const timer = sampleRss ? setInterval(() => rss.push(rssKb(child.pid)), 1000) : undefined
    if (sampleRss) rss.push(rssKb(child.pid))
    const upstreamPid = fleet.get('upstream').child.pid
    const before = {
      server: cpuMs(child.pid),
      split: cpuSplitMs(child.pid),
      upstream: cpuMs(upstreamPid),
      helper: helper && cpuMs(helper.pid),
      ours: ourCpuMs(),
      machine: machineBusyMs(),
      wallMs: Date.now(),
    }
    try {
      const m = await runJson(process.execPath, [join(benchDir, 'lib', 'load.mjs'), cfgPath], {
        cpu: pin.loadgen,
        timeoutMs: (durationS + 60) * 1000,
      })
      // CPU time per request of the server under test (all its threads): steadier than req/s
      // when the machine is shared.
      const after = {
        server: cpuMs(child.pid),
        split: cpuSplitMs(child.pid),
        upstream: cpuMs(upstreamPid),
        helper: helper && cpuMs(helper.pid),
        ours: ourCpuMs(),
        machine: machineBusyMs(),
        wallMs: Date.now(),
      }
      if (m.ok > 0 && before.server !== undefined && after.server !== undefined) {
        m.serverCpuUsPerReq = ((after.server - before.server) * 1000) / m.ok
        m.upstreamCpuUsPerReq = ((after.upstream - before.upstream) * 1000) / m.ok
        // Row na: Lapse's decision service, apart from nginx (the row's server).
        if (before.helper !== undefined && after.helper !== undefined) m.helperCpuUsPerReq = ((after.helper - before.helper) * 1000) / m.ok
      }
      // Where a row's CPU goes (JSON only): user or system time, the event loop or other threads.
      if (m.ok > 0 && before.split && after.split) {
        const perReq = (k) => ((after.split[k] - before.split[k]) * 1000) / m.ok
        m.serverCpuSplitUsPerReq = { user: perReq('user'), system: perReq('system'), otherThreads: perReq('otherThreads') }
      }
      // Everything the machine did that was not us (other processes, hypervisor steal), as a
      // share of all its CPU time during the measurement: the noise indicator of this figure.
      if (before.machine !== undefined && after.machine !== undefined) {
        const oursMs = after.ours - before.ours + (m.loadgenCpuMs ?? 0)
        m.foreignCpuShare = Math.max(0, after.machine - before.machine - oursMs) / ((after.wallMs - before.wallMs) * cpuCount)
      }
      return { ...m, rssKb: rss }
    } finally {
      if (timer) clearInterval(timer)
      if (sampleRss) rss.push(rssKb(child.pid))
    }
  }

  // A dead collector is noticed when the first export has failed (the exporter retries it up to its
  // timeout, 10 s by default); from then on Lapse stops recording spans (docs/telemetry.md). Row 7
  // prices that steady state, so it waits for it under load; the time it took is reported.
  const settled = new Set()
  async function settleSpansPaused(row) {
    const { adminUrl } = fleet.get(row.server)
    if (settled.has(row.server)) return
    const t0 = Date.now()
    const unrecorded = async () => {
      const text = await (await fetch(`${adminUrl}/metrics`)).text().catch(() => '')
      return Number(/^lapse_telemetry_spans_unrecorded_total(?:\{[^}]*\})? (\d+)/m.exec(text)?.[1] ?? 0)
    }
    while (Date.now() - t0 < 60_000 && (await unrecorded()) === 0) await measure(row, 1).catch(() => {})
    const s = (Date.now() - t0) / 1000 + settings.warmupS
    const paused = (await unrecorded()) > 0
    // Load on until every row-7 instance has had the same minimum: how soon a pause comes varies
    // from 1 to 10 s (the exporter's retries), and in an A/B the instance that paused sooner was
    // measured less warmed up and came out up to 40% slower in its first rounds, whichever code it ran.
    const minLoadMs = (SETTLE_MIN_LOAD_S - settings.warmupS) * 1000
    while (Date.now() - t0 < minLoadMs) await measure(row, Math.min(2, Math.ceil((minLoadMs - (Date.now() - t0)) / 1000))).catch(() => {})
    settled.add(row.server)
    meta.spansPausedAfterS = paused ? Number(s.toFixed(1)) : null
    log(
      paused
        ? `  row ${row.id}: Lapse stopped recording spans ${s.toFixed(0)} s after load began (collector unreachable)`
        : `  ! row ${row.id}: Lapse still records spans after ${s.toFixed(0)} s; measured anyway`,
    )
  }

  const runnable = selected.filter((r) => !rowErrors.has(r.server))
  for (const row of selected) if (rowErrors.has(row.server)) measurements.get(row.id).push({ error: rowErrors.get(row.server) })

  for (let round = 0; round < settings.rounds; round++) {
    // A new order each round (seeded, so a run can be repeated): this host slows down in phases of
    // tens of seconds, and a rotated order kept the same neighbours together, so one slow phase
    // hit the same cluster of rows in every round it came.
    // An A/B pair, and the rows a target compares (ADJACENT), run back to back, forwards or
    // backwards by round, so the rows compared see the same phase of the host.
    const order = shuffled(adjacentGroups(runnable), round).flatMap((g) => ((round + g[0].id.length) % 2 ? [...g].reverse() : g))
    for (const row of order) {
      if (round === 0 && settings.warmupS > 0) await measure(row, settings.warmupS).catch(() => {})
      if (round === 0 && row.settle === 'spans-paused') await settleSpansPaused(row)
      await waitQuiet()
      let m
      try {
        m = await measure(row, settings.durationS)
        if (m.errors > 0 || m.non2xx > 0 || m.ok === 0) {
          m.warning = `errors ${m.errors}, timeouts ${m.timeouts}, non-2xx ${m.non2xx} (${JSON.stringify(m.statuses)})`
        }
        if (m.ok === 0) m.error = m.warning
      } catch (err) {
        m = { error: err.message }
      }
      measurements.get(row.id).push(m)
      if (row.auth === 'pool' && m.rssKb?.length) memory.samples.push(...m.rssKb.filter(Boolean))
      if (row.auth === 'pool' && m.rssKb?.length) {
        memory.startKb ??= m.rssKb.find(Boolean)
        memory.endKb = m.rssKb.filter(Boolean).at(-1)
      }
      const busy = m.foreignCpuShare > NOISY_SHARE ? `  ! other work took ${(m.foreignCpuShare * 100).toFixed(0)}% of the machine` : ''
      const note = m.error
        ? `ERROR ${m.error}`
        : `${Math.round(m.rps)} req/s  p50 ${m.p50Ms.toFixed(2)} ms  p99 ${m.p99Ms.toFixed(2)} ms${m.warning ? `  ! ${m.warning}` : ''}${busy}`
      log(`  round ${round + 1}/${settings.rounds}  row ${row.id.padEnd(3)} ${note}`)
      await sleep(300)
    }
  }
  if (memory.samples.length) memory.maxKb = Math.max(...memory.samples)
  delete memory.samples

  let soak
  if (settings.soakS > 0) soak = await runSoak(fleet, rowErrors, token, poolFiles, measure, rows)

  // The decision alone, pinned where the servers ran; skipped for a soak and when Lapse is absent.
  let micro
  if (settings.microTimeMs > 0 && settings.soakS === 0 && !buildError && existsSync(join(root, 'dist'))) {
    log(`micro-benchmark of the decision (${settings.microTimeMs} ms × 3 rounds per case) …`)
    try {
      micro = await runJson(
        process.execPath,
        [
          join(benchDir, 'micro', 'decision.bench.mjs'),
          '--json',
          '--time',
          String(settings.microTimeMs),
          '--pool',
          String(Math.min(settings.pool, 1000)),
        ],
        {
          cpu: pin.servers,
          timeoutMs: 120_000 + settings.microTimeMs * 60,
        },
      )
    } catch (err) {
      micro = { error: err.message }
      failed = true
    }
  }

  meta.loadavgAtEnd = loadavg().map((x) => Number(x.toFixed(2)))
  const summary = summarize(selected, measurements)
  const table = formatTable(summary)
  const checks = checkTargets(summary, memory.startKb ? memory : undefined, soak, micro)
  log('')
  if (selected.length) log(table)
  log('')
  if (memory.startKb) {
    log(
      `Lapse RSS during row 5 (lapse-verify, pid ${fleet.get('lapse-verify')?.child.pid}): boot ${mb(bootRssKb['lapse-verify'])}, start ${mb(memory.startKb)}, end ${mb(memory.endKb)}, max ${mb(memory.maxKb)}`,
    )
  }
  if (micro?.results) log(`${formatMicro(micro)}\n`)
  else if (micro?.error) log(`micro-benchmark failed: ${micro.error}\n`)
  log(formatChecks(checks))
  const pairs = base ? comparePairs(selected, measurements) : undefined
  if (pairs) {
    log(`\nA/B against ${base.ref} (${base.sha}): this tree ÷ base, per round (the pair ran back to back)`)
    for (const p of pairs) log(`  row ${p.id.padEnd(3)} req/s ${p.rps.text}   CPU µs/req ${p.cpu.text}`)
  }

  const result = {
    schema: 1,
    ...meta,
    path: PATH,
    lapse: { bootRssKb, row5Memory: memory.startKb ? memory : undefined },
    rows: summary,
    soak,
    micro,
    checks,
    pairs,
    table,
  }
  mkdirSync(args['results-dir'], { recursive: true })
  const stamp = meta.date.slice(0, 16).replace(/:/g, '')
  const jsonName = `${stamp}-${meta.commit}.json`
  const jsonPath = join(args['results-dir'], jsonName)
  writeFileSync(jsonPath, `${JSON.stringify(result, null, 2)}\n`)
  log(`\nresults: ${jsonPath}`)
  if (shouldRecord({ noRecord: args['no-record'], against: base, rowCount: selected.length })) {
    if (updateReadme(join(benchDir, 'README.md'), { table, checks, meta, micro })) log('README.md: latest table updated')
    appendResultsLog(join(benchDir, 'RESULTS.md'), { summary, checks, meta, jsonName })
    log('RESULTS.md: one line appended')
  }
  const missing = summary.filter((r) => !r.median)
  if (missing.length) {
    failed = true
    log(`rows without a measurement: ${missing.map((r) => `${r.id} (${(r.error ?? 'no data').split('\n')[0]})`).join('; ')}`)
  }
  if (soak?.error) failed = true
}

/** Per-round ratios of each row to its "@base" twin: median and range, for req/s and CPU per request. */
function comparePairs(selected, measurements) {
  const describe = (xs) => {
    const m = median(xs)
    return { median: m, perRound: xs, text: xs.length ? `${m.toFixed(3)} (rounds ${xs.map((x) => x.toFixed(2)).join(' ')})` : '—' }
  }
  return selected
    .filter((r) => r.pairOf)
    .map((b) => {
      const ours = measurements.get(b.pairOf)
      const theirs = measurements.get(b.id)
      const both = ours.map((m, i) => [m, theirs[i]]).filter(([m, t]) => m && t && !m.error && !t.error)
      return {
        id: b.pairOf,
        rps: describe(both.map(([m, t]) => m.rps / t.rps)),
        cpu: describe(
          both.filter(([m, t]) => m.serverCpuUsPerReq && t.serverCpuUsPerReq).map(([m, t]) => m.serverCpuUsPerReq / t.serverCpuUsPerReq),
        ),
      }
    })
}

/** `items` in an order fixed by `seed` (Fisher–Yates over mulberry32); seed 0 keeps the listed order. */
function shuffled(items, seed) {
  const out = [...items]
  if (seed === 0) return out
  let a = seed * 0x9e3779b9
  const random = () => {
    a = (a + 0x6d2b79f5) | 0
    let t = Math.imul(a ^ (a >>> 15), 1 | a)
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
  for (let i = out.length - 1; i > 0; i--) {
    const j = Math.floor(random() * (i + 1))
    ;[out[i], out[j]] = [out[j], out[i]]
  }
  return out
}

/** Row 5 (RS256) for the soak duration, RSS sampled every 5 s after a warm-up. */
/** Row 3m's probe: one HTTPS request presenting the client certificate, answered like fetch's Response. */
function probeTls(url, headers, pki) {
  return new Promise((resolve, reject) => {
    const req = httpsRequest(url, { headers, agent: false, timeout: 5000, ...clientTls(pki) }, (res) => {
      const chunks = []
      res.on('data', (c) => chunks.push(c))
      res.on('end', () =>
        resolve({
          status: res.statusCode,
          headers: { get: (n) => res.headers[n.toLowerCase()] },
          text: async () => Buffer.concat(chunks).toString('utf8'),
        }),
      )
    })
    req.on('timeout', () => req.destroy(new Error('timed out')))
    req.on('error', reject)
    req.end()
  })
}

async function runSoak(fleet, rowErrors, _token, _poolFiles, measure, rows) {
  if (rowErrors.has('lapse-verify')) return { error: rowErrors.get('lapse-verify') }
  const row = rows.find((r) => r.id === '5r')
  const { child } = fleet.get('lapse-verify')
  log(`soak: row 5r for ${settings.soakS} s (after a 10 s warm-up), RSS every 5 s`)
  await measure(row, 10).catch(() => {})
  const samples = []
  const t0 = Date.now()
  const timer = setInterval(() => samples.push({ s: Math.round((Date.now() - t0) / 1000), kb: rssKb(child.pid) }), 5000)
  samples.push({ s: 0, kb: rssKb(child.pid) })
  let m
  try {
    m = await measure(row, settings.soakS)
  } catch (err) {
    return { error: err.message, samples }
  } finally {
    clearInterval(timer)
  }
  samples.push({ s: Math.round((Date.now() - t0) / 1000), kb: rssKb(child.pid) })
  const kbs = samples.map((x) => x.kb).filter(Boolean)
  const soak = {
    durationS: settings.soakS,
    rps: m.rps,
    p50Ms: m.p50Ms,
    p99Ms: m.p99Ms,
    startKb: kbs[0],
    endKb: kbs.at(-1),
    maxKb: Math.max(...kbs),
    samples,
  }
  log(`soak: ${Math.round(m.rps)} req/s, p99 ${m.p99Ms.toFixed(2)} ms, RSS ${mb(soak.startKb)} → ${mb(soak.endKb)} (max ${mb(soak.maxKb)})`)
  return soak
}

function mb(kb) {
  return kb ? `${(kb / 1024).toFixed(1)} MB` : '—'
}
