#!/usr/bin/env node
// What building telemetry with NodeSDK (@opentelemetry/sdk-node) costs per request, against the
// same parts assembled by hand (as Lapse did before issue 22), with a collector that takes every
// span (row 7r's shape) and without sockets for the requests themselves.
//
//   npm run build && node bench/otel-sdk-cost.mjs [--rounds 12] [--seconds 3] [--rate 8000]
//
// Three child processes, each on its own: `nodesdk` is Lapse's startTelemetry (NodeSDK);
// `manual` is a BasicTracerProvider with a BatchSpanProcessor and the OTLP/protobuf exporter, the
// same resource detectors as before, the same pausing gate and metric producer, and no sdk-node
// loaded; `manual+load` is `manual` after importing sdk-node (every exporter it requires), unused,
// which prices the bigger heap alone. Each round asks every child in turn (the order rotates) to
// run the request bookkeeping of src/http/server.ts (recorder start, decide, decided, inject,
// finish) at `--rate` requests per second for `--seconds`, and reports the process's CPU time
// (user + system, every thread, export work and GC included) per request. The ratios are per
// round, against `manual`, and their median is printed with the range.
import { fork, spawn } from 'node:child_process'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath, pathToFileURL } from 'node:url'
import { parseArgs } from 'node:util'
import { decideDepsOf, inProcessEnv, recordedRequest, silentLogger } from './lib/in-process.mjs'
import { makeKeys, mintToken } from './lib/keys.mjs'
import { freePort } from './lib/proc.mjs'

const here = dirname(fileURLToPath(import.meta.url))
const root = resolve(here, '..')
const ISS = 'https://issuer.bench.lapse.test'
const AUD = 'bench-api'
const PATH = '/v1/items'
const RAW_HEADERS = ['Host', '127.0.0.1', 'Authorization', 'Bearer …', 'Connection', 'keep-alive']
const VARIANTS = ['manual', 'nodesdk', 'manual+load']

const dist = (rel) => import(pathToFileURL(join(root, 'dist', rel)).href)
const median = (xs) => [...xs].sort((a, b) => a - b)[xs.length >> 1]

if (process.env.LAPSE_OTEL_COST_CHILD) await child(process.env.LAPSE_OTEL_COST_CHILD)
else await parent()

async function parent() {
  const { values } = parseArgs({
    options: {
      rounds: { type: 'string', default: '12' },
      seconds: { type: 'string', default: '3' },
      rate: { type: 'string', default: '8000' },
      // Each child writes a CPU profile into this directory when it exits (node --cpu-prof).
      'cpu-prof': { type: 'string' },
    },
  })
  const rounds = Number(values.rounds)
  const ms = Number(values.seconds) * 1000
  const rate = Number(values.rate)
  const dir = mkdtempSync(join(tmpdir(), 'lapse-otel-cost-'))
  const sinkPort = await freePort()
  const sink = spawn(process.execPath, [join(here, 'lib', 'collector.mjs'), String(sinkPort)], { stdio: 'ignore' })
  const children = new Map()
  try {
    const keys = await makeKeys(dir)
    const token = await mintToken(keys, 'RS256', { iss: ISS, aud: AUD, ttlS: 3600 })
    const env = {
      ...process.env,
      LAPSE_JWKS_FILE: keys.jwksFile,
      LAPSE_BENCH_TOKEN: token,
      OTEL_EXPORTER_OTLP_ENDPOINT: `http://127.0.0.1:${sinkPort}`,
      OTEL_METRICS_EXPORTER: 'none',
    }
    for (const v of VARIANTS) {
      const execArgv = ['--expose-gc']
      if (values['cpu-prof']) execArgv.push('--cpu-prof', '--cpu-prof-dir', values['cpu-prof'], '--cpu-prof-name', `${v}.cpuprofile`)
      const c = fork(fileURLToPath(import.meta.url), [], {
        env: { ...env, LAPSE_OTEL_COST_CHILD: v },
        execArgv,
        stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
      })
      children.set(v, c)
      const ready = await reply(c)
      process.stdout.write(`${v}: live heap after start-up ${ready.heapMb} MB\n`)
    }
    const ask = (v, msg) => {
      const c = children.get(v)
      c.send(msg)
      return reply(c)
    }
    // Warm-up round, not counted.
    for (const v of VARIANTS) await ask(v, { ms: Math.min(ms, 2000), rate })
    const perRound = []
    for (let r = 0; r < rounds; r++) {
      const order = VARIANTS.map((_, i) => VARIANTS[(i + r) % VARIANTS.length])
      const got = {}
      for (const v of order) got[v] = await ask(v, { ms, rate })
      perRound.push(got)
      const line = VARIANTS.map((v) => `${v} ${got[v].usPerReq.toFixed(2)} µs (heap ${got[v].heapMb} MB)`).join(' | ')
      process.stdout.write(`round ${r + 1}: ${line}\n`)
    }
    process.stdout.write('\nCPU µs per request, median over rounds; ratio to manual per round (median, min–max):\n')
    for (const v of VARIANTS) {
      const us = median(perRound.map((g) => g[v].usPerReq))
      const ratios = perRound.map((g) => g[v].usPerReq / g.manual.usPerReq)
      process.stdout.write(
        `  ${v.padEnd(12)} ${us.toFixed(2)} µs/req  × ${median(ratios).toFixed(3)} (${Math.min(...ratios).toFixed(3)}–${Math.max(...ratios).toFixed(3)})  heap ${perRound.at(-1)[v].heapMb} MB\n`,
      )
    }
  } finally {
    // A message asks each child to exit on its own, so that --cpu-prof writes its profile.
    await Promise.all([...children.values()].map((c) => new Promise((r) => (c.once('exit', r), c.send({ exit: true })))))
    sink.kill()
    rmSync(dir, { recursive: true, force: true })
  }
}

function reply(c) {
  return new Promise((resolve, reject) => {
    const onMessage = (m) => (c.off('exit', onExit), resolve(m))
    const onExit = (code) => (c.off('message', onMessage), reject(new Error(`child exited (${code})`)))
    c.once('message', onMessage)
    c.once('exit', onExit)
  })
}

async function child(variant) {
  const silent = silentLogger()
  const env = { ...process.env, ...inProcessEnv({ jwksFile: process.env.LAPSE_JWKS_FILE, iss: ISS, aud: AUD }) }
  const clock = { now: () => Date.now() }
  const telemetry =
    variant === 'nodesdk'
      ? await (await dist('telemetry/settings.js')).startTelemetry(env, { log: silent, clock })
      : await manualTelemetry(env, silent, variant === 'manual+load')
  const { loadConfig } = await dist('config/load.js')
  const { buildDeps } = await dist('main.js')
  const { decide } = await dist('decide/decide.js')
  const deps = await buildDeps(loadConfig(env), { log: silent, telemetry })
  const d = decideDepsOf(deps)
  const authorization = [`Bearer ${process.env.LAPSE_BENCH_TOKEN}`]
  await decide({ method: 'GET', url: PATH, authorization, rawHeaders: RAW_HEADERS }, d)
  const request = recordedRequest(deps, d, { decide, path: PATH, authorization, rawHeaders: RAW_HEADERS })
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms))
  process.on('message', async ({ ms, rate, exit }) => {
    if (exit) process.exit(0)
    // Bursts every 10 ms, as a loaded event loop serves them; timers and exports run in between.
    const perTick = Math.max(1, Math.round(rate / 100))
    const cpu0 = process.cpuUsage()
    const t0 = Date.now()
    let n = 0
    while (Date.now() - t0 < ms) {
      for (let i = 0; i < perTick; i++) request()
      n += perTick
      await sleep(10)
    }
    const cpu = process.cpuUsage(cpu0)
    const heapMb = Math.round(process.memoryUsage().heapUsed / 1e6)
    process.send({ usPerReq: (cpu.user + cpu.system) / n, heapMb })
  })
  globalThis.gc()
  process.send({ ready: true, heapMb: (process.memoryUsage().heapUsed / 1e6).toFixed(1) })
}

/** The SDK's parts assembled by hand, as src/telemetry/sdk.ts did before NodeSDK. */
async function manualTelemetry(env, log, loadSdkNode) {
  if (loadSdkNode) await import('@opentelemetry/sdk-node')
  const { W3CTraceContextPropagator, CompositePropagator, W3CBaggagePropagator } = await import('@opentelemetry/core')
  const { defaultResource, detectResources, hostDetector, processDetector, resourceFromAttributes } = await import(
    '@opentelemetry/resources'
  )
  const { MeterProvider } = await import('@opentelemetry/sdk-metrics')
  const { PrometheusExporter } = await import('@opentelemetry/exporter-prometheus')
  const { BasicTracerProvider, BatchSpanProcessor, ParentBasedSampler, AlwaysOnSampler } = await import('@opentelemetry/sdk-trace-base')
  const { OTLPTraceExporter } = await import('@opentelemetry/exporter-trace-otlp-proto')
  const { DecisionAggregates } = await dist('telemetry/metrics.js')
  const { coalesced } = await dist('telemetry/coalesced-counters.js')
  const { createExportGate, pausingTracerProvider } = await dist('telemetry/pausing.js')
  const resource = defaultResource()
    .merge(detectResources({ detectors: [hostDetector, processDetector] }))
    .merge(resourceFromAttributes({ 'service.name': 'lapse' }))
  const decisions = new DecisionAggregates()
  const prometheus = new PrometheusExporter({ preventServerStart: true, metricProducers: [decisions] })
  const meterProvider = new MeterProvider({ resource, readers: [prometheus] })
  const selfObs = coalesced()
  selfObs.bind(meterProvider)
  const exporter = new OTLPTraceExporter({ url: `${env.OTEL_EXPORTER_OTLP_ENDPOINT}/v1/traces`, selfObsMeterProvider: meterProvider })
  let gate
  const exportOf = exporter.export.bind(exporter)
  exporter.export = (items, done) => exportOf(items, (r) => (gate?.report(r), done(r)))
  gate = createExportGate({ failuresToPause: 1, retryAfterMs: 10_000, probe: () => exporter.export([], () => undefined), log })
  const sampler = new ParentBasedSampler({ root: new AlwaysOnSampler() })
  const bsp = new BatchSpanProcessor(exporter, {
    maxQueueSize: 2048,
    maxExportBatchSize: 512,
    scheduledDelayMillis: 5000,
    exportTimeoutMillis: 30_000,
    selfObsMeterProvider: selfObs,
  })
  const basic = new BasicTracerProvider({ resource, sampler, spanProcessors: [bsp] })
  return {
    tracerProvider: pausingTracerProvider(basic, { gate, sampler, onUnrecorded: () => {} }),
    tracing: true,
    meterProvider,
    decisions,
    propagator: new CompositePropagator({ propagators: [new W3CTraceContextPropagator(), new W3CBaggagePropagator()] }),
    metricsHandler: undefined,
    shutdown: () => Promise.all([basic.shutdown(), meterProvider.shutdown()]),
  }
}
