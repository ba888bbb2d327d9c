#!/usr/bin/env node
// Pools one check's paired rounds over several committed runs: one 8-round run cannot resolve a
// 5% target on this host, many runs together can. Each run's rounds are paired as the run itself
// paired them (report.mjs `paired`: the two rows of one round saw the same phase of the host);
// the pooled median gets the same distribution-free interval as a single run's.
//
//   node pool.mjs 7 3 b0e810a 92d8953 c793e1f          # row 7 ÷ row 3 req/s over three runs
//   node pool.mjs 7f 3f --p50 b0e810a c793e1f          # 7f ÷ 3f p50 − 1
//   node pool.mjs 3 2 --p99                            # row 3 p99 − row 2 p99 (ms), every run
//   node pool.mjs 3b 3 --cpu                           # row 3b's CPU µs/req − row 3's (the binding's budget)
//   node pool.mjs 7 3 --coverage 0.95 …                # the pooled interval at ≥ 95% (default 90%)
//
// A run is picked when its file name under results/ holds one of the given commit prefixes (none
// given: every run that holds both rows). Pooling assumes the code of the two rows did not change
// between the picked runs; which runs qualify is the caller's claim, and the output names them.
import { readdirSync, readFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import { median, medianInterval, paired } from './lib/report.mjs'

const MEASURES = {
  rps: { f: (x, y) => x.rps / y.rps, show: (v) => `${v.toFixed(3)}×` },
  p50: { f: (x, y) => x.p50Ms / y.p50Ms - 1, show: (v) => `${v >= 0 ? '+' : ''}${(v * 100).toFixed(1)}%` },
  p99: { f: (x, y) => x.p99Ms - y.p99Ms, show: (v) => `${v >= 0 ? '+' : ''}${v.toFixed(2)} ms` },
  cpu: { f: (x, y) => x.serverCpuUsPerReq - y.serverCpuUsPerReq, show: (v) => `${v >= 0 ? '+' : ''}${v.toFixed(1)} µs/req` },
}

/**
 * Per run and pooled: the median of `a` against `b` per round (`measure`: rps ratio, p50 change,
 * p99 difference) and its interval. `runs` are parsed result files as { name, json }.
 */
export function poolRuns(runs, a, b, measure = 'rps', coverage = 0.9) {
  const { f } = MEASURES[measure]
  const picked = []
  for (const { name, json } of runs) {
    const rows = json.rows ?? []
    const p = paired(
      rows.find((r) => r.id === a),
      rows.find((r) => r.id === b),
      f,
    )
    if (p)
      picked.push({ name, commit: json.commit, rounds: p.perRound.length, median: p.median, interval: p.interval, perRound: p.perRound })
  }
  const all = picked.flatMap((r) => r.perRound)
  return { runs: picked, rounds: all.length, median: all.length ? median(all) : undefined, interval: medianInterval(all, coverage) }
}

function main() {
  const { values, positionals } = parseArgs({
    options: {
      p50: { type: 'boolean', default: false },
      p99: { type: 'boolean', default: false },
      cpu: { type: 'boolean', default: false },
      coverage: { type: 'string', default: '0.9' },
      'results-dir': { type: 'string' },
    },
    allowPositionals: true,
  })
  const [a, b, ...commits] = positionals
  if (!a || !b) {
    process.stderr.write('usage: node pool.mjs <row> <baseline row> [--p50 | --p99 | --cpu] [--coverage 0.9] [commit prefix ...]\n')
    process.exit(2)
  }
  const measure = values.p50 ? 'p50' : values.p99 ? 'p99' : values.cpu ? 'cpu' : 'rps'
  const dir = values['results-dir'] ?? join(dirname(fileURLToPath(import.meta.url)), 'results')
  const runs = readdirSync(dir)
    .filter((name) => name.endsWith('.json') && (commits.length === 0 || commits.some((c) => name.includes(`-${c}`))))
    .sort()
    .map((name) => ({ name, json: JSON.parse(readFileSync(join(dir, name), 'utf8')) }))
  const coverage = Number(values.coverage)
  if (!(coverage > 0 && coverage < 1)) {
    process.stderr.write('--coverage must be between 0 and 1\n')
    process.exit(2)
  }
  const pooled = poolRuns(runs, a, b, measure, coverage)
  const { show } = MEASURES[measure]
  const interval = (i) =>
    i ? `${Math.round(i.coverage * 100)}% interval ${show(i.low)} to ${show(i.high)}` : 'no interval (under 5 rounds)'
  for (const r of pooled.runs)
    process.stdout.write(`${r.name}  ${String(r.rounds).padStart(3)} rounds  ${show(r.median)}  (${interval(r.interval)})\n`)
  if (pooled.rounds === 0) {
    process.stdout.write(`no picked run holds rows ${a} and ${b}\n`)
    process.exit(1)
  }
  process.stdout.write(
    `pooled ${pooled.runs.length} runs, ${pooled.rounds} rounds: ${show(pooled.median)}  (${interval(pooled.interval)})\n`,
  )
}

if (process.argv[1] === fileURLToPath(import.meta.url)) main()
