// The OpenTelemetry SDK of one Lapse process, built from the settings settings.ts reads from the
// standard OTEL_* variables; settings.ts's startTelemetry imports this module only when telemetry
// is on.
//
//   const telemetry = await startTelemetry(env, { log })   // settings.ts (re-exported here)
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
import { ProxyTracerProvider, diag, type DiagLogger, type MeterProvider as ApiMeterProvider, type TextMapPropagator, type TracerProvider } from '@opentelemetry/api'
import { ExportResultCode, type ExportResult } from '@opentelemetry/core'
import { PrometheusExporter } from '@opentelemetry/exporter-prometheus'
import { defaultResource, detectResources, hostDetector, processDetector, resourceFromAttributes } from '@opentelemetry/resources'
import { ConsoleMetricExporter, MeterProvider, PeriodicExportingMetricReader, type IMetricReader, type PushMetricExporter } from '@opentelemetry/sdk-metrics'
import {
  AlwaysOffSampler, AlwaysOnSampler, BasicTracerProvider, BatchSpanProcessor, ConsoleSpanExporter, ParentBasedSampler,
  TraceIdRatioBasedSampler, type BufferConfig, type Sampler, type SpanExporter,
} from '@opentelemetry/sdk-trace-base'
import { coalesced } from './coalesced-counters.js'
import { DecisionAggregates } from './metrics.js'
import { createExportGate, pausingTracerProvider, type ExportGate } from './pausing.js'
import { errorType } from './recorder.js'
import { METRIC_SPANS_UNRECORDED } from './semconv.js'
import { DEFAULTS, type OtlpSettings, type StartTelemetryOptions, type Telemetry, type TelemetrySettings } from './settings.js'

export {
  NO_TELEMETRY, createPropagator, readTelemetrySettings, startTelemetry,
  type OtlpSettings, type StartTelemetryOptions, type Telemetry, type TelemetrySettings,
} from './settings.js'

/** The SDK for telemetry that is on; called by settings.ts's startTelemetry, which handles a throw. */
export async function buildSdk(settings: TelemetrySettings, propagator: TextMapPropagator, opts: StartTelemetryOptions): Promise<Telemetry> {
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
  const gated = settings.traces.exporters.length === 1 && settings.traces.exporters[0] === 'otlp'
  let gate: ExportGate | undefined
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
    if (gated) {
      const probed = exporter
      gate = createExportGate({
        failuresToPause: DEFAULTS.pauseAfterFailures,
        retryAfterMs: Math.max(DEFAULTS.pauseRetryMinMs, settings.traces.otlp.timeoutMs),
        // Its result reaches the gate through watchExports, like a batch's.
        probe: () => probed.export([], () => undefined),
        log: opts.log,
      })
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
