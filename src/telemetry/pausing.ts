// Span recording that stops while the collector cannot take spans, and comes back by itself.
//
//   const gate = createExportGate({ failuresToPause: 1, retryAfterMs: 10_000, probe, log })
//   exporter results → gate.report(result)         // (sdk.ts wraps the OTLP span exporter)
//   const provider = pausingTracerProvider(sdkProvider, { gate, sampler, onUnrecorded })
//
// Why: recording is most of tracing's cost and buys nothing while exports fail; trace context is
// kept, and an empty probe export (not a trial of spans the sampler may drop) ends the pause.
// docs/telemetry.md#off-the-request-path.
import {
  SamplingDecision,
  TraceFlags,
  context as contextApi,
  isSpanContextValid,
  trace as traceApi,
  type Context,
  type Span,
  type SpanOptions,
  type Tracer,
  type TracerOptions,
  type TracerProvider,
} from '@opentelemetry/api'
import { ExportResultCode, type ExportResult } from '@opentelemetry/core'
import { RandomIdGenerator, type Sampler } from '@opentelemetry/sdk-trace-base'
import type { Logger } from 'pino'

/** `probing`: paused, an empty export is on its way to the collector. */
export type GateState = 'recording' | 'paused' | 'probing'

export interface ExportGate {
  readonly state: GateState
  /** Whether the span about to start is recorded; called once per span. */
  admit(): boolean
  /** One export's result, from the span exporter. */
  report(result: ExportResult): void
  close(): void
}

export interface ExportGateOptions {
  /** Consecutive failed exports before recording pauses. */
  readonly failuresToPause: number
  /** How long a pause lasts before the probe. */
  readonly retryAfterMs: number
  /**
   * Sends an empty export through the watched exporter; its result must reach report(). The
   * exporter calls back on every export (its timeout bounds it), so each probe ends in a verdict.
   */
  readonly probe: () => void
  readonly log: Pick<Logger, 'warn' | 'info'>
}

export function createExportGate(opts: ExportGateOptions): ExportGate {
  let state: GateState = 'recording'
  let failures = 0
  let timer: NodeJS.Timeout | undefined

  const pause = () => {
    const wasRecording = state === 'recording'
    state = 'paused'
    clearTimeout(timer)
    timer = setTimeout(() => {
      timer = undefined
      if (state !== 'paused') return
      state = 'probing'
      opts.probe()
    }, opts.retryAfterMs)
    timer.unref()
    // One line when a pause starts; probes that fail again are not news.
    if (wasRecording) {
      opts.log.warn(
        { telemetry: 'traces', failures, retry_after_ms: opts.retryAfterMs },
        'OTLP traces exports fail: spans are not recorded until the collector takes them again (requests are unaffected; trace context still passes through)',
      )
    }
  }

  return {
    get state() {
      return state
    },
    admit() {
      return state === 'recording'
    },
    report(result) {
      if (result.code === ExportResultCode.SUCCESS) {
        if (state !== 'recording') opts.log.info({ telemetry: 'traces' }, 'OTLP traces exports succeed again: spans are recorded')
        state = 'recording'
        failures = 0
        clearTimeout(timer)
        timer = undefined
        return
      }
      failures++
      // While paused, a failed export queued before the pause changes nothing: the timer runs on.
      if (state === 'probing' || (state === 'recording' && failures >= opts.failuresToPause)) pause()
    },
    close() {
      clearTimeout(timer)
      timer = undefined
    },
  }
}

export interface PausingOptions {
  readonly gate: Pick<ExportGate, 'admit'>
  /** The sampler the SDK's tracers use: a paused span gets the same decision. */
  readonly sampler: Sampler
  /** Called once per span that would have been recorded and was not. */
  readonly onUnrecorded: () => void
}

/** `inner`'s tracers, recording only while the gate says so. */
export function pausingTracerProvider(inner: TracerProvider, opts: PausingOptions): TracerProvider {
  const ids = new RandomIdGenerator()
  return {
    getTracer(name: string, version?: string, options?: TracerOptions): Tracer {
      return new PausingTracer(inner.getTracer(name, version, options), opts, ids)
    },
  }
}

class PausingTracer implements Tracer {
  constructor(
    private readonly inner: Tracer,
    private readonly opts: PausingOptions,
    private readonly ids: RandomIdGenerator,
  ) {}

  startSpan(name: string, options: SpanOptions = {}, ctx: Context = contextApi.active()): Span {
    if (this.opts.gate.admit()) return this.inner.startSpan(name, options, ctx)
    // As the SDK's tracer decides, minus the span object (sdk-trace Tracer.startSpan).
    const parent = options.root ? undefined : traceApi.getSpanContext(ctx)
    const valid = parent !== undefined && isSpanContextValid(parent)
    const traceId = valid ? parent.traceId : this.ids.generateTraceId()
    const sampled = this.opts.sampler.shouldSample(ctx, traceId, name, options.kind ?? 0, options.attributes ?? {}, options.links ?? [])
    if (sampled.decision !== SamplingDecision.NOT_RECORD) this.opts.onUnrecorded()
    return traceApi.wrapSpanContext({
      traceId,
      spanId: this.ids.generateSpanId(),
      traceFlags: sampled.decision === SamplingDecision.RECORD_AND_SAMPLED ? TraceFlags.SAMPLED : TraceFlags.NONE,
      traceState: sampled.traceState ?? (valid ? parent.traceState : undefined),
    })
  }

  startActiveSpan<F extends (span: Span) => unknown>(name: string, fn: F): ReturnType<F>
  startActiveSpan<F extends (span: Span) => unknown>(name: string, options: SpanOptions, fn: F): ReturnType<F>
  startActiveSpan<F extends (span: Span) => unknown>(name: string, options: SpanOptions, ctx: Context, fn: F): ReturnType<F>
  startActiveSpan<F extends (span: Span) => unknown>(name: string, ...rest: unknown[]): ReturnType<F> {
    const fn = rest.pop() as F
    const [options, ctx] = rest as [SpanOptions | undefined, Context | undefined]
    const parent = ctx ?? contextApi.active()
    const span = this.startSpan(name, options, parent)
    return contextApi.with(traceApi.setSpan(parent, span), fn as (s: Span) => ReturnType<F>, undefined, span)
  }
}
