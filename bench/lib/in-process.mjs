// What the in-process benchmarks (micro/decision.bench.mjs, micro/audit-line.mjs,
// otel-sdk-cost.mjs) share: Lapse's settings for a run without sockets, the decision's
// dependencies as src/http/server.ts takes them from the full Deps, and a logger that drops all.
//
//   const deps = await buildDeps(loadConfig(inProcessEnv({ jwksFile, iss, aud })), { log: silentLogger() })
//   decide(input, decideDepsOf(deps))
import { ROUTES } from './servers.mjs'

/** LAPSE_* for an in-process Lapse: loopback ports it never opens, the bench's routes, no allow lines. */
export function inProcessEnv({ jwksFile, iss, aud, ...extra }) {
  return {
    LAPSE_LISTEN: '127.0.0.1:0',
    LAPSE_ADMIN_LISTEN: '127.0.0.1:0',
    LAPSE_UPSTREAM: 'http://127.0.0.1:9',
    LAPSE_ISSUER: iss,
    LAPSE_AUDIENCE: aud,
    LAPSE_JWKS_FILE: jwksFile,
    LAPSE_ROUTES: ROUTES,
    LAPSE_LOG_LEVEL: 'silent',
    LAPSE_LOG_ALLOWS: 'none',
    ...extra,
  }
}

/** The decision's dependencies from buildDeps' result, as src/http/server.ts builds them. */
export function decideDepsOf(deps) {
  return {
    match: deps.match,
    verify: deps.verify,
    revocations: deps.revocations,
    revocableClaims: deps.config.revocableClaims,
    allowQueryToken: deps.config.allowQueryToken,
    maxTokenBytes: deps.config.maxTokenBytes,
    clock: deps.clock,
    uses: deps.uses,
    clockSkewS: deps.config.clockSkewS,
  }
}

/** A pino-shaped logger that drops everything, so buildDeps' warnings stay off the output. */
export function silentLogger() {
  const noop = () => {}
  const log = {
    level: 'silent',
    levelVal: Number.POSITIVE_INFINITY,
    fatal: noop,
    error: noop,
    warn: noop,
    info: noop,
    debug: noop,
    trace: noop,
    silent: noop,
    flush: noop,
  }
  log.child = () => log
  return log
}

/**
 * One cached request's bookkeeping as src/http/server.ts does it around the decision, without
 * sockets: recorder start, decide, decided, inject, finish (the span and the audit line). `decide`
 * is the build's own (its dist/decide/decide.js); the token must decide without a promise.
 */
export function recordedRequest(deps, d, { decide, path, authorization, rawHeaders }) {
  return () => {
    const req = {
      method: 'GET',
      url: path,
      httpVersion: '1.1',
      headers: { host: '127.0.0.1', authorization: authorization[0], connection: 'keep-alive' },
      socket: {},
    }
    const t = deps.recorder.start(req)
    const outcome = decide({ method: req.method, url: req.url, authorization, rawHeaders, steps: t.steps }, d)
    if (outcome instanceof Promise) throw new Error('the hot path waited: a cached token and the memory set must decide without a promise')
    deps.recorder.decided(t, outcome)
    deps.recorder.inject(t, req.headers)
    deps.recorder.finish(t, { status: 200, remoteAddress: '127.0.0.1' })
    return outcome.decision.allow
  }
}
