// A mesh in front of Lapse terminates mTLS and says which certificate the client showed in Envoy's
// x-forwarded-client-cert. Trusted only with LAPSE_CLIENT_CERT_HEADER; otherwise removed.
import t from 'tap'
import { runApp, sendAudited } from '../fixtures/app.js'
import { makePki } from '../fixtures/certs.js'
import { assertDenied, CHALLENGE } from '../fixtures/deny.js'
import { testKeys } from '../fixtures/keys.js'
import { parseXfcc } from '../../src/bind/xfcc.js'

const pki = makePki()
const DEPLOYER = 'spiffe://prod.example/ns/ci/sa/deployer'
const deployer = pki.client(DEPLOYER, 'deployer')
const other = pki.client('spiffe://prod.example/ns/web/sa/frontend', 'other')
const ROUTES = [
  { path: '/deploy/**', scopes: ['orders:read'], peers: [DEPLOYER] },
  { path: '/orders/**', scopes: ['orders:read'] },
]
const element = (hash: string, uri: string) => `By=spiffe://prod.example/ns/orders/sa/api;Hash=${hash};Subject="/CN=x,O=a;b";URI=${uri}`
const TRUSTED = { LAPSE_CLIENT_CERT_HEADER: 'X-Forwarded-Client-Cert' }

t.test('parseXfcc: the last element, Hash or Cert, URI', async (t) => {
  const a = parseXfcc(element(deployer.hexHash, DEPLOYER))
  t.same([a?.thumbprint, a?.peer], [deployer.thumbprint, DEPLOYER], 'Hash and URI')
  const appended = parseXfcc(`${element(other.hexHash, 'spiffe://prod.example/ns/web/sa/frontend')},${element(deployer.hexHash, DEPLOYER)}`)
  t.equal(appended?.thumbprint, deployer.thumbprint, 'the element the last proxy appended')
  t.equal(appended?.peer, DEPLOYER)
  const cert = parseXfcc(`Cert="${encodeURIComponent(deployer.cert.toString())}"`)
  t.same([cert?.thumbprint, cert?.peer], [deployer.thumbprint, DEPLOYER], 'Cert alone: thumbprint and SAN from the certificate')
  t.equal(
    parseXfcc(`Hash=${other.hexHash};Cert="${encodeURIComponent(deployer.cert.toString())}"`),
    undefined,
    "a Hash that is not the Cert's",
  )
  t.equal(parseXfcc(`Hash=${deployer.hexHash};URI=${DEPLOYER};URI=spiffe://prod.example/x`)?.peer, undefined, 'two URI SANs: no SPIFFE ID')
  t.equal(parseXfcc(`Hash=${deployer.hexHash};URI=https://example.com/x`)?.peer, undefined, 'a URI that is not a SPIFFE ID')
  for (const bad of ['', 'Hash=zz', 'Hash', `Hash="${deployer.hexHash}`, `URI=${DEPLOYER}`, `Cert=not-a-pem`])
    t.equal(parseXfcc(bad), undefined, `refused: ${JSON.stringify(bad)}`)
})

t.test('trusted XFCC: the bound token matches the certificate the mesh saw; peers and X-Auth-Peer from URI', async (t) => {
  const lapse = await runApp(t, { env: TRUSTED, routes: ROUTES })
  const keys = await testKeys()
  const bound = await keys.mint({ cnf: { 'x5t#S256': deployer.thumbprint } })
  const xfcc = element(deployer.hexHash, DEPLOYER)
  const { res } = await sendAudited(lapse, '/deploy/1', {
    headers: [
      ['authorization', `Bearer ${bound}`],
      ['x-forwarded-client-cert', xfcc],
    ],
  })
  t.equal(res.status, 200)
  const got = lapse.upstream.requests.at(-1)!
  t.equal(got.headers['x-auth-peer'], DEPLOYER)
  t.equal(got.headers['x-forwarded-client-cert'], xfcc, "the mesh's header goes on upstream")

  const mismatch = await sendAudited(lapse, '/orders/1', {
    headers: [
      ['authorization', `Bearer ${bound}`],
      ['x-forwarded-client-cert', element(other.hexHash, DEPLOYER)],
    ],
  })
  assertDenied(t, lapse, mismatch.res, mismatch.audit, {
    status: 401,
    challenge: CHALLENGE.invalidToken,
    error: 'invalid_token',
    reason: 'mtls_key_mismatch',
    upstreamCalls: 1,
    token: bound,
  })
  const none = await sendAudited(lapse, '/orders/1', { headers: [['authorization', `Bearer ${bound}`]] })
  assertDenied(t, lapse, none.res, none.audit, {
    status: 401,
    challenge: CHALLENGE.invalidToken,
    error: 'invalid_token',
    reason: 'mtls_key_mismatch',
    upstreamCalls: 1,
  })
  const peer = await sendAudited(lapse, '/deploy/1', {
    headers: [
      ['authorization', `Bearer ${await keys.mint()}`],
      ['x-forwarded-client-cert', element(other.hexHash, 'spiffe://prod.example/ns/web/sa/frontend')],
    ],
  })
  assertDenied(t, lapse, peer.res, peer.audit, {
    status: 403,
    challenge: undefined,
    error: 'forbidden',
    reason: 'peer_not_allowed',
    upstreamCalls: 1,
  })
})

t.test('untrusted XFCC: a spoofed header binds nothing and is removed in every spelling', async (t) => {
  const lapse = await runApp(t, { routes: ROUTES })
  const keys = await testKeys()
  const xfcc = element(deployer.hexHash, DEPLOYER)
  const bound = await keys.mint({ cnf: { 'x5t#S256': deployer.thumbprint } })
  const spoofed = await sendAudited(lapse, '/orders/1', {
    headers: [
      ['authorization', `Bearer ${bound}`],
      ['x-forwarded-client-cert', xfcc],
    ],
  })
  assertDenied(t, lapse, spoofed.res, spoofed.audit, {
    status: 401,
    challenge: CHALLENGE.invalidToken,
    error: 'invalid_token',
    reason: 'mtls_key_mismatch',
  })
  const peer = await sendAudited(lapse, '/deploy/1', {
    headers: [
      ['authorization', `Bearer ${await keys.mint()}`],
      ['x-forwarded-client-cert', xfcc],
    ],
  })
  assertDenied(t, lapse, peer.res, peer.audit, { status: 403, challenge: undefined, error: 'forbidden', reason: 'peer_not_allowed' })

  const { res } = await sendAudited(lapse, '/orders/1', {
    headers: [
      ['authorization', `Bearer ${await keys.mint()}`],
      ['x-forwarded-client-cert', xfcc],
      ['X_Forwarded_Client_Cert', xfcc],
      ['x.forwarded.client.cert', xfcc],
      ['x-auth-peer', DEPLOYER],
    ],
  })
  t.equal(res.status, 200)
  const got = lapse.upstream.requests.at(-1)!
  const names = Object.keys(got.headers)
  t.same(
    names.filter((n) => n.replace(/[^a-z0-9]/g, '-') === 'x-forwarded-client-cert'),
    [],
    'no spelling of the header reaches the upstream',
  )
  t.equal(got.headers['x-auth-peer'], undefined, 'nor a peer')
})

t.test('trusted XFCC: folded spellings are still removed, the configured one kept', async (t) => {
  const lapse = await runApp(t, { env: TRUSTED, routes: ROUTES })
  const keys = await testKeys()
  const xfcc = element(deployer.hexHash, DEPLOYER)
  await sendAudited(lapse, '/orders/1', {
    headers: [
      ['authorization', `Bearer ${await keys.mint()}`],
      ['x-forwarded-client-cert', xfcc],
      ['X_Forwarded_Client_Cert', element(other.hexHash, DEPLOYER)],
    ],
  })
  const got = lapse.upstream.requests.at(-1)!
  t.same(
    Object.keys(got.headers).filter((n) => n.replace(/[^a-z0-9]/g, '-') === 'x-forwarded-client-cert'),
    ['x-forwarded-client-cert'],
  )
})
