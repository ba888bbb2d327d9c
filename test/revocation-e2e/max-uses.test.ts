// max_uses through two real sidecars sharing one redis-server, and a recording upstream: the
// second use anywhere is refused, concurrent first uses let exactly N through, and a counter
// that cannot answer fails closed (or open where the rule says so).
import t, { type Test } from 'tap'
import { bearer, decisions, runApp, send, sendAudited, type Lapse } from '../fixtures/app.js'
import { assertDenied, CHALLENGE } from '../fixtures/deny.js'
import { testKeys } from '../fixtures/keys.js'
import { startUpstream } from '../fixtures/upstream.js'
import { startRedis, waitFor, type RedisServer } from '../fixtures/redis-server.js'

const ROUTES = [
  { path: '/migrations/run', methods: ['POST'], scopes: ['db:write'], max_uses: 1 },
  { path: '/jobs/{job}', methods: ['POST'], scopes: ['db:write'], max_uses: 3, claims: { job: '{job}' } },
  { path: '/open/**', scopes: ['db:write'], max_uses: 1, on_revocation_unavailable: 'open' },
  { path: '/ov/**', methods: ['GET'], scopes: ['db:write'] },
  { path: '/ov/**', methods: ['DELETE'], scopes: ['db:write'], max_uses: 1 },
]
const mint = async (claims: Record<string, unknown> = {}) => (await testKeys()).mint({ scope: 'db:write', ...claims })

let prefixes = 0
async function twoSidecars(t: Test, redis: RedisServer): Promise<[Lapse, Lapse]> {
  const upstream = await startUpstream()
  t.teardown(() => upstream.close())
  const env = { LAPSE_REDIS_URL: redis.url, LAPSE_REDIS_PREFIX: `mu${++prefixes}`, LAPSE_REVOCATION_TIMEOUT: '200' }
  const a = await runApp(t, { routes: ROUTES, env, upstream })
  const b = await runApp(t, { routes: ROUTES, env, upstream })
  for (const lapse of [a, b])
    await waitFor(() => lapse.running.deps.revocations.ready() && lapse.running.deps.uses.ready(), 5000, 'sidecar ready')
  return [a, b]
}

const redis = await startRedis()
t.teardown(() => redis.stop())

t.test('max_uses: 1 across two sidecars: the second use anywhere is 401 token_reused', async (t) => {
  const [a, b] = await twoSidecars(t, redis)
  const token = await mint()
  const first = await sendAudited(a, '/migrations/run', { method: 'POST', headers: [bearer(token)] })
  t.equal(first.res.status, 200)
  t.equal(first.audit.use, 1)
  t.equal(first.audit.max_uses, 1)
  const again = await sendAudited(b, '/migrations/run', { method: 'POST', headers: [bearer(token)] })
  assertDenied(t, b, again.res, again.audit, {
    status: 401,
    challenge: CHALLENGE.invalidToken,
    error: 'invalid_token',
    reason: 'token_reused',
    upstreamCalls: 1,
    token,
  })
  t.equal(again.audit.use, 2)
  t.equal(again.audit.max_uses, 1)
  const onA = await sendAudited(a, '/migrations/run', { method: 'POST', headers: [bearer(token)] })
  t.equal(onA.res.status, 401, 'and on the first sidecar too')
  t.equal(onA.audit.reason, 'token_reused')
  t.equal(a.upstream.calls, 1, 'the upstream saw exactly one use')
  // Another token of the same holder has its own uses.
  t.equal((await send(`${b.url}/migrations/run`, { method: 'POST', headers: [bearer(await mint())] })).status, 200)
})

t.test('only allowed decisions spend a use', async (t) => {
  const [a, b] = await twoSidecars(t, redis)
  const token = await mint({ job: 'j1' })
  // Refused by its claim binding (another job): no use spent.
  for (let i = 0; i < 5; i++) t.equal((await send(`${a.url}/jobs/j2`, { method: 'POST', headers: [bearer(token)] })).status, 403)
  const statuses: number[] = []
  for (let i = 0; i < 4; i++)
    statuses.push((await send(`${i % 2 ? a.url : b.url}/jobs/j1`, { method: 'POST', headers: [bearer(token)] })).status)
  t.same(statuses, [200, 200, 200, 401])
  t.same(
    decisions(a)
      .concat(decisions(b))
      .filter((l) => l.decision === 'allow')
      .map((l) => l.use)
      .sort(),
    [1, 2, 3],
  )
})

t.test('concurrent first uses across two sidecars let exactly N through', async (t) => {
  const [a, b] = await twoSidecars(t, redis)
  const token = await mint({ job: 'burst' })
  const results = await Promise.all(
    Array.from({ length: 40 }, (_, i) => send(`${i % 2 ? a.url : b.url}/jobs/burst`, { method: 'POST', headers: [bearer(token)] })),
  )
  t.equal(results.filter((r) => r.status === 200).length, 3, 'exactly max_uses allowed')
  t.equal(results.filter((r) => r.status === 401).length, 37)
  t.equal(a.upstream.calls, 3, 'the upstream saw exactly three')
})

t.test('counter unreachable: 503 revocation_unavailable, or open (uncounted, recorded as failed_open)', async (t) => {
  const own = await startRedis()
  t.teardown(() => own.stop())
  const [a] = await twoSidecars(t, own)
  t.equal((await send(`${a.adminUrl}/readyz`)).status, 200)
  await own.kill()
  await waitFor(
    async () => (await send(`${a.adminUrl}/readyz`)).json().use_counter === 'unreachable',
    5000,
    '/readyz names the use counter',
  )
  const token = await mint()
  const closed = await sendAudited(a, '/migrations/run', { method: 'POST', headers: [bearer(token)] })
  assertDenied(t, a, closed.res, closed.audit, {
    status: 503,
    challenge: undefined,
    error: 'temporarily_unavailable',
    reason: 'revocation_unavailable',
    token,
  })
  const open = await sendAudited(a, '/open/x', { headers: [bearer(token)] })
  t.equal(open.res.status, 200, 'open where the rule says so')
  t.equal(open.audit.failed_open, true)
  t.equal(open.audit.use, undefined, 'no use was counted')
  t.equal(a.upstream.calls, 1)
  // Back: counting resumes without a restart, and nothing was spent while it was down.
  await own.restart()
  await waitFor(() => a.running.deps.revocations.ready() && a.running.deps.uses.ready(), 10_000, 'reconnected')
  const back = await sendAudited(a, '/migrations/run', { method: 'POST', headers: [bearer(token)] })
  t.equal(back.res.status, 200)
  t.equal(back.audit.use, 1)
})

t.test("a method override spends a use under the named method's rule too", async (t) => {
  const [a, b] = await twoSidecars(t, redis)
  const token = await mint()
  const override: [string, string] = ['x-http-method-override', 'DELETE']
  const first = await sendAudited(a, '/ov/x', { headers: [bearer(token), override] })
  t.equal(first.res.status, 200)
  t.equal(first.audit.use, 1)
  const again = await sendAudited(b, '/ov/x', { headers: [bearer(token), override] })
  t.equal(again.res.status, 401)
  t.equal(again.audit.reason, 'token_reused')
  t.equal((await send(`${b.url}/ov/x`, { headers: [bearer(token)] })).status, 200, 'the plain GET has no limit')
  t.equal(a.upstream.calls, 2)
})
