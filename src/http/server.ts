// The sidecar: an HTTP server that decides every request and forwards the allowed ones.
//
//   const app = createApp(deps)
//   await app.listen()         // binds config.listen; main.ts's createSidecar adds the admin listener
//   await app.close()
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import type { Socket } from 'node:net'
import type { Duplex } from 'node:stream'
import type { Logger } from 'pino'
import type { RouteMatcher } from '../authorize/routes.js'
import type { Config, HostPort } from '../config/load.js'
import { noteOf, type ConnectionTracker, type Cut, type TrackedExchange } from '../connections/connections.js'
import { isWebSocketUpgrade, type Forwarder, type UpstreamFailure, type Upgrading } from './forward.js'
import { WS_POLICY_VIOLATION } from './ws-close.js'
import { decide, type DecideDeps } from '../decide/decide.js'
import { toAnswer, type Answer } from '../core/reasons.js'
import type { Clock, Denial, Outcome, RevocationStore } from '../core/types.js'
import type { Recorder, RequestTrace } from '../telemetry/recorder.js'
import type { KeyResolver } from '../verify/keys.js'
import type { Verifier } from '../verify/verify-token.js'
import { createHeadCheck } from '../extract/request-head.js'

/** Everything that varies between production and tests: main.ts builds the real ones. */
export interface Deps {
  readonly config: Config
  readonly clock: Clock
  readonly keys: KeyResolver
  readonly verify: Verifier
  readonly revocations: RevocationStore
  readonly match: RouteMatcher
  readonly forwarder: Forwarder
  readonly recorder: Recorder
  readonly log: Logger
  /** Serves `/metrics` on the admin port; absent when metrics are off. */
  readonly metricsHandler?: ((req: IncomingMessage, res: ServerResponse) => void) | undefined
  /** Long-lived exchanges (WebSocket, streamed responses) to cut when their token lapses. */
  readonly connections?: ConnectionTracker | undefined
}

export interface App {
  readonly server: Server
  listen(): Promise<HostPort>
  /** Stops accepting; open requests get `graceMs` to finish, then every connection is cut. */
  close(graceMs?: number): Promise<void>
}

/** How long a streamed response may run before it is registered for cuts (see watchLater). */
const YOUNG_TICK_MS = 100

interface YoungExchange {
  readonly exchange: TrackedExchange
  /** Index in `young` while waiting there, else -1. */
  slot: number
  /** Set once the exchange is registered; until then it waits in `young`. */
  untrack: (() => void) | undefined
}

const UPSTREAM_ANSWERS: Record<UpstreamFailure, { status: number; error: string; description: string }> = {
  upstream_unavailable: { status: 502, error: 'bad_gateway', description: 'the upstream is unavailable' },
  upstream_timeout: { status: 504, error: 'gateway_timeout', description: 'the upstream did not answer in time' },
}

export function createApp(deps: Deps): App {
  const { config } = deps
  const decideDeps: DecideDeps = {
    match: deps.match,
    verify: deps.verify,
    revocations: deps.revocations,
    revocableClaims: config.revocableClaims,
    allowQueryToken: config.allowQueryToken,
    maxTokenBytes: config.maxTokenBytes,
    clock: deps.clock,
  }

  const serverOptions = {
    maxHeaderSize: config.maxHeaderBytes,
    headersTimeout: config.clientHeaderTimeoutMs,
    // Node enforces headersTimeout only when it sweeps its connections (every 30 s by default), so
    // a slowloris client would hold its socket up to 30 s past the limit; sweep every second.
    connectionsCheckingInterval: Math.min(1000, config.clientHeaderTimeoutMs),
    // Uploads may be long; slow clients are bounded by the idle timeout instead.
    requestTimeout: 0,
    keepAliveTimeout: 5000,
    // Smuggling shapes (CL+TE, duplicate CL, obs-fold) are refused by llhttp when not lenient.
    insecureHTTPParser: false,
  }
  const server = createServer(serverOptions)
  server.timeout = config.clientIdleTimeoutMs
  // Node builds req.headers from its first maxHeadersCount fields (1000 unless set) but frames the
  // body with all of them; keeping one more than the limit lets checkHead see every head that is over.
  server.maxHeadersCount = config.maxHeaderFields + 1
  // Serves the upgrade requests Lapse does not proxy as the ordinary requests they also are (see
  // serveWithoutUpgrade). It never listens: connections are handed to it. Without an 'upgrade'
  // listener, Node's parser frames such a request's body like any other.
  const plain = createServer(serverOptions)
  plain.timeout = config.clientIdleTimeoutMs
  plain.maxHeadersCount = config.maxHeaderFields + 1
  const checkHead = createHeadCheck({ maxHeaderFields: config.maxHeaderFields, hosts: config.hosts })

  // Refusals that come before any decision, for every request and upgrade: a head with more fields
  // than Lapse reads, a Host that is repeated, invalid or not served. Audited and traced like a
  // decision; the connection closes, since the body is never read.
  const refuseEarly = (req: IncomingMessage, denial: Denial, remoteAddress: string | undefined, write: (answer: Answer) => void): void => {
    const t = deps.recorder.start(req)
    deps.recorder.decided(t, { decision: denial, target: undefined, revocationMs: undefined })
    const answer = toAnswer(denial, config.realm)
    write(answer)
    deps.recorder.finish(t, { status: answer.status, remoteAddress })
  }
  const refuseOn = (res: ServerResponse) => (answer: Answer) => {
    res.shouldKeepAlive = false
    res.writeHead(answer.status, answer.headers).end(answer.body)
  }
  const refuseRaw = (socket: Duplex) => (answer: Answer) => writeRaw(socket, answer.status, answer.headers, answer.body)

  const failed = (res: ServerResponse, err: unknown) => {
    deps.log.error({ err: (err as Error).message }, 'request handling failed')
    if (!res.headersSent) writeJson(res, 500, { error: 'internal_error', error_description: 'internal error' })
    else res.destroy()
  }
  const onRequest = (req: IncomingMessage, res: ServerResponse) => {
    // Read now: once the body has been forwarded, undici destroys the request and its socket link.
    const remoteAddress = req.socket.remoteAddress
    try {
      const early = checkHead(req.rawHeaders)
      if (early) return refuseEarly(req, early, remoteAddress, refuseOn(res))
      if (unsupportedTransferCoding(req.headers['transfer-encoding'])) return refuseTransferCoding(res)
      const t = deps.recorder.start(req)
      const outcome = decideFor(req, t)
      // Most requests are decided without waiting (a cached token, an in-process revocation
      // answer); only the rest pay for a promise.
      if (outcome instanceof Promise) outcome.then((o) => respond(req, res, t, o, remoteAddress)).catch((err: unknown) => failed(res, err))
      else respond(req, res, t, outcome, remoteAddress)
    } catch (err) {
      failed(res, err)
    }
  }
  server.on('request', onRequest)
  plain.on('request', (req: IncomingMessage, res: ServerResponse) => {
    // Its connection came from an upgrade and is no longer the main server's: its header and
    // keep-alive timers do not watch it, so it serves this one request only.
    res.shouldKeepAlive = false
    onRequest(req, res)
  })
  const upgraded = new Set<Duplex>()
  server.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) => {
    upgraded.add(socket)
    socket.once('close', () => upgraded.delete(socket))
    // Node detached its own error handling from the socket: without a listener, a client's reset
    // while Lapse decides or waits for the upstream is an uncaught 'error' that ends the process.
    socket.on('error', () => socket.destroy())
    const early = checkHead(req.rawHeaders)
    if (early) return refuseEarly(req, early, (socket as Socket).remoteAddress, refuseRaw(socket))
    if (!isWebSocketUpgrade(req)) return serveWithoutUpgrade(req, socket, head)
    handleUpgrade(req, socket, head).catch((err: unknown) => {
      deps.log.error({ err: (err as Error).message }, 'upgrade handling failed')
      socket.destroy()
    })
  })

  // CONNECT asks for a tunnel to an authority: nothing a reverse proxy in front of one resource
  // could decide on, so it is refused like any target that is not a path, and no tunnel is ever
  // opened. (Without a listener Node drops the connection unanswered and unaudited.)
  server.on('connect', (req: IncomingMessage, socket: Duplex) => {
    upgraded.add(socket)
    socket.once('close', () => upgraded.delete(socket))
    // As for 'upgrade': a client's reset must not be an uncaught 'error'.
    socket.on('error', () => socket.destroy())
    // The bytes after the head would be the tunnel's: they are never read.
    refuseInvalid(req, socket, 'CONNECT is not supported')
  })

  /** A 400 invalid_request before any decision, audited, on a connection Node has handed over; it closes. */
  function refuseInvalid(req: IncomingMessage, socket: Duplex, description: string): void {
    refuseEarly(req, { allow: false, reason: 'invalid_request', description }, (socket as Socket).remoteAddress, refuseRaw(socket))
  }

  // RFC 9110 §7.8 lets a server ignore Upgrade and answer in the protocol in use. Lapse proxies
  // one upgrade, a GET asking for websocket (RFC 6455 §4.1); any other — h2c, which `curl --http2`
  // adds to ordinary requests over http:// and then reads an HTTP/1.1 answer, a POST asking for
  // websocket, an unknown protocol — is decided and forwarded as an ordinary HTTP/1.1 request
  // without the upgrade, so such a client gets the answer it would get without asking. Node's parser
  // stopped at the head of an upgrade request and left its body raw, so the head is re-serialized
  // from the fields Node parsed and handed with the rest of the connection to `plain`, whose
  // parser frames the body as strictly as the first; Lapse never frames bytes itself.
  function serveWithoutUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer): void {
    // Node keeps at most this many rawHeaders entries: a head that reached it may have lost
    // fields, its framing ones among them, and cannot be replayed faithfully.
    if (req.rawHeaders.length >= NODE_MAX_RAW_HEADERS) {
      return writeRaw(socket, 431, { 'content-type': 'application/json' }, JSON.stringify({ error: 'invalid_request', error_description: 'request headers too large' }))
    }
    socket.unshift(Buffer.concat([Buffer.from(requestHead(req), 'latin1'), head]))
    plain.emit('connection', socket)
  }

  const onClientError = (err: NodeJS.ErrnoException, socket: Duplex) => {
    // Node's parser refused the request (bad framing, oversized headers): answer and close.
    if (!socket.writable) return socket.destroy()
    const status = err.code === 'HPE_HEADER_OVERFLOW' ? 431 : err.code === 'ERR_HTTP_REQUEST_TIMEOUT' ? 408 : 400
    const body = JSON.stringify({ error: 'invalid_request', error_description: status === 431 ? 'request headers too large' : status === 408 ? 'request timed out' : 'malformed HTTP request' })
    socket.end(`HTTP/1.1 ${status} ${status === 431 ? 'Request Header Fields Too Large' : status === 408 ? 'Request Timeout' : 'Bad Request'}\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n${body}`)
  }
  server.on('clientError', onClientError)
  plain.on('clientError', onClientError)

  // Most responses end within milliseconds, and registering every one with the connection registry
  // cost more than the whole decision. A response still open after one tick is registered then:
  // the registry cuts it at once if its deadline already passed, and it remembers recent revocation
  // events, so one that came in between still cuts it. The tick bounds how late either can be.
  // A response leaves `young` the moment it closes, by swapping the last entry into its slot. Both
  // obvious alternatives measured far worse under load (bench row 3): a Set with one add and one
  // delete per request cost ~40 µs a request, and an array emptied only at the tick kept every
  // finished response's object graph alive past the young-generation GC.
  const young: YoungExchange[] = []
  let youngTimer: NodeJS.Timeout | undefined
  const promoteYoung = () => {
    youngTimer = undefined
    for (const y of young) {
      y.slot = -1
      y.untrack = deps.connections!.track(y.exchange)
    }
    young.length = 0
  }
  const watchLater = (exchange: TrackedExchange): YoungExchange => {
    const y: YoungExchange = { exchange, slot: young.length, untrack: undefined }
    young.push(y)
    if (!youngTimer) {
      youngTimer = setTimeout(promoteYoung, YOUNG_TICK_MS)
      youngTimer.unref()
    }
    return y
  }
  const unwatch = (y: YoungExchange | undefined) => {
    if (!y) return
    if (y.untrack) return y.untrack()
    if (y.slot < 0) return
    const last = young.pop()!
    if (last !== y) {
      young[y.slot] = last
      last.slot = y.slot
    }
    y.slot = -1
  }

  function decideFor(req: IncomingMessage, t: RequestTrace): Outcome | Promise<Outcome> {
    const outcome = decide({ method: req.method ?? 'GET', url: req.url ?? '', authorization: authorizationOf(req.rawHeaders), rawHeaders: req.rawHeaders, steps: t.steps }, decideDeps)
    if (outcome instanceof Promise) return outcome.then((o) => decided(t, o))
    return decided(t, outcome)
  }
  const decided = (t: RequestTrace, outcome: Outcome) => {
    deps.recorder.decided(t, outcome)
    return outcome
  }

  function respond(req: IncomingMessage, res: ServerResponse, t: RequestTrace, outcome: Outcome, remoteAddress: string | undefined): void {
    const d = outcome.decision
    if (!d.allow) {
      const answer = toAnswer(d, config.realm)
      res.once('close', () => deps.recorder.finish(t, { status: answer.status, remoteAddress }))
      // The body of a refused request is never read; closing avoids draining an attacker's upload.
      if (req.headers['content-length'] !== '0' && (req.headers['content-length'] || req.headers['transfer-encoding'])) res.shouldKeepAlive = false
      res.writeHead(answer.status, answer.headers).end(answer.body)
      return
    }
    let upstreamFailure: UpstreamFailure | undefined
    let cut: Cut | undefined
    // Cut short, not ended: without the last chunk a cut download never looks complete.
    const watched = d.identity && deps.connections
      ? watchLater({ identity: d.identity, kind: 'stream', cutAtExpiry: d.rule.cutStreamsAtExpiry, trace: t, close: (c) => { cut = c; res.destroy() } })
      : undefined
    deps.recorder.inject(t, req.headers)
    const forwarding = deps.forwarder.web(req, res, outcome.target!, d.identity, (failure, err) => {
      upstreamFailure = failure
      deps.log.warn({ err: (err as NodeJS.ErrnoException).code ?? err.message, failure }, 'upstream request failed')
      const a = UPSTREAM_ANSWERS[failure]
      writeJson(res, a.status, { error: a.error, error_description: a.description })
    })
    // One listener does all of a response's bookkeeping: each one more measured in bench row 3.
    res.once('close', () => {
      forwarding.abandon()
      unwatch(watched)
      // No head went out and Lapse wrote no failure: the client left first, and got no status.
      const answered = res.headersSent
      deps.recorder.finish(t, { status: answered ? res.statusCode : undefined, upstreamFailure, remoteAddress, note: answered ? noteOf(cut) : CLIENT_CLOSED })
    })
  }

  async function handleUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer): Promise<void> {
    if (unsupportedTransferCoding(req.headers['transfer-encoding'])) {
      return writeRaw(socket, 501, { 'content-type': 'application/json' }, JSON.stringify(TRANSFER_CODING_REFUSAL))
    }
    // RFC 6455 §4.1: the opening handshake is a GET, and nothing frames a body over an upgrade:
    // Node's parser left it raw and http-proxy never sends it, so a declared body would be owed to
    // the upstream and read there as the start of another request. Refused before any decision.
    if (declaresBody(req)) return refuseInvalid(req, socket, 'a WebSocket upgrade cannot carry a body')
    // Read now: a socket destroyed while the decision is awaited no longer knows its peer.
    const remoteAddress = (socket as Socket).remoteAddress
    const t = deps.recorder.start(req)
    let outcome: Outcome
    try {
      outcome = await decideFor(req, t)
    } catch (err) {
      return failUpgrade(t, socket, remoteAddress, err)
    }
    const d = outcome.decision
    // The client left while the decision was awaited: its 'close' has passed, so nothing below would
    // ever untrack or audit the exchange, and the upstream must not be asked for a tunnel to no one.
    if (socket.destroyed) return deps.recorder.finish(t, { status: undefined, remoteAddress, note: CLIENT_CLOSED })
    if (!d.allow) {
      const answer = toAnswer(d, config.realm)
      writeRaw(socket, answer.status, answer.headers, answer.body)
      deps.recorder.finish(t, { status: answer.status, remoteAddress })
      return
    }
    deps.recorder.inject(t, req.headers)
    let upstreamFailure: UpstreamFailure | undefined
    let cut: Cut | undefined
    let upgrading: Upgrading
    try {
      upgrading = deps.forwarder.ws(req, socket, head, outcome.target!, d.identity, (failure, err) => {
        upstreamFailure = failure
        deps.log.warn({ err: (err as NodeJS.ErrnoException).code ?? err.message, failure }, 'upstream upgrade failed')
        const a = UPSTREAM_ANSWERS[failure]
        writeRaw(socket, a.status, { 'content-type': 'application/json' }, JSON.stringify({ error: a.error, error_description: a.description }))
      })
    } catch (err) {
      // Nothing was sent upstream yet (headers are built, and checked by Node, before the request).
      return failUpgrade(t, socket, remoteAddress, err)
    }
    const { link } = upgrading
    const untrack = d.identity && deps.connections
      ? deps.connections.track({ identity: d.identity, kind: 'websocket', cutAtExpiry: true, trace: t, close: (c) => { cut = c; link.close(WS_POLICY_VIOLATION, `token ${c.reason}`) } })
      : undefined
    socket.once('close', () => {
      untrack?.()
      // The upstream may refuse the upgrade with an ordinary answer (say 200 or 426), relayed as is.
      // None at all, no failure written and no cut: the client left before the upstream answered.
      const status = upstreamFailure ? UPSTREAM_ANSWERS[upstreamFailure].status : upgrading.status
      deps.recorder.finish(t, { status, upstreamFailure, remoteAddress, note: status === undefined && cut === undefined ? CLIENT_CLOSED : noteOf(cut) })
    })
  }

  /** A bug on the upgrade path: the client gets a 500, and the exchange its audit line and ended span. */
  function failUpgrade(t: RequestTrace, socket: Duplex, remoteAddress: string | undefined, err: unknown): void {
    deps.log.error({ err: (err as Error).message }, 'upgrade handling failed')
    writeRaw(socket, 500, { 'content-type': 'application/json' }, JSON.stringify({ error: 'internal_error', error_description: 'internal error' }))
    deps.recorder.finish(t, { status: 500, remoteAddress })
  }

  return {
    server,
    listen: () => listenOn(server, config.listen),
    close: (graceMs = 0) => closeServer(server, graceMs, upgraded),
  }
}

/**
 * Every Authorization header the client sent, from the raw list: Node's `headers` keeps only the
 * first of duplicates, and `headersDistinct` would build an array for every header of every request.
 */
export function authorizationOf(raw: readonly string[]): string[] | undefined {
  let found: string[] | undefined
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i]!
    if (name.length === 13 && name.toLowerCase() === 'authorization') (found ??= []).push(raw[i + 1]!)
  }
  return found
}

/** Whether a request declares a body: any Transfer-Encoding, or a Content-Length other than "0". */
function declaresBody(req: IncomingMessage): boolean {
  const length = req.headers['content-length']
  return req.headers['transfer-encoding'] !== undefined || (length !== undefined && length !== '0')
}

/**
 * Whether a request's Transfer-Encoding holds a coding other than `chunked`. Node's parser decodes
 * only `chunked` yet accepts codings before it (`gzip, chunked`), and undici re-frames the body for
 * the upstream without them: gzip bytes would arrive as a plain body, the coding silently lost.
 */
function unsupportedTransferCoding(te: string | undefined): boolean {
  if (te === undefined || te === 'chunked') return false
  // Codings are case-insensitive and a list may hold empty elements (RFC 9110 §5.6.1); Node joins
  // repeated Transfer-Encoding lines with ", ".
  const codings = te.split(',').map((c) => c.trim().toLowerCase()).filter((c) => c !== '')
  return codings.length !== 1 || codings[0] !== 'chunked'
}

// RFC 9112 §6.1: a server that receives a transfer coding it does not understand SHOULD answer 501
// (Not Implemented). 400 would blame a well-formed request; 501 tells the client the coding is
// what Lapse lacks, so it can resend the body plain (or with Content-Encoding, which is end to end).
const TRANSFER_CODING_REFUSAL = { error: 'not_implemented', error_description: 'only the chunked transfer coding is accepted' }

/** The body is never read, so the connection closes after the answer, as for other refusals. */
function refuseTransferCoding(res: ServerResponse): void {
  res.shouldKeepAlive = false
  writeJson(res, 501, TRANSFER_CODING_REFUSAL)
}

export function writeJson(res: ServerResponse, status: number, body: object, headers: Record<string, string> = {}): void {
  const text = JSON.stringify(body)
  res.writeHead(status, { 'content-type': 'application/json', 'cache-control': 'no-store', 'content-length': Buffer.byteLength(text), ...headers }).end(text)
}

/** The audit line's mark of a client that left before any answer reached it. */
const CLIENT_CLOSED = Object.freeze({ client_closed: true })

const STATUS_TEXT: Record<number, string> = { 400: 'Bad Request', 500: 'Internal Server Error', 401: 'Unauthorized', 403: 'Forbidden', 421: 'Misdirected Request', 431: 'Request Header Fields Too Large', 501: 'Not Implemented', 502: 'Bad Gateway', 503: 'Service Unavailable', 504: 'Gateway Timeout' }

/** _http_common.js MAX_HEADER_PAIRS: the rawHeaders entries (names and values) Node keeps of a request. */
const NODE_MAX_RAW_HEADERS = 2000

/**
 * The head of a request as Node parsed it. Its parser was strict (no obs-fold, no bare CR or LF,
 * values trimmed), so the fields come out as they went in; `name:value` with no space is never
 * longer than the original, so the replay stays within LAPSE_MAX_HEADER_BYTES.
 */
function requestHead(req: IncomingMessage): string {
  let head = `${req.method} ${req.url} HTTP/${req.httpVersion}\r\n`
  const raw = req.rawHeaders
  for (let i = 0; i < raw.length; i += 2) head += `${raw[i]}:${raw[i + 1]}\r\n`
  return `${head}\r\n`
}

/** How long a socket answered by writeRaw may stay half-open, waiting for the client to close its side. */
const RAW_LINGER_MS = 1000

function writeRaw(socket: Duplex, status: number, headers: Readonly<Record<string, string>>, body: string): void {
  if (!socket.writable) return void socket.destroy()
  const lines = Object.entries(headers).filter(([k]) => k !== 'content-length').map(([k, v]) => `${k}: ${v}\r\n`).join('')
  socket.end(`HTTP/1.1 ${status} ${STATUS_TEXT[status] ?? ''}\r\n${lines}content-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n${body}`)
  // Node's idle timeout no longer watches a socket handed to 'upgrade': a client that never
  // closes its side would hold it for good.
  setTimeout(() => socket.destroy(), RAW_LINGER_MS).unref()
}

export function listenOn(server: Server, at: HostPort): Promise<HostPort> {
  return new Promise((resolve, reject) => {
    server.once('error', reject)
    server.listen(at.port, at.host, () => {
      server.off('error', reject)
      const addr = server.address()
      resolve(typeof addr === 'object' && addr ? { host: addr.address, port: addr.port } : at)
    })
  })
}

export function closeServer(server: Server, graceMs: number, upgraded: ReadonlySet<Duplex>): Promise<void> {
  return new Promise((resolve) => {
    if (!server.listening) return resolve()
    const cut = () => {
      server.closeAllConnections()
      // Upgraded sockets (WebSockets) are no longer HTTP connections the server can close.
      for (const socket of upgraded) socket.destroy()
    }
    const timer = setTimeout(cut, graceMs)
    server.close(() => {
      clearTimeout(timer)
      resolve()
    })
    server.closeIdleConnections()
    if (graceMs === 0) cut()
  })
}

export type { ConnectionTracker, Denial }
