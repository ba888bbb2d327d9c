// The alert rules and the dashboard in deploy/, tested rather than just shipped: promtool checks
// and unit-tests the rules, the PrometheusRule holds the same groups, and every metric name the
// rules and the dashboard read is one a running Lapse exports on /metrics.
import { execFileSync } from 'node:child_process'
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import pino from 'pino'
import t from 'tap'
import { parse as parseYaml } from 'yaml'
import { startTelemetry } from '../../src/telemetry/settings.js'
import { ADMIN_TOKEN, bearer, decisions, runApp, send, waitFor } from '../fixtures/app.js'
import { testKeys } from '../fixtures/keys.js'
import { startRedis } from '../fixtures/redis-server.js'
import { startUpstream } from '../fixtures/upstream.js'

const DIR = 'deploy/prometheus'
interface AlertRule {
  alert: string
  expr: string
  for?: string
  labels: Record<string, string>
  annotations: Record<string, string>
}
const groups = (parseYaml(readFileSync(`${DIR}/lapse-alerts.yaml`, 'utf8')) as { groups: Array<{ name: string; rules: AlertRule[] }> })
  .groups
const rules = groups.flatMap((g) => g.rules)
const dashboard = JSON.parse(readFileSync('deploy/grafana/lapse-dashboard.json', 'utf8')) as {
  panels: Array<{ title: string; targets: Array<{ expr: string }> }>
}

/** Metrics of Lapse's own stdout sink (src/telemetry/line-sink.ts): absent under an embedding program's logger. */
const OWN_STDOUT_ONLY = new Set(['lapse_log_lines_dropped_total'])

const promtool = (...args: string[]) => execFileSync('promtool', args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] })

t.test("promtool check rules: the rule file and the PrometheusRule's groups are valid", async (t) => {
  t.match(promtool('check', 'rules', `${DIR}/lapse-alerts.yaml`), /SUCCESS: \d+ rules found/)
  const operator = parseYaml(readFileSync(`${DIR}/lapse-prometheusrule.yaml`, 'utf8')) as { kind: string; spec: { groups: unknown } }
  t.equal(operator.kind, 'PrometheusRule')
  t.same(operator.spec.groups, groups, "the PrometheusRule holds exactly the rule file's groups")
  const extracted = join(mkdtempSync(join(tmpdir(), 'lapse-rules-')), 'spec.yaml')
  writeFileSync(extracted, JSON.stringify(operator.spec))
  t.match(promtool('check', 'rules', extracted), /SUCCESS/)
})

t.test('promtool test rules: each alert fires on its synthetic series and stays quiet otherwise', async (t) => {
  t.match(promtool('test', 'rules', `${DIR}/lapse-alerts.test.yaml`), /SUCCESS/)
  const tests = (
    parseYaml(readFileSync(`${DIR}/lapse-alerts.test.yaml`, 'utf8')) as {
      tests: Array<{ alert_rule_test: Array<{ alertname: string; exp_alerts: unknown[] }> }>
    }
  ).tests
  const cases = tests.flatMap((x) => x.alert_rule_test)
  for (const { alert } of rules) {
    t.ok(
      cases.some((c) => c.alertname === alert && c.exp_alerts.length > 0),
      `${alert} has a firing case`,
    )
    t.ok(
      cases.some((c) => c.alertname === alert && c.exp_alerts.length === 0),
      `${alert} has a quiet case`,
    )
  }
})

t.test('every alert has a severity, a summary and a description that says what to do, and a runbook line', async (t) => {
  const telemetryDoc = readFileSync('docs/telemetry.md', 'utf8')
  for (const r of rules) {
    t.match(r.labels.severity, /^(critical|warning)$/, `${r.alert} severity`)
    t.ok((r.annotations.summary ?? '').length > 10, `${r.alert} summary`)
    t.ok((r.annotations.description ?? '').length > 40, `${r.alert} description`)
    t.ok(telemetryDoc.includes(`| \`${r.alert}\` |`), `${r.alert} has a runbook row in docs/telemetry.md`)
  }
  // The events the alerts exist for: each has a rule reading it.
  const exprs = rules.map((r) => r.expr).join('\n')
  for (const needed of [
    '"revoked"',
    'token_reused',
    'dpop_replayed',
    'lifetime_exceeds_policy',
    'lapse_decisions_failed_open_total',
    'revocation_unavailable',
    'keys_unavailable',
    'lapse_revocation_events_up',
    'lapse_decision_duration_bucket',
    'lapse_log_lines_dropped_total',
  ]) {
    t.ok(exprs.includes(needed), `a rule reads ${needed}`)
  }
})

/** The metric names an expression reads: identifiers followed by `{`, `[` or standing alone, that are not functions, keywords or labels. */
function metricNames(expr: string): string[] {
  const names = new Set<string>()
  // Label matchers and grouping lists hold label names, not metrics: drop them first.
  const stripped = expr
    .replace(/\{[^}]*\}/g, '{}')
    .replace(/\b(by|without)\s*\([^)]*\)/g, '')
    .replace(/"[^"]*"/g, '""')
  for (const [name] of stripped.matchAll(/\b[a-z_][a-z0-9_]*\b/g)) if (/^(lapse|otel)_/.test(name)) names.add(name)
  return [...names]
}

t.test('every metric the rules and the dashboard read is exported by a running Lapse on /metrics', async (t) => {
  const used = new Set([
    ...rules.flatMap((r) => metricNames(r.expr)),
    ...dashboard.panels.flatMap((p) => p.targets.flatMap((x) => metricNames(x.expr))),
  ])
  t.ok(used.size >= 10, `names found: ${[...used].join(', ')}`)

  // One request of each kind the names need: an allow, a denial, a stream cut by a revocation,
  // and an allow failed open while Redis is gone.
  const redis = await startRedis()
  t.teardown(() => redis.stop())
  const upstream = await startUpstream((req, res) => {
    if (req.url?.startsWith('/stream')) {
      res.writeHead(200, { 'content-type': 'text/plain' })
      res.write('first chunk\n')
      return
    }
    res.end('{}')
  })
  t.teardown(() => upstream.close())
  const telemetry = await startTelemetry(
    { OTEL_TRACES_EXPORTER: 'none', OTEL_METRICS_EXPORTER: 'none' },
    { log: pino({ level: 'silent' }), clock: { now: () => Date.now() } },
  )
  t.teardown(() => telemetry.shutdown())
  const lapse = await runApp(t, {
    routes: [
      { path: '/stream/**', scopes: ['orders:read'] },
      { path: '/open/**', scopes: ['orders:read'], on_revocation_unavailable: 'open' },
    ],
    env: { LAPSE_REDIS_URL: redis.url, LAPSE_REVOCATION_TIMEOUT: '200', LAPSE_REDIS_PREFIX: 'alerts' },
    upstream,
    telemetry,
  })
  const store = lapse.running.deps.revocations as unknown as { ready(): boolean; eventsLive(): boolean }
  await waitFor(() => store.ready() && store.eventsLive(), 'revocation set ready')
  const keys = await testKeys()
  t.equal((await send(`${lapse.url}/open/x`, { headers: [bearer(await keys.mint())] })).status, 200)
  t.equal((await send(`${lapse.url}/open/x`)).status, 401)

  const jti = 'stream-to-cut'
  const streamed = send(`${lapse.url}/stream/x`, { headers: [bearer(await keys.mint({ jti }))] }).catch((err: Error) => err)
  await waitFor(() => (lapse.running.deps.connections as unknown as { size: number }).size === 1 || false, 'the stream registered for cuts')
  const revoked = await send(`${lapse.adminUrl}/v1/revocations`, {
    method: 'POST',
    headers: [
      ['authorization', `Bearer ${ADMIN_TOKEN}`],
      ['content-type', 'application/json'],
    ],
    body: JSON.stringify({ claim: 'jti', value: jti, reason: 'alerts test' }),
  })
  t.equal(revoked.status, 201)
  await streamed
  await waitFor(() => decisions(lapse).some((l) => l.cut === 'revoked'), 'the stream was cut')

  await redis.kill()
  t.equal((await send(`${lapse.url}/open/y`, { headers: [bearer(await keys.mint())] })).status, 200, 'failed open')
  await waitFor(() => decisions(lapse).some((l) => l.failed_open === true), 'the failed-open decision')

  const text = (await send(`${lapse.adminUrl}/metrics`)).body
  const exported = new Set([...text.matchAll(/^([a-z_][a-z0-9_]*)[{ ]/gm)].map((m) => m[1]!))
  for (const name of used) {
    // Exported only when Lapse writes its own stdout (`lapse proxy`), not with the logger runApp
    // hands it: test/operations/audit-stdout.test.ts reads this name off a real process's /metrics.
    if (OWN_STDOUT_ONLY.has(name)) continue
    t.ok(exported.has(name), `${name} is exported`)
  }
  t.ok(
    [...OWN_STDOUT_ONLY].every((name) => readFileSync('test/operations/audit-stdout.test.ts', 'utf8').includes(`/^${name}`)),
    'the metrics only a real `lapse proxy` exports are read off one in audit-stdout.test.ts',
  )
})
