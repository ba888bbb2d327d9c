// The in-memory set against the shared RevocationStore contract, on a manual clock.
import t from 'tap'
import { manualClock } from '../../src/core/clock.js'
import { createMemoryStore } from '../../src/revocation/memory-store.js'
import { runStoreCases, tokenRef } from './store.cases.js'

runStoreCases(t, async (t) => {
  const clock = manualClock(Date.parse('2030-01-01T00:00:00Z'))
  const store = createMemoryStore({ clock })
  t.teardown(() => store.close())
  return {
    store,
    clock,
    async elapse(seconds) {
      clock.set(clock.now() + seconds * 1000)
    },
    async checkExpiry(t, entry) {
      const token = tokenRef(entry.issuedBeforeS, [[entry.claim, entry.value]], entry.iss)
      clock.set(entry.expiresAtS * 1000 - 1)
      t.ok(await store.get(entry.claim, entry.value, entry.iss), 'still there one moment before expiresAtS')
      t.equal(await store.isRevoked(token), true)
      clock.set(entry.expiresAtS * 1000)
      t.equal(await store.get(entry.claim, entry.value, entry.iss), undefined, 'gone at expiresAtS')
      t.equal(await store.isRevoked(token), false)
    },
  }
})
