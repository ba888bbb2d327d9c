// OTEL_* → the telemetry Lapse runs with, through the real SDK (NodeSDK and the exporters read the
// variables themselves): which signals are on, what a bad value does (a warning and a fallback,
// never an error), and that no warning quotes a header value or a URL credential.
import { rmSync } from 'node:fs'
import { dirname } from 'node:path'
import { ROOT_CONTEXT, TraceFlags, trace } from '@opentelemetry/api'
import pino from 'pino'
import { Writable } from 'node:stream'
import t, { type Test } from 'tap'
import { createPropagator, startTelemetry, type Telemetry } from '../../src/telemetry/settings.js'
import { newKeyPair, writeJwks } from '../fixtures/keys.js'

async function start(
  t: Test,
  env: Record<string, string>,
): Promise<{ telemetry: Telemetry; lines: Array<{ level: number; msg: string; telemetry?: string; err?: string }>; raw: string[] }> {
  const raw: string[] = []
  const sink = new Writable({
    write(chunk: Buffer, _e, done) {
      raw.push(...chunk.toString('utf8').split('\n').filter(Boolean))
      done()
    },
  })
  const telemetry = await startTelemetry(env, { log: pino({ level: 'info' }, sink), clock: { now: () => Date.now() } })
  t.teardown(() => telemetry.shutdown())
  return { telemetry, raw, lines: raw.map((l) => JSON.parse(l) as { level: number; msg: string; telemetry?: string; err?: string }) }
}
const warnings = (lines: Array<{ level: number; msg: string; telemetry?: string }>) =>
  lines.filter((l) => l.level === 40 && l.telemetry === 'config').map((l) => l.msg)
// No collector is contacted: exports are never due during these tests.
const QUIET = {
  OTEL_EXPORTER_OTLP_ENDPOINT: 'http://127.0.0.1:9',
  OTEL_EXPORTER_OTLP_TIMEOUT: '200',
  OTEL_BSP_SCHEDULE_DELAY: '600000',
  OTEL_METRIC_EXPORT_INTERVAL: '600000',
}

t.test('OTEL_SDK_DISABLED: true in any case turns it off; anything but true/false warns and stays on', async (t) => {
  for (const v of ['true', 'TRUE']) {
    const { telemetry } = await start(t, { ...QUIET, OTEL_SDK_DISABLED: v })
    t.same([telemetry.tracing, telemetry.meterProvider, telemetry.metricsHandler], [false, undefined, undefined], `${v}: off`)
  }
  const on = await start(t, { ...QUIET, OTEL_SDK_DISABLED: 'false' })
  t.equal(on.telemetry.tracing, true)
  const odd = await start(t, { ...QUIET, OTEL_SDK_DISABLED: 'yes please' })
  t.equal(odd.telemetry.tracing, true)
  t.match(warnings(odd.lines), [/^OTEL_SDK_DISABLED/])
})

t.test('exporters: none turns traces off and leaves /metrics; unknown ones warn and are ignored', async (t) => {
  const none = await start(t, { ...QUIET, OTEL_TRACES_EXPORTER: 'none', OTEL_METRICS_EXPORTER: 'none' })
  t.equal(none.telemetry.tracing, false, 'no span exporter: the recorder skips spans')
  t.ok(none.telemetry.metricsHandler, 'Prometheus on the admin port stays')
  t.same(warnings(none.lines), [])
  const odd = await start(t, { ...QUIET, OTEL_TRACES_EXPORTER: 'zipkin,otlp', OTEL_METRICS_EXPORTER: 'prometheus' })
  t.equal(odd.telemetry.tracing, true)
  t.match(warnings(odd.lines), [/^OTEL_TRACES_EXPORTER: "zipkin" is not supported/])
})

t.test('sampler: OTEL_TRACES_SAMPLER reaches the tracer (always_off records nothing, a sampled parent is followed)', async (t) => {
  const off = (await start(t, { ...QUIET, OTEL_TRACES_SAMPLER: 'always_off' })).telemetry.tracerProvider.getTracer('lapse')
  t.equal(off.startSpan('x', {}, ROOT_CONTEXT).isRecording(), false)
  const parent = trace.setSpanContext(ROOT_CONTEXT, {
    traceId: '4bf92f3577b34da6a3ce929d0e0e4736',
    spanId: '00f067aa0ba902b7',
    traceFlags: TraceFlags.SAMPLED,
    isRemote: true,
  })
  const ratio = (
    await start(t, { ...QUIET, OTEL_TRACES_SAMPLER: 'parentbased_traceidratio', OTEL_TRACES_SAMPLER_ARG: '0' })
  ).telemetry.tracerProvider.getTracer('lapse')
  t.equal(ratio.startSpan('x', {}, ROOT_CONTEXT).isRecording(), false, 'ratio 0: a new trace is not sampled')
  t.equal(ratio.startSpan('x', {}, parent).isRecording(), true, 'a sampled caller is')
  const bad = await start(t, { ...QUIET, OTEL_TRACES_SAMPLER: 'sometimes' })
  t.equal(
    bad.telemetry.tracerProvider.getTracer('lapse').startSpan('x', {}, ROOT_CONTEXT).isRecording(),
    true,
    'an unknown sampler falls back to parentbased_always_on',
  )
  t.ok(
    warnings(bad.lines).some((w) => w.includes('OTEL_TRACES_SAMPLER')),
    'and says so',
  )
})

t.test('warnings never quote a header value or a URL credential', async (t) => {
  const { raw } = await start(t, {
    ...QUIET,
    OTEL_EXPORTER_OTLP_HEADERS: 'api-key=s3cr3t-value%ZZ,ok=1',
    OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: 'http://user:hunter2-password@[collector/',
    OTEL_EXPORTER_OTLP_METRICS_ENDPOINT: 'https://user:hunter3-password@collector.example/v1/metrics?token=t0ken-value',
  })
  t.ok(raw.length > 0)
  for (const line of raw) {
    t.notOk(line.includes('s3cr3t'), 'no header value')
    t.notOk(/hunter[23]|t0ken-value/.test(line), 'no URL credential')
  }
})

t.test('OTEL_PROPAGATORS: none, or a subset; unsupported ones warn', async (t) => {
  const fields = (names?: string[]) => {
    const w: string[] = []
    return { fields: createPropagator(names, w).fields().sort(), w }
  }
  t.same(fields().fields, ['baggage', 'traceparent', 'tracestate'], 'tracecontext and baggage by default')
  t.same(fields(['none']).fields, [])
  t.same(fields(['tracecontext']).fields, ['traceparent', 'tracestate'])
  const b3 = fields(['b3', 'tracecontext'])
  t.same(b3.fields, ['traceparent', 'tracestate'])
  t.match(b3.w, [/^OTEL_PROPAGATORS: "b3"/])
})

t.test('another SDK already holds the OpenTelemetry API globals: Lapse warns and serves without telemetry of its own', async (t) => {
  const { metrics } = await import('@opentelemetry/api')
  const { MeterProvider } = await import('@opentelemetry/sdk-metrics')
  const foreign = new MeterProvider()
  t.ok(metrics.setGlobalMeterProvider(foreign), 'a foreign SDK registered first')
  t.teardown(() => metrics.disable())
  const { telemetry, lines } = await start(t, QUIET)
  t.equal(telemetry.tracing, false)
  t.equal(telemetry.meterProvider, undefined)
  t.ok(
    lines.some((l) => l.level === 40 && /could not start/.test(l.msg) && l.err === 'ERR_OTEL_GLOBALS_TAKEN'),
    'says why, with the docs/errors.md code',
  )
  t.equal(metrics.getMeterProvider(), foreign, 'the foreign registration is left as it was')
  metrics.disable()
  const after = await start(t, QUIET)
  t.equal(after.telemetry.tracing, true, 'once the globals are free, Lapse starts its own')
})

// A fresh process each way, on the built Lapse (npm test builds first): the span and metric SDKs
// are CommonJS packages, so what is loaded shows in require's cache.
t.test('OTEL_SDK_DISABLED=true: the span and metric SDKs are never loaded; with telemetry on they are', async (t) => {
  const { execFileSync } = await import('node:child_process')
  const root = new URL('../../', import.meta.url)
  const jwksPath = writeJwks([(await newKeyPair('ES256')).publicJwk])
  t.teardown(() => rmSync(dirname(jwksPath), { recursive: true, force: true }))
  const script = `
    import { createRequire } from 'node:module'
    const { startProxy } = await import('./dist/main.js')
    const running = await startProxy(process.env)
    const loaded = Object.keys(createRequire(import.meta.url).cache).filter((k) => /@opentelemetry[\\\\/]sdk-(trace-base|metrics)[\\\\/]/.test(k))
    await running.close()
    process.stdout.write(String(loaded.length))
  `
  const env = (disabled: string) => ({
    PATH: process.env.PATH ?? '',
    OTEL_SDK_DISABLED: disabled,
    OTEL_TRACES_EXPORTER: 'console',
    OTEL_METRICS_EXPORTER: 'none',
    LAPSE_LISTEN: '127.0.0.1:0',
    LAPSE_ADMIN_LISTEN: '127.0.0.1:0',
    LAPSE_UPSTREAM: 'http://127.0.0.1:9',
    LAPSE_LOG_LEVEL: 'silent',
    LAPSE_ISSUER: 'https://issuer.test',
    LAPSE_AUDIENCE: 'api',
    LAPSE_JWKS_FILE: jwksPath,
  })
  const count = (disabled: string) =>
    Number(
      execFileSync(process.execPath, ['--input-type=module', '-e', script], {
        cwd: root,
        env: env(disabled),
        encoding: 'utf8',
        timeout: 30_000,
      }),
    )
  t.equal(count('true'), 0, 'telemetry off: no SDK module loaded')
  t.ok(count('false') > 0, 'telemetry on: the SDK is loaded (so the check above can fail)')
})
