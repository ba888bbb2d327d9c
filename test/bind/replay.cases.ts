// The one contract every DPoP replay cache keeps (memory, Redis): each key is accepted once
// while it is recorded, concurrent claims of one key have one winner, and keys expire.
//
//   runReplayCases(t, async (t) => ({ cache, expire: (ms) => clock.advance(ms) }))
import type { Test } from 'tap'
import type { ReplayCache } from '../../src/core/types.js'

export interface ReplayFixture {
  readonly cache: ReplayCache
  /** Lets `ms` pass for the cache (a manual clock, or real time for Redis). */
  expire(ms: number): Promise<void>
}

export function runReplayCases(t: Test, open: (t: Test) => Promise<ReplayFixture>): void {
  t.test('a key is accepted once, then refused while it is recorded', async (t) => {
    const { cache } = await open(t)
    t.equal(await cache.firstUse('jkt-a:jti-1', 60_000), true)
    t.equal(await cache.firstUse('jkt-a:jti-1', 60_000), false)
    t.equal(await cache.firstUse('jkt-a:jti-1', 60_000), false)
  })

  t.test('keys are independent: another jti, or the same jti under another key', async (t) => {
    const { cache } = await open(t)
    t.equal(await cache.firstUse('jkt-a:jti-1', 60_000), true)
    t.equal(await cache.firstUse('jkt-a:jti-2', 60_000), true)
    t.equal(await cache.firstUse('jkt-b:jti-1', 60_000), true)
  })

  t.test('concurrent claims of one key: exactly one wins', async (t) => {
    const { cache } = await open(t)
    const answers = await Promise.all(Array.from({ length: 20 }, () => cache.firstUse('jkt-a:race', 60_000)))
    t.equal(answers.filter((a) => a).length, 1)
  })

  t.test('a key is accepted again once its time has passed, not before', async (t) => {
    const { cache, expire } = await open(t)
    t.equal(await cache.firstUse('jkt-a:short', 200), true)
    await expire(50)
    t.equal(await cache.firstUse('jkt-a:short', 200), false, 'still recorded')
    await expire(250)
    t.equal(await cache.firstUse('jkt-a:short', 200), true, 'expired')
  })

  t.test('keys of any characters a jti may hold', async (t) => {
    const { cache } = await open(t)
    for (const key of ['jkt:a b', 'jkt:{tag}', 'jkt:ü/%', 'jkt:']) {
      t.equal(await cache.firstUse(key, 60_000), true, key)
      t.equal(await cache.firstUse(key, 60_000), false, key)
    }
  })
}
