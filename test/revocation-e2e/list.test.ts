// GET /v1/revocations through a real Lapse, on the memory set and on Redis: who may list, every
// page followed, the filters, and what a bad query gets.
import t, { type Test } from 'tap'
import { runApp, send } from '../fixtures/app.js'
import { ISSUER } from '../fixtures/keys.js'
import { admin, OTHER_ISSUER, redisEnv, redisFor, untilReady } from './helpers.js'

const redis = await redisFor(t)

interface Listed {
  claim: string
  value: string
  iss: string | null
  reason: string
  by: string
  issued_before: number
  expires_at: number
}

/** Every page of GET /v1/revocations?<query>, following next_cursor; each page must be a 200. */
async function listAll(t: Test, adminUrl: string, query: string): Promise<Listed[][]> {
  const pages: Listed[][] = []
  let cursor: string | null = null
  do {
    const q = cursor === null ? query : `${query}${query ? '&' : ''}cursor=${encodeURIComponent(cursor)}`
    const res = await admin({ adminUrl }, 'GET', `/v1/revocations${q ? `?${q}` : ''}`)
    if (res.status !== 200) {
      t.fail(`page ${pages.length + 1}: ${res.status} ${res.body.toString()}`)
      break
    }
    const body = res.json() as { revocations: Listed[]; next_cursor: string | null }
    pages.push(body.revocations)
    cursor = body.next_cursor
  } while (cursor !== null && pages.length < 100)
  return pages
}

for (const [set, env] of [
  ['memory', {}],
  ['redis', redisEnv(redis, 'list')],
] as const) {
  t.test(`${set}: 250 entries over pages of 100, filters, bad queries`, async (t) => {
    const lapse = await runApp(t, { env: { LAPSE_ISSUER: `${ISSUER},${OTHER_ISSUER}`, ...env } })
    await untilReady(lapse)
    // Written concurrently, ten at a time: the admin API is the only way in.
    const bodies = Array.from({ length: 250 }, (_, i) => ({
      claim: ['sub', 'jti', 'client_id'][i % 3],
      value: `v-${i}`,
      reason: i % 10 === 0 ? `INC-42 token leak ${i}` : `rotation ${i}`,
      ...(i % 5 === 0 ? { iss: OTHER_ISSUER } : {}),
    }))
    for (let i = 0; i < bodies.length; i += 10) {
      const answers = await Promise.all(bodies.slice(i, i + 10).map((body) => admin(lapse, 'POST', '/v1/revocations', { body })))
      if (answers.some((a) => a.status !== 201)) t.fail('a revocation was refused')
    }
    const names = (entries: Array<{ claim?: string; value?: string; iss?: string | null }>) =>
      entries.map((e) => `${e.claim}=${e.value}@${e.iss ?? '*'}`).sort()

    const pages = await listAll(t, lapse.adminUrl, '')
    t.ok(pages.length >= 3, `${pages.length} pages`)
    t.ok(
      pages.every((p) => p.length <= 100),
      'none over the default limit of 100',
    )
    t.same(names(pages.flat()), names(bodies), 'every entry exactly once')
    t.match(
      pages.flat().find((e) => e.value === 'v-10'),
      { claim: 'jti', iss: OTHER_ISSUER, reason: 'INC-42 token leak 10', by: 'admin' },
      'each entry as GET /v1/revocations/{claim}/{value} shows it',
    )

    const small = await listAll(t, lapse.adminUrl, 'limit=7&claim=sub')
    t.ok(small.every((p) => p.length <= 7) && small.length >= 12, `limit=7: ${small.length} pages of at most 7`)
    t.same(names(small.flat()), names(bodies.filter((b) => b.claim === 'sub')), 'claim=sub')
    t.same(
      names((await listAll(t, lapse.adminUrl, `iss=${encodeURIComponent(OTHER_ISSUER)}`)).flat()),
      names(bodies.filter((b) => b.iss === OTHER_ISSUER)),
      'iss=',
    )
    t.same(
      names((await listAll(t, lapse.adminUrl, 'reason_contains=inc-42%20TOKEN')).flat()),
      names(bodies.filter((b) => b.reason.startsWith('INC-42'))),
      'reason_contains=, any case',
    )

    // The listing needs the admin token like every read of the set.
    const anonymous = await admin(lapse, 'GET', '/v1/revocations', { token: null })
    t.equal(anonymous.status, 401)
    t.equal(anonymous.json().error, 'unauthorized')
    t.equal((await admin(lapse, 'GET', '/v1/revocations', { token: 'wrong-wrong-wrong-wrong' })).status, 401)

    const refused: Array<[string, RegExp]> = [
      ['limit=0', /"limit" must be a whole number from 1 to 1000/],
      ['limit=1001', /"limit" must be a whole number from 1 to 1000/],
      ['limit=ten', /"limit"/],
      ['claims=sub', /unknown parameter "claims"/],
      ['claim=sub&claim=jti', /"claim" is given twice/],
      ['claim=', /"claim" must be a non-empty text/],
      ['cursor=bm90LWEtY3Vyc29y', /"cursor" is not one this set made/],
    ]
    for (const [query, description] of refused) {
      const res = await admin(lapse, 'GET', `/v1/revocations?${query}`)
      t.equal(res.status, 400, `${query} → 400`)
      t.match(res.json(), { error: 'invalid_request', error_description: description }, query)
    }
    const put = await admin(lapse, 'PUT', '/v1/revocations')
    t.equal(put.status, 405)
    t.equal(put.headers.allow, 'GET, HEAD, POST')
  })
}

t.test('no admin token configured: the listing answers 403 too', async (t) => {
  const lapse = await runApp(t, { env: { LAPSE_ADMIN_TOKEN: undefined } })
  const res = await send(`${lapse.adminUrl}/v1/revocations`)
  t.equal(res.status, 403)
  t.match(res.json().error_description, /LAPSE_ADMIN_TOKEN/)
})

t.test('Redis unreachable: 503 with Retry-After, not an empty list', async (t) => {
  const down = await redisFor(t)
  const lapse = await runApp(t, { env: redisEnv(down, 'list-down') })
  await untilReady(lapse)
  await down.stop()
  const res = await admin(lapse, 'GET', '/v1/revocations')
  t.equal(res.status, 503)
  t.equal(res.headers['retry-after'], '1')
  t.equal(res.json().error, 'temporarily_unavailable')
})
