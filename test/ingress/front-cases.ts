// The cases every real front proxy runs (test/ingress/nginx.test.ts, caddy.test.ts): the answers
// Lapse gives in proxy mode, through the front proxy, and nothing refused ever reaching the upstream.
//
//   frontProxyCases(t, { name: 'nginx', protocol: 'nginx', start: startNginx, downStatus: 503 })
import type { Test } from 'tap'
import { ADMIN_TOKEN, bearer, decisions, send, waitFor, type Lapse, type Sent } from '../fixtures/app.js'
import { assertDenied, CHALLENGE } from '../fixtures/deny.js'
import { defaultClaims, testKeys } from '../fixtures/keys.js'
import { PATH_ATTACKS } from '../fixtures/path-attacks.js'
import { rawHttp, T0_S } from '../hardening/helpers.js'
import { startDecisionService, type Front } from './front-proxies.js'

export interface FrontCase {
  readonly name: string
  /** The decision API the front proxy speaks, as the audit line names it. */
  readonly protocol: 'nginx' | 'forward'
  readonly start: (t: Test, lapse: Lapse) => Promise<Front>
  /** The front proxy's own answer when it cannot reach Lapse. */
  readonly downStatus: number
  /** Targets this front proxy treats specially: each must stay away from the upstream like PATH_ATTACKS. */
  readonly extraAttacks?: ReadonlyArray<[string, string]>
}

// test/e2e/tricky-paths.test.ts's lists: paths that resolve to /public, to /admin, and that are refused.
const TRICKY_PATHS = [
  '/admin/../public/x',
  '/admin/%2e%2e/public/x',
  '//public//x',
  '/public/./a/../b/',
  '/%70ublic/x',
  '/public/x?q=%2F..&r=1',
  '/public/../admin/users',
  '/public/%2e%2e/admin/users',
  '/public/.%2E/admin/users',
  '/%61dmin/users',
  '//admin//users',
  '/public/%2F..%2Fadmin',
  '/public/..%2Fadmin',
  '/public/..;/admin',
  '/public/%5C..%5Cadmin',
  '/public/%C0%AE%C0%AE/admin',
  '/..',
  '/public/../../admin',
  '/public/..\\admin',
  '/admin/.%2e/public/x',
  '/admin/./../public/x',
  '//admin/x',
]

/**
 * Whether an upstream that reads paths leniently could take `url` for one under /admin: decoded
 * (twice), backslashes as slashes, case folded; under /admin, or holding a segment that resolves
 * elsewhere (an upstream that does not resolve it matches the raw prefix), or `//` (read as a host).
 */
function readableAsAdmin(url: string): boolean {
  let path = url.split('?')[0]!
  for (let i = 0; i < 2; i++) path = path.replace(/%([0-9a-f]{2})/gi, (_, h: string) => String.fromCharCode(parseInt(h, 16)))
  path = path.replace(/\\/g, '/').toLowerCase()
  return /^\/+admin(\/|$|;)/.test(path) || /\/\.\.?(\/|$)/.test(path) || path.startsWith('//')
}

const mint = async (over: Record<string, unknown> = {}) => (await testKeys()).mint({ ...defaultClaims(T0_S), ...over }, { nowS: T0_S })

/** One request through the front proxy, and the decision line Lapse wrote for it. */
async function through(
  lapse: Lapse,
  front: Front,
  path: string,
  headers: Array<[string, string]> = [],
): Promise<{ res: Sent; audit: Record<string, unknown> }> {
  const before = decisions(lapse).length
  const res = await send(`${front.url}${path}`, { headers })
  await waitFor(() => decisions(lapse).length > before, 'the decision line')
  return { res, audit: decisions(lapse).at(-1)! }
}

export function frontProxyCases(t: Test, c: FrontCase): void {
  t.test(`${c.name}: a valid token reaches the upstream with Lapse's X-Auth-* headers, the client's own replaced`, async (t) => {
    const lapse = await startDecisionService(t)
    const front = await c.start(t, lapse)
    const claims: Record<string, unknown> = { ...defaultClaims(T0_S), client_id: 'ci' }
    const token = await mint(claims)
    const spoofed: Array<[string, string]> = [
      ['x-auth-subject', 'mallory'],
      ['x-auth-scopes', 'admin'],
      ['x-auth-token-id', 'forged'],
    ]
    const { res, audit } = await through(lapse, front, '/orders/1?x=1', [bearer(token), ...spoofed])
    t.equal(res.status, 200)
    t.equal(lapse.upstream.calls, 1)
    const got = lapse.upstream.requests[0]!
    t.equal(got.url, '/orders/1?x=1', 'the upstream got the path Lapse decided on')
    t.equal(got.headers['x-auth-subject'], 'ci-deployer')
    t.equal(got.headers['x-auth-client-id'], 'ci')
    t.equal(got.headers['x-auth-token-id'], claims.jti)
    t.equal(got.headers['x-auth-scopes'], 'orders:read')
    t.equal(got.headers['x-auth-expires-at'], String(claims.exp))
    t.equal(got.headers['x-lapse-decision-token'], undefined, 'the decision token stays between the front proxy and Lapse')
    t.match(audit, {
      decision: 'allow',
      reason: 'ok',
      method: 'GET',
      path: '/orders/1',
      route: '/orders/**',
      status: 200,
      decision_api: c.protocol,
    })

    // A public route: no identity, and the client's copies never reach the upstream.
    const open = await through(lapse, front, '/public/x', spoofed)
    t.equal(open.res.status, 200)
    const pub = lapse.upstream.requests[1]!
    for (const [name] of spoofed) t.notOk(pub.headers[name], `${name}: not the client's on a public route`)
  })

  t.test(`${c.name}: missing, expired and revoked tokens and a short scope get Lapse's status, WWW-Authenticate and body`, async (t) => {
    const lapse = await startDecisionService(t)
    const front = await c.start(t, lapse)
    const missing = await through(lapse, front, '/orders/1')
    assertDenied(t, lapse, missing.res, missing.audit, {
      status: 401,
      challenge: CHALLENGE.bare,
      error: 'unauthorized',
      reason: 'missing_token',
    })

    const expired = await mint({ iat: T0_S - 400, exp: T0_S - 100 })
    const e = await through(lapse, front, '/orders/1', [bearer(expired)])
    assertDenied(t, lapse, e.res, e.audit, {
      status: 401,
      challenge: CHALLENGE.invalidToken,
      error: 'invalid_token',
      reason: 'expired',
      token: expired,
    })

    const short = await mint({ scope: 'orders:read' })
    const s = await through(lapse, front, '/admin/users', [bearer(short)])
    assertDenied(t, lapse, s.res, s.audit, {
      status: 403,
      challenge: CHALLENGE.insufficientScope('admin'),
      error: 'insufficient_scope',
      reason: 'insufficient_scope',
      token: short,
    })

    const jti = 'revoked-through-the-front'
    const revoked = await mint({ jti })
    const before = await through(lapse, front, '/orders/1', [bearer(revoked)])
    t.equal(before.res.status, 200, 'allowed before the revocation')
    const write = await send(`${lapse.adminUrl}/v1/revocations`, {
      method: 'POST',
      headers: [
        ['authorization', `Bearer ${ADMIN_TOKEN}`],
        ['content-type', 'application/json'],
      ],
      body: JSON.stringify({ claim: 'jti', value: jti, reason: 'test' }),
    })
    t.equal(write.status, 201)
    const r = await through(lapse, front, '/orders/1', [bearer(revoked)])
    assertDenied(t, lapse, r.res, r.audit, {
      status: 401,
      challenge: CHALLENGE.invalidToken,
      error: 'invalid_token',
      reason: 'revoked',
      upstreamCalls: 1,
      token: revoked,
    })
  })

  t.test(`${c.name}: a revocation set that cannot answer is a 503 with Retry-After, through the front proxy too`, async (t) => {
    const closed = await import('./front-proxies.js').then((m) => m.freePort())
    const lapse = await startDecisionService(t, { LAPSE_REDIS_URL: `redis://127.0.0.1:${closed}`, LAPSE_REVOCATION_TIMEOUT: '50' })
    const front = await c.start(t, lapse)
    const token = await mint()
    const { res, audit } = await through(lapse, front, '/orders/1', [bearer(token)])
    assertDenied(t, lapse, res, audit, {
      status: 503,
      challenge: undefined,
      error: 'temporarily_unavailable',
      reason: 'revocation_unavailable',
      token,
    })
  })

  t.test(`${c.name}: the path-bypass list never reaches the upstream, with no token or a non-admin one`, async (t) => {
    const lapse = await startDecisionService(t)
    const front = await c.start(t, lapse)
    const notAdmin = await mint({ scope: 'orders:read' })
    const attacks: Array<[string, string]> = [
      ...PATH_ATTACKS.map(([a, target]) => [a, target] as [string, string]),
      ...(c.extraAttacks ?? []),
    ]
    for (const [attack, target] of attacks) {
      for (const auth of [[], [`Authorization: Bearer ${notAdmin}`]]) {
        const res = await rawHttp(
          front.url,
          `GET ${target} HTTP/1.1\r\nHost: lapse.test\r\n${auth.map((h) => `${h}\r\n`).join('')}Connection: close\r\n\r\n`,
        )
        t.ok(
          res.status >= 400 || res.status === 0,
          `${attack} (${target}${auth.length ? ', non-admin token' : ''}): refused (${res.status})`,
        )
      }
      t.equal(lapse.upstream.calls, 0, `${attack}: the upstream received nothing`)
    }
  })

  t.test(
    `${c.name}: a path override header (X-Original-URL, X-Rewrite-URL, X-Forwarded-Prefix) on an allowed path is refused, upstream untouched`,
    async (t) => {
      const lapse = await startDecisionService(t)
      const front = await c.start(t, lapse)
      for (const name of ['X-Original-URL', 'X-Rewrite-URL', 'X-Forwarded-Prefix']) {
        const { res, audit } = await through(lapse, front, '/public/x', [[name, '/admin']])
        assertDenied(t, lapse, res, audit, {
          status: 400,
          challenge: CHALLENGE.invalidRequest,
          error: 'invalid_request',
          reason: 'invalid_request',
        })
      }
    },
  )

  t.test(`${c.name}: a client's own X-Original-* and X-Forwarded-* headers do not change what is decided`, async (t) => {
    const lapse = await startDecisionService(t)
    const front = await c.start(t, lapse)
    const spoofed: Array<[string, string]> = [
      ['x-original-uri', '/public/x'],
      ['x-original-method', 'GET'],
      ['x-forwarded-uri', '/public/x'],
      ['x-forwarded-method', 'GET'],
      ['x-forwarded-host', 'lapse.test'],
      ['x-forwarded-proto', 'https'],
    ]
    const { res, audit } = await through(lapse, front, '/admin/users', spoofed)
    assertDenied(t, lapse, res, audit, { status: 401, challenge: CHALLENGE.bare, error: 'unauthorized', reason: 'missing_token' })
    t.equal(audit.path, '/admin/users', 'decided on the path the front proxy forwards')
  })

  t.test(`${c.name}: the tricky-paths lists never bring the upstream a path it could read as /admin`, async (t) => {
    const lapse = await startDecisionService(t)
    const front = await c.start(t, lapse)
    const notAdmin = await mint({ scope: 'orders:read' })
    for (const target of TRICKY_PATHS) {
      for (const auth of [[], [`Authorization: Bearer ${notAdmin}`]]) {
        const res = await rawHttp(
          front.url,
          `GET ${target} HTTP/1.1\r\nHost: lapse.test\r\n${auth.map((h) => `${h}\r\n`).join('')}Connection: close\r\n\r\n`,
        )
        const reached = lapse.upstream.requests.at(-1)
        t.ok(
          res.status !== 200 || (reached !== undefined && !readableAsAdmin(reached.url)),
          `${target}: ${res.status}${res.status === 200 ? `, upstream got ${reached?.url}` : ''}`,
        )
      }
    }
    for (const r of lapse.upstream.requests)
      t.notOk(readableAsAdmin(r.url), `the upstream got ${r.url}: not a path a lenient upstream reads as /admin`)
  })

  t.test(`${c.name}: Lapse down means refused (fail closed)`, async (t) => {
    const lapse = await startDecisionService(t)
    const front = await c.start(t, lapse)
    const token = await mint()
    t.equal((await send(`${front.url}/orders/1`, { headers: [bearer(token)] })).status, 200, 'allowed while Lapse runs')
    await lapse.close()
    for (const path of ['/orders/1', '/public/x']) {
      const res = await send(`${front.url}${path}`, { headers: [bearer(token)] })
      t.equal(res.status, c.downStatus, `${path}: ${c.downStatus}`)
    }
    t.equal(lapse.upstream.calls, 1, 'nothing reached the upstream once Lapse was down')
  })
}
