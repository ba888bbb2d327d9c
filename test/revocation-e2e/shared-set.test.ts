// Three sidecars sharing one Redis: a revocation written through one instance's admin API is
// denied by all three on their very next request — with the local cache on (answers already
// cached, invalidated by the event) and off (one MGET per check).
import { randomUUID } from 'node:crypto'
import t from 'tap'
import { bearer, runApp, send, waitFor, type Lapse } from '../fixtures/app.js'
import { testKeys } from '../fixtures/keys.js'
import { admin, mgetCalls, nowS, redisEnv, redisFor, revoke, untilCacheActive, untilReady } from './helpers.js'

const keys = await testKeys()
const redis = await redisFor(t)
const raw = redis.client()
const ROUNDS = 5

const status = async (lapse: Lapse, token: string) => (await send(`${lapse.url}/orders/1`, { headers: [bearer(token)] })).status
const statuses = (fleet: readonly Lapse[], token: string) => Promise.all(fleet.map((lapse) => status(lapse, token)))

for (const cache of [true, false]) {
  t.test(`LAPSE_REVOCATION_CACHE=${cache}: revoke through one instance, denied by all three on their next request`, async (t) => {
    const prefix = `fleet-${cache}`
    const fleet: Lapse[] = []
    for (let i = 0; i < 3; i++) fleet.push(await runApp(t, { env: redisEnv(redis, prefix, { LAPSE_REVOCATION_CACHE: String(cache) }) }))
    for (const lapse of fleet) {
      await untilReady(lapse)
      if (cache) await untilCacheActive(lapse)
    }

    for (let round = 0; round < ROUNDS; round++) {
      const sub = `deployer-${cache}-${round}`
      const token = await keys.mint({ sub, jti: randomUUID() }, { nowS: nowS() - 5 })
      // Warm: the first request fills each instance's cache; the second must then be served from it.
      t.same(await statuses(fleet, token), [200, 200, 200], `round ${round}: allowed everywhere first`)
      const mgetsBefore = await mgetCalls(raw)
      t.same(await statuses(fleet, token), [200, 200, 200], `round ${round}: allowed again`)
      const mgets = (await mgetCalls(raw)) - mgetsBefore
      t.equal(mgets, cache ? 0 : 3, cache ? 'warm checks came from the cache: no MGET' : 'one MGET per check')

      const calls = fleet.map((l) => l.upstream.calls)
      const writer = fleet[round % 3]!
      await revoke(t, writer, { claim: 'sub', value: sub, reason: `round ${round}` })
      // The very next request at each instance, the writer's neighbours first.
      const order = [1, 2, 0].map((k) => fleet[(round + k) % 3]!)
      const after: number[] = []
      for (const lapse of order) after.push(await status(lapse, token))
      t.same(after, [401, 401, 401], `round ${round}: denied by all three on their next request`)
      t.same(fleet.map((l) => l.upstream.calls), calls, 'no upstream reached after the revocation')
    }

    t.test('a lift through another instance lets the token through everywhere again', async (t) => {
      const sub = `lifted-${cache}`
      const token = await keys.mint({ sub }, { nowS: nowS() - 5 })
      await revoke(t, fleet[0]!, { claim: 'sub', value: sub })
      t.same(await statuses(fleet, token), [401, 401, 401], 'revoked everywhere (and cached so where the cache is on)')
      t.equal((await admin(fleet[2]!, 'DELETE', `/v1/revocations/sub/${sub}`)).status, 204)
      // A cached "revoked" answer is dropped when the lift's event is delivered, which on a loaded
      // machine can come a moment after the 204 (Redis may write the DELETE's reply before the
      // subscribers' messages); without the event it stops being used after cacheStalenessMs (1 s).
      const allowed = await waitFor(async () => ((await statuses(fleet, token)).every((s) => s === 200) ? true : undefined), 'allowed everywhere after the lift', 2500)
      t.ok(allowed, 'allowed everywhere after the lift, within the staleness bound')
    })
  })
}
