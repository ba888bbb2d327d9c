// The decision listener (LAPSE_DECISION_LISTEN): front proxies that already run (nginx
// auth_request, Envoy/Istio ext_authz, Traefik and Caddy forward auth) ask it whether a request
// may pass. Each decision request is one Exchange, decided by the same pipeline as a proxied
// request and answered with the decision itself; nothing is forwarded. docs/ingress.md.
//
//   const decision = createDecisionServer(deps)   // deps.config.decision must be set
//   await decision.listen()
import { hash, timingSafeEqual } from 'node:crypto'
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import type { HostPort } from '../config/load.js'
import { protocolOf, readOriginalRequest } from '../extract/original-request.js'
import { Exchange, type ExchangeContext } from './exchange.js'
import { answerClientError, closeServer, exchangeContext, listenOn, serverOptions, type Deps } from './server.js'

/** The header the shipped snippets set to LAPSE_DECISION_TOKEN (docs/ingress.md#trust). */
export const DECISION_TOKEN_HEADER = 'x-lapse-decision-token'

export interface DecisionServer {
  readonly server: Server
  listen(): Promise<HostPort>
  close(graceMs?: number): Promise<void>
}

/** `ctx` is read once per request: a function follows the proxy's context across reloads. */
export function createDecisionServer(deps: Deps, ctx: ExchangeContext | (() => ExchangeContext) = exchangeContext(deps)): DecisionServer {
  const settings = deps.config.decision
  if (!settings) throw new Error('createDecisionServer needs config.decision')
  const { config } = deps
  const server = createServer(serverOptions(config))
  server.timeout = config.clientIdleTimeoutMs
  server.maxHeadersCount = config.maxHeaderFields + 1
  server.on('clientError', answerClientError)
  // Hashed once: comparing digests takes the same time whatever the length of the value sent.
  const expected = settings.token === undefined ? undefined : digest(settings.token)
  server.on('request', (req: IncomingMessage, res: ServerResponse) =>
    serveDecision(typeof ctx === 'function' ? ctx() : ctx, expected, req, res),
  )
  return {
    server,
    listen: () => listenOn(server, settings.listen),
    close: (graceMs = 0) => closeServer(server, graceMs, new Set()),
  }
}

function serveDecision(ctx: ExchangeContext, expected: Buffer | undefined, req: IncomingMessage, res: ServerResponse): void {
  const protocol = protocolOf(req.url ?? '')
  const raw = req.rawHeaders
  // Read before the exchange starts, so its span and audit line carry the original method.
  const original = protocol === undefined ? undefined : readOriginalRequest(protocol, req.method ?? '', req.url ?? '', raw)
  const x = new Exchange(
    ctx,
    req,
    res,
    req.socket,
    protocol === undefined ? undefined : { protocol, original: original && 'allow' in original ? undefined : original },
  )
  try {
    if (expected !== undefined && !carriesToken(raw, expected)) return x.answerWith('decision_token_invalid')
    if (protocol === undefined) return x.answerWith('not_found')
    if (original && 'allow' in original) return x.refuse(original)
    x.serveDecision()
  } catch (err) {
    x.fail(err)
  }
}

// One-shot: a Hash object per decision request was ≈ 5% of the decision listener's profile
// (bench/README.md, row na); crypto.hash gives the same digest without one.
function digest(value: string): Buffer {
  return hash('sha256', value, 'buffer')
}

/** Exactly one X-Lapse-Decision-Token field, equal to the configured token (compared in constant time). */
function carriesToken(raw: readonly string[], expected: Buffer): boolean {
  let given: string | undefined
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i]!
    if (name.length !== DECISION_TOKEN_HEADER.length || name.toLowerCase() !== DECISION_TOKEN_HEADER) continue
    if (given !== undefined) return false
    given = raw[i + 1]!
  }
  return given !== undefined && timingSafeEqual(digest(given), expected)
}
