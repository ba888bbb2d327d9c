// Lapse's DPoP proof check (src/bind/dpop.ts, hand-written, on the hot path) held to a second
// implementation nobody here wrote: oauth4webapi's resource-server check (validateJwtAccessToken
// with a DPoP proof). Valid proofs come from panva's `dpop` package; each mutation changes one
// header member or claim. Both must accept the same proofs and refuse the same ones. Where the
// two differ by design (oauth4webapi's iat window is ±300 s; Lapse's is LAPSE_DPOP_MAX_AGE plus
// the skew behind and the skew ahead; single use is Lapse's alone) the cases stay outside the gap.
import { randomUUID } from 'node:crypto'
import t from 'tap'
import * as oauth from 'oauth4webapi'
import { checkProof } from '../../src/bind/dpop.js'
import { createMemoryReplayCache } from '../../src/bind/replay-memory.js'
import { systemClock } from '../../src/core/clock.js'
import { normalizeTarget } from '../../src/target/request-target.js'
import { AUDIENCE, ISSUER, testKeys } from '../fixtures/keys.js'
import { newHolder, type Holder } from './dpop-helpers.js'

const keys = await testKeys()
const ORIGIN = 'https://rs.example'
const URL_ = `${ORIGIN}/orders/1`
const as: oauth.AuthorizationServer = { issuer: ISSUER, jwks_uri: 'https://issuer.test/jwks' }
const jwksFetch = (async () => new Response(JSON.stringify(keys.jwks), { headers: { 'content-type': 'application/json' } })) as typeof fetch

async function theirs(token: string, proof: string | undefined): Promise<boolean> {
  const headers = new Headers({ authorization: `DPoP ${token}` })
  if (proof !== undefined) headers.set('dpop', proof)
  try {
    await oauth.validateJwtAccessToken(as, new Request(URL_, { method: 'GET', headers }), AUDIENCE, {
      [oauth.customFetch]: jwksFetch,
      requireDPoP: true,
    })
    return true
  } catch {
    return false
  }
}

async function ours(token: string, proof: string | undefined, jkt: string): Promise<boolean> {
  const policy = {
    algorithms: new Set(['ES256', 'ES384', 'ES512', 'RS256', 'PS256', 'EdDSA', 'Ed25519']),
    maxAgeS: 270,
    clockSkewS: 30,
    publicOrigins: new Set([ORIGIN]),
    nonces: undefined,
    // Fresh for every proof: single use is compared elsewhere (oauth4webapi keeps no replay state).
    replay: createMemoryReplayCache({ clock: systemClock }),
    clock: systemClock,
  }
  const normalizePath = (p: string) => {
    const n = normalizeTarget(p)
    return 'reason' in n ? undefined : n.path
  }
  const got = await checkProof(
    { method: 'GET', path: '/orders/1', host: 'rs.example', proofs: proof === undefined ? [] : [proof], token, jkt, normalizePath },
    policy,
  )
  return 'binding' in got
}

type Case = [name: string, make: (h: Holder, token: string) => Promise<string | undefined>]
const nowS = () => Math.floor(Date.now() / 1000)
const CASES: Case[] = [
  ['valid, from the dpop package', (h, token) => h.proof(URL_, 'GET', token)],
  ['valid, signed with jose', (h, token) => h.mutated({ htu: URL_, htm: 'GET', token })],
  ['htu with a query and a fragment', (h, token) => h.proof(`${URL_}?a=1#f`, 'GET', token)],
  ['htu with an upper-case host and the default port', (h, token) => h.proof('https://RS.example:443/orders/1', 'GET', token)],
  ['no proof', async () => undefined],
  ['not a JWS', async () => 'a.b'],
  ['typ JWT', (h, token) => h.mutated({ htu: URL_, htm: 'GET', token, header: { typ: 'JWT' } })],
  ['no typ', (h, token) => h.mutated({ htu: URL_, htm: 'GET', token, header: { typ: undefined } })],
  ['no jwk', (h, token) => h.mutated({ htu: URL_, htm: 'GET', token, header: { jwk: undefined } })],
  ['htm POST', (h, token) => h.proof(URL_, 'POST', token)],
  ['htu of another path', (h, token) => h.proof(`${ORIGIN}/orders/2`, 'GET', token)],
  ['htu of another host', (h, token) => h.proof('https://other.example/orders/1', 'GET', token)],
  ['htu over http', (h, token) => h.proof('http://rs.example/orders/1', 'GET', token)],
  ['htu of another port', (h, token) => h.proof('https://rs.example:8443/orders/1', 'GET', token)],
  ['htu not a URL', (h, token) => h.mutated({ htu: 'orders/1', htm: 'GET', token })],
  ['ath of another token', async (h) => h.proof(URL_, 'GET', await keys.mint())],
  ['no ath', (h, token) => h.mutated({ htu: URL_, htm: 'GET', token, claims: { ath: undefined } })],
  ['no jti', (h, token) => h.mutated({ htu: URL_, htm: 'GET', token, claims: { jti: undefined } })],
  ['jti a number', (h, token) => h.mutated({ htu: URL_, htm: 'GET', token, claims: { jti: 42 } })],
  ['no iat', (h, token) => h.mutated({ htu: URL_, htm: 'GET', token, claims: { iat: undefined } })],
  ['iat 400 s old', (h, token) => h.mutated({ htu: URL_, htm: 'GET', token, claims: { iat: nowS() - 400 } })],
  ['iat 400 s ahead', (h, token) => h.mutated({ htu: URL_, htm: 'GET', token, claims: { iat: nowS() + 400 } })],
  ['iat 200 s old', (h, token) => h.mutated({ htu: URL_, htm: 'GET', token, claims: { iat: nowS() - 200 } })],
  [
    'a broken signature',
    async (h, token) => {
      const p = await h.proof(URL_, 'GET', token)
      const sig = Buffer.from(p.split('.')[2]!, 'base64url')
      sig[5]! ^= 0x01
      return `${p.split('.').slice(0, 2).join('.')}.${sig.toString('base64url')}`
    },
  ],
  [
    'the jwk of another key',
    async (h, token) =>
      h.mutated({
        htu: URL_,
        htm: 'GET',
        token,
        header: { jwk: (await newHolder(h.pair.privateKey.algorithm.name === 'RSASSA-PKCS1-v1_5' ? 'RS256' : 'ES256')).jwk },
      }),
  ],
]

for (const alg of ['ES256', 'RS256', 'PS256', 'Ed25519'] as const) {
  t.test(`${alg}: Lapse and oauth4webapi agree on every proof`, async (t) => {
    const holder = await newHolder(alg)
    const token = await keys.mint({ cnf: { jkt: holder.jkt }, client_id: 'ci', jti: randomUUID() }, { header: { typ: 'at+jwt' } })
    for (const [name, make] of CASES) {
      const proof = await make(holder, token)
      const [a, b] = await Promise.all([ours(token, proof, holder.jkt), theirs(token, proof)])
      t.equal(a, b, `${name}: Lapse ${a ? 'accepts' : 'refuses'}, oauth4webapi ${b ? 'accepts' : 'refuses'}`)
    }
    // The token bound to another key: both refuse a proof that is otherwise valid.
    const other = await newHolder(alg)
    const proof = await other.proof(URL_, 'GET', token)
    t.equal(await ours(token, proof, holder.jkt), false)
    t.equal(await theirs(token, proof), false)
    t.equal(await ours(token, await holder.proof(URL_, 'GET', token), holder.jkt), true, 'the control case passes')
  })
}
