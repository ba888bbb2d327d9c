// What the upstream receives: hop-by-hop headers gone (those named in Connection too),
// X-Forwarded-* set, traceparent passed on, identity headers only from Lapse, bodies framed.
import t from 'tap'
import { manualClock } from '../../src/core/clock.js'
import { bearer, runApp, send, sendAudited } from '../fixtures/app.js'
import { testKeys } from '../fixtures/keys.js'
import { startBodyRecorder, startUpstream, type Upstream } from '../fixtures/upstream.js'
import { rawHttp } from '../hardening/helpers.js'

const T0_MS = Date.parse('2030-01-01T00:00:00Z')
const T0_S = T0_MS / 1000
const ROUTES = [
  { path: '/public/**', public: true },
  { path: '/orders/**', scopes: ['orders:read'] },
]
const mint = async (claims: Record<string, unknown> = {}) =>
  (await testKeys()).mint(
    { sub: 'ci-deployer', client_id: 'deploy-bot', jti: 'token-1', exp: T0_S + 300, scope: 'orders:read', ...claims },
    { nowS: T0_S },
  )

/** How many times the upstream saw a header name in its raw header list, any case. */
const rawCount = (up: Upstream, i: number, name: string) => {
  const raw = up.requests[i]!.rawHeaders
  let n = 0
  for (let k = 0; k < raw.length; k += 2) if (raw[k]!.toLowerCase() === name) n++
  return n
}

t.test('hop-by-hop request headers are removed, including those named in Connection; end-to-end ones kept', async (t) => {
  const lapse = await runApp(t, { routes: ROUTES, clock: manualClock(T0_MS) })
  const res = await send(`${lapse.url}/orders/1`, {
    method: 'POST',
    body: 'x',
    headers: [
      bearer(await mint()),
      ['transfer-encoding', 'chunked'],
      ['connection', 'keep-alive, X-Custom-Hop, x-other-hop'],
      ['x-custom-hop', 'secret-for-the-next-hop'],
      ['x-other-hop', '1'],
      ['keep-alive', 'timeout=5'],
      ['te', 'trailers'],
      ['trailer', 'x-checksum'],
      ['proxy-authorization', 'Basic cHJveHk6cGFzcw=='],
      ['proxy-connection', 'keep-alive'],
      ['upgrade', 'h2c'],
      ['x-end-to-end', 'kept'],
      ['accept', 'application/json'],
    ],
  })
  t.equal(res.status, 200)
  const got = lapse.upstream.requests[0]!.headers
  for (const name of ['x-custom-hop', 'x-other-hop', 'keep-alive', 'te', 'trailer', 'proxy-authorization', 'proxy-connection', 'upgrade']) {
    t.equal(got[name], undefined, `${name} removed`)
  }
  t.notMatch(got.connection ?? '', /hop/i, 'the client’s Connection list is not forwarded')
  t.equal(got['x-end-to-end'], 'kept')
  t.equal(got.accept, 'application/json')
})

t.test('hop-by-hop response headers are removed, including those the upstream named in Connection', async (t) => {
  const upstream = await startUpstream((req, res) => {
    req.resume()
    res
      .writeHead(200, {
        connection: 'x-upstream-hop',
        'x-upstream-hop': 'internal',
        'keep-alive': 'timeout=1',
        'proxy-authenticate': 'Basic',
        'x-end-to-end': 'kept',
      })
      .end('{}')
  })
  t.teardown(() => upstream.close())
  const lapse = await runApp(t, { routes: ROUTES, clock: manualClock(T0_MS), upstream })
  const res = await send(`${lapse.url}/orders/1`, { headers: [bearer(await mint())] })
  t.equal(res.status, 200)
  t.equal(res.headers['x-upstream-hop'], undefined)
  t.equal(res.headers['proxy-authenticate'], undefined)
  t.notMatch(res.headers['keep-alive'] ?? '', /timeout=1\b/, 'the upstream hop’s keep-alive terms are not the client’s')
  t.equal(res.headers['x-end-to-end'], 'kept')
})

t.test('X-Forwarded-For is appended to, X-Forwarded-Proto and X-Forwarded-Host are set (spoofed values replaced)', async (t) => {
  const lapse = await runApp(t, { routes: ROUTES, clock: manualClock(T0_MS) })
  await send(`${lapse.url}/orders/1`, {
    headers: [
      bearer(await mint()),
      ['x-forwarded-for', '203.0.113.7'],
      ['x-forwarded-proto', 'https'],
      ['x-forwarded-host', 'evil.example'],
    ],
  })
  await send(`${lapse.url}/orders/2`, { headers: [bearer(await mint())] })
  const [first, second] = lapse.upstream.requests
  const host = new URL(lapse.url).host
  t.equal(first!.headers['x-forwarded-for'], '203.0.113.7, 127.0.0.1')
  t.equal(first!.headers['x-forwarded-proto'], 'http')
  t.equal(first!.headers['x-forwarded-host'], host)
  t.equal(first!.headers.host, host, 'the client’s Host is kept')
  t.equal(second!.headers['x-forwarded-for'], '127.0.0.1')
  t.equal(second!.headers['x-forwarded-proto'], 'http')
  t.equal(second!.headers['x-forwarded-host'], host)
})

// Headers that tell an upstream which path, prefix, client, host or scheme the request "really"
// had. Sent by a client, any of them makes the upstream see another request than the one decided.
const OVERRIDES: Array<[string, string]> = [
  ['X-Original-URL', '/admin/secret'],
  ['X-Rewrite-URL', '/admin/secret'],
  ['X-Forwarded-Prefix', '/admin'],
  ['Forwarded', 'for=10.0.0.1;host=admin.internal;proto=https'],
  ['X-Real-IP', '10.0.0.1'],
  ['X-Forwarded-Port', '443'],
  ['X-Forwarded-Scheme', 'https'],
  ['X-Forwarded-Ssl', 'on'],
  ['X-Url-Scheme', 'https'],
  ['Front-End-Https', 'on'],
  ['X-Original-Host', 'admin.internal'],
  ['True-Client-IP', '10.0.0.1'],
  ['X-Client-IP', '10.0.0.1'],
  ['X-Cluster-Client-IP', '10.0.0.1'],
  // CGI-style upstreams read an underscore as a dash.
  ['X_Original_URL', '/admin/secret'],
  ['x-rewrite_url', '/admin/secret'],
  ['X_Forwarded_Prefix', '/admin'],
  ['X_Real_IP', '10.0.0.1'],
  ['X_Forwarded_For', '10.0.0.1'],
  ['X_Forwarded_Host', 'admin.internal'],
  ['X-Forwarded_Proto', 'https'],
]
const SPOOFED = /\/admin|10\.0\.0\.1|admin\.internal|https|^on$|^443$/

t.test('path and client overrides a client sends never reach the upstream (X-Forwarded-* carry Lapse’s view)', async (t) => {
  const lapse = await runApp(t, { routes: ROUTES, clock: manualClock(T0_MS) })
  for (const [route, auth] of [
    ['/public/x', []],
    ['/orders/1', [bearer(await mint())]],
  ] as const) {
    const res = await send(`${lapse.url}${route}`, { headers: [...auth, ...OVERRIDES] })
    t.equal(res.status, 200, `${route}: allowed`)
    const got = lapse.upstream.requests.at(-1)!
    const names = got.rawHeaders.filter((_, i) => i % 2 === 0).map((n) => n.toLowerCase())
    for (const name of [
      'x-original-url',
      'x-rewrite-url',
      'x-forwarded-prefix',
      'forwarded',
      'x-real-ip',
      'x_original_url',
      'x-rewrite_url',
      'x_forwarded_prefix',
      'x_real_ip',
      'x_forwarded_for',
      'x_forwarded_host',
      'x-forwarded_proto',
    ]) {
      t.notOk(names.includes(name), `${route}: ${name} is not forwarded`)
    }
    t.equal(got.url, route, `${route}: the path the upstream gets is the one decided`)
    t.equal(got.headers['x-forwarded-for'], '127.0.0.1', `${route}: X-Forwarded-For is the peer Lapse saw`)
    t.notOk(
      got.rawHeaders.some((v, i) => i % 2 === 1 && SPOOFED.test(v)),
      `${route}: no spoofed value reaches the upstream`,
    )
  }
})

t.test('a WebSocket upgrade gets the same forwarding headers, none of the client’s overrides', async (t) => {
  const lapse = await runApp(t, { routes: ROUTES, clock: manualClock(T0_MS) })
  const upgrade = ['Upgrade: websocket', 'Connection: Upgrade', 'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==', 'Sec-WebSocket-Version: 13']
  await rawHttp(
    lapse.url,
    `GET /public/ws HTTP/1.1\r\nHost: lapse.test\r\n${[...upgrade, ...OVERRIDES.map(([n, v]) => `${n}: ${v}`)].map((h) => `${h}\r\n`).join('')}\r\n`,
    1000,
  )
  const got = lapse.upstream.requests.at(-1)
  t.equal(got?.url, '/public/ws', 'the upgrade reached the upstream')
  t.equal(got?.headers['x-forwarded-host'], 'lapse.test')
  t.equal(got?.headers.forwarded, undefined, 'no Forwarded')
  t.equal(got?.headers['x-real-ip'], undefined, 'no X-Real-IP')
  t.notOk(
    got?.rawHeaders.some((v, i) => i % 2 === 1 && SPOOFED.test(v)),
    'no spoofed value reaches the upstream',
  )
})

t.test('without Host (HTTP/1.0) the client’s X-Forwarded-Host is not passed on either', async (t) => {
  const { upstreamHeaders } = await import('../../src/http/headers.js')
  const noHost = upstreamHeaders({ 'x-forwarded-host': 'evil.example', forwarded: 'host=evil.example' }, undefined, {
    forwardAuthorization: false,
    upgrade: false,
    remoteAddress: '192.0.2.1',
  })
  t.equal(noHost['x-forwarded-host'], undefined)
  t.equal(noHost.forwarded, undefined)
  t.equal(noHost['x-forwarded-for'], '192.0.2.1')
})

t.test('traceparent is passed on: the upstream continues the client’s trace', async (t) => {
  const lapse = await runApp(t, { routes: ROUTES, clock: manualClock(T0_MS) })
  const traceId = '4bf92f3577b34da6a3ce929d0e0e4736'
  await send(`${lapse.url}/orders/1`, { headers: [bearer(await mint()), ['traceparent', `00-${traceId}-00f067aa0ba902b7-01`]] })
  const got = lapse.upstream.requests[0]!.headers.traceparent
  t.match(got, new RegExp(`^00-${traceId}-[0-9a-f]{16}-0[01]$`), 'same trace id, Lapse’s or the client’s span as parent')
})

t.test('spoofed X-Auth-* headers (any case, repeated) never reach the upstream; Lapse’s identity headers do', async (t) => {
  const lapse = await runApp(t, { routes: ROUTES, clock: manualClock(T0_MS) })
  const res = await send(`${lapse.url}/orders/1`, {
    headers: [
      bearer(await mint()),
      ['X-Auth-Subject', 'root'],
      ['x-auth-subject', 'admin'],
      ['X-AUTH-SCOPES', 'orders:write admin'],
      ['x-Auth-Client-Id', 'spoofed-client'],
      ['X-Auth-Token-Id', 'forged'],
      ['X-Auth-Expires-At', '9999999999'],
      ['X-Auth-Role', 'superuser'],
      ['x-auth-role', 'superuser'],
    ],
  })
  t.equal(res.status, 200)
  const got = lapse.upstream.requests[0]!.headers
  t.equal(got['x-auth-subject'], 'ci-deployer')
  t.equal(got['x-auth-scopes'], 'orders:read')
  t.equal(got['x-auth-client-id'], 'deploy-bot')
  t.equal(got['x-auth-token-id'], 'token-1')
  t.equal(got['x-auth-expires-at'], String(T0_S + 300))
  t.equal(got['x-auth-role'], undefined, 'a made-up X-Auth-* header is removed too')
  for (const name of ['x-auth-subject', 'x-auth-scopes', 'x-auth-client-id', 'x-auth-token-id', 'x-auth-expires-at']) {
    t.equal(rawCount(lapse.upstream, 0, name), 1, `exactly one ${name}`)
  }
})

t.test('spoofed X-Auth-* headers are removed on public routes too, and no identity is invented', async (t) => {
  const lapse = await runApp(t, { routes: ROUTES, clock: manualClock(T0_MS) })
  const res = await send(`${lapse.url}/public/page`, {
    headers: [
      ['X-Auth-Subject', 'root'],
      ['X-Auth-Scopes', 'admin'],
    ],
  })
  t.equal(res.status, 200)
  const got = lapse.upstream.requests[0]!.headers
  t.equal(got['x-auth-subject'], undefined)
  t.equal(got['x-auth-scopes'], undefined)
})

t.test('spoofed identity in underscore form (X_Auth_Subject) never reaches the upstream', async (t) => {
  // CGI-style upstreams (and nginx with underscores_in_headers) read X_Auth_Subject as X-Auth-Subject.
  const lapse = await runApp(t, { routes: ROUTES, clock: manualClock(T0_MS) })
  const res = await send(`${lapse.url}/public/page`, {
    headers: [
      ['X_Auth_Subject', 'root'],
      ['x-auth_scopes', 'admin'],
    ],
  })
  t.equal(res.status, 200)
  const names = Object.keys(lapse.upstream.requests[0]!.headers)
  t.same(
    names.filter((n) => /^x[-_]auth[-_]/.test(n)),
    [],
  )
})

t.test('Connection: x-auth-subject cannot strip the identity headers Lapse adds', async (t) => {
  const lapse = await runApp(t, { routes: ROUTES, clock: manualClock(T0_MS) })
  const res = await send(`${lapse.url}/orders/1`, {
    headers: [
      bearer(await mint()),
      ['connection', 'x-auth-subject, X-Auth-Scopes, x-auth-token-id, x-auth-expires-at, x-auth-client-id, x-forwarded-for'],
    ],
  })
  t.equal(res.status, 200)
  const got = lapse.upstream.requests[0]!.headers
  t.equal(got['x-auth-subject'], 'ci-deployer')
  t.equal(got['x-auth-scopes'], 'orders:read')
  t.equal(got['x-auth-token-id'], 'token-1')
  t.equal(got['x-auth-expires-at'], String(T0_S + 300))
  t.equal(got['x-auth-client-id'], 'deploy-bot')
  t.equal(got['x-forwarded-for'], '127.0.0.1')
})

t.test('a chunked body is forwarded framed, whatever the method: its bytes never become a second upstream request', async (t) => {
  const { upstream, bodies } = await startBodyRecorder()
  t.teardown(() => upstream.close())
  const lapse = await runApp(t, { routes: ROUTES, clock: manualClock(T0_MS), upstream })
  const smuggled = 'GET /admin/smuggled HTTP/1.1\r\nHost: upstream\r\nContent-Length: 0\r\n\r\n'
  for (const method of ['GET', 'DELETE', 'OPTIONS', 'POST']) {
    const before = upstream.calls
    const { res } = await sendAudited(lapse, '/orders/1', {
      method,
      headers: [bearer(await mint()), ['transfer-encoding', 'chunked']],
      body: smuggled,
    })
    t.equal(res.status, 200, `${method}: answered`)
    // Give a smuggled request on the pooled upstream connection the time to show up.
    await new Promise((r) => setTimeout(r, 50))
    t.equal(upstream.calls, before + 1, `${method}: one upstream request`)
    t.notOk(
      upstream.requests.some((r) => r.url.includes('smuggled')),
      `${method}: nothing smuggled`,
    )
    t.equal(bodies.at(-1), smuggled, `${method}: the body arrived as a body`)
  }
})

t.test('each token gets its own identity headers, reused or not, and Expect stays on the client hop', async (t) => {
  // Identity headers are computed once per cached identity; two tokens interleaved on one
  // connection must never see each other's.
  const lapse = await runApp(t, { routes: ROUTES, clock: manualClock(T0_MS) })
  const alice = await mint({ sub: 'alice', jti: 'token-a', client_id: 'bot-a', scope: 'orders:read extra:a' })
  const bob = await mint({ sub: 'bob', jti: 'token-b', client_id: 'bot-b', scope: 'orders:read' })
  for (const token of [alice, bob, alice, bob, alice]) {
    const res = await send(`${lapse.url}/orders/1`, { method: 'POST', body: 'x', headers: [bearer(token), ['expect', '100-continue']] })
    t.equal(res.status, 200)
  }
  const seen = lapse.upstream.requests.map((r) => [
    r.headers['x-auth-subject'],
    r.headers['x-auth-token-id'],
    r.headers['x-auth-client-id'],
    r.headers['x-auth-scopes'],
  ])
  const a = ['alice', 'token-a', 'bot-a', 'orders:read extra:a']
  const b = ['bob', 'token-b', 'bot-b', 'orders:read']
  t.same(seen, [a, b, a, b, a])
  t.equal(lapse.upstream.requests.filter((r) => r.headers.expect !== undefined).length, 0, 'Expect is not forwarded')
})

t.test("a frozen identity (an embedder's) still gets its headers", async (t) => {
  const { upstreamHeaders } = await import('../../src/http/headers.js')
  const identity = Object.freeze({
    iss: 'i',
    sub: 'frozen',
    clientId: undefined,
    jti: 'j-1',
    iatS: 1,
    expS: 2,
    scopes: new Set(['a', 'b']),
    claims: {},
    memo: {},
  })
  for (let i = 0; i < 2; i++) {
    const headers = upstreamHeaders({ host: 'h', 'x-auth-subject': 'forged' }, identity, {
      remoteAddress: '127.0.0.1',
      forwardAuthorization: false,
      upgrade: false,
    })
    t.match(headers, {
      host: 'h',
      'x-auth-subject': 'frozen',
      'x-auth-token-id': 'j-1',
      'x-auth-scopes': 'a b',
      'x-auth-expires-at': '2',
      'x-forwarded-for': '127.0.0.1',
    })
  }
})

t.test('identity and routing headers spelled with dots or other punctuation never reach the upstream', async (t) => {
  // PHP and other CGI-style gateways turn `.` (and `-`) into `_`: X.Auth.Subject arrives as
  // HTTP_X_AUTH_SUBJECT, the same variable Lapse's X-Auth-Subject fills.
  const lapse = await runApp(t, { routes: ROUTES, clock: manualClock(T0_MS) })
  const spoofed: Array<[string, string]> = [
    ['X.Auth.Subject', 'root'],
    ['X.Auth.Scopes', 'admin'],
    ['X.Auth.Client.Id', 'spoofed-client'],
    ['X.Original.URL', '/admin/secret'],
    ['x~auth~token~id', 'forged'],
    ['X!Auth.Expires_At', '9999999999'],
    ['x.forwarded.host', 'evil.example'],
    ['X.Real.IP', '10.0.0.1'],
    ['Content.Length', '5'],
    ['Transfer.Encoding', 'chunked'],
  ]
  const noClientId = await mint({ client_id: undefined })
  for (const [route, auth] of [
    ['/public/page', []],
    ['/orders/1', [bearer(noClientId)]],
  ] as const) {
    const before = lapse.upstream.requests.length
    const res = await send(`${lapse.url}${route}`, { headers: [...auth, ...spoofed] })
    t.equal(res.status, 200, `${route}: allowed`)
    const got = lapse.upstream.requests[before]!
    const names = got.rawHeaders.filter((_, i) => i % 2 === 0)
    t.same(
      names.filter((n) => /[^A-Za-z0-9-]/.test(n)),
      [],
      `${route}: no punctuated spelling reaches the upstream`,
    )
    t.notOk(
      got.rawHeaders.some(
        (v, i) =>
          i % 2 === 1 &&
          ['root', 'admin', 'spoofed-client', '/admin/secret', 'forged', '9999999999', 'evil.example', '10.0.0.1'].includes(v),
      ),
      `${route}: no spoofed value reaches the upstream`,
    )
    t.equal(got.headers['x-auth-client-id'], undefined, `${route}: no client id is invented`)
    t.equal(got.url, route, `${route}: the path decided is the path forwarded`)
  }
  t.equal(lapse.upstream.requests[1]!.headers['x-auth-subject'], 'ci-deployer', 'the verified subject is Lapse’s')
  t.equal(lapse.upstream.requests[0]!.headers['x-auth-subject'], undefined, 'a public request carries no subject')
})

t.test('names listed in Connection are folded like the fields they name', async (t) => {
  const lapse = await runApp(t, { routes: ROUTES, clock: manualClock(T0_MS) })
  const res = await send(`${lapse.url}/public/page`, {
    headers: [
      ['connection', 'X.Custom.Hop, x_other_hop, Content.Length'],
      ['x-custom-hop', 'a'],
      ['X_Custom_Hop', 'b'],
      ['x-other-hop', 'c'],
      ['x.other.hop', 'd'],
    ],
  })
  t.equal(res.status, 200)
  const names = lapse.upstream.requests[0]!.rawHeaders.filter((_, i) => i % 2 === 0).map((n) => n.toLowerCase())
  t.same(
    names.filter((n) => /custom|other/.test(n)),
    [],
    'every spelling of a listed name is dropped',
  )
  t.notOk(names.includes('content.length'), 'no content.length either')
})
