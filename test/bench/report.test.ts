// The benchmark's verdicts come from paired rounds: each round's ratio of two rows measured in the
// same phase of the host, then the median of those ratios. These tests pin that arithmetic on
// hand-made rounds where the paired answer and a ratio of two medians disagree, and the grouping
// that makes compared rows run back to back. No timing here: only bench/lib's pure functions.
import { join } from 'node:path'
import { pathToFileURL } from 'node:url'
import t from 'tap'
import { benchDir } from '../fixtures/bench-harness.js'

interface Round { rps: number; p50Ms: number; p99Ms: number; serverCpuUsPerReq: number; foreignCpuShare: number; error?: string }
interface Row { id: string; label: string; server: string; rate?: number; pairOf?: string }
interface Summary { id: string; vsFloor?: number; median?: { rps: number } }
interface Check { name: string; status: string; detail: string }
interface Report {
  summarize(rows: Row[], measurements: Map<string, Array<Round | { error: string }>>): Summary[]
  checkTargets(summary: Summary[]): Check[]
  paired(a: { rounds: unknown[] }, b: { rounds: unknown[] }): { median: number; min: number; max: number; perRound: number[] } | undefined
}
interface Rows { adjacentGroups(runnable: Row[]): Row[][] }

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
  t.same(ids(adjacentGroups(['1', '2', '2x', '3', '7', '3f', '7f', '6'].map((id) => row(id)))).sort(), ['1', '2,3,7', '2x', '3f,7f', '6'].sort())
  const withTwins = ['2', '3', '4a', '7'].map((id) => row(id)).flatMap((r) => (r.id === '2' ? [r] : [r, row(`${r.id}@base`, { pairOf: r.id })]))
  t.same(ids(adjacentGroups(withTwins)).sort(), ['2,3,3@base,7,7@base', '4a,4a@base'].sort(), 'each twin stays next to its row inside the group')
  t.same(ids(adjacentGroups([row('3'), row('6')])).sort(), ['3', '6'], 'a group with one member present is no group')
})
