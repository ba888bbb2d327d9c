// The admin listener: health, readiness, metrics and the revocation API (DESIGN.md "Admin API").
//
//   const admin = createAdminServer(deps); admin.listen(9901, '127.0.0.1')
import { createHash, timingSafeEqual } from 'node:crypto'
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import type { Logger } from 'pino'
import type { Config } from '../config/load.js'
import { answerOf, jsonAnswer, writeAnswer } from '../core/answers.js'
import { InvalidCursorError, type Clock, type RevocationEntry, type RevocationStore, type UseCounter } from '../core/types.js'
import { errorType, type Recorder } from '../telemetry/recorder.js'
import type { KeyResolver } from '../verify/keys.js'
import { parseListQuery } from './list-query.js'
import { parseRevocation } from './revocation-body.js'

/** What the admin listener uses of the sidecar's dependencies: http/server.ts's Deps has all of it. */
export interface Deps {
  readonly config: Config
  readonly clock: Clock
  readonly keys: Pick<KeyResolver, 'ready'>
  readonly revocations: RevocationStore
  /** The use counter of rules with max_uses; readiness waits for it too. */
  readonly uses?: Pick<UseCounter, 'ready'> | undefined
  readonly recorder: Pick<Recorder, 'revocationChange'>
  readonly log: Logger
  /** Serves `/metrics`; absent when metrics are off. */
  readonly metricsHandler?: ((req: IncomingMessage, res: ServerResponse) => void) | undefined
  /** True once a shutdown began: /readyz answers 503 so that endpoints stop sending traffic. */
  readonly draining?: (() => boolean) | undefined
}

const MAX_BODY_BYTES = 16 * 1024

export function createAdminServer(deps: Deps): Server {
  const server = createServer({ headersTimeout: 10_000, requestTimeout: 30_000 })
  server.on('request', (req, res) => {
    route(req, res, deps).catch((err: unknown) => {
      deps.log.error({ err: (err as Error).message }, 'admin request failed')
      if (!res.headersSent) writeAnswer(res, answerOf('internal_error'))
    })
  })
  return server
}

async function route(req: IncomingMessage, res: ServerResponse, deps: Deps): Promise<void> {
  const url = new URL(req.url ?? '/', 'http://admin')
  const path = url.pathname
  if (path === '/healthz') return writeAnswer(res, jsonAnswer(200, { status: 'ok' }))
  if (path === '/readyz') return readiness(res, deps)
  if (path === '/metrics') {
    if (deps.metricsHandler) return deps.metricsHandler(req, res)
    return writeAnswer(res, answerOf('not_found', { description: 'metrics are off' }))
  }
  if (path === '/v1/revocations' && req.method === 'POST') return create(req, res, deps)
  if (path === '/v1/revocations' && (req.method === 'GET' || req.method === 'HEAD')) return list(req, res, deps, url.searchParams)
  const m = /^\/v1\/revocations\/([^/]+)\/([^/]+)$/.exec(path)
  if (m) {
    const claim = decodePart(m[1]!)
    const value = decodePart(m[2]!)
    if (claim === undefined || value === undefined)
      return writeAnswer(res, answerOf('admin_invalid_request', { description: 'the path has a bad percent-encoding' }))
    const iss = url.searchParams.get('iss') ?? undefined
    if (req.method === 'GET') return read(req, res, deps, claim, value, iss)
    if (req.method === 'DELETE') return lift(req, res, deps, claim, value, iss)
    return writeAnswer(res, answerOf('method_not_allowed', { headers: { allow: 'GET, DELETE' } }))
  }
  if (path === '/v1/revocations') return writeAnswer(res, answerOf('method_not_allowed', { headers: { allow: 'GET, HEAD, POST' } }))
  writeAnswer(res, answerOf('not_found'))
}

// decodeURIComponent throws on a malformed escape (`%E0%A4%A`): that is the client's mistake, not a 500.
function decodePart(part: string): string | undefined {
  try {
    return decodeURIComponent(part)
  } catch {
    return undefined
  }
}

function readiness(res: ServerResponse, deps: Deps): void {
  if (deps.draining?.()) return writeAnswer(res, jsonAnswer(503, { ready: false, draining: true }))
  const keys = deps.keys.ready()
  const revocations = deps.revocations.ready()
  // The use counter shares the set's Redis but has its own connection (rules with max_uses only).
  const uses = deps.uses?.ready() ?? true
  const ready = keys && revocations && uses
  const body = {
    ready,
    keys: keys ? 'loaded' : 'unavailable',
    revocation_set: revocations ? deps.revocations.kind : 'unreachable',
    ...(uses ? {} : { use_counter: 'unreachable' }),
  }
  writeAnswer(res, jsonAnswer(ready ? 200 : 503, body))
}

/** The admin token, compared in constant time; answers the request itself when it fails. */
function authorize(req: IncomingMessage, res: ServerResponse, deps: Deps): string | undefined {
  const expected = deps.config.admin.token
  if (!expected) {
    writeAnswer(res, answerOf('admin_off'))
    return undefined
  }
  const m = /^bearer +(\S+)$/i.exec(req.headers.authorization ?? '')
  const digest = (s: string) => createHash('sha256').update(s).digest()
  if (!m || !timingSafeEqual(digest(m[1]!), digest(expected))) {
    writeAnswer(res, answerOf('admin_unauthorized'))
    return undefined
  }
  // The CLI says so in its User-Agent, so the audit line tells a script from a person at a shell.
  return /^lapse-cli\//.test(req.headers['user-agent'] ?? '') ? `${deps.config.admin.tokenName} (cli)` : deps.config.admin.tokenName
}

async function create(req: IncomingMessage, res: ServerResponse, deps: Deps): Promise<void> {
  const by = authorize(req, res, deps)
  if (!by) return
  const body = await readJson(req)
  if (!body.ok) return writeAnswer(res, answerOf('admin_invalid_request', { description: body.error }))
  const { config, clock } = deps
  const parsed = parseRevocation(body.value, { config, nowS: Math.floor(clock.now() / 1000), by })
  if ('error' in parsed) return writeAnswer(res, answerOf('admin_invalid_request', { description: parsed.error }))
  const change = deps.recorder.revocationChange(req.headers, 'revoke')
  let stored: RevocationEntry
  try {
    stored = await deps.revocations.put(parsed)
  } catch (err) {
    change.ended(errorType(err))
    deps.log.error({ err: (err as Error).message }, 'revocation write failed')
    return writeAnswer(res, answerOf('revocation_write_failed'))
  }
  change.done(stored)
  writeAnswer(res, jsonAnswer(201, toJson(stored)))
}

async function read(
  req: IncomingMessage,
  res: ServerResponse,
  deps: Deps,
  claim: string,
  value: string,
  iss: string | undefined,
): Promise<void> {
  if (!authorize(req, res, deps)) return
  try {
    const entry = await deps.revocations.get(claim, value, iss)
    if (!entry) return writeAnswer(res, answerOf('not_found', { description: 'no such revocation' }))
    writeAnswer(res, jsonAnswer(200, toJson(entry)))
  } catch {
    writeAnswer(res, answerOf('revocation_set_unreachable'))
  }
}

async function list(req: IncomingMessage, res: ServerResponse, deps: Deps, params: URLSearchParams): Promise<void> {
  if (!authorize(req, res, deps)) return
  const query = parseListQuery(params)
  if ('error' in query) return writeAnswer(res, answerOf('admin_invalid_request', { description: query.error }))
  try {
    const page = await deps.revocations.list(query)
    writeAnswer(res, jsonAnswer(200, { revocations: page.entries.map(toJson), next_cursor: page.next ?? null }))
  } catch (err) {
    if (err instanceof InvalidCursorError)
      return writeAnswer(
        res,
        answerOf('admin_invalid_request', { description: '"cursor" is not one this set made: start again without it' }),
      )
    writeAnswer(res, answerOf('revocation_set_unreachable'))
  }
}

async function lift(
  req: IncomingMessage,
  res: ServerResponse,
  deps: Deps,
  claim: string,
  value: string,
  iss: string | undefined,
): Promise<void> {
  const by = authorize(req, res, deps)
  if (!by) return
  const change = deps.recorder.revocationChange(req.headers, 'lift')
  try {
    // One atomic step: the audit line names the entry that was removed, not one read before it.
    const removed = await deps.revocations.lift(claim, value, iss)
    // Nothing lifted is nothing changed: the span ends without an audit line.
    if (removed) change.done({ ...removed, by })
    else change.ended()
    if (!removed) return writeAnswer(res, answerOf('not_found', { description: 'no such revocation' }))
    res.writeHead(204).end()
  } catch (err) {
    change.ended(errorType(err))
    writeAnswer(res, answerOf('revocation_set_unreachable'))
  }
}

export function toJson(e: RevocationEntry): Record<string, unknown> {
  return {
    claim: e.claim,
    value: e.value,
    iss: e.iss ?? null,
    issued_before: e.issuedBeforeS,
    reason: e.reason,
    by: e.by,
    created_at: e.createdAtS,
    expires_at: e.expiresAtS,
  }
}

async function readJson(req: IncomingMessage): Promise<{ ok: true; value: unknown } | { ok: false; error: string }> {
  const type = req.headers['content-type'] ?? ''
  if (!/^application\/json\b/i.test(type)) return { ok: false, error: 'the body must be application/json' }
  const chunks: Buffer[] = []
  let size = 0
  for await (const chunk of req) {
    size += (chunk as Buffer).length
    if (size > MAX_BODY_BYTES) return { ok: false, error: 'the body is too large' }
    chunks.push(chunk as Buffer)
  }
  try {
    return { ok: true, value: JSON.parse(Buffer.concat(chunks).toString('utf8')) }
  } catch {
    return { ok: false, error: 'the body is not valid JSON' }
  }
}
