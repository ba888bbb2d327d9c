// Builds the real Deps from the environment and runs the sidecar. The only reader of process.env
// (the CLI passes it in), so tests build their own Deps or call startProxy with a plain record.
//
//   const running = await startProxy(process.env)   // throws ConfigError / StartError
//   await running.close()
import { trace } from '@opentelemetry/api'
import pino, { type Logger } from 'pino'
import { createApp, type App, type Deps } from './app.js'
import { compileRoutes } from './authorize/routes.js'
import { loadConfig, type Config, type HostPort } from './config/load.js'
import { createForwarder } from './forward/forward.js'
import { systemClock } from './pipeline/clock.js'
import type { Clock, RevocationStore } from './pipeline/types.js'
import { createMemoryStore } from './revocation/memory-store.js'
import { createRecorder } from './telemetry/recorder.js'
import { normalizeType } from './verify/claims.js'
import { createKeyResolver } from './verify/keys.js'
import { createVerifier } from './verify/verify-token.js'

export class StartError extends Error {
  constructor(readonly code: string, message: string) {
    super(message)
  }
}

export interface Running {
  readonly app: App
  readonly config: Config
  readonly deps: Deps
  readonly addresses: { proxy: HostPort; admin: HostPort }
  close(graceMs?: number): Promise<void>
}

export interface StartOptions {
  readonly clock?: Clock
  /** Where audit and operational lines go; stdout by default. */
  readonly log?: Logger
}

export function createLogger(level: string): Logger {
  // Asynchronous, buffered writes: a slow stdout must not sit on the request path.
  return pino(
    { level, base: { service: 'lapse' }, timestamp: pino.stdTimeFunctions.isoTime, formatters: { level: (label) => ({ level: label }) } },
    pino.destination({ dest: 1, sync: false, minLength: 4096 }),
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

export async function buildDeps(config: Config, opts: StartOptions = {}): Promise<Deps> {
  const clock = opts.clock ?? systemClock
  const log = opts.log ?? createLogger(config.log.level)
  for (const warning of config.warnings) log.warn({}, warning)
  const match = compileRoutes(config.routes)
  if (config.routes.length === 0) log.warn({}, 'no route rules (LAPSE_ROUTES): every request is denied')
  const keys = createKeyResolver({ ...config.keys, algorithms: config.algorithms }, { clock, log })
  try {
    await keys.start()
  } catch (err) {
    throw new StartError('ERR_KEYS_INVALID', `LAPSE_JWKS_FILE: ${(err as Error).message}`)
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
  const forwarder = createForwarder({ upstream: config.upstream, timeoutMs: config.upstreamTimeoutMs, forwardAuthorization: config.forwardAuthorization })
  const recorder = createRecorder({ tracer: trace.getTracer('lapse'), log, clock, logAllows: config.log.allows, allowsSampleRate: config.log.allowsSampleRate })
  return { config, clock, keys, verify, revocations, match, forwarder, recorder, log }
}

export async function startProxy(env: Readonly<Record<string, string | undefined>>, opts: StartOptions = {}): Promise<Running> {
  const config = loadConfig(env)
  const deps = await buildDeps(config, opts)
  const app = createApp(deps)
  let addresses: Running['addresses']
  try {
    addresses = await app.listen()
  } catch (err) {
    await closeDeps(deps)
    const e = err as NodeJS.ErrnoException
    throw new StartError('ERR_LISTEN', `cannot listen: ${e.code ?? e.message}`)
  }
  deps.log.info({ listen: addresses.proxy, admin: addresses.admin, upstream: config.upstream.origin, revocation_set: deps.revocations.kind }, 'lapse is listening')
  return {
    app,
    config,
    deps,
    addresses,
    async close(graceMs = 0) {
      await app.close(graceMs)
      await closeDeps(deps)
    },
  }
}

async function closeDeps(deps: Deps): Promise<void> {
  deps.keys.close()
  deps.forwarder.close()
  await deps.revocations.close()
  deps.log.flush()
}
