// `lapse proxy` in front of an https:// upstream: the upstream's certificate is checked against the
// CAs Node trusts, so the test CA goes in through NODE_EXTRA_CA_CERTS (hence a child process).
import { mkdtemp, readFile, rm } from 'node:fs/promises'
import { createServer } from 'node:https'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { bearer, send, waitFor } from '../fixtures/app.js'
import { AUDIENCE, ISSUER, testKeys } from '../fixtures/keys.js'
import { startChildProxy } from '../fixtures/child-proxy.js'
import { makeCertificates } from '../fixtures/redis-server.js'

t.test('an https upstream with a private CA: forwarded over TLS when trusted, 502 when not', async (t) => {
  const keys = await testKeys()
  const dir = await mkdtemp(join(tmpdir(), 'lapse-https-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  const certs = await makeCertificates(dir)

  const seen: Array<{ url: string; subject: string | undefined; encrypted: boolean }> = []
  const upstream = createServer({ cert: await readFile(certs.certFile), key: await readFile(certs.keyFile) }, (req, res) => {
    seen.push({ url: req.url ?? '', subject: req.headers['x-auth-subject'] as string | undefined, encrypted: 'encrypted' in req.socket })
    res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ tls: true, path: req.url }))
  })
  await new Promise<void>((resolve) => upstream.listen(0, '127.0.0.1', resolve))
  t.teardown(
    () =>
      new Promise<void>((resolve) => {
        upstream.closeAllConnections()
        upstream.close(() => resolve())
      }),
  )
  const upstreamUrl = `https://127.0.0.1:${(upstream.address() as { port: number }).port}`

  const startProxy = async (extraEnv: Record<string, string>) => {
    const lapse = await startChildProxy(t, {
      LAPSE_UPSTREAM: upstreamUrl,
      LAPSE_ISSUER: ISSUER,
      LAPSE_AUDIENCE: AUDIENCE,
      LAPSE_JWKS_FILE: keys.jwksPath,
      LAPSE_ROUTES: JSON.stringify([{ path: '/orders/**', scopes: ['orders:read'] }]),
      LAPSE_UPSTREAM_TIMEOUT: '5000',
      ...extraEnv,
    })
    await waitFor(() => send(`${lapse.adminUrl}/readyz`).then((r) => r.status === 200), 'lapse proxy ready', 10_000)
    return lapse
  }

  const token = await keys.mint({ sub: 'tls-caller' }, { nowS: Math.floor(Date.now() / 1000) - 5 })
  const trusting = await startProxy({ NODE_EXTRA_CA_CERTS: certs.caFile })
  const ok = await send(`${trusting.url}/orders/7?x=1`, { headers: [bearer(token)] })
  t.equal(ok.status, 200, 'allowed and forwarded over TLS')
  t.same(ok.json(), { tls: true, path: '/orders/7?x=1' }, "the upstream's own answer")
  t.match(
    seen,
    [{ url: '/orders/7?x=1', subject: 'tls-caller', encrypted: true }],
    'the upstream saw one TLS request with the identity headers',
  )

  // Without the CA the certificate is not trusted: nothing is sent, the client gets a 502.
  const untrusting = await startProxy({})
  const refused = await send(`${untrusting.url}/orders/7`, { headers: [bearer(token)] })
  t.equal(refused.status, 502, 'an untrusted upstream certificate: bad gateway')
  t.equal(refused.json().error, 'bad_gateway')
  t.equal(seen.length, 1, 'no request reached the upstream through the untrusting sidecar')
  t.notMatch(untrusting.output(), token.split('.')[2]!, 'the token is not in its output')
})
