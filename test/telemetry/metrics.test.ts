// The decision metrics move with the decisions, the gauges read the live state, and the admin port
// serves them as Prometheus text.
import {
  AggregationTemporality,
  DataPointType,
  InMemoryMetricExporter,
  MeterProvider,
  PeriodicExportingMetricReader,
  type Histogram,
} from '@opentelemetry/sdk-metrics'
import pino from 'pino'
import t from 'tap'
import { manualClock } from '../../src/core/clock.js'
import { coalesced } from '../../src/telemetry/coalesced-counters.js'
import { DecisionAggregates } from '../../src/telemetry/metrics.js'
import { startTelemetry } from '../../src/telemetry/settings.js'
import { bearer, decisions, runApp, send, waitFor } from '../fixtures/app.js'
import { testKeys } from '../fixtures/keys.js'
import { inMemoryTelemetry } from './in-memory.js'

const T0_MS = Date.parse('2030-01-01T00:00:00Z')
const T0_S = T0_MS / 1000
const ROUTES = [
  { path: '/healthz', public: true },
  { path: '/orders/**', methods: ['GET'], scopes: ['orders:read'] },
]
const mint = async (claims: Record<string, unknown> = {}) => (await testKeys()).mint(claims, { nowS: T0_S })

t.test('lapse.decisions counts by decision, reason and route; the histograms count every decision and lookup', async (t) => {
  const mem = inMemoryTelemetry(t)
  const lapse = await runApp(t, { routes: ROUTES, clock: manualClock(T0_MS), telemetry: mem.telemetry })
  const token = await mint()
  for (let i = 0; i < 3; i++) t.equal((await send(`${lapse.url}/orders/${i}`, { headers: [bearer(token)] })).status, 200)
  for (let i = 0; i < 2; i++) t.equal((await send(`${lapse.url}/orders/${i}`)).status, 401)
  t.equal((await send(`${lapse.url}/orders/1`, { headers: [bearer(await mint({ scope: 'other' }))] })).status, 403)
  t.equal((await send(`${lapse.url}/healthz`)).status, 200)
  await waitFor(() => decisions(lapse).length === 7, 'seven decisions')

  const counts = Object.fromEntries(
    (await mem.points('lapse.decisions')).map((p) => [
      `${p.attributes['lapse.decision']}/${p.attributes['lapse.reason']}/${p.attributes['lapse.route']}/${p.attributes['http.route']}`,
      p.value,
    ]),
  )
  t.same(counts, {
    'allow/ok/1//orders/**': 3,
    'deny/missing_token/1//orders/**': 2,
    'deny/insufficient_scope/1//orders/**': 1,
    'allow/ok/0//healthz': 1,
  })

  const durations = await mem.points('lapse.decision.duration')
  t.equal(
    durations.reduce((n, p) => n + (p.value as Histogram).count, 0),
    7,
    'one duration per decision',
  )
  t.ok(
    durations.every((p) => (p.value as Histogram).min! >= 0),
    'durations are non-negative',
  )
  const lookups = await mem.points('lapse.revocation.lookup.duration')
  // Only verified tokens reach the revocation set: the three allows and the scope-short one.
  t.equal(
    lookups.reduce((n, p) => n + (p.value as Histogram).count, 0),
    4,
    'one lookup per verified token',
  )
  t.equal(lookups[0]!.attributes['lapse.revocation.backend'], 'memory')

  // Moves again: counters are cumulative.
  await send(`${lapse.url}/orders/9`, { headers: [bearer(token)] })
  await waitFor(() => decisions(lapse).length === 8, 'eighth decision')
  const again = (await mem.points('lapse.decisions')).find(
    (p) => p.attributes['lapse.reason'] === 'ok' && p.attributes['lapse.route'] === '1',
  )
  t.equal(again?.value, 4)
})

t.test('gauges: keys loaded, refresh age, revocation backend up, verified-token cache size', async (t) => {
  const clock = manualClock(T0_MS)
  const mem = inMemoryTelemetry(t)
  const lapse = await runApp(t, { routes: ROUTES, clock, telemetry: mem.telemetry })
  const value = async (name: string) => (await mem.points(name))[0]?.value
  t.equal(await value('lapse.jwks.keys'), (await testKeys()).jwks.keys.length)
  t.equal(await value('lapse.jwks.refresh.age'), 0)
  clock.advance(90_000)
  t.equal(await value('lapse.jwks.refresh.age'), 90, 'seconds since the key set was loaded')
  t.equal(await value('lapse.revocation.backend.up'), 1)
  t.equal((await mem.points('lapse.revocation.backend.up'))[0]!.attributes['lapse.revocation.backend'], 'memory')
  t.equal(await value('lapse.token_cache.size'), 0)
  clock.set(T0_MS)
  await send(`${lapse.url}/orders/1`, { headers: [bearer(await mint())] })
  await send(`${lapse.url}/orders/2`, { headers: [bearer(await mint())] })
  t.equal(await value('lapse.token_cache.size'), 2, 'two distinct verified tokens cached')
})

t.test('the admin port serves the metrics as Prometheus text at /metrics', async (t) => {
  const telemetry = await startTelemetry(
    { OTEL_TRACES_EXPORTER: 'none', OTEL_METRICS_EXPORTER: 'none' },
    { log: pino({ level: 'silent' }), clock: manualClock(T0_MS) },
  )
  t.teardown(() => telemetry.shutdown())
  const lapse = await runApp(t, { routes: ROUTES, clock: manualClock(T0_MS), telemetry })
  await send(`${lapse.url}/orders/1`, { headers: [bearer(await mint())] })
  await send(`${lapse.url}/orders/1`)
  await waitFor(() => decisions(lapse).length === 2, 'two decisions')
  const res = await send(`${lapse.adminUrl}/metrics`)
  t.equal(res.status, 200)
  t.match(res.headers['content-type'], /^text\/plain/)
  const text = res.body
  t.match(
    text,
    /^lapse_decisions_total\{[^}]*lapse_decision="allow",lapse_reason="ok",lapse_route="1",http_route="\/orders\/\*\*"[^}]*\} 1$/m,
  )
  t.match(text, /^lapse_decisions_total\{[^}]*lapse_decision="deny",lapse_reason="missing_token"[^}]*\} 1$/m)
  t.match(text, /^lapse_decision_duration_bucket\{[^}]*le="0.001"[^}]*\} \d+$/m)
  t.match(text, /^lapse_decision_duration_count\{[^}]*\} 1$/m)
  t.match(text, /^lapse_revocation_lookup_duration_count\{[^}]*lapse_revocation_backend="memory"[^}]*\} 1$/m)
  t.match(text, /^lapse_jwks_keys\{[^}]*\} 4$/m)
  t.match(text, /^lapse_jwks_refresh_age\{[^}]*\} 0$/m)
  t.match(text, /^lapse_revocation_backend_up\{[^}]*lapse_revocation_backend="memory"[^}]*\} 1$/m)
  t.match(text, /^lapse_token_cache_size\{[^}]*\} 1$/m)
})

t.test('telemetry off: /metrics answers 404 "metrics are off"', async (t) => {
  const lapse = await runApp(t, { routes: ROUTES, clock: manualClock(T0_MS) })
  const res = await send(`${lapse.adminUrl}/metrics`)
  t.equal(res.status, 404)
  t.equal(res.json().error_description, 'metrics are off')
})

t.test('DecisionAggregates: explicit buckets with inclusive upper bounds, min/max/sum, one series per label set', async (t) => {
  const agg = new DecisionAggregates()
  t.same((await agg.collect()).resourceMetrics.scopeMetrics, [], 'nothing recorded, nothing reported')
  // 0.001 sits exactly on a boundary: it counts in that bucket, as in OpenTelemetry's histogram.
  for (const s of [0.00001, 0.001, 0.0011, 99]) agg.decision('allow', 'ok', '1', '/orders/**', s)
  agg.decision('deny', 'expired', '1', '/orders/**', 0.0002)
  agg.lookup('redis', 0.00003)
  const { resourceMetrics, errors } = await agg.collect()
  t.same(errors, [])
  const metrics = Object.fromEntries(resourceMetrics.scopeMetrics[0]!.metrics.map((m) => [m.descriptor.name, m]))
  t.same(Object.keys(metrics).sort(), ['lapse.decision.duration', 'lapse.decisions', 'lapse.revocation.lookup.duration'])
  const counts = Object.fromEntries(metrics['lapse.decisions']!.dataPoints.map((p) => [String(p.attributes['lapse.reason']), p.value]))
  t.same(counts, { ok: 4, expired: 1 })
  const allow = metrics['lapse.decision.duration']!.dataPoints.find((p) => p.attributes['lapse.decision'] === 'allow')!.value as Histogram
  const bucketOf = (le: number) => allow.buckets.counts[allow.buckets.boundaries.indexOf(le)]
  t.equal(allow.count, 4)
  t.equal(bucketOf(0.00005), 1, '10 µs in the first bucket')
  t.equal(bucketOf(0.001), 1, 'exactly 1 ms in the le=0.001 bucket')
  t.equal(bucketOf(0.0025), 1, '1.1 ms in the next one')
  t.equal(allow.buckets.counts.at(-1), 1, '99 s in the overflow bucket')
  t.equal(allow.min, 0.00001)
  t.equal(allow.max, 99)
  t.ok(Math.abs(allow.sum! - 99.00211) < 1e-9)
  const lookup = metrics['lapse.revocation.lookup.duration']!.dataPoints[0]!
  t.same(lookup.attributes, { 'lapse.revocation.backend': 'redis' })
  t.equal((lookup.value as Histogram).count, 1)
})

t.test(
  'coalesced counters: adds by the same or an equal attribute set land in one total, read at collection; made before the MeterProvider exists',
  async (t) => {
    const exporter = new InMemoryMetricExporter(AggregationTemporality.CUMULATIVE)
    const reader = new PeriodicExportingMetricReader({ exporter, exportIntervalMillis: 3_600_000 })
    const selfObs = coalesced()
    // As the batch processor does in its constructor, before NodeSDK has built the MeterProvider.
    const counter = selfObs.getMeter('sdk-self').createCounter('spans.processed')
    const capacity = selfObs.getMeter('sdk-self').createUpDownCounter('queue.capacity')
    capacity.add(2048)
    const dropped = { 'error.type': 'queue_full', 'otel.component.name': 'batching_span_processor/0' }
    counter.add(1, dropped)
    const provider = new MeterProvider({ readers: [reader] })
    t.teardown(() => provider.shutdown())
    selfObs.bind(provider)
    for (let i = 0; i < 999; i++) counter.add(1, dropped)
    counter.add(2, { 'otel.component.name': 'batching_span_processor/0', 'error.type': 'queue_full' })
    counter.add(5, { 'otel.component.name': 'batching_span_processor/0' })
    counter.add(3)
    counter.add(-1, dropped)
    await reader.forceFlush()
    const metric = exporter
      .getMetrics()
      .at(-1)!
      .scopeMetrics.flatMap((s) => s.metrics)
      .find((m) => m.descriptor.name === 'spans.processed')!
    t.equal(metric.dataPointType, DataPointType.SUM)
    t.ok('isMonotonic' in metric && metric.isMonotonic, 'exported as a monotonic sum, like a counter')
    const totals = Object.fromEntries(metric.dataPoints.map((p) => [JSON.stringify(p.attributes), p.value]))
    t.same(
      totals,
      {
        [JSON.stringify(dropped)]: 1002,
        [JSON.stringify({ 'otel.component.name': 'batching_span_processor/0' })]: 5,
        '{}': 3,
      },
      'equal attribute sets share a total, adds before the bind included; a negative add is ignored',
    )
    const cap = exporter
      .getMetrics()
      .at(-1)!
      .scopeMetrics.flatMap((s) => s.metrics)
      .find((m) => m.descriptor.name === 'queue.capacity')
    t.equal(cap?.dataPoints[0]?.value, 2048, 'an up-down counter added to before the bind keeps its value')
  },
)
