// DPoP across sidecars: two Lapse instances sharing one redis-server refuse a proof the other has
// accepted, accept each other's nonces, and fail closed when the replay cache cannot answer.
// Also a WebSocket upgrade, whose proof is checked once, at the upgrade.
import { mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t, { type Test } from 'tap'
import WebSocket from 'ws'
import * as oauth from 'oauth4webapi'
import { runApp, sendAudited, type Lapse } from '../fixtures/app.js'
import { assertDenied } from '../fixtures/deny.js'
import { testKeys } from '../fixtures/keys.js'
import { waitFor } from '../fixtures/redis-server.js'
import { redisEnv, redisFor } from '../revocation-e2e/helpers.js'
import { startLongLivedUpstream } from '../long-lived/upstream.js'
import { newHolder } from './dpop-helpers.js'

const keys = await testKeys()
const holder = await newHolder()
const redis = await redisFor(t)
// Both sidecars serve one public origin, so one proof is valid at either.
const ORIGIN = 'https://orders.example.com'
const HTU = `${ORIGIN}/orders/1`
const SECRET = 'a-nonce-secret-every-sidecar-shares-0123'
const dpopAuth = (token: string): [string, string] => ['authorization', `DPoP ${token}`]

async function sidecar(t: Test, prefix: string, env: Record<string, string> = {}, clock?: { now(): number }): Promise<Lapse> {
  const lapse = await runApp(t, { env: redisEnv(redis, prefix, { LAPSE_PUBLIC_ORIGINS: ORIGIN, ...env }), ...(clock ? { clock } : {}) })
  await waitFor(() => (lapse.running.deps.dpop!.replay as unknown as { ready(): boolean }).ready(), 5000, 'replay cache connected')
  return lapse
}

t.test('a proof accepted at one sidecar is refused at the other: dpop_replayed', async (t) => {
  const a = await sidecar(t, 'fleet-replay')
  const b = await sidecar(t, 'fleet-replay')
  const token = await keys.mint({ cnf: { jkt: holder.jkt } })
  const proof = await holder.proof(HTU, 'GET', token)
  t.equal((await sendAudited(a, '/orders/1', { headers: [dpopAuth(token), ['dpop', proof]] })).res.status, 200)
  const again = await sendAudited(b, '/orders/1', { headers: [dpopAuth(token), ['dpop', proof]] })
  assertDenied(t, b, again.res, again.audit, {
    status: 401,
    challenge: /^DPoP realm="lapse", algs="[^"]+", error="invalid_dpop_proof"/,
    error: 'invalid_dpop_proof',
    reason: 'dpop_replayed',
  })
  t.equal(
    (await sendAudited(b, '/orders/1', { headers: [dpopAuth(token), ['dpop', await holder.proof(HTU, 'GET', token)]] })).res.status,
    200,
    'a new proof passes',
  )
})

t.test('the replay cache frozen past its budget → 503 dpop_replay_unavailable, upstream untouched', async (t) => {
  const own = await redisFor(t)
  const lapse = await runApp(t, { env: redisEnv(own, 'frozen', { LAPSE_PUBLIC_ORIGINS: ORIGIN, LAPSE_REVOCATION_TIMEOUT: '100' }) })
  await waitFor(() => (lapse.running.deps.dpop!.replay as unknown as { ready(): boolean }).ready(), 5000, 'replay cache connected')
  const token = await keys.mint({ cnf: { jkt: holder.jkt } })
  own.pause()
  t.teardown(() => own.resume())
  const got = await sendAudited(lapse, '/orders/1', { headers: [dpopAuth(token), ['dpop', await holder.proof(HTU, 'GET', token)]] })
  assertDenied(t, lapse, got.res, got.audit, {
    status: 503,
    challenge: undefined,
    error: 'temporarily_unavailable',
    reason: 'dpop_replay_unavailable',
  })
  own.resume()
})

t.test(
  'nonces: issued by one sidecar, accepted by the other; the previous step still passes and gets a fresh one; older is refused',
  async (t) => {
    let offsetMs = 0
    // A wide skew on both, so a proof made now is still fresh when the second sidecar's clock is two steps on.
    const env = { LAPSE_DPOP_NONCE: 'true', LAPSE_DPOP_NONCE_SECRET: SECRET, LAPSE_CLOCK_SKEW: '150' }
    const a = await sidecar(t, 'fleet-nonce', env)
    const b = await sidecar(t, 'fleet-nonce', env, { now: () => Date.now() + offsetMs })
    const token = await keys.mint({ cnf: { jkt: holder.jkt } })
    const NONCE_CHALLENGE = /^DPoP realm="lapse", algs="[^"]+", error="use_dpop_nonce", error_description="[^"]+"$/

    const first = await sendAudited(a, '/orders/1', { headers: [dpopAuth(token), ['dpop', await holder.proof(HTU, 'GET', token)]] })
    assertDenied(t, a, first.res, first.audit, {
      status: 401,
      challenge: NONCE_CHALLENGE,
      error: 'use_dpop_nonce',
      reason: 'dpop_nonce_required',
    })
    const nonce = first.res.headers['dpop-nonce'] as string
    t.match(nonce, /^[0-9a-z]+\.[A-Za-z0-9_-]{22}$/, 'DPoP-Nonce carries the nonce')

    t.equal(
      (await sendAudited(b, '/orders/1', { headers: [dpopAuth(token), ['dpop', await holder.proof(HTU, 'GET', token, nonce)]] })).res
        .status,
      200,
      'the other sidecar accepts it',
    )

    offsetMs = 60_000
    const next = await sendAudited(b, '/orders/1', { headers: [dpopAuth(token), ['dpop', await holder.proof(HTU, 'GET', token, nonce)]] })
    t.equal(next.res.status, 200, 'a nonce of the previous step passes')
    t.match(next.res.headers['dpop-nonce'], /^[0-9a-z]+\./, 'with a fresh nonce on the allowed answer')
    t.not(next.res.headers['dpop-nonce'], nonce)

    offsetMs = 125_000
    const stale = await sendAudited(b, '/orders/1', { headers: [dpopAuth(token), ['dpop', await holder.proof(HTU, 'GET', token, nonce)]] })
    assertDenied(t, b, stale.res, stale.audit, {
      status: 401,
      challenge: NONCE_CHALLENGE,
      error: 'use_dpop_nonce',
      reason: 'dpop_nonce_required',
      upstreamCalls: 2,
    })
    t.ok(stale.res.headers['dpop-nonce'], 'with the current nonce')

    const forged = `${nonce.split('.')[0]}.${'A'.repeat(22)}`
    offsetMs = 0
    const bad = await sendAudited(b, '/orders/1', { headers: [dpopAuth(token), ['dpop', await holder.proof(HTU, 'GET', token, forged)]] })
    assertDenied(t, b, bad.res, bad.audit, {
      status: 401,
      challenge: NONCE_CHALLENGE,
      error: 'use_dpop_nonce',
      reason: 'dpop_nonce_required',
      upstreamCalls: 2,
    })
  },
)

t.test("oauth4webapi's DPoP handle follows the nonce challenge and retries", async (t) => {
  const lapse = await runApp(t, { env: { LAPSE_DPOP_NONCE: 'true', LAPSE_DPOP_NONCE_SECRET: SECRET } })
  const h = await newHolder()
  const handle = oauth.DPoP({}, h.pair)
  const token = await keys.mint({ cnf: { jkt: h.jkt } })
  const url = new URL(`${lapse.url}/orders/1`)
  const options = { DPoP: handle, [oauth.allowInsecureRequests]: true }
  let err: unknown
  try {
    await oauth.protectedResourceRequest(token, 'GET', url, undefined, undefined, options)
  } catch (e) {
    err = e
  }
  t.ok(oauth.isDPoPNonceError(err), 'the first answer asks for a nonce')
  const res = await oauth.protectedResourceRequest(token, 'GET', url, undefined, undefined, options)
  t.equal(res.status, 200, 'the retry with the nonce passes')
  t.equal(lapse.upstream.calls, 1)
})

t.test('LAPSE_DPOP_NONCE=true without a secret fails the start', async (t) => {
  const { loadConfig } = await import('../../src/config/load.js')
  const base = {
    LAPSE_UPSTREAM: 'http://127.0.0.1:1',
    LAPSE_ISSUER: 'https://i',
    LAPSE_AUDIENCE: 'a',
    LAPSE_JWKS_URL: 'http://127.0.0.1:2/jwks',
  }
  t.throws(() => loadConfig({ ...base, LAPSE_DPOP_NONCE: 'true' }), {
    code: 'ERR_CONFIG_INVALID',
    message: /LAPSE_DPOP_NONCE: .*LAPSE_DPOP_NONCE_SECRET/,
  })
  t.throws(() => loadConfig({ ...base, LAPSE_DPOP_NONCE_SECRET: 'short' }), {
    code: 'ERR_CONFIG_INVALID',
    message: /LAPSE_DPOP_NONCE_SECRET: at least 32/,
  })
  t.throws(() => loadConfig({ ...base, LAPSE_DPOP_ALGORITHMS: 'HS256' }), { code: 'ERR_CONFIG_INVALID', message: /LAPSE_DPOP_ALGORITHMS/ })
  t.throws(() => loadConfig({ ...base, LAPSE_PUBLIC_ORIGINS: 'https://x.example/path' }), {
    code: 'ERR_CONFIG_INVALID',
    message: /LAPSE_PUBLIC_ORIGINS/,
  })
  const dir = mkdtempSync(join(tmpdir(), 'lapse-nonce-'))
  writeFileSync(join(dir, 'secret'), `${SECRET}\n`)
  writeFileSync(join(dir, 'short'), 'short\n')
  t.equal(
    loadConfig({ ...base, LAPSE_DPOP_NONCE: 'true', LAPSE_DPOP_NONCE_SECRET_FILE: join(dir, 'secret') }).dpop.nonceSecret,
    SECRET,
    'the file, trimmed',
  )
  t.throws(() => loadConfig({ ...base, LAPSE_DPOP_NONCE: 'true', LAPSE_DPOP_NONCE_SECRET_FILE: join(dir, 'short') }), {
    code: 'ERR_CONFIG_INVALID',
    message: /LAPSE_DPOP_NONCE_SECRET_FILE: .*32/,
  })
  t.throws(() => loadConfig({ ...base, LAPSE_DPOP_NONCE: 'true', LAPSE_DPOP_NONCE_SECRET_FILE: join(dir, 'missing') }), {
    code: 'ERR_CONFIG_INVALID',
    message: /LAPSE_DPOP_NONCE_SECRET_FILE: cannot read/,
  })
  t.throws(
    () =>
      loadConfig({ ...base, LAPSE_DPOP_NONCE: 'true', LAPSE_DPOP_NONCE_SECRET: SECRET, LAPSE_DPOP_NONCE_SECRET_FILE: join(dir, 'secret') }),
    { code: 'ERR_CONFIG_INVALID', message: /not both/ },
  )
  t.equal(
    loadConfig({ ...base, LAPSE_DPOP_NONCE_SECRET: SECRET }).dpop.nonceSecret,
    undefined,
    'a secret without LAPSE_DPOP_NONCE makes no nonces',
  )
})

/** A WebSocket through Lapse with these headers: 'open', or the status it was answered. */
function upgrade(url: string, headers: Record<string, string>): Promise<{ ws?: WebSocket; status: number }> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url.replace(/^http/, 'ws'), { headers })
    ws.on('error', () => {})
    ws.once('open', () => resolve({ ws, status: 101 }))
    ws.once('unexpected-response', (req, res) => {
      req.destroy()
      resolve({ status: res.statusCode ?? 0 })
    })
    setTimeout(() => reject(new Error('no answer to the upgrade')), 5000).unref()
  })
}

t.test('a WebSocket upgrade is checked once, at the upgrade: a valid proof opens it, a replayed one is refused', async (t) => {
  const up = await startLongLivedUpstream(t)
  const lapse = await runApp(t, { upstream: up.upstream })
  const token = await keys.mint({ cnf: { jkt: holder.jkt } })
  const url = `${lapse.url}/orders/live`
  const proof = await holder.proof(url, 'GET', token)
  const opened = await upgrade(url, { authorization: `DPoP ${token}`, dpop: proof })
  t.equal(opened.status, 101)
  t.equal(up.upstream.requests.at(-1)?.headers['x-auth-binding'], 'dpop')
  opened.ws!.send('ping')
  t.equal(String(await new Promise((resolve) => opened.ws!.once('message', resolve))), 'ping', 'frames flow without further proofs')
  opened.ws!.close()
  t.equal((await upgrade(url, { authorization: `DPoP ${token}`, dpop: proof })).status, 401, 'the same proof again')
  t.equal((await upgrade(url, { authorization: `Bearer ${token}` })).status, 401, 'the Bearer downgrade')
  // The allowed upgrade's line is written when its WebSocket closes, so the order is not the requests'.
  await waitFor(() => lapse.lines.filter((l) => l.audit === 'decision').length === 3, 5000, 'three audit lines')
  t.same(
    lapse.lines
      .filter((l) => l.audit === 'decision')
      .map((l) => l.reason)
      .sort(),
    ['dpop_key_mismatch', 'dpop_replayed', 'ok'],
  )
  t.equal(up.upstream.calls, 1, 'only the allowed upgrade reached the upstream')
})
