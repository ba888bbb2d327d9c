// The start of telemetry: off (OTEL_SDK_DISABLED=true) without loading any SDK module, else sdk.ts.
//
//   const telemetry = await startTelemetry(env, { log, clock })   // never throws: a bad setting warns and falls back
//
// Kept apart from sdk.ts so that a Lapse with OTEL_SDK_DISABLED=true never loads the span and
// metric SDKs, the exporters and the resource detectors (see bench/README.md "Module footprint").
import {
  ProxyTracerProvider, trace as traceApi,
  type MeterProvider as ApiMeterProvider, type TextMapPropagator, type TracerProvider,
} from '@opentelemetry/api'
import { CompositePropagator, W3CBaggagePropagator, W3CTraceContextPropagator } from '@opentelemetry/core'
import type { IncomingMessage, ServerResponse } from 'node:http'
import type { Logger } from 'pino'
import type { Clock } from '../core/types.js'
import type { DecisionAggregates } from './metrics.js'
import { errorType } from './recorder.js'

export type Env = Readonly<Record<string, string | undefined>>

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

// Lapse's own defaults; the SDK's (endpoints, batch queue, sampler…) are the SDK's.
export const DEFAULTS = {
  serviceName: 'lapse',
  // The specification's defaults for what Lapse reads itself (sdk.ts).
  exportTimeoutMs: 10_000,
  metricIntervalMs: 60_000,
  metricTimeoutMs: 30_000,
  // Span recording pauses after this many failed exports in a row (each already retried by the
  // exporter up to its timeout) and probes the collector with an empty export after one traces
  // export timeout (pausing.ts): a dead collector costs next to nothing, one back from a restart
  // gets spans within seconds.
  pauseAfterFailures: 1,
  pauseRetryMinMs: 100,
  // A dead collector must not hold up a rolling restart: SIGTERM to exit stays within the CLI's 10 s.
  shutdownTimeoutMs: 3000,
  // One warning per signal per minute while exports keep failing, plus one when they recover.
  failureLogIntervalMs: 60_000,
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
  const disabled = env.OTEL_SDK_DISABLED?.trim()
  if (disabled && !/^(true|false)$/i.test(disabled)) opts.log.warn({ telemetry: 'config' }, `OTEL_SDK_DISABLED="${disabled}" is neither true nor false; telemetry stays on`)
  // Off: the client's trace context passes through as sent; the audit line reads its W3C traceparent.
  const off: Telemetry = { tracerProvider: new ProxyTracerProvider(), tracing: false, meterProvider: undefined, propagator: new W3CTraceContextPropagator(), metricsHandler: undefined, shutdown: async () => undefined }
  if (disabled && /^true$/i.test(disabled)) {
    opts.log.info({ telemetry: 'off' }, 'OTEL_SDK_DISABLED=true: no spans or metrics are recorded; trace context still passes through')
    return off
  }
  try {
    // The SDK's modules are loaded only now, when telemetry is on.
    const { buildSdk } = await import('./sdk.js')
    return await buildSdk(env, opts)
  } catch (err) {
    opts.log.warn({ telemetry: 'off', err: errorType(err) }, 'the OpenTelemetry SDK could not start; running without spans or metrics')
    return off
  }
}

/**
 * OTEL_PROPAGATORS for the recorder (NodeSDK would only register it as the API's global):
 * tracecontext and baggage by default, `none` for none; others warn and are ignored.
 */
export function createPropagator(names: readonly string[] | undefined, warnings: string[]): TextMapPropagator {
  const propagators: TextMapPropagator[] = []
  const seen = new Set<string>()
  for (const raw of names ?? ['tracecontext', 'baggage']) {
    const n = raw.toLowerCase()
    if (n === 'none') return new CompositePropagator()
    if (seen.has(n)) continue
    seen.add(n)
    if (n === 'tracecontext') propagators.push(new W3CTraceContextPropagator())
    else if (n === 'baggage') propagators.push(new W3CBaggagePropagator())
    else warnings.push(`OTEL_PROPAGATORS: "${n}" is not supported (tracecontext, baggage, none); ignored`)
  }
  return propagators.length === 1 ? propagators[0]! : new CompositePropagator({ propagators })
}
