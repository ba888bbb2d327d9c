// Builds the real Deps from the environment and runs the sidecar. The only reader of process.env
// (the CLI passes it in), so tests build their own Deps or call startProxy with a plain record.
//
//   const running = await startProxy(process.env)   // throws LapseError (ERR_CONFIG_*, ERR_KEYS_INVALID, ERR_LISTEN…)
//   await running.close()
import type { Server } from 'node:http'
import pino, { type Logger } from 'pino'
import { createAdminServer } from './admin/server.js'
import { createDecisionServer, type DecisionServer } from './http/decision.js'
import { closeServer, createApp, exchangeContext, listenOn, type App, type Deps } from './http/server.js'
import type { DpopPolicy } from './bind/dpop.js'
import { createNonces } from './bind/nonce.js'
import { createMemoryReplayCache } from './bind/replay-memory.js'
import { compileRoutes } from './authorize/routes.js'
import { loadConfig, type Config, type HostPort } from './config/load.js'
import { createConnectionRegistry } from './connections/connections.js'
import { createForwarder } from './http/forward.js'
import { systemClock } from './core/clock.js'
import { LapseError } from './core/errors.js'
import type { Clock, ReplayCache, RevocationStore, UseCounter } from './core/types.js'
import { createMemoryStore } from './revocation/memory-store.js'
import { createMemoryUseCounter } from './revocation/use-counter-memory.js'
import { createRecorder, createStepTracer } from './telemetry/recorder.js'
import { NO_TELEMETRY, startTelemetry, type Telemetry } from './telemetry/settings.js'
import { normalizeType } from './verify/claims.js'
import { createKeyResolver } from './verify/keys.js'
import { createVerifier } from './verify/verify-token.js'

/** The proxy, the decision listener and the admin listener, listened and closed together. */
export interface Sidecar {
  /** Listens only when there is an upstream (LAPSE_UPSTREAM). */
  readonly app: App
  /** Absent unless LAPSE_DECISION_LISTEN is set. */
  readonly decision: DecisionServer | undefined
  readonly admin: Server
  listen(): Promise<Addresses>
  /** Stops accepting; open requests get `graceMs` to finish, then every connection is cut. */
  close(graceMs?: number): Promise<void>
}

/** Where each listener listens; `proxy` is absent for a decision service only, `decision` when it is off. */
export interface Addresses {
  readonly proxy: HostPort | undefined
  readonly decision: HostPort | undefined
  readonly admin: HostPort
}

export interface Running {
  readonly app: Sidecar
  readonly config: Config
  readonly deps: Deps
  readonly addresses: Addresses
  close(graceMs?: number): Promise<void>
}

export interface StartOptions {
  readonly clock?: Clock
  /** Where audit and operational lines go; stdout by default. */
  readonly log?: Logger
  /**
   * Tracer and meter providers (tests pass in-memory ones). startProxy builds them from OTEL_*
   * when absent and shuts them down on close; buildDeps alone falls back to the OTel API globals.
   */
  readonly telemetry?: Telemetry
  /**
   * Aborted by a SIGTERM/SIGINT that comes before Lapse listens (the CLI's): the start-up wait ends,
   * what was opened is closed and startProxy rejects with StartCancelled. Its reason is logged.
   */
  readonly signal?: AbortSignal
}

/** A start stopped by `StartOptions.signal` before listening: everything opened is closed again. */
export class StartCancelled extends Error {
  constructor() {
    super('stopped before listening')
    this.name = 'StartCancelled'
  }
}

export function createLogger(level: string): Logger {
  // Asynchronous, buffered writes: a slow stdout must not sit on the request path.
  return pino(
    { level, base: { service: 'lapse' }, timestamp: pino.stdTimeFunctions.isoTime, formatters: { level: (label) => ({ level: label }) } },
    // …but a quiet sidecar must not sit on its audit lines until 4 KiB pile up: flush every second.
    pino.destination({ dest: 1, sync: false, minLength: 4096, periodicFlush: 1000 }),
  )
}

async function createRevocationStore(config: Config, clock: Clock, log: Logger): Promise<RevocationStore> {
  if (!config.redis) {
    log.warn({ revocation_set: 'memory' }, 'LAPSE_REDIS_URL is not set: revocations are local to this process and lost on restart')
    return createMemoryStore({ clock })
  }
  const { createRedisStore } = await import('./revocation/redis-store.js')
  return createRedisStore({ url: config.redis.url, prefix: config.redis.prefix, timeoutMs: config.revocationTimeoutMs, clock, cache: config.redis.cache, log })
}

async function createReplayCache(config: Config, clock: Clock): Promise<ReplayCache> {
  if (!config.redis) return createMemoryReplayCache({ clock })
  const { createRedisReplayCache } = await import('./revocation/replay-redis.js')
  // The revocation set's server, prefix and budget: every sidecar that shares the set shares the cache.
  return createRedisReplayCache({ url: config.redis.url, prefix: config.redis.prefix, timeoutMs: config.revocationTimeoutMs })
}

async function createDpopPolicy(config: Config, clock: Clock): Promise<DpopPolicy> {
  const { dpop } = config
  return {
    algorithms: new Set(dpop.algorithms),
    maxAgeS: dpop.maxAgeS,
    clockSkewS: config.clockSkewS,
    publicOrigins: dpop.publicOrigins ? new Set(dpop.publicOrigins) : undefined,
    // A nonce lives as long as a proof may: one step, or two across a step change.
    nonces: dpop.nonceSecret === undefined ? undefined : createNonces({ secret: Buffer.from(dpop.nonceSecret, 'utf8'), stepS: dpop.maxAgeS, clock }),
    replay: await createReplayCache(config, clock),
    clock,
  }
}

/** The use counts live where the revocation set does, under its prefix, within its time budget. */
async function createUseCounter(config: Config, clock: Clock): Promise<UseCounter> {
  if (!config.redis) return createMemoryUseCounter({ clock })
  // Connected only when a rule counts uses: otherwise it would be one idle connection per sidecar.
  if (!config.routes.some((r) => r.max_uses !== undefined)) return createMemoryUseCounter({ clock })
  const { createRedisUseCounter } = await import('./revocation/use-counter-redis.js')
  return createRedisUseCounter({ url: config.redis.url, prefix: config.redis.prefix, timeoutMs: config.revocationTimeoutMs })
}

export async function buildDeps(config: Config, opts: StartOptions = {}): Promise<Deps> {
  const clock = opts.clock ?? systemClock
  const log = opts.log ?? createLogger(config.log.level)
  for (const warning of config.warnings) log.warn({}, warning)
  const match = compileRoutes(config.routes)
  if (config.routes.length === 0) log.warn({}, 'no route rules (LAPSE_ROUTES): every request is denied')
  const telemetry = opts.telemetry ?? NO_TELEMETRY
  const tracer = telemetry.tracerProvider.getTracer('lapse')
  const keys = createKeyResolver({ ...config.keys, algorithms: config.algorithms }, { clock, log, steps: createStepTracer(tracer) })
  try {
    await keys.start()
  } catch (err) {
    throw new LapseError('ERR_KEYS_INVALID', `LAPSE_JWKS_FILE: ${(err as Error).message}`)
  }
  const verify = createVerifier({
    policy: {
      issuers: new Set(config.issuers),
      audiences: new Set(config.audiences),
      clockSkewS: config.clockSkewS,
      maxLifetimeS: config.maxLifetimeS,
      requiredClaims: config.requiredClaims,
      tokenTypes: config.tokenTypes ? new Set(config.tokenTypes.map(normalizeType)) : undefined,
    },
    algorithms: config.algorithms,
    keys,
    clock,
    cacheSize: config.tokenCacheSize,
  })
  const revocations = await createRevocationStore(config, clock, log)
  const uses = await createUseCounter(config, clock)
  const forwarder = config.upstream && createForwarder({ upstream: config.upstream, timeoutMs: config.upstreamTimeoutMs, maxConnections: config.upstreamMaxConnections, forwardAuthorization: config.forwardAuthorization, trustClientCertHeader: config.clientCertHeader !== undefined })
  const connections = createConnectionRegistry({
    clock, revocations, log, revocableClaims: config.revocableClaims, clockSkewS: config.clockSkewS, recheckIntervalS: config.streamRecheckIntervalS,
  })
  // Loaded with the SDK (sdk.ts imports it), so only when metrics are on.
  const metrics = telemetry.meterProvider && telemetry.decisions
    ? (await import('./telemetry/metrics.js')).createDecisionMetrics(telemetry.meterProvider.getMeter('lapse'), telemetry.decisions, { keys, verify, revocations, clock, connections })
    : undefined
  const recorder = createRecorder({ tracer, tracing: telemetry.tracing !== false, propagator: telemetry.propagator, metrics, log, clock, logAllows: config.log.allows, allowsSampleRate: config.log.allowsSampleRate })
  const dpop = await createDpopPolicy(config, clock)
  return { config, clock, keys, verify, revocations, uses, match, forwarder, recorder, log, metricsHandler: telemetry.metricsHandler, connections, dpop }
}

export async function startProxy(env: Readonly<Record<string, string | undefined>>, opts: StartOptions = {}): Promise<Running> {
  const config = loadConfig(env)
  const log = opts.log ?? createLogger(config.log.level)
  // Telemetry problems are warnings, never a failed start (STYLE.md "Config").
  const ownTelemetry = opts.telemetry ? undefined : await startTelemetry(env, { log, clock: opts.clock ?? systemClock })
  const telemetry = opts.telemetry ?? ownTelemetry!
  let deps: Deps
  try {
    deps = await buildDeps(config, { ...opts, log, telemetry })
  } catch (err) {
    await ownTelemetry?.shutdown()
    throw err
  }
  await untilAnswering(deps, config.startupWaitMs, opts.signal)
  if (opts.signal?.aborted) {
    // A stop during the start is not an outage, nor an instance listening before it is ready.
    deps.log.info({ signal: String(opts.signal.reason) }, 'shutting down before listening')
    await ownTelemetry?.shutdown()
    await closeDeps(deps)
    await new Promise<void>((resolve) => deps.log.flush(() => resolve()))
    throw new StartCancelled()
  }
  const app = createSidecar(deps)
  let addresses: Running['addresses']
  try {
    addresses = await app.listen()
  } catch (err) {
    await ownTelemetry?.shutdown()
    await closeDeps(deps)
    const e = err as NodeJS.ErrnoException
    throw new LapseError('ERR_LISTEN', `cannot listen: ${e.code ?? e.message}`)
  }
  deps.log.info({ listen: addresses.proxy, decision: addresses.decision, admin: addresses.admin, upstream: config.upstream?.origin, revocation_set: deps.revocations.kind }, 'lapse is listening')
  return {
    app,
    config,
    deps,
    addresses,
    async close(graceMs = 0) {
      await app.close(graceMs)
      // After the last response: the decision spans have ended and are flushed (bounded in time).
      await ownTelemetry?.shutdown()
      await closeDeps(deps)
    },
  }
}

/**
 * Holds the listen back until the keys are loaded and the revocation set has answered once, or
 * until `waitMs` has passed: a request accepted before that would get a 503 that a moment's wait
 * avoids. After the wait Lapse listens anyway and answers 503 until the set is back (fail closed),
 * so an orchestrator sees an instance that is up but not ready rather than one that never starts.
 */
async function untilAnswering(deps: Deps, waitMs: number, signal?: AbortSignal): Promise<void> {
  // The DPoP replay cache shares the set's Redis but has a connection of its own.
  const answering = () => deps.keys.ready() && deps.revocations.ready() && (deps.dpop?.replay.ready?.() ?? true)
  const deadline = performance.now() + waitMs
  while (!answering() && !signal?.aborted && performance.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 10))
  if (!answering() && !signal?.aborted) {
    deps.log.warn({ waited_ms: waitMs, keys: deps.keys.ready() ? 'loaded' : 'unavailable', revocation_set: deps.revocations.ready() ? deps.revocations.kind : 'unreachable' },
      'listening before the keys and the revocation set are ready (LAPSE_STARTUP_WAIT): requests get 503 until they are')
  }
}

export function createSidecar(deps: Deps): Sidecar {
  const app = createApp(deps)
  // One context for both listeners: the same checks, recorder and decision dependencies.
  const decision = deps.config.decision ? createDecisionServer(deps, exchangeContext(deps)) : undefined
  const admin = createAdminServer(deps)
  const proxied = deps.config.upstream !== undefined
  return {
    app,
    decision,
    admin,
    async listen() {
      try {
        const proxy = proxied ? await app.listen() : undefined
        const at = decision ? await decision.listen() : undefined
        return { proxy, decision: at, admin: await listenOn(admin, deps.config.admin.listen) }
      } catch (err) {
        // Half a sidecar would take traffic that its readiness probe cannot vouch for: close what opened.
        await Promise.all([app.close(), decision?.close()])
        throw err
      }
    },
    async close(graceMs = 0) {
      await Promise.all([app.close(graceMs), decision?.close(graceMs), closeServer(admin, 0, new Set())])
    },
  }
}

async function closeDeps(deps: Deps): Promise<void> {
  deps.keys.close()
  deps.forwarder?.close()
  deps.connections?.close()
  await deps.revocations.close()
  await deps.dpop?.replay.close()
  await deps.uses.close()
  deps.log.flush()
}
