// The connection registry on its own: fake exchanges, a manual clock, the memory revocation set.
import t, { type Test } from 'tap'
import pino from 'pino'
import { createConnectionRegistry, type Cut, type TrackedExchange } from '../../src/connections/connections.js'
import { manualClock } from '../../src/core/clock.js'
import type { Identity, RevocationEntry, RevocationEvent, RevocationStore, TokenRef } from '../../src/core/types.js'
import { RevocationUnavailableError } from '../../src/core/types.js'
import { createMemoryStore } from '../../src/revocation/memory-store.js'

const T0 = Date.parse('2030-01-01T00:00:00Z')
const T0_S = T0 / 1000
const ISS = 'https://issuer.test'
const TICK_MS = 10
const silent = pino({ level: 'silent' })

function identity(claims: Record<string, unknown>): Identity {
  const c = { iss: ISS, sub: 'ci', jti: `j-${Math.random()}`, iat: T0_S, exp: T0_S + 300, ...claims }
  return {
    iss: c.iss,
    sub: c.sub as string,
    clientId: undefined,
    jti: c.jti as string,
    iatS: c.iat as number | undefined,
    expS: c.exp as number,
    scopes: new Set(),
    claims: c,
    memo: {},
  }
}

function exchange(claims: Record<string, unknown> = {}, opts: Partial<Pick<TrackedExchange, 'kind' | 'cutAtExpiry'>> = {}) {
  const cuts: Cut[] = []
  const ex: TrackedExchange = {
    identity: identity(claims),
    kind: opts.kind ?? 'websocket',
    cutAtExpiry: opts.cutAtExpiry ?? true,
    trace: { startedMs: T0 },
    close: (cut) => cuts.push(cut),
  }
  return { ex, cuts }
}

function entry(claim: string, value: string, more: Partial<RevocationEntry> = {}): RevocationEntry {
  return { claim, value, issuedBeforeS: T0_S, reason: 'test', by: 'test', createdAtS: T0_S, expiresAtS: T0_S + 7200, ...more }
}

function setup(t: Test, opts: { skewS?: number; store?: RevocationStore; recheckS?: number } = {}) {
  const clock = manualClock(T0)
  const store = opts.store ?? createMemoryStore({ clock })
  const registry = createConnectionRegistry({
    clock,
    revocations: store,
    log: silent,
    revocableClaims: ['jti', 'sub', 'client_id', 'sid', 'task'],
    clockSkewS: opts.skewS ?? 0,
    recheckIntervalS: opts.recheckS ?? 3600,
    tickMs: TICK_MS,
  })
  t.teardown(() => registry.close())
  return { clock, store, registry }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))
const ticks = (n = 3) => sleep(TICK_MS * n + 5)

t.test('expiry: cut at (exp + skew) on the clock by the timer, never before', async (t) => {
  const { clock, registry } = setup(t, { skewS: 30 })
  const a = exchange({ exp: T0_S + 60 })
  const b = exchange({ exp: T0_S + 120 })
  registry.track(a.ex)
  registry.track(b.ex)
  clock.set((T0_S + 90) * 1000 - 1)
  await ticks()
  t.same(a.cuts, [], 'not at exp + skew - 1 ms')
  clock.set((T0_S + 90) * 1000)
  await ticks()
  t.same(a.cuts, [{ reason: 'expired', kind: 'websocket', livedMs: 90_000 }], 'at exp + skew, with how long it lived')
  t.same(b.cuts, [])
  t.equal(registry.size, 1)
  clock.set((T0_S + 150) * 1000)
  await ticks()
  t.equal(b.cuts.length, 1)
  t.equal(registry.size, 0)
})

t.test('expiry: a deadline sooner than the sleeping timer re-arms it', async (t) => {
  const clock = manualClock(T0)
  const registry = createConnectionRegistry({
    clock,
    revocations: createMemoryStore({ clock }),
    log: silent,
    revocableClaims: ['jti'],
    clockSkewS: 0,
    recheckIntervalS: 3600,
    tickMs: 60_000,
  })
  t.teardown(() => registry.close())
  registry.track(exchange({ exp: T0_S + 3600 }).ex)
  const soon = exchange({ exp: T0_S + 1 })
  registry.track(soon.ex)
  // The timer reads the clock when it wakes; a real clock would have moved by then.
  clock.set((T0_S + 1) * 1000)
  await sleep(1100)
  t.equal(soon.cuts.length, 1, 'cut at its deadline, not at the 60 s tick')
})

t.test('expiry: a stream with cutAtExpiry false is left alone; a WebSocket is always cut', async (t) => {
  const { clock, registry } = setup(t)
  const stream = exchange({ exp: T0_S + 10, sub: 'dl' }, { kind: 'stream', cutAtExpiry: false })
  const cutStream = exchange({ exp: T0_S + 10 }, { kind: 'stream', cutAtExpiry: true })
  const ws = exchange({ exp: T0_S + 10 }, { kind: 'websocket', cutAtExpiry: false })
  for (const x of [stream, cutStream, ws]) registry.track(x.ex)
  clock.set((T0_S + 100) * 1000)
  await ticks()
  t.same(stream.cuts, [])
  t.match(cutStream.cuts, [{ reason: 'expired', kind: 'stream' }])
  t.match(ws.cuts, [{ reason: 'expired', kind: 'websocket' }])
  t.equal(registry.expireDue(), 0)
})

t.test('untrack removes the exchange from every index', async (t) => {
  const { clock, store, registry } = setup(t)
  const a = exchange({ exp: T0_S + 10, sub: 'gone' })
  const untrack = registry.track(a.ex)
  t.equal(registry.size, 1)
  untrack()
  untrack()
  t.equal(registry.size, 0)
  await store.put(entry('sub', 'gone'))
  clock.set((T0_S + 100) * 1000)
  await ticks()
  t.same(a.cuts, [], 'neither revocation nor expiry reaches it')
})

t.test('revocation events follow the model: claim value, iss-bound entries, iat <= T', async (t) => {
  const { store, registry } = setup(t)
  const bySub = exchange({ sub: 'alice' })
  const otherSub = exchange({ sub: 'bob' })
  const laterIat = exchange({ sub: 'carol', iat: T0_S + 5 })
  const sameIat = exchange({ sub: 'carol', iat: T0_S })
  const otherIss = exchange({ sub: 'dave', iss: 'https://other.test' })
  const sameIss = exchange({ sub: 'dave' })
  const byTask = exchange({ task: 'ticket-42' })
  const numeric = exchange({ sid: 7 })
  const laterJti = exchange({ jti: 'tok-7', iat: T0_S + 5 })
  const azpOnly = exchange({ azp: 'deploy-bot' })
  const all = [bySub, otherSub, laterIat, sameIat, otherIss, sameIss, byTask, numeric, laterJti, azpOnly]
  for (const x of all) registry.track(x.ex)

  await store.put(entry('sub', 'alice'))
  t.match(bySub.cuts, [{ reason: 'revoked' }])
  t.same(otherSub.cuts, [])

  await store.put(entry('sub', 'carol', { issuedBeforeS: T0_S }))
  t.same(laterIat.cuts, [], 'a token issued after T is not revoked')
  t.equal(sameIat.cuts.length, 1, 'a token issued at T is')

  await store.put(entry('jti', 'tok-7', { issuedBeforeS: T0_S }))
  t.equal(laterJti.cuts.length, 1, 'one jti is one token: cut whatever its iat')
  await store.put(entry('client_id', 'deploy-bot'))
  t.equal(azpOnly.cuts.length, 1, 'a client named only in azp is revoked by client_id')

  await store.put(entry('sub', 'dave', { iss: ISS }))
  t.same(otherIss.cuts, [], 'an iss-bound entry leaves other issuers alone')
  t.equal(sameIss.cuts.length, 1)

  await store.put(entry('task', 'ticket-42'))
  t.equal(byTask.cuts.length, 1, 'any configured claim')
  await store.put(entry('sid', '7'))
  t.equal(numeric.cuts.length, 1, 'numeric claim values compare as strings')

  await store.put(entry('sub', 'alice'))
  t.equal(bySub.cuts.length, 1, 'a cut happens once')
  t.equal(registry.size, 3, 'bob, carol issued later, dave of another issuer')
})

t.test('an exchange registered just after its revocation event is cut too', async (t) => {
  // The decision's read left before the revocation and answered "not revoked" after its event.
  const { store, registry } = setup(t)
  await store.put(entry('sub', 'late'))
  const late = exchange({ sub: 'late' })
  registry.track(late.ex)
  t.same(late.cuts, [], 'never synchronously inside track')
  await Promise.resolve()
  t.match(late.cuts, [{ reason: 'revoked' }])

  await store.lift('sub', 'late')
  const afterLift = exchange({ sub: 'late' })
  registry.track(afterLift.ex)
  await Promise.resolve()
  t.same(afterLift.cuts, [], 'not once the revocation is lifted')
})

/** A set that answers lookups but whose events are lost, and can be made unreachable. */
function lossyStore(): RevocationStore & { entries: RevocationEntry[]; down: boolean } {
  const s = {
    kind: 'lossy',
    entries: [] as RevocationEntry[],
    down: false,
    lookups: 0,
    async isRevoked(ref: TokenRef) {
      if (s.down) throw new RevocationUnavailableError('down')
      return s.entries.some((e) => ref.values.some(([c, v]) => c === e.claim && v === e.value))
    },
    async put(e: RevocationEntry) {
      s.entries.push(e)
      return e
    },
    async get() {
      return undefined
    },
    async lift() {
      return undefined
    },
    async list() {
      return { entries: [], next: undefined }
    },
    subscribe(_listener: (event: RevocationEvent) => void) {
      return () => {}
    },
    ready: () => true,
    async close() {},
  }
  return s
}

t.test('the periodic re-check cuts what a lost event left open, and keeps what it cannot answer for', async (t) => {
  const store = lossyStore()
  const { registry } = setup(t, { store, recheckS: 1 })
  const lost = exchange({ sub: 'missed' })
  const kept = exchange({ sub: 'fine' })
  registry.track(lost.ex)
  registry.track(kept.ex)

  store.down = true
  await store.put(entry('sub', 'missed'))
  t.same(await registry.recheck(), { checked: 2, cut: 0, unknown: 2 }, 'unknown: kept open')
  t.same(lost.cuts, [])

  store.down = false
  await sleep(1100)
  t.match(lost.cuts, [{ reason: 'revoked' }], 'cut by the interval within stream_recheck_interval')
  t.same(kept.cuts, [])
  t.equal(registry.size, 1)
})

t.test('scale: 50,000 exchanges; an event touches only its own', async (t) => {
  const { clock, store, registry } = setup(t)
  const n = 50_000
  const cuts: Cut[] = []
  const untracks: Array<() => void> = []
  let started = performance.now()
  for (let i = 0; i < n; i++) {
    const ex: TrackedExchange = {
      identity: identity({ sub: `user-${i % 1000}`, exp: T0_S + 60 + (i % 3600) }),
      kind: 'websocket',
      cutAtExpiry: true,
      trace: { startedMs: T0 },
      close: (c) => cuts.push(c),
    }
    untracks.push(registry.track(ex))
  }
  const trackMs = performance.now() - started
  t.equal(registry.size, n)
  started = performance.now()
  await store.put(entry('sub', 'user-7'))
  const eventMs = performance.now() - started
  t.equal(cuts.length, n / 1000, 'only the 50 exchanges of user-7')
  started = performance.now()
  for (let i = 0; i < n; i += 2) untracks[i]!()
  const untrackMs = performance.now() - started
  clock.set((T0_S + 60 + 100) * 1000)
  t.ok(registry.expireDue() > 0)
  t.comment(
    `track ${((trackMs * 1000) / n).toFixed(2)} µs each; event ${eventMs.toFixed(2)} ms; untrack ${((untrackMs * 2000) / n).toFixed(2)} µs each`,
  )
  // Generous: a slow CI machine is fine, a scan of all exchanges per operation is not.
  t.ok(trackMs / n < 0.1, 'track well under 100 µs')
})
