// The revocation admin API (DESIGN.md "Admin API") against a real Redis: who may write, what a
// bad body gets, read and lift, the audit trail, and "201 only once Redis has it".
import t, { type Test } from 'tap'
import { ADMIN_TOKEN, runApp, send, waitFor } from '../fixtures/app.js'
import { ISSUER } from '../fixtures/keys.js'
import { admin, entryKey, nowS, OTHER_ISSUER, redisEnv, redisFor, revocationAudits, revoke, untilReady } from './helpers.js'

const redis = await redisFor(t)
const raw = redis.client()
// The defaults: LAPSE_MAX_TOKEN_LIFETIME 3600 + LAPSE_CLOCK_SKEW 30.
const ENTRY_LIFETIME_S = 3630
let prefixes = 0

async function lapseOn(t: Test, extra: Record<string, string | undefined> = {}) {
  const prefix = `admin${++prefixes}`
  const lapse = await runApp(t, { env: redisEnv(redis, prefix, { LAPSE_ISSUER: `${ISSUER},${OTHER_ISSUER}`, ...extra }) })
  await untilReady(lapse)
  return { lapse, prefix }
}
const keysUnder = (prefix: string) => raw.keys(`{${prefix}}:*`)

t.test('writes need the admin token: missing → 401, wrong → 401, right → 201', async (t) => {
  const { lapse, prefix } = await lapseOn(t)
  const body = { claim: 'sub', value: 'ci-deployer', reason: 'pipeline compromised' }

  const missing = await admin(lapse, 'POST', '/v1/revocations', { body, token: null })
  t.equal(missing.status, 401, 'no token → 401')
  t.equal(missing.headers['www-authenticate'], 'Bearer realm="lapse-admin"')
  t.equal(missing.json().error, 'unauthorized')
  const wrong = await admin(lapse, 'POST', '/v1/revocations', { body, token: 'not-the-admin-token-at-all' })
  t.equal(wrong.status, 401, 'wrong token → 401')
  const basic = await send(`${lapse.adminUrl}/v1/revocations`, {
    method: 'POST',
    body: JSON.stringify(body),
    headers: [
      ['authorization', `Basic ${Buffer.from(`admin:${ADMIN_TOKEN}`).toString('base64')}`],
      ['content-type', 'application/json'],
    ],
  })
  t.equal(basic.status, 401, 'another scheme → 401')
  t.same(await keysUnder(prefix), [], 'nothing written by a refused request')

  const right = await admin(lapse, 'POST', '/v1/revocations', { body })
  t.equal(right.status, 201, 'right token → 201')
  const entry = right.json()
  t.match(entry, { claim: 'sub', value: 'ci-deployer', iss: null, reason: 'pipeline compromised', by: 'admin' })
  t.ok(Math.abs((entry.issued_before as number) - nowS()) <= 2, 'T is the time of the write')
  t.equal(entry.expires_at, entry.issued_before + ENTRY_LIFETIME_S, 'expires at T + max lifetime + skew')

  t.equal((await admin(lapse, 'GET', '/v1/revocations/sub/ci-deployer', { token: null })).status, 401, 'a read needs the token too')
  t.equal(
    (await admin(lapse, 'DELETE', '/v1/revocations/sub/ci-deployer', { token: 'wrong-wrong-wrong-wrong' })).status,
    401,
    'a lift with a wrong token → 401',
  )
  t.ok(await raw.get(entryKey(prefix, 'sub', 'ci-deployer')), 'the refused lift left the entry in place')
})

t.test('no admin token configured → writes answer 403', async (t) => {
  const { lapse, prefix } = await lapseOn(t, { LAPSE_ADMIN_TOKEN: undefined })
  const post = await admin(lapse, 'POST', '/v1/revocations', { body: { claim: 'sub', value: 'x' } })
  t.equal(post.status, 403, 'POST → 403')
  t.match(post.json().error_description, /LAPSE_ADMIN_TOKEN/, 'says what to configure')
  t.equal((await admin(lapse, 'DELETE', '/v1/revocations/sub/x')).status, 403, 'DELETE → 403')
  // Entries name identities and say why they lost access: reads are closed too (docs/revocation.md#admin-api).
  t.equal((await admin(lapse, 'GET', '/v1/revocations/sub/x')).status, 403, 'GET → 403')
  t.equal(
    (await admin(lapse, 'POST', '/v1/revocations', { body: { claim: 'sub', value: 'x' }, token: null })).status,
    403,
    'without a token either',
  )
  t.same(await keysUnder(prefix), [], 'nothing written')
})

t.test('bad bodies → 400 invalid_request with a clear message, nothing written', async (t) => {
  const { lapse, prefix } = await lapseOn(t)
  const cases: Array<[name: string, body: unknown, message: RegExp, contentType?: string | null]> = [
    ['not JSON', '{"claim": "sub", "value":', /not valid JSON/],
    ['wrong content-type', JSON.stringify({ claim: 'sub', value: 'x' }), /must be application\/json/, 'text/plain'],
    ['no content-type', JSON.stringify({ claim: 'sub', value: 'x' }), /must be application\/json/, null],
    ['not an object', '["sub", "x"]', /JSON object/],
    ['unknown field', { claim: 'sub', value: 'x', who: 'me' }, /unknown field "who"/],
    ['claim missing', { value: 'x' }, /"claim" is required/],
    ['claim not revocable', { claim: 'email', value: 'x@example.com' }, /"email" is not a revocable claim/],
    ['empty value', { claim: 'sub', value: '' }, /"value" must be a non-empty string/],
    ['value not a string', { claim: 'sub', value: 42 }, /"value" must be a non-empty string/],
    [
      'bad issued_before',
      { claim: 'sub', value: 'x', issued_before: 'yesterday' },
      /"issued_before" must be epoch seconds or an RFC 3339 time/,
    ],
    ['fractional issued_before', { claim: 'sub', value: 'x', issued_before: 1.5 }, /"issued_before" must be/],
    ['issued_before long past', { claim: 'sub', value: 'x', issued_before: 1000 }, /expired already/],
    [
      'issued_before a year ahead (a typo would pin the entry)',
      { claim: 'sub', value: 'x', issued_before: nowS() + 365 * 86_400 },
      /at most 24 hours in the future/,
    ],
    ['iss not configured', { claim: 'sub', value: 'x', iss: 'https://evil.test' }, /"iss" must be one of the configured issuers/],
    ['reason not a string', { claim: 'sub', value: 'x', reason: ['a'] }, /"reason" must be a string/],
    ['body over 16 KiB', { claim: 'sub', value: 'x', reason: 'a'.repeat(20_000) }, /too large/],
  ]
  for (const [name, body, message, contentType] of cases) {
    const res = await admin(lapse, 'POST', '/v1/revocations', { body, ...(contentType === undefined ? {} : { contentType }) })
    t.equal(res.status, 400, `${name} → 400`)
    t.equal(res.json().error, 'invalid_request', `${name}: invalid_request`)
    t.match(res.json().error_description, message, `${name}: ${String(res.json().error_description)}`)
  }
  t.same(await keysUnder(prefix), [], 'nothing written')
})

t.test('GET → 200 with the entry or 404; DELETE → 204 or 404; ?iss= addresses an issuer-bound entry', async (t) => {
  const { lapse } = await lapseOn(t)
  t.equal((await admin(lapse, 'GET', '/v1/revocations/sub/nobody')).status, 404, 'GET of nothing → 404')
  t.equal((await admin(lapse, 'DELETE', '/v1/revocations/sub/nobody')).status, 404, 'DELETE of nothing → 404')
  const badEscape = await admin(lapse, 'GET', '/v1/revocations/sub/%E0%A4%A')
  t.equal(badEscape.status, 400, 'a malformed escape in the path → 400, not 500')
  t.match(badEscape.json(), { error: 'invalid_request', error_description: /percent-encoding/ })

  const stored = await revoke(t, lapse, { claim: 'client_id', value: 'ci/runner 7', reason: 'leaked' })
  const path = `/v1/revocations/client_id/${encodeURIComponent('ci/runner 7')}`
  const got = await admin(lapse, 'GET', path)
  t.equal(got.status, 200)
  t.same(got.json(), stored, 'GET answers the stored entry')
  const lifted = await admin(lapse, 'DELETE', path)
  t.equal(lifted.status, 204)
  t.equal(lifted.body, '', '204 has no body')
  t.equal((await admin(lapse, 'GET', path)).status, 404, 'gone after the lift')
  t.equal((await admin(lapse, 'DELETE', path)).status, 404, 'a second lift → 404')

  await revoke(t, lapse, { claim: 'sid', value: 's-1', iss: OTHER_ISSUER })
  const q = `?iss=${encodeURIComponent(OTHER_ISSUER)}`
  t.equal((await admin(lapse, 'GET', '/v1/revocations/sid/s-1')).status, 404, 'the any-issuer entry is another entry')
  t.equal((await admin(lapse, 'GET', `/v1/revocations/sid/s-1${q}`)).json().iss, OTHER_ISSUER)
  t.equal((await admin(lapse, 'DELETE', `/v1/revocations/sid/s-1${q}`)).status, 204)
})

t.test('every change writes an audit line: who, claim, value, T and reason', async (t) => {
  const { lapse } = await lapseOn(t, { LAPSE_ADMIN_TOKEN_NAME: 'secops' })
  const anHourAgo = new Date((nowS() - 3600) * 1000).toISOString()
  const stored = await revoke(t, lapse, { claim: 'sub', value: 'ci-deployer', reason: 'pipeline compromised', issued_before: anHourAgo })
  t.equal(stored.issued_before, Date.parse(anHourAgo) / 1000, 'issued_before as RFC 3339')
  t.equal((await admin(lapse, 'DELETE', '/v1/revocations/sub/ci-deployer')).status, 204)
  await waitFor(() => revocationAudits(lapse).length >= 2, 'two audit lines')
  const [revoked, lifted] = revocationAudits(lapse)
  const want = { by: 'secops', claim: 'sub', value: 'ci-deployer', issued_before: stored.issued_before, reason: 'pipeline compromised' }
  t.match(revoked, { action: 'revoke', ...want }, 'the revoke line')
  t.match(lifted, { action: 'lift', ...want }, 'the lift line')
  t.equal(revocationAudits(lapse).length, 2, 'one line per change, none for reads or refusals')
  t.ok(
    lapse.rawLines.every((line) => !line.includes('test-admin-token')),
    'no line contains the admin token',
  )
})

t.test('201 only once Redis has it: a raw read right after the 201 finds the entry, with its TTL', async (t) => {
  const { lapse, prefix } = await lapseOn(t)
  for (let i = 0; i < 5; i++) {
    const value = `task-${i}`
    const res = await admin(lapse, 'POST', '/v1/revocations', { body: { claim: 'jti', value, reason: 'r', iss: ISSUER } })
    t.equal(res.status, 201)
    const key = entryKey(prefix, 'jti', value, ISSUER)
    const [[, stored], [, ttlS]] = (await raw.multi().get(key).ttl(key).exec()) as [[null, string | null], [null, number]]
    t.ok(stored, `entry ${i} readable at once under ${key}`)
    t.match(JSON.parse(stored ?? '{}'), { claim: 'jti', value, iss: ISSUER, issuedBeforeS: res.json().issued_before })
    // A jti entry outlasts any token alive now: lifetime plus twice the skew (revocation-body.ts).
    t.ok(ttlS > ENTRY_LIFETIME_S + 30 - 5 && ttlS <= ENTRY_LIFETIME_S + 30, `TTL ${ttlS} s ≈ lifetime + twice the skew`)
  }
})
