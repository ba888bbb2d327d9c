// Turns per-round measurements into the table, the target checks of issue 7, the JSON file
// under results/, the latest table in README.md and one log line in RESULTS.md.
//
//   const summary = summarize(rows, measurements)
//   console.log(formatTable(summary)); const checks = checkTargets(summary, memory)
import { appendFileSync, existsSync, readFileSync, writeFileSync } from 'node:fs'

export const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b)
  if (s.length === 0) return NaN
  const mid = s.length >> 1
  return s.length % 2 ? s[mid] : (s[mid - 1] + s[mid]) / 2
}

/**
 * The median over the rounds of `f(a's round, b's round)` (by default a's req/s ÷ b's), from the
 * rounds both rows measured. Two rows of one round saw the same phase of the host (back to back
 * where rows.mjs ADJACENT puts them), so a slow phase moves both halves of each round's ratio and
 * cancels in it; a ratio of two medians can take its halves from different phases.
 */
export function paired(a, b, f = (x, y) => x.rps / y.rps) {
  if (!a?.rounds || !b?.rounds) return undefined
  const xs = []
  for (let i = 0; i < Math.min(a.rounds.length, b.rounds.length); i++) {
    const x = a.rounds[i]
    const y = b.rounds[i]
    if (x && y && !x.error && !y.error) xs.push(f(x, y))
  }
  return xs.length
    ? { median: median(xs), min: Math.min(...xs), max: Math.max(...xs), interval: medianInterval(xs), perRound: xs }
    : undefined
}

/**
 * A distribution-free confidence interval for the median of `xs`: the k-th smallest and k-th
 * largest value, with k as large as keeps the coverage ≥ `coverage`. Each round falls below the
 * true median with probability ½, independently of the others (the one assumption: the host's
 * slow phases, which last longer than a round, bend it), so the chance that the interval misses
 * the true median is 2·P(Binomial(n, ½) ≤ k − 1). Undefined for fewer than 5 rounds (then even
 * [min, max] covers under 90%). It says how far the host's noise lets one run's median be
 * trusted; it does not change a verdict.
 */
export function medianInterval(xs, coverage = 0.9) {
  const n = xs.length
  const s = [...xs].sort((a, b) => a - b)
  let best
  let tail = 0 // P(Binomial(n, ½) ≤ k − 1)
  let choose = 1 // C(n, k − 1)
  for (let k = 1; k <= n >> 1; k++) {
    tail += choose / 2 ** n
    choose = (choose * (n - k + 1)) / k
    const covered = 1 - 2 * tail
    if (covered < coverage) break
    best = { low: s[k - 1], high: s[n - k], coverage: covered }
  }
  return best
}

/** Medians of the user / system / other-threads split of the server's CPU; undefined when no round has it. */
function splitMedian(rounds) {
  const split = rounds.map((r) => r.serverCpuSplitUsPerReq).filter(Boolean)
  if (split.length === 0) return undefined
  return {
    user: median(split.map((s) => s.user)),
    system: median(split.map((s) => s.system)),
    otherThreads: median(split.map((s) => s.otherThreads)),
  }
}

/** Median of each metric over the rounds, and each row's paired ratio to row 2 (floor) and row 6 (fastify). */
export function summarize(rows, measurements) {
  const out = rows.map((row) => {
    const runs = measurements.get(row.id) ?? []
    const good = runs.filter((r) => !r.error)
    return {
      id: row.id,
      label: row.label,
      server: row.server,
      rounds: runs,
      error: runs.find((r) => r.error)?.error,
      median:
        good.length === 0
          ? undefined
          : {
              rps: median(good.map((r) => r.rps)),
              p50Ms: median(good.map((r) => r.p50Ms)),
              p99Ms: median(good.map((r) => r.p99Ms)),
              serverCpuUsPerReq: median(good.map((r) => r.serverCpuUsPerReq ?? NaN)),
              serverCpuSplitUsPerReq: splitMedian(good),
              foreignCpuShare: median(good.map((r) => r.foreignCpuShare ?? NaN)),
              // (max − min) / median of req/s over the rounds: how much to trust the row.
              spread:
                good.length < 2
                  ? 0
                  : (Math.max(...good.map((r) => r.rps)) - Math.min(...good.map((r) => r.rps))) / median(good.map((r) => r.rps)),
            },
    }
  })
  const by = Object.fromEntries(out.map((r) => [r.id, r]))
  // A row held at a fixed rate measures latency; its req/s is the rate, not a capacity to compare.
  const fixed = new Set(rows.filter((row) => row.rate !== undefined).map((row) => row.id))
  for (const r of out) {
    if (fixed.has(r.id)) continue
    r.vsFloor = ratio(r, by['2'])
    r.vsFastify = ratio(r, by['6'])
  }
  // A row measured against a baseline of its own (row na against nginx alone, row n).
  for (const row of rows) {
    if (row.vs === undefined) continue
    const r = by[row.id]
    r.vsBase = { id: row.vs, ratio: ratio(r, by[row.vs]) }
  }
  return out
}
const ratio = (a, b) => (a?.median && b?.median ? paired(a, b)?.median : undefined)

const fmt = (x, digits = 2) => (x === undefined || Number.isNaN(x) ? '—' : x.toFixed(digits))
const pad = (s, n) => String(s).padEnd(n)
const lpad = (s, n) => String(s).padStart(n)

/** A Markdown table: readable in a terminal and pasteable into README.md as it is. */
export function formatTable(summary) {
  const head = ['row', 'what', 'req/s', '± %', 'p50 ms', 'p99 ms', 'CPU µs/req', 'other %', '÷ row 2', '÷ row 6', '÷ own base']
  const lines = summary.map((r) => [
    r.id,
    r.label,
    r.median ? Math.round(r.median.rps).toString() : r.error ? 'error' : '—',
    r.median ? (r.rounds.length > 1 ? (r.median.spread * 100).toFixed(0) : '—') : '—',
    fmt(r.median?.p50Ms),
    fmt(r.median?.p99Ms),
    fmt(r.median?.serverCpuUsPerReq, 0),
    r.median?.foreignCpuShare === undefined || Number.isNaN(r.median.foreignCpuShare) ? '—' : (r.median.foreignCpuShare * 100).toFixed(0),
    fmt(r.vsFloor),
    fmt(r.vsFastify),
    r.vsBase ? `${fmt(r.vsBase.ratio)} (row ${r.vsBase.id})` : '—',
  ])
  const widths = head.map((h, i) => Math.max(h.length, ...lines.map((l) => String(l[i]).length)))
  const row = (cells) => `| ${cells.map((c, i) => (i >= 2 ? lpad(c, widths[i]) : pad(c, widths[i]))).join(' | ')} |`
  const rule = `|${widths.map((w, i) => (i >= 2 ? `${'-'.repeat(w + 1)}:` : '-'.repeat(w + 2))).join('|')}|`
  return [row(head), rule, ...lines.map(row)].join('\n')
}

/**
 * The targets of issue 7. A check whose rows were not run says `skip`; memory flatness is only
 * judged by a soak run (`--soak 600`), the 150 MB ceiling by any run of row 5.
 */
export function checkTargets(summary, memory, soak, micro) {
  const by = Object.fromEntries(summary.map((r) => [r.id, r]))
  const m = (id) => by[id]?.median
  const checks = []
  const add = (name, ids, test, show) => {
    if (!ids.every((id) => m(id))) return checks.push({ name, status: 'skip', detail: `needs rows ${ids.join(', ')}` })
    const value = test()
    // Both rows measured, but never in the same round (each failed where the other ran).
    if (value === undefined) return checks.push({ name, status: 'skip', detail: `no round measured rows ${ids.join(' and ')} both` })
    // Judged on rows that other work disturbed: say so next to the verdict.
    const other = Math.max(...ids.map((id) => m(id).foreignCpuShare).filter((x) => Number.isFinite(x)), 0)
    const noise = other > 0.05 ? `; other work took up to ${(other * 100).toFixed(0)}% of the machine: unreliable` : ''
    // Whether the median's interval lies on the verdict's side of the target: a verdict 'within
    // noise' is one that another run of the same code could reverse.
    const sure =
      value.clear === undefined ? '' : value.clear ? "; clear of this run's noise" : '; within noise: the interval spans the target'
    checks.push({
      name,
      status: value.pass ? 'PASS' : 'FAIL',
      detail: `${show(value)}${noise}${sure}`,
      noisy: other > 0.05,
      clear: value.clear,
    })
  }
  // clear: undefined without an interval (too few rounds), else whether all of it is on the
  // verdict's side of the target.
  const atLeast = (iv, min, pass) => (iv ? (pass ? iv.low >= min : iv.high < min) : undefined)
  const atMost = (iv, max, pass) => (iv ? (pass ? iv.high <= max : iv.low > max) : undefined)
  const rpsRatio = (a, b, min) => () => {
    const p = paired(by[a], by[b])
    if (!p) return p
    const pass = p.median >= min
    return { pass, r: p.median, p, clear: atLeast(p.interval, min, pass) }
  }
  const interval = (p, f) =>
    p.interval ? `, ${Math.round(p.interval.coverage * 100)}% interval ${f(p.interval.low)} to ${f(p.interval.high)}` : ''
  const range = (p, f) => (p.perRound.length > 1 ? `${interval(p, f)}, rounds ${f(p.min)} to ${f(p.max)}` : '')
  const showRatio = ({ r, p }) => `${r.toFixed(3)}×${range(p, (x) => x.toFixed(2))}`
  const signedMs = (d) => `${d >= 0 ? '+' : ''}${d.toFixed(2)} ms`

  add('row 3 ≥ 0.90 × row 2 req/s', ['3', '2'], rpsRatio('3', '2', 0.9), showRatio)
  add(
    'row 3 p99 ≤ row 2 p99 + 1 ms',
    ['3', '2'],
    () => {
      const p = paired(by['3'], by['2'], (x, y) => x.p99Ms - y.p99Ms)
      if (!p) return p
      const pass = p.median <= 1
      return { pass, d: p.median, p, clear: atMost(p.interval, 1, pass) }
    },
    ({ d, p }) => `${signedMs(d)}${range(p, signedMs)}`,
  )
  add('row 4a (Redis + cache) ≥ 0.85 × row 2', ['4a', '2'], rpsRatio('4a', '2', 0.85), showRatio)
  add('row 4b (Redis, no cache) ≥ 0.85 × row 2', ['4b', '2'], rpsRatio('4b', '2', 0.85), showRatio)
  add('row 3 ≥ 1.5 × row 6', ['3', '6'], rpsRatio('3', '6', 1.5), showRatio)
  add('row 5 RS256 ≥ 0.6 × row 2', ['5r', '2'], rpsRatio('5r', '2', 0.6), showRatio)
  // Issue 27: the audit line the default writes for every allow costs under 5%.
  add('row 3l (audit line per allow) within 5% of row 3 (no allow lines)', ['3l', '3'], rpsRatio('3l', '3', 0.95), showRatio)
  add('row 3l (audit line per allow) ≥ 0.90 × row 2', ['3l', '2'], rpsRatio('3l', '2', 0.9), showRatio)
  add('row 7 (collector unreachable) within 5% of row 3 (telemetry off)', ['7', '3'], rpsRatio('7', '3', 0.95), showRatio)
  // Issue 27: claim binding and captures add under 2 µs a request. Priced in CPU µs/req of the
  // server (paired per round: rows 3 and 3b run back to back), since 2 µs is far below what req/s
  // resolves; 2 µs is also below this host's round-to-round CPU noise, so the micro-benchmark's
  // in-process difference is checked beside it.
  const signedUs = (d) => `${d >= 0 ? '+' : ''}${d.toFixed(1)} µs/req`
  add(
    'row 3b (claim binding) adds < 2 µs/req of CPU over row 3',
    ['3b', '3'],
    () => {
      const p = paired(by['3b'], by['3'], (x, y) => x.serverCpuUsPerReq - y.serverCpuUsPerReq)
      if (!p || !Number.isFinite(p.median)) return undefined
      const pass = p.median < BINDING_BUDGET_US
      return { pass, d: p.median, p, clear: atMost(p.interval, BINDING_BUDGET_US, pass) }
    },
    ({ d, p }) => `${signedUs(d)}${range(p, signedUs)}`,
  )
  const bindingMicro = microDifference(micro, MICRO_BOUND, MICRO_HOT)
  if (bindingMicro === undefined)
    checks.push({ name: 'claim binding adds < 2 µs a decision (micro-benchmark)', status: 'skip', detail: 'micro-benchmark not run' })
  else
    checks.push({
      name: 'claim binding adds < 2 µs a decision (micro-benchmark)',
      status: bindingMicro < BINDING_BUDGET_US ? 'PASS' : 'FAIL',
      detail: `${bindingMicro >= 0 ? '+' : ''}${bindingMicro.toFixed(2)} µs: "${MICRO_BOUND}" against "${MICRO_HOT}"`,
    })

  // Issue 4: a dead collector leaves the latency clients see unchanged. Judged at a fixed load, where
  // latency is latency; at full load it only mirrors the capacity row 7 prices.
  add(
    'row 7f latency within 5% (p50) and +1 ms (p99) of row 3f, at the same fixed rate',
    ['7f', '3f'],
    () => {
      const p50 = paired(by['7f'], by['3f'], (x, y) => x.p50Ms / y.p50Ms - 1)
      const p99 = paired(by['7f'], by['3f'], (x, y) => x.p99Ms - y.p99Ms)
      if (!p50 || !p99) return undefined
      const pass = p50.median <= 0.05 && p99.median <= 1
      // Clear pass: both intervals within their bounds; clear fail: either interval wholly beyond.
      const both = p50.interval && p99.interval
      const clear = !both
        ? undefined
        : pass
          ? p50.interval.high <= 0.05 && p99.interval.high <= 1
          : p50.interval.low > 0.05 || p99.interval.low > 1
      return { pass, p50, p99, clear }
    },
    ({ p50, p99 }) => {
      const pct = (x) => `${x >= 0 ? '+' : ''}${(x * 100).toFixed(1)}%`
      return `p50 ${pct(p50.median)}${range(p50, pct)}; p99 ${signedMs(p99.median)}${range(p99, signedMs)}`
    },
  )

  const maxKb = Math.max(memory?.maxKb ?? 0, soak?.maxKb ?? 0)
  if (maxKb > 0)
    checks.push({ name: 'row 5 RSS < 150 MB', status: maxKb < 150 * 1024 ? 'PASS' : 'FAIL', detail: `max ${(maxKb / 1024).toFixed(1)} MB` })
  else checks.push({ name: 'row 5 RSS < 150 MB', status: 'skip', detail: 'row 5 not run' })
  if (soak) {
    const growth = soak.endKb / soak.startKb - 1
    checks.push({
      name: `row 5 RSS flat within 10% over ${soak.durationS} s`,
      status: Math.abs(growth) <= 0.1 ? 'PASS' : 'FAIL',
      detail: `${(soak.startKb / 1024).toFixed(1)} → ${(soak.endKb / 1024).toFixed(1)} MB (${growth >= 0 ? '+' : ''}${(growth * 100).toFixed(1)}%)`,
    })
  } else {
    checks.push({ name: 'row 5 RSS flat within 10% over 10 min', status: 'skip', detail: 'run with --soak 600' })
  }
  return checks
}

/** Issue 27's budget for claim binding and captures, µs per request. */
const BINDING_BUDGET_US = 2
// The micro-benchmark's cases (micro/decision.bench.mjs) whose difference is the binding's cost.
const MICRO_HOT = 'decide: cached token, memory set (hot path)'
const MICRO_BOUND = 'decide: as above, rule with a capture bound to a claim'

/** µs/op of micro case `a` minus case `b`, or undefined when either did not run. */
function microDifference(micro, a, b) {
  const us = (name) => micro?.results?.find((r) => r.name === name)?.usPerOp
  return us(a) === undefined || us(b) === undefined ? undefined : us(a) - us(b)
}

export const formatChecks = (checks) => checks.map((c) => `${pad(c.status, 4)}  ${c.name}  (${c.detail})`).join('\n')

function formatMicroTable({ results }) {
  const lines = ['| decision micro-benchmark | ops/s | µs/op |', '|---|---:|---:|']
  for (const r of results) lines.push(`| ${r.name} | ${Math.round(r.opsPerS)} | ${r.usPerOp.toFixed(2)} |`)
  return lines.join('\n')
}

/**
 * Whether a run replaces README.md's "Latest run" block and appends a line to RESULTS.md. Not with
 * `--no-record`; not in an A/B (`--against`), whose rows are two builds rather than the tree; and not
 * when no row ran: a soak alone has no table, and recording it would replace the latest full table
 * with an empty one.
 */
export function shouldRecord({ noRecord, against, rowCount }) {
  return !noRecord && !against && rowCount > 0
}

const START = '<!-- bench:latest:start -->'
const END = '<!-- bench:latest:end -->'

/** Replaces the block between the markers in README.md with the latest table and checks. */
export function updateReadme(path, { table, checks, meta, micro }) {
  if (!existsSync(path)) return false
  const text = readFileSync(path, 'utf8')
  const a = text.indexOf(START)
  const b = text.indexOf(END)
  if (a < 0 || b < a) return false
  const block = [
    START,
    '',
    `${meta.date}, commit \`${meta.commit}\`, Node ${meta.node}, ${meta.cpu.count} × ${meta.cpu.model}, ${meta.pinningText};`,
    `${meta.settings.connections} connections, ${meta.settings.durationS} s per row, median of ${meta.settings.rounds} interleaved rounds; 1-minute load average before the run: ${meta.loadavgAtStart[0]}.`,
    '',
    table,
    '',
    '```',
    formatChecks(checks),
    '```',
    '',
    ...(micro?.results ? [formatMicroTable(micro), ''] : []),
    END,
  ].join('\n')
  writeFileSync(path, text.slice(0, a) + block + text.slice(b + END.length))
  return true
}

/** One line per run in RESULTS.md: when, what, where, and the ratios the targets are about. */
export function appendResultsLog(path, { summary, checks, meta, jsonName }) {
  const by = Object.fromEntries(summary.map((r) => [r.id, r]))
  const rps = (id) => (by[id]?.median ? Math.round(by[id].median.rps) : '—')
  const r = (a, b) => (by[a]?.median && by[b]?.median ? (paired(by[a], by[b])?.median.toFixed(2) ?? '—') : '—')
  const passed = checks.filter((c) => c.status === 'PASS').length
  const judged = checks.filter((c) => c.status !== 'skip').length
  const line = `| ${meta.date} | \`${meta.commit}\` | ${meta.node} | ${meta.cpu.count}× ${meta.cpu.model} | ${meta.pinningShort} | ${meta.settings.durationS}s×${meta.settings.rounds} | ${rps('2')} | ${rps('3')} | ${r('3', '2')} | ${r('4a', '2')} | ${r('4b', '2')} | ${r('5r', '2')} | ${r('3', '6')} | ${r('7', '3')} | ${passed}/${judged} | [json](results/${jsonName}) |\n`
  appendFileSync(path, line)
}
