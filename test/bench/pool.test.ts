// bench/pool.mjs pools one check's paired rounds over several runs. Hand-made runs pin the
// arithmetic (pairing within a run, skipping runs without both rows, the three measures); the
// committed results pin the pooled figures bench/README.md cites, so the docs
// cannot drift from the data. No timing here: pure functions over JSON.
import { readdirSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { pathToFileURL } from 'node:url'
import t from 'tap'
import { benchDir } from '../fixtures/bench-harness.js'

interface Round {
  rps: number
  p50Ms: number
  p99Ms: number
  error?: string
}
interface Run {
  name: string
  json: { commit?: string; rows: Array<{ id: string; rounds: Round[] }> }
}
interface Interval {
  low: number
  high: number
  coverage: number
}
interface Pooled {
  runs: Array<{ name: string; rounds: number; median: number; perRound: number[] }>
  rounds: number
  median: number | undefined
  interval: Interval | undefined
}
interface Pool {
  poolRuns(runs: Run[], a: string, b: string, measure?: 'rps' | 'p50' | 'p99', coverage?: number): Pooled
}

const load = async () => (await import(pathToFileURL(join(benchDir, 'pool.mjs')).href)) as Pool
const r = (rps: number, p50Ms = 1, p99Ms = 4): Round => ({ rps, p50Ms, p99Ms })
const run = (name: string, rows: Record<string, Round[]>): Run => ({
  name,
  json: { rows: Object.entries(rows).map(([id, rounds]) => ({ id, rounds })) },
})

t.test('rounds are paired within each run, then pooled across runs', async (t) => {
  const { poolRuns } = await load()
  const runs = [
    // Run A: a fast host; row 7 at 0.9 of row 3 in every round.
    run('a.json', { 3: [r(1000), r(1000), r(1000)], 7: [r(900), r(900), r(900)] }),
    // Run B: a host half as fast; row 7 at 1.0. Pairing across runs would compare 500 with 1000.
    run('b.json', { 3: [r(500), r(500)], 7: [r(500), r(500)] }),
    // Run C lacks row 7: skipped, not counted.
    run('c.json', { 3: [r(800)], 2: [r(800)] }),
  ]
  const pooled = poolRuns(runs, '7', '3')
  t.same(
    pooled.runs.map((x) => x.name),
    ['a.json', 'b.json'],
  )
  t.equal(pooled.rounds, 5)
  t.same(
    pooled.runs.map((x) => x.median),
    [0.9, 1],
  )
  t.equal(pooled.median, 0.9, 'the median of the five per-round ratios 0.9, 0.9, 0.9, 1, 1')
  t.same(pooled.interval, { low: 0.9, high: 1, coverage: 1 - 2 / 32 }, 'five rounds: the smallest to the largest, 94% coverage')
  t.equal(poolRuns(runs.slice(1), '7', '3').interval, undefined, 'two rounds: no interval')
})

t.test('a round with an error is left out of its pair, as in a single run', async (t) => {
  const { poolRuns } = await load()
  const pooled = poolRuns([run('a.json', { 3: [r(100), { ...r(100), error: 'boom' }, r(100)], 7: [r(50), r(100), r(100)] })], '7', '3')
  t.same(pooled.runs[0]!.perRound, [0.5, 1])
})

t.test('p50 is pooled as a relative change, p99 as a difference in ms', async (t) => {
  const { poolRuns } = await load()
  const runs = [run('a.json', { '3f': [r(2000, 1.0, 5), r(2000, 2.0, 6)], '7f': [r(2000, 1.1, 5.5), r(2000, 2.0, 5)] })]
  t.same(
    poolRuns(runs, '7f', '3f', 'p50').runs[0]!.perRound.map((x) => Number(x.toFixed(6))),
    [0.1, 0],
  )
  t.same(poolRuns(runs, '7f', '3f', 'p99').runs[0]!.perRound, [0.5, -1])
})

t.test('the interval widens with the coverage asked for and always holds the median', async (t) => {
  const { poolRuns } = await load()
  const rounds = Array.from({ length: 30 }, (_, i) => 0.8 + i / 100)
  const runs = [run('a.json', { 3: rounds.map(() => r(1000)), 7: rounds.map((x) => r(1000 * x)) })]
  const narrow = poolRuns(runs, '7', '3', 'rps', 0.9)
  const wide = poolRuns(runs, '7', '3', 'rps', 0.99)
  t.ok(narrow.interval!.coverage >= 0.9 && wide.interval!.coverage >= 0.99)
  t.ok(wide.interval!.low <= narrow.interval!.low && wide.interval!.high >= narrow.interval!.high)
  t.ok(narrow.interval!.low <= narrow.median! && narrow.median! <= narrow.interval!.high)
})

t.test('the pooled figures the docs cite come out of the committed results', async (t) => {
  const { poolRuns } = await load()
  const dir = join(benchDir, 'results')
  const runsOf = (...commits: string[]) =>
    readdirSync(dir)
      .filter((name) => commits.some((c) => name.includes(`-${c}`)))
      .sort()
      .map((name) => ({ name, json: JSON.parse(readFileSync(join(dir, name), 'utf8')) as Run['json'] }))
  const fixed = (x: number | undefined, digits: number) => x?.toFixed(digits)

  const r7 = poolRuns(runsOf('b0e810a', '92d8953', 'c793e1f', '21f3b94', '914beb0'), '7', '3')
  t.equal(r7.rounds, 64)
  t.equal(fixed(r7.median, 3), '0.971', 'row 7 ÷ row 3, five runs (bench/README.md)')
  t.same([fixed(r7.interval?.low, 3), fixed(r7.interval?.high, 3)], ['0.952', '1.003'])

  const b4 = poolRuns(runsOf('b0e810a', 'd860d26', 'c793e1f', '21f3b94', '914beb0'), '4b', '2')
  t.equal(fixed(b4.median, 3), '0.764', 'row 4b ÷ row 2, five runs')
  const b4six = poolRuns(runsOf('b0e810a', 'd860d26', 'c793e1f', '21f3b94', '914beb0', 'b61c16d'), '4b', '2')
  t.same(
    [b4six.rounds, fixed(b4six.median, 3), fixed(b4six.interval?.low, 3), fixed(b4six.interval?.high, 3)],
    [84, '0.791', '0.763', '0.822'],
    'row 4b ÷ row 2, six runs',
  )
  const r5 = poolRuns(runsOf('21f3b94', '914beb0', 'b61c16d'), '5r', '2')
  t.same(
    [r5.rounds, fixed(r5.median, 3), fixed(r5.interval?.low, 3), fixed(r5.interval?.high, 3)],
    [48, '0.614', '0.578', '0.646'],
    'row 5r ÷ row 2, the three runs of the header cache',
  )

  const p50 = poolRuns(runsOf('b0e810a', '92d8953', 'c793e1f'), '7f', '3f', 'p50', 0.95)
  t.equal(p50.rounds, 56)
  t.same(
    [fixed(p50.median, 3), fixed(p50.interval?.low, 3), fixed(p50.interval?.high, 3)],
    ['0.023', '-0.038', '0.058'],
    '7f ÷ 3f p50 +2.3% (−3.8% to +5.8%)',
  )

  // Session 12: the full run of dffa8e9 added, and the two-turn revocation batch's own runs.
  const r7seven = poolRuns(runsOf('b0e810a', '92d8953', 'c793e1f', '21f3b94', '914beb0', 'dffa8e9', '422ef5c'), '7', '3')
  t.same(
    [r7seven.rounds, fixed(r7seven.median, 3), fixed(r7seven.interval?.low, 3), fixed(r7seven.interval?.high, 3)],
    [92, '0.971', '0.945', '0.994'],
    'row 7 ÷ row 3, seven runs',
  )
  const since = ['b0e810a', '92d8953', 'c793e1f', '21f3b94', '914beb0', 'b61c16d', 'dffa8e9', '422ef5c']
  const r3 = poolRuns(runsOf(...since), '3', '2')
  t.same(
    [r3.rounds, fixed(r3.median, 3), fixed(r3.interval?.low, 3), fixed(r3.interval?.high, 3)],
    [112, '0.915', '0.897', '0.936'],
    'row 3 ÷ row 2, eight runs',
  )
  const r3p99 = poolRuns(runsOf(...since), '3', '2', 'p99')
  t.same(
    [fixed(r3p99.median, 2), fixed(r3p99.interval?.low, 2), fixed(r3p99.interval?.high, 2)],
    ['0.32', '0.14', '0.48'],
    'row 3 p99 − row 2 p99, eight runs',
  )
  const p50six = poolRuns(runsOf('b0e810a', '92d8953', 'd860d26', 'c793e1f', '21f3b94', 'dffa8e9'), '7f', '3f', 'p50')
  t.same(
    [p50six.rounds, fixed(p50six.median, 3), fixed(p50six.interval?.low, 3), fixed(p50six.interval?.high, 3)],
    [72, '0.042', '0.008', '0.060'],
    '7f ÷ 3f p50, six runs',
  )
  const b4hold = poolRuns(runsOf('f1f1a72', 'dffa8e9', '422ef5c'), '4b', '2')
  t.same(
    [b4hold.rounds, fixed(b4hold.median, 3), fixed(b4hold.interval?.low, 3), fixed(b4hold.interval?.high, 3)],
    [52, '0.795', '0.775', '0.839'],
    'row 4b ÷ row 2 with the two-turn batch',
  )
  const abHold = poolRuns(runsOf('f1f1a72'), '4b', '4b@base')
  t.same(
    [abHold.rounds, fixed(abHold.median, 3), fixed(abHold.interval?.low, 3), fixed(abHold.interval?.high, 3)],
    [24, '1.036', '0.992', '1.060'],
    'the two-turn batch against its parent',
  )
  const fixedHold = poolRuns(runsOf('f1f1a72'), '4bf', '4bf@base', 'p50')
  t.same(
    [fixedHold.rounds, fixed(fixedHold.median, 3), fixed(fixedHold.interval?.low, 3), fixed(fixedHold.interval?.high, 3)],
    [12, '-0.130', '-0.179', '-0.089'],
    '4bf p50 against its parent',
  )
  const r5five = poolRuns(runsOf('21f3b94', '914beb0', 'b61c16d', 'dffa8e9', '422ef5c'), '5r', '2')
  t.same(
    [r5five.rounds, fixed(r5five.median, 3), fixed(r5five.interval?.low, 3), fixed(r5five.interval?.high, 3)],
    [76, '0.608', '0.587', '0.621'],
    'row 5r ÷ row 2, five runs',
  )

  const r7old = poolRuns(runsOf('b0e810a', '92d8953', 'c793e1f'), '7', '3', 'rps', 0.95)
  t.same(
    [r7old.rounds, fixed(r7old.median, 3), fixed(r7old.interval?.low, 3), fixed(r7old.interval?.high, 3)],
    [36, '0.953', '0.903', '1.009'],
  )
})
