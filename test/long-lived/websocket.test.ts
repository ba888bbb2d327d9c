// WebSockets through Lapse: verified at upgrade like a request, cut with close code 1008 when the
// token expires (on the injected clock) or is revoked through the admin API.
import t, { type Test } from 'tap'
import type { ConnectionRegistry } from '../../src/connections/connections.js'
import { manualClock } from '../../src/core/clock.js'
import { ADMIN_TOKEN, decisions, runApp, send, waitFor } from '../fixtures/app.js'
import { testKeys } from '../fixtures/keys.js'
import { closedWithin, openClient, sleep, startLongLivedUpstream } from './upstream.js'

const T0 = Date.parse('2030-01-01T00:00:00Z')
// The registry's timer sleeps at most 250 ms and re-reads the clock when it wakes; a cut is a close
// frame written at once. A manual clock jumps, so a cut comes within 250 ms of the jump: we allow 1 s.
const CUT_BOUND_MS = 1000
// Longer than one timer sleep: a connection still open after this was not cut by that wake.
const QUIET_MS = 400

async function setup(t: Test, env: Record<string, string> = {}) {
  const keys = await testKeys()
  const clock = manualClock(T0)
  const up = await startLongLivedUpstream(t)
  const lapse = await runApp(t, { upstream: up.upstream, clock, env: { LAPSE_CLOCK_SKEW: '0', ...env } })
  const nowS = () => Math.floor(clock.now() / 1000)
  const mint = (claims: Record<string, unknown> = {}) => keys.mint(claims, { nowS: nowS() })
  return { keys, clock, up, lapse, nowS, mint }
}

t.test('a WebSocket is closed with 1008 "token expired" at exp (skew 0), not a millisecond before', async (t) => {
  const { clock, up, lapse, nowS, mint } = await setup(t)
  const exp = nowS() + 60
  const client = await openClient(lapse.url, await mint({ exp }))
  t.equal(await client.echo('hello'), 'hello')

  clock.set(exp * 1000 - 1)
  t.equal(await closedWithin(client, QUIET_MS), 'open', 'still open 1 ms before exp')
  t.equal(await client.echo('still here'), 'still here', 'and still echoing')

  clock.set(exp * 1000)
  const movedAt = Date.now()
  const closed = await closedWithin(client, CUT_BOUND_MS)
  t.not(closed, 'open', `closed within ${CUT_BOUND_MS} ms of the clock reaching exp`)
  if (closed === 'open') return
  t.equal(closed.code, 1008)
  t.equal(closed.reason, 'token expired')
  t.ok(closed.atMs - movedAt <= CUT_BOUND_MS)
  await waitFor(() => up.closes.length === 1, 'the upstream side to close')
  t.same(up.closes[0], { code: 1008, reason: 'token expired' }, 'the upstream got a close frame too')
  const audit = await waitFor(() => decisions(lapse).find((l) => l.cut), 'the audit line of the cut connection')
  t.match(audit, { decision: 'allow', status: 101, cut: 'expired', connection: 'websocket' })
  t.type(audit.lived_ms, 'number')
})

t.test('with a skew, the cut comes at exp + skew', async (t) => {
  const { clock, lapse, nowS, mint } = await setup(t, { LAPSE_CLOCK_SKEW: '30' })
  const exp = nowS() + 10
  const client = await openClient(lapse.url, await mint({ exp }))
  clock.set(exp * 1000)
  t.equal(await closedWithin(client, QUIET_MS), 'open', 'open at exp, inside the skew')
  clock.set((exp + 30) * 1000)
  const closed = await closedWithin(client, CUT_BOUND_MS)
  t.match(closed, { code: 1008, reason: 'token expired' })
})

t.test('revocation through the admin API closes the matching WebSocket; others keep echoing', async (t) => {
  const { lapse, mint } = await setup(t)
  const victim = await openClient(lapse.url, await mint({ sub: 'ws-victim' }))
  const bystander = await openClient(lapse.url, await mint({ sub: 'ws-bystander' }))
  const later = await openClient(lapse.url, await mint({ sub: 'ws-victim', task: 't-1' }), '/orders/other')
  t.equal(await victim.echo('a'), 'a')

  const sentAt = Date.now()
  const res = await send(`${lapse.adminUrl}/v1/revocations`, {
    method: 'POST',
    headers: [
      ['authorization', `Bearer ${ADMIN_TOKEN}`],
      ['content-type', 'application/json'],
    ],
    body: JSON.stringify({ claim: 'sub', value: 'ws-victim', reason: 'test' }),
  })
  t.equal(res.status, 201)
  const closed = await closedWithin(victim, 500)
  t.match(closed, { code: 1008, reason: 'token revoked' }, 'closed within 500 ms of the admin call')
  t.match(await closedWithin(later, 500), { code: 1008 }, 'every connection of that subject')
  if (closed !== 'open') t.ok(closed.atMs - sentAt < 500)

  t.equal(await closedWithin(bystander, QUIET_MS), 'open', 'another subject stays open')
  t.equal(await bystander.echo('b'), 'b', 'and keeps echoing')
  const audit = await waitFor(() => decisions(lapse).find((l) => l.cut === 'revoked'), 'the audit line of the cut connection')
  t.match(audit, { sub: 'ws-victim', connection: 'websocket' })
})

t.test('a revocation of tokens issued before T leaves a connection whose token came later open', async (t) => {
  const { lapse, nowS, mint } = await setup(t)
  const client = await openClient(lapse.url, await mint({ sub: 'renewed' }))
  const res = await send(`${lapse.adminUrl}/v1/revocations`, {
    method: 'POST',
    headers: [
      ['authorization', `Bearer ${ADMIN_TOKEN}`],
      ['content-type', 'application/json'],
    ],
    body: JSON.stringify({ claim: 'sub', value: 'renewed', reason: 'old grant', issued_before: nowS() - 1 }),
  })
  t.equal(res.status, 201)
  t.equal(await closedWithin(client, QUIET_MS), 'open')
  t.equal(await client.echo('c'), 'c')
})

t.test('a WebSocket whose token stays valid stays open and keeps echoing', async (t) => {
  const { clock, lapse, nowS, mint } = await setup(t)
  const exp = nowS() + 300
  const client = await openClient(lapse.url, await mint({ exp }))
  for (let i = 0; i < 5; i++) {
    clock.advance(50_000)
    await sleep(60)
    t.equal(await client.echo(`m${i}`), `m${i}`)
  }
  t.equal(await closedWithin(client, QUIET_MS), 'open')
})

t.test('an upgrade with a bad token gets 401 and the upstream never sees it', async (t) => {
  const { keys, up, lapse, nowS, mint } = await setup(t)
  const cases: Array<[string, string | undefined]> = [
    ['garbage', 'not-a-jwt'],
    ['expired', await mint({ iat: nowS() - 120, exp: nowS() - 60 })],
    ['signed by an unknown key', await keys.mint({}, { nowS: nowS(), pair: { ...keys.pairs.ES256, kid: 'nope' } })],
  ]
  for (const [name, token] of cases) {
    const err = await openClient(lapse.url, token!).then(
      () => undefined,
      (e: { status?: number; headers?: Record<string, string> }) => e,
    )
    t.equal(err?.status, 401, name)
    t.match(err?.headers?.['www-authenticate'], /error="invalid_token"/, name)
  }
  const missing = await openClient(lapse.url, undefined).catch((e: { status?: number }) => e)
  t.equal((missing as { status?: number }).status, 401, 'no token')
  t.equal(up.upstream.calls, 0, 'the upstream saw no upgrade')
})

t.test('an upgrade on a route the token has no scope for gets 403 and the upstream never sees it', async (t) => {
  const { up, lapse, mint } = await setup(t)
  const err = await openClient(lapse.url, await mint({ scope: 'other' })).catch((e: { status?: number }) => e)
  t.equal((err as { status?: number }).status, 403)
  t.equal(up.upstream.calls, 0)
})

t.test('a WebSocket that ends on its own leaves the registry, from either side', async (t) => {
  const { up, lapse, mint } = await setup(t)
  const registry = lapse.running.deps.connections as ConnectionRegistry
  const byClient = await openClient(lapse.url, await mint())
  const byUpstream = await openClient(lapse.url, await mint())
  t.equal(registry.size, 2)
  byClient.ws.close(1000, 'bye')
  t.match(await closedWithin(byClient, 1000), { code: 1000 })
  await waitFor(() => registry.size === 1, 'the client-closed connection to leave')
  for (const ws of up.wss.clients) ws.close(1001, 'going away')
  t.match(await closedWithin(byUpstream, 1000), { code: 1001, reason: 'going away' }, 'relayed as is')
  await waitFor(() => registry.size === 0, 'the upstream-closed connection to leave')
  t.notOk(
    decisions(lapse).some((l) => l.cut),
    'no cut in the audit lines',
  )
})
