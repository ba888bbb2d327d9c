// What the rest of Lapse needs from telemetry, and what settings.ts and sdk.ts share: the
// Telemetry interface, Lapse's telemetry defaults and the propagator. Apart from both so that
// settings.ts can load sdk.ts lazily without sdk.ts importing it back.
import { CompositePropagator, W3CBaggagePropagator, W3CTraceContextPropagator } from '@opentelemetry/core'
import type { MeterProvider as ApiMeterProvider, TextMapPropagator, TracerProvider } from '@opentelemetry/api'
import type { IncomingMessage, ServerResponse } from 'node:http'
import type { Logger } from 'pino'
import type { Clock } from '../core/types.js'
import type { DecisionAggregates } from './metrics.js'

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

export interface StartTelemetryOptions {
  readonly log: Pick<Logger, 'warn' | 'info' | 'debug' | 'error'>
  readonly clock: Clock
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
