// The decision policy of a configuration — routes, keys, verifier, recorder — built apart from the
// running one, and the process-level parts (Shared) a reload keeps. main.ts builds both at start;
// reload.ts builds a new policy and swaps it in.
//
//   const policy = await buildPolicy(config, shared)      // throws LapseError (ERR_KEYS_INVALID…)
//   const deps = assembleDeps(config, shared, policy)
import type { Tracer } from '@opentelemetry/api'
import type { Logger } from 'pino'
import { compileRoutes, type RouteMatcher } from './authorize/routes.js'
import type { Config } from './config/load.js'
import type { ConnectionRegistry } from './connections/connections.js'
import { LapseError } from './core/errors.js'
import type { Clock, RevocationStore, UseCounter } from './core/types.js'
import type { DpopPolicy } from './bind/dpop.js'
import type { Forwarder } from './http/forward.js'
import type { Deps } from './http/server.js'
import { createRecorder, createStepTracer, type DecisionMetrics } from './telemetry/recorder.js'
import type { Telemetry } from './telemetry/settings.js'
import { normalizeType } from './verify/claims.js'
import { createKeyResolver, type KeyResolver } from './verify/keys.js'
import { createVerifier, type Verifier } from './verify/verify-token.js'

/** What a reload keeps: the process-level parts, built once at start. */
export interface Shared {
  readonly clock: Clock
  readonly log: Logger
  readonly tracer: Tracer
  readonly telemetry: Telemetry
  readonly revocations: RevocationStore
  readonly uses: UseCounter
  /** DPoP's settings, nonces and replay cache: built once, a restart changes them. */
  readonly dpop: DpopPolicy
  readonly forwarder: Forwarder | undefined
  readonly metrics: DecisionMetrics | undefined
  readonly connections: ConnectionRegistry
  /** The policy in force, for the readers that outlive a reload (metrics, connection re-checks). */
  current: Deps
}

/** The decision policy, built apart from the running one: the keys, the verifier and the routes. */
export interface Policy {
  readonly keys: KeyResolver
  readonly verify: Verifier
  readonly match: RouteMatcher
}

/**
 * The route matcher, the key set (loaded) and the verifier of `config`; nothing running is touched,
 * so a reload builds and validates the whole policy before it swaps anything. `keys` reuses a
 * resolver whose source did not change (a JWKS URL keeps its cache and refresh schedule).
 */
export async function buildPolicy(
  config: Config,
  parts: { clock: Clock; log: Logger; tracer: Tracer },
  keys?: KeyResolver,
): Promise<Policy> {
  const match = compileRoutes(config.routes)
  if (!keys) {
    keys = createKeyResolver(
      { ...config.keys, algorithms: config.algorithms },
      { clock: parts.clock, log: parts.log, steps: createStepTracer(parts.tracer) },
    )
    try {
      await keys.start()
    } catch (err) {
      keys.close()
      throw new LapseError('ERR_KEYS_INVALID', `LAPSE_JWKS_FILE: ${(err as Error).message}`)
    }
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
    clock: parts.clock,
    cacheSize: config.tokenCacheSize,
  })
  return { keys, verify, match }
}

/** The Deps of `config`: the shared parts, the policy, and a recorder for its log settings. */
export function assembleDeps(config: Config, shared: Shared, policy: Policy): Deps {
  if (config.routes.length === 0) shared.log.warn({}, 'no route rules (LAPSE_ROUTES): every request is denied')
  const recorder = createRecorder({
    tracer: shared.tracer,
    tracing: shared.telemetry.tracing !== false,
    propagator: shared.telemetry.propagator,
    metrics: shared.metrics,
    log: shared.log,
    clock: shared.clock,
    logAllows: config.log.allows,
    allowsSampleRate: config.log.allowsSampleRate,
  })
  return {
    config,
    clock: shared.clock,
    keys: policy.keys,
    verify: policy.verify,
    revocations: shared.revocations,
    uses: shared.uses,
    dpop: shared.dpop,
    match: policy.match,
    forwarder: shared.forwarder,
    recorder,
    log: shared.log,
    metricsHandler: shared.telemetry.metricsHandler,
    connections: shared.connections,
  }
}
