// `lapse proxy` as deployed, over TLS to Redis (rediss://): the certificate is checked against the
// CAs Node trusts, so the test CA goes in through NODE_EXTRA_CA_CERTS, which Node reads only at
// start — hence a child process rather than an in-process Lapse.
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { ADMIN_TOKEN, bearer, send, waitFor } from '../fixtures/app.js'
import { startChildProxy } from '../fixtures/child-proxy.js'
import { AUDIENCE, ISSUER, testKeys } from '../fixtures/keys.js'
import { startUpstream } from '../fixtures/upstream.js'
import { admin, nowS, redisFor } from './helpers.js'

t.test('rediss:// with a private CA: ready, allowed, revoked; without the CA: never ready, 503', async (t) => {
  const keys = await testKeys()
  const redis = await redisFor(t, { tls: true })
  t.match(redis.url, /^rediss:\/\/127\.0\.0\.1:\d+$/)
  const upstream = await startUpstream()
  t.teardown(() => upstream.close())
  const dir = await mkdtemp(join(tmpdir(), 'lapse-rediss-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  const caFile = join(dir, 'ca.pem')
  await writeFile(caFile, redis.tlsCa ?? '')

  const startProxy = (extraEnv: Record<string, string>) =>
    startChildProxy(t, {
      LAPSE_UPSTREAM: upstream.url,
      LAPSE_ISSUER: ISSUER,
      LAPSE_AUDIENCE: AUDIENCE,
      LAPSE_JWKS_FILE: keys.jwksPath,
      LAPSE_ADMIN_TOKEN: ADMIN_TOKEN,
      LAPSE_ROUTES: JSON.stringify([{ path: '/orders/**', scopes: ['orders:read'] }]),
      LAPSE_REDIS_URL: redis.url,
      LAPSE_REVOCATION_TIMEOUT: '1000', // relaxed: a loaded CI box must not turn this into a 503
      ...extraEnv,
    })

  const token = await keys.mint({ sub: 'tls-user' }, { nowS: nowS() - 5 })
  const lapse = await startProxy({ NODE_EXTRA_CA_CERTS: caFile })
  await waitFor(() => send(`${lapse.adminUrl}/readyz`).then((r) => r.status === 200), 'ready over TLS', 10_000)
  t.equal((await send(`${lapse.url}/orders/1`, { headers: [bearer(token)] })).status, 200, 'allowed')
  const res = await admin(lapse, 'POST', '/v1/revocations', { body: { claim: 'sub', value: 'tls-user' } })
  t.equal(res.status, 201)
  t.equal((await send(`${lapse.url}/orders/1`, { headers: [bearer(token)] })).status, 401, 'revoked over TLS')

  // The same server without the CA: the certificate is not trusted, so the set never becomes reachable.
  const untrusting = await startProxy({})
  await new Promise((r) => setTimeout(r, 500))
  t.equal((await send(`${untrusting.adminUrl}/readyz`)).status, 503, 'an untrusted certificate: not ready')
  const refused = await send(`${untrusting.url}/orders/1`, { headers: [bearer(token)] })
  t.equal(refused.status, 503, 'fails closed')
  t.equal(refused.json().error, 'temporarily_unavailable')
})
