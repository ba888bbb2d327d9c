#!/usr/bin/env node
// Self time by function from a V8 .cpuprofile (node --cpu-prof), heaviest first, so a profile
// can be read without a browser.
//
//   node lib/profile-summary.mjs profiles/lapse-mem.cpuprofile [--top 30] [--filter dist/] [--inclusive]
//   node lib/profile-summary.mjs profiles/lapse-verify.cpuprofile --groups [--us-per-req 150] [--explain 5]
//
// Percentages are of busy samples (idle excluded). --inclusive counts a function's callees too.
// --groups sorts every busy sample into the groups of issue 27's table (decision, undici, the
// response write, logging, GC, …) by the nearest frame of its stack that names one, and with
// --us-per-req (the row's CPU µs/req) turns each share into µs per request; --explain N lists each
// group's N heaviest functions by self time.
import { readFileSync } from 'node:fs'
import { parseArgs } from 'node:util'

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    top: { type: 'string', default: '30' },
    filter: { type: 'string' },
    inclusive: { type: 'boolean', default: false },
    groups: { type: 'boolean', default: false },
    explain: { type: 'string' },
    'us-per-req': { type: 'string' },
  },
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
if (values.groups) {
  printGroups()
  process.exit(0)
}
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

function short(url) {
  return url
    .replace(/^file:\/\//, '')
    .replace(/^.*\/node_modules\//, '~/')
    .replace(/^.*\/(dist|bench|src)\//, '$1/')
}
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

/**
 * Where a sample's time goes, by the frame nearest its leaf that one of these names. Order matters
 * only within one frame. A socket write under node's ServerResponse is the response to the client;
 * one under undici is the request to the upstream; Lapse's dispatch handler (http/forward.js)
 * counts with undici, since it is the forwarding engine's callback.
 */
function groupOf(frame) {
  const { functionName: name, url } = frame
  if (name === '(garbage collector)') return 'GC'
  if (name === '(program)') return 'V8 and native, unattributed ((program))'
  if (/\/(ioredis|redis-parser|denque|cluster-key-slot|standard-as-callback|redis-errors)\//.test(url)) return 'ioredis (Redis client)'
  if (/\/(pino|sonic-boom|thread-stream|pino-std-serializers)\//.test(url) || /\/dist\/telemetry\//.test(url))
    return 'logging and telemetry'
  if (/\/dist\/(decide|verify|authorize|revocation|bind|extract|target|core)\//.test(url) || /\/dist\/policy\.js/.test(url))
    return "decision (Lapse's stages)"
  if (url === 'node:_http_outgoing' || (url === 'node:_http_server' && /^(writeHead|_implicitHeader|ServerResponse)/.test(name)))
    return 'response write (to the client)'
  if (/\/undici\//.test(url) || /\/dist\/http\/forward\.js/.test(url) || /^wasm/.test(url)) return 'undici (upstream exchange)'
  if (/\/dist\/http\//.test(url)) return "Lapse's HTTP adapter (exchange, headers)"
  if (/^node:_http_(server|incoming|common)$/.test(url)) return 'request parse and dispatch (node:http)'
  if (/\/bench\/lib\//.test(url)) return "the floor's own code"
  return undefined
}

function printGroups() {
  const parent = new Map()
  for (const n of profile.nodes) for (const c of n.children ?? []) parent.set(c, n.id)
  const groups = new Map()
  const members = new Map()
  for (const [id, n] of hits) {
    const leaf = byId.get(id).callFrame
    if (leaf.functionName === '(idle)' || leaf.functionName === '(root)') continue
    let group
    for (let p = id; p !== undefined && group === undefined; p = parent.get(p)) group = groupOf(byId.get(p).callFrame)
    group ??= 'other (event loop, streams, timers, start-up)'
    groups.set(group, (groups.get(group) ?? 0) + n)
    const fns = members.get(group) ?? new Map()
    const key = `${leaf.functionName || '(anonymous)'}  ${leaf.url ? `${short(leaf.url)}:${leaf.lineNumber + 1}` : ''}`
    fns.set(key, (fns.get(key) ?? 0) + n)
    members.set(group, fns)
  }
  const usPerReq = values['us-per-req'] === undefined ? undefined : Number(values['us-per-req'])
  process.stdout.write(`${total} busy samples (${idle} idle left out), by group${usPerReq ? `, at ${usPerReq} CPU µs/req` : ''}\n`)
  for (const [group, n] of [...groups].sort((a, b) => b[1] - a[1])) {
    const share = n / total
    const us = usPerReq ? `  ${(share * usPerReq).toFixed(1).padStart(6)} µs/req` : ''
    process.stdout.write(`${(100 * share).toFixed(1).padStart(5)}%${us}  ${group}\n`)
    if (values.explain === undefined) continue
    const top = [...members.get(group)].sort((a, b) => b[1] - a[1]).slice(0, Number(values.explain))
    for (const [key, m] of top) process.stdout.write(`         ${((100 * m) / total).toFixed(1).padStart(5)}%  ${key}\n`)
  }
}
