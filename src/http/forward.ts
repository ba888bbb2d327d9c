// An allowed request → the upstream, streamed both ways: HTTP over keep-alive connections, each
// WebSocket upgrade on a connection of its own.
//
//   const forwarder = createForwarder({ upstream, timeoutMs, forwardAuthorization })
//   const fwd = forwarder.web(req, res, target, identity, sink)   // sink.upstreamFailed('upstream_timeout' | 'upstream_unavailable', err)
//   fwd.abandon()                      // the client left before the response ended: stop the upstream request
//   const up = forwarder.ws(req, socket, head, target, identity, sink)   // when isWebSocketUpgrade(req)
//   up.link.close(1008, 'token expired')   // up.status: 101, or the upstream's ordinary answer
//
// Why two engines (undici Pool for HTTP, http-proxy for upgrades, whose tunnel ws-close.ts builds
// on): chosen by measurement, bench/README.md rows 2 and 2x; docs/design.md#measured-not-assumed.
import { createHash } from 'node:crypto'
import { Agent, type IncomingHttpHeaders, type IncomingMessage, type ServerResponse, type ClientRequest } from 'node:http'
import { Agent as HttpsAgent } from 'node:https'
import type { Duplex } from 'node:stream'
import type { TLSSocket } from 'node:tls'
import { performance } from 'node:perf_hooks'
import httpProxy from 'http-proxy'
import { Pool, type Dispatcher } from 'undici'
import { LapseError } from '../core/errors.js'
import type { Binding, Identity, Target } from '../core/types.js'
import { closeDelimited, responseHeaders, upstreamHeaders } from './headers.js'
import { createWsLink, type WsLink } from './ws-close.js'

export type UpstreamFailure = 'upstream_timeout' | 'upstream_unavailable'

/** Told when forwarding fails while Lapse can still answer: an object, so a request costs no callback. */
export interface UpstreamFailureSink {
  upstreamFailed(failure: UpstreamFailure, err: Error): void
}

export interface ForwarderOptions {
  readonly upstream: URL
  /**
   * Until the upstream's response headers are complete (connect included), for HTTP and for a
   * WebSocket upgrade's 101 alike; after that, streams may idle.
   */
  readonly timeoutMs: number
  readonly forwardAuthorization: boolean
  /** LAPSE_CLIENT_CERT_HEADER is set: the mesh's x-forwarded-client-cert goes upstream; otherwise it is removed. */
  readonly trustClientCertHeader?: boolean | undefined
  /** HTTP connections to the upstream at most (WebSockets have their own); the rest queue. */
  readonly maxConnections?: number | undefined
}

/** One forwarded HTTP request. */
export interface Forwarding {
  /** The client went away before the response ended: stops the upstream request (idempotent). */
  abandon(): void
}

export interface Forwarder {
  /** `sink` is told at most once, and only while no response byte has reached the client. */
  web(
    req: IncomingMessage,
    res: ServerResponse,
    target: Target,
    identity: Identity | undefined,
    sink: UpstreamFailureSink,
    peer?: string,
    bound?: readonly string[],
    binding?: Binding,
  ): Forwarding
  /**
   * Only for a request `isWebSocketUpgrade` accepts. `sink` is told only while nothing of the
   * upstream's answer has reached the client; after that an upstream failure destroys the client socket.
   */
  ws(
    req: IncomingMessage,
    socket: Duplex,
    head: Buffer,
    target: Target,
    identity: Identity | undefined,
    sink: UpstreamFailureSink,
    peer?: string,
    bound?: readonly string[],
    binding?: Binding,
  ): Upgrading
  close(): void
}

/** One forwarded WebSocket upgrade. */
export interface Upgrading {
  readonly link: WsLink
  /** The upstream's answer: 101, or the status of an ordinary answer relayed as is; undefined until its head. */
  readonly status: number | undefined
}

/**
 * The upgrades `ws` proxies: a GET asking for websocket (RFC 6455 §4.1), exactly what http-proxy's
 * ws pass accepts; it destroys the client socket, unanswered, on anything else.
 */
export function isWebSocketUpgrade(req: IncomingMessage): boolean {
  return req.method === 'GET' && req.headers.upgrade?.toLowerCase() === 'websocket'
}

const EXCHANGE = Symbol('lapse.exchange')
type Tracked = IncomingMessage & { [EXCHANGE]?: UpgradeExchange }

export function createForwarder(opts: ForwarderOptions): Forwarder {
  const pool = createPool(opts)
  const deadlines = new Deadlines(opts.timeoutMs)
  const { proxy, agent } = createUpgradeProxy(opts.upstream, deadlines)
  const headersFor = (
    req: IncomingMessage,
    identity: Identity | undefined,
    upgrade: boolean,
    peer: string | undefined,
    bound: readonly string[] | undefined,
    binding: Binding | undefined,
  ) =>
    upstreamHeaders(req.headers, identity, {
      remoteAddress: req.socket.remoteAddress,
      forwardAuthorization: opts.forwardAuthorization,
      upgrade,
      tls: (req.socket as TLSSocket).encrypted === true,
      peer,
      trustClientCertHeader: opts.trustClientCertHeader === true,
      bound,
      binding: binding?.kind,
    })

  return {
    web(req, res, target, identity, sink, peer, bound, binding) {
      const headers = headersFor(req, identity, false, peer, bound, binding)
      // undici frames the body itself: Content-Length when the client sent one, chunked otherwise
      // (a chunked GET or DELETE stays one framed message; its bytes never become a second request).
      const hasBody = req.headers['content-length'] !== undefined || req.headers['transfer-encoding'] !== undefined
      const forwarding = new UpstreamExchange(res, deadlines, sink)
      try {
        pool.dispatch(
          {
            origin: opts.upstream.origin,
            path: pathOf(target),
            method: req.method as Dispatcher.HttpMethod,
            headers: headers as Record<string, string | string[]>,
            body: hasBody ? req : null,
          },
          forwarding,
        )
      } catch (err) {
        // undici refused the request before sending it (a header value it will not write).
        forwarding.onError(err as Error)
      }
      return forwarding
    },
    ws(req, socket, head, target, identity, sink, peer, bound, binding) {
      req.url = pathOf(target)
      req.headers = headersFor(req, identity, true, peer, bound, binding)
      return forwardUpgrade(proxy, deadlines, req, socket, head, sink)
    },
    close() {
      deadlines.close()
      proxy.close()
      agent.destroy()
      pool.destroy().catch(() => {})
    },
  }
}

const pathOf = (target: Target) => (target.query || target.hasQuery ? `${target.path}?${target.query}` : target.path)

/** Plain HTTP: undici's Pool of keep-alive connections to the upstream. */
function createPool(opts: ForwarderOptions): Pool {
  return new Pool(opts.upstream.origin, {
    connections: opts.maxConnections ?? 256,
    // Lapse bounds the wait for response headers itself (one timer, connect and queue included);
    // these only stop undici's own defaults (10 s connect, 300 s headers) from answering first.
    connect: { timeout: opts.timeoutMs },
    headersTimeout: opts.timeoutMs,
    // Streams may idle: a slow download or an event stream is bounded by its token, not a timer.
    bodyTimeout: 0,
    // A request body that does not match its Content-Length fails rather than going upstream
    // misframed (Node's parser already holds the client to it; this is the upstream hop's check).
    strictContentLength: true,
  })
}

/** WebSocket upgrades only: http-proxy's tunnel, with its agent and its listeners for every upgrade. */
function createUpgradeProxy(upstream: URL, deadlines: Deadlines): { proxy: httpProxy; agent: Agent } {
  // A connection that carried an upgrade is never reused, whatever the upstream answered: after an
  // ordinary answer (426, 404, …) it may still be owed bytes or hold state of the upgrade. Without
  // keep-alive and without a socket limit, Node's agent neither pools a socket nor hands it to a
  // queued request (it queues only at maxSockets).
  const agentOptions = { keepAlive: false, maxSockets: Infinity }
  const agent = upstream.protocol === 'https:' ? new HttpsAgent(agentOptions) : new Agent(agentOptions)
  const proxy = httpProxy.createProxyServer({
    target: upstream.origin,
    agent,
    // Lapse writes X-Forwarded-* itself (http/headers.ts), replacing http-proxy's appends.
    xfwd: false,
    prependPath: true,
    ignorePath: false,
    // The client's Host is kept so virtual hosts behind the sidecar keep working.
    changeOrigin: false,
    ws: true,
  })
  // Upgraded upstream sockets waiting for http-proxy's 'open' (emitted once the sockets are piped).
  const upgraded = new WeakMap<Duplex, WsLink>()
  proxy.on('proxyReqWs', (proxyReq: ClientRequest, req: Tracked, socket: Duplex) =>
    watchUpgradeRequest(proxyReq, req[EXCHANGE], socket, deadlines, upgraded),
  )
  proxy.on('open', (proxySocket: Duplex) => {
    const link = upgraded.get(proxySocket)
    if (!link) return
    upgraded.delete(proxySocket)
    link.attach(proxySocket)
  })
  return { proxy, agent }
}

/** The upstream request of one upgrade, as http-proxy made it: its deadline, its answer, its abort. */
function watchUpgradeRequest(
  proxyReq: ClientRequest,
  exchange: UpgradeExchange | undefined,
  socket: Duplex,
  deadlines: Deadlines,
  upgraded: WeakMap<Duplex, WsLink>,
): void {
  if (exchange) exchange.proxyReq = proxyReq
  // The deadline ends with the answer's complete head, not with its first byte.
  // Runs before http-proxy's own 'response' listener, which writes this head to the client.
  proxyReq.once('response', (res: IncomingMessage) => {
    closeDelimited(res.headers)
    // The relayed answer ends the upstream connection too, even if the upstream kept it alive.
    res.once('end', () => proxyReq.destroy())
    if (!exchange) return
    exchange.status = res.statusCode
    deadlines.remove(exchange)
  })
  // A client that leaves before the upstream answers must not leave the upgrade request running.
  const abort = () => proxyReq.destroy()
  socket.once('close', abort)
  proxyReq.once('upgrade', (_res: IncomingMessage, proxySocket: Duplex) => {
    socket.off('close', abort)
    if (!exchange) return
    exchange.status = 101
    deadlines.remove(exchange)
    const link = exchange.link
    // Cut while the upstream was answering: nothing is relayed.
    if (link.state !== 'open') return void proxySocket.destroy()
    upgraded.set(proxySocket, link)
  })
}

/** One upgrade through http-proxy, its url and headers already those of the upstream. */
function forwardUpgrade(
  proxy: httpProxy,
  deadlines: Deadlines,
  req: IncomingMessage,
  socket: Duplex,
  head: Buffer,
  sink: UpstreamFailureSink,
): Upgrading {
  const link = createWsLink(socket)
  const exchange = new UpgradeExchange(link, deadlines)
  ;(req as Tracked)[EXCHANGE] = exchange
  const fail = (err: Error) => {
    deadlines.remove(exchange)
    // After the 101 the client speaks WebSocket, and after an ordinary answer's head it reads
    // that answer's body: an HTTP answer of our own would corrupt either.
    if (link.attached || exchange.status !== undefined) return void socket.destroy()
    sink.upstreamFailed(exchange.timedOut ? 'upstream_timeout' : 'upstream_unavailable', err)
  }
  const key = req.headers['sec-websocket-key']
  proxy.ws(req, socket, head, {}, fail)
  // http-proxy's listeners write the upstream's answer to the client: its 'upgrade' one a 101
  // and the tunnel, its 'response' one an ordinary answer (Node hands a 101 without Upgrade and
  // Connection: upgrade over as one). They are held back until the answer is checked; they were
  // added within proxy.ws, and no answer can arrive before this line.
  const proxyReq = exchange.proxyReq
  if (proxyReq) {
    const refuse = (upstreamSocket: Duplex) => {
      upstreamSocket.destroy()
      fail(BAD_HANDSHAKE)
      return false
    }
    holdUntil(
      proxyReq,
      'upgrade',
      (res: IncomingMessage, proxySocket: Duplex) => (res.statusCode === 101 && acceptsHandshake(res.headers, key)) || refuse(proxySocket),
    )
    holdUntil(proxyReq, 'response', (res: IncomingMessage) => res.statusCode !== 101 || refuse(res.socket))
  }
  return exchange
}

/** Runs `emitter`'s current `event` listeners, once, only if `check` passes on the event's arguments. */
// biome-ignore lint/suspicious/noExplicitAny: an EventEmitter listener's arguments, whatever the event
function holdUntil(emitter: ClientRequest, event: string, check: (...args: any[]) => boolean): void {
  const held = emitter.listeners(event) as Array<(...args: unknown[]) => void>
  emitter.removeAllListeners(event)
  emitter.once(event, (...args: unknown[]) => {
    if (!check(...args)) return
    for (const listener of held) listener.apply(emitter, args)
  })
}

/** RFC 6455 §1.3: the GUID the server appends to the client's key to prove it read the handshake. */
const WS_GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11'

/**
 * Whether a 101 is the answer RFC 6455 §4.2.2 requires, checked as a client must (§4.1): Upgrade is
 * websocket, Connection holds the upgrade token, Sec-WebSocket-Accept matches the client's key.
 * Anything else was not a WebSocket server agreeing to this handshake, and is not tunnelled.
 */
export function acceptsHandshake(headers: IncomingHttpHeaders, key: string | undefined): boolean {
  if (key === undefined || headers.upgrade?.toLowerCase() !== 'websocket') return false
  const connection = headers.connection
  if (
    connection === undefined ||
    !connection
      .toLowerCase()
      .split(',')
      .some((token) => token.trim() === 'upgrade')
  )
    return false
  return (
    headers['sec-websocket-accept'] ===
    createHash('sha1')
      .update(key + WS_GUID)
      .digest('base64')
  )
}

// Why an exchange stopped early; compared by identity here, and their codes reach the log line.
const BAD_HANDSHAKE = new LapseError('ERR_UPSTREAM_BAD_HANDSHAKE', 'the upstream answered 101 without a valid WebSocket handshake')
const TIMED_OUT = new LapseError('ERR_UPSTREAM_TIMEOUT', 'the upstream did not send response headers in time')
const ABANDONED = new LapseError('ERR_CLIENT_GONE', 'the client went away')
const UNDICI_TIMEOUTS = new Set(['UND_ERR_CONNECT_TIMEOUT', 'UND_ERR_HEADERS_TIMEOUT'])

/**
 * One request on the Pool, as an undici dispatch handler: the response is written straight into
 * the client's ServerResponse with backpressure both ways, without the Readable, AsyncResource
 * and stream.finished() listeners that undici's request() and stream() add per request.
 */
class UpstreamExchange implements Dispatcher.DispatchHandler, Forwarding, Waiting {
  private abort: ((err?: Error) => void) | undefined
  dueAtMs = 0
  prev: Waiting | undefined = undefined
  next: Waiting | undefined = undefined
  queued = false
  /** Why the exchange stopped early; set once. */
  private stopped: Error | undefined
  /** Response headers reached the client. */
  private answered = false
  /** The client got Lapse's own 502/504 instead. */
  private failed = false
  private resume: (() => void) | undefined

  constructor(
    private readonly res: ServerResponse,
    private readonly deadlines: Deadlines,
    private readonly sink: UpstreamFailureSink,
  ) {
    // The budget runs until response headers, queueing included.
    deadlines.add(this)
  }

  expire(): void {
    this.stop(TIMED_OUT)
  }

  abandon(): void {
    if (!this.res.writableFinished) this.stop(ABANDONED)
  }

  private stop(why: Error): void {
    if (this.stopped) return
    this.stopped = why
    if (this.abort) this.abort(why)
    // Still queued for a connection: answer now; onConnect aborts it when it gets one.
    else this.onError(why)
  }

  onConnect(abort: (err?: Error) => void): void {
    if (this.stopped) return abort(this.stopped)
    this.abort = abort
  }

  onHeaders(statusCode: number, rawHeaders: Buffer[], resume: () => void, statusText: string): boolean {
    // 1xx interim answers (100 Continue, 103 Early Hints) belong to the upstream hop.
    if (statusCode < 200) return true
    this.deadlines.remove(this)
    this.resume = resume
    // Throws on a header value Node will not write: undici then aborts, and the client gets a 502.
    this.res.writeHead(statusCode, statusText, responseHeaders(rawHeaders))
    this.answered = true
    return true
  }

  onData(chunk: Buffer): boolean {
    if (this.res.write(chunk)) return true
    this.res.once('drain', this.resume!)
    return false
  }

  onComplete(): void {
    this.res.end()
  }

  onError(err: Error): void {
    this.deadlines.remove(this)
    if (this.failed || this.stopped === ABANDONED || this.res.destroyed) return
    // Mid-response: the client must not mistake a cut body for a whole one.
    if (this.answered) return void this.res.destroy()
    this.failed = true
    const timedOut = this.stopped === TIMED_OUT || UNDICI_TIMEOUTS.has((err as NodeJS.ErrnoException).code ?? '')
    this.sink.upstreamFailed(timedOut ? 'upstream_timeout' : 'upstream_unavailable', err)
  }
}

/**
 * One WebSocket upgrade until the upstream's answer head is complete. Its budget is a deadline
 * in the same Deadlines as HTTP's: Node's socket timeout (proxyReq.setTimeout) is an idle timer
 * that every byte re-arms, so an upstream trickling its 101 head a byte at a time held the
 * client until the token expired.
 */
class UpgradeExchange implements Waiting, Upgrading {
  dueAtMs = 0
  prev: Waiting | undefined = undefined
  next: Waiting | undefined = undefined
  queued = false
  timedOut = false
  status: number | undefined = undefined
  /** Set by http-proxy's proxyReqWs, synchronously within proxy.ws(): before any deadline can fire. */
  proxyReq: ClientRequest | undefined = undefined

  constructor(
    readonly link: WsLink,
    deadlines: Deadlines,
  ) {
    // Connecting and waiting for a free socket count, as for HTTP.
    deadlines.add(this)
  }

  expire(): void {
    this.timedOut = true
    // Its 'error' reaches http-proxy's callback, which answers 504 and ends the client socket.
    this.proxyReq?.destroy(TIMED_OUT)
  }
}

/** An exchange waiting for response headers, linked into its forwarder's Deadlines. */
interface Waiting {
  dueAtMs: number
  prev: Waiting | undefined
  next: Waiting | undefined
  queued: boolean
  expire(): void
}

/**
 * The header deadlines of one forwarder's exchanges under a single timer. Every exchange gets the
 * same budget, so the order they start in is the order they fall due: a FIFO list, O(1) to add and
 * to remove. A timer per request (or a socket timeout, re-armed on every read and write) cost more
 * than the decision itself (bench row 3); this one is re-armed about once per budget.
 */
class Deadlines {
  private head: Waiting | undefined
  private tail: Waiting | undefined
  private timer: NodeJS.Timeout | undefined
  private closed = false

  constructor(private readonly budgetMs: number) {}

  add(w: Waiting): void {
    w.dueAtMs = performance.now() + this.budgetMs
    w.prev = this.tail
    w.next = undefined
    if (this.tail) this.tail.next = w
    else this.head = w
    this.tail = w
    w.queued = true
    if (!this.timer && !this.closed) this.arm(this.budgetMs)
  }

  remove(w: Waiting): void {
    if (!w.queued) return
    w.queued = false
    if (w.prev) w.prev.next = w.next
    else this.head = w.next
    if (w.next) w.next.prev = w.prev
    else this.tail = w.prev
    w.prev = w.next = undefined
  }

  close(): void {
    this.closed = true
    clearTimeout(this.timer)
    this.timer = undefined
  }

  private arm(delayMs: number): void {
    this.timer = setTimeout(this.fire, Math.max(1, Math.ceil(delayMs)))
    // Pending exchanges keep their own sockets open; the timer alone should not hold the process.
    this.timer.unref()
  }

  private readonly fire = (): void => {
    this.timer = undefined
    const now = performance.now()
    while (this.head && this.head.dueAtMs <= now) {
      const due = this.head
      this.remove(due)
      due.expire()
    }
    if (this.head && !this.closed) this.arm(this.head.dueAtMs - now)
  }
}
