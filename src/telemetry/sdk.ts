// The OpenTelemetry SDK of one Lapse process: NodeSDK from @opentelemetry/sdk-node, configured by
// the standard OTEL_* variables, with Lapse's parts plugged in (only loaded when telemetry is on).
//
//   const telemetry = await startTelemetry(env, { log, clock })   // settings.ts
//   const deps = await buildDeps(config, { telemetry })            // tracer, meter, the admin /metrics handler
//   await telemetry.shutdown()                                     // flushes what is buffered, bounded in time
//
// Why: what the SDK reads itself and what Lapse adds (pausing, its metric producer, Prometheus,
// warnings, no API global left behind: startIsolated): docs/telemetry.md#configuration.
import type { IncomingMessage, ServerResponse } from 'node:http'
import {
  DiagLogLevel,
  ProxyTracerProvider,
  diag,
  metrics as metricsApi,
  trace as traceApi,
  type ContextManager,
  type DiagLogger,
  type MeterProvider,
  type TracerProvider,
} from '@opentelemetry/api'
import {
  ExportResultCode,
  diagLogLevelFromString,
  getNumberFromEnv,
  getStringFromEnv,
  getStringListFromEnv,
  type ExportResult,
} from '@opentelemetry/core'
import { PrometheusExporter } from '@opentelemetry/exporter-prometheus'
import { defaultResource, resourceFromAttributes } from '@opentelemetry/resources'
import {
  ConsoleMetricExporter,
  PeriodicExportingMetricReader,
  type IMetricReader,
  type PushMetricExporter,
} from '@opentelemetry/sdk-metrics'
import { NodeSDK } from '@opentelemetry/sdk-node'
// NodeSDK's own readers of OTEL_TRACES_SAMPLER* and OTEL_BSP_*, the ones it uses for a traceExporter
// option: not re-exported by the package's index, so taken from their module.
import { createBatchSpanProcessorFromEnv, createSamplerFromEnv } from '@opentelemetry/sdk-node/build/src/create-from-env.js'
import {
  AlwaysOnSampler,
  ConsoleSpanExporter,
  ParentBasedSampler,
  SimpleSpanProcessor,
  type SpanExporter,
  type SpanProcessor,
} from '@opentelemetry/sdk-trace-base'
import { ATTR_SERVICE_NAME } from '@opentelemetry/semantic-conventions'
import { OTLPMetricExporter as GrpcMetricExporter } from '@opentelemetry/exporter-metrics-otlp-grpc'
import { OTLPMetricExporter as JsonMetricExporter } from '@opentelemetry/exporter-metrics-otlp-http'
import { OTLPMetricExporter as ProtoMetricExporter } from '@opentelemetry/exporter-metrics-otlp-proto'
import { OTLPTraceExporter as GrpcTraceExporter } from '@opentelemetry/exporter-trace-otlp-grpc'
import { OTLPTraceExporter as JsonTraceExporter } from '@opentelemetry/exporter-trace-otlp-http'
import { OTLPTraceExporter as ProtoTraceExporter } from '@opentelemetry/exporter-trace-otlp-proto'
import { LapseError } from '../core/errors.js'
import { coalesced } from './coalesced-counters.js'
import { DecisionAggregates } from './metrics.js'
import { createExportGate, pausingTracerProvider, type ExportGate } from './pausing.js'
import { errorType } from './recorder.js'
import { METRIC_SPANS_UNRECORDED } from './semconv.js'
import { DEFAULTS, createPropagator, type Env, type StartTelemetryOptions, type Telemetry } from './telemetry.js'

type Protocol = 'http/protobuf' | 'http/json' | 'grpc'
const PROTOCOLS: readonly Protocol[] = ['http/protobuf', 'http/json', 'grpc']
const TRACE_EXPORTERS: Record<Protocol, new (c: { selfObsMeterProvider?: MeterProvider }) => SpanExporter> = {
  'http/protobuf': ProtoTraceExporter,
  'http/json': JsonTraceExporter,
  grpc: GrpcTraceExporter,
}
const METRIC_EXPORTERS: Record<Protocol, new () => PushMetricExporter> = {
  'http/protobuf': ProtoMetricExporter,
  'http/json': JsonMetricExporter,
  grpc: GrpcMetricExporter,
}

/** The SDK for telemetry that is on; called by settings.ts's startTelemetry, which handles a throw. */
export async function buildSdk(env: Env, opts: StartTelemetryOptions): Promise<Telemetry> {
  const warnings: string[] = []
  let diagLevel: DiagLogLevel | undefined
  const built = withEnv(env, () =>
    withDiagWarnings(warnings, () => {
      diagLevel = diagLogLevelFromString(getStringFromEnv('OTEL_LOG_LEVEL'))
      return assemble(warnings, opts)
    }),
  )
  for (const w of [...new Set(warnings)]) opts.log.warn({ telemetry: 'config' }, w)
  // OTEL_LOG_LEVEL: the SDK's diagnostics from now on, into Lapse's log.
  if (diagLevel !== undefined) diag.setLogger(toDiagLogger(opts.log), { logLevel: diagLevel, suppressOverrideMessage: true })
  return built
}

/** Synchronous: it runs with OTEL_* taken from `env` (withEnv). */
function assemble(warnings: string[], opts: StartTelemetryOptions): Telemetry {
  const decisions = new DecisionAggregates()
  // The SDK's own counters (span queue, exports), bound to NodeSDK's MeterProvider once it exists.
  const selfObs = coalesced()
  const prometheus = new PrometheusExporter({ preventServerStart: true, metricProducers: [decisions] })
  const pushed = metricReaders(decisions, warnings, opts)
  const readers: IMetricReader[] = [prometheus, ...pushed.map((p) => p.reader)]

  const traceExporters = exporterNames('OTEL_TRACES_EXPORTER', ['otlp', 'console'], warnings)
  const sampler = createSamplerFromEnv() ?? new ParentBasedSampler({ root: new AlwaysOnSampler() })
  const processors: SpanProcessor[] = []
  let gate: ExportGate | undefined
  for (const name of traceExporters) {
    if (name === 'console') {
      processors.push(new SimpleSpanProcessor(new ConsoleSpanExporter()))
      continue
    }
    const logFailure = failureLog('traces', opts)
    const exporter = watchExports(new TRACE_EXPORTERS[protocol('TRACES', warnings)]({ selfObsMeterProvider: selfObs }), (r) => {
      logFailure(r)
      gate?.report(r)
    })
    // Only when OTLP is the one span exporter: a console exporter always takes spans.
    if (traceExporters.length === 1) {
      const timeoutMs =
        positive(getNumberFromEnv('OTEL_EXPORTER_OTLP_TRACES_TIMEOUT')) ??
        positive(getNumberFromEnv('OTEL_EXPORTER_OTLP_TIMEOUT')) ??
        DEFAULTS.exportTimeoutMs
      gate = createExportGate({
        failuresToPause: DEFAULTS.pauseAfterFailures,
        retryAfterMs: Math.max(DEFAULTS.pauseRetryMinMs, timeoutMs),
        // Its result reaches the gate through watchExports, like a batch's.
        probe: () => exporter.export([], () => undefined),
        log: opts.log,
      })
    }
    processors.push(createBatchSpanProcessorFromEnv(exporter, selfObs))
  }

  const sdk = withoutLogLevel(
    () =>
      new NodeSDK({
        // Detectors (OTEL_RESOURCE_ATTRIBUTES, OTEL_SERVICE_NAME, process, host) are merged over this.
        resource: defaultResource().merge(resourceFromAttributes({ [ATTR_SERVICE_NAME]: DEFAULTS.serviceName })),
        sampler,
        spanProcessors: processors,
        metricReaders: readers,
        // Lapse records its own spans and passes contexts explicitly: no instrumentation, no global
        // context manager or propagator (the recorder's propagator is settings.ts's createPropagator).
        instrumentations: [],
        contextManager: null as unknown as ContextManager,
        textMapPropagator: null,
        logRecordProcessors: [],
      }),
  )
  const { tracerProvider: sdkTracer, meterProvider } = startIsolated(sdk, processors.length > 0)
  selfObs.bind(meterProvider)

  let unrecorded = 0
  // No exporter means no recording at all: a no-op tracer still passes the caller's trace context on.
  const tracerProvider: TracerProvider = !sdkTracer
    ? new ProxyTracerProvider()
    : gate
      ? pausingTracerProvider(sdkTracer, { gate, sampler, onUnrecorded: () => void unrecorded++ })
      : sdkTracer
  if (gate) {
    meterProvider
      .getMeter('lapse')
      .createObservableCounter(METRIC_SPANS_UNRECORDED, {
        description: 'Spans not recorded because OTLP span exports kept failing (see docs/telemetry.md, "Off the request path")',
      })
      .addCallback((result) => result.observe(unrecorded))
  }

  opts.log.info(
    {
      telemetry: 'on',
      traces: traceExporters.length ? traceExporters.map((e) => (e === 'otlp' ? `otlp ${protocol('TRACES', [])}` : e)) : 'off',
      metrics: ['prometheus /metrics', ...pushed.map((p) => p.name)],
      sampler: sampler.toString(),
    },
    'telemetry started',
  )

  let stopped: Promise<void> | undefined
  return {
    tracerProvider,
    tracing: sdkTracer !== undefined,
    meterProvider,
    decisions,
    propagator: createPropagator(getStringListFromEnv('OTEL_PROPAGATORS'), warnings),
    metricsHandler: (req: IncomingMessage, res: ServerResponse) => prometheus.getMetricsRequestHandler(req, res),
    shutdown() {
      stopped ??= (async () => {
        gate?.close()
        let timer: NodeJS.Timeout | undefined
        const bound = new Promise<'timeout'>((resolve) => {
          timer = setTimeout(() => resolve('timeout'), DEFAULTS.shutdownTimeoutMs)
          timer.unref()
        })
        const done = sdk.shutdown().then(
          () => 'done' as const,
          () => 'done' as const,
        )
        const result = await Promise.race([done, bound])
        clearTimeout(timer)
        if (result === 'timeout')
          opts.log.warn({ telemetry: 'shutdown' }, `telemetry not flushed within ${DEFAULTS.shutdownTimeoutMs} ms; the rest is dropped`)
      })()
      return stopped
    },
  }
}

/**
 * Starts `sdk` and takes back the providers it registered as the API's globals (NodeSDK hands them
 * out only that way), then unregisters them: Lapse uses the providers it is given, never the
 * globals, so two Lapse apps in one process (tests) each get their own.
 */
function startIsolated(sdk: NodeSDK, tracing: boolean): { tracerProvider: TracerProvider | undefined; meterProvider: MeterProvider } {
  const globalTracer = () => (traceApi.getTracerProvider() as ProxyTracerProvider).getDelegate()
  const before = { tracer: globalTracer(), meter: metricsApi.getMeterProvider() }
  sdk.start()
  const tracerProvider = tracing ? globalTracer() : undefined
  const meterProvider = metricsApi.getMeterProvider()
  const tookTracer = tracing && tracerProvider !== before.tracer
  const tookMeter = meterProvider !== before.meter
  if (tookTracer) traceApi.disable()
  if (tookMeter) metricsApi.disable()
  // Someone registered first (e.g. an auto-instrumentation preloaded with --require): the globals are theirs.
  if (!tookMeter || (tracing && !tookTracer)) {
    void sdk.shutdown()
    throw new LapseError('ERR_OTEL_GLOBALS_TAKEN', 'another OpenTelemetry SDK holds the API globals')
  }
  return { tracerProvider, meterProvider }
}

/** The reader of each OTEL_METRICS_EXPORTER entry; Prometheus is served by the admin port whatever it says. */
function metricReaders(
  decisions: DecisionAggregates,
  warnings: string[],
  opts: StartTelemetryOptions,
): Array<{ name: string; reader: IMetricReader }> {
  const names = exporterNames('OTEL_METRICS_EXPORTER', ['otlp', 'console', 'prometheus'], warnings).filter((n) => n !== 'prometheus')
  if (!names.length) return []
  // As NodeSDK reads them (it cannot be handed a metric producer for the readers it builds).
  const intervalMs = positive(getNumberFromEnv('OTEL_METRIC_EXPORT_INTERVAL')) ?? DEFAULTS.metricIntervalMs
  const timeoutMs = Math.min(intervalMs, positive(getNumberFromEnv('OTEL_METRIC_EXPORT_TIMEOUT')) ?? DEFAULTS.metricTimeoutMs)
  return names.map((name) => {
    const otlp = name === 'otlp' ? protocol('METRICS', warnings) : undefined
    const reader = new PeriodicExportingMetricReader({
      exporter: otlp ? watchExports(new METRIC_EXPORTERS[otlp](), failureLog('metrics', opts)) : new ConsoleMetricExporter(),
      exportIntervalMillis: intervalMs,
      exportTimeoutMillis: timeoutMs,
      metricProducers: [decisions],
    })
    return { name: otlp ? `otlp ${otlp}` : name, reader }
  })
}

/** An OTEL_*_EXPORTER list as the specification reads it: otlp by default, `none` for nothing. */
function exporterNames<N extends string>(name: string, supported: readonly N[], warnings: string[]): N[] {
  const listed = getStringListFromEnv(name)?.map((s) => s.toLowerCase()) ?? []
  if (listed.includes('none')) return []
  const out: N[] = []
  for (const e of listed.length ? listed : ['otlp']) {
    if (!(supported as readonly string[]).includes(e))
      warnings.push(`${name}: "${e}" is not supported (${supported.join(', ')}, none); ignored`)
    else if (!out.includes(e as N)) out.push(e as N)
  }
  return out
}

function protocol(signal: 'TRACES' | 'METRICS', warnings: string[]): Protocol {
  const name =
    getStringFromEnv(`OTEL_EXPORTER_OTLP_${signal}_PROTOCOL`) !== undefined
      ? `OTEL_EXPORTER_OTLP_${signal}_PROTOCOL`
      : 'OTEL_EXPORTER_OTLP_PROTOCOL'
  const value = getStringFromEnv(name) ?? 'http/protobuf'
  if ((PROTOCOLS as readonly string[]).includes(value)) return value as Protocol
  warnings.push(`${name}="${value}" is not one of ${PROTOCOLS.join(', ')}; using http/protobuf`)
  return 'http/protobuf'
}

const positive = (n: number | undefined) => (n !== undefined && n > 0 ? n : undefined)

/**
 * Runs `build` with process.env's OTEL_* variables replaced by `env`'s, because NodeSDK and the
 * exporters read process.env while they are built. Synchronous, so nothing else runs meanwhile;
 * a no-op when `env` is process.env (production).
 */
function withEnv<T>(env: Env, build: () => T): T {
  if (env === process.env) return build()
  const saved: Record<string, string | undefined> = {}
  const names = new Set([...Object.keys(process.env), ...Object.keys(env)].filter((k) => k.startsWith('OTEL_')))
  for (const k of names) {
    saved[k] = process.env[k]
    if (env[k] === undefined) delete process.env[k]
    else process.env[k] = env[k]
  }
  try {
    return build()
  } finally {
    for (const k of names) {
      if (saved[k] === undefined) delete process.env[k]
      else process.env[k] = saved[k]
    }
  }
}

/** NodeSDK's constructor would point diag at the console for OTEL_LOG_LEVEL; Lapse routes it to its log (buildSdk). */
function withoutLogLevel<T>(build: () => T): T {
  const level = process.env.OTEL_LOG_LEVEL
  delete process.env.OTEL_LOG_LEVEL
  try {
    return build()
  } finally {
    if (level !== undefined) process.env.OTEL_LOG_LEVEL = level
  }
}

/** What the SDK says while it is built (bad values it falls back from) becomes Lapse's warnings. */
function withDiagWarnings<T>(warnings: string[], build: () => T): T {
  // An unparsable endpoint is quoted by the exporter, and may hold a credential: it is not repeated.
  const push = (message: string) =>
    void warnings.push(redactUrls(/url/i.test(message) ? message.replace(/'[^']*'/g, "'(not shown)'") : message))
  diag.setLogger(
    { error: push, warn: push, info: () => undefined, debug: () => undefined, verbose: () => undefined },
    { logLevel: DiagLogLevel.WARN, suppressOverrideMessage: true },
  )
  try {
    return build()
  } finally {
    diag.disable()
  }
}

/** Reports each export's result without changing it. */
function watchExports<E extends { export(items: never, done: (r: ExportResult) => void): void }>(
  exporter: E,
  report: (r: ExportResult) => void,
): E {
  const original = exporter.export.bind(exporter) as (items: unknown, done: (r: ExportResult) => void) => void
  ;(exporter as unknown as { export: typeof original }).export = (items, done) =>
    original(items, (r) => {
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

/** URLs in a message without userinfo or query (either could hold a credential). */
function redactUrls(message: string): string {
  return message.replace(/[a-z][a-z0-9+.-]*:\/\/[^\s'"]*/gi, (url) => {
    try {
      const u = new URL(url)
      return `${u.protocol}//${u.host}${u.pathname}`
    } catch {
      return '(invalid URL)'
    }
  })
}

function toDiagLogger(log: StartTelemetryOptions['log']): DiagLogger {
  const line = (level: 'error' | 'warn' | 'info' | 'debug') => (message: string) =>
    log[level]({ telemetry: 'sdk' }, `otel: ${redactUrls(message)}`)
  return { error: line('error'), warn: line('warn'), info: line('info'), debug: line('debug'), verbose: line('debug') }
}
