// OTEL_* → telemetry settings: the specification's names and defaults; a bad value is a warning
// that names the variable (never a header value or URL credential) and a fallback, never an error.
import { rmSync } from 'node:fs'
import { dirname } from 'node:path'
import t from 'tap'
import { readTelemetrySettings } from '../../src/telemetry/sdk.js'
import { newKeyPair, writeJwks } from '../fixtures/keys.js'

const read = (env: Record<string, string>) => readTelemetrySettings(env)

t.test('no OTEL_* at all → the specification defaults, service.name lapse', async (t) => {
  const { settings, warnings } = read({})
  t.same(warnings, [])
  t.equal(settings.disabled, false)
  t.same(settings.resource, { 'service.name': 'lapse' })
  t.same(settings.traces.exporters, ['otlp'])
  t.same(settings.traces.otlp, { protocol: 'http/protobuf', url: 'http://localhost:4318/v1/traces', headers: {}, timeoutMs: 10_000 })
  t.equal(settings.metrics.otlp.url, 'http://localhost:4318/v1/metrics')
  t.same(settings.sampler, { name: 'parentbased_always_on', ratio: 1 })
  t.same(settings.batch, { maxQueueSize: 2048, maxExportBatchSize: 512, scheduledDelayMs: 5000, exportTimeoutMs: 30_000 })
  t.equal(settings.metrics.intervalMs, 60_000)
  t.same(settings.propagators, ['tracecontext', 'baggage'])
})

t.test('OTEL_SDK_DISABLED: true in any case turns it off; anything but true/false warns and stays on', async (t) => {
  t.equal(read({ OTEL_SDK_DISABLED: 'true' }).settings.disabled, true)
  t.equal(read({ OTEL_SDK_DISABLED: 'TRUE' }).settings.disabled, true)
  t.equal(read({ OTEL_SDK_DISABLED: 'false' }).settings.disabled, false)
  const { settings, warnings } = read({ OTEL_SDK_DISABLED: 'yes please' })
  t.equal(settings.disabled, false)
  t.match(warnings, [/^OTEL_SDK_DISABLED/])
})

t.test('endpoints: the general one gets the signal path, signal-specific ones are used as given, gRPC is not joined', async (t) => {
  const general = read({ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://collector:4318/' }).settings
  t.equal(general.traces.otlp.url, 'http://collector:4318/v1/traces')
  t.equal(general.metrics.otlp.url, 'http://collector:4318/v1/metrics')
  const specific = read({ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://collector:4318', OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: 'https://traces.example/otlp' }).settings
  t.equal(specific.traces.otlp.url, 'https://traces.example/otlp')
  t.equal(specific.metrics.otlp.url, 'http://collector:4318/v1/metrics')
  const grpc = read({ OTEL_EXPORTER_OTLP_PROTOCOL: 'grpc', OTEL_EXPORTER_OTLP_ENDPOINT: 'http://collector:4317' }).settings
  t.same([grpc.traces.otlp.protocol, grpc.traces.otlp.url], ['grpc', 'http://collector:4317'])
  t.equal(read({ OTEL_EXPORTER_OTLP_PROTOCOL: 'grpc' }).settings.traces.otlp.url, 'http://localhost:4317')
  const perSignal = read({ OTEL_EXPORTER_OTLP_PROTOCOL: 'http/json', OTEL_EXPORTER_OTLP_METRICS_PROTOCOL: 'http/protobuf' }).settings
  t.same([perSignal.traces.otlp.protocol, perSignal.metrics.otlp.protocol], ['http/json', 'http/protobuf'])
})

t.test('headers: key=value pairs, percent-decoded, signal-specific ones win', async (t) => {
  const { settings } = read({ OTEL_EXPORTER_OTLP_HEADERS: 'authorization=Bearer%20abc,x-tenant=shop', OTEL_EXPORTER_OTLP_TRACES_HEADERS: 'x-tenant=traces' })
  t.same(settings.traces.otlp.headers, { authorization: 'Bearer abc', 'x-tenant': 'traces' })
  t.same(settings.metrics.otlp.headers, { authorization: 'Bearer abc', 'x-tenant': 'shop' })
})

t.test('resource: OTEL_RESOURCE_ATTRIBUTES, with OTEL_SERVICE_NAME winning over its service.name', async (t) => {
  t.same(read({ OTEL_RESOURCE_ATTRIBUTES: 'service.name=from-attrs,k8s.pod.name=orders-7f9c' }).settings.resource, { 'service.name': 'from-attrs', 'k8s.pod.name': 'orders-7f9c' })
  t.equal(read({ OTEL_RESOURCE_ATTRIBUTES: 'service.name=from-attrs', OTEL_SERVICE_NAME: 'orders-sidecar' }).settings.resource['service.name'], 'orders-sidecar')
})

t.test('exporters: none turns a signal off, prometheus is served by the admin port, unknown ones warn', async (t) => {
  t.same(read({ OTEL_TRACES_EXPORTER: 'none' }).settings.traces.exporters, [])
  t.same(read({ OTEL_TRACES_EXPORTER: 'console,otlp' }).settings.traces.exporters, ['console', 'otlp'])
  const prom = read({ OTEL_METRICS_EXPORTER: 'prometheus' })
  t.same([prom.settings.metrics.exporters, prom.warnings], [[], []])
  const odd = read({ OTEL_TRACES_EXPORTER: 'zipkin,otlp' })
  t.same(odd.settings.traces.exporters, ['otlp'])
  t.match(odd.warnings, [/^OTEL_TRACES_EXPORTER: "zipkin" is not supported/])
})

t.test('sampler: every specification sampler, the ratio argument, fallbacks', async (t) => {
  t.same(read({ OTEL_TRACES_SAMPLER: 'parentbased_traceidratio', OTEL_TRACES_SAMPLER_ARG: '0.25' }).settings.sampler, { name: 'parentbased_traceidratio', ratio: 0.25 })
  t.same(read({ OTEL_TRACES_SAMPLER: 'always_off' }).settings.sampler.name, 'always_off')
  const bad = read({ OTEL_TRACES_SAMPLER: 'traceidratio', OTEL_TRACES_SAMPLER_ARG: '7' })
  t.same(bad.settings.sampler, { name: 'traceidratio', ratio: 1 })
  t.match(bad.warnings, [/^OTEL_TRACES_SAMPLER_ARG/])
  t.equal(read({ OTEL_TRACES_SAMPLER: 'jaeger_remote' }).settings.sampler.name, 'parentbased_always_on')
})

t.test('batch queue: bad numbers fall back, a batch larger than the queue is clamped', async (t) => {
  const { settings, warnings } = read({ OTEL_BSP_MAX_QUEUE_SIZE: '100', OTEL_BSP_MAX_EXPORT_BATCH_SIZE: '500', OTEL_BSP_SCHEDULE_DELAY: 'soon' })
  t.same(settings.batch, { maxQueueSize: 100, maxExportBatchSize: 100, scheduledDelayMs: 5000, exportTimeoutMs: 30_000 })
  t.match(warnings, [/^OTEL_BSP_MAX_EXPORT_BATCH_SIZE/, /^OTEL_BSP_SCHEDULE_DELAY/])
  t.equal(warnings.length, 2)
})

t.test('warnings never quote a header value or a URL credential', async (t) => {
  const { settings, warnings } = read({
    OTEL_EXPORTER_OTLP_HEADERS: 'api-key=s3cr3t-value%ZZ,ok=1',
    OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: 'ftp://user:hunter2-password@collector/',
  })
  t.same(settings.traces.otlp.headers, { ok: '1' }, 'the undecodable entry is dropped')
  t.equal(settings.traces.otlp.url, 'http://localhost:4318/v1/traces')
  t.equal(warnings.length, 2, 'one for the bad header entry, one for the endpoint')
  for (const w of warnings) {
    t.notOk(w.includes('s3cr3t'), 'no header value')
    t.notOk(w.includes('hunter2'), 'no URL credential')
  }
})

t.test('OTEL_PROPAGATORS: none, or a subset; unsupported ones warn', async (t) => {
  t.same(read({ OTEL_PROPAGATORS: 'none' }).settings.propagators, [])
  t.same(read({ OTEL_PROPAGATORS: 'tracecontext' }).settings.propagators, ['tracecontext'])
  const b3 = read({ OTEL_PROPAGATORS: 'b3,tracecontext' })
  t.same(b3.settings.propagators, ['tracecontext'])
  t.match(b3.warnings, [/^OTEL_PROPAGATORS: "b3"/])
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
    PATH: process.env.PATH ?? '', OTEL_SDK_DISABLED: disabled, OTEL_TRACES_EXPORTER: 'console', OTEL_METRICS_EXPORTER: 'none',
    LAPSE_LISTEN: '127.0.0.1:0', LAPSE_ADMIN_LISTEN: '127.0.0.1:0', LAPSE_UPSTREAM: 'http://127.0.0.1:9', LAPSE_LOG_LEVEL: 'silent',
    LAPSE_ISSUER: 'https://issuer.test', LAPSE_AUDIENCE: 'api', LAPSE_JWKS_FILE: jwksPath,
  })
  const count = (disabled: string) => Number(execFileSync(process.execPath, ['--input-type=module', '-e', script], { cwd: root, env: env(disabled), encoding: 'utf8', timeout: 30_000 }))
  t.equal(count('true'), 0, 'telemetry off: no SDK module loaded')
  t.ok(count('false') > 0, 'telemetry on: the SDK is loaded (so the check above can fail)')
})
