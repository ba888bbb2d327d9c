// What telemetry Lapse runs with, read from the standard OTEL_* variables, and the start of it.
//
//   const telemetry = await startTelemetry(env, { log, clock })   // never throws: a bad setting warns and falls back
//
// Kept apart from sdk.ts so that a Lapse with OTEL_SDK_DISABLED=true never loads the span and
// metric SDKs, the resource detectors and the Prometheus exporter: startTelemetry imports sdk.ts
// only when telemetry is on (≈ 1 MB less heap and 3–5 MB less RSS with telemetry off; modules
// loaded and never used were a suspect for per-request CPU too, see bench/README.md "Module
// footprint").
import {
  DiagLogLevel, ProxyTracerProvider, trace as traceApi,
  type MeterProvider as ApiMeterProvider, type TextMapPropagator, type TracerProvider,
} from '@opentelemetry/api'
import { CompositePropagator, W3CBaggagePropagator, W3CTraceContextPropagator } from '@opentelemetry/core'
import { ATTR_SERVICE_NAME } from '@opentelemetry/semantic-conventions'
import type { IncomingMessage, ServerResponse } from 'node:http'
import type { Logger } from 'pino'
import type { Clock } from '../pipeline/types.js'
import type { DecisionAggregates } from './metrics.js'
import { errorType } from './recorder.js'

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
export const DEFAULTS = {
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
  // exporter up to its timeout) and probes the collector with an empty export after one traces
  // export timeout (pausing.ts): a dead collector costs next to nothing, one back from a restart
  // gets spans within seconds.
  pauseAfterFailures: 1,
  pauseRetryMinMs: 100,
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
    // The SDK's modules are loaded only now, when telemetry is on.
    const { buildSdk } = await import('./sdk.js')
    return await buildSdk(settings, propagator, opts)
  } catch (err) {
    opts.log.warn({ telemetry: 'off', err: errorType(err) }, 'the OpenTelemetry SDK could not start; running without spans or metrics')
    return off
  }
}

export function createPropagator(names: ReadonlyArray<'tracecontext' | 'baggage'>): TextMapPropagator {
  const propagators = names.map((n) => (n === 'tracecontext' ? new W3CTraceContextPropagator() : new W3CBaggagePropagator()))
  return propagators.length === 1 ? propagators[0]! : new CompositePropagator({ propagators })
}
