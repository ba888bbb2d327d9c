// The export gate and the pausing tracer (src/telemetry/pausing.ts) over the SDK's own tracer,
// sampler and in-memory exporter: what is recorded in each state, what a request's span context
// looks like while paused, and how a pause ends.
import { ROOT_CONTEXT, SpanKind, TraceFlags, isSpanContextValid, trace, type Context } from '@opentelemetry/api'
import { ExportResultCode } from '@opentelemetry/core'
import {
  AlwaysOffSampler,
  AlwaysOnSampler,
  BasicTracerProvider,
  InMemorySpanExporter,
  ParentBasedSampler,
  SimpleSpanProcessor,
  type Sampler,
} from '@opentelemetry/sdk-trace-base'
import t, { type Test } from 'tap'
import { createExportGate, pausingTracerProvider, type ExportGate } from '../../src/telemetry/pausing.js'
import { waitFor } from '../fixtures/app.js'

const FAILED = { code: ExportResultCode.FAILED, error: new Error('ECONNREFUSED') }
const OK = { code: ExportResultCode.SUCCESS }

function logSink() {
  const lines: Array<{ level: 'warn' | 'info'; msg: string }> = []
  return {
    lines,
    log: {
      warn: (_o: object, msg: string) => void lines.push({ level: 'warn', msg }),
      info: (_o: object, msg: string) => void lines.push({ level: 'info', msg }),
    } as never,
  }
}

function gateOf(t: Test, over: Partial<{ failuresToPause: number; retryAfterMs: number }> = {}) {
  const sink = logSink()
  let probes = 0
  const gate = createExportGate({ failuresToPause: 2, retryAfterMs: 40, probe: () => void probes++, log: sink.log, ...over })
  t.teardown(() => gate.close())
  return { gate, lines: sink.lines, probes: () => probes }
}

const admitted = (gate: ExportGate, n: number) => Array.from({ length: n }, () => gate.admit()).filter(Boolean).length

t.test('the gate: records until exports fail in a row, then pauses, warning once', async (t) => {
  const { gate, lines } = gateOf(t)
  t.equal(gate.state, 'recording')
  t.equal(admitted(gate, 10), 10)
  gate.report(FAILED)
  t.equal(gate.state, 'recording', 'one failure of two needed')
  gate.report(OK)
  gate.report(FAILED)
  t.equal(gate.state, 'recording', 'a success in between starts the count again')
  gate.report(FAILED)
  t.equal(gate.state, 'paused')
  t.equal(admitted(gate, 10), 0, 'nothing recorded while paused')
  gate.report(FAILED)
  t.same(
    lines.map((l) => l.level),
    ['warn'],
    'one warning for the pause, none for later failures',
  )
})

t.test(
  'the gate: after the pause it probes once and records nothing until the probe answers; failure pauses again, success resumes',
  async (t) => {
    const { gate, lines, probes } = gateOf(t)
    gate.report(FAILED)
    gate.report(FAILED)
    t.equal(probes(), 0)
    await waitFor(() => gate.state === 'probing' || undefined, 'the probe after retryAfterMs')
    t.equal(probes(), 1, 'one empty export sent')
    t.equal(admitted(gate, 10), 0, 'no span is recorded to find out')
    gate.report(FAILED)
    t.equal(gate.state, 'paused', 'a failed probe pauses again')
    t.equal(admitted(gate, 5), 0)
    await waitFor(() => gate.state === 'probing' || undefined, 'the next probe')
    t.equal(probes(), 2)
    gate.report(OK)
    t.equal(gate.state, 'recording')
    t.equal(admitted(gate, 10), 10)
    t.same(
      lines.map((l) => l.level),
      ['warn', 'info'],
      'one line when the pause starts, one when it ends',
    )
  },
)

t.test('the gate: any successful export ends a pause at once, and close stops its timer', async (t) => {
  const { gate } = gateOf(t, { retryAfterMs: 60_000 })
  gate.report(FAILED)
  gate.report(FAILED)
  t.equal(gate.state, 'paused')
  gate.report(OK)
  t.equal(gate.state, 'recording', 'an export queued before the pause succeeded: the collector is back')
  gate.report(FAILED)
  gate.report(FAILED)
  t.equal(gate.state, 'paused')

  const short = gateOf(t, { retryAfterMs: 20 }).gate
  short.report(FAILED)
  short.report(FAILED)
  short.close()
  await new Promise((resolve) => setTimeout(resolve, 80))
  t.equal(short.state, 'paused', 'closed: no probe comes after retryAfterMs')
})

function tracerOver(t: Test, sampler: Sampler) {
  const exporter = new InMemorySpanExporter()
  const sdk = new BasicTracerProvider({ sampler, spanProcessors: [new SimpleSpanProcessor(exporter)] })
  const { gate } = gateOf(t, { failuresToPause: 1, retryAfterMs: 60_000 })
  let unrecorded = 0
  const tracer = pausingTracerProvider(sdk, { gate, sampler, onUnrecorded: () => void unrecorded++ }).getTracer('lapse')
  return { tracer, gate, exporter, unrecorded: () => unrecorded }
}

const parentCtx = (flags: TraceFlags): { ctx: Context; traceId: string; spanId: string } => {
  const traceId = '4bf92f3577b34da6a3ce929d0e0e4736'
  const spanId = '00f067aa0ba902b7'
  return { ctx: trace.setSpanContext(ROOT_CONTEXT, { traceId, spanId, traceFlags: flags, isRemote: true }), traceId, spanId }
}

t.test('pausing tracer: recording passes spans to the SDK; paused, a span context as the SDK would give, no span', async (t) => {
  const { tracer, gate, exporter, unrecorded } = tracerOver(t, new ParentBasedSampler({ root: new AlwaysOnSampler() }))
  const parent = parentCtx(TraceFlags.SAMPLED)
  tracer.startSpan('lapse.authorize', { kind: SpanKind.SERVER }, parent.ctx).end()
  t.equal(exporter.getFinishedSpans().length, 1, 'recorded while the gate admits')
  t.equal(exporter.getFinishedSpans()[0]!.spanContext().traceId, parent.traceId)

  gate.report(FAILED)
  const seen = new Set<string>()
  for (let i = 0; i < 50; i++) {
    const span = tracer.startSpan('lapse.authorize', { kind: SpanKind.SERVER }, parent.ctx)
    const sc = span.spanContext()
    t.equal(span.isRecording(), false)
    t.ok(isSpanContextValid(sc))
    t.equal(sc.traceId, parent.traceId, "the caller's trace")
    t.not(sc.spanId, parent.spanId)
    t.equal(sc.traceFlags, TraceFlags.SAMPLED, 'sampled, as the caller asked')
    seen.add(sc.spanId)
    span.setAttribute('lapse.decision', 'allow')
    span.end()
  }
  t.equal(seen.size, 50, "a fresh span id each time, so the upstream's parent is unique per request")
  t.equal(exporter.getFinishedSpans().length, 1, 'nothing more reached the exporter')
  t.equal(unrecorded(), 50, 'every skipped span counted')

  const unsampled = parentCtx(TraceFlags.NONE)
  const span = tracer.startSpan('lapse.authorize', {}, unsampled.ctx)
  t.equal(span.spanContext().traceFlags, TraceFlags.NONE, 'an unsampled caller stays unsampled')
  t.equal(unrecorded(), 50, 'a span the sampler drops is not counted as unrecorded')

  const root = tracer.startSpan('lapse.authorize', {}, ROOT_CONTEXT).spanContext()
  t.ok(isSpanContextValid(root), 'no caller context: a new trace')
  t.equal(root.traceFlags, TraceFlags.SAMPLED)
  const forcedRoot = tracer.startSpan('lapse.authorize', { root: true }, parent.ctx).spanContext()
  t.not(forcedRoot.traceId, parent.traceId, 'root: true ignores the parent, as the SDK does')
})

t.test('pausing tracer: always_off stays unsampled and uncounted; startActiveSpan hands fn the paused span', async (t) => {
  const { tracer, gate, unrecorded } = tracerOver(t, new AlwaysOffSampler())
  gate.report(FAILED)
  const span = tracer.startSpan('lapse.authorize', {}, ROOT_CONTEXT)
  t.equal(span.spanContext().traceFlags, TraceFlags.NONE)
  t.equal(span.isRecording(), false)
  t.equal(unrecorded(), 0)

  const parent = parentCtx(TraceFlags.SAMPLED)
  const got = tracer.startActiveSpan('x', { kind: SpanKind.CLIENT }, parent.ctx, (s) => ({
    traceId: s.spanContext().traceId,
    recording: s.isRecording(),
  }))
  t.same(got, { traceId: parent.traceId, recording: false }, 'fn gets a paused span in the given context, and its value is returned')
})
