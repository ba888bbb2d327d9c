// Certificate-bound tokens (RFC 8705) and `peers` rules through a real nginx that terminates TLS,
// verifies client certificates and hands the one it verified to Lapse's decision API in
// `X-Forwarded-Client-Cert: Cert="$ssl_client_escaped_cert"` (deploy/nginx/example-mtls.conf and
// lapse-decision.conf, as shipped). The client's own copy of that header must never count.
import t from 'tap'
import { request, type Agent } from 'undici'
import { decisions, waitFor, type Lapse } from '../fixtures/app.js'
import { makePki, type Issued } from '../fixtures/certs.js'
import { CHALLENGE } from '../fixtures/deny.js'
import { defaultClaims, testKeys } from '../fixtures/keys.js'
import { T0_S } from '../hardening/helpers.js'
import { clientAgent } from '../bind/helpers.js'
import { NGINX, startDecisionService, startNginx, type Front } from './front-proxies.js'

const DEPLOYER = 'spiffe://prod.example/ns/ci/sa/deployer'
const OTHER = 'spiffe://prod.example/ns/web/sa/frontend'
const ROUTES = [
  { path: '/deploy/**', scopes: ['orders:read'], peers: [DEPLOYER] },
  { path: '/orders/**', scopes: ['orders:read'] },
]

const mint = async (over: Record<string, unknown> = {}) => (await testKeys()).mint({ ...defaultClaims(T0_S), ...over }, { nowS: T0_S })

/** What a client forging the header would send: the deployer's certificate, as nginx would encode it. */
const forgedXfcc = (cert: Issued) => `Cert="${encodeURIComponent(cert.cert.toString('utf8'))}";Hash=${cert.hexHash}`

interface Through {
  readonly status: number
  readonly headers: Record<string, string | string[] | undefined>
  readonly body: string
  /** The decision Lapse wrote for this request; undefined when nginx answered without asking. */
  readonly audit: Record<string, unknown> | undefined
}

async function through(
  lapse: Lapse,
  front: Front,
  agent: Agent,
  path: string,
  headers: Record<string, string> = {},
  decided = true,
): Promise<Through> {
  const before = decisions(lapse).length
  const res = await request(`https://127.0.0.1:${front.port}${path}`, { dispatcher: agent, headers })
  const body = await res.body.text()
  if (decided) await waitFor(() => decisions(lapse).length > before, 'the decision line')
  return {
    status: res.statusCode,
    headers: res.headers,
    body,
    audit: decisions(lapse)[before],
  }
}

t.test('nginx over mTLS', { skip: NGINX ? false : "no nginx binary found (.ci/run installs Debian's nginx)" }, async (t) => {
  const pki = makePki()
  const deployer = pki.client(DEPLOYER, 'deployer')
  const other = pki.client(OTHER, 'other')
  // Same names, another CA: nginx must refuse it before Lapse is asked.
  const rogueCa = makePki()
  const rogue = rogueCa.client(DEPLOYER, 'rogue')

  const lapse = await startDecisionService(t, { LAPSE_CLIENT_CERT_HEADER: 'x-forwarded-client-cert' }, ROUTES)
  const front = await startNginx(t, lapse, { certFile: pki.server.certFile, keyFile: pki.server.keyFile, clientCaFile: pki.ca.certFile })
  const agents = {
    none: clientAgent(pki),
    deployer: clientAgent(pki, deployer),
    other: clientAgent(pki, other),
    rogue: clientAgent(pki, rogue),
  }
  t.teardown(() => Promise.all(Object.values(agents).map((a) => a.close())))
  const bound = await mint({ cnf: { 'x5t#S256': deployer.thumbprint } })
  const plain = await mint()

  t.test('a token bound to the certificate nginx verified reaches the upstream', async (t) => {
    const calls = lapse.upstream.calls
    const res = await through(lapse, front, agents.deployer, '/orders/1', { authorization: `Bearer ${bound}` })
    t.equal(res.status, 200)
    t.equal(lapse.upstream.calls, calls + 1)
    t.equal(lapse.upstream.requests.at(-1)!.headers['x-auth-subject'], 'ci-deployer')
    t.match(res.audit, { decision: 'allow', reason: 'ok', decision_api: 'nginx', binding: 'mtls', key_thumbprint: deployer.thumbprint })
  })

  t.test('the bound token with another certificate, or none, is refused and never reaches the upstream', async (t) => {
    const calls = lapse.upstream.calls
    for (const who of ['other', 'none'] as const) {
      const res = await through(lapse, front, agents[who], '/orders/1', { authorization: `Bearer ${bound}` })
      t.equal(res.status, 401, `${who}: 401`)
      t.match(res.headers['www-authenticate'], CHALLENGE.invalidToken, `${who}: Lapse's challenge`)
      t.equal(JSON.parse(res.body).error, 'invalid_token')
      t.equal(res.audit?.reason, 'mtls_key_mismatch', `${who}: mtls_key_mismatch`)
    }
    t.equal(lapse.upstream.calls, calls, 'nothing refused reached the upstream')
  })

  t.test("a client's own X-Forwarded-Client-Cert never stands in for the certificate nginx verified", async (t) => {
    const calls = lapse.upstream.calls
    const forged = { 'x-forwarded-client-cert': forgedXfcc(deployer) }
    for (const who of ['none', 'other'] as const) {
      const res = await through(lapse, front, agents[who], '/orders/1', { authorization: `Bearer ${bound}`, ...forged })
      t.equal(res.status, 401, `${who} + forged header: 401`)
      t.equal(res.audit?.reason, 'mtls_key_mismatch')
      const peer = await through(lapse, front, agents[who], '/deploy/1', { authorization: `Bearer ${plain}`, ...forged })
      t.equal(peer.status, 403, `${who} + forged header on a peers route: 403`)
      t.equal(peer.audit?.reason, 'peer_not_allowed')
    }
    t.equal(lapse.upstream.calls, calls, 'nothing refused reached the upstream')
  })

  t.test('a peers rule is decided on the SPIFFE ID of the certificate nginx verified', async (t) => {
    const calls = lapse.upstream.calls
    const ok = await through(lapse, front, agents.deployer, '/deploy/1', { authorization: `Bearer ${plain}` })
    t.equal(ok.status, 200, 'the named workload passes')
    t.equal(lapse.upstream.calls, calls + 1)
    for (const who of ['other', 'none'] as const) {
      const res = await through(lapse, front, agents[who], '/deploy/1', { authorization: `Bearer ${plain}` })
      t.equal(res.status, 403, `${who}: 403`)
      t.equal(res.headers['www-authenticate'], undefined, `${who}: no challenge (another token would not help)`)
      t.equal(res.audit?.reason, 'peer_not_allowed')
    }
    t.equal(lapse.upstream.calls, calls + 1, 'the refused ones did not reach the upstream')
  })

  t.test('an unbound token needs no certificate on a route without peers', async (t) => {
    const res = await through(lapse, front, agents.none, '/orders/1', { authorization: `Bearer ${plain}` })
    t.equal(res.status, 200)
    t.match(res.audit, { decision: 'allow', reason: 'ok' })
    t.equal(res.audit?.binding, undefined)
  })

  t.test('a certificate from another CA is refused by nginx; Lapse is not asked', async (t) => {
    const calls = lapse.upstream.calls
    const before = decisions(lapse).length
    const res = await through(lapse, front, agents.rogue, '/orders/1', { authorization: `Bearer ${bound}` }, false)
    t.equal(res.status, 400, "nginx's answer to a certificate it could not verify")
    t.equal(decisions(lapse).length, before, 'no decision')
    t.equal(lapse.upstream.calls, calls)
  })
})
