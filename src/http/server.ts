// The sidecar: an HTTP server that decides every request and forwards the allowed ones.
//
//   const app = createApp(deps)
//   await app.listen()         // binds config.listen; main.ts's createSidecar adds the admin listener
//   await app.close()
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import { createServer as createHttpsServer } from 'node:https'
import type { TLSSocket, Server as TlsServer } from 'node:tls'
import type { Duplex } from 'node:stream'
import type { Logger } from 'pino'
import type { RouteMatcher } from '../authorize/routes.js'
import type { DpopPolicy } from '../bind/dpop.js'
import type { Config, HostPort } from '../config/load.js'
import type { ConnectionTracker } from '../connections/connections.js'
import { answerOf } from '../core/answers.js'
import type { Clock, Denial, RevocationStore, UseCounter } from '../core/types.js'
import { createHeadCheck } from '../extract/request-head.js'
import type { Recorder } from '../telemetry/recorder.js'
import type { KeyResolver } from '../verify/keys.js'
import type { Verifier } from '../verify/verify-token.js'
import { Exchange, YoungExchanges, type ExchangeContext } from './exchange.js'
import { isWebSocketUpgrade, type Forwarder } from './forward.js'
import { writeRawAnswer } from './raw-answer.js'
import { parseXfcc } from '../bind/xfcc.js'
import type { ClientCert } from '../bind/mtls.js'
import { LapseError } from '../core/errors.js'
import { readTls, TlsFileError, type TlsFiles, type TlsMaterial } from '../config/tls.js'
import { createCertCache, httpsOptions, watchTls, type Rotation } from './tls.js'

/** Everything that varies between production and tests: main.ts builds the real ones. */
export interface Deps {
  readonly config: Config
  readonly clock: Clock
  readonly keys: KeyResolver
  readonly verify: Verifier
  readonly revocations: RevocationStore
  /** The use counts of rules with `max_uses`: in the revocation set's store (memory or Redis). */
  readonly uses: UseCounter
  readonly match: RouteMatcher
  /** Absent when Lapse runs as a decision service only (no LAPSE_UPSTREAM). */
  readonly forwarder: Forwarder | undefined
  readonly recorder: Recorder
  readonly log: Logger
  /** Serves `/metrics` on the admin port; absent when metrics are off. */
  readonly metricsHandler?: ((req: IncomingMessage, res: ServerResponse) => void) | undefined
  /** Long-lived exchanges (WebSocket, streamed responses) to cut when their token lapses. */
  readonly connections?: ConnectionTracker | undefined
  /** How DPoP proofs are checked, with the replay cache; absent, DPoP-bound tokens are refused. */
  readonly dpop?: DpopPolicy | undefined
}

export interface App {
  readonly server: Server
  listen(): Promise<HostPort>
  /** Stops accepting; open requests get `graceMs` to finish, then every connection is cut. */
  close(graceMs?: number): Promise<void>
  /**
   * Decides every exchange that starts from now on with `deps` (a reload). Each exchange reads the
   * context once, at its start, so it is decided entirely by the old deps or entirely by the new.
   * Only the decision policy is taken from `deps`; the server's own settings stay as they started.
   */
  swap(deps: Deps): void
  /** The exchange context in force: what a request starting now is decided with (the decision listener reads it too). */
  context(): ExchangeContext
  /**
   * The drain before a shutdown: every answer from now on carries `Connection: close`, and
   * kept-alive connections idle a second later are closed, so clients reconnect elsewhere instead
   * of meeting a reset when the process exits.
   */
  drain(): void
}

export function createApp(deps: Deps): App {
  const { config } = deps
  const options = serverOptions(config)
  const material = config.tls ? readTlsAtStart(config.tls) : undefined
  // An https.Server is an http.Server over TLS sockets: every method Lapse calls is on both.
  const server = config.tls
    ? (createHttpsServer({ ...options, ...httpsOptions(config.tls, material!) }) as unknown as Server)
    : createServer(options)
  let rotation: Rotation | undefined
  if (config.tls) {
    // A TLS 1.2 renegotiation could present another certificate mid-connection, after requests
    // were decided on the first one: Lapse's connections never renegotiate.
    server.on('secureConnection', (socket: TLSSocket) => socket.disableRenegotiation())
    rotation = watchTls(server as unknown as TlsServer, config.tls, deps.log, material!)
  }
  // Serves the upgrade requests Lapse does not proxy as the ordinary requests they also are (see
  // handOver). It never listens: connections are handed to it. Without an 'upgrade' listener,
  // Node's parser frames such a request's body like any other.
  const plain = createServer(options)
  for (const s of [server, plain]) {
    s.timeout = config.clientIdleTimeoutMs
    // Node builds req.headers from its first maxHeadersCount fields (1000 unless set) but frames the
    // body with all of them; keeping one more than the limit lets checkHead see every head that is over.
    s.maxHeadersCount = config.maxHeaderFields + 1
    s.on('clientError', answerClientError)
  }
  const young = deps.connections ? new YoungExchanges(deps.connections) : undefined
  // The one reference a reload swaps; every exchange reads it once, at its start.
  let ctx = exchangeContext(deps, young)
  let draining = false
  // Sockets handed over by 'upgrade' and 'connect': no longer HTTP connections the server can close.
  const upgraded = new Set<Duplex>()
  // Open upgrade exchanges, told to go away (WebSocket close 1001) when the server stops accepting.
  const upgrades = new Set<Exchange>()
  server.on('request', (req: IncomingMessage, res: ServerResponse) => {
    if (draining) res.shouldKeepAlive = false
    serveRequest(ctx, req, res)
  })
  plain.on('request', (req: IncomingMessage, res: ServerResponse) => {
    // Its connection came from an upgrade and is no longer the main server's: its header and
    // keep-alive timers do not watch it, so it serves this one request only.
    res.shouldKeepAlive = false
    serveRequest(ctx, req, res)
  })
  server.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) => {
    adopt(upgraded, socket)
    const x = serveUpgrade(ctx, plain, req, socket, head)
    if (!x) return
    upgrades.add(x)
    socket.once('close', () => upgrades.delete(x))
  })
  // CONNECT asks for a tunnel to an authority: nothing a reverse proxy in front of one resource
  // could decide on, so it is refused like any target that is not a path, and no tunnel is ever
  // opened. (Without a listener Node drops the connection unanswered and unaudited.) The bytes
  // after the head would be the tunnel's: they are never read.
  server.on('connect', (req: IncomingMessage, socket: Duplex) => {
    adopt(upgraded, socket)
    new Exchange(ctx, req, undefined, socket).refuse(CONNECT_REFUSED)
  })
  return {
    server,
    listen: () => listenOn(server, config.listen),
    close: (graceMs = 0) => {
      // RFC 6455 §7.4.1: 1001, the server is going away; the peers get `graceMs` to close.
      for (const x of upgrades) x.goAway()
      rotation?.close()
      return closeServer(server, graceMs, upgraded)
    },
    swap: (next: Deps) => {
      ctx = exchangeContext(next, young)
    },
    context: () => ctx,
    drain: () => {
      draining = true
      // Not at once: a busy client's connection is idle only between its requests, and closing it
      // then would reset the request it is already sending. Busy clients get `Connection: close`
      // on their next answer; a connection still idle after DRAIN_IDLE_MS is a quiet client's.
      setTimeout(() => server.closeIdleConnections(), DRAIN_IDLE_MS).unref()
    },
  }
}

/** How long into a drain idle kept-alive connections are closed (see drain). */
const DRAIN_IDLE_MS = 1000

export function serverOptions(config: Config) {
  return {
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
}

export function exchangeContext(deps: Deps, young?: YoungExchanges | undefined): ExchangeContext {
  const { config } = deps
  return {
    recorder: deps.recorder,
    log: deps.log,
    realm: config.realm,
    forwarder: deps.forwarder,
    decideDeps: {
      match: deps.match,
      verify: deps.verify,
      revocations: deps.revocations,
      revocableClaims: config.revocableClaims,
      allowQueryToken: config.allowQueryToken,
      maxTokenBytes: config.maxTokenBytes,
      clock: deps.clock,
      dpop: deps.dpop,
      senderConstrained: config.senderConstrained,
      uses: deps.uses,
      clockSkewS: config.clockSkewS,
    },
    dpopAlgs: config.dpop.algorithms.join(' '),
    checkHead: createHeadCheck({ maxHeaderFields: config.maxHeaderFields, hosts: config.hosts }),
    clientCert: clientCertSource(config),
    connections: deps.connections,
    young,
  }
}

/** The files loadConfig checked, read again for the server: one that changed meanwhile stops the start as it would have there. */
function readTlsAtStart(files: TlsFiles): TlsMaterial {
  try {
    return readTls(files)
  } catch (err) {
    if (err instanceof TlsFileError) throw new LapseError('ERR_CONFIG_INVALID', `LAPSE_${err.setting.toUpperCase()}: ${err.message}`)
    throw err
  }
}

const XFCC_CACHE_SIZE = 1024

/** Where a request's client certificate comes from: the mesh's XFCC header when trusted, else the TLS connection. */
function clientCertSource(config: Deps['config']): ((req: IncomingMessage) => ClientCert | undefined) | undefined {
  if (config.clientCertHeader) {
    const name = config.clientCertHeader
    // One client sends the same header on every request: parsed once (a `Cert` costs an X.509
    // parse and a hash), in a bounded map emptied when full.
    const parsed = new Map<string, ClientCert | undefined>()
    return (req) => {
      const value = req.headers[name]
      // Node joins repeated fields of this name with ", ": one list, whose last element is still the mesh's.
      if (typeof value !== 'string') return undefined
      if (parsed.has(value)) return parsed.get(value)
      const cert = parseXfcc(value)
      if (parsed.size >= XFCC_CACHE_SIZE) parsed.clear()
      parsed.set(value, cert)
      return cert
    }
  }
  if (!config.tls?.clientCaFile) return undefined
  const certOf = createCertCache()
  return (req) => certOf(req.socket as TLSSocket)
}

function serveRequest(ctx: ExchangeContext, req: IncomingMessage, res: ServerResponse): void {
  const x = new Exchange(ctx, req, res, req.socket)
  try {
    x.serveRequest()
  } catch (err) {
    x.fail(err)
  }
}

/** A socket Node handed over is Lapse's to close on shutdown, and to keep from crashing the process. */
function adopt(upgraded: Set<Duplex>, socket: Duplex): void {
  upgraded.add(socket)
  socket.once('close', () => upgraded.delete(socket))
  // Node detached its own error handling from the socket: without a listener, a client's reset
  // while Lapse decides or waits for the upstream is an uncaught 'error' that ends the process.
  socket.on('error', () => socket.destroy())
}

const CONNECT_REFUSED: Denial = Object.freeze({ allow: false, reason: 'invalid_request', description: 'CONNECT is not supported' })

/** An upgrade request: the head checks, then a WebSocket upgrade proxied or any other served plain. */
function serveUpgrade(ctx: ExchangeContext, plain: Server, req: IncomingMessage, socket: Duplex, head: Buffer): Exchange | undefined {
  // A head that passed the field check is whole: Node keeps LAPSE_MAX_HEADER_FIELDS + 1 fields
  // (maxHeadersCount), so the replay loses none of them, framing ones included.
  const early = ctx.checkHead(req.rawHeaders)
  if (!early && !isWebSocketUpgrade(req)) return void handOver(plain, req, socket, head)
  const x = new Exchange(ctx, req, undefined, socket)
  if (early) return void x.refuse(early)
  x.serveUpgrade(head).catch((err: unknown) => x.fail(err))
  return x
}

// RFC 9110 §7.8 lets a server ignore Upgrade and answer in the protocol in use. Lapse proxies
// one upgrade, a GET asking for websocket (RFC 6455 §4.1); any other — h2c, which `curl --http2`
// adds to ordinary requests over http:// and then reads an HTTP/1.1 answer, a POST asking for
// websocket, an unknown protocol — is decided and forwarded as an ordinary HTTP/1.1 request
// without the upgrade, so such a client gets the answer it would get without asking. Node's parser
// stopped at the head of an upgrade request and left its body raw, so the head is re-serialized
// from the fields Node parsed and handed with the rest of the connection to `plain`, whose
// parser frames the body as strictly as the first; Lapse never frames bytes itself.
function handOver(plain: Server, req: IncomingMessage, socket: Duplex, head: Buffer): void {
  socket.unshift(Buffer.concat([Buffer.from(requestHead(req), 'latin1'), head]))
  plain.emit('connection', socket)
}

/** Node's parser refused the request (bad framing, oversized head, too slow): answer and close. No request, so no exchange. */
export function answerClientError(err: NodeJS.ErrnoException, socket: Duplex): void {
  if (!socket.writable) return void socket.destroy()
  writeRawAnswer(
    socket,
    answerOf(
      err.code === 'HPE_HEADER_OVERFLOW'
        ? 'head_too_large'
        : err.code === 'ERR_HTTP_REQUEST_TIMEOUT'
          ? 'request_timeout'
          : 'malformed_http',
    ),
  )
}

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
