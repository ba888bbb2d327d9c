// The decision listener, spoken to directly: each protocol's requests as the front proxies'
// documentation describes them (Envoy's ext_authz HTTP service is not packaged here, so its
// requests are built by hand: the original method, the configured path_prefix followed by the
// original path, the original Host and Authorization, Content-Length 0). Its answers are the
// proxy's for the same request, from the same pipeline, with the same audit line.
import { spawnSync } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import t from 'tap'
import { manualClock } from '../../src/core/clock.js'
import { bearer, decisions, runApp, send, waitFor, type Lapse, type Sent } from '../fixtures/app.js'
import { startChildProxy } from '../fixtures/child-proxy.js'
import { makePki } from '../fixtures/certs.js'
import { assertDenied, CHALLENGE } from '../fixtures/deny.js'
import { defaultClaims, testKeys } from '../fixtures/keys.js'
import { freePort } from '../fixtures/redis-server.js'
import { GUARDED_ROUTES, rawHttp, T0_MS, T0_S } from '../hardening/helpers.js'

const TOKEN_HEADER = 'x-lapse-decision-token'
const SECRET = 'decision-secret-0123456789'
const mint = async (over: Record<string, unknown> = {}) => (await testKeys()).mint({ ...defaultClaims(T0_S), ...over }, { nowS: T0_S })

/** Lapse as proxy and decision service at once (unless env says otherwise). */
const start = (t: Parameters<typeof runApp>[0], env: Record<string, string | undefined> = {}) =>
  runApp(t, {
    routes: GUARDED_ROUTES,
    clock: manualClock(T0_MS),
    env: { LAPSE_DECISION_LISTEN: '127.0.0.1:0', LAPSE_DECISION_TOKEN: SECRET, ...env },
  })

/** One decision request and the audit line it produced. */
async function ask(
  lapse: Lapse,
  path: string,
  headers: Array<[string, string]>,
  method = 'GET',
): Promise<{ res: Sent; audit: Record<string, unknown> }> {
  const before = decisions(lapse).length
  const res = await send(`${lapse.decisionUrl}${path}`, { method, headers })
  await waitFor(() => decisions(lapse).length > before, 'the decision line')
  return { res, audit: decisions(lapse).at(-1)! }
}

const secret: [string, string] = [TOKEN_HEADER, SECRET]
const nginxHeaders = (method: string, uri: string): Array<[string, string]> => [
  secret,
  ['x-original-method', method],
  ['x-original-uri', uri],
]
const forwardHeaders = (method: string, uri: string, host = 'api.test'): Array<[string, string]> => [
  secret,
  ['x-forwarded-method', method],
  ['x-forwarded-uri', uri],
  ['x-forwarded-host', host],
  ['x-forwarded-proto', 'https'],
]

t.test('Envoy ext_authz: an allowed request is 200 with the identity headers, no body, and the upstream untouched', async (t) => {
  const lapse = await start(t)
  const claims: Record<string, unknown> = { ...defaultClaims(T0_S), client_id: 'ci' }
  const token = await mint(claims)
  // As Envoy sends it: original method, prefix + original path and query, allowed headers, Content-Length 0.
  const { res, audit } = await ask(
    lapse,
    '/v1/decide/envoy/orders/7?page=2',
    [secret, bearer(token), ['content-length', '0'], ['x-auth-subject', 'mallory'], ['x-auth-scopes', 'admin']],
    'POST',
  )
  t.equal(res.status, 200)
  t.match(audit, { decision: 'allow', method: 'POST', path: '/orders/7', decision_api: 'envoy' }, 'decided as the original POST')
  const get = await ask(lapse, '/v1/decide/envoy/orders/7?page=2', [
    secret,
    bearer(token),
    ['x-auth-subject', 'mallory'],
    ['x-auth-scopes', 'admin'],
    ['x-auth-token-id', 'forged'],
  ])
  t.equal(get.res.status, 200)
  t.equal(get.res.body, '', 'never a body')
  t.equal(get.res.headers['x-auth-subject'], 'ci-deployer', "the token's subject, not the client's header")
  t.equal(get.res.headers['x-auth-client-id'], 'ci')
  t.equal(get.res.headers['x-auth-token-id'], claims.jti)
  t.equal(get.res.headers['x-auth-scopes'], 'orders:read')
  t.equal(get.res.headers['x-auth-expires-at'], String(claims.exp))
  t.equal(get.res.headers['cache-control'], 'no-store')
  t.match(get.audit, {
    decision: 'allow',
    reason: 'ok',
    method: 'GET',
    path: '/orders/7',
    route: '/orders/**',
    status: 200,
    decision_api: 'envoy',
  })
  t.equal(lapse.upstream.calls, 0, 'a decision never reaches the upstream')
})

t.test('Envoy ext_authz: a public route carries every identity header, empty', async (t) => {
  const lapse = await start(t)
  const { res, audit } = await ask(lapse, '/v1/decide/envoy/public/x', [
    secret,
    ['x-auth-subject', 'mallory'],
    ['x-auth-client-id', 'mallory'],
  ])
  t.equal(res.status, 200)
  for (const name of ['x-auth-subject', 'x-auth-client-id', 'x-auth-token-id', 'x-auth-scopes', 'x-auth-expires-at']) {
    t.equal(res.headers[name], '', `${name}: present and empty, so a front proxy that copies it replaces the client's`)
  }
  t.match(audit, { decision: 'allow', route: '/public/**' })
})

t.test('Envoy ext_authz with XFCC: certificate-bound tokens and peers rules are decided on the certificate Envoy names', async (t) => {
  const pki = makePki()
  const deployer = pki.client('spiffe://prod.example/ns/ci/sa/deployer', 'deployer')
  const other = pki.client('spiffe://prod.example/ns/web/sa/frontend', 'other')
  const lapse = await runApp(t, {
    routes: [
      { path: '/deploy/**', scopes: ['orders:read'], peers: ['spiffe://prod.example/ns/ci/sa/deployer'] },
      { path: '/orders/**', scopes: ['orders:read'] },
    ],
    clock: manualClock(T0_MS),
    env: { LAPSE_DECISION_LISTEN: '127.0.0.1:0', LAPSE_DECISION_TOKEN: SECRET, LAPSE_CLIENT_CERT_HEADER: 'x-forwarded-client-cert' },
  })
  // As Envoy's SANITIZE_SET with cert and uri writes it for the connection's verified certificate.
  const xfcc = (c: typeof deployer, uri: string) =>
    ['x-forwarded-client-cert', `Hash=${c.hexHash};Cert="${encodeURIComponent(c.cert.toString('utf8'))}";URI=${uri}`] as [string, string]
  const bound = await mint({ cnf: { 'x5t#S256': deployer.thumbprint } })
  const plain = await mint()
  const allowed = await ask(lapse, '/v1/decide/envoy/orders/1', [
    secret,
    bearer(bound),
    xfcc(deployer, 'spiffe://prod.example/ns/ci/sa/deployer'),
  ])
  t.equal(allowed.res.status, 200)
  t.match(allowed.audit, { decision: 'allow', binding: 'mtls', key_thumbprint: deployer.thumbprint, decision_api: 'envoy' })
  const wrong = await ask(lapse, '/v1/decide/envoy/orders/1', [
    secret,
    bearer(bound),
    xfcc(other, 'spiffe://prod.example/ns/web/sa/frontend'),
  ])
  t.equal(wrong.res.status, 401)
  t.equal(wrong.audit.reason, 'mtls_key_mismatch')
  const none = await ask(lapse, '/v1/decide/envoy/orders/1', [secret, bearer(bound)])
  t.equal(none.res.status, 401, 'no XFCC (Envoy removes it without a client certificate): no certificate')
  t.equal(none.audit.reason, 'mtls_key_mismatch')
  const peer = await ask(lapse, '/v1/decide/envoy/deploy/1', [
    secret,
    bearer(plain),
    xfcc(deployer, 'spiffe://prod.example/ns/ci/sa/deployer'),
  ])
  t.equal(peer.res.status, 200, 'the named workload')
  const notPeer = await ask(lapse, '/v1/decide/envoy/deploy/1', [
    secret,
    bearer(plain),
    xfcc(other, 'spiffe://prod.example/ns/web/sa/frontend'),
  ])
  t.equal(notPeer.res.status, 403)
  t.equal(notPeer.audit.reason, 'peer_not_allowed')
  t.equal(lapse.upstream.calls, 0)
})

t.test("a refusal is the proxy's answer for the same request: status, WWW-Authenticate, JSON body, reason", async (t) => {
  const lapse = await start(t)
  const expired = await mint({ iat: T0_S - 400, exp: T0_S - 100 })
  const short = await mint({ scope: 'orders:read' })
  const cases: Array<[string, string, Array<[string, string]>, string]> = [
    ['no token', '/orders/1', [], 'missing_token'],
    ['expired', '/orders/1', [bearer(expired)], 'expired'],
    ['short scope', '/admin/users', [bearer(short)], 'insufficient_scope'],
    ['no rule', '/nowhere', [bearer(short)], 'no_route'],
    ['an encoded slash', '/public/..%2Fadmin', [], 'invalid_request'],
    ['two Authorization headers', '/orders/1', [bearer(short), bearer(short)], 'invalid_request'],
  ]
  for (const [name, path, headers, reason] of cases) {
    const proxied = await send(`${lapse.url}${path}`, { headers })
    for (const [protocol, decisionPath, extra] of [
      ['nginx', '/v1/decide/nginx', nginxHeaders('GET', path)],
      ['forward', '/v1/decide/forward', forwardHeaders('GET', path)],
      ['envoy', `/v1/decide/envoy${path}`, [secret]],
    ] as const) {
      const { res, audit } = await ask(lapse, decisionPath, [...extra, ...headers])
      t.equal(res.status, proxied.status, `${name} (${protocol}): status`)
      t.equal(res.headers['www-authenticate'], proxied.headers['www-authenticate'], `${name} (${protocol}): WWW-Authenticate`)
      t.equal(res.body, proxied.body, `${name} (${protocol}): JSON body`)
      t.equal(res.headers['content-type'], 'application/json')
      t.equal(audit.reason, reason, `${name} (${protocol}): reason`)
      t.equal(audit.decision_api, protocol)
      if (protocol === 'nginx')
        t.equal(res.headers['x-lapse-answer'], proxied.body, 'nginx: the body again in X-Lapse-Answer, which auth_request keeps')
      else t.equal(res.headers['x-lapse-answer'], undefined)
    }
  }
  t.equal(lapse.upstream.calls, 0, 'no refusal reached the upstream')
})

t.test('a target a front proxy forwards as sent is refused when Lapse would have to resolve it', async (t) => {
  const lapse = await start(t)
  for (const path of ['/admin/../public/x', '/admin/%2e%2e/public/x', '/public/./x', '//admin/x', '/public//x']) {
    const { res, audit } = await ask(lapse, `/v1/decide/envoy${path}`, [secret])
    assertDenied(t, lapse, res, audit, {
      status: 400,
      challenge: CHALLENGE.invalidRequest,
      error: 'invalid_request',
      reason: 'invalid_request',
    })
    const n = await ask(lapse, '/v1/decide/nginx', nginxHeaders('GET', path))
    t.equal(n.res.status, 400, `${path} (nginx): 400`)
  }
  const trailing = await ask(lapse, '/v1/decide/envoy/public/x/', [secret])
  t.equal(trailing.res.status, 200, 'a trailing slash is not a segment to resolve')
})

t.test('a revocation set that cannot answer: 503 with Retry-After, as in proxy mode', async (t) => {
  const lapse = await start(t, { LAPSE_REDIS_URL: `redis://127.0.0.1:${await freePort()}`, LAPSE_REVOCATION_TIMEOUT: '50' })
  const token = await mint()
  for (const [path, headers] of [
    ['/v1/decide/envoy/orders/1', [secret, bearer(token)]],
    ['/v1/decide/nginx', [...nginxHeaders('GET', '/orders/1'), bearer(token)]],
  ] as const) {
    const { res, audit } = await ask(lapse, path, [...headers])
    assertDenied(t, lapse, res, audit, {
      status: 503,
      challenge: undefined,
      error: 'temporarily_unavailable',
      reason: 'revocation_unavailable',
      token,
    })
  }
})

t.test('the decision token: missing, wrong or sent twice → 403 decision_token_invalid, nothing decided', async (t) => {
  const lapse = await start(t)
  const token = await mint()
  for (const [name, headers] of [
    ['missing', []],
    ['wrong', [[TOKEN_HEADER, 'decision-secret-0123456780']]],
    ['a prefix of it', [[TOKEN_HEADER, SECRET.slice(0, -1)]]],
    ['sent twice', [secret, secret]],
  ] as Array<[string, Array<[string, string]>]>) {
    const { res, audit } = await ask(lapse, '/v1/decide/envoy/orders/1', [...headers, bearer(token)])
    t.equal(res.status, 403, `${name}: 403`)
    t.equal(res.json().error, 'forbidden')
    t.equal(res.headers['x-auth-subject'], undefined, `${name}: no identity`)
    t.equal(audit.answer, 'decision_token_invalid', `${name}: audited`)
  }
  const open = await start(t, { LAPSE_DECISION_TOKEN: undefined })
  t.equal(
    (await ask(open, '/v1/decide/envoy/orders/1', [bearer(token)])).res.status,
    200,
    'without LAPSE_DECISION_TOKEN, none is asked for',
  )
})

t.test("requests that are not decisions: 404 off the decision paths, 400 without the protocol's headers", async (t) => {
  const lapse = await start(t)
  const token = await mint()
  const off = await ask(lapse, '/orders/1', [secret, bearer(token)])
  t.equal(off.res.status, 404, 'a request for the protected path itself is not forwarded anywhere')
  t.equal(off.audit.answer, 'not_found')
  for (const [name, path, headers, description] of [
    ['nginx without X-Original-URI', '/v1/decide/nginx', [secret, ['x-original-method', 'GET']], 'X-Original-URI is missing'],
    [
      'forward without X-Forwarded-Host',
      '/v1/decide/forward',
      [secret, ['x-forwarded-method', 'GET'], ['x-forwarded-uri', '/orders/1']],
      'X-Forwarded-Host is missing',
    ],
    [
      'two X-Original-URI',
      '/v1/decide/nginx',
      [...nginxHeaders('GET', '/public/x'), ['x-original-uri', '/admin']],
      'more than one X-Original-URI',
    ],
  ] as Array<[string, string, Array<[string, string]>, string]>) {
    const { res, audit } = await ask(lapse, path, [...headers, bearer(token)])
    assertDenied(t, lapse, res, audit, {
      status: 400,
      challenge: CHALLENGE.invalidRequest,
      error: 'invalid_request',
      reason: 'invalid_request',
    })
    t.equal(res.json().error_description, description, name)
  }
})

t.test('LAPSE_HOSTS and the head checks apply to the original request', async (t) => {
  const lapse = await start(t, { LAPSE_HOSTS: 'api.test' })
  const token = await mint()
  const ok = await ask(lapse, '/v1/decide/forward', [...forwardHeaders('GET', '/orders/1', 'api.test'), bearer(token)])
  t.equal(ok.res.status, 200, 'the served host')
  const other = await ask(lapse, '/v1/decide/forward', [...forwardHeaders('GET', '/orders/1', 'evil.test'), bearer(token)])
  assertDenied(t, lapse, other.res, other.audit, {
    status: 421,
    challenge: undefined,
    error: 'misdirected_request',
    reason: 'host_not_allowed',
  })
  const bad = await ask(lapse, '/v1/decide/forward', [...forwardHeaders('GET', '/orders/1', 'api.test@evil.test'), bearer(token)])
  t.equal(bad.res.status, 400, 'an invalid X-Forwarded-Host')
  // nginx and Envoy: the decision request's Host is the original's.
  const envoy = await rawHttp(
    lapse.decisionUrl!,
    `GET /v1/decide/envoy/orders/1 HTTP/1.1\r\nHost: evil.test\r\n${TOKEN_HEADER}: ${SECRET}\r\nAuthorization: Bearer ${token}\r\nConnection: close\r\n\r\n`,
  )
  t.equal(envoy.status, 421, "Envoy's original Host is the decision request's")
  const served = await rawHttp(
    lapse.decisionUrl!,
    `GET /v1/decide/envoy/orders/1 HTTP/1.1\r\nHost: api.test\r\n${TOKEN_HEADER}: ${SECRET}\r\nAuthorization: Bearer ${token}\r\nConnection: close\r\n\r\n`,
  )
  t.equal(served.status, 200)
})

t.test("a WebSocket handshake the front proxy asks about is decided like any request; the tunnel stays the front proxy's", async (t) => {
  const lapse = await start(t)
  const token = await mint()
  const head = (auth: string) =>
    `GET /v1/decide/forward HTTP/1.1\r\nHost: lapse.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n${TOKEN_HEADER}: ${SECRET}\r\nX-Forwarded-Method: GET\r\nX-Forwarded-Uri: /orders/ws\r\nX-Forwarded-Host: api.test\r\n${auth}\r\n`
  const ok = await rawHttp(lapse.decisionUrl!, head(`Authorization: Bearer ${token}\r\n`))
  t.equal(ok.status, 200, 'allowed: a 200, never a 101')
  t.match(ok.head, /\r\nx-auth-subject: ci-deployer\r\n/i)
  const anonymous = await rawHttp(lapse.decisionUrl!, head(''))
  t.equal(anonymous.status, 401)
  await waitFor(() => decisions(lapse).length >= 2, 'two decision lines')
  t.match(
    decisions(lapse).map((l) => l.reason),
    ['ok', 'missing_token'],
  )
  t.equal(lapse.upstream.calls, 0)
})

t.test('as a decision service only: no proxy listener, and the decisions work', async (t) => {
  const lapse = await start(t, { LAPSE_UPSTREAM: undefined })
  t.equal(lapse.url, '', 'no proxy listener')
  t.equal(lapse.running.deps.forwarder, undefined, 'no upstream pool')
  const { res } = await ask(lapse, '/v1/decide/envoy/orders/1', [secret, bearer(await mint())])
  t.equal(res.status, 200)
})

const BIN = fileURLToPath(new URL('../../bin/lapse.js', import.meta.url))

t.test('`lapse proxy` runs without LAPSE_UPSTREAM when LAPSE_DECISION_LISTEN is set, and refuses to start with neither', async (t) => {
  const keys = await testKeys()
  const base = {
    LAPSE_ISSUER: 'https://issuer.test',
    LAPSE_AUDIENCE: 'orders-api',
    LAPSE_JWKS_FILE: keys.jwksPath,
    LAPSE_ROUTES: JSON.stringify(GUARDED_ROUTES),
  }
  const port = await freePort()
  const child = await startChildProxy(t, { ...base, LAPSE_DECISION_LISTEN: String(port) })
  const res = await send(`http://127.0.0.1:${port}/v1/decide/envoy/public/x`)
  t.equal(res.status, 200, 'a port alone binds 127.0.0.1')
  // Audit and start lines are flushed within a second (main.ts createLogger).
  await waitFor(() => /"decision":\{"host":"127\.0\.0\.1","port":\d+\}/.test(child.output()), 'the start line', 5000)
  t.pass('the start line names the decision listener')
  const none = spawnSync(process.execPath, [BIN, 'proxy'], {
    env: { PATH: process.env.PATH ?? '', OTEL_SDK_DISABLED: 'true', ...base },
    encoding: 'utf8',
  })
  t.equal(none.status, 2)
  t.match(none.stderr, /ERR_CONFIG_INVALID LAPSE_UPSTREAM: required unless LAPSE_DECISION_LISTEN is set/)
})

t.test('the shipped Envoy, Istio and Traefik snippets name the paths, header and identity headers Lapse reads and writes', async (t) => {
  const { readFileSync } = await import('node:fs')
  const { parse, parseAllDocuments } = await import('yaml')
  const deploy = (f: string) =>
    readFileSync(fileURLToPath(new URL(`../../deploy/${f}`, import.meta.url)), 'utf8').replace(/\{\{LAPSE_DECISION_PORT\}\}/g, '9902')
  const names = (list: Array<{ exact: string }>) => list.map((p) => p.exact).sort()
  const identity = ['x-auth-client-id', 'x-auth-expires-at', 'x-auth-scopes', 'x-auth-subject', 'x-auth-token-id']

  const envoy = parse(deploy('envoy/ext-authz.yaml'))
  const filter = envoy.http_filters[0].typed_config
  t.equal(filter.failure_mode_allow, false, 'Envoy: fail closed')
  t.equal(filter.status_on_error.code, 'ServiceUnavailable')
  const http = filter.http_service
  t.same(names(http.authorization_response.allowed_upstream_headers.patterns), identity)
  t.ok(names(http.authorization_response.allowed_client_headers.patterns).includes('www-authenticate'))
  t.equal(http.authorization_request.headers_to_add[0].key.toLowerCase(), TOKEN_HEADER)
  t.ok(names(filter.allowed_headers.patterns).includes('x-forwarded-client-cert'), 'Envoy: the client certificate reaches Lapse')

  // The request Envoy sends with that configuration, by its documentation: the original method,
  // path_prefix + the original path, Host, Authorization, Content-Length 0 and headers_to_add.
  const lapse = await start(t)
  const token = await mint()
  const path = `${http.path_prefix}/orders/1?page=2`
  const allowed = await rawHttp(
    lapse.decisionUrl!,
    `DELETE ${path} HTTP/1.1\r\nHost: api.test\r\nAuthorization: Bearer ${token}\r\nContent-Length: 0\r\nX-Lapse-Decision-Token: ${SECRET}\r\nx-forwarded-proto: https\r\nx-request-id: 1\r\nConnection: close\r\n\r\n`,
  )
  t.equal(allowed.status, 200, `${path}: allowed`)
  t.match(allowed.head, /\r\nx-auth-subject: ci-deployer\r\n/i)
  const denied = await rawHttp(
    lapse.decisionUrl!,
    `GET ${http.path_prefix}/admin/x HTTP/1.1\r\nHost: api.test\r\nAuthorization: Bearer ${token}\r\nContent-Length: 0\r\nX-Lapse-Decision-Token: ${SECRET}\r\nConnection: close\r\n\r\n`,
  )
  t.equal(denied.status, 403)
  t.match(denied.head, /\r\nwww-authenticate: Bearer realm="lapse", error="insufficient_scope"/i)

  const istio = parseAllDocuments(deploy('istio/lapse-ext-authz.yaml')).map((d) => d.toJS())
  t.equal(istio[0].spec.action, 'CUSTOM')
  const mesh = deploy('istio/lapse-ext-authz.yaml')
    .split('\n')
    .filter((l) => l.startsWith('# '))
    .map((l) => l.slice(2))
    .join('\n')
  const provider = parse(mesh.slice(mesh.indexOf('meshConfig:'))).meshConfig.extensionProviders[0].envoyExtAuthzHttp
  t.equal(provider.pathPrefix, http.path_prefix, 'Istio: the same prefix')
  t.equal(provider.failOpen, false, 'Istio: fail closed')
  t.same([...provider.headersToUpstreamOnAllow].sort(), identity)
  t.ok(provider.includeRequestHeadersInCheck.includes('x-forwarded-client-cert'), 'Istio: the client certificate reaches Lapse')
  t.same(
    Object.keys(provider.includeAdditionalHeadersInCheck).map((k) => k.toLowerCase()),
    [TOKEN_HEADER],
  )

  const traefik = parse(deploy('traefik/dynamic.yaml')).http
  t.match(traefik.middlewares.lapse.forwardAuth.address, /\/v1\/decide\/forward$/)
  t.equal(traefik.middlewares.lapse.forwardAuth.authResponseHeadersRegex, '^X-Auth-')
  t.same(
    traefik.routers.protected.middlewares,
    ['lapse-token', 'lapse', 'lapse-token-strip'],
    'the token is set before the decision and removed after it',
  )
  for (const doc of parseAllDocuments(deploy('traefik/middleware.yaml')).map((d) => d.toJS())) {
    if (doc.spec.forwardAuth) t.match(doc.spec.forwardAuth.address, /\/v1\/decide\/forward$/)
  }
})

t.test(
  'identity and path-override headers the front proxy would pass on, in any spelling, are refused: only Lapse speaks for the caller',
  async (t) => {
    const lapse = await start(t)
    const token = await mint()
    const spoofs: Array<[string, string]> = [
      ['X.Auth.Subject', 'root'],
      ['x_auth_scopes', 'admin'],
      ['X-Auth-Peer', 'spiffe://evil/x'],
      ['X-Auth-Binding', 'mtls'],
      ['X-Auth-Bound-Tenant', 'acme'],
      ['X.Original.URL', '/admin/secret'],
      ['x_rewrite_url', '/admin/secret'],
    ]
    for (const spoof of spoofs) {
      for (const [protocol, path, headers] of [
        ['nginx', '/v1/decide/nginx', nginxHeaders('GET', '/orders/1')],
        ['forward', '/v1/decide/forward', forwardHeaders('GET', '/orders/1')],
        ['envoy', '/v1/decide/envoy/orders/1', [secret]],
      ] as const) {
        const { res, audit } = await ask(lapse, path, [...headers, bearer(token), spoof])
        t.equal(res.status, 400, `${spoof[0]} (${protocol}): 400`)
        t.match(audit, { decision: 'deny', reason: 'invalid_request' }, `${spoof[0]} (${protocol}): audited`)
      }
    }
    // The five names the answer always carries are replaced by the front proxy, so the exact ones pass.
    const { res } = await ask(lapse, '/v1/decide/envoy/orders/1', [secret, bearer(token), ['x-auth-subject', 'mallory']])
    t.equal(res.status, 200)
    t.equal(res.headers['x-auth-subject'], 'ci-deployer')
    t.equal(lapse.upstream.calls, 0)
  },
)

t.test(
  'DPoP through forward auth: the proof is checked against the original method and X-Forwarded-Host, not the decision request',
  async (t) => {
    const { newHolder } = await import('../bind/dpop-helpers.js')
    const holder = await newHolder()
    const lapse = await runApp(t, { env: { LAPSE_DECISION_LISTEN: '127.0.0.1:0', LAPSE_DECISION_TOKEN: SECRET } })
    const token = await (await testKeys()).mint({ cnf: { jkt: holder.jkt } })
    const asked = async (proofUrl: string) => {
      const proof = await holder.proof(proofUrl, 'GET', token)
      return ask(lapse, '/v1/decide/forward', [
        ...forwardHeaders('GET', '/orders/1', 'api.test'),
        ['authorization', `DPoP ${token}`],
        ['dpop', proof],
      ])
    }
    const ok = await asked('https://api.test/orders/1')
    t.equal(ok.res.status, 200, 'a proof for the original URL passes')
    t.match(ok.audit, { decision: 'allow', binding: 'dpop' })
    const wrong = await asked(`${lapse.decisionUrl}/v1/decide/forward`)
    t.equal(wrong.res.status, 401, "a proof for the decision listener's own URL does not")
    t.match(wrong.audit, { decision: 'deny', reason: 'dpop_proof_invalid' })
    t.equal(lapse.upstream.calls, 0)
  },
)
