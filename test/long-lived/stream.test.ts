// Streamed responses through Lapse: a never-ending chunked response is cut at expiry (unless its
// route says `cut_streams_at_expiry: false`) and always on revocation. A cut stream is destroyed,
// not ended, so the client sees it incomplete.
import { request } from 'node:http'
import t, { type Test } from 'tap'
import { manualClock } from '../../src/core/clock.js'
import { ADMIN_TOKEN, decisions, runApp, send, waitFor } from '../fixtures/app.js'
import { testKeys } from '../fixtures/keys.js'
import { startLongLivedUpstream } from './upstream.js'

const T0 = Date.parse('2030-01-01T00:00:00Z')
// One timer sleep (250 ms) after the clock jumps, plus loopback: the test allows 1 s.
const CUT_BOUND_MS = 1000
const QUIET_MS = 400

const ROUTES = [
  { path: '/orders/stream/**', scopes: ['orders:read'] },
  { path: '/orders/download/**', scopes: ['orders:read'], cut_streams_at_expiry: false },
]

interface Stream {
  readonly status: number
  /** Chunks received so far. */
  readonly chunks: number
  /** Resolves when the response ends or is cut: `complete` is false for a cut. */
  readonly ended: Promise<{ complete: boolean; atMs: number }>
  /** The client hangs up. */
  close(): void
}

function openStream(url: string, token: string): Promise<Stream> {
  return new Promise((resolve, reject) => {
    const req = request(url, { headers: { authorization: `Bearer ${token}` }, agent: false })
    req.on('error', () => {})
    req.on('response', (res) => {
      let chunks = 0
      res.on('data', () => chunks++)
      res.on('error', () => {})
      const ended = new Promise<{ complete: boolean; atMs: number }>((done) =>
        res.once('close', () => done({ complete: res.complete, atMs: Date.now() })),
      )
      resolve({
        status: res.statusCode ?? 0,
        get chunks() {
          return chunks
        },
        ended,
        close: () => res.destroy(),
      })
    })
    req.once('error', reject)
    req.end()
  })
}

const endedWithin = (s: Stream, ms: number) =>
  Promise.race([s.ended, new Promise<'open'>((resolve) => setTimeout(() => resolve('open'), ms))])

async function setup(t: Test) {
  const keys = await testKeys()
  const clock = manualClock(T0)
  const up = await startLongLivedUpstream(t)
  const lapse = await runApp(t, { upstream: up.upstream, clock, routes: ROUTES, env: { LAPSE_CLOCK_SKEW: '0' } })
  const nowS = () => Math.floor(clock.now() / 1000)
  const mint = (claims: Record<string, unknown> = {}) => keys.mint(claims, { nowS: nowS() })
  const revoke = (body: object) =>
    send(`${lapse.adminUrl}/v1/revocations`, {
      method: 'POST',
      headers: [
        ['authorization', `Bearer ${ADMIN_TOKEN}`],
        ['content-type', 'application/json'],
      ],
      body: JSON.stringify({ reason: 'test', ...body }),
    })
  return { clock, up, lapse, nowS, mint, revoke }
}

t.test('a never-ending stream is cut at exp: incomplete for the client, stopped at the upstream', async (t) => {
  const { clock, up, lapse, nowS, mint } = await setup(t)
  const exp = nowS() + 60
  const stream = await openStream(`${lapse.url}/orders/stream/events`, await mint({ exp }))
  t.equal(stream.status, 200)
  await waitFor(() => stream.chunks >= 2, 'the first chunks')

  clock.set(exp * 1000 - 1)
  t.equal(await endedWithin(stream, QUIET_MS), 'open', 'flowing 1 ms before exp')
  const before = stream.chunks
  await waitFor(() => stream.chunks > before, 'more chunks')

  clock.set(exp * 1000)
  const ended = await endedWithin(stream, CUT_BOUND_MS)
  t.match(ended, { complete: false }, `cut within ${CUT_BOUND_MS} ms of exp, without a final chunk`)
  await waitFor(() => up.openStreams === 0, 'the upstream stream to be closed')
  const audit = await waitFor(() => decisions(lapse).find((l) => l.cut), 'the audit line of the cut stream')
  t.match(audit, { decision: 'allow', cut: 'expired', connection: 'stream', route: '/orders/stream/**' })
  t.type(audit.lived_ms, 'number')
})

t.test('a never-ending stream is cut on revocation', async (t) => {
  const { up, lapse, mint, revoke } = await setup(t)
  const stream = await openStream(`${lapse.url}/orders/stream/events`, await mint({ sub: 'streamer' }))
  const other = await openStream(`${lapse.url}/orders/stream/events`, await mint({ sub: 'someone-else' }))
  await waitFor(() => stream.chunks >= 1, 'the first chunk')
  t.equal((await revoke({ claim: 'sub', value: 'streamer' })).status, 201)
  t.match(await endedWithin(stream, 500), { complete: false }, 'cut within 500 ms of the admin call')
  t.equal(await endedWithin(other, QUIET_MS), 'open', 'another subject keeps streaming')
  await waitFor(() => up.openStreams === 1, 'the cut stream to be closed at the upstream')
  t.match(await waitFor(() => decisions(lapse).find((l) => l.cut), 'the audit line'), { cut: 'revoked', sub: 'streamer' })
})

t.test('a route with cut_streams_at_expiry: false lets the stream run past exp, but revocation cuts it', async (t) => {
  const { clock, nowS, lapse, mint, revoke } = await setup(t)
  const exp = nowS() + 60
  const jti = 'download-1'
  const stream = await openStream(`${lapse.url}/orders/download/big.iso`, await mint({ exp, jti }))
  await waitFor(() => stream.chunks >= 1, 'the first chunk')
  clock.set((exp + 3600) * 1000)
  t.equal(await endedWithin(stream, QUIET_MS), 'open', 'still flowing an hour after exp')
  const before = stream.chunks
  await waitFor(() => stream.chunks > before, 'more chunks after exp')

  // A new request with the same token is refused, though: the stream was allowed to finish, not the grant.
  const again = await send(`${lapse.url}/orders/download/big.iso`, {
    headers: [['authorization', `Bearer ${await mint({ exp, jti: 'x' })}`]],
  })
  t.equal(again.status, 401)

  t.equal((await revoke({ claim: 'jti', value: jti })).status, 201)
  t.match(await endedWithin(stream, 500), { complete: false }, 'revocation cuts it')
})

t.test('streams that end before they join the registry leave no gap: every one still open is cut', async (t) => {
  // Open responses wait ~100 ms before they are registered, in a slot array; a hang-up removes its
  // entry by moving the last one into its slot. Hang-ups at the front and in the middle must not
  // lose the entries moved, or a revoked stream would run on.
  const { up, lapse, mint, revoke } = await setup(t)
  const token = await mint({ sub: 'many' })
  const streams = await Promise.all(Array.from({ length: 6 }, () => openStream(`${lapse.url}/orders/stream/events`, token)))
  streams[0]!.close()
  streams[3]!.close()
  const open = streams.filter((_, i) => i !== 0 && i !== 3)
  await waitFor(() => open.every((s) => s.chunks >= 1), 'the first chunk on every open stream')
  await waitFor(() => up.openStreams === open.length, 'the hung-up streams to close at the upstream')
  t.equal((await revoke({ claim: 'sub', value: 'many' })).status, 201)
  const ended = await Promise.all(open.map((s) => endedWithin(s, 500)))
  t.same(
    ended.map((e) => e !== 'open' && !e.complete),
    open.map(() => true),
    'all four remaining streams cut within 500 ms',
  )
  await waitFor(() => up.openStreams === 0, 'every stream closed at the upstream')
})
