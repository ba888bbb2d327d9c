// The RevocationStore contract, run against every implementation (memory, Redis with and
// without the cache, Sentinel, Cluster).
//
//   runStoreCases(t, async (t) => ({ store, clock, checkExpiry }))
//
// The factory returns a store that is ready and already receiving its own events, on a clock
// the cases read T from; it tears the store down itself (t.teardown).
import type { Test } from 'tap'
import { nowS } from '../../src/core/clock.js'
import {
  InvalidCursorError,
  type Clock,
  type RevocationEntry,
  type RevocationEvent,
  type RevocationQuery,
  type RevocationStore,
  type TokenRef,
} from '../../src/core/types.js'

export interface StoreHarness {
  readonly store: RevocationStore
  readonly clock: Clock
  /** Asserts that `entry` leaves the set exactly at its `expiresAtS` (TTL for Redis, clock for memory). */
  checkExpiry(t: Test, entry: RevocationEntry): Promise<void>
  /** Lets `seconds` pass for the set: the manual clock moves, and Redis's TTLs run out for real. */
  elapse(seconds: number): Promise<void>
}

export type StoreFactory = (t: Test) => Promise<StoreHarness>

const ISS = 'https://idp.example/'
const OTHER_ISS = 'https://other-idp.example/'
const LIFETIME_S = 3600 + 30 // max token lifetime + clock skew: the design's TTL

export function entryAt(clock: Clock, claim: string, value: string, extra: Partial<RevocationEntry> = {}): RevocationEntry {
  const t = nowS(clock)
  return { claim, value, issuedBeforeS: t, reason: 'ticket SEC-1', by: 'test', createdAtS: t, expiresAtS: t + LIFETIME_S, ...extra }
}

/**
 * isRevoked's answer, checked against isRevokedNow's wherever the store answers in-process (the
 * memory set always; Redis once its local cache holds the keys): the two must never disagree.
 */
export async function revoked(t: Test, store: RevocationStore, ref: TokenRef): Promise<boolean> {
  const before = store.isRevokedNow?.(ref)
  const answer = await store.isRevoked(ref)
  const after = store.isRevokedNow?.(ref)
  if (before !== undefined && before !== answer) t.fail(`isRevokedNow said ${before} before isRevoked said ${answer}`)
  if (after !== undefined && after !== answer) t.fail(`isRevokedNow said ${after} after isRevoked said ${answer}`)
  return answer
}

export const tokenRef = (iatS: number | undefined, values: Array<[string, string]>, iss = ISS): TokenRef => ({ iss, iatS, values })

/** The next event matching `match`, subscribed before `action` runs so it cannot be missed. */
export async function eventDuring(
  store: RevocationStore,
  match: (e: RevocationEvent) => boolean,
  action: () => Promise<unknown>,
  withinMs = 3000,
): Promise<RevocationEvent> {
  let stop = () => {}
  const seen = new Promise<RevocationEvent>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no matching event within ${withinMs} ms`)), withinMs)
    const off = store.subscribe((event) => {
      if (!match(event)) return
      clearTimeout(timer)
      resolve(event)
    })
    stop = () => {
      clearTimeout(timer)
      off()
    }
  })
  try {
    await action()
    return await seen
  } finally {
    stop()
  }
}

/** Every page of a listing, following `next`; fails the test past `maxPages`. */
export async function listAll(
  t: Test,
  store: RevocationStore,
  query: Omit<RevocationQuery, 'cursor'>,
  maxPages = 100,
): Promise<RevocationEntry[][]> {
  const pages: RevocationEntry[][] = []
  let cursor: string | undefined
  do {
    const page = await store.list({ ...query, cursor })
    if (page.entries.length > query.limit) t.fail(`a page of ${page.entries.length} entries, over the limit ${query.limit}`)
    pages.push([...page.entries])
    cursor = page.next
  } while (cursor !== undefined && pages.length < maxPages)
  if (cursor !== undefined) t.fail(`still a cursor after ${maxPages} pages`)
  return pages
}

const names = (entries: readonly RevocationEntry[]) => entries.map((e) => `${e.claim}=${e.value}@${e.iss ?? '*'}`).sort()

export function runStoreCases(t: Test, factory: StoreFactory): void {
  t.test('list walks every active entry over many pages, each once, none over the limit', async (t) => {
    const { store, clock } = await factory(t)
    const put: RevocationEntry[] = []
    for (let i = 0; i < 23; i++) {
      put.push(await store.put(entryAt(clock, ['sub', 'jti', 'task'][i % 3]!, `list-${i}:é*`, i % 4 === 0 ? { iss: ISS } : {})))
    }
    const pages = await listAll(t, store, { limit: 5 })
    const seen = pages.flat()
    t.ok(pages.length >= 5, `${pages.length} pages of at most 5`)
    t.same(names(seen), names(put), 'every entry, each exactly once')
    t.same(
      seen.find((e) => e.value === 'list-4:é*'),
      put[4],
      'entries come back whole',
    )
    t.same(names((await listAll(t, store, { limit: 1000 })).flat()), names(put), 'one big page: the same entries')
  })

  t.test('list filters by claim, by issuer and by a text in the reason (any case)', async (t) => {
    const { store, clock } = await factory(t)
    await store.put(entryAt(clock, 'sub', 'alice', { reason: 'Ticket SEC-7: laptop stolen' }))
    await store.put(entryAt(clock, 'sub', 'bob', { iss: ISS, reason: 'ticket SEC-8' }))
    await store.put(entryAt(clock, 'jti', 'j-1', { iss: ISS, reason: 'sec-7 follow-up' }))
    await store.put(entryAt(clock, 'task', 'T-1', { iss: OTHER_ISS, reason: '' }))
    const list = async (q: Omit<RevocationQuery, 'cursor' | 'limit'>) => names((await listAll(t, store, { ...q, limit: 2 })).flat())
    t.same(await list({ claim: 'sub' }), ['sub=alice@*', `sub=bob@${ISS}`])
    t.same(await list({ iss: ISS }), [`jti=j-1@${ISS}`, `sub=bob@${ISS}`], 'bound to that issuer; the any-issuer entry is not')
    t.same(await list({ reasonContains: 'SEC-7' }), [`jti=j-1@${ISS}`, 'sub=alice@*'], 'case-insensitive')
    t.same(await list({ claim: 'sub', iss: ISS, reasonContains: 'sec' }), [`sub=bob@${ISS}`], 'filters combine')
    t.same(await list({ claim: 'sid' }), [], 'nothing of that claim')
    t.same(await list({ iss: 'https://unknown.example/' }), [])
  })

  t.test('entries that expire between pages are not listed after they expire', async (t) => {
    const { store, clock, elapse } = await factory(t)
    const short: RevocationEntry[] = []
    const long: RevocationEntry[] = []
    for (let i = 0; i < 12; i++) {
      short.push(await store.put(entryAt(clock, 'sub', `short-${i}`, { expiresAtS: nowS(clock) + 1 })))
      long.push(await store.put(entryAt(clock, 'sub', `long-${i}`)))
    }
    const first = await store.list({ limit: 4 })
    t.equal(first.entries.length, 4)
    t.ok(first.next, 'more pages')
    await elapse(3)
    const rest = (await listAllFrom(store, first.next, 4)).flat()
    t.same(
      rest.filter((e) => e.value.startsWith('short-')),
      [],
      'no expired entry on a later page',
    )
    const firstLong = first.entries.filter((e) => e.value.startsWith('long-'))
    t.same(names([...firstLong, ...rest]), names(long), 'every entry still active is listed once')
    t.same(names((await listAll(t, store, { limit: 4 })).flat()), names(long), 'a new walk: only the active ones')
  })

  t.test('list refuses a cursor it did not make', async (t) => {
    const { store, clock } = await factory(t)
    await store.put(entryAt(clock, 'sub', 'x'))
    for (const cursor of ['not a cursor', '', Buffer.from(JSON.stringify({ c: '', k: ['secret-key'] })).toString('base64url')]) {
      const err = await store.list({ limit: 10, cursor }).then(
        () => undefined,
        (e: unknown) => e,
      )
      t.ok(err instanceof InvalidCursorError, `${JSON.stringify(cursor)} refused with InvalidCursorError`)
    }
  })

  for (const claim of ['jti', 'sub', 'client_id', 'sid', 'task']) {
    t.test(
      `revoked by ${claim}: iat before and at T revoked, after T not${claim === 'jti' ? ' (but one jti is one token: revoked whatever its iat)' : ''}`,
      async (t) => {
        const { store, clock } = await factory(t)
        const entry = await store.put(entryAt(clock, claim, 'v-1'))
        const T = entry.issuedBeforeS
        t.equal(await revoked(t, store, tokenRef(T - 60, [[claim, 'v-1']])), true, 'issued before T')
        t.equal(await revoked(t, store, tokenRef(T, [[claim, 'v-1']])), true, 'iat == T: same second is the safe side')
        // A jti is never reissued; an iat after T means an issuer clock ahead of ours, not a new grant.
        t.equal(
          await revoked(t, store, tokenRef(T + 10, [[claim, 'v-1']])),
          claim === 'jti',
          claim === 'jti' ? 'iat after T, same jti: the same token, revoked' : 'issued after T: a re-approved grant works',
        )
        t.equal(await revoked(t, store, tokenRef(T - 60, [[claim, 'v-2']])), false, 'another value')
        t.equal(await revoked(t, store, tokenRef(T - 60, [['other_claim', 'v-1']])), false, 'same value, another claim')
      },
    )
  }

  t.test('one revoked claim among several revokes the token', async (t) => {
    const { store, clock } = await factory(t)
    const { issuedBeforeS: T } = await store.put(entryAt(clock, 'sid', 's-9'))
    const values: Array<[string, string]> = [
      ['jti', 'j-1'],
      ['sub', 'alice'],
      ['client_id', 'c-1'],
      ['sid', 's-9'],
      ['task', 'TASK-7'],
    ]
    t.equal(await revoked(t, store, tokenRef(T, values)), true)
    t.equal(
      await revoked(
        t,
        store,
        tokenRef(
          T,
          values.filter(([c]) => c !== 'sid'),
        ),
      ),
      false,
    )
  })

  t.test('a token without iat is revoked: it cannot prove it came later', async (t) => {
    const { store, clock } = await factory(t)
    await store.put(entryAt(clock, 'sub', 'alice'))
    t.equal(await revoked(t, store, tokenRef(undefined, [['sub', 'alice']])), true)
  })

  t.test('a token with no revocable values is not revoked', async (t) => {
    const { store, clock } = await factory(t)
    await store.put(entryAt(clock, 'sub', 'alice'))
    t.equal(await revoked(t, store, tokenRef(nowS(clock), [])), false)
  })

  t.test('an iss-bound entry binds only that issuer', async (t) => {
    const { store, clock } = await factory(t)
    const { issuedBeforeS: T } = await store.put(entryAt(clock, 'sub', 'alice', { iss: ISS }))
    t.equal(await revoked(t, store, tokenRef(T, [['sub', 'alice']], ISS)), true)
    t.equal(await revoked(t, store, tokenRef(T, [['sub', 'alice']], OTHER_ISS)), false, 'same sub at another issuer is someone else')
  })

  t.test('an any-issuer entry binds every issuer', async (t) => {
    const { store, clock } = await factory(t)
    const { issuedBeforeS: T } = await store.put(entryAt(clock, 'sub', 'alice'))
    t.equal(await revoked(t, store, tokenRef(T, [['sub', 'alice']], ISS)), true)
    t.equal(await revoked(t, store, tokenRef(T, [['sub', 'alice']], OTHER_ISS)), true)
  })

  t.test('values with separators and escapes do not collide', async (t) => {
    const { store, clock } = await factory(t)
    const T = nowS(clock)
    await store.put(entryAt(clock, 'task', 'a:b', { iss: 'https://idp.example:8443/x' }))
    await store.put(entryAt(clock, 'task', '{x}%3A*é'))
    t.equal(await revoked(t, store, tokenRef(T, [['task', 'a:b']], 'https://idp.example:8443/x')), true)
    t.equal(await revoked(t, store, tokenRef(T, [['task', 'a']], 'https://idp.example:8443/x')), false)
    t.equal(await revoked(t, store, tokenRef(T, [['task', 'a:b']], 'https://idp.example')), false)
    t.equal(await revoked(t, store, tokenRef(T, [['task', '{x}%3A*é']], OTHER_ISS)), true)
    t.equal(await revoked(t, store, tokenRef(T, [['task', '{x}:*é']], OTHER_ISS)), false, 'an escape is not what it escapes')
  })

  t.test('get returns the entry; lift removes it and answers the entry it removed', async (t) => {
    const { store, clock } = await factory(t)
    const entry = await store.put(entryAt(clock, 'client_id', 'ci', { iss: ISS }))
    t.same(await store.get('client_id', 'ci', ISS), entry)
    t.equal(await store.get('client_id', 'ci'), undefined, 'the any-issuer entry is a different entry')
    t.equal(await store.get('client_id', 'other', ISS), undefined)
    t.same(await store.lift('client_id', 'ci', ISS), entry, 'the removed entry')
    t.equal(await store.get('client_id', 'ci', ISS), undefined)
    t.equal(await revoked(t, store, tokenRef(entry.issuedBeforeS, [['client_id', 'ci']])), false, 'lifted: allowed again')
    t.equal(await store.lift('client_id', 'ci', ISS), undefined, 'nothing left to lift')
  })

  t.test('a token value holding a lone surrogate is checked like any other and does not stop the check of the rest', async (t) => {
    const { store, clock } = await factory(t)
    const entry = await store.put(entryAt(clock, 'sub', 'grace'))
    t.equal(
      await revoked(
        t,
        store,
        tokenRef(entry.issuedBeforeS, [
          ['task', 'MIGR-\ud800'],
          ['sub', 'grace'],
        ]),
      ),
      true,
      'the revoked sub is found',
    )
    t.equal(
      await revoked(
        t,
        store,
        tokenRef(entry.issuedBeforeS, [
          ['task', '\udc00x'],
          ['sub', 'other'],
        ]),
      ),
      false,
      'nothing revoked: false, not a failure',
    )
    await store.put(entryAt(clock, 'task', 'MIGR-\ufffd'))
    t.equal(
      await revoked(t, store, tokenRef(entry.issuedBeforeS, [['task', 'MIGR-\ud800']])),
      false,
      'not the value with U+FFFD in its place',
    )
  })

  t.test('a lift answers the entry it removed, not one read before a replacing put', async (t) => {
    const { store, clock } = await factory(t)
    const first = await store.put(entryAt(clock, 'sub', 'frank', { reason: 'first' }))
    const second = { ...first, issuedBeforeS: first.issuedBeforeS + 60, reason: 'second' }
    // The put and the lift race; whichever order the set applies them in, the lift names what it removed.
    const [, removed] = await Promise.all([store.put(second), store.lift('sub', 'frank')])
    const left = await store.get('sub', 'frank')
    t.ok(removed, 'one of the two was removed')
    t.same(removed, left === undefined ? second : first, 'the entry removed is the one answered')
    if (left !== undefined) t.same(left, second, 'the put that came after the lift stays')
  })

  t.test('two lifts at once: exactly one answers the entry', async (t) => {
    const { store, clock } = await factory(t)
    const entry = await store.put(entryAt(clock, 'sid', 's-9'))
    const answers = await Promise.all([store.lift('sid', 's-9'), store.lift('sid', 's-9')])
    t.same(
      answers.filter((a) => a !== undefined),
      [entry],
    )
  })

  t.test('lifting the iss-bound entry leaves the any-issuer one in force', async (t) => {
    const { store, clock } = await factory(t)
    const any = await store.put(entryAt(clock, 'sub', 'bob'))
    await store.put(entryAt(clock, 'sub', 'bob', { iss: ISS }))
    t.ok(await store.lift('sub', 'bob', ISS))
    t.same(await store.get('sub', 'bob'), any)
    t.equal(await revoked(t, store, tokenRef(any.issuedBeforeS, [['sub', 'bob']])), true)
  })

  t.test('a second put for the same (claim, value, iss) replaces T', async (t) => {
    const { store, clock } = await factory(t)
    const first = await store.put(entryAt(clock, 'sub', 'carol'))
    const later = first.issuedBeforeS + 120
    await store.put({ ...first, issuedBeforeS: later, reason: 'again' })
    t.equal((await store.get('sub', 'carol'))?.reason, 'again')
    t.equal(await revoked(t, store, tokenRef(later, [['sub', 'carol']])), true)
  })

  t.test('a replaced entry leaves nothing behind: an earlier T frees later tokens, and a lift frees all', async (t) => {
    const { store, clock } = await factory(t)
    const first = await store.put(entryAt(clock, 'sub', 'erin'))
    const T = first.issuedBeforeS
    await store.put({ ...first, issuedBeforeS: T - 60, reason: 'narrowed' })
    t.equal(await revoked(t, store, tokenRef(T - 60, [['sub', 'erin']])), true, 'at the new T')
    t.equal(await revoked(t, store, tokenRef(T - 30, [['sub', 'erin']])), false, 'after the new T, before the old one')
    t.ok(await store.lift('sub', 'erin'))
    t.equal(await revoked(t, store, tokenRef(T - 120, [['sub', 'erin']])), false, 'lifted: nothing of either put remains')
  })

  t.test('one value under two claims is two entries', async (t) => {
    const { store, clock } = await factory(t)
    const T = nowS(clock)
    await store.put(entryAt(clock, 'sub', 'shared-42'))
    await store.put(entryAt(clock, 'jti', 'shared-42', { iss: ISS }))
    t.equal(await revoked(t, store, tokenRef(T, [['client_id', 'shared-42']])), false, 'a claim with no entry')
    t.equal(await revoked(t, store, tokenRef(T, [['jti', 'shared-42']], OTHER_ISS)), false, 'the jti entry binds its issuer only')
    t.ok(await store.lift('sub', 'shared-42'))
    t.equal(await revoked(t, store, tokenRef(T, [['sub', 'shared-42']])), false, 'the sub entry is lifted')
    t.equal(await revoked(t, store, tokenRef(T, [['jti', 'shared-42']], ISS)), true, 'the jti entry stays')
  })

  t.test('put and lift are delivered as events; unsubscribe stops delivery', async (t) => {
    const { store, clock } = await factory(t)
    const entry = entryAt(clock, 'jti', 'j-42', { iss: ISS })
    const unheard: RevocationEvent[] = []
    store.subscribe((e) => unheard.push(e))()
    const revoked = await eventDuring(
      store,
      (e) => e.entry.value === 'j-42',
      () => store.put(entry),
    )
    t.same(revoked, { kind: 'revoked', entry })
    const lifted = await eventDuring(
      store,
      (e) => e.kind === 'lifted',
      () => store.lift('jti', 'j-42', ISS),
    )
    t.same(lifted, { kind: 'lifted', entry })
    t.same(unheard, [], 'an unsubscribed listener hears nothing')
  })

  t.test('an entry leaves the set at expiresAtS (TTL = lifetime + skew)', async (t) => {
    const { store, clock, checkExpiry } = await factory(t)
    const entry = await store.put(entryAt(clock, 'sub', 'dave'))
    t.equal(entry.expiresAtS - entry.issuedBeforeS, LIFETIME_S)
    await checkExpiry(t, entry)
  })
}

async function listAllFrom(store: RevocationStore, cursor: string | undefined, limit: number): Promise<RevocationEntry[][]> {
  const pages: RevocationEntry[][] = []
  while (cursor !== undefined && pages.length < 100) {
    const page = await store.list({ limit, cursor })
    pages.push([...page.entries])
    cursor = page.next
  }
  return pages
}
