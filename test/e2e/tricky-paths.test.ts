// The path a rule matched is the path the upstream receives: tricky request targets are either
// normalized once, for both, or refused with 400 — never matched one way and forwarded another.
import t from 'tap'
import { manualClock } from '../../src/core/clock.js'
import { bearer, runApp, sendAudited } from '../fixtures/app.js'
import { assertDenied, CHALLENGE } from '../fixtures/deny.js'
import { testKeys } from '../fixtures/keys.js'

const T0_MS = Date.parse('2030-01-01T00:00:00Z')
const ROUTES = [
  { path: '/public/**', public: true },
  { path: '/admin/**', scopes: ['admin'] },
]
const start = (t: Parameters<typeof runApp>[0]) => runApp(t, { routes: ROUTES, clock: manualClock(T0_MS) })

t.test('tricky paths that resolve to a public route are forwarded as the path that was matched', async (t) => {
  const cases: Array<[raw: string, forwarded: string]> = [
    ['/admin/../public/x', '/public/x'],
    ['/admin/%2e%2e/public/x', '/public/x'],
    ['//public//x', '/public/x'],
    ['/public/./a/../b/', '/public/b/'],
    ['/%70ublic/x', '/public/x'],
    ['/public/x?q=%2F..&r=1', '/public/x?q=%2F..&r=1'],
  ]
  for (const [raw, forwarded] of cases) {
    const lapse = await start(t)
    const { res, audit } = await sendAudited(lapse, raw)
    t.equal(res.status, 200, `${raw}: public after normalization`)
    t.equal(lapse.upstream.requests[0]?.url, forwarded, `${raw}: forwarded as ${forwarded}`)
    t.equal(audit.route, '/public/**', `${raw}: matched the public rule`)
    t.equal(audit.path, forwarded.split('?')[0], `${raw}: the audited path is the forwarded one`)
    await lapse.close()
  }
})

t.test('tricky paths that resolve to a protected route need its token: no public-prefix bypass', async (t) => {
  for (const raw of [
    '/public/../admin/users',
    '/public/%2e%2e/admin/users',
    '/public/.%2E/admin/users',
    '/%61dmin/users',
    '//admin//users',
  ]) {
    const lapse = await start(t)
    const { res, audit } = await sendAudited(lapse, raw)
    assertDenied(t, lapse, res, audit, { status: 401, challenge: CHALLENGE.bare, error: 'unauthorized', reason: 'missing_token' })
    t.equal(audit.path, '/admin/users', `${raw}: decided on /admin/users`)
    await lapse.close()
  }
})

t.test('with the right token, the protected route is forwarded as the normalized path', async (t) => {
  const token = await (await testKeys()).mint({ scope: 'admin' }, { nowS: T0_MS / 1000 })
  for (const [raw, forwarded] of [
    ['/public/../admin/users', '/admin/users'],
    ['/admin/./a/%2e%2e/b', '/admin/b'],
  ] as const) {
    const lapse = await start(t)
    const { res, audit } = await sendAudited(lapse, raw, { headers: [bearer(token)] })
    t.equal(res.status, 200)
    t.equal(audit.route, '/admin/**')
    t.equal(lapse.upstream.requests[0]?.url, forwarded, `${raw}: forwarded as ${forwarded}`)
    await lapse.close()
  }
})

t.test('paths that cannot be normalized safely → 400 invalid_request even on a public prefix, upstream untouched', async (t) => {
  for (const raw of [
    '/public/%2F..%2Fadmin',
    '/public/..%2Fadmin',
    '/public/..;/admin',
    '/public/%5C..%5Cadmin',
    '/public/%C0%AE%C0%AE/admin',
    '/..',
    '/public/../../admin',
  ]) {
    const lapse = await start(t)
    const { res, audit } = await sendAudited(lapse, raw)
    assertDenied(t, lapse, res, audit, {
      status: 400,
      challenge: CHALLENGE.invalidRequest,
      error: 'invalid_request',
      reason: 'invalid_request',
    })
    await lapse.close()
  }
})

t.test('a raw backslash in the request line never reaches the upstream', async (t) => {
  const lapse = await start(t)
  const { res, audit } = await sendAudited(lapse, '/public/..\\admin')
  assertDenied(t, lapse, res, audit, {
    status: 400,
    challenge: CHALLENGE.invalidRequest,
    error: 'invalid_request',
    reason: 'invalid_request',
  })
})
