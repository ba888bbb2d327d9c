// The A/B mode of the benchmark cannot rot: `--against HEAD` builds the committed tree in a
// temporary copy and runs each selected Lapse row on both builds, back to back in every round,
// and reports the per-round ratio. As in smoke.test.ts, no timing is asserted: only that both
// builds served real traffic and the pair was compared.
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { benchDir, prepareBench, run } from '../fixtures/bench-harness.js'

interface Pair {
  id: string
  rps: { median: number; perRound: number[] }
  cpu: { median: number }
}
interface Result {
  against?: { ref: string; commit: string }
  rows: Array<{ id: string; label: string; median?: { rps: number } }>
  pairs?: Pair[]
}

t.test('bench --against HEAD: row 3 on this tree and on HEAD, back to back, with their ratio', async (t) => {
  if (!(await prepareBench(t))) return
  const resultsDir = mkdtempSync(join(tmpdir(), 'lapse-bench-against-'))
  t.teardown(() => rmSync(resultsDir, { recursive: true, force: true }))
  const bench = await run(
    process.execPath,
    [
      join(benchDir, 'run.mjs'),
      '--against',
      'HEAD',
      '--duration',
      '1',
      '--rounds',
      '2',
      '--warmup',
      '0',
      '--rows',
      '3',
      '--rate',
      '300',
      '--micro-time',
      '0',
      '--quiet-wait',
      '0',
      '--no-build',
      '--results-dir',
      resultsDir,
    ],
    benchDir,
    110_000,
  )
  t.equal(bench.code, 0, 'bench exits 0', { stdout: bench.stdout.slice(-4000), stderr: bench.stderr.slice(-2000) })
  t.match(bench.stdout, /A\/B against HEAD \([0-9a-f]{10}\)/, 'prints the comparison')

  const file = readdirSync(resultsDir).find((f) => f.endsWith('.json'))
  t.ok(file, 'writes the JSON result')
  if (file === undefined) return
  const result = JSON.parse(readFileSync(join(resultsDir, file), 'utf8')) as Result
  t.equal(result.against?.ref, 'HEAD')
  t.match(result.against?.commit, /^[0-9a-f]{10}$/)
  for (const id of ['3', '3@base']) {
    const row = result.rows.find((r) => r.id === id)
    t.ok(row?.median && row.median.rps > 0, `row ${id} measured non-zero req/s`)
  }
  t.match(
    result.rows.find((r) => r.id === '3@base')?.label,
    new RegExp(`@ ${result.against?.commit ?? 'x'}$`),
    'the base row names its commit',
  )
  const pair = result.pairs?.find((p) => p.id === '3')
  t.equal(pair?.rps.perRound.length, 2, 'a ratio for each round')
  t.ok(pair && pair.rps.median > 0 && pair.cpu.median > 0, 'req/s and CPU ratios computed')
})
