// The OpenTelemetry SDK of one Lapse process, built from the standard OTEL_* variables.
//
//   const telemetry = await startTelemetry(env, { log })   // never throws: a bad setting warns and falls back
//   const deps = await buildDeps(config, { telemetry })    // tracer, meter, the admin /metrics handler
//   await telemetry.shutdown()                             // flushes what is buffered, bounded in time
//
// Why not NodeSDK: it reads process.env itself and registers process-wide globals (tracer and meter
// providers, context manager, propagator). Lapse reads its environment in one place and keeps no
// module state ("two apps share nothing"), so this assembles the same SDK parts — batch span
// processor, OTLP exporters, samplers, periodic metric reader — from the record it is given, with the
// variable names and defaults of the OpenTelemetry specification, and registers nothing globally.
//
// Off the request path by construction: a span ends into the batch processor's bounded queue
// (OTEL_BSP_MAX_QUEUE_SIZE) and one export runs at a time in the background; when the collector is
// dead or slow the queue fills and further spans are dropped and counted
// (`otel.sdk.processor.span.processed{error.type="queue_full"}`), never waited on.
import type { IncomingMessage, ServerResponse } from 'node:http'
import {
  DiagLogLevel, ProxyTracerProvider, diag, trace as traceApi,
  type DiagLogger, type MeterProvider as ApiMeterProvider, type TextMapPropagator, type TracerProvider,
} from '@opentelemetry/api'
import { CompositePropagator, ExportResultCode, W3CBaggagePropagator, W3CTraceContextPropagator, type ExportResult } from '@opentelemetry/core'
import { PrometheusExporter } from '@opentelemetry/exporter-prometheus'
import { defaultResource, detectResources, hostDetector, processDetector, resourceFromAttributes } from '@opentelemetry/resources'
import { ConsoleMetricExporter, MeterProvider, PeriodicExportingMetricReader, type IMetricReader, type PushMetricExporter } from '@opentelemetry/sdk-metrics'
import {
  AlwaysOffSampler, AlwaysOnSampler, BasicTracerProvider, BatchSpanProcessor, ConsoleSpanExporter, ParentBasedSampler,
  TraceIdRatioBasedSampler, type BufferConfig, type Sampler, type SpanExporter,
} from '@opentelemetry/sdk-trace-base'
import { ATTR_SERVICE_NAME } from '@opentelemetry/semantic-conventions'
import type { Logger } from 'pino'
import type { Clock } from '../pipeline/types.js'
import { coalesced } from './coalesced-counters.js'
import { DecisionAggregates } from './metrics.js'
import { createExportGate, pausingTracerProvider } from './pausing.js'
import { errorType } from './recorder.js'
import { METRIC_SPANS_UNRECORDED } from './semconv.js'

type Env = Readonly<Record<string, string | undefined>>

/** What the rest of Lapse needs from telemetry; tests build one over in-memory exporters. */
export interface Telemetry {
  readonly tracerProvider: TracerProvider
  /**
   * False when the tracer provider is certainly a no-op (telemetry off, or no span exporter): the
   * recorder then skips the span and context work per request and lets the client's trace
   * context pass through as sent. Absent means it may record.
   */
  readonly tracing?: boolean
  /** Undefined when metrics are off: no instruments are created at all. */
  readonly meterProvider: ApiMeterProvider | undefined
  /** The per-request decision metrics, read by every metric reader of meterProvider; with it. */
  readonly decisions?: DecisionAggregates | undefined
  readonly propagator: TextMapPropagator
  /** Prometheus text for the admin port's `/metrics`; undefined when metrics are off. */
  readonly metricsHandler: ((req: IncomingMessage, res: ServerResponse) => void) | undefined
  /** Exports what is still buffered, then stops; resolves within DEFAULTS.shutdownTimeoutMs whatever the collector does. */
  shutdown(): Promise<void>
}

type Protocol = 'http/protobuf' | 'http/json' | 'grpc'
type SamplerName = 'always_on' | 'always_off' | 'traceidratio' | 'parentbased_always_on' | 'parentbased_always_off' | 'parentbased_traceidratio'

export interface OtlpSettings {
  readonly protocol: Protocol
  readonly url: string
  /** Sent with every export; may hold a collector's API key, so never logged. */
  readonly headers: Readonly<Record<string, string>>
  readonly timeoutMs: number
}

export interface TelemetrySettings {
  readonly disabled: boolean
  readonly resource: Readonly<Record<string, string>>
  readonly traces: { readonly exporters: ReadonlyArray<'otlp' | 'console'>; readonly otlp: OtlpSettings }
  readonly metrics: { readonly exporters: ReadonlyArray<'otlp' | 'console'>; readonly otlp: OtlpSettings; readonly intervalMs: number; readonly timeoutMs: number }
  readonly sampler: { readonly name: SamplerName; readonly ratio: number }
  readonly batch: { readonly maxQueueSize: number; readonly maxExportBatchSize: number; readonly scheduledDelayMs: number; readonly exportTimeoutMs: number }
  readonly propagators: ReadonlyArray<'tracecontext' | 'baggage'>
  readonly diagLevel: DiagLogLevel | undefined
}

// The OpenTelemetry specification's defaults ("SDK environment variables"), except the service name
// and the shutdown bound, which are Lapse's.
const DEFAULTS = {
  serviceName: 'lapse',
  protocol: 'http/protobuf' as Protocol,
  httpEndpoint: 'http://localhost:4318',
  grpcEndpoint: 'http://localhost:4317',
  exportTimeoutMs: 10_000,
  sampler: 'parentbased_always_on' as SamplerName,
  samplerRatio: 1,
  // OTEL_BSP_*: the span queue is the only memory telemetry may hold while the collector is away.
  maxQueueSize: 2048,
  maxExportBatchSize: 512,
  scheduledDelayMs: 5000,
  batchExportTimeoutMs: 30_000,
  metricIntervalMs: 60_000,
  metricTimeoutMs: 30_000,
  // Span recording pauses after this many failed exports in a row (each already retried by the
  // exporter up to its timeout) and tries again with a few spans after one traces export timeout
  // (pausing.ts): a dead collector costs next to nothing, one back from a restart gets spans
  // within seconds.
  pauseAfterFailures: 1,
  pauseRetryMinMs: 100,
  pauseTrialSpans: 64,
  propagators: ['tracecontext', 'baggage'] as const,
  // A dead collector must not hold up a rolling restart: SIGTERM to exit stays within the CLI's 10 s.
  shutdownTimeoutMs: 3000,
  // One warning per signal per minute while exports keep failing, plus one when they recover.
  failureLogIntervalMs: 60_000,
}

const SIGNAL_PATHS = { TRACES: 'v1/traces', METRICS: 'v1/metrics' } as const
const SAMPLERS: readonly SamplerName[] = ['always_on', 'always_off', 'traceidratio', 'parentbased_always_on', 'parentbased_always_off', 'parentbased_traceidratio']
const DIAG_LEVELS: Record<string, DiagLogLevel> = {
  none: DiagLogLevel.NONE, error: DiagLogLevel.ERROR, warn: DiagLogLevel.WARN, info: DiagLogLevel.INFO,
  debug: DiagLogLevel.DEBUG, verbose: DiagLogLevel.VERBOSE, all: DiagLogLevel.ALL,
}

/** Parses the OTEL_* variables Lapse acts on. Pure: every problem becomes a warning and a default. */
export function readTelemetrySettings(env: Env): { settings: TelemetrySettings; warnings: string[] } {
  const warnings: string[] = []
  const get = (name: string) => {
    const v = env[name]?.trim()
    return v === undefined || v === '' ? undefined : v
  }
  const positiveInt = (name: string, fallback: number): number => {
    const raw = get(name)
    if (raw === undefined) return fallback
    const n = Number(raw)
    if (Number.isInteger(n) && n > 0) return n
    warnings.push(`${name}="${raw}" is not a positive whole number; using ${fallback}`)
    return fallback
  }
  const list = (name: string): string[] | undefined => get(name)?.split(',').map((s) => s.trim().toLowerCase()).filter((s) => s !== '')

  let disabled = false
  const rawDisabled = get('OTEL_SDK_DISABLED')
  if (rawDisabled !== undefined) {
    if (/^true$/i.test(rawDisabled)) disabled = true
    else if (!/^false$/i.test(rawDisabled)) warnings.push(`OTEL_SDK_DISABLED="${rawDisabled}" is neither true nor false; telemetry stays on`)
  }

  const resource = parsePairs('OTEL_RESOURCE_ATTRIBUTES', get('OTEL_RESOURCE_ATTRIBUTES'), warnings)
  resource[ATTR_SERVICE_NAME] = get('OTEL_SERVICE_NAME') ?? resource[ATTR_SERVICE_NAME] ?? DEFAULTS.serviceName

  /** `served`: values Lapse already covers without an exporter (accepted, nothing to add). */
  const exporters = <T extends string>(name: string, known: readonly T[], served: readonly string[] = []): T[] => {
    const values = list(name) ?? ['otlp']
    if (values.includes('none')) return []
    const chosen: T[] = []
    for (const v of values) {
      if ((known as readonly string[]).includes(v)) chosen.includes(v as T) || chosen.push(v as T)
      else if (!served.includes(v)) warnings.push(`${name}: "${v}" is not supported (${[...known, ...served, 'none'].join(', ')}); ignored`)
    }
    return chosen
  }

  const otlp = (signal: keyof typeof SIGNAL_PATHS): OtlpSettings => {
    const protocolVar = get(`OTEL_EXPORTER_OTLP_${signal}_PROTOCOL`) !== undefined ? `OTEL_EXPORTER_OTLP_${signal}_PROTOCOL` : 'OTEL_EXPORTER_OTLP_PROTOCOL'
    let protocol = (get(protocolVar) ?? DEFAULTS.protocol) as Protocol
    if (!['http/protobuf', 'http/json', 'grpc'].includes(protocol)) {
      warnings.push(`${protocolVar}="${protocol}" is not one of http/protobuf, http/json, grpc; using ${DEFAULTS.protocol}`)
      protocol = DEFAULTS.protocol
    }
    const url = endpoint(signal, protocol)
    const headers = {
      ...parsePairs('OTEL_EXPORTER_OTLP_HEADERS', get('OTEL_EXPORTER_OTLP_HEADERS'), warnings),
      ...parsePairs(`OTEL_EXPORTER_OTLP_${signal}_HEADERS`, get(`OTEL_EXPORTER_OTLP_${signal}_HEADERS`), warnings),
    }
    const timeoutMs = get(`OTEL_EXPORTER_OTLP_${signal}_TIMEOUT`) !== undefined
      ? positiveInt(`OTEL_EXPORTER_OTLP_${signal}_TIMEOUT`, DEFAULTS.exportTimeoutMs)
      : positiveInt('OTEL_EXPORTER_OTLP_TIMEOUT', DEFAULTS.exportTimeoutMs)
    return { protocol, url, headers, timeoutMs }
  }

  // Signal-specific endpoints are used as given; the general one gets the signal's path (over HTTP).
  const endpoint = (signal: keyof typeof SIGNAL_PATHS, protocol: Protocol): string => {
    const grpc = protocol === 'grpc'
    const fallback = grpc ? DEFAULTS.grpcEndpoint : `${DEFAULTS.httpEndpoint}/${SIGNAL_PATHS[signal]}`
    const specific = get(`OTEL_EXPORTER_OTLP_${signal}_ENDPOINT`)
    if (specific !== undefined) return checkUrl(`OTEL_EXPORTER_OTLP_${signal}_ENDPOINT`, specific, fallback, warnings)
    const general = get('OTEL_EXPORTER_OTLP_ENDPOINT')
    if (general === undefined) return fallback
    const base = checkUrl('OTEL_EXPORTER_OTLP_ENDPOINT', general, undefined, warnings)
    if (base === undefined) return fallback
    return grpc ? base : `${base.replace(/\/+$/, '')}/${SIGNAL_PATHS[signal]}`
  }

  const traceExporters = exporters('OTEL_TRACES_EXPORTER', ['otlp', 'console'] as const)
  // Prometheus needs no server of its own: the admin port serves /metrics whenever telemetry is on.
  const metricExporters = exporters('OTEL_METRICS_EXPORTER', ['otlp', 'console'] as const, ['prometheus'])

  let samplerName = (get('OTEL_TRACES_SAMPLER')?.toLowerCase() ?? DEFAULTS.sampler) as SamplerName
  if (!SAMPLERS.includes(samplerName)) {
    warnings.push(`OTEL_TRACES_SAMPLER="${samplerName}" is not supported (${SAMPLERS.join(', ')}); using ${DEFAULTS.sampler}`)
    samplerName = DEFAULTS.sampler
  }
  let ratio = DEFAULTS.samplerRatio
  const rawRatio = get('OTEL_TRACES_SAMPLER_ARG')
  if (rawRatio !== undefined && samplerName.endsWith('traceidratio')) {
    const r = Number(rawRatio)
    if (Number.isFinite(r) && r >= 0 && r <= 1) ratio = r
    else warnings.push(`OTEL_TRACES_SAMPLER_ARG="${rawRatio}" is not a ratio between 0 and 1; using ${DEFAULTS.samplerRatio}`)
  }

  const maxQueueSize = positiveInt('OTEL_BSP_MAX_QUEUE_SIZE', DEFAULTS.maxQueueSize)
  let maxExportBatchSize = positiveInt('OTEL_BSP_MAX_EXPORT_BATCH_SIZE', DEFAULTS.maxExportBatchSize)
  if (maxExportBatchSize > maxQueueSize) {
    warnings.push(`OTEL_BSP_MAX_EXPORT_BATCH_SIZE (${maxExportBatchSize}) is larger than OTEL_BSP_MAX_QUEUE_SIZE (${maxQueueSize}); using ${maxQueueSize}`)
    maxExportBatchSize = maxQueueSize
  }
  const intervalMs = positiveInt('OTEL_METRIC_EXPORT_INTERVAL', DEFAULTS.metricIntervalMs)
  let metricTimeoutMs = positiveInt('OTEL_METRIC_EXPORT_TIMEOUT', DEFAULTS.metricTimeoutMs)
  if (metricTimeoutMs > intervalMs) metricTimeoutMs = intervalMs

  const propagatorNames = list('OTEL_PROPAGATORS') ?? [...DEFAULTS.propagators]
  const propagators: Array<'tracecontext' | 'baggage'> = []
  if (!propagatorNames.includes('none')) {
    for (const p of propagatorNames) {
      if (p === 'tracecontext' || p === 'baggage') propagators.includes(p) || propagators.push(p)
      else warnings.push(`OTEL_PROPAGATORS: "${p}" is not supported (tracecontext, baggage, none); ignored`)
    }
  }

  const rawDiag = get('OTEL_LOG_LEVEL')?.toLowerCase()
  let diagLevel: DiagLogLevel | undefined
  if (rawDiag !== undefined) {
    diagLevel = DIAG_LEVELS[rawDiag]
    if (diagLevel === undefined) warnings.push(`OTEL_LOG_LEVEL="${rawDiag}" is not one of ${Object.keys(DIAG_LEVELS).join(', ')}; ignored`)
  }

  return {
    settings: {
      disabled,
      resource,
      traces: { exporters: traceExporters, otlp: otlp('TRACES') },
      metrics: { exporters: metricExporters, otlp: otlp('METRICS'), intervalMs, timeoutMs: metricTimeoutMs },
      sampler: { name: samplerName, ratio },
      batch: { maxQueueSize, maxExportBatchSize, scheduledDelayMs: positiveInt('OTEL_BSP_SCHEDULE_DELAY', DEFAULTS.scheduledDelayMs), exportTimeoutMs: positiveInt('OTEL_BSP_EXPORT_TIMEOUT', DEFAULTS.batchExportTimeoutMs) },
      propagators,
      diagLevel,
    },
    // The general OTLP variables are read once per signal: say each problem once.
    warnings: [...new Set(warnings)],
  }
}

/** `key=value,key=value` with percent-encoded values (W3C Baggage syntax, as the spec asks). Values are never quoted in warnings. */
function parsePairs(name: string, raw: string | undefined, warnings: string[]): Record<string, string> {
  const out: Record<string, string> = {}
  if (raw === undefined) return out
  for (const [i, item] of raw.split(',').entries()) {
    if (item.trim() === '') continue
    const eq = item.indexOf('=')
    const key = eq > 0 ? item.slice(0, eq).trim() : ''
    let value: string | undefined
    try {
      value = eq > 0 ? decodeURIComponent(item.slice(eq + 1).trim()) : undefined
    } catch {
      value = undefined
    }
    if (!key || value === undefined) {
      warnings.push(`${name}: entry ${i + 1} is not key=value (percent-encoded); ignored`)
      continue
    }
    out[key] = value
  }
  return out
}

function checkUrl<F extends string | undefined>(name: string, raw: string, fallback: F, warnings: string[]): string | F {
  try {
    const u = new URL(raw)
    if (u.protocol === 'http:' || u.protocol === 'https:') return raw
  } catch {
    // fall through
  }
  // The value may carry credentials in its userinfo: name the variable, not the value.
  warnings.push(`${name} is not an http:// or https:// URL; using ${fallback ?? 'the default'}`)
  return fallback
}

/** The API's globals: a no-op unless the embedding process registered an SDK. Used by buildDeps when given no telemetry. */
export const NO_TELEMETRY: Telemetry = {
  tracerProvider: traceApi.getTracerProvider(),
  meterProvider: undefined,
  propagator: new W3CTraceContextPropagator(),
  metricsHandler: undefined,
  shutdown: async () => undefined,
}

export interface StartTelemetryOptions {
  readonly log: Pick<Logger, 'warn' | 'info' | 'debug' | 'error'>
  readonly clock: Clock
}

/** Builds the SDK from OTEL_*. Never throws and never blocks on a collector: problems are logged. */
export async function startTelemetry(env: Env, opts: StartTelemetryOptions): Promise<Telemetry> {
  const { settings, warnings } = readTelemetrySettings(env)
  for (const w of warnings) opts.log.warn({ telemetry: 'config' }, w)
  const propagator = createPropagator(settings.propagators)
  const off: Telemetry = { tracerProvider: new ProxyTracerProvider(), tracing: false, meterProvider: undefined, propagator, metricsHandler: undefined, shutdown: async () => undefined }
  if (settings.disabled) {
    opts.log.info({ telemetry: 'off' }, 'OTEL_SDK_DISABLED=true: no spans or metrics are recorded; trace context still passes through')
    return off
  }
  try {
    return await buildSdk(settings, propagator, opts)
  } catch (err) {
    opts.log.warn({ telemetry: 'off', err: errorType(err) }, 'the OpenTelemetry SDK could not start; running without spans or metrics')
    return off
  }
}

async function buildSdk(settings: TelemetrySettings, propagator: TextMapPropagator, opts: StartTelemetryOptions): Promise<Telemetry> {
  if (settings.diagLevel !== undefined) diag.setLogger(toDiagLogger(opts.log), { logLevel: settings.diagLevel, suppressOverrideMessage: true })

  const resource = defaultResource()
    .merge(detectResources({ detectors: [hostDetector, processDetector] }))
    .merge(resourceFromAttributes(settings.resource))

  // Every reader also reads the decision metrics, which are aggregated outside the SDK (metrics.ts).
  const decisions = new DecisionAggregates()
  const prometheus = new PrometheusExporter({ preventServerStart: true, metricProducers: [decisions] })
  const readers: IMetricReader[] = [prometheus]
  for (const name of settings.metrics.exporters) {
    let exporter: PushMetricExporter
    try {
      exporter = name === 'console' ? new ConsoleMetricExporter() : watchExports(await otlpMetricExporter(settings.metrics.otlp), failureLog('metrics', opts))
    } catch (err) {
      opts.log.warn({ telemetry: 'config', err: errorType(err) }, `cannot create the ${name} metric exporter; metrics stay on /metrics only`)
      continue
    }
    readers.push(new PeriodicExportingMetricReader({ exporter, exportIntervalMillis: settings.metrics.intervalMs, exportTimeoutMillis: settings.metrics.timeoutMs, metricProducers: [decisions] }))
  }
  const meterProvider = new MeterProvider({ resource, readers })

  // Only when OTLP is the one span exporter: a console exporter always takes spans.
  const gate = settings.traces.exporters.length === 1 && settings.traces.exporters[0] === 'otlp'
    ? createExportGate({
      failuresToPause: DEFAULTS.pauseAfterFailures,
      retryAfterMs: Math.max(DEFAULTS.pauseRetryMinMs, settings.traces.otlp.timeoutMs),
      trialSpans: DEFAULTS.pauseTrialSpans, log: opts.log,
    })
    : undefined
  const processors: BatchSpanProcessor[] = []
  for (const name of settings.traces.exporters) {
    let exporter: SpanExporter
    try {
      const logFailure = failureLog('traces', opts)
      exporter = name === 'console'
        ? new ConsoleSpanExporter()
        : watchExports(await otlpSpanExporter(settings.traces.otlp, meterProvider), (r) => {
          logFailure(r)
          gate?.report(r)
        })
    } catch (err) {
      opts.log.warn({ telemetry: 'config', err: errorType(err) }, `cannot create the ${name} span exporter; spans are not exported there`)
      continue
    }
    processors.push(createBatchProcessor(exporter, settings.batch, meterProvider))
  }
  // No exporter means no recording at all: a no-op tracer still passes the caller's trace context on.
  const sampler = createSampler(settings.sampler)
  const basic = processors.length ? new BasicTracerProvider({ resource, sampler, spanProcessors: processors }) : undefined
  let unrecorded = 0
  const tracerProvider: TracerProvider = !basic
    ? new ProxyTracerProvider()
    : gate
      ? pausingTracerProvider(basic, { gate, sampler, onUnrecorded: () => void unrecorded++ })
      : basic
  if (gate) {
    meterProvider.getMeter('lapse').createObservableCounter(METRIC_SPANS_UNRECORDED, {
      description: 'Spans not recorded because OTLP span exports kept failing (see docs/telemetry.md, "Off the request path")',
    }).addCallback((result) => result.observe(unrecorded))
  }

  opts.log.info({
    telemetry: 'on',
    traces: settings.traces.exporters.length ? settings.traces.exporters.map((e) => (e === 'otlp' ? `otlp ${settings.traces.otlp.protocol} ${redactUrl(settings.traces.otlp.url)}` : e)) : 'off',
    metrics: ['prometheus /metrics', ...settings.metrics.exporters.map((e) => (e === 'otlp' ? `otlp ${settings.metrics.otlp.protocol} ${redactUrl(settings.metrics.otlp.url)}` : e))],
    sampler: settings.sampler.name.endsWith('traceidratio') ? `${settings.sampler.name}(${settings.sampler.ratio})` : settings.sampler.name,
  }, 'telemetry started')

  let stopped: Promise<void> | undefined
  return {
    tracerProvider,
    tracing: processors.length > 0,
    meterProvider,
    decisions,
    propagator,
    metricsHandler: (req, res) => prometheus.getMetricsRequestHandler(req, res),
    shutdown() {
      stopped ??= (async () => {
        gate?.close()
        const providers = [meterProvider.shutdown(), ...(basic ? [basic.shutdown()] : [])]
        let timer: NodeJS.Timeout | undefined
        const bound = new Promise<'timeout'>((resolve) => {
          timer = setTimeout(() => resolve('timeout'), DEFAULTS.shutdownTimeoutMs)
          timer.unref()
        })
        const done = Promise.allSettled(providers).then(() => 'done' as const)
        const result = await Promise.race([done, bound])
        clearTimeout(timer)
        if (result === 'timeout') opts.log.warn({ telemetry: 'shutdown' }, `telemetry not flushed within ${DEFAULTS.shutdownTimeoutMs} ms; the rest is dropped`)
      })()
      return stopped
    },
  }
}

export function createPropagator(names: ReadonlyArray<'tracecontext' | 'baggage'>): TextMapPropagator {
  const propagators = names.map((n) => (n === 'tracecontext' ? new W3CTraceContextPropagator() : new W3CBaggagePropagator()))
  return propagators.length === 1 ? propagators[0]! : new CompositePropagator({ propagators })
}

export function createSampler(s: TelemetrySettings['sampler']): Sampler {
  switch (s.name) {
    case 'always_on': return new AlwaysOnSampler()
    case 'always_off': return new AlwaysOffSampler()
    case 'traceidratio': return new TraceIdRatioBasedSampler(s.ratio)
    case 'parentbased_always_on': return new ParentBasedSampler({ root: new AlwaysOnSampler() })
    case 'parentbased_always_off': return new ParentBasedSampler({ root: new AlwaysOffSampler() })
    case 'parentbased_traceidratio': return new ParentBasedSampler({ root: new TraceIdRatioBasedSampler(s.ratio) })
  }
}

/** A bounded queue in front of the exporter; it also counts what it drops, into `meterProvider`. */
export function createBatchProcessor(exporter: SpanExporter, batch: TelemetrySettings['batch'], meterProvider: ApiMeterProvider | undefined): BatchSpanProcessor {
  // selfObsMeterProvider is a BatchSpanProcessor option the BufferConfig type does not list yet.
  const config: BufferConfig & { selfObsMeterProvider?: ApiMeterProvider } = {
    maxQueueSize: batch.maxQueueSize,
    maxExportBatchSize: batch.maxExportBatchSize,
    scheduledDelayMillis: batch.scheduledDelayMs,
    exportTimeoutMillis: batch.exportTimeoutMs,
    // Counted in place: a dead collector drops every span, and each drop must stay nearly free.
    selfObsMeterProvider: meterProvider && coalesced(meterProvider),
  }
  return new BatchSpanProcessor(exporter, config)
}

// Each protocol's exporter is loaded only when chosen (gRPC pulls in @grpc/grpc-js).
// TLS files (OTEL_EXPORTER_OTLP_CERTIFICATE…) and compression are read by the exporters themselves.
async function otlpSpanExporter(s: OtlpSettings, meterProvider: ApiMeterProvider): Promise<SpanExporter> {
  const common = { url: s.url, timeoutMillis: s.timeoutMs, selfObsMeterProvider: meterProvider }
  switch (s.protocol) {
    case 'http/json': return new (await import('@opentelemetry/exporter-trace-otlp-http')).OTLPTraceExporter({ ...common, headers: { ...s.headers } })
    case 'http/protobuf': return new (await import('@opentelemetry/exporter-trace-otlp-proto')).OTLPTraceExporter({ ...common, headers: { ...s.headers } })
    case 'grpc': return new (await import('@opentelemetry/exporter-trace-otlp-grpc')).OTLPTraceExporter(common)
  }
}

async function otlpMetricExporter(s: OtlpSettings): Promise<PushMetricExporter> {
  const common = { url: s.url, timeoutMillis: s.timeoutMs }
  switch (s.protocol) {
    case 'http/json': return new (await import('@opentelemetry/exporter-metrics-otlp-http')).OTLPMetricExporter({ ...common, headers: { ...s.headers } })
    case 'http/protobuf': return new (await import('@opentelemetry/exporter-metrics-otlp-proto')).OTLPMetricExporter({ ...common, headers: { ...s.headers } })
    case 'grpc': return new (await import('@opentelemetry/exporter-metrics-otlp-grpc')).OTLPMetricExporter(common)
  }
}

/** Reports each export's result without changing it. */
function watchExports<E extends { export(items: never, done: (r: ExportResult) => void): void }>(exporter: E, report: (r: ExportResult) => void): E {
  const original = exporter.export.bind(exporter) as (items: unknown, done: (r: ExportResult) => void) => void
  ;(exporter as unknown as { export: typeof original }).export = (items, done) => original(items, (r) => {
    report(r)
    done(r)
  })
  return exporter
}

/** Warns when exports start failing (then at most once a minute) and says when they recover. */
function failureLog(signal: 'traces' | 'metrics', opts: StartTelemetryOptions): (r: ExportResult) => void {
  let failures = 0
  let lastWarnMs = -Infinity
  return (r) => {
    if (r.code === ExportResultCode.SUCCESS) {
      if (failures > 0) opts.log.info({ telemetry: signal, failures }, `OTLP ${signal} export recovered`)
      failures = 0
      lastWarnMs = -Infinity
      return
    }
    failures++
    const now = opts.clock.now()
    if (now - lastWarnMs < DEFAULTS.failureLogIntervalMs) return
    lastWarnMs = now
    const status = (r.error as { code?: unknown } | undefined)?.code
    opts.log.warn(
      { telemetry: signal, failures, err: errorType(r.error), status: typeof status === 'number' ? status : undefined },
      `OTLP ${signal} export failed; requests are unaffected, telemetry waits in a bounded queue and the overflow is dropped`,
    )
  }
}

/** The endpoint for a log line, without userinfo or query (either could hold a credential). */
function redactUrl(url: string): string {
  try {
    const u = new URL(url)
    return `${u.protocol}//${u.host}${u.pathname}`
  } catch {
    return '(invalid)'
  }
}

function toDiagLogger(log: StartTelemetryOptions['log']): DiagLogger {
  const line = (level: 'error' | 'warn' | 'info' | 'debug') => (message: string) => log[level]({ telemetry: 'sdk' }, `otel: ${message}`)
  return { error: line('error'), warn: line('warn'), info: line('info'), debug: line('debug'), verbose: line('debug') }
}
