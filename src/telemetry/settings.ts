// The start of telemetry: off (OTEL_SDK_DISABLED=true) without loading any SDK module, else sdk.ts.
//
//   const telemetry = await startTelemetry(env, { log, clock })   // never throws: a bad setting warns and falls back
//
// Kept apart from sdk.ts so that a Lapse with OTEL_SDK_DISABLED=true never loads the span and
// metric SDKs, the exporters and the resource detectors (see bench/README.md "Module footprint").
import { ProxyTracerProvider, trace as traceApi } from '@opentelemetry/api'
import { W3CTraceContextPropagator } from '@opentelemetry/core'
import { errorType } from './recorder.js'
import type { Env, StartTelemetryOptions, Telemetry } from './telemetry.js'

export { DEFAULTS, createPropagator, type Env, type StartTelemetryOptions, type Telemetry } from './telemetry.js'

/** The API's globals: a no-op unless the embedding process registered an SDK. Used by buildDeps when given no telemetry. */
export const NO_TELEMETRY: Telemetry = {
  tracerProvider: traceApi.getTracerProvider(),
  meterProvider: undefined,
  propagator: new W3CTraceContextPropagator(),
  metricsHandler: undefined,
  shutdown: async () => undefined,
}

/** Builds the SDK from OTEL_*. Never throws and never blocks on a collector: problems are logged. */
export async function startTelemetry(env: Env, opts: StartTelemetryOptions): Promise<Telemetry> {
  const disabled = env.OTEL_SDK_DISABLED?.trim()
  if (disabled && !/^(true|false)$/i.test(disabled))
    opts.log.warn({ telemetry: 'config' }, `OTEL_SDK_DISABLED="${disabled}" is neither true nor false; telemetry stays on`)
  // Off: the client's trace context passes through as sent; the audit line reads its W3C traceparent.
  const off: Telemetry = {
    tracerProvider: new ProxyTracerProvider(),
    tracing: false,
    meterProvider: undefined,
    propagator: new W3CTraceContextPropagator(),
    metricsHandler: undefined,
    shutdown: async () => undefined,
  }
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
