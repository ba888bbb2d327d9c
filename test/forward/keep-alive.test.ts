// A keep-alive connection is no grant: every request on it is decided again, at its own time.
import { Agent, request as httpRequest } from 'node:http'
import t from 'tap'
import { manualClock } from '../../src/core/clock.js'
import { bearer, decisions, runApp, waitFor, type Lapse, type Sent } from '../fixtures/app.js'
import { assertDenied, CHALLENGE } from '../fixtures/deny.js'
import { testKeys } from '../fixtures/keys.js'

const T0_S = Date.parse('2030-01-01T00:00:00Z') / 1000

/** One request through `agent`; tells whether it went over a socket an earlier request used. */
function sendOn(agent: Agent, lapse: Lapse, path: string, token: string): Promise<{ res: Sent; reused: boolean; localPort: number }> {
  const url = new URL(`${lapse.url}${path}`)
  return new Promise((resolve, reject) => {
    const req = httpRequest({ host: url.hostname, port: url.port, path, agent, headers: Object.fromEntries([bearer(token)]) })
    req.on('response', (res) => {
      const chunks: Buffer[] = []
      res.on('data', (c: Buffer) => chunks.push(c))
      res.on('end', () => {
        const body = Buffer.concat(chunks).toString('utf8')
        resolve({
          res: { status: res.statusCode ?? 0, headers: res.headers, body, json: () => JSON.parse(body) },
          reused: req.reusedSocket,
          localPort: req.socket?.localPort ?? -1,
        })
      })
    })
    req.on('error', reject)
    req.end()
  })
}

t.test('second request on the same keep-alive socket after expiry → 401 expired, upstream not called again', async (t) => {
  const clock = manualClock(T0_S * 1000)
  const lapse = await runApp(t, { clock, env: { LAPSE_CLOCK_SKEW: '0' } })
  const agent = new Agent({ keepAlive: true, maxSockets: 1 })
  t.teardown(() => agent.destroy())
  const token = await (await testKeys()).mint({ iat: T0_S, exp: T0_S + 60 }, { nowS: T0_S })

  const first = await sendOn(agent, lapse, '/orders/1', token)
  t.equal(first.res.status, 200)
  t.equal(first.res.headers.connection, 'keep-alive', 'Lapse keeps the connection open')
  t.equal(lapse.upstream.calls, 1)

  clock.set((T0_S + 60) * 1000)
  const second = await sendOn(agent, lapse, '/orders/2', token)
  t.ok(second.reused, 'the second request went over the first one’s socket')
  t.equal(second.localPort, first.localPort, 'same client socket')
  await waitFor(() => decisions(lapse).length >= 2, 'the second audit line')
  assertDenied(t, lapse, second.res, decisions(lapse)[1]!, {
    status: 401,
    challenge: CHALLENGE.invalidToken,
    error: 'invalid_token',
    reason: 'expired',
    upstreamCalls: 1,
    token,
  })
})

t.test('a token revoked between two requests on one keep-alive socket → the second is refused', async (t) => {
  const clock = manualClock(T0_S * 1000)
  const lapse = await runApp(t, { clock })
  const agent = new Agent({ keepAlive: true, maxSockets: 1 })
  t.teardown(() => agent.destroy())
  const token = await (await testKeys()).mint({ iat: T0_S, exp: T0_S + 60, jti: 'keep-alive-jti' }, { nowS: T0_S })

  const first = await sendOn(agent, lapse, '/orders/1', token)
  t.equal(first.res.status, 200)
  await lapse.running.deps.revocations.put({
    claim: 'jti',
    value: 'keep-alive-jti',
    issuedBeforeS: T0_S,
    reason: 'test',
    by: 'test',
    createdAtS: T0_S,
    expiresAtS: T0_S + 3630,
  })
  const second = await sendOn(agent, lapse, '/orders/1', token)
  t.ok(second.reused, 'same socket')
  await waitFor(() => decisions(lapse).length >= 2, 'the second audit line')
  assertDenied(t, lapse, second.res, decisions(lapse)[1]!, {
    status: 401,
    challenge: CHALLENGE.invalidToken,
    error: 'invalid_token',
    reason: 'revoked',
    upstreamCalls: 1,
    token,
  })
})

t.test('Lapse keeps its own connections to the upstream alive: many requests, few upstream connections', async (t) => {
  const clock = manualClock(T0_S * 1000)
  const lapse = await runApp(t, { clock })
  let upstreamConnections = 0
  lapse.upstream.server.on('connection', () => upstreamConnections++)
  const token = await (await testKeys()).mint({ iat: T0_S, exp: T0_S + 60 }, { nowS: T0_S })
  // A fresh client connection for every request: reuse upstream is Lapse's doing, not the client's.
  for (let i = 0; i < 20; i++) {
    const agent = new Agent({ keepAlive: false })
    const sent = await sendOn(agent, lapse, `/orders/${i}`, token)
    agent.destroy()
    t.equal(sent.res.status, 200)
  }
  t.equal(lapse.upstream.calls, 20)
  t.equal(upstreamConnections, 1, '20 sequential requests over one upstream connection')
})
