// `lapse proxy` as deployed, over TLS to Redis (rediss://): the certificate is checked against the
// CAs Node trusts, so the test CA goes in through NODE_EXTRA_CA_CERTS, which Node reads only at
// start — hence a child process rather than an in-process Lapse.
import { spawn, type ChildProcess } from 'node:child_process'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import t from 'tap'
import { ADMIN_TOKEN, bearer, send, waitFor } from '../fixtures/app.js'
import { AUDIENCE, ISSUER, testKeys } from '../fixtures/keys.js'
import { freePort } from '../fixtures/redis-server.js'
import { startUpstream } from '../fixtures/upstream.js'
import { admin, nowS, redisFor } from './helpers.js'

const BIN = fileURLToPath(new URL('../../bin/lapse.js', import.meta.url))

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

  async function startProxy(extraEnv: Record<string, string>) {
    const [port, adminPort] = [await freePort(), await freePort()]
    const child: ChildProcess = spawn(process.execPath, [BIN, 'proxy'], {
      env: {
        // No OTLP collector here: exporting to the default localhost:4318 would only slow the shutdown.
        PATH: process.env.PATH ?? '', OTEL_SDK_DISABLED: 'true',
        LAPSE_LISTEN: `127.0.0.1:${port}`, LAPSE_ADMIN_LISTEN: `127.0.0.1:${adminPort}`, LAPSE_UPSTREAM: upstream.url,
        LAPSE_ISSUER: ISSUER, LAPSE_AUDIENCE: AUDIENCE, LAPSE_JWKS_FILE: keys.jwksPath, LAPSE_ADMIN_TOKEN: ADMIN_TOKEN,
        LAPSE_ROUTES: JSON.stringify([{ path: '/orders/**', scopes: ['orders:read'] }]), LAPSE_REDIS_URL: redis.url,
        LAPSE_REVOCATION_TIMEOUT: '1000', // relaxed: a loaded CI box must not turn this into a 503
        ...extraEnv,
      },
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    let output = ''
    child.stdout?.on('data', (c: Buffer) => { output += c.toString() })
    child.stderr?.on('data', (c: Buffer) => { output += c.toString() })
    const exited = new Promise((resolve) => child.once('exit', resolve))
    t.teardown(async () => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM')
      await exited
    })
    const base = `http://127.0.0.1:${port}`
    const adminUrl = `http://127.0.0.1:${adminPort}`
    await waitFor(() => send(`${adminUrl}/healthz`).then((r) => r.status === 200, () => false), 'lapse proxy listening', 10_000)
      .catch((err: Error) => { throw new Error(`${err.message}\n${output}`) })
    return { url: base, adminUrl, output: () => output }
  }

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
