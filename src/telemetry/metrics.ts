// The decision metrics of DESIGN.md "Telemetry" and the gauges an operator watches.
//
//   const aggregates = new DecisionAggregates()                    // startTelemetry: a producer on every reader
//   const metrics = createDecisionMetrics(meter, aggregates, { keys, verify, revocations, clock })
//   createRecorder({ …, metrics })
//
// Labels are bounded: decision (2) × reason (20) × route (one per rule). Never a path, subject or jti.
// Why a MetricProducer, not the SDK's synchronous instruments (which hash attributes once per
// reader on every record): docs/telemetry.md#off-the-request-path; figures in bench/README.md.
import { ValueType, type Attributes, type HrTime, type Meter } from '@opentelemetry/api'
import { hrTime } from '@opentelemetry/core'
import { emptyResource } from '@opentelemetry/resources'
import {
  AggregationTemporality,
  DataPointType,
  type CollectionResult,
  type Histogram,
  type MetricData,
  type MetricProducer,
} from '@opentelemetry/sdk-metrics'
import { ATTR_HTTP_ROUTE } from '@opentelemetry/semantic-conventions'
import type { Clock } from '../core/types.js'
import type { DecisionMetrics } from './recorder.js'
import * as A from './semconv.js'

/** What the gauges read, at collection time only: nothing here runs on the request path. */
export interface GaugeSources {
  readonly keys: { stats(): { keys: number; lastRefreshMs: number | undefined } }
  readonly verify: { cacheSize(): number }
  readonly revocations: {
    ready(): boolean
    readonly kind: string
    eventsLive?(): boolean
    cacheActive?(): boolean
    persistence?(): 'aof' | 'rdb' | 'none' | 'unknown'
  }
  readonly clock: Clock
  /** The connection registry, when there is one. */
  readonly connections?: { readonly size: number } | undefined
  /** The stdout sink (line-sink.ts), when Lapse writes its own lines. */
  readonly lines?: { readonly dropped: number } | undefined
}

// A decision is usually tens of microseconds; a cold JWKS fetch can hold one for seconds.
const DECISION_BUCKETS_S = [0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5]
// The revocation budget (LAPSE_REVOCATION_TIMEOUT) defaults to 50 ms and is at most 10 s.
const LOOKUP_BUCKETS_S = [0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 10]

/** One label set's running totals: a count, and a histogram when the metric has one. */
class Series {
  count = 0
  sum = 0
  min = Infinity
  max = -Infinity
  readonly counts: number[]

  constructor(
    readonly attributes: Attributes,
    private readonly boundaries: readonly number[],
  ) {
    this.counts = new Array<number>(boundaries.length + 1).fill(0)
  }

  record(value: number): void {
    this.count++
    this.sum += value
    if (value < this.min) this.min = value
    if (value > this.max) this.max = value
    // Upper bounds are inclusive, as in OpenTelemetry's explicit-bucket histogram.
    let i = 0
    while (i < this.boundaries.length && value > this.boundaries[i]!) i++
    this.counts[i]!++
  }

  histogram(): Histogram {
    return {
      buckets: { boundaries: [...this.boundaries], counts: [...this.counts] },
      sum: this.sum,
      count: this.count,
      ...(this.count > 0 ? { min: this.min, max: this.max } : {}),
    }
  }
}

/**
 * The per-request metrics, aggregated in place and read by the SDK's metric readers through
 * MetricProducer#collect. Cumulative from the moment it is created.
 */
export class DecisionAggregates implements MetricProducer {
  private readonly decisions = new Map<string, Series>()
  private readonly lookups = new Map<string, Series>()
  private readonly startTime: HrTime = hrTime()

  decision(decision: string, reason: string, route: string, httpRoute: string, seconds: number): void {
    const key = `${decision}\u0000${reason}\u0000${route}`
    let series = this.decisions.get(key)
    if (!series) {
      series = new Series(
        { [A.ATTR_DECISION]: decision, [A.ATTR_REASON]: reason, [A.ATTR_ROUTE]: route, [ATTR_HTTP_ROUTE]: httpRoute },
        DECISION_BUCKETS_S,
      )
      this.decisions.set(key, series)
    }
    series.record(seconds)
  }

  lookup(backend: string, seconds: number): void {
    let series = this.lookups.get(backend)
    if (!series) {
      series = new Series({ [A.ATTR_REVOCATION_BACKEND]: backend }, LOOKUP_BUCKETS_S)
      this.lookups.set(backend, series)
    }
    series.record(seconds)
  }

  async collect(): Promise<CollectionResult> {
    const endTime = hrTime()
    const point = <T>(s: Series, value: T) => ({ attributes: s.attributes, startTime: this.startTime, endTime, value })
    const decisions = [...this.decisions.values()]
    const lookups = [...this.lookups.values()]
    const metrics: MetricData[] = []
    if (decisions.length) {
      metrics.push(
        {
          descriptor: {
            name: A.METRIC_DECISIONS,
            unit: '{decision}',
            description: 'Authorization decisions, by decision, reason and route rule',
            valueType: ValueType.INT,
          },
          aggregationTemporality: AggregationTemporality.CUMULATIVE,
          dataPointType: DataPointType.SUM,
          isMonotonic: true,
          dataPoints: decisions.map((s) => point(s, s.count)),
        },
        {
          descriptor: {
            name: A.METRIC_DECISION_DURATION,
            unit: 's',
            description: 'Time from request headers to decision (extract, verify, revocation, authorize)',
            valueType: ValueType.DOUBLE,
          },
          aggregationTemporality: AggregationTemporality.CUMULATIVE,
          dataPointType: DataPointType.HISTOGRAM,
          dataPoints: decisions.map((s) => point(s, s.histogram())),
        },
      )
    }
    if (lookups.length) {
      metrics.push({
        descriptor: {
          name: A.METRIC_REVOCATION_LOOKUP_DURATION,
          unit: 's',
          description: 'Time the revocation set took to answer one check',
          valueType: ValueType.DOUBLE,
        },
        aggregationTemporality: AggregationTemporality.CUMULATIVE,
        dataPointType: DataPointType.HISTOGRAM,
        dataPoints: lookups.map((s) => point(s, s.histogram())),
      })
    }
    // The reader keeps the SDK's resource and appends these scope metrics to its own.
    return {
      resourceMetrics: { resource: emptyResource(), scopeMetrics: metrics.length ? [{ scope: { name: 'lapse' }, metrics }] : [] },
      errors: [],
    }
  }
}

/** The recorder's metrics over `aggregates`, and the gauges on `meter`. */
export function createDecisionMetrics(meter: Meter, aggregates: DecisionAggregates, sources?: GaugeSources): DecisionMetrics {
  const backend = sources?.revocations.kind ?? 'unknown'
  if (sources) observeGauges(meter, sources, { [A.ATTR_REVOCATION_BACKEND]: backend })
  // Rare events, so the SDK's own counters: not on the path of an ordinary decision.
  const failedOpen = meter.createCounter(A.METRIC_FAILED_OPEN, {
    unit: '{decision}',
    description: 'Allows let through while the revocation set or use counter could not answer (on_revocation_unavailable: open)',
  })
  const cuts = meter.createCounter(A.METRIC_CONNECTIONS_CUT, {
    unit: '{connection}',
    description: 'Long-lived exchanges cut because their token lapsed',
  })
  return {
    recordFailedOpen(l) {
      failedOpen.add(1, { [A.ATTR_ROUTE]: l.route, [ATTR_HTTP_ROUTE]: l.httpRoute })
    },
    recordCut(reason, kind) {
      cuts.add(1, { [A.ATTR_CONNECTION_CUT]: reason, [A.ATTR_CONNECTION_KIND]: kind })
    },
    recordDecision(l, durationMs) {
      aggregates.decision(l.decision, l.reason, l.route, l.httpRoute, durationMs / 1000)
    },
    recordRevocationLookup(durationMs) {
      aggregates.lookup(backend, durationMs / 1000)
    },
  }
}

function observeGauges(meter: Meter, s: GaugeSources, backend: Record<string, string>): void {
  const keys = meter.createObservableGauge(A.METRIC_JWKS_KEYS, { unit: '{key}', description: 'Verification keys loaded' })
  const age = meter.createObservableGauge(A.METRIC_JWKS_REFRESH_AGE, {
    unit: 's',
    description: 'Seconds since the key set was last loaded successfully; absent until it first is',
  })
  const up = meter.createObservableGauge(A.METRIC_REVOCATION_BACKEND_UP, {
    unit: '1',
    description: '1 when the revocation set can answer, else 0',
  })
  const cached = meter.createObservableGauge(A.METRIC_TOKEN_CACHE_SIZE, {
    unit: '{token}',
    description: 'Verified tokens held in the cache',
  })
  const events = meter.createObservableGauge(A.METRIC_REVOCATION_EVENTS_UP, {
    unit: '1',
    description: '1 while the revocation event channel delivers, else 0',
  })
  const cacheActive = meter.createObservableGauge(A.METRIC_REVOCATION_CACHE_ACTIVE, {
    unit: '1',
    description: '1 while revocation checks may answer from the local cache, else 0',
  })
  const open = meter.createObservableGauge(A.METRIC_CONNECTIONS_OPEN, {
    unit: '{connection}',
    description: 'Long-lived exchanges registered for cuts',
  })
  const persistent = meter.createObservableGauge(A.METRIC_REVOCATION_PERSISTENT, {
    unit: '1',
    description:
      '1 when Redis keeps the revocation set in an append-only file, 0 when a Redis restart can lose revocations; absent until known',
  })
  const lines = s.lines
  if (lines)
    meter
      .createObservableCounter(A.METRIC_LOG_LINES_DROPPED, {
        unit: '{line}',
        description: 'Audit and log lines dropped because stdout took none while the buffer was full (LAPSE_LOG_BUFFER_BYTES)',
      })
      .addCallback((result) => result.observe(lines.dropped))
  meter.addBatchObservableCallback(
    (result) => {
      const mode = s.revocations.persistence?.()
      if (mode !== undefined && mode !== 'unknown')
        result.observe(persistent, mode === 'aof' ? 1 : 0, { ...backend, [A.ATTR_REVOCATION_PERSISTENCE]: mode })
      const stats = s.keys.stats()
      result.observe(keys, stats.keys)
      if (stats.lastRefreshMs !== undefined) result.observe(age, Math.max(0, (s.clock.now() - stats.lastRefreshMs) / 1000))
      result.observe(up, s.revocations.ready() ? 1 : 0, backend)
      result.observe(cached, s.verify.cacheSize())
      // The memory set delivers its events in-process: its channel is never down.
      result.observe(events, s.revocations.eventsLive ? (s.revocations.eventsLive() ? 1 : 0) : 1, backend)
      result.observe(cacheActive, s.revocations.cacheActive?.() ? 1 : 0, backend)
      if (s.connections) result.observe(open, s.connections.size)
    },
    [keys, age, up, cached, persistent, events, cacheActive, open],
  )
}
