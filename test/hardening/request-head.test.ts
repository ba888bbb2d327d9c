// The request head is checked before any decision: no more fields than Lapse reads in full
// (LAPSE_MAX_HEADER_FIELDS), exactly one Host holding a valid authority (RFC 9112 §3.2), and, with
// LAPSE_HOSTS, one this sidecar serves. Each refusal is audited with its reason, answered on a closed
// connection, and never reaches the upstream, for requests and upgrades alike.
import t, { type Test } from 'tap'
import { decisions, type Lapse } from '../fixtures/app.js'
import { defaultClaims, testKeys } from '../fixtures/keys.js'
import { startBodyRecorder } from '../fixtures/upstream.js'
import { rawHttp, startGuarded, T0_S, type RawResponse } from './helpers.js'

const WS = 'Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n'
const token = async () => (await testKeys()).mint(defaultClaims(T0_S), { nowS: T0_S })
const padding = (n: number) => Array.from({ length: n }, (_, i) => `X-Pad-${i}: a\r\n`).join('')

/** The refusal's answer, its audit line and the untouched upstream, checked together. */
async function expectRefused(
  t: Test,
  lapse: Lapse,
  res: RawResponse,
  want: { status: number; error: string; description?: string; reason: string },
  what: string,
) {
  t.equal(res.status, want.status, `${what}: ${want.status}`)
  const body = JSON.parse(res.body) as { error: string; error_description: string }
  t.equal(body.error, want.error, `${what}: error ${want.error}`)
  if (want.description) t.equal(body.error_description, want.description, `${what}: ${want.description}`)
  t.ok(res.closedByServer, `${what}: connection closed`)
  const line = decisions(lapse).at(-1)
  t.equal(line?.reason, want.reason, `${what}: audited as ${want.reason}`)
  t.equal(line?.status, want.status, `${what}: audit status`)
  t.equal(lapse.upstream.calls, 0, `${what}: the upstream was not reached`)
}

t.test('more than one Host field → 400 invalid_request, nothing forwarded (RFC 9112 §3.2)', async (t) => {
  const lapse = await startGuarded(t)
  for (const [what, hosts] of [
    ['two different', 'Host: good.test\r\nHost: evil.test\r\n'],
    ['the same twice', 'Host: good.test\r\nhost: good.test\r\n'],
    ['one empty', 'Host: good.test\r\nHost:\r\n'],
  ] as const) {
    const res = await rawHttp(lapse.url, `GET /public/x HTTP/1.1\r\n${hosts}\r\n`)
    await expectRefused(
      t,
      lapse,
      res,
      { status: 400, error: 'invalid_request', description: 'more than one Host', reason: 'invalid_request' },
      what,
    )
  }
  const up = await rawHttp(lapse.url, `GET /public/ws HTTP/1.1\r\nHost: good.test\r\nHost: evil.test\r\n${WS}\r\n`)
  await expectRefused(t, lapse, up, { status: 400, error: 'invalid_request', reason: 'invalid_request' }, 'a WebSocket upgrade')
  const h2c = await rawHttp(
    lapse.url,
    `GET /public/x HTTP/1.1\r\nHost: good.test\r\nHost: evil.test\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n`,
  )
  await expectRefused(
    t,
    lapse,
    h2c,
    { status: 400, error: 'invalid_request', reason: 'invalid_request' },
    'an upgrade served without upgrading',
  )
})

t.test('a Host that is not a plain authority → 400 invalid Host, nothing forwarded', async (t) => {
  const lapse = await startGuarded(t)
  const bad = [
    '127.0.0.1/admin/secret?',
    'evil@host',
    'user:pass@host',
    'a b',
    'host:99999',
    'host:',
    'host:80:80',
    'host:8o',
    '[::1',
    '[zz::1]',
    '[::1]x',
    '::1',
    '[v1.x]',
    '[fe80::1%25eth0]',
    'ex%41mple.com',
    'a,b',
    'a;b',
    "a'b",
    'a..b',
    '.a',
    'a_b',
    'a~b',
    'h\u00e9st',
    'host#frag',
    'host?q',
    'host\\x',
  ]
  for (const host of bad) {
    const res = await rawHttp(lapse.url, [Buffer.from(`GET /public/x HTTP/1.1\r\nHost: ${host}\r\n\r\n`, 'latin1')])
    await expectRefused(
      t,
      lapse,
      res,
      { status: 400, error: 'invalid_request', description: 'invalid Host', reason: 'invalid_request' },
      `Host: ${host}`,
    )
  }
  const up = await rawHttp(lapse.url, `GET /public/ws HTTP/1.1\r\nHost: 127.0.0.1/admin/secret?\r\n${WS}\r\n`)
  await expectRefused(
    t,
    lapse,
    up,
    { status: 400, error: 'invalid_request', description: 'invalid Host', reason: 'invalid_request' },
    'a WebSocket upgrade',
  )
})

t.test('valid Hosts are forwarded as sent, and X-Forwarded-Host is that value', async (t) => {
  const lapse = await startGuarded(t)
  const good = [
    'lapse.test',
    'LAPSE.Test.',
    'lapse.test:8080',
    '127.0.0.1',
    '127.0.0.1:1',
    '[::1]',
    '[2001:db8::1]:65535',
    '[::ffff:127.0.0.1]',
    'a-b.c-d',
    '',
  ]
  for (const host of good) {
    const res = await rawHttp(
      lapse.url,
      `GET /public/x HTTP/1.1\r\nHost: ${host}\r\nX-Forwarded-Host: evil.test\r\nConnection: close\r\n\r\n`,
    )
    t.equal(res.status, 200, `Host: ${host}: forwarded`)
    const got = lapse.upstream.requests.at(-1)!
    t.equal(got.headers.host, host, `Host: ${host}: as sent`)
    t.equal(got.headers['x-forwarded-host'], host === '' ? undefined : host, `Host: ${host}: X-Forwarded-Host`)
  }
})

t.test('HTTP/1.0 without Host is served; HTTP/1.1 without Host is refused by Node, unforwarded', async (t) => {
  const lapse = await startGuarded(t)
  const old = await rawHttp(lapse.url, 'GET /public/x HTTP/1.0\r\n\r\n')
  t.equal(old.status, 200, 'HTTP/1.0: no Host is fine')
  t.equal(lapse.upstream.calls, 1)
  t.equal(lapse.upstream.requests[0]!.headers['x-forwarded-host'], undefined)
  const res = await rawHttp(lapse.url, 'GET /public/x HTTP/1.1\r\n\r\n')
  t.equal(res.status, 400, 'HTTP/1.1 without Host: 400')
  t.equal(lapse.upstream.calls, 1, 'not forwarded')
})

t.test('LAPSE_HOSTS: a valid Host it does not list → 421 host_not_allowed before any decision, upgrades too', async (t) => {
  const lapse = await startGuarded(t, { LAPSE_HOSTS: 'api.example.com,*.example.org,[::1]' })
  const jwt = await token()
  const refused = ['example.org', 'evil.test', 'api.example.com.evil.test', 'xexample.org', 'api.example.co', '[::2]', '127.0.0.1', '']
  for (const host of refused) {
    // A valid token changes nothing: the Host is checked first.
    const res = await rawHttp(lapse.url, `GET /orders/1 HTTP/1.1\r\nHost: ${host}\r\nAuthorization: Bearer ${jwt}\r\n\r\n`)
    await expectRefused(t, lapse, res, { status: 421, error: 'misdirected_request', reason: 'host_not_allowed' }, `Host: ${host}`)
    t.notOk(res.head.toLowerCase().includes('www-authenticate'), `Host: ${host}: no challenge`)
  }
  const old = await rawHttp(lapse.url, 'GET /public/x HTTP/1.0\r\n\r\n')
  await expectRefused(t, lapse, old, { status: 421, error: 'misdirected_request', reason: 'host_not_allowed' }, 'HTTP/1.0 without Host')
  const up = await rawHttp(lapse.url, `GET /public/ws HTTP/1.1\r\nHost: evil.test\r\n${WS}\r\n`)
  await expectRefused(t, lapse, up, { status: 421, error: 'misdirected_request', reason: 'host_not_allowed' }, 'a WebSocket upgrade')

  const served = ['api.example.com', 'API.Example.COM:8443', 'api.example.com.', 'a.example.org', 'a.b.example.org:1', '[::1]:80']
  for (const host of served) {
    const res = await rawHttp(lapse.url, `GET /public/x HTTP/1.1\r\nHost: ${host}\r\nConnection: close\r\n\r\n`)
    t.equal(res.status, 200, `Host: ${host}: served`)
    t.equal(lapse.upstream.requests.at(-1)?.headers.host, host)
  }
})

t.test('more header fields than LAPSE_MAX_HEADER_FIELDS → 431 before any decision, nothing forwarded', async (t) => {
  const { upstream, bodies } = await startBodyRecorder()
  t.teardown(() => upstream.close())
  const lapse = await startGuarded(t, { LAPSE_MAX_HEADER_BYTES: '65536' }, upstream)
  const jwt = await token()
  const tooMany = { status: 431, error: 'invalid_request', description: 'too many header fields', reason: 'too_many_header_fields' }

  // Past Node's 1,000, Transfer-Encoding was left out of req.headers but framed the body.
  const te = await rawHttp(
    lapse.url,
    `POST /public/upload HTTP/1.1\r\nHost: lapse.test\r\n${padding(1100)}Transfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n`,
  )
  await expectRefused(t, lapse, te, tooMany, '1,100 fields then Transfer-Encoding: gzip, chunked')
  const cl = await rawHttp(lapse.url, `POST /public/upload HTTP/1.1\r\nHost: lapse.test\r\n${padding(1017)}Content-Length: 5\r\n\r\nhello`)
  await expectRefused(t, lapse, cl, tooMany, '1,019 fields ending with Content-Length')
  const late = await rawHttp(
    lapse.url,
    `GET /orders/1 HTTP/1.1\r\nHost: lapse.test\r\n${padding(1000)}Authorization: Bearer ${jwt}\r\n\r\n`,
  )
  await expectRefused(t, lapse, late, tooMany, 'a token after 1,000 fields')
  const over = await rawHttp(lapse.url, `GET /public/x HTTP/1.1\r\nHost: lapse.test\r\n${padding(100)}\r\n`)
  await expectRefused(t, lapse, over, tooMany, '101 fields')
  const up = await rawHttp(lapse.url, `GET /public/ws HTTP/1.1\r\nHost: lapse.test\r\n${WS}${padding(200)}\r\n`)
  await expectRefused(t, lapse, up, tooMany, 'a WebSocket upgrade with 205 fields')
  t.same(bodies, [], 'no body reached the upstream')

  // Exactly at the limit: Host, Authorization, Content-Length, Connection and 96 more.
  const at = await rawHttp(
    lapse.url,
    `POST /orders/1 HTTP/1.1\r\nHost: lapse.test\r\nAuthorization: Bearer ${jwt}\r\nContent-Length: 5\r\nConnection: close\r\n${padding(96)}\r\nhello`,
  )
  t.equal(at.status, 200, '100 fields: decided and forwarded')
  t.same(bodies, ['hello'], 'with its body')
  t.equal(upstream.requests.at(-1)?.headers['x-auth-subject'], 'ci-deployer', 'on the token it carried')
  t.equal(upstream.requests.at(-1)?.headers['x-pad-95'], 'a', 'and its last field')
})

t.test('LAPSE_MAX_HEADER_FIELDS moves the limit both ways', async (t) => {
  const lapse = await startGuarded(t, { LAPSE_MAX_HEADER_FIELDS: '20' })
  const over = await rawHttp(lapse.url, `GET /public/x HTTP/1.1\r\nHost: lapse.test\r\n${padding(20)}\r\n`)
  await expectRefused(t, lapse, over, { status: 431, error: 'invalid_request', reason: 'too_many_header_fields' }, '21 fields over 20')
  const at = await rawHttp(lapse.url, `GET /public/x HTTP/1.1\r\nHost: lapse.test\r\nConnection: close\r\n${padding(18)}\r\n`)
  t.equal(at.status, 200, '20 fields: forwarded')

  const roomy = await startGuarded(t, { LAPSE_MAX_HEADER_FIELDS: '1000', LAPSE_MAX_HEADER_BYTES: '65536' })
  const many = await rawHttp(roomy.url, `GET /public/x HTTP/1.1\r\nHost: lapse.test\r\nConnection: close\r\n${padding(998)}\r\n`)
  t.equal(many.status, 200, '1,000 fields under a limit of 1,000: forwarded')
  t.equal(roomy.upstream.requests.at(-1)?.headers['x-pad-997'], 'a', 'every field reached the upstream')
  const more = await rawHttp(roomy.url, `GET /public/x HTTP/1.1\r\nHost: lapse.test\r\n${padding(1000)}\r\n`)
  t.equal(more.status, 431, '1,001 fields: 431')
})
