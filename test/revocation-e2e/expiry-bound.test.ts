// `expires_at` on a revocation write is bounded like `issued_before`: with the lifetime policy on,
// no later than the later of T and now plus LAPSE_MAX_TOKEN_LIFETIME + LAPSE_CLOCK_SKEW; with it
// off, at most 365 days ahead. Past the bound: 400 with a message that says it, nothing written.
import t, { type Test } from 'tap'
import { manualClock } from '../../src/core/clock.js'
import { runApp } from '../fixtures/app.js'
import { admin } from './helpers.js'

const T0_MS = Date.parse('2030-01-01T00:00:00Z')
const NOW_S = T0_MS / 1000
const POLICY_S = 3600 + 30
const YEAR_S = 365 * 86_400

const start = (t: Test, env: Record<string, string> = {}) => runApp(t, { clock: manualClock(T0_MS), env })
const post = (lapse: Awaited<ReturnType<typeof start>>, body: Record<string, unknown>) =>
  admin(lapse, 'POST', '/v1/revocations', { body: { claim: 'sub', value: 'ci-deployer', ...body } })

t.test('lifetime policy on: expires_at up to max(T, now) + lifetime + skew, not one second more', async (t) => {
  const lapse = await start(t)
  const over = await post(lapse, { expires_at: NOW_S + POLICY_S + 1 })
  t.equal(over.status, 400, 'a second past now + lifetime + skew → 400')
  t.equal(over.json().error, 'invalid_request')
  t.match(
    over.json().error_description,
    /^"expires_at" may be at most 2030-01-01T01:00:30\.000Z \(the later of "issued_before" and now, plus LAPSE_MAX_TOKEN_LIFETIME and LAPSE_CLOCK_SKEW\)$/,
  )
  const decade = await post(lapse, { expires_at: '2040-01-01T00:00:00Z' })
  t.equal(decade.status, 400, 'a typo of a decade → 400')
  t.equal((await admin(lapse, 'GET', '/v1/revocations/sub/ci-deployer')).status, 404, 'nothing written')

  const at = await post(lapse, { expires_at: NOW_S + POLICY_S })
  t.equal(at.status, 201, 'exactly at the bound → 201')
  t.equal(at.json().expires_at, NOW_S + POLICY_S)
  // A jti entry ignores T: one whose T is an hour back may still last as long as a token alive now.
  const past = await admin(lapse, 'POST', '/v1/revocations', {
    body: { claim: 'jti', value: 'j-1', issued_before: NOW_S - 3000, expires_at: NOW_S + POLICY_S },
  })
  t.equal(past.status, 201, 'T in the past: the bound counts from now')
  t.equal(
    past.json().expires_at,
    NOW_S + POLICY_S + 30,
    'a jti entry lasts at least now + lifetime + twice the skew, whatever expires_at says',
  )
  const ahead = await post(lapse, { value: 'ahead', issued_before: NOW_S + 3600, expires_at: NOW_S + 3600 + POLICY_S })
  t.equal(ahead.status, 201, 'T ahead: the bound counts from T')
  t.equal(
    (await post(lapse, { value: 'ahead', issued_before: NOW_S + 3600, expires_at: NOW_S + 3600 + POLICY_S + 1 })).status,
    400,
    'and not past it',
  )
})

t.test('lifetime policy off: expires_at at most 365 days ahead', async (t) => {
  const lapse = await start(t, { LAPSE_MAX_TOKEN_LIFETIME: '0' })
  const over = await post(lapse, { expires_at: NOW_S + YEAR_S + 1 })
  t.equal(over.status, 400)
  t.match(
    over.json().error_description,
    /^"expires_at" may be at most 2031-01-01T00:00:00\.000Z \(365 days from now while LAPSE_MAX_TOKEN_LIFETIME is 0\)$/,
  )
  t.equal((await admin(lapse, 'GET', '/v1/revocations/sub/ci-deployer')).status, 404, 'nothing written')
  const at = await post(lapse, { expires_at: NOW_S + YEAR_S })
  t.equal(at.status, 201)
  t.equal(at.json().expires_at, NOW_S + YEAR_S)
})

t.test('a value holding a lone surrogate → 400, not a failed write', async (t) => {
  const lapse = await start(t)
  const res = await admin(lapse, 'POST', '/v1/revocations', { body: '{"claim":"sub","value":"ci\\ud800"}' })
  t.equal(res.status, 400)
  t.match(res.json().error_description, /"value" is not well-formed Unicode/)
})

t.test('a jti entry written with a T in the past lasts as long as a token alive now, and keeps refusing it', async (t) => {
  const clock = manualClock(T0_MS)
  const lapse = await runApp(t, { clock })
  const { testKeys, defaultClaims } = await import('../fixtures/keys.js')
  const { bearer, send } = await import('../fixtures/app.js')
  const token = await (await testKeys()).mint(
    { ...defaultClaims(NOW_S - 10), jti: 'j-late', iat: NOW_S - 10, exp: NOW_S + 3590 },
    { nowS: NOW_S },
  )
  t.equal((await send(`${lapse.url}/orders/1`, { headers: [bearer(token)] })).status, 200, 'valid before the revocation')
  const written = await admin(lapse, 'POST', '/v1/revocations', { body: { claim: 'jti', value: 'j-late', issued_before: NOW_S - 3000 } })
  t.equal(written.status, 201)
  t.equal(written.json().expires_at, NOW_S + 3600 + 60, 'now + lifetime + twice the skew, not T + lifetime + skew')
  clock.advance(700_000)
  t.equal((await send(`${lapse.url}/orders/1`, { headers: [bearer(token)] })).status, 401, 'still refused after T + lifetime + skew')
})
