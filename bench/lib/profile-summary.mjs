#!/usr/bin/env node
// Self time by function from a V8 .cpuprofile (node --cpu-prof), heaviest first, so a profile
// can be read without a browser.
//
//   node lib/profile-summary.mjs profiles/lapse-mem.cpuprofile [--top 30] [--filter dist/] [--inclusive]
//
// Percentages are of busy samples (idle excluded). --inclusive counts a function's callees too.
import { readFileSync } from 'node:fs'
import { parseArgs } from 'node:util'

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: { top: { type: 'string', default: '30' }, filter: { type: 'string' }, inclusive: { type: 'boolean', default: false } },
})
if (positionals.length === 0) {
  process.stderr.write('usage: node lib/profile-summary.mjs <file.cpuprofile> [--top N] [--filter substring-of-url]\n')
  process.exit(2)
}

const profile = JSON.parse(readFileSync(positionals[0], 'utf8'))
const byId = new Map(profile.nodes.map((n) => [n.id, n]))
const hits = new Map()
for (const id of profile.samples) hits.set(id, (hits.get(id) ?? 0) + 1)
const idle = profile.nodes.filter((n) => n.callFrame.functionName === '(idle)').reduce((a, n) => a + (hits.get(n.id) ?? 0), 0)
const total = profile.samples.length - idle
if (values.inclusive) {
  // A node's subtree samples, credited once per function key along each path.
  const parent = new Map()
  for (const n of profile.nodes) for (const c of n.children ?? []) parent.set(c, n.id)
  for (const [id, n] of [...hits]) {
    const seen = new Set()
    for (let p = parent.get(id); p !== undefined; p = parent.get(p)) {
      const f = byId.get(p).callFrame
      const key = `${f.functionName}|${f.url}|${f.lineNumber}`
      if (seen.has(key)) continue
      seen.add(key)
      hits.set(p, (hits.get(p) ?? 0) + n)
    }
  }
}

const short = (url) =>
  url
    .replace(/^file:\/\//, '')
    .replace(/^.*\/node_modules\//, '~/')
    .replace(/^.*\/(dist|bench|src)\//, '$1/')
const self = new Map()
for (const [id, n] of hits) {
  const { functionName, url, lineNumber } = byId.get(id).callFrame
  if (functionName === '(idle)' || functionName === '(root)') continue
  if (values.filter && !url.includes(values.filter)) continue
  const key = `${functionName || '(anonymous)'}  ${url ? `${short(url)}:${lineNumber + 1}` : ''}`
  self.set(key, (self.get(key) ?? 0) + n)
}
const rows = [...self].sort((a, b) => b[1] - a[1]).slice(0, Number(values.top))
process.stdout.write(`${total} busy samples (${idle} idle left out)${values.inclusive ? ', inclusive' : ', self time'}\n`)
for (const [key, n] of rows) process.stdout.write(`${((100 * n) / total).toFixed(1).padStart(5)}%  ${key}\n`)
