#!/usr/bin/env node
// What the audit line adds to one cached request, in process: the request decided and recorded
// with LAPSE_LOG_ALLOWS=all against =none, in 30 interleaved pairs of 100 ms, the line going into
// the tree's own stdout destination opened on /dev/null (the stdout sink, or before it pino's
// SonicBoom as main.ts made it). Run it on two builds to compare them (issue 27):
//
//   node micro/audit-line.mjs ..              # this tree (npm run build first)
//   node micro/audit-line.mjs /tmp/base-tree  # e.g. `git archive 5edde37 | tar -x -C …`, built
import { existsSync, mkdtempSync, openSync, rmSync } from 'node:fs'
import { createRequire } from 'node:module'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { performance } from 'node:perf_hooks'
import { pathToFileURL } from 'node:url'
import { decideDepsOf, inProcessEnv, recordedRequest } from '../lib/in-process.mjs'
import { makeKeys, mintToken } from '../lib/keys.mjs'

const root = resolve(process.argv[2] ?? '..')
const core = (rel) => import(pathToFileURL(join(root, 'dist', rel)).href)
const rootRequire = createRequire(join(root, 'package.json'))
const ISS = 'https://issuer.bench'
const AUD = 'bench-api'
const PATH = '/v1/items'

const dir = mkdtempSync(join(tmpdir(), 'lapse-audit-line-'))
try {
  const keys = await makeKeys(dir)
  const token = await mintToken(keys, 'RS256', { iss: ISS, aud: AUD, ttlS: 3000 })
  const { loadConfig } = await core('config/load.js')
  const { buildDeps } = await core('main.js')
  const { decide } = await core('decide/decide.js')
  const pino = rootRequire('pino')
  const nullFd = openSync('/dev/null', 'w')
  const sinkPath = join(root, 'dist/telemetry/line-sink.js')
  const sunk = existsSync(sinkPath)
  const destination = sunk
    ? new (await core('telemetry/line-sink.js')).LineSink({
        fd: nullFd,
        capBytes: 16 << 20,
        /* a build before capBytes: */ capChars: 16 << 20,
      })
    : pino.destination({ dest: nullFd, sync: false, minLength: 4096, periodicFlush: 1000 })
  const log = pino(
    { level: 'info', base: { service: 'lapse' }, timestamp: pino.stdTimeFunctions.isoTime, formatters: { level: (l) => ({ level: l }) } },
    destination,
  )
  // Telemetry off, as in rows 3 and 3l.
  const telemetry = {
    tracerProvider: rootRequire('@opentelemetry/api').trace.getTracerProvider(),
    tracing: false,
    meterProvider: undefined,
    propagator: new (rootRequire('@opentelemetry/core').W3CTraceContextPropagator)(),
    metricsHandler: undefined,
    shutdown: async () => undefined,
  }
  const authorization = [`Bearer ${token}`]
  const requestWith = async (allows) => {
    // The level is the logger's (info): only LAPSE_LOG_ALLOWS differs between the two sides.
    const { LAPSE_LOG_LEVEL: _level, ...env } = inProcessEnv({ jwksFile: keys.jwksFile, iss: ISS, aud: AUD, LAPSE_LOG_ALLOWS: allows })
    const deps = await buildDeps(loadConfig(env), { log, telemetry })
    const d = decideDepsOf(deps)
    await decide({ method: 'GET', url: PATH, authorization, rawHeaders: [] }, d)
    return recordedRequest(deps, d, { decide, path: PATH, authorization, rawHeaders: [] })
  }
  const none = await requestWith('none')
  const all = await requestWith('all')
  // Every 64 calls the event loop turns, as it does between requests under load: the sink's
  // batches are written then (in a loop that never yields they would pile up to the cap and
  // every later line be dropped, which is cheaper than writing it).
  const turn = () => new Promise(setImmediate)
  const usPerCall = async (fn, ms) => {
    let n = 0
    const t0 = performance.now()
    const stop = t0 + ms
    while (performance.now() < stop) {
      for (let i = 0; i < 64; i++) fn()
      n += 64
      await turn()
    }
    return ((performance.now() - t0) * 1000) / n
  }
  await usPerCall(none, 500)
  await usPerCall(all, 500)
  const without = []
  const added = []
  for (let r = 0; r < 30; r++) {
    const a = await usPerCall(none, 100)
    added.push((await usPerCall(all, 100)) - a)
    without.push(a)
  }
  if (sunk && destination.dropped > 0) throw new Error(`the sink dropped ${destination.dropped} lines: the figures would be too low`)
  const sorted = (xs) => [...xs].sort((a, b) => a - b)
  const q = (xs, p) => sorted(xs)[Math.floor((xs.length - 1) * p)]
  process.stdout.write(
    `${sunk ? 'stdout sink' : 'pino destination'} (${root}): a request without its line ${q(without, 0.5).toFixed(2)} µs; ` +
      `the line adds ${q(added, 0.5).toFixed(2)} µs (median of 30 interleaved pairs, quartiles ${q(added, 0.25).toFixed(2)} to ${q(added, 0.75).toFixed(2)})\n`,
  )
} finally {
  rmSync(dir, { recursive: true, force: true })
}
// The destination's pending lines go to /dev/null; nothing to wait for.
process.exit(0)
