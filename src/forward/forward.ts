// An allowed request → the upstream, streamed both ways over keep-alive connections (http-proxy).
//
//   const forwarder = createForwarder({ upstream, timeoutMs, forwardAuthorization })
//   forwarder.web(req, res, target, identity, (failure) => …)   // failure: 'upstream_timeout' | 'upstream_unavailable'
//   const link = forwarder.ws(req, socket, head, target, identity, onFailure)   // link.close(1008, 'token expired')
import { Agent, type IncomingMessage, type ServerResponse, type ClientRequest } from 'node:http'
import { Agent as HttpsAgent } from 'node:https'
import type { Duplex } from 'node:stream'
import httpProxy from 'http-proxy'
import type { Target } from '../extract/request-target.js'
import type { Identity } from '../pipeline/types.js'
import { stripResponseHopByHop, upstreamHeaders } from './headers.js'
import { createWsLink, type WsLink } from './ws-close.js'

export type UpstreamFailure = 'upstream_timeout' | 'upstream_unavailable'

export interface ForwarderOptions {
  readonly upstream: URL
  /** Until the upstream sends response headers (connect included); after that, streams may idle. */
  readonly timeoutMs: number
  readonly forwardAuthorization: boolean
}

export interface Forwarder {
  web(req: IncomingMessage, res: ServerResponse, target: Target, identity: Identity | undefined, onFailure: (f: UpstreamFailure, err: Error) => void): void
  /** onFailure is called only before the upgrade; after it an upstream failure destroys the client socket. */
  ws(req: IncomingMessage, socket: Duplex, head: Buffer, target: Target, identity: Identity | undefined, onFailure: (f: UpstreamFailure, err: Error) => void): WsLink
  close(): void
}

interface Exchange {
  timedOut: boolean
  link?: WsLink
}
const EXCHANGE = Symbol('lapse.exchange')
type Tracked = IncomingMessage & { [EXCHANGE]?: Exchange }

export function createForwarder(opts: ForwarderOptions): Forwarder {
  const agentOptions = { keepAlive: true, maxSockets: 256, maxFreeSockets: 64, scheduling: 'lifo' as const }
  const agent = opts.upstream.protocol === 'https:' ? new HttpsAgent(agentOptions) : new Agent(agentOptions)
  const proxy = httpProxy.createProxyServer({
    target: opts.upstream.origin,
    agent,
    // Lapse writes X-Forwarded-* itself (forward/headers.ts), replacing http-proxy's appends.
    xfwd: false,
    prependPath: true,
    ignorePath: false,
    // The client's Host is kept so virtual hosts behind the sidecar keep working.
    changeOrigin: false,
    ws: true,
  })
  // http-proxy's deleteLength pass rewrites a chunked DELETE/OPTIONS as `Content-Length: 0` and then
  // streams the body anyway: its bytes would reach the upstream as a second, unchecked request.
  // Lapse frames request bodies itself (prepare below), so the pass goes.
  const passes = (proxy as unknown as { webPasses: Array<{ name: string }> }).webPasses
  const deleteLength = passes.findIndex((pass) => pass.name === 'deleteLength')
  if (deleteLength !== -1) passes.splice(deleteLength, 1)

  proxy.on('proxyReq', (proxyReq: ClientRequest, req: Tracked, res: ServerResponse) => {
    const exchange = req[EXCHANGE]
    // A plain timer, not ClientRequest#setTimeout: a socket timeout is re-armed on every read and
    // write and costs more than the decision itself. The budget runs until response headers.
    const timer = setTimeout(() => {
      if (exchange) exchange.timedOut = true
      proxyReq.destroy()
    }, opts.timeoutMs)
    proxyReq.once('response', () => clearTimeout(timer))
    proxyReq.once('close', () => clearTimeout(timer))
    // http-proxy leaves the upstream request running when the client goes away mid-response.
    res.once('close', () => {
      if (!res.writableFinished) proxyReq.destroy()
    })
  })
  proxy.on('proxyRes', (proxyRes: IncomingMessage, _req: IncomingMessage, res: ServerResponse) => {
    stripResponseHopByHop(proxyRes.headers)
    // http-proxy then fills in `Connection` from the request headers, which Lapse has stripped, so
    // it would say keep-alive to a client that asked to close (RFC 9112 §9.6): say what Node decided.
    proxyRes.headers.connection = res.shouldKeepAlive ? 'keep-alive' : 'close'
  })

  // Upgraded upstream sockets waiting for http-proxy's 'open' (emitted once the sockets are piped).
  const upgraded = new WeakMap<Duplex, WsLink>()
  proxy.on('proxyReqWs', (proxyReq: ClientRequest, req: Tracked, socket: Duplex) => {
    const exchange = req[EXCHANGE]
    proxyReq.setTimeout(opts.timeoutMs, () => {
      if (exchange) exchange.timedOut = true
      proxyReq.destroy()
    })
    proxyReq.once('response', () => proxyReq.setTimeout(0))
    // A client that leaves before the upstream answers must not leave the upgrade request running.
    const abort = () => proxyReq.destroy()
    socket.once('close', abort)
    proxyReq.once('upgrade', (_res: IncomingMessage, proxySocket: Duplex) => {
      proxyReq.setTimeout(0)
      socket.off('close', abort)
      const link = exchange?.link
      if (!link) return
      // Cut while the upstream was answering: nothing is relayed.
      if (link.state !== 'open') return void proxySocket.destroy()
      upgraded.set(proxySocket, link)
    })
  })
  proxy.on('open', (proxySocket: Duplex) => {
    const link = upgraded.get(proxySocket)
    if (!link) return
    upgraded.delete(proxySocket)
    link.attach(proxySocket)
  })

  const prepare = (req: Tracked, target: Target, identity: Identity | undefined, upgrade: boolean): Exchange => {
    const exchange: Exchange = { timedOut: false }
    req[EXCHANGE] = exchange
    req.url = target.query || target.hasQuery ? `${target.path}?${target.query}` : target.path
    const headers = upstreamHeaders(req.headers, identity, {
      remoteAddress: req.socket.remoteAddress,
      forwardAuthorization: opts.forwardAuthorization,
      upgrade,
    })
    // Node already answered `100 Continue` to the client; the upstream hop starts fresh.
    delete headers.expect
    // Transfer-Encoding is hop-by-hop, but the body still needs framing on the upstream hop: without
    // it Node writes a GET/DELETE body raw and the upstream parses those bytes as a smuggled request.
    if (req.headers['transfer-encoding'] !== undefined) headers['transfer-encoding'] = req.headers['transfer-encoding']
    req.headers = headers
    return exchange
  }

  return {
    web(req, res, target, identity, onFailure) {
      const exchange = prepare(req, target, identity, false)
      proxy.web(req, res, {}, (err: Error) => {
        if (res.writableEnded || req.socket.destroyed) return
        onFailure(exchange.timedOut ? 'upstream_timeout' : 'upstream_unavailable', err)
      })
    },
    ws(req, socket, head, target, identity, onFailure) {
      const exchange = prepare(req, target, identity, true)
      const link = createWsLink(socket)
      exchange.link = link
      proxy.ws(req, socket, head, {}, (err: Error) => {
        // After the 101 the client speaks WebSocket: an HTTP answer would corrupt its stream.
        if (link.attached) return void socket.destroy()
        onFailure(exchange.timedOut ? 'upstream_timeout' : 'upstream_unavailable', err)
      })
      return link
    },
    close() {
      proxy.close()
      agent.destroy()
    },
  }
}
