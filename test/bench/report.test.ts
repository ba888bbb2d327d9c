// The benchmark's verdicts come from paired rounds: each round's ratio of two rows measured in the
// same phase of the host, then the median of those ratios. These tests pin that arithmetic on
// hand-made rounds where the paired answer and a ratio of two medians disagree, and the grouping
// that makes compared rows run back to back. No timing here: only bench/lib's pure functions.
import { join } from 'node:path'
import { pathToFileURL } from 'node:url'
import t from 'tap'
import { benchDir } from '../fixtures/bench-harness.js'

interface Round {
  rps: number
  p50Ms: number
  p99Ms: number
  serverCpuUsPerReq: number
  foreignCpuShare: number
  error?: string
}
interface Row {
  id: string
  label: string
  server: string
  rate?: number
  pairOf?: string
}
interface Summary {
  id: string
  vsFloor?: number
  median?: { rps: number }
}
interface Check {
  name: string
  status: string
  detail: string
  clear?: boolean
}
interface Report {
  summarize(rows: Row[], measurements: Map<string, Array<Round | { error: string }>>): Summary[]
  checkTargets(summary: Summary[], memory?: unknown, soak?: unknown, micro?: { results: Array<{ name: string; usPerOp: number }> }): Check[]
  paired(a: { rounds: unknown[] }, b: { rounds: unknown[] }): { median: number; min: number; max: number; perRound: number[] } | undefined
  medianInterval(xs: number[], coverage?: number): { low: number; high: number; coverage: number } | undefined
  shouldRecord(run: { noRecord: boolean; against?: object; rowCount: number }): boolean
}
interface Rows {
  adjacentGroups(runnable: Row[]): Row[][]
}

const load = async <T>(file: string) => (await import(pathToFileURL(join(benchDir, 'lib', file)).href)) as T

const round = (rps: number, p50Ms = 1, p99Ms = 4): Round => ({ rps, p50Ms, p99Ms, serverCpuUsPerReq: 100, foreignCpuShare: 0.01 })
const row = (id: string, extra: Partial<Row> = {}): Row => ({ id, label: `row ${id}`, server: `s${id}`, ...extra })

t.test('ratios to the floor are medians of per-round ratios, not ratios of medians', async (t) => {
  const { summarize, paired } = await load<Report>('report.mjs')
  // Round 2 is a slow phase for both rows; row 3 keeps pace with the floor in every round but one.
  const m = new Map([
    ['2', [round(100), round(50), round(100)]],
    ['3', [round(100), round(60), round(90)]],
  ])
  const summary = summarize([row('2'), row('3')], m)
  const three = summary.find((r) => r.id === '3')!
  t.equal(three.median?.rps, 90, 'the table still shows the median req/s')
  t.equal(three.vsFloor, 1, 'per-round ratios 1.0, 1.2, 0.9: median 1.0 (a ratio of medians would say 0.9)')
  const p = paired({ rounds: m.get('3')! }, { rounds: m.get('2')! })!
  t.same(p.perRound, [1, 1.2, 0.9])
  t.same([p.min, p.max], [0.9, 1.2])
})

t.test('a round either row failed is left out of the pairing', async (t) => {
  const { paired } = await load<Report>('report.mjs')
  const p = paired({ rounds: [round(90), { error: 'refused' }, round(80)] }, { rounds: [round(100), round(100), { error: 'x' }] })!
  t.same(p.perRound, [0.9], 'only round 1 had both rows')
  t.equal(paired({ rounds: [{ error: 'refused' }] }, { rounds: [round(1)] }), undefined, 'no common round: no ratio')
})

t.test('the target checks judge the paired ratio and show its range over the rounds', async (t) => {
  const { summarize, checkTargets } = await load<Report>('report.mjs')
  // Row 7 within 3% of row 3 in two rounds, 6.7% behind in the third: paired median 0.97 passes,
  // where the ratio of medians (560 ÷ 600 = 0.933) would fail.
  const m = new Map([
    ['3', [round(1000), round(500), round(600)]],
    ['7', [round(970), round(485), round(560)]],
    ['3f', [round(2000, 1.0, 5), round(2000, 2.0, 5), round(2000, 1.0, 5)]],
    ['7f', [round(2000, 1.2, 5.5), round(2000, 2.0, 9), round(2000, 1.3, 6.5)]],
  ])
  const checks = checkTargets(summarize([row('3'), row('7'), row('3f', { rate: 2000 }), row('7f', { rate: 2000 })], m))
  const seven = checks.find((c) => c.name.startsWith('row 7 (collector unreachable)'))!
  t.equal(seven.status, 'PASS')
  t.match(seven.detail, /^0\.970×, rounds 0\.93 to 0\.97/)
  const latency = checks.find((c) => c.name.startsWith('row 7f latency'))!
  // p50 per round +20%, 0%, +30%: median +20% fails; p99 +0.5, +4, +1.5 ms: median +1.5 ms fails too.
  t.equal(latency.status, 'FAIL')
  t.match(latency.detail, /^p50 \+20\.0%, rounds \+0\.0% to \+30\.0%; p99 \+1\.50 ms, rounds \+0\.50 ms to \+4\.00 ms/)
  t.equal(checks.find((c) => c.name.startsWith('row 5 RS256'))!.status, 'skip', 'a target whose rows did not run is skipped')
})

t.test('two rows that never measured in the same round are skipped, not judged', async (t) => {
  const { summarize, checkTargets } = await load<Report>('report.mjs')
  const m = new Map<string, Array<Round | { error: string }>>([
    ['2', [round(100), { error: 'refused' }]],
    ['3', [{ error: 'refused' }, round(90)]],
  ])
  const row3 = checkTargets(summarize([row('2'), row('3')], m)).find((c) => c.name.startsWith('row 3 ≥ 0.90'))!
  t.equal(row3.status, 'skip')
  t.match(row3.detail, /no round measured rows 3 and 2 both/)
})

t.test('rows a target compares, and each A/B twin, run as one unit of a round', async (t) => {
  const { adjacentGroups } = await load<Rows>('rows.mjs')
  const ids = (groups: Row[][]) => groups.map((g) => g.map((r) => r.id).join(','))
  t.same(
    ids(adjacentGroups(['1', '2', '2x', '3', '7', '3f', '7f', '6'].map((id) => row(id)))).sort(),
    ['1', '2,3,7', '2x', '3f,7f', '6'].sort(),
  )
  const withTwins = ['2', '3', '4a', '7']
    .map((id) => row(id))
    .flatMap((r) => (r.id === '2' ? [r] : [r, row(`${r.id}@base`, { pairOf: r.id })]))
  t.same(
    ids(adjacentGroups(withTwins)).sort(),
    ['2,3,3@base,7,7@base', '4a,4a@base'].sort(),
    'each twin stays next to its row inside the group',
  )
  t.same(ids(adjacentGroups([row('3'), row('6')])).sort(), ['3', '6'], 'a group with one member present is no group')
})

t.test('the median gets a distribution-free interval from the order statistics of the rounds', async (t) => {
  const { medianInterval } = await load<Report>('report.mjs')
  const shuffled = (n: number) => Array.from({ length: n }, (_, i) => ((i * 7) % n) + 1)
  t.equal(medianInterval(shuffled(4)), undefined, '4 rounds: even [min, max] misses the median 1 time in 8')
  t.same(medianInterval(shuffled(5)), { low: 1, high: 5, coverage: 1 - 2 / 32 })
  // 8 rounds: P(Binomial(8, ½) ≤ 1) = 9/256, so the 2nd and 7th values cover 1 − 18/256.
  t.same(medianInterval(shuffled(8)), { low: 2, high: 7, coverage: 1 - 18 / 256 })
  // 12 rounds: the 3rd and 10th (1 − 2·79/4096); the 4th and 9th would cover only 85%.
  t.same(medianInterval(shuffled(12)), { low: 3, high: 10, coverage: 1 - 158 / 4096 })
  t.same(medianInterval(shuffled(12), 0.8), { low: 4, high: 9, coverage: 1 - 598 / 4096 })
})

t.test('a verdict says whether the interval of its median clears the target or spans it', async (t) => {
  const { summarize, checkTargets } = await load<Report>('report.mjs')
  const floor = Array.from({ length: 8 }, () => round(1000))
  // Row 3: every round between 0.93 and 0.99 of the floor. Row 4a: a median of 0.87 (a pass), but
  // rounds from 0.70 to 1.00 put the interval across 0.85. Row 4b: every round under 0.80.
  const m = new Map([
    ['2', floor],
    ['3', [930, 940, 950, 960, 970, 980, 990, 955].map((r) => round(r))],
    ['4a', [700, 800, 860, 870, 875, 880, 950, 1000].map((r) => round(r))],
    ['4b', [600, 650, 700, 720, 740, 760, 780, 790].map((r) => round(r))],
  ])
  const checks = checkTargets(summarize([row('2'), row('3'), row('4a'), row('4b')], m))
  const of = (prefix: string) => checks.find((c) => c.name.startsWith(prefix))!
  t.match(of('row 3 ≥ 0.90'), { status: 'PASS', clear: true })
  t.match(of('row 3 ≥ 0.90').detail, /^0\.958×, 93% interval 0\.94 to 0\.98, rounds 0\.93 to 0\.99; clear of this run's noise$/)
  t.match(of('row 4a'), { status: 'PASS', clear: false })
  t.match(of('row 4a').detail, /93% interval 0\.80 to 0\.95, .*within noise: the interval spans the target$/)
  t.match(of('row 4b'), { status: 'FAIL', clear: true })
  // Three rounds are too few for an interval: the verdict stands without one.
  const few = checkTargets(
    summarize(
      [row('2'), row('3')],
      new Map([
        ['2', floor.slice(0, 3)],
        ['3', [900, 950, 990].map((r) => round(r))],
      ]),
    ),
  )
  t.equal(few.find((c) => c.name.startsWith('row 3 ≥ 0.90'))!.clear, undefined)
  t.notMatch(few.find((c) => c.name.startsWith('row 3 ≥ 0.90'))!.detail, /interval|noise/)
})

t.test("claim binding's budget: row 3b's CPU µs/req over row 3's, paired per round, and the micro-benchmark's difference", async (t) => {
  const { summarize, checkTargets } = await load<Report>('report.mjs')
  const cpu = (us: number): Round => ({ ...round(1000), serverCpuUsPerReq: us })
  // Per round +1, +5, +1.5, −2, +0.5: median +1 µs/req passes; row 3b's median CPU (100.5) minus
  // row 3's (99) would say +1.5, and round 2 alone would fail.
  const m = new Map([
    ['3', [100, 90, 98.5, 104, 99].map(cpu)],
    ['3b', [101, 95, 100, 102, 99.5].map(cpu)],
  ])
  const micro = {
    results: [
      { name: 'decide: cached token, memory set (hot path)', usPerOp: 1.16 },
      { name: 'decide: as above, rule with a capture bound to a claim', usPerOp: 1.48 },
    ],
  }
  const checks = checkTargets(summarize([row('3'), row('3b')], m), undefined, undefined, micro)
  const load_ = checks.find((c) => c.name.startsWith('row 3b (claim binding)'))!
  t.equal(load_.status, 'PASS')
  t.match(
    load_.detail,
    /^\+1\.0 µs\/req, 94% interval -2\.0 µs\/req to \+5\.0 µs\/req, rounds -2\.0 µs\/req to \+5\.0 µs\/req; within noise/,
  )
  const inProcess = checks.find((c) => c.name.startsWith('claim binding adds < 2 µs a decision'))!
  t.equal(inProcess.status, 'PASS')
  t.match(inProcess.detail, /^\+0\.32 µs/)
  const slow = checkTargets(summarize([row('3'), row('3b')], m), undefined, undefined, {
    results: [micro.results[0]!, { ...micro.results[1]!, usPerOp: 3.5 }],
  })
  t.equal(slow.find((c) => c.name.startsWith('claim binding adds'))!.status, 'FAIL', '2.34 µs over the hot path fails')
  t.equal(
    checkTargets(summarize([row('3'), row('3b')], m)).find((c) => c.name.startsWith('claim binding adds'))!.status,
    'skip',
    'no micro-benchmark, no in-process verdict',
  )
})

t.test('a run records its table only when it measured rows of the tree itself', async (t) => {
  const { shouldRecord } = await load<Report>('report.mjs')
  t.equal(shouldRecord({ noRecord: false, rowCount: 3 }), true, 'a plain run replaces the latest table')
  t.equal(shouldRecord({ noRecord: true, rowCount: 3 }), false, '--no-record (the smoke test) leaves the docs alone')
  t.equal(shouldRecord({ noRecord: false, against: { ref: 'HEAD~1' }, rowCount: 6 }), false, 'an A/B compares two builds, not the tree')
  // `--soak` with no rows: recording would replace the latest full table with an empty one.
  t.equal(shouldRecord({ noRecord: false, rowCount: 0 }), false, 'a soak alone has no table to record')
})
