// The benchmark cannot rot: a 2-second, one-round run of a few rows (direct, the floor, Lapse
// with a cached token, the fastify assembly) and a short micro-benchmark of the decision must
// produce a table and a JSON file with non-zero throughput. No timing is asserted: the figures
// of a run on a shared CI machine mean nothing, only that the harness still works end to end.
// The load is capped (--rate) so this file does not starve the tests tap runs beside it.
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { benchDir, prepareBench, run } from '../fixtures/bench-harness.js'

interface CpuSplit {
  user: number
  system: number
  otherThreads: number
}
interface BenchRow {
  id: string
  median?: { rps: number; p50Ms: number; p99Ms: number; serverCpuUsPerReq: number; serverCpuSplitUsPerReq?: CpuSplit }
  error?: string
}
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
  if (!(await prepareBench(t))) return
  const resultsDir = mkdtempSync(join(tmpdir(), 'lapse-bench-smoke-'))
  t.teardown(() => rmSync(resultsDir, { recursive: true, force: true }))
  const bench = await run(
    process.execPath,
    [
      join(benchDir, 'run.mjs'),
      '--duration',
      '2',
      '--rounds',
      '1',
      '--warmup',
      '0',
      '--rows',
      '1,2,3,6',
      '--rate',
      '300',
      '--micro-time',
      '50',
      '--pool',
      '50',
      '--quiet-wait',
      '0',
      '--no-build',
      '--no-record',
      '--results-dir',
      resultsDir,
    ],
    benchDir,
    100_000,
  )
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
  // The split of row 3's CPU (user, system, other threads) adds up to the row's CPU figure, within
  // the two clock ticks (10 ms each) that separate reads can differ by.
  const lapse = result.rows.find((r) => r.id === '3')?.median
  if (existsSync('/proc/self/task') && lapse) {
    const split = lapse.serverCpuSplitUsPerReq
    t.ok(split, "records the split of Lapse's CPU")
    if (split) {
      t.ok(
        split.user > 0 && split.system >= 0 && split.otherThreads >= 0 && split.otherThreads <= split.user + split.system,
        'user, system and other-thread time are sane',
        split,
      )
      const requests = 500 // at least, of the 600 the capped rate allows in 2 s
      t.ok(
        Math.abs(split.user + split.system - lapse.serverCpuUsPerReq) <= (2 * 10_000) / requests + 1,
        "user + system is the row's CPU µs/req",
        { split, cpu: lapse.serverCpuUsPerReq },
      )
    }
  }
  const row3 = result.checks.find((c) => c.name.startsWith('row 3 ≥ 0.90'))
  t.ok(row3 && row3.status !== 'skip', 'the row 3 target was judged')
  const hot = result.micro?.results.find((r) => r.name.startsWith('decide: cached token'))
  t.ok(hot && hot.opsPerS > 0, 'the micro-benchmark measured the cached decision')
  // Measured only once the SDK has stopped recording spans for the missing collector.
  const gone = result.micro?.results.find((r) => r.name.includes('telemetry on, collector gone'))
  t.ok(gone && gone.opsPerS > 0, 'the micro-benchmark measured a request with telemetry on and the collector gone')
})
