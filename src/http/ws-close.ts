// A proxied WebSocket that Lapse can close on its own, cleanly: it follows the frame boundaries of
// both directions, so its close frame never lands in the middle of a frame the peer is reading.
//
//   const link = createWsLink(clientSocket)   // at upgrade, before the upstream answers
//   link.attach(upstreamSocket)               // once http-proxy has piped the two sockets
//   link.close(1008, 'token expired')         // close frame to both ends, then both sockets closed
//
// Closing: stop piping both ways; in each direction finish the frame in flight (at most
// `maxTailBytes`, within `graceMs`), write a close frame (masked towards the upstream, RFC 6455
// §5.3), end the socket, and destroy whatever is still open after `graceMs`.
import { randomFillSync } from 'node:crypto'
import type { Duplex } from 'node:stream'

export interface WsLink {
  /** The upstream answered 101 and its socket is piped to the client's: follow both from now on. */
  attach(upstream: Duplex): void
  /** A close frame with `code` and `reason` to both ends, then both sockets closed. Idempotent. */
  close(code: number, reason: string): void
  readonly state: 'open' | 'closing' | 'closed'
  /** Whether the upstream answered 101 and the sockets are relayed. */
  readonly attached: boolean
}

export interface WsLinkOptions {
  /** Until both sockets are destroyed, whatever the peers do. */
  readonly graceMs: number
  /** Of a frame already in flight at the cut; a longer rest is not sent and the socket is destroyed. */
  readonly maxTailBytes: number
}

export const WS_LINK_DEFAULTS: WsLinkOptions = {
  graceMs: 1000,
  // A close frame needs a frame boundary: finish a small in-flight frame rather than drop the
  // connection without one, but never stream a large message past the cut.
  maxTailBytes: 64 * 1024,
}

/** RFC 6455 §7.4.1: the endpoint is terminating the connection because a message violates its policy. */
export const WS_POLICY_VIOLATION = 1008

/** RFC 6455 §7.4.1: the endpoint is going away, such as a server going down. */
export const WS_GOING_AWAY = 1001

/**
 * Follows one direction of a WebSocket byte stream and knows where each frame ends (RFC 6455 §5.2).
 * It reads headers only: payload bytes are skipped by count, so a chunk costs O(frames in it).
 */
export class FrameCursor {
  /** Header bytes seen of the frame in progress; 0 at a boundary or inside the payload. */
  private headerFill = 0
  private headerSize = 2
  private extendedEnd = 2
  private payloadLength = 0
  /** Payload bytes still to come. */
  private remaining = 0

  get atBoundary(): boolean {
    return this.headerFill === 0 && this.remaining === 0
  }

  /** Bytes still to come in the frame in progress, when its header is complete; otherwise undefined. */
  get tail(): number | undefined {
    return this.headerFill === 0 ? this.remaining : undefined
  }

  /**
   * Consumes `chunk` from `start`. With `stopAtBoundary`, stops where the frame in progress ends and
   * returns that offset (-1 when it ends beyond the chunk); otherwise consumes all and returns its length.
   */
  advance(chunk: Uint8Array, stopAtBoundary = false, start = 0): number {
    const n = chunk.length
    let i = start
    while (i < n) {
      if (this.remaining > 0) {
        const take = Math.min(this.remaining, n - i)
        this.remaining -= take
        i += take
        if (this.remaining === 0 && stopAtBoundary) return i
        continue
      }
      const byte = chunk[i++]!
      const fill = this.headerFill++
      if (fill === 1) {
        const len7 = byte & 0x7f
        const extended = len7 === 126 ? 2 : len7 === 127 ? 8 : 0
        this.extendedEnd = 2 + extended
        this.headerSize = this.extendedEnd + (byte & 0x80 ? 4 : 0)
        this.payloadLength = extended === 0 ? len7 : 0
      } else if (fill >= 2 && fill < this.extendedEnd) {
        // Big-endian; past 2^53 precision is lost, which only matters for frames no peer finishes.
        this.payloadLength = this.payloadLength * 256 + byte
      }
      if (fill >= 1 && this.headerFill === this.headerSize) {
        this.headerFill = 0
        this.remaining = this.payloadLength
        if (this.remaining === 0 && stopAtBoundary) return i
      }
    }
    return stopAtBoundary ? -1 : n
  }
}

/** A close frame (RFC 6455 §5.5.1): status code, then a UTF-8 reason, 125 bytes of payload at most. */
export function closeFrame(code: number, reason: string, masked: boolean): Buffer {
  const text = utf8Prefix(Buffer.from(reason, 'utf8'), 123)
  const payload = Buffer.allocUnsafe(2 + text.length)
  payload.writeUInt16BE(code, 0)
  text.copy(payload, 2)
  const frame = Buffer.allocUnsafe(2 + (masked ? 4 : 0) + payload.length)
  frame[0] = 0x88 // FIN, opcode 0x8 (close)
  frame[1] = (masked ? 0x80 : 0) | payload.length
  if (!masked) {
    payload.copy(frame, 2)
    return frame
  }
  const mask = frame.subarray(2, 6)
  randomFillSync(mask)
  for (let i = 0; i < payload.length; i++) frame[6 + i] = payload[i]! ^ mask[i & 3]!
  return frame
}

/**
 * The longest prefix of `text` within `maxBytes` that ends on a character boundary: RFC 6455 §5.5.1
 * makes the reason UTF-8, and a peer must fail the connection on invalid UTF-8 (§8.1).
 */
function utf8Prefix(text: Buffer, maxBytes: number): Buffer {
  if (text.length <= maxBytes) return text
  let end = maxBytes
  // A continuation byte (10xxxxxx) at the cut: the character it belongs to starts before it.
  while (end > 0 && (text[end]! & 0xc0) === 0x80) end--
  return text.subarray(0, end)
}

/** One direction of the link: where its bytes go, and how its cut is going. */
interface Direction {
  readonly to: Duplex
  readonly cursor: FrameCursor
  readonly masked: boolean
  /** The close frame is written (or the socket given up on): later bytes are dropped. */
  done: boolean
  tailBytes: number
}

export function createWsLink(client: Duplex, opts: WsLinkOptions = WS_LINK_DEFAULTS): WsLink {
  let upstream: Duplex | undefined
  let down: Direction | undefined // upstream → client
  let up: Direction | undefined // client → upstream
  let state: WsLink['state'] = 'open'
  let code = WS_POLICY_VIOLATION
  let reason = ''

  const destroyBoth = () => {
    state = 'closed'
    client.destroy()
    upstream?.destroy()
  }
  const finish = (d: Direction) => {
    d.done = true
    d.to.end(closeFrame(code, reason, d.masked))
  }
  const onData = (d: Direction) => (chunk: Buffer) => {
    if (state === 'open') return void d.cursor.advance(chunk)
    if (d.done) return // the peer's close frame and anything after it: nothing to forward
    const end = d.cursor.advance(chunk, true)
    const rest = end === -1 ? chunk : chunk.subarray(0, end)
    d.tailBytes += rest.length
    if (d.tailBytes > opts.maxTailBytes) return destroyBoth()
    d.to.write(rest)
    if (end !== -1) finish(d)
  }
  const startClosing = (d: Direction) => {
    if (d.cursor.atBoundary) return finish(d)
    // Known up front when the header is complete: no point relaying a tail we would cut anyway.
    if ((d.cursor.tail ?? 0) > opts.maxTailBytes) destroyBoth()
  }

  return {
    get state() {
      return state
    },
    get attached() {
      return upstream !== undefined
    },
    attach(socket) {
      if (state !== 'open') return void socket.destroy()
      upstream = socket
      down = { to: client, cursor: new FrameCursor(), masked: false, done: false, tailBytes: 0 }
      up = { to: socket, cursor: new FrameCursor(), masked: true, done: false, tailBytes: 0 }
      // Registered after http-proxy's pipes, so each chunk is counted as it is relayed.
      socket.on('data', onData(down))
      client.on('data', onData(up))
      // A client that is gone has nothing more to receive; the pipe only ends the upstream on a clean end.
      client.once('close', () => socket.destroy())
    },
    close(closeCode, closeReason) {
      if (state !== 'open') return
      if (!upstream || !down || !up) {
        // Not upgraded yet: there is no WebSocket to close, only a pending handshake.
        state = 'closed'
        client.destroy()
        return
      }
      state = 'closing'
      code = closeCode
      reason = closeReason
      upstream.unpipe(client)
      client.unpipe(upstream)
      const timer = setTimeout(destroyBoth, opts.graceMs)
      timer.unref()
      let open = 2
      const closed = () => {
        if (--open === 0) {
          clearTimeout(timer)
          state = 'closed'
        }
      }
      client.once('close', closed)
      upstream.once('close', closed)
      startClosing(down)
      // The client's side first: when thousands are cut at once, every client's close frame
      // leaves before any upstream's (nothing is relayed between the two any more).
      const upward = up
      setImmediate(() => {
        if (state === 'closing') startClosing(upward)
      })
      // Keep reading: the peers answer with their own close frames and FINs, which end the sockets.
      client.resume()
      upstream.resume()
    },
  }
}
