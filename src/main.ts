// Builds the real Deps from the environment and runs the sidecar. The only reader of process.env
// (the CLI passes it in), so tests build their own Deps or call startProxy with a plain record.
//
//   const running = await startProxy(process.env)   // throws LapseError (ERR_CONFIG_*, ERR_KEYS_INVALID, ERR_LISTEN…)
//   await running.close()
import type { Server } from 'node:http'
import pino, { type Logger } from 'pino'
import { createAdminServer, type Deps as AdminDeps } from './admin/server.js'
import { createDecisionServer, type DecisionServer } from './http/decision.js'
import { closeServer, createApp, listenOn, type App, type Deps } from './http/server.js'
import type { DpopPolicy } from './bind/dpop.js'
import { createNonces } from './bind/nonce.js'
import { createMemoryReplayCache } from './bind/replay-memory.js'
import { loadConfig, type Config, type HostPort } from './config/load.js'
import { createConnectionRegistry } from './connections/connections.js'
import { createForwarder } from './http/forward.js'
import { assembleDeps, buildPolicy, type Shared } from './policy.js'
import { createReloader, type ReloadResult } from './reload.js'
import { systemClock } from './core/clock.js'
import { LapseError } from './core/errors.js'
import type { Clock, ReplayCache, RevocationStore, UseCounter } from './core/types.js'
import { createMemoryStore } from './revocation/memory-store.js'
import { createMemoryUseCounter } from './revocation/use-counter-memory.js'
import { lineHead } from './telemetry/json-line.js'
import { LineSink, stdoutSink } from './telemetry/line-sink.js'
import { destinationOf } from './telemetry/recorder.js'
import { NO_TELEMETRY, startTelemetry, type Telemetry } from './telemetry/settings.js'

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
  /** Reloads the configuration and the files it names (SIGHUP does this); never throws. */
  reload(trigger?: string): Promise<ReloadResult>
  /** The start of a shutdown: /readyz answers 503 and kept-alive connections are let go; requests are still served. */
  drain(): void
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

/**
 * pino over the process's stdout sink (telemetry/line-sink.ts), which the recorder's audit lines
 * share: batched writes that never block a request, bounded while stdout takes nothing, written
 * out on exit. docs/operations.md#audit-log.
 */
export function createLogger(log: Pick<Config['log'], 'level' | 'bufferBytes'>): Logger {
  let logger: Logger | undefined
  const sink = stdoutSink({
    capBytes: log.bufferBytes,
    // Written past the cap, at any LAPSE_LOG_LEVEL but `silent` (as audit lines are): the record has a hole, say where.
    notice: ({ dropping, dropped }) =>
      logger?.level === 'silent'
        ? undefined
        : dropping
          ? `${lineHead('warn')}"log":"stdout","buffer_bytes":${log.bufferBytes},"msg":"stdout takes no lines: audit and log lines are dropped until it does (lapse_log_lines_dropped_total)"}\n`
          : `${lineHead('warn')}"log":"stdout","dropped":${dropped},"msg":"stdout takes lines again; ${dropped} lines were dropped"}\n`,
  })
  logger = pino(
    {
      level: log.level,
      base: { service: 'lapse' },
      timestamp: pino.stdTimeFunctions.isoTime,
      formatters: { level: (label) => ({ level: label }) },
    },
    sink,
  )
  return logger
}

function lineSinkOf(log: Logger): LineSink | undefined {
  const out = destinationOf(log)
  return out instanceof LineSink ? out : undefined
}

async function createRevocationStore(config: Config, clock: Clock, log: Logger): Promise<RevocationStore> {
  if (!config.redis) {
    log.warn({ revocation_set: 'memory' }, 'LAPSE_REDIS_URL is not set: revocations are local to this process and lost on restart')
    return createMemoryStore({ clock })
  }
  const { createRedisStore } = await import('./revocation/redis-store.js')
  return createRedisStore({
    url: config.redis.url,
    prefix: config.redis.prefix,
    timeoutMs: config.revocationTimeoutMs,
    clock,
    cache: config.redis.cache,
    log,
  })
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
    nonces:
      dpop.nonceSecret === undefined
        ? undefined
        : createNonces({ secret: Buffer.from(dpop.nonceSecret, 'utf8'), stepS: dpop.maxAgeS, clock }),
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
  return (await buildLiveDeps(config, opts)).deps
}

export async function buildLiveDeps(config: Config, opts: StartOptions = {}): Promise<{ deps: Deps; shared: Shared }> {
  const clock = opts.clock ?? systemClock
  const log = opts.log ?? createLogger(config.log)
  for (const warning of config.warnings) log.warn({}, warning)
  const telemetry = opts.telemetry ?? NO_TELEMETRY
  const tracer = telemetry.tracerProvider.getTracer('lapse')
  const policy = await buildPolicy(config, { clock, log, tracer })
  const revocations = await createRevocationStore(config, clock, log)
  const uses = await createUseCounter(config, clock)
  const forwarder =
    config.upstream &&
    createForwarder({
      upstream: config.upstream,
      timeoutMs: config.upstreamTimeoutMs,
      maxConnections: config.upstreamMaxConnections,
      forwardAuthorization: config.forwardAuthorization,
      trustClientCertHeader: config.clientCertHeader !== undefined,
    })
  // Read through `shared.current`, so that after a reload they observe the keys and verifier in force.
  let shared: Shared
  const connections = createConnectionRegistry({
    clock,
    revocations,
    log,
    recheckIntervalS: config.streamRecheckIntervalS,
    get revocableClaims() {
      return shared.current.config.revocableClaims
    },
    get clockSkewS() {
      return shared.current.config.clockSkewS
    },
  })
  // Loaded with the SDK (sdk.ts imports it), so only when metrics are on.
  const metrics =
    telemetry.meterProvider && telemetry.decisions
      ? (await import('./telemetry/metrics.js')).createDecisionMetrics(telemetry.meterProvider.getMeter('lapse'), telemetry.decisions, {
          revocations,
          clock,
          connections,
          // Only Lapse's own sink counts what it drops; a logger handed in by an embedder has its own story.
          lines: lineSinkOf(log),
          get keys() {
            return shared.current.keys
          },
          get verify() {
            return shared.current.verify
          },
        })
      : undefined
  const dpop = await createDpopPolicy(config, clock)
  shared = {
    clock,
    log,
    tracer,
    telemetry,
    revocations,
    uses,
    dpop,
    forwarder,
    metrics,
    connections,
    current: undefined as unknown as Deps,
  }
  shared.current = assembleDeps(config, shared, policy)
  return { deps: shared.current, shared }
}

export async function startProxy(env: Readonly<Record<string, string | undefined>>, opts: StartOptions = {}): Promise<Running> {
  const config = loadConfig(env)
  const log = opts.log ?? createLogger(config.log)
  // Telemetry problems are warnings, never a failed start (STYLE.md "Config").
  const ownTelemetry = opts.telemetry ? undefined : await startTelemetry(env, { log, clock: opts.clock ?? systemClock })
  const telemetry = opts.telemetry ?? ownTelemetry!
  let built: Awaited<ReturnType<typeof buildLiveDeps>>
  try {
    built = await buildLiveDeps(config, { ...opts, log, telemetry })
  } catch (err) {
    await ownTelemetry?.shutdown()
    throw err
  }
  const { shared } = built
  const deps = built.deps
  await untilAnswering(deps, config.startupWaitMs, opts.signal)
  if (opts.signal?.aborted) {
    // A stop during the start is not an outage, nor an instance listening before it is ready.
    deps.log.info({ signal: String(opts.signal.reason) }, 'shutting down before listening')
    await ownTelemetry?.shutdown()
    await closeDeps(deps)
    await new Promise<void>((resolve) => deps.log.flush(() => resolve()))
    throw new StartCancelled()
  }
  let draining = false
  const app = createSidecar(deps, { current: () => shared.current, draining: () => draining })
  let addresses: Running['addresses']
  try {
    addresses = await app.listen()
  } catch (err) {
    await ownTelemetry?.shutdown()
    await closeDeps(built.deps)
    const e = err as NodeJS.ErrnoException
    throw new LapseError('ERR_LISTEN', `cannot listen: ${e.code ?? e.message}`)
  }
  const reloader = createReloader(env, { shared, app: app.app })
  shared.log.info(
    {
      listen: addresses.proxy,
      decision: addresses.decision,
      admin: addresses.admin,
      upstream: config.upstream?.origin,
      revocation_set: shared.revocations.kind,
    },
    'lapse is listening',
  )
  return {
    app,
    get config() {
      return shared.current.config
    },
    get deps() {
      return shared.current
    },
    addresses,
    reload: (trigger = 'api') => reloader.reload(trigger),
    drain() {
      draining = true
      app.app.drain()
    },
    async close(graceMs = 0) {
      reloader.close()
      draining = true
      await app.close(graceMs)
      // After the last response: the decision spans have ended and are flushed (bounded in time).
      await ownTelemetry?.shutdown()
      await closeDeps(shared.current)
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
    deps.log.warn(
      {
        waited_ms: waitMs,
        keys: deps.keys.ready() ? 'loaded' : 'unavailable',
        revocation_set: deps.revocations.ready() ? deps.revocations.kind : 'unreachable',
      },
      'listening before the keys and the revocation set are ready (LAPSE_STARTUP_WAIT): requests get 503 until they are',
    )
  }
}

/**
 * `live` lets the admin listener follow reloads (the admin token, the keys /readyz reports) and
 * answer /readyz 503 once a drain began; without it, it serves `deps` as they are.
 */
export function createSidecar(deps: Deps, live?: { current(): Deps; draining(): boolean }): Sidecar {
  const app = createApp(deps)
  // The decision listener reads the proxy's exchange context per request, so it follows reloads too.
  const decision = deps.config.decision ? createDecisionServer(deps, () => app.context()) : undefined
  const admin = createAdminServer(live ? adminView(deps, live) : deps)
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

function adminView(deps: Deps, live: { current(): Deps; draining(): boolean }): AdminDeps {
  return {
    get config() {
      return live.current().config
    },
    get keys() {
      return live.current().keys
    },
    get recorder() {
      return live.current().recorder
    },
    clock: deps.clock,
    revocations: deps.revocations,
    log: deps.log,
    metricsHandler: deps.metricsHandler,
    draining: live.draining,
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
