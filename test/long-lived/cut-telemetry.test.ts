// A cut connection says why and after how long on its lapse.authorize span, and its audit line
// is written even when allows are not logged.
import t from 'tap'
import { manualClock } from '../../src/core/clock.js'
import { decisions, runApp, waitFor } from '../fixtures/app.js'
import { testKeys } from '../fixtures/keys.js'
import { inMemoryTelemetry } from '../telemetry/in-memory.js'
import { closedWithin, openClient, startLongLivedUpstream } from './upstream.js'

t.test('expired WebSocket → span carries lapse.connection.cut=expired; audit line kept with LAPSE_LOG_ALLOWS=none', async (t) => {
  const keys = await testKeys()
  const clock = manualClock(Date.parse('2030-01-01T00:00:00Z'))
  const mem = inMemoryTelemetry(t)
  const up = await startLongLivedUpstream(t)
  const lapse = await runApp(t, {
    upstream: up.upstream,
    clock,
    telemetry: mem.telemetry,
    env: { LAPSE_CLOCK_SKEW: '0', LAPSE_LOG_ALLOWS: 'none' },
  })
  const nowS = Math.floor(clock.now() / 1000)
  const client = await openClient(lapse.url, await keys.mint({ exp: nowS + 60 }, { nowS }))
  t.equal(await client.echo('hi'), 'hi')
  clock.set((nowS + 60) * 1000)
  t.match(await closedWithin(client, 1000), { code: 1008 })

  const span = await waitFor(
    () => mem.spans().find((s) => s.name === 'lapse.authorize' && s.attributes['lapse.connection.cut']),
    'the span of the cut connection',
  )
  t.equal(span.attributes['lapse.connection.cut'], 'expired')
  t.equal(span.attributes['lapse.connection.kind'], 'websocket')
  t.type(span.attributes['lapse.connection.lived_ms'], 'number')
  const audit = await waitFor(() => decisions(lapse).find((l) => l.cut), 'the audit line of the cut connection')
  t.match(audit, { decision: 'allow', cut: 'expired', connection: 'websocket' })
  t.equal(decisions(lapse).filter((l) => !l.cut && l.decision === 'allow').length, 0, 'ordinary allows stay unlogged')
})
