// The decision metrics of DESIGN.md "Telemetry" and the gauges an operator watches, over one OTel
// Meter. Exported however the MeterProvider says: OTLP push, Prometheus text on the admin port.
//
//   const metrics = createDecisionMetrics(meterProvider.getMeter('lapse'), { keys, verify, revocations, clock })
//   createRecorder({ …, metrics })
//
// Labels are bounded: decision (2) × reason (18) × route (one per rule). Never a path, subject or jti.
import type { Meter } from '@opentelemetry/api'
import { ATTR_HTTP_ROUTE } from '@opentelemetry/semantic-conventions'
import type { Clock } from '../pipeline/types.js'
import type { DecisionMetrics } from './recorder.js'
import * as A from './semconv.js'

/** What the gauges read, at collection time only: nothing here runs on the request path. */
export interface GaugeSources {
  readonly keys: { stats(): { keys: number; lastRefreshMs: number | undefined } }
  readonly verify: { cacheSize(): number }
  readonly revocations: { ready(): boolean; readonly kind: string }
  readonly clock: Clock
}

// A decision is usually tens of microseconds; a cold JWKS fetch can hold one for seconds.
const DECISION_BUCKETS_S = [0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5]
// The revocation budget (LAPSE_REVOCATION_TIMEOUT) defaults to 50 ms and is at most 10 s.
const LOOKUP_BUCKETS_S = [0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 10]

export function createDecisionMetrics(meter: Meter, sources?: GaugeSources): DecisionMetrics {
  const decisions = meter.createCounter(A.METRIC_DECISIONS, {
    unit: '{decision}',
    description: 'Authorization decisions, by decision, reason and route rule',
  })
  const decisionDuration = meter.createHistogram(A.METRIC_DECISION_DURATION, {
    unit: 's',
    description: 'Time from request headers to decision (extract, verify, revocation, authorize)',
    advice: { explicitBucketBoundaries: DECISION_BUCKETS_S },
  })
  const lookupDuration = meter.createHistogram(A.METRIC_REVOCATION_LOOKUP_DURATION, {
    unit: 's',
    description: 'Time the revocation set took to answer one check',
    advice: { explicitBucketBoundaries: LOOKUP_BUCKETS_S },
  })
  const backend = { [A.ATTR_REVOCATION_BACKEND]: sources?.revocations.kind ?? 'unknown' }

  if (sources) observeGauges(meter, sources, backend)

  return {
    recordDecision(l, durationMs) {
      const attrs = { [A.ATTR_DECISION]: l.decision, [A.ATTR_REASON]: l.reason, [A.ATTR_ROUTE]: l.route, [ATTR_HTTP_ROUTE]: l.httpRoute }
      decisions.add(1, attrs)
      decisionDuration.record(durationMs / 1000, attrs)
    },
    recordRevocationLookup(durationMs) {
      lookupDuration.record(durationMs / 1000, backend)
    },
  }
}

function observeGauges(meter: Meter, s: GaugeSources, backend: Record<string, string>): void {
  const keys = meter.createObservableGauge(A.METRIC_JWKS_KEYS, { unit: '{key}', description: 'Verification keys loaded' })
  const age = meter.createObservableGauge(A.METRIC_JWKS_REFRESH_AGE, {
    unit: 's',
    description: 'Seconds since the key set was last loaded successfully; absent until it first is',
  })
  const up = meter.createObservableGauge(A.METRIC_REVOCATION_BACKEND_UP, { unit: '1', description: '1 when the revocation set can answer, else 0' })
  const cached = meter.createObservableGauge(A.METRIC_TOKEN_CACHE_SIZE, { unit: '{token}', description: 'Verified tokens held in the cache' })
  meter.addBatchObservableCallback((result) => {
    const stats = s.keys.stats()
    result.observe(keys, stats.keys)
    if (stats.lastRefreshMs !== undefined) result.observe(age, Math.max(0, (s.clock.now() - stats.lastRefreshMs) / 1000))
    result.observe(up, s.revocations.ready() ? 1 : 0, backend)
    result.observe(cached, s.verify.cacheSize())
  }, [keys, age, up, cached])
}
