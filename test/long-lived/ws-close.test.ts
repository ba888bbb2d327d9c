// Closing a relayed WebSocket cleanly: frame boundaries in both directions, a close frame 1008 at
// the first boundary, masked towards the upstream; a frame too long to finish means a plain cut.
import { createServer, connect, type Socket } from 'node:net'
import type { Writable } from 'node:stream'
import fc from 'fast-check'
import t, { type Test } from 'tap'
import * as wsModule from 'ws'
import { closeFrame, createWsLink, FrameCursor } from '../../src/http/ws-close.js'

function frame(payload: Buffer, masked: boolean, opcode = 0x1): Buffer {
  const n = payload.length
  const ext = n < 126 ? 0 : n < 65536 ? 2 : 8
  const head = Buffer.alloc(2 + ext + (masked ? 4 : 0))
  head[0] = 0x80 | opcode
  head[1] = (masked ? 0x80 : 0) | (ext === 0 ? n : ext === 2 ? 126 : 127)
  if (ext === 2) head.writeUInt16BE(n, 2)
  if (ext === 8) head.writeBigUInt64BE(BigInt(n), 2)
  if (!masked) return Buffer.concat([head, payload])
  const mask = Buffer.from([1, 2, 3, 4])
  mask.copy(head, 2 + ext)
  const body = Buffer.from(payload.map((b, i) => b ^ mask[i & 3]!))
  return Buffer.concat([head, body])
}

t.test('FrameCursor finds every frame end, however the bytes are split', async (t) => {
  const sizes = [0, 1, 125, 126, 127, 300, 65535, 65536, 70000]
  fc.assert(
    fc.property(
      fc.array(fc.record({ size: fc.constantFrom(...sizes), masked: fc.boolean() }), { minLength: 1, maxLength: 6 }),
      fc.array(fc.integer({ min: 1, max: 70_000 }), { minLength: 1, maxLength: 20 }),
      (frames, cuts) => {
        const built = frames.map((f) => frame(Buffer.alloc(f.size, 7), f.masked))
        const ends = new Set<number>()
        let total = 0
        for (const b of built) ends.add((total += b.length))
        const all = Buffer.concat(built)
        const cursor = new FrameCursor()
        let at = 0
        for (const step of [...cuts, all.length]) {
          const next = Math.min(all.length, at + step)
          // Each split point is a boundary exactly when a frame ends there.
          cursor.advance(all.subarray(at, next))
          if (cursor.atBoundary !== ends.has(next)) return false
          at = next
          if (at === all.length) break
        }
        return cursor.atBoundary
      },
    ),
  )
  t.pass()
})

t.test('FrameCursor with stopAtBoundary stops right after the frame in progress', async (t) => {
  const a = frame(Buffer.alloc(200, 1), false)
  const b = frame(Buffer.from('next'), false)
  const cursor = new FrameCursor()
  cursor.advance(a.subarray(0, 50))
  t.notOk(cursor.atBoundary)
  t.equal(cursor.tail, 200 - (50 - 4))
  const rest = Buffer.concat([a.subarray(50), b])
  t.equal(cursor.advance(rest, true), a.length - 50)
  t.ok(cursor.atBoundary)
  t.equal(new FrameCursor().advance(a.subarray(0, 10), true), -1)
})

t.test('closeFrame: code and reason, masked or not', async (t) => {
  const plain = closeFrame(1008, 'token expired', false)
  t.same([...plain.subarray(0, 4)], [0x88, 15, 0x03, 0xf0])
  t.equal(plain.subarray(4).toString(), 'token expired')
  const masked = closeFrame(1008, 'token revoked', true)
  t.equal(masked[1], 0x80 | 15)
  const mask = masked.subarray(2, 6)
  const payload = Buffer.from(masked.subarray(6).map((b, i) => b ^ mask[i & 3]!))
  t.equal(payload.readUInt16BE(0), 1008)
  t.equal(payload.subarray(2).toString(), 'token revoked')
  t.equal(closeFrame(1008, 'x'.repeat(300), false).length, 2 + 125, 'a reason is cut to fit a control frame')
})

t.test('closeFrame cuts a long reason at a UTF-8 character boundary, so a strict peer accepts it', async (t) => {
  // 'é' is 2 bytes, '€' 3, '😀' 4: after the ASCII prefix, byte 123 falls inside a character.
  for (const [name, prefix, ch, keptBytes] of [
    ['é', 'xx', 'é', 122],
    ['€', 'x', '€', 121],
    ['😀', 'xx', '😀', 122],
  ] as const) {
    const reason = prefix + ch.repeat(100)
    const frame = closeFrame(1008, reason, false)
    const text = frame.subarray(4)
    t.equal(text.length, keptBytes, `${name}: whole characters only`)
    t.ok(frame.length <= 2 + 125, `${name}: fits a control frame`)
    t.equal(text.toString('utf8'), reason.slice(0, text.toString('utf8').length), `${name}: a prefix of the reason`)
    t.doesNotThrow(() => new TextDecoder('utf-8', { fatal: true }).decode(text), `${name}: valid UTF-8`)
    // ws's Receiver fails the connection with 1007 on invalid UTF-8 in a close reason (RFC 6455 §8.1).
    const receiver = new Receiver({ isServer: false })
    const seen = await new Promise<{ code?: number; error?: string }>((resolve) => {
      receiver.on('conclude', (code: number) => resolve({ code }))
      receiver.on('error', (err: Error) => resolve({ error: err.message }))
      receiver.write(frame)
    })
    t.same(seen, { code: 1008 }, `${name}: a strict parser reads the close`)
  }
  const exact = `${'x'.repeat(121)}é`
  t.equal(closeFrame(1008, exact, false).subarray(4).toString('utf8'), exact, 'a reason of exactly 123 bytes is kept whole')
})

/** Two connected TCP sockets on loopback. */
async function socketPair(t: Test): Promise<[Socket, Socket]> {
  const server = createServer()
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
  const port = (server.address() as { port: number }).port
  const accepted = new Promise<Socket>((r) => server.once('connection', r))
  const a = connect(port, '127.0.0.1')
  const b = await accepted
  server.close()
  t.teardown(() => {
    a.destroy()
    b.destroy()
  })
  a.on('error', () => {})
  b.on('error', () => {})
  return [a, b]
}

// ws's own frame parser, strict about masking (isServer: frames must be masked); @types/ws omits it.
const Receiver = (wsModule as unknown as { Receiver: new (opts: { isServer: boolean }) => Writable }).Receiver

/** A WebSocket parser on a raw socket: the messages and the close it saw. */
function peer(socket: Socket, isServer: boolean) {
  const seen = { messages: [] as string[], close: undefined as { code: number; reason: string } | undefined, ended: false }
  const receiver = new Receiver({ isServer })
  receiver.on('message', (data: Buffer) => seen.messages.push(data.toString()))
  receiver.on('conclude', (code: number, reason: Buffer) => (seen.close = { code, reason: reason.toString() }))
  receiver.on('error', () => {})
  socket.pipe(receiver)
  const closed = new Promise<void>((r) => socket.once('close', () => r()))
  socket.once('end', () => (seen.ended = true))
  return { seen, closed }
}

/** client ⇄ [clientSide | link | upstreamSide] ⇄ upstream, piped as http-proxy pipes them. */
async function relay(t: Test, opts?: Parameters<typeof createWsLink>[1]) {
  const [client, clientSide] = await socketPair(t)
  const [upstreamSide, upstream] = await socketPair(t)
  upstreamSide.pipe(clientSide).pipe(upstreamSide)
  const link = createWsLink(clientSide, opts)
  link.attach(upstreamSide)
  return { client, upstream, link, clientSide, upstreamSide }
}

const until = async (check: () => boolean, what: string) => {
  for (let i = 0; i < 200 && !check(); i++) await new Promise((r) => setTimeout(r, 5))
  if (!check()) throw new Error(`timed out: ${what}`)
}

t.test('at a boundary: close frames to both ends at once, then both sockets close', async (t) => {
  const { client, upstream, link } = await relay(t)
  const c = peer(client, false)
  const u = peer(upstream, true)
  upstream.write(frame(Buffer.from('hi'), false))
  client.write(frame(Buffer.from('yo'), true))
  await until(() => c.seen.messages.length === 1 && u.seen.messages.length === 1, 'the messages')
  link.close(1008, 'token expired')
  t.equal(link.state, 'closing')
  await until(() => c.seen.close !== undefined && u.seen.close !== undefined, 'the close frames')
  t.same(c.seen.close, { code: 1008, reason: 'token expired' })
  t.same(u.seen.close, { code: 1008, reason: 'token expired' }, 'masked, or the upstream parser would refuse it')
  await until(() => c.seen.ended && u.seen.ended, 'both ends to see FIN')
  client.end()
  upstream.end()
  await Promise.all([c.closed, u.closed])
  await until(() => link.state === 'closed', 'the link to be closed')
  t.pass()
})

t.test('mid-frame: the frame in flight is finished, then the close frame; nothing after it', async (t) => {
  const { client, upstream, link } = await relay(t)
  const c = peer(client, false)
  const u = peer(upstream, true)
  const big = frame(Buffer.alloc(1000, 0x61), false)
  upstream.write(big.subarray(0, 300))
  const fromClient = frame(Buffer.alloc(500, 0x62), true)
  client.write(fromClient.subarray(0, 100))
  await new Promise((r) => setTimeout(r, 50))
  link.close(1008, 'token revoked')
  upstream.write(Buffer.concat([big.subarray(300), frame(Buffer.from('after the cut'), false)]))
  client.write(Buffer.concat([fromClient.subarray(100), frame(Buffer.from('after the cut'), true)]))
  await until(() => c.seen.close !== undefined && u.seen.close !== undefined, 'the close frames')
  t.same(c.seen.messages, ['a'.repeat(1000)], 'the whole frame, then nothing more')
  t.same(u.seen.messages, ['b'.repeat(500)])
  t.same(c.seen.close, { code: 1008, reason: 'token revoked' })
  t.same(u.seen.close, { code: 1008, reason: 'token revoked' })
})

t.test('a frame in flight longer than maxTailBytes: no close frame, both sockets destroyed', async (t) => {
  const { client, upstream, link } = await relay(t, { graceMs: 1000, maxTailBytes: 1024 })
  const c = peer(client, false)
  const u = peer(upstream, true)
  upstream.write(frame(Buffer.alloc(100_000, 1), false).subarray(0, 2000))
  await new Promise((r) => setTimeout(r, 50))
  link.close(1008, 'token expired')
  await Promise.all([c.closed, u.closed])
  t.equal(c.seen.close, undefined)
  t.equal(link.state, 'closed')
})

t.test('peers that never answer are destroyed after graceMs', async (t) => {
  const { client, upstream, link } = await relay(t, { graceMs: 100, maxTailBytes: 1024 })
  const c = peer(client, false)
  const u = peer(upstream, true)
  const started = Date.now()
  link.close(1008, 'token expired')
  await Promise.all([c.closed, u.closed])
  t.ok(Date.now() - started < 1000)
  t.same(c.seen.close, { code: 1008, reason: 'token expired' })
})

t.test('closed before the upstream answered: the client socket is destroyed, a late upstream too', async (t) => {
  const [client, clientSide] = await socketPair(t)
  const [upstreamSide] = await socketPair(t)
  const link = createWsLink(clientSide)
  const closed = new Promise((r) => client.once('close', r))
  link.close(1008, 'token expired')
  await closed
  link.attach(upstreamSide)
  t.ok(upstreamSide.destroyed)
  t.equal(link.state, 'closed')
})
