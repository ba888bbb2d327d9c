// The in-process DPoP replay cache against the shared contract, on a manual clock.
import t from 'tap'
import { manualClock } from '../../src/core/clock.js'
import { createMemoryReplayCache } from '../../src/bind/replay-memory.js'
import { runReplayCases } from './replay.cases.js'

runReplayCases(t, async (t) => {
  const clock = manualClock(Date.parse('2030-01-01T00:00:00Z'))
  const cache = createMemoryReplayCache({ clock })
  t.teardown(() => cache.close())
  return { cache, expire: async (ms) => clock.advance(ms) }
})
