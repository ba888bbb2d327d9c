// The UseCounter contract, run against every implementation (memory, Redis, Redis Cluster).
//
//   runUseCounterCases(t, async (t) => ({ counter, clock, checkExpiry }))
import type { Test } from 'tap'
import type { Clock, UseCounter, UseKey } from '../../src/core/types.js'

export interface UseCounterHarness {
  readonly counter: UseCounter
  readonly clock: Clock
  /** Asserts that the count of `key` leaves the store at `expiresAtS` (PEXPIREAT in Redis, the clock in memory). */
  checkExpiry(t: Test, key: UseKey, expiresAtS: number): Promise<void>
}

export type UseCounterFactory = (t: Test) => Promise<UseCounterHarness>

const ISS = 'https://idp.example/'
let n = 0
const key = (extra: Partial<UseKey> = {}): UseKey => ({
  scope: 'POST /migrations/run',
  iss: ISS,
  jti: `jti-${++n}-${Date.now()}`,
  ...extra,
})
const expiry = (clock: Clock) => Math.floor(clock.now() / 1000) + 330

export function runUseCounterCases(t: Test, open: UseCounterFactory): void {
  t.test('uses 1…N, then N + 1 (refused) without counting it', async (t) => {
    const { counter, clock } = await open(t)
    const k = key()
    const got: number[] = []
    for (let i = 0; i < 5; i++) got.push(await counter.take(k, 3, expiry(clock)))
    t.same(got, [1, 2, 3, 4, 4])
    t.equal(await counter.take(k, 5, expiry(clock)), 4, 'a refused use was not counted: a higher limit sees 3 taken')
  })

  t.test('counted per rule, per issuer and per jti', async (t) => {
    const { counter, clock } = await open(t)
    const k = key()
    t.equal(await counter.take(k, 1, expiry(clock)), 1)
    t.equal(await counter.take(k, 1, expiry(clock)), 2)
    t.equal(await counter.take({ ...k, scope: 'GET /other' }, 1, expiry(clock)), 1, 'another rule')
    t.equal(await counter.take({ ...k, iss: 'https://other.example/' }, 1, expiry(clock)), 1, 'another issuer')
    t.equal(await counter.take({ ...k, jti: `${k.jti}x` }, 1, expiry(clock)), 1, 'another jti')
  })

  t.test("a token's memo carried with its key: counted per rule all the same, and the memo never answers for another rule", async (t) => {
    const { counter, clock } = await open(t)
    const memo = {}
    const k = key({ memo })
    t.equal(await counter.take(k, 2, expiry(clock)), 1)
    t.equal(await counter.take({ ...k, scope: 'GET /other' }, 2, expiry(clock)), 1, 'another rule, the same memo')
    t.equal(await counter.take(k, 2, expiry(clock)), 2, 'back on the first rule: its count went on')
    t.equal(await counter.take({ ...k, memo: {} }, 2, expiry(clock)), 3, 'the count is the key’s, not the memo’s')
  })

  t.test('any Unicode in iss and jti: distinct values never share a count', async (t) => {
    const { counter, clock } = await open(t)
    const jtis = ['a"b', 'a\\"b', 'ü', 'u\u0308', 'a\u0000b', 'a', 'a b', '{x}', '😀', '\ud800', 'a:b', 'a%3Ab']
    for (const jti of jtis) t.equal(await counter.take(key({ jti: `${n}-${jti}` }), 1, expiry(clock)), 1, JSON.stringify(jti))
    // Separators cannot be forged: (iss "a", jti "b\u0000c") differs from (iss "a\u0000b", jti "c").
    t.equal(await counter.take({ scope: 's', iss: `${n}a`, jti: 'b","c' }, 1, expiry(clock)), 1)
    t.equal(await counter.take({ scope: 's', iss: `${n}a","b`, jti: 'c' }, 1, expiry(clock)), 1)
  })

  t.test('concurrent first uses: exactly N are granted', async (t) => {
    const { counter, clock } = await open(t)
    const k = key()
    const results = await Promise.all(Array.from({ length: 40 }, () => counter.take(k, 5, expiry(clock))))
    t.same(
      results.filter((r) => r <= 5).sort((a, b) => a - b),
      [1, 2, 3, 4, 5],
    )
    t.equal(results.filter((r) => r === 6).length, 35)
  })

  t.test('the count expires with the token (exp + skew)', async (t) => {
    const h = await open(t)
    const k = key()
    const at = expiry(h.clock)
    t.equal(await h.counter.take(k, 1, at), 1)
    await h.checkExpiry(t, k, at)
  })
}
