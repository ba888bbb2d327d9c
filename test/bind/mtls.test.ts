// RFC 8705 through a real Lapse serving HTTPS: certificate-bound tokens, client certificates asked
// for or required, SPIFFE peers on route rules, X-Auth-Peer and X-Forwarded-Proto upstream.
// Certificates come from openssl; clients are undici, Node's https and curl.
import { execFile } from 'node:child_process'
import { request as httpsRequest } from 'node:https'
import { connect as tlsConnect } from 'node:tls'
import t from 'tap'
import { request } from 'undici'
import { WebSocket } from 'ws'
import { runApp, send, waitFor } from '../fixtures/app.js'
import { inMemoryTelemetry } from '../telemetry/in-memory.js'
import { makePki } from '../fixtures/certs.js'
import { CHALLENGE } from '../fixtures/deny.js'
import { testKeys } from '../fixtures/keys.js'
import { callTls, clientAgent, httpsUrl } from './helpers.js'

const pki = makePki()
const DEPLOYER = 'spiffe://prod.example/ns/ci/sa/deployer'
const BUILDER = 'spiffe://prod.example/ns/ci/builder'
const OTHER = 'spiffe://prod.example/ns/web/sa/frontend'
const deployer = pki.client(DEPLOYER, 'deployer')
const builder = pki.client(BUILDER, 'builder')
const other = pki.client(OTHER, 'other')

const tlsEnv = (extra: Record<string, string> = {}) => ({
  LAPSE_TLS_CERT_FILE: pki.server.certFile,
  LAPSE_TLS_KEY_FILE: pki.server.keyFile,
  ...extra,
})
const withClientCa = (auth?: 'request' | 'require') =>
  tlsEnv({ LAPSE_TLS_CLIENT_CA_FILE: pki.ca.certFile, ...(auth ? { LAPSE_TLS_CLIENT_AUTH: auth } : {}) })
const ROUTES = [
  { path: '/deploy/**', scopes: ['orders:read'], peers: [DEPLOYER] },
  { path: '/ci/**', scopes: ['orders:read'], peers: [DEPLOYER, 'spiffe://prod.example/ns/ci/*'] },
  { path: '/public/**', public: true, peers: ['spiffe://prod.example/ns/ci/*'] },
  { path: '/orders/**', scopes: ['orders:read'] },
]

t.test('TLS on: HTTPS with TLS 1.2 at least, X-Forwarded-Proto https, no client certificate asked', async (t) => {
  const lapse = await runApp(t, { env: tlsEnv(), routes: ROUTES })
  const keys = await testKeys()
  const agent = clientAgent(pki)
  t.teardown(() => agent.close())
  const res = await callTls(lapse, '/orders/1', { agent, token: await keys.mint() })
  t.equal(res.status, 200)
  const got = lapse.upstream.requests.at(-1)!
  t.equal(got.headers['x-forwarded-proto'], 'https', 'the hop was TLS')
  t.equal(got.headers['x-auth-peer'], undefined, 'no peer without a client certificate')
  // TLS 1.1 is refused at the handshake.
  const old = await new Promise<string>((resolve) => {
    const req = httpsRequest(
      `${httpsUrl(lapse)}/orders/1`,
      { ca: pki.ca.cert, maxVersion: 'TLSv1.1', minVersion: 'TLSv1', agent: false },
      () => resolve('answered'),
    )
    req.on('error', (err: NodeJS.ErrnoException) => resolve(err.code ?? 'error'))
    req.end()
  })
  t.not(old, 'answered', 'a TLS 1.1 client gets no answer')
  // Plain HTTP to the TLS port gets no HTTP answer from the proxy.
  const plain = await send(`${lapse.url}/orders/1`).then(
    (r) => r.status,
    () => 0,
  )
  t.not(plain, 200, 'plain HTTP is not served on the TLS listener')
  t.equal(lapse.upstream.calls, 1)
})

t.test('TLS off: X-Forwarded-Proto http, and a bound token is refused (no certificate to match)', async (t) => {
  const lapse = await runApp(t, { routes: ROUTES })
  const keys = await testKeys()
  const ok = await send(`${lapse.url}/orders/1`, { headers: [['authorization', `Bearer ${await keys.mint()}`]] })
  t.equal(ok.status, 200)
  t.equal(lapse.upstream.requests.at(-1)!.headers['x-forwarded-proto'], 'http')
  const bound = await keys.mint({ cnf: { 'x5t#S256': deployer.thumbprint } })
  const res = await send(`${lapse.url}/orders/1`, { headers: [['authorization', `Bearer ${bound}`]] })
  t.equal(res.status, 401)
  t.match(res.headers['www-authenticate'], CHALLENGE.invalidToken)
  t.equal(res.json().error, 'invalid_token')
  t.equal(lapse.lines.filter((l) => l.audit === 'decision').at(-1)!.reason, 'mtls_key_mismatch')
  t.equal(lapse.upstream.calls, 1, 'the refused request did not reach the upstream')
})

t.test('request mode: binding match, mismatch and absent certificate; X-Auth-Peer', async (t) => {
  const lapse = await runApp(t, { env: withClientCa(), routes: ROUTES })
  const keys = await testKeys()
  const asDeployer = clientAgent(pki, deployer)
  const asOther = clientAgent(pki, other)
  const anonymous = clientAgent(pki)
  t.teardown(() => Promise.all([asDeployer.close(), asOther.close(), anonymous.close()]))
  const bound = await keys.mint({ cnf: { 'x5t#S256': deployer.thumbprint } })

  const match = await callTls(lapse, '/orders/1', { agent: asDeployer, token: bound })
  t.equal(match.status, 200, 'the token bound to the certificate shown is accepted')
  t.equal(match.audit.decision, 'allow')
  const got = lapse.upstream.requests.at(-1)!
  t.equal(got.headers['x-auth-peer'], DEPLOYER, 'the SPIFFE ID goes upstream')
  t.equal(got.headers['x-forwarded-proto'], 'https')

  for (const [name, agent] of [
    ['another certificate', asOther],
    ['no certificate', anonymous],
  ] as const) {
    const res = await callTls(lapse, '/orders/1', { agent, token: bound })
    t.equal(res.status, 401, `${name}: 401`)
    t.match(res.headers['www-authenticate'], CHALLENGE.invalidToken, `${name}: invalid_token`)
    t.equal(JSON.parse(res.body).error, 'invalid_token')
    t.equal(res.audit.reason, 'mtls_key_mismatch', `${name}: reason`)
    t.equal(lapse.upstream.calls, 1, `${name}: upstream untouched`)
  }
  // A thumbprint that is not a string matches no certificate.
  const odd = await callTls(lapse, '/orders/1', {
    agent: asDeployer,
    token: await keys.mint({ cnf: { 'x5t#S256': [deployer.thumbprint] } }),
  })
  t.equal(odd.audit.reason, 'mtls_key_mismatch')

  // A token that is not bound works with or without a certificate.
  t.equal((await callTls(lapse, '/orders/1', { agent: anonymous, token: await keys.mint() })).status, 200)
  t.equal(
    (await callTls(lapse, '/orders/1', { agent: asOther, token: await keys.mint({ cnf: { kid: 'not-mine' } }) })).status,
    200,
    "another cnf member is not this check's (cnf.jkt is DPoP's: refused under Bearer)",
  )
  t.equal(lapse.upstream.requests.at(-1)!.headers['x-auth-peer'], OTHER)
  // A client-sent X-Auth-Peer never survives.
  await callTls(lapse, '/orders/1', { agent: anonymous, token: await keys.mint(), headers: { 'x-auth-peer': DEPLOYER } })
  t.equal(lapse.upstream.requests.at(-1)!.headers['x-auth-peer'], undefined, 'a forged X-Auth-Peer is removed')
})

t.test('request mode: a certificate the CA did not sign binds but names no peer', async (t) => {
  const stranger = makePki()
  const selfish = stranger.client(DEPLOYER, 'stranger')
  const lapse = await runApp(t, { env: withClientCa(), routes: ROUTES })
  const keys = await testKeys()
  const agent = clientAgent(pki, selfish)
  t.teardown(() => agent.close())
  const res = await callTls(lapse, '/orders/1', { agent, token: await keys.mint({ cnf: { 'x5t#S256': selfish.thumbprint } }) })
  t.equal(res.status, 200, 'RFC 8705 §2.2: the handshake proved the key')
  t.equal(lapse.upstream.requests.at(-1)!.headers['x-auth-peer'], undefined, 'an unverified SPIFFE ID is not forwarded')
  const refused = await callTls(lapse, '/deploy/1', { agent, token: await keys.mint() })
  t.equal(refused.status, 403)
  t.equal(refused.audit.reason, 'peer_not_allowed', 'nor does it satisfy peers')
  t.equal(lapse.upstream.calls, 1)
})

t.test('require mode: no handshake without a valid client certificate', async (t) => {
  const lapse = await runApp(t, { env: withClientCa('require'), routes: ROUTES })
  const keys = await testKeys()
  const anonymous = clientAgent(pki)
  const stranger = clientAgent(pki, makePki().client(DEPLOYER, 'stranger'))
  const asDeployer = clientAgent(pki, deployer)
  t.teardown(() => Promise.all([anonymous.close(), stranger.close(), asDeployer.close()]))
  const token = await keys.mint()
  for (const [name, agent] of [
    ['no certificate', anonymous],
    ['a certificate of another CA', stranger],
  ] as const) {
    const failed = await request(`${httpsUrl(lapse)}/orders/1`, { dispatcher: agent, headers: { authorization: `Bearer ${token}` } }).then(
      async (r) => (await r.body.text(), r.statusCode),
      (err: Error) => err,
    )
    t.type(failed, Error, `${name}: the connection fails`)
  }
  t.equal(lapse.upstream.calls, 0)
  t.equal((await callTls(lapse, '/orders/1', { agent: asDeployer, token })).status, 200)
})

t.test('peers: exact and one-segment wildcard allowed; another peer or none refused with 403 peer_not_allowed', async (t) => {
  const lapse = await runApp(t, { env: withClientCa(), routes: ROUTES })
  const keys = await testKeys()
  const agents = {
    deployer: clientAgent(pki, deployer),
    builder: clientAgent(pki, builder),
    other: clientAgent(pki, other),
    none: clientAgent(pki),
  }
  t.teardown(() => Promise.all(Object.values(agents).map((a) => a.close())))
  const token = await keys.mint()
  const cases: Array<[string, keyof typeof agents, number]> = [
    ['/deploy/1', 'deployer', 200],
    ['/deploy/1', 'builder', 403],
    ['/deploy/1', 'other', 403],
    ['/deploy/1', 'none', 403],
    ['/ci/1', 'deployer', 200],
    ['/ci/1', 'builder', 200],
    ['/ci/1', 'other', 403],
    ['/ci/1', 'none', 403],
    // `/*` is one segment: spiffe://prod.example/ns/ci/sa/deployer is two below ns/ci.
    ['/public/x', 'builder', 200],
    ['/public/x', 'deployer', 403],
    ['/public/x', 'none', 403],
  ]
  let calls = 0
  for (const [path, who, status] of cases) {
    const res = await callTls(lapse, path, { agent: agents[who], token })
    t.equal(res.status, status, `${who} on ${path}: ${status}`)
    if (status === 200) {
      calls++
      continue
    }
    t.equal(res.headers['www-authenticate'], undefined, 'no challenge: another token would not help')
    t.equal(JSON.parse(res.body).error, 'forbidden')
    t.equal(res.audit.reason, 'peer_not_allowed', `${who} on ${path}: reason`)
    t.equal(lapse.upstream.calls, calls, 'upstream untouched')
  }
  // The token checks come first: an anonymous caller learns nothing about the peers of a route.
  const noToken = await callTls(lapse, '/deploy/1', { agent: agents.other })
  t.equal(noToken.audit.reason, 'missing_token')
})

t.test('curl presents a client certificate and a bound token', async (t) => {
  const lapse = await runApp(t, { env: withClientCa('require'), routes: ROUTES })
  const keys = await testKeys()
  const token = await keys.mint({ cnf: { 'x5t#S256': deployer.thumbprint } })
  const curl = (args: string[]) =>
    new Promise<string>((resolve) => {
      execFile(
        'curl',
        [
          '-s',
          '-o',
          '/dev/null',
          '-w',
          '%{http_code}',
          '--cacert',
          pki.ca.certFile,
          '-H',
          `Authorization: Bearer ${token}`,
          ...args,
          `${httpsUrl(lapse)}/deploy/1`,
        ],
        (err, stdout) => resolve(err && stdout === '' ? `error ${(err as NodeJS.ErrnoException).code}` : stdout),
      )
    })
  const probe = await new Promise<boolean>((resolve) => execFile('curl', ['--version'], (err) => resolve(!err)))
  if (!probe) return void t.comment('curl is not installed: skipped')
  t.equal(await curl(['--cert', deployer.certFile, '--key', deployer.keyFile]), '200', 'the bound certificate')
  t.equal(await curl(['--cert', other.certFile, '--key', other.keyFile]), '401', 'another certificate')
  t.match(await curl([]), /^(000|error)/, 'no certificate: no handshake')
  t.equal(lapse.upstream.calls, 1)
})

t.test('the decision span says url.scheme https on a TLS hop', async (t) => {
  const mem = inMemoryTelemetry(t)
  const lapse = await runApp(t, { env: withClientCa(), routes: ROUTES, telemetry: mem.telemetry })
  const agent = clientAgent(pki, deployer)
  t.teardown(() => agent.close())
  const res = await callTls(lapse, '/orders/1', {
    agent,
    token: await (await testKeys()).mint({ cnf: { 'x5t#S256': deployer.thumbprint } }),
  })
  t.equal(res.status, 200)
  const span = await waitFor(() => mem.spans().find((s) => s.name === 'lapse.authorize'), 'the decision span')
  t.equal(span.attributes['url.scheme'], 'https')
  t.equal(span.attributes['lapse.reason'], 'ok')
})

t.test('a WebSocket upgrade over TLS: peers and binding decided at the upgrade, X-Auth-Peer on the upstream upgrade', async (t) => {
  const lapse = await runApp(t, { env: withClientCa(), routes: ROUTES })
  const keys = await testKeys()
  const bound = await keys.mint({ cnf: { 'x5t#S256': deployer.thumbprint } })
  const plain = await keys.mint()
  const open = (path: string, client: typeof deployer, token: string) =>
    new Promise<number | 'tunnel'>((resolve) => {
      const ws = new WebSocket(`${httpsUrl(lapse).replace(/^https:/, 'wss:')}${path}`, {
        ca: pki.ca.cert,
        cert: client.cert,
        key: client.key,
        headers: { authorization: `Bearer ${token}` },
      })
      ws.on('unexpected-response', (_req, res) => {
        res.resume()
        resolve(res.statusCode ?? 0)
        ws.terminate()
      })
      ws.on('open', () => {
        ws.terminate()
        resolve('tunnel')
      })
      // The fixture upstream drops upgrades after recording them: the client sees the connection end.
      ws.on('error', () => resolve(0))
    })
  t.equal(await open('/ci/ws', other, plain), 403, 'another peer: refused at the upgrade')
  t.equal(await open('/orders/ws', other, bound), 401, 'another certificate: the bound token is refused at the upgrade')
  t.equal(lapse.upstream.calls, 0, 'neither reached the upstream')
  const reasons = lapse.lines.filter((l) => l.audit === 'decision').map((l) => l.reason)
  t.same(reasons, ['peer_not_allowed', 'mtls_key_mismatch'])
  await open('/ci/ws', deployer, bound)
  await waitFor(() => lapse.upstream.calls === 1, 'the upgrade to reach the upstream')
  const got = lapse.upstream.requests.at(-1)!
  t.equal(got.headers['x-auth-peer'], DEPLOYER)
  t.equal(got.headers['x-forwarded-proto'], 'https')
})

t.test('an upgrade Lapse does not proxy (h2c) over TLS is served as the ordinary request, with its certificate', async (t) => {
  const lapse = await runApp(t, { env: withClientCa(), routes: ROUTES })
  const token = await (await testKeys()).mint({ cnf: { 'x5t#S256': deployer.thumbprint } })
  const port = Number(new URL(lapse.url).port)
  const answer = await new Promise<string>((resolve, reject) => {
    const socket = tlsConnect({ host: '127.0.0.1', port, ca: pki.ca.cert, cert: deployer.cert, key: deployer.key }, () => {
      socket.write(
        `GET /ci/1 HTTP/1.1\r\nHost: lapse.test\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\nAuthorization: Bearer ${token}\r\n\r\n`,
      )
    })
    let got = ''
    socket.on('data', (c: Buffer) => {
      got += c.toString('latin1')
      if (got.includes('\r\n\r\n')) socket.destroy()
    })
    socket.on('close', () => resolve(got))
    socket.on('error', reject)
  })
  t.match(answer, /^HTTP\/1\.1 200 /, 'answered over HTTP/1.1')
  const got = lapse.upstream.requests.at(-1)!
  t.equal(got.headers['x-auth-peer'], DEPLOYER, 'the handed-over connection still knows its certificate')
  t.equal(got.headers['x-forwarded-proto'], 'https')
})

t.test(
  'sender_constrained accepts a certificate-bound token on its certificate, and says so upstream; a plain token is refused',
  async (t) => {
    const lapse = await runApp(t, { env: withClientCa(), routes: [{ path: '/strict/**', sender_constrained: true }] })
    const keys = await testKeys()
    const agent = clientAgent(pki, deployer)
    t.teardown(() => agent.close())
    const bound = await callTls(lapse, '/strict/1', { agent, token: await keys.mint({ cnf: { 'x5t#S256': deployer.thumbprint } }) })
    t.equal(bound.status, 200)
    t.equal(lapse.upstream.requests.at(-1)!.headers['x-auth-binding'], 'mtls')
    const line = lapse.lines.filter((l) => l.audit === 'decision').at(-1)!
    t.equal(line.binding, 'mtls')
    t.equal(line.key_thumbprint, deployer.thumbprint)
    const plain = await callTls(lapse, '/strict/1', { agent, token: await keys.mint() })
    t.equal(plain.status, 401)
    t.equal(lapse.lines.filter((l) => l.audit === 'decision').at(-1)!.reason, 'sender_constraint_required')
    t.equal(lapse.upstream.calls, 1)
  },
)
