// The benchmark cannot rot: a 2-second, one-round run of a few rows (direct, the floor, Lapse
// with a cached token, the fastify assembly) and a short micro-benchmark of the decision must
// produce a table and a JSON file with non-zero throughput. No timing is asserted: the figures
// of a run on a shared CI machine mean nothing, only that the harness still works end to end.
// The load is capped (--rate) so this file does not starve the tests tap runs beside it.
import { execFile, type ExecFileException } from 'node:child_process'
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import t from 'tap'

const root = fileURLToPath(new URL('../../', import.meta.url))
const benchDir = join(root, 'bench')

interface Run { code: number; stdout: string; stderr: string }

function run(cmd: string, args: string[], cwd: string, timeoutMs: number): Promise<Run> {
  return new Promise((resolve) => {
    execFile(cmd, args, { cwd, timeout: timeoutMs, killSignal: 'SIGTERM', maxBuffer: 16 * 1024 * 1024 }, (err: ExecFileException | null, stdout, stderr) => {
      resolve({ code: err ? (typeof err.code === 'number' ? err.code : 1) : 0, stdout, stderr })
    })
  })
}

interface BenchRow { id: string; median?: { rps: number; p50Ms: number; p99Ms: number }; error?: string }
interface BenchResult {
  commit: string
  node: string
  cpu: { model: string; count: number }
  pinning: { enabled: boolean }
  rows: BenchRow[]
  checks: Array<{ name: string; status: string }>
  micro?: { results: Array<{ name: string; opsPerS: number }> }
}

t.test('bench smoke: 2 s rows produce a table and JSON with non-zero req/s', async (t) => {
  // The bench has its own lockfile; a fresh clone has not installed it yet.
  if (!existsSync(join(benchDir, 'node_modules', 'autocannon'))) {
    const install = await run('npm', ['ci', '--no-audit', '--no-fund'], benchDir, 180_000)
    t.equal(install.code, 0, 'npm ci in bench/', { stderr: install.stderr.slice(-2000) })
    if (install.code !== 0) return
  }
  // `npm test` builds before tap runs; a bare `tap` on a fresh clone builds here.
  if (!existsSync(join(root, 'dist', 'main.js'))) {
    const build = await run('npm', ['run', 'build'], root, 180_000)
    t.equal(build.code, 0, 'root build', { stdout: build.stdout.slice(-2000) })
  }

  const resultsDir = mkdtempSync(join(tmpdir(), 'lapse-bench-smoke-'))
  t.teardown(() => rmSync(resultsDir, { recursive: true, force: true }))
  const bench = await run(process.execPath, [
    join(benchDir, 'run.mjs'),
    '--duration', '2', '--rounds', '1', '--warmup', '0', '--rows', '1,2,3,6',
    '--rate', '300', '--micro-time', '50', '--pool', '50', '--quiet-wait', '0',
    '--no-build', '--no-record', '--results-dir', resultsDir,
  ], benchDir, 100_000)
  t.equal(bench.code, 0, 'bench exits 0', { stdout: bench.stdout.slice(-4000), stderr: bench.stderr.slice(-2000) })
  t.match(bench.stdout, /\| row \| what\s+\| req\/s \|/, 'prints the table')
  t.match(bench.stdout, /(PASS|FAIL)\s+row 3 ≥ 0\.90 × row 2 req\/s/, 'prints the target checks')

  const files = readdirSync(resultsDir).filter((f) => f.endsWith('.json'))
  t.equal(files.length, 1, 'writes one JSON result')
  const file = files[0]
  if (file === undefined) return
  const result = JSON.parse(readFileSync(join(resultsDir, file), 'utf8')) as BenchResult
  t.ok(result.commit, 'records the commit')
  t.match(result.node, /^v\d+/, 'records the Node version')
  t.ok(result.cpu.count >= 1, 'records the CPU count')
  t.type(result.pinning.enabled, 'boolean', 'records the pinning')
  for (const id of ['1', '2', '3', '6']) {
    const row = result.rows.find((r) => r.id === id)
    t.ok(row?.median && row.median.rps > 0, `row ${id} measured non-zero req/s${row?.error ? `: ${row.error}` : ''}`)
  }
  const row3 = result.checks.find((c) => c.name.startsWith('row 3 ≥ 0.90'))
  t.ok(row3 && row3.status !== 'skip', 'the row 3 target was judged')
  const hot = result.micro?.results.find((r) => r.name.startsWith('decide: cached token'))
  t.ok(hot && hot.opsPerS > 0, 'the micro-benchmark measured the cached decision')
})
