// The other ways to reach Redis, through the proxy: a password-protected server and a Unix
// socket. One request and one revocation each; a wrong password fails closed.
import t from 'tap'
import { bearer, runApp, send } from '../fixtures/app.js'
import { testKeys } from '../fixtures/keys.js'
import { nowS, redisEnv, redisFor, revoke, untilReady } from './helpers.js'

const keys = await testKeys()

t.test('password-protected Redis (redis://:password@host:port): allowed, then revoked', async (t) => {
  const password = 'pä ss:w/o@rd'
  const redis = await redisFor(t, { password })
  t.match(redis.url, /^redis:\/\/:[^@]+@127\.0\.0\.1:\d+$/)
  const lapse = await runApp(t, { env: redisEnv(redis, 'pw') })
  await untilReady(lapse)
  const token = await keys.mint({ sub: 'pw-user' }, { nowS: nowS() - 5 })
  t.equal((await send(`${lapse.url}/orders/1`, { headers: [bearer(token)] })).status, 200, 'allowed')
  await revoke(t, lapse, { claim: 'sub', value: 'pw-user' })
  t.equal((await send(`${lapse.url}/orders/1`, { headers: [bearer(token)] })).status, 401, 'revoked')
  t.ok(
    lapse.rawLines.every((line) => !line.includes(encodeURIComponent(password)) && !line.includes(password)),
    'no log line holds the password',
  )
})

t.test('password-protected Redis, wrong password: not ready, every request 503 revocation_unavailable', async (t) => {
  const redis = await redisFor(t, { password: 'right-password' })
  const lapse = await runApp(t, {
    env: { ...redisEnv(redis, 'pw-wrong'), LAPSE_REDIS_URL: `redis://:wrong-password@127.0.0.1:${redis.port}` },
  })
  const token = await keys.mint({ sub: 'pw-user' }, { nowS: nowS() - 5 })
  // Give it the time a right password needs to connect (the test above), several times over.
  await new Promise((r) => setTimeout(r, 500))
  const ready = await send(`${lapse.adminUrl}/readyz`)
  t.equal(ready.status, 503, '/readyz: not ready')
  const res = await send(`${lapse.url}/orders/1`, { headers: [bearer(token)] })
  t.equal(res.status, 503, 'fails closed')
  t.equal(res.headers['retry-after'], '1')
  t.equal(lapse.upstream.calls, 0, 'the upstream saw nothing')
  t.ok(
    lapse.rawLines.every((line) => !line.includes('wrong-password')),
    'no log line holds the password',
  )
})

t.test('Unix-socket Redis (unix:///path/redis.sock): allowed, then revoked', async (t) => {
  const redis = await redisFor(t, { unixSocket: true })
  t.match(redis.url, /^unix:\/\/\/.+\/redis\.sock$/)
  const lapse = await runApp(t, { env: redisEnv(redis, 'sock') })
  await untilReady(lapse)
  const token = await keys.mint({ sub: 'sock-user' }, { nowS: nowS() - 5 })
  t.equal((await send(`${lapse.url}/orders/1`, { headers: [bearer(token)] })).status, 200, 'allowed')
  await revoke(t, lapse, { claim: 'sub', value: 'sock-user' })
  t.equal(await redis.client().exists('{sock}:rev:sub:*:sock-user'), 1, 'the entry, seen over TCP')
  t.equal((await send(`${lapse.url}/orders/1`, { headers: [bearer(token)] })).status, 401, 'revoked')
})
