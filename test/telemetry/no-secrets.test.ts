// Nothing Lapse writes contains a token or its signature: every log line, every exported span and
// metric (the raw OTLP bodies), the Prometheus text and the answers of a run that used known tokens
// in every position a client can put one. Also the admin token and the collector's API key.
import net from 'node:net'
import t from 'tap'
import { ADMIN_TOKEN, bearer, send, type Sent } from '../fixtures/app.js'
import { newKeyPair, testKeys } from '../fixtures/keys.js'
import { assertNoSecrets, type Scanned } from '../fixtures/secrets.js'
import { startReal } from './harness.js'
import { startOtlpReceiver } from './otlp-receiver.js'

const COLLECTOR_KEY = 'collector-api-key-9b1d2e7c4a6f'

t.test('a run with known tokens: no log line, span attribute, metric label or answer contains one', async (t) => {
  const otlp = await startOtlpReceiver()
  t.teardown(otlp.close)
  const lapse = await startReal(t, {
    OTEL_EXPORTER_OTLP_ENDPOINT: otlp.url,
    OTEL_EXPORTER_OTLP_PROTOCOL: 'http/json',
    OTEL_EXPORTER_OTLP_HEADERS: `authorization=Bearer%20${COLLECTOR_KEY}`,
    OTEL_BSP_SCHEDULE_DELAY: '20',
    OTEL_METRIC_EXPORT_INTERVAL: '100',
    LAPSE_LOG_LEVEL: 'debug',
  })
  const keys = await testKeys()
  const nowS = Math.floor(Date.now() / 1000)
  const tokens = {
    valid: await keys.mint({ sub: 'ci-deployer' }),
    expired: await keys.mint({ iat: nowS - 900, exp: nowS - 600 }),
    revoked: await keys.mint({ sub: 'contractor-7' }),
    scopeShort: await keys.mint({ scope: 'billing:read' }),
    unknownKey: await keys.mint({}, { pair: await newKeyPair('ES256', 'stranger') }),
    wrongAudience: await keys.mint({ aud: 'billing-api' }),
    inQuery: await keys.mint({ sub: 'query-user' }),
    twice: await keys.mint({ sub: 'twice' }),
    websocket: await keys.mint({ sub: 'ws-user' }),
  }
  const [h, p] = tokens.valid.split('.')
  const forged = `${h}.${p}.${tokens.expired.split('.')[2]}`

  const answers: Sent[] = []
  const go = async (path: string, headers: Array<[string, string]>, method = 'GET') => {
    answers.push(await send(`${lapse.url}${path}`, { method, headers }))
  }
  await go('/orders/1', [bearer(tokens.valid)])
  await go('/orders/1', [bearer(tokens.expired)])
  await fetch(`${lapse.adminUrl}/v1/revocations`, {
    method: 'POST',
    headers: { authorization: `Bearer ${ADMIN_TOKEN}`, 'content-type': 'application/json' },
    body: JSON.stringify({ claim: 'sub', value: 'contractor-7', reason: 'offboarded' }),
  })
  await go('/orders/1', [bearer(tokens.revoked)])
  await go('/orders/1', [bearer(tokens.scopeShort)])
  await go('/orders/1', [bearer(tokens.unknownKey)])
  await go('/orders/1', [bearer(tokens.wrongAudience)])
  await go('/orders/1', [bearer(forged)])
  await go(`/orders/1?access_token=${tokens.inQuery}`, [])
  await go('/orders/1', [bearer(tokens.twice), bearer(tokens.twice)])
  await go('/orders/1', [bearer(tokens.valid)], 'DELETE') // no rule for DELETE: no_route
  await wsAttempt(lapse.url, tokens.websocket)

  // Close first: the shutdown flushes every span and a last metric export to the receiver.
  const metricsText = (await send(`${lapse.adminUrl}/metrics`)).body
  await lapse.close()

  const texts: Scanned[] = [
    ...lapse.rawLines.map((text, i) => ({ where: `log line ${i + 1}`, text })),
    ...otlp.bodies.map((b, i) => ({ where: `OTLP body ${i + 1} (${b.path})`, text: b.raw })),
    { where: 'GET /metrics', text: metricsText },
    // The answers may not echo a token either.
    ...answers.map((a, i) => ({ where: `answer ${i + 1}`, text: `${JSON.stringify(a.headers)}\n${a.body}` })),
  ]
  t.ok(otlp.spans().filter((s) => s.name === 'lapse.authorize').length >= 11, 'the spans were exported and scanned')
  t.ok(lapse.rawLines.length >= 11, 'the log lines were scanned')
  const named = Object.entries(tokens).map(([name, value]) => ({ name: `${name} token`, value }))
  assertNoSecrets(t, texts, [
    ...named,
    { name: 'forged token', value: forged },
    { name: 'admin token', value: ADMIN_TOKEN },
    { name: 'collector API key', value: COLLECTOR_KEY },
  ])
})

t.test('assertNoSecrets fails on a leak, names where, and checks a JWT by its signature alone', async (t) => {
  const token = await (await testKeys()).mint()
  const signature = token.split('.')[2]!
  const results: Array<{ ok: boolean; found: unknown }> = []
  const recorder = { ok: (ok: boolean, _msg: string, extra: { found?: unknown }) => results.push({ ok, found: extra.found }) }
  assertNoSecrets(
    recorder as never,
    [
      { where: 'clean line', text: 'nothing here' },
      { where: 'leaky line', text: `sig=${signature}` },
    ],
    [{ name: 'token', value: token }],
  )
  t.same(
    results,
    [
      { ok: true, found: undefined },
      { ok: false, found: ['leaky line'] },
    ],
    'the token passes, its signature is caught',
  )
  t.throws(() => assertNoSecrets(recorder as never, [], [token]), /nothing to scan/)
})

/** A WebSocket upgrade carrying a token, against an upstream that has no WebSocket: refused or failed, either way audited. */
function wsAttempt(url: string, token: string): Promise<void> {
  const { port } = new URL(url)
  return new Promise((resolve) => {
    const socket = net.connect(Number(port), '127.0.0.1', () => {
      socket.write(
        `GET /orders/ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nAuthorization: Bearer ${token}\r\n\r\n`,
      )
    })
    socket.on('data', () => socket.destroy())
    socket.on('close', () => resolve())
    socket.on('error', () => resolve())
    socket.setTimeout(2000, () => socket.destroy())
  })
}
