// A signed claim holding a lone UTF-16 surrogate ("\ud800" in the JSON) has no UTF-8 form and
// could not become an identity header: it is refused at verification as malformed, with an audit
// line, for plain requests and WebSocket upgrades alike, and leaves nothing in the registry.
import t from 'tap'
import type { ConnectionRegistry } from '../../src/connections/connections.js'
import { manualClock } from '../../src/core/clock.js'
import { bearer, decisions, runApp, sendAudited, waitFor } from '../fixtures/app.js'
import { assertDenied, CHALLENGE } from '../fixtures/deny.js'
import { testKeys } from '../fixtures/keys.js'
import { rawHttp } from './helpers.js'

const T0_MS = Date.parse('2030-01-01T00:00:00Z')
const T0_S = T0_MS / 1000
const LONE = '\ud800'
const mint = async (claims: Record<string, unknown>) => (await testKeys()).mint(claims, { nowS: T0_S })
const start = (t: Parameters<typeof runApp>[0]) =>
  runApp(t, { routes: [{ path: '/orders/**', scopes: ['orders:read'] }], clock: manualClock(T0_MS) })
const registrySize = (lapse: Awaited<ReturnType<typeof start>>) => (lapse.running.deps.connections as ConnectionRegistry).size

const CASES: Array<[string, Record<string, unknown>]> = [
  ['sub', { sub: `ci${LONE}` }],
  ['jti', { jti: `${LONE}j` }],
  ['client_id', { client_id: `\udc00` }],
  ['azp', { azp: `a${LONE}` }],
  ['scope', { scope: `orders:read x${LONE}` }],
  ['scp', { scope: undefined, scp: ['orders:read', `y${LONE}`] }],
]

t.test('a lone surrogate in a claim that becomes a header → 401 invalid_token (malformed), audited, upstream untouched', async (t) => {
  const lapse = await start(t)
  for (const [claim, claims] of CASES) {
    const token = await mint(claims)
    const { res, audit } = await sendAudited(lapse, '/orders/1', { headers: [bearer(token)] })
    assertDenied(t, lapse, res, audit, {
      status: 401,
      challenge: CHALLENGE.invalidToken,
      error: 'invalid_token',
      reason: 'malformed',
      token,
    })
    t.match(res.json().error_description, new RegExp(`claim ${claim} is not well-formed Unicode`), claim)
  }
  // A response would have been registered after one tick; nothing may be left there.
  await new Promise((r) => setTimeout(r, 250))
  t.equal(registrySize(lapse), 0, 'nothing left in the connection registry')
})

t.test('a well-formed pair (an emoji) is fine and reaches the upstream percent-encoded', async (t) => {
  const lapse = await start(t)
  const { res } = await sendAudited(lapse, '/orders/1', { headers: [bearer(await mint({ sub: 'ci-\u{1F680}' }))] })
  t.equal(res.status, 200)
  t.equal(lapse.upstream.requests[0]?.headers['x-auth-subject'], 'ci-%F0%9F%9A%80')
})

t.test('a WebSocket upgrade with such a token → 401, audited, nothing registered, upstream untouched', async (t) => {
  const lapse = await start(t)
  const token = await mint({ sub: `ci${LONE}` })
  const before = decisions(lapse).length
  const res = await rawHttp(
    lapse.url,
    `GET /orders/live HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n` +
      `Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nAuthorization: Bearer ${token}\r\n\r\n`,
  )
  t.equal(res.status, 401)
  t.match(res.head, /www-authenticate: Bearer realm="lapse", error="invalid_token"/i)
  const audit = await waitFor(() => decisions(lapse)[before], 'the audit line of the upgrade')
  t.equal(audit.reason, 'malformed')
  t.equal(lapse.upstream.calls, 0, 'upstream untouched')
  await new Promise((r) => setTimeout(r, 250))
  t.equal(registrySize(lapse), 0, 'nothing left in the connection registry')
})
