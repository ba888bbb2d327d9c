import t from 'tap'
import { bearer, decisions, runApp, send } from '../fixtures/app.js'
import { testKeys } from '../fixtures/keys.js'

t.test('valid token on a covered route → upstream answers, identity headers added', async (t) => {
  const keys = await testKeys()
  const lapse = await runApp(t)
  const token = await keys.mint({ sub: 'ci-deployer', scope: 'orders:read' })
  const res = await send(`${lapse.url}/orders/42`, { headers: [bearer(token)] })
  t.equal(res.status, 200)
  t.equal(lapse.upstream.calls, 1)
  t.equal(lapse.upstream.requests[0]!.headers['x-auth-subject'], 'ci-deployer')
  await new Promise((r) => setTimeout(r, 20))
  t.equal(decisions(lapse).at(-1)?.reason, 'ok')
})
