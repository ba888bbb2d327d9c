// Telemetry over the SDK's in-memory exporters, for runApp: every span as it ends, metrics on demand.
//
//   const mem = inMemoryTelemetry(t)
//   const lapse = await runApp(t, { telemetry: mem.telemetry })
//   const span = await mem.authorizeSpan(traceId)       // waits for the one lapse.authorize span of that trace
//   const points = await mem.points('lapse.decisions')  // collected now
import { randomBytes } from 'node:crypto'
import { W3CTraceContextPropagator } from '@opentelemetry/core'
import {
  AggregationTemporality,
  InMemoryMetricExporter,
  MeterProvider,
  PeriodicExportingMetricReader,
  type DataPoint,
  type Histogram,
} from '@opentelemetry/sdk-metrics'
import { BasicTracerProvider, InMemorySpanExporter, SimpleSpanProcessor, type ReadableSpan } from '@opentelemetry/sdk-trace-base'
import type { Test } from 'tap'
import { DecisionAggregates } from '../../src/telemetry/metrics.js'
import type { Telemetry } from '../../src/telemetry/settings.js'
import { waitFor } from '../fixtures/app.js'

export interface MemoryTelemetry {
  readonly telemetry: Telemetry
  readonly exporter: InMemorySpanExporter
  spans(): ReadableSpan[]
  /** The spans of one trace, once `count` spans named `name` have ended in it. */
  spansOf(traceId: string, name?: string, count?: number): Promise<ReadableSpan[]>
  /** The single `lapse.authorize` span of a trace; fails the wait if it never comes. */
  authorizeSpan(traceId: string): Promise<ReadableSpan>
  /** Data points of one metric as collected right now (cumulative). */
  points(name: string): Promise<Array<DataPoint<number | Histogram>>>
}

/** A fresh W3C traceparent and its trace id, so each request of a test is its own trace. */
export function newTraceparent(): { traceId: string; parentSpanId: string; header: [string, string] } {
  const traceId = randomBytes(16).toString('hex')
  const parentSpanId = randomBytes(8).toString('hex')
  return { traceId, parentSpanId, header: ['traceparent', `00-${traceId}-${parentSpanId}-01`] }
}

export function inMemoryTelemetry(t: Test): MemoryTelemetry {
  const exporter = new InMemorySpanExporter()
  const tracerProvider = new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] })
  const metricExporter = new InMemoryMetricExporter(AggregationTemporality.CUMULATIVE)
  // Exports only when asked (forceFlush): the interval is longer than any test.
  const decisions = new DecisionAggregates()
  const reader = new PeriodicExportingMetricReader({
    exporter: metricExporter,
    exportIntervalMillis: 3_600_000,
    metricProducers: [decisions],
  })
  const meterProvider = new MeterProvider({ readers: [reader] })
  const telemetry: Telemetry = {
    tracerProvider,
    meterProvider,
    decisions,
    propagator: new W3CTraceContextPropagator(),
    metricsHandler: undefined,
    shutdown: async () => {
      await Promise.all([tracerProvider.shutdown(), meterProvider.shutdown()])
    },
  }
  t.teardown(() => telemetry.shutdown())

  const spansOf = async (traceId: string, name = 'lapse.authorize', count = 1) => {
    await waitFor(
      () => exporter.getFinishedSpans().filter((s) => s.spanContext().traceId === traceId && s.name === name).length >= count,
      `${count} ${name} span(s) in trace ${traceId}`,
    )
    return exporter.getFinishedSpans().filter((s) => s.spanContext().traceId === traceId)
  }

  return {
    telemetry,
    exporter,
    spans: () => exporter.getFinishedSpans(),
    spansOf,
    async authorizeSpan(traceId) {
      const spans = (await spansOf(traceId)).filter((s) => s.name === 'lapse.authorize')
      if (spans.length !== 1) throw new Error(`expected one lapse.authorize span in trace ${traceId}, got ${spans.length}`)
      return spans[0]!
    },
    async points(name) {
      metricExporter.reset()
      await reader.forceFlush()
      const out: Array<DataPoint<number | Histogram>> = []
      for (const rm of metricExporter.getMetrics()) {
        for (const sm of rm.scopeMetrics) {
          for (const m of sm.metrics) if (m.descriptor.name === name) out.push(...(m.dataPoints as Array<DataPoint<number | Histogram>>))
        }
      }
      return out
    },
  }
}
