// An allowed request → the upstream, streamed both ways over keep-alive connections (http-proxy).
//
//   const forwarder = createForwarder({ upstream, timeoutMs, forwardAuthorization })
//   forwarder.web(req, res, target, identity, (failure) => …)   // failure: 'upstream_timeout' | 'upstream_unavailable'
//   forwarder.ws(req, socket, head, target, identity, onFailure)
import { Agent, type IncomingMessage, type ServerResponse, type ClientRequest } from 'node:http'
import { Agent as HttpsAgent } from 'node:https'
import type { Duplex } from 'node:stream'
import httpProxy from 'http-proxy'
import type { Target } from '../extract/request-target.js'
import type { Identity } from '../pipeline/types.js'
import { stripResponseHopByHop, upstreamHeaders } from './headers.js'

export type UpstreamFailure = 'upstream_timeout' | 'upstream_unavailable'

export interface ForwarderOptions {
  readonly upstream: URL
  /** Until the upstream sends response headers (connect included); after that, streams may idle. */
  readonly timeoutMs: number
  readonly forwardAuthorization: boolean
}

export interface Forwarder {
  web(req: IncomingMessage, res: ServerResponse, target: Target, identity: Identity | undefined, onFailure: (f: UpstreamFailure, err: Error) => void): void
  ws(req: IncomingMessage, socket: Duplex, head: Buffer, target: Target, identity: Identity | undefined, onFailure: (f: UpstreamFailure, err: Error) => void): void
  close(): void
}

interface Exchange {
  timedOut: boolean
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

  proxy.on('proxyReq', (proxyReq: ClientRequest, req: Tracked, res: ServerResponse) => {
    const exchange = req[EXCHANGE]
    proxyReq.setTimeout(opts.timeoutMs, () => {
      if (exchange) exchange.timedOut = true
      proxyReq.destroy()
    })
    proxyReq.once('response', () => proxyReq.setTimeout(0))
    // http-proxy leaves the upstream request running when the client goes away mid-response.
    res.once('close', () => {
      if (!res.writableFinished) proxyReq.destroy()
    })
  })
  proxy.on('proxyRes', (proxyRes: IncomingMessage) => stripResponseHopByHop(proxyRes.headers))

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
      proxy.ws(req, socket, head, {}, (err: Error) => onFailure(exchange.timedOut ? 'upstream_timeout' : 'upstream_unavailable', err))
    },
    close() {
      proxy.close()
      agent.destroy()
    },
  }
}
