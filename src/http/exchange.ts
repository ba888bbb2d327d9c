// One request or upgrade, from its head to its close. It owns the span and audit line (the
// RequestTrace), the decision, the registration with the connection registry and the close
// listener, and it ends in one place: finish(), idempotent, reached on every path.
//
//   const x = new Exchange(ctx, req, res, req.socket)     // an HTTP request
//   x.serveRequest()                                       // a throw goes to x.fail(err)
//   const u = new Exchange(ctx, req, undefined, socket)    // an upgrade or CONNECT: answers go raw to the socket
//   u.serveUpgrade(head).catch((err) => u.fail(err))
//   const d = new Exchange(ctx, req, res, req.socket, { protocol, original })   // a decision request (http/decision.ts)
//   d.serveDecision()                                      // answered with the decision, never forwarded
import type { IncomingMessage, ServerResponse } from 'node:http'
import type { Socket } from 'node:net'
import type { Duplex } from 'node:stream'
import type { Logger } from 'pino'
import { noteOf, type ConnectionTracker, type Cut, type TrackedExchange } from '../connections/connections.js'
import { answerOf, writeAnswer, type Answer, type AnswerName } from '../core/answers.js'
import { toAnswer, type DpopAnswer } from '../core/reasons.js'
import type { ClientCert } from '../bind/mtls.js'
import type { Decision, Denial, Identity, Outcome, Target } from '../core/types.js'
import { decide, type DecideDeps } from '../decide/decide.js'
import type { HeadCheck } from '../extract/request-head.js'
import type { DecisionProtocol, OriginalRequest } from '../extract/original-request.js'
import type { Recorder, RequestTrace } from '../telemetry/recorder.js'
import { decisionAnswer, deniedAnswer } from './decision-answer.js'
import type { Forwarder, Forwarding, UpstreamFailure, UpstreamFailureSink, Upgrading } from './forward.js'
import { writeRawAnswer } from './raw-answer.js'
import { WS_GOING_AWAY, WS_POLICY_VIOLATION } from './ws-close.js'

/** What every exchange of one app shares; createApp builds it once. */
export interface ExchangeContext {
  readonly recorder: Recorder
  readonly log: Logger
  readonly realm: string
  /** Absent when Lapse runs as a decision service only (no LAPSE_UPSTREAM). */
  readonly forwarder: Forwarder | undefined
  readonly decideDeps: DecideDeps
  readonly checkHead: HeadCheck
  /** The request's client certificate (TLS connection or trusted XFCC); absent when none can be known. */
  readonly clientCert?: ((req: IncomingMessage) => ClientCert | undefined) | undefined
  /** Absent when there is no connection registry. */
  readonly connections: ConnectionTracker | undefined
  readonly young: YoungExchanges | undefined
  /** LAPSE_DPOP_ALGORITHMS, space-separated, for the DPoP challenges (RFC 9449 §7.1 `algs`). */
  readonly dpopAlgs?: string | undefined
}

type Allowed = Extract<Decision, { allow: true }>

/** A decision request: the protocol it speaks and, once read, the original request it asks about. */
export interface DecisionRequest {
  readonly protocol: DecisionProtocol
  readonly original: OriginalRequest | undefined
}

/** The audit line's mark of a client that left before any answer reached it. */
const CLIENT_CLOSED = Object.freeze({ client_closed: true })

export class Exchange implements TrackedExchange, UpstreamFailureSink {
  readonly trace: RequestTrace
  /** Read now: once the body is forwarded, or the socket destroyed, the peer is no longer known. */
  private readonly remoteAddress: string | undefined
  // TrackedExchange: set just before the exchange is registered for cuts.
  identity!: Identity
  kind: TrackedExchange['kind'] = 'stream'
  cutAtExpiry = false
  /** Index in YoungExchanges while waiting there, else -1. */
  slot = -1
  /** Set once registered with the connection registry. */
  untrack: (() => void) | undefined = undefined
  /** The client certificate the decision saw: its SPIFFE ID goes upstream as X-Auth-Peer. */
  private clientCert: ClientCert | undefined = undefined
  /** The status Lapse wrote raw to the socket (an upgrade's answers; HTTP reads its response). */
  private status: number | undefined = undefined
  private answer: AnswerName | undefined = undefined
  private upstreamFailure: UpstreamFailure | undefined = undefined
  private cut: Cut | undefined = undefined
  private forwarding: Forwarding | undefined = undefined
  private upgrading: Upgrading | undefined = undefined
  /** The decision is awaited: a close now is finished once it is known, so the line carries it. */
  private deciding = false
  private left = false
  private finished = false
  private readonly onClose = (): void => {
    if (this.deciding) this.left = true
    else this.finish()
  }

  constructor(
    private readonly ctx: ExchangeContext,
    private readonly req: IncomingMessage,
    /** The response of an HTTP request; undefined for an upgrade or CONNECT, answered raw on `socket`. */
    private readonly res: ServerResponse | undefined,
    private readonly socket: Duplex,
    /** Set on the decision listener: the exchange answers with its decision, and forwards nothing. */
    private readonly asked?: DecisionRequest,
  ) {
    // First, and never throwing (the OpenTelemetry API does not throw); then the close listener,
    // before anything that can: whatever happens next, the exchange ends in finish().
    this.trace = ctx.recorder.start(req, asked?.original?.method)
    this.remoteAddress = (socket as Socket).remoteAddress
    ;(res ?? socket).on('close', this.onClose)
  }

  /** The one end of every exchange: unregisters it, stops its forwarding, writes its span and audit line. */
  finish(): void {
    if (this.finished) return
    this.finished = true
    this.forwarding?.abandon()
    if (this.untrack) this.untrack()
    else if (this.slot >= 0) this.ctx.young!.unwatch(this)
    const status = this.res ? (this.res.headersSent ? this.res.statusCode : undefined) : (this.status ?? this.upgrading?.status)
    // No status and no cut: the client left before any answer reached it.
    let note = status === undefined && this.cut === undefined ? CLIENT_CLOSED : noteOf(this.cut)
    // Which front proxy's protocol asked: the audit line of a decision request says so.
    if (this.asked) note = { ...note, decision_api: this.asked.protocol }
    this.ctx.recorder.finish(this.trace, {
      status,
      upstreamFailure: this.upstreamFailure,
      answer: this.answer,
      remoteAddress: this.remoteAddress,
      note,
    })
  }

  /** A bug: the client gets a 500 if nothing was sent yet, and the exchange its line and ended span. */
  fail(err: unknown): void {
    this.deciding = false
    this.ctx.log.error({ err: (err as Error).message }, this.res ? 'request handling failed' : 'upgrade handling failed')
    if (this.left || this.finished) return this.finish()
    if (this.res?.headersSent) return void this.res.destroy()
    this.answerWith('internal_error')
  }

  /** An HTTP request: the head checks, then the decision, then the answer or the upstream's. */
  serveRequest(): void {
    const req = this.req
    const early = this.ctx.checkHead(req.rawHeaders)
    if (early) return this.refuse(early)
    if (unsupportedTransferCoding(req.headers['transfer-encoding'])) return this.answerWith('unsupported_transfer_coding')
    const outcome = this.decide()
    // Most requests are decided without waiting (a cached token, an in-process revocation
    // answer); only the rest pay for a promise.
    if (outcome instanceof Promise) this.respondLater(outcome)
    else this.respond(outcome)
  }

  // Apart from serveRequest, so that a request decided at once allocates no closure for this.
  private respondLater(outcome: Promise<Outcome>): void {
    this.deciding = true
    outcome
      .then((o) => {
        if (this.settled()) this.respond(o)
      })
      .catch((err: unknown) => this.fail(err))
  }

  /**
   * A decision request whose original request was read: the same head checks (on the original
   * Host), the same decision, answered with the decision itself (http/decision-answer.ts).
   */
  serveDecision(): void {
    const early = this.ctx.checkHead(this.req.rawHeaders, this.asked!.original!.host)
    if (early) return this.refuse(early)
    const outcome = this.decide()
    if (outcome instanceof Promise) this.respondLater(outcome)
    else this.respond(outcome)
  }

  /** A WebSocket upgrade (forward.ts isWebSocketUpgrade): decided, then tunnelled or answered raw. */
  async serveUpgrade(head: Buffer): Promise<void> {
    const req = this.req
    if (unsupportedTransferCoding(req.headers['transfer-encoding'])) return this.answerWith('unsupported_transfer_coding')
    // RFC 6455 §4.1: the opening handshake is a GET, and nothing frames a body over an upgrade:
    // Node's parser left it raw and http-proxy never sends it, so a declared body would be owed to
    // the upstream and read there as the start of another request. Refused before any decision.
    if (declaresBody(req))
      return this.refuse({ allow: false, reason: 'invalid_request', description: 'a WebSocket upgrade cannot carry a body' })
    this.deciding = true
    const outcome = await this.decide()
    // The client left while the decision was awaited: the upstream must not be asked for a tunnel to no one.
    if (!this.settled() || this.socket.destroyed) return this.finish()
    const d = outcome.decision
    if (!d.allow) return this.answerClosing(toAnswer(d, this.ctx.realm, this.dpopAnswer(outcome)), undefined)
    this.tunnel(d, outcome.target!, head)
  }

  /** A refusal before any decision (the head checks, CONNECT, a body on an upgrade), audited like a decision. */
  refuse(denial: Denial): void {
    this.ctx.recorder.decided(this.trace, { decision: denial, target: undefined, revocationMs: undefined })
    this.answerClosing(this.asked ? deniedAnswer(denial, this.ctx.realm, this.asked.protocol) : toAnswer(denial, this.ctx.realm), undefined)
  }

  /** A non-decision answer from the table; the connection closes, since the body is never read. */
  answerWith(name: AnswerName): void {
    this.answerClosing(answerOf(name), name)
  }

  /** UpstreamFailureSink: the forwarding failed before any byte of the upstream's answer was sent. */
  upstreamFailed(failure: UpstreamFailure, err: Error): void {
    this.upstreamFailure = failure
    this.ctx.log.warn(
      { err: (err as NodeJS.ErrnoException).code ?? err.message, failure },
      this.res ? 'upstream request failed' : 'upstream upgrade failed',
    )
    const answer = answerOf(failure)
    if (this.res) return writeAnswer(this.res, answer)
    this.status = answer.status
    writeRawAnswer(this.socket, answer)
  }

  /** TrackedExchange: the token lapsed. A WebSocket gets a close frame 1008, a stream is cut short. */
  close(cut: Cut): void {
    this.cut = cut
    if (this.kind === 'websocket') this.upgrading?.link.close(WS_POLICY_VIOLATION, `token ${cut.reason}`)
    // Cut short, not ended: without the last chunk a cut download never looks complete.
    else this.res?.destroy()
  }

  /** The server stops accepting: a WebSocket gets a close frame 1001; others finish on their own. */
  goAway(): void {
    if (this.upgrading?.status === 101) this.upgrading.link.close(WS_GOING_AWAY, 'server shutting down')
  }

  private decide(): Outcome | Promise<Outcome> {
    const req = this.req
    const clientCert = this.ctx.clientCert?.(req)
    this.clientCert = clientCert
    const original = this.asked?.original
    const input = {
      method: original ? original.method : (req.method ?? 'GET'),
      url: original ? original.url : (req.url ?? ''),
      authorization: authorizationOf(req.rawHeaders),
      rawHeaders: req.rawHeaders,
      clientCert,
      steps: this.trace.steps,
      asSent: original !== undefined,
      originalHost: original?.host,
    }
    const outcome = decide(input, this.ctx.decideDeps)
    return outcome instanceof Promise ? this.recordLater(outcome) : this.record(outcome)
  }

  private recordLater(outcome: Promise<Outcome>): Promise<Outcome> {
    return outcome.then((o) => this.record(o))
  }

  private record(outcome: Outcome): Outcome {
    this.ctx.recorder.decided(this.trace, outcome)
    return outcome
  }

  /** After an awaited decision: false when the client left meanwhile, and the exchange is finished. */
  private settled(): boolean {
    this.deciding = false
    if (!this.left) return true
    this.finish()
    return false
  }

  private respond(outcome: Outcome): void {
    const d = outcome.decision
    if (this.asked) return writeAnswer(this.res!, decisionAnswer(d, this.ctx.realm, this.asked.protocol))
    if (!d.allow) {
      const req = this.req
      // The body of a refused request is never read; closing avoids draining an attacker's upload.
      const answer = toAnswer(d, this.ctx.realm, this.dpopAnswer(outcome))
      if (req.headers['content-length'] !== '0' && (req.headers['content-length'] || req.headers['transfer-encoding']))
        this.res!.shouldKeepAlive = false
      return writeAnswer(this.res!, answer)
    }
    this.watch(d, 'stream', d.rule.cutStreamsAtExpiry)
    this.ctx.recorder.inject(this.trace, this.req.headers)
    // RFC 9449 §8: the client's nonce was of the previous step; Node merges this with the upstream's headers.
    if (outcome.dpopNonce !== undefined) this.res!.setHeader('dpop-nonce', outcome.dpopNonce)
    this.forwarding = this.ctx.forwarder!.web(
      this.req,
      this.res!,
      outcome.target!,
      d.identity,
      this,
      this.clientCert?.peer,
      d.bound,
      d.binding,
    )
  }

  /** What a DPoP challenge names: the algorithms, and the nonce the decision says the client is to use. */
  private dpopAnswer(outcome: Outcome): DpopAnswer | undefined {
    const algs = this.ctx.dpopAlgs
    return algs === undefined ? undefined : { algs, nonce: outcome.dpopNonce, scheme: usesDpopScheme(this.req.rawHeaders) }
  }

  private tunnel(d: Allowed, target: Target, head: Buffer): void {
    this.ctx.recorder.inject(this.trace, this.req.headers)
    // A throw here is before anything went upstream (headers are built, and checked by Node, first).
    this.upgrading = this.ctx.forwarder!.ws(
      this.req,
      this.socket,
      head,
      target,
      d.identity,
      this,
      this.clientCert?.peer,
      d.bound,
      d.binding,
    )
    this.watch(d, 'websocket', true)
  }

  /**
   * Registers an allowed exchange for cuts: a WebSocket at once, a streamed response only if it is
   * still open after a tick (YoungExchanges).
   */
  private watch(d: Allowed, kind: TrackedExchange['kind'], cutAtExpiry: boolean): void {
    if (!d.identity || !this.ctx.connections) return
    this.identity = d.identity
    this.kind = kind
    this.cutAtExpiry = cutAtExpiry
    if (kind === 'websocket') this.untrack = this.ctx.connections.track(this)
    else this.ctx.young!.watch(this)
  }

  /** Writes an answer of Lapse's own and closes the connection; a raw one ends the exchange at once. */
  private answerClosing(answer: Answer, name: AnswerName | undefined): void {
    this.answer = name
    if (this.res) {
      this.res.shouldKeepAlive = false
      return writeAnswer(this.res, answer)
    }
    this.status = answer.status
    writeRawAnswer(this.socket, answer)
    this.finish()
  }
}

/** How long a streamed response may run before it is registered for cuts. */
const YOUNG_TICK_MS = 100

/**
 * Most responses end within milliseconds, and registering every one with the connection registry
 * cost more than the whole decision. A response still open after one tick is registered then:
 * the registry cuts it at once if its deadline already passed, and it remembers recent revocation
 * events, so one that came in between still cuts it. The tick bounds how late either can be.
 * A response leaves the list the moment it closes, by swapping the last entry into its slot. Both
 * obvious alternatives measured far worse under load (bench row 3): a Set with one add and one
 * delete per request, and an array emptied only at the tick, which kept every finished response's
 * object graph alive past the young-generation GC.
 */
export class YoungExchanges {
  private readonly list: Exchange[] = []
  private timer: NodeJS.Timeout | undefined = undefined

  constructor(private readonly connections: ConnectionTracker) {}

  watch(x: Exchange): void {
    x.slot = this.list.length
    this.list.push(x)
    if (this.timer) return
    this.timer = setTimeout(this.promote, YOUNG_TICK_MS)
    this.timer.unref()
  }

  unwatch(x: Exchange): void {
    const last = this.list.pop()!
    if (last !== x) {
      this.list[x.slot] = last
      last.slot = x.slot
    }
    x.slot = -1
  }

  private readonly promote = (): void => {
    this.timer = undefined
    for (const x of this.list) {
      x.slot = -1
      x.untrack = this.connections.track(x)
    }
    this.list.length = 0
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
  const codings = te
    .split(',')
    .map((c) => c.trim().toLowerCase())
    .filter((c) => c !== '')
  return codings.length !== 1 || codings[0] !== 'chunked'
}

/** Whether the request's credentials came under the DPoP scheme (RFC 7235 §2.1: case-insensitive). Read only for a denial. */
function usesDpopScheme(raw: readonly string[]): boolean {
  const values = authorizationOf(raw)
  return values !== undefined && values.length === 1 && /^dpop /i.test(values[0]!)
}
