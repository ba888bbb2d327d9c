// The cache rules that make it safe: fresh channel only, no fill across an invalidation, bounded.
import t from 'tap'
import type { RevocationEntry } from '../../src/core/types.js'
import { createAnswerCache } from '../../src/revocation/answer-cache.js'

const entry = (expiresAtS: number): RevocationEntry => ({
  claim: 'sub',
  value: 'a',
  issuedBeforeS: 100,
  reason: '',
  by: 't',
  createdAtS: 100,
  expiresAtS,
})

function setup(maxEntries = 10) {
  const state = { fresh: true, nowS: 1000 }
  const cache = createAnswerCache({ maxEntries, isFresh: () => state.fresh, nowS: () => state.nowS })
  return { state, cache }
}

t.test('a fill is read back only when every key is cached', async (t) => {
  const { cache } = setup()
  cache.fill(cache.ticket(), ['a', 'b'], [null, entry(2000)])
  t.same(cache.read(['a', 'b']), [null, entry(2000)])
  t.equal(cache.read(['a', 'c']), undefined)
})

t.test('a read that raced an invalidation is not cached (the stale "not revoked" case)', async (t) => {
  const { cache } = setup()
  const ticket = cache.ticket() // the MGET leaves before the revocation is written …
  cache.invalidate('a') // … the event arrives first …
  cache.fill(ticket, ['a'], [null]) // … then the stale reply
  t.equal(cache.read(['a']), undefined)
})

t.test('a drop clears everything and voids tickets taken before it', async (t) => {
  const { cache } = setup()
  cache.fill(cache.ticket(), ['a'], [null])
  const ticket = cache.ticket()
  cache.drop()
  t.equal(cache.size, 0)
  cache.fill(ticket, ['b'], [null])
  t.equal(cache.read(['b']), undefined)
})

t.test('while the channel is not fresh nothing is read, ticketed or filled', async (t) => {
  const { state, cache } = setup()
  cache.fill(cache.ticket(), ['a'], [null])
  state.fresh = false
  t.equal(cache.read(['a']), undefined)
  t.equal(cache.ticket(), undefined)
  const ticket = 0
  cache.fill(ticket, ['b'], [null])
  state.fresh = true
  t.equal(cache.read(['b']), undefined)
})

t.test('a cached entry past its expiry is a miss', async (t) => {
  const { state, cache } = setup()
  cache.fill(cache.ticket(), ['a'], [entry(1001)])
  t.ok(cache.read(['a']))
  state.nowS = 1001
  t.equal(cache.read(['a']), undefined)
})

t.test('the cache holds at most maxEntries, dropping the oldest', async (t) => {
  const { cache } = setup(3)
  for (const key of ['a', 'b', 'c', 'd']) cache.fill(cache.ticket(), [key], [null])
  t.equal(cache.size, 3)
  t.equal(cache.read(['a']), undefined)
  t.ok(cache.read(['d']))
})

t.test('a fill whose values do not line up with its keys is ignored', async (t) => {
  const { cache } = setup()
  cache.fill(cache.ticket(), ['a', 'b'], [null])
  t.equal(cache.size, 0)
})
