// Live reload: on SIGHUP or a change to a file Lapse reads, the whole decision policy is built
// and validated apart from the running one, then swapped in with one assignment. An exchange reads
// the policy once, at its start (http/server.ts swap), so it is decided entirely by the old or the
// new settings. An invalid configuration changes nothing; process-level settings keep their value.
//
//   const reloader = createReloader(env, state, { telemetry })
//   await reloader.reload('SIGHUP')          // 'ok' | 'error'
//   reloader.close()
import { createHash } from 'node:crypto'
import { readFileSync } from 'node:fs'
import type { Counter } from '@opentelemetry/api'
import { watchFiles, type FileWatcher } from './config/watch.js'
import { loadConfig, type Config } from './config/load.js'
import { LapseError } from './core/errors.js'
import type { App } from './http/server.js'
import { assembleDeps, buildPolicy, type Shared } from './policy.js'
import * as A from './telemetry/semconv.js'
import type { KeyResolver } from './verify/keys.js'

type Env = Readonly<Record<string, string | undefined>>
export type ReloadResult = 'ok' | 'error'

export interface Reloader {
  /** Reloads once; concurrent calls wait for the running one and then reload again, once. */
  reload(trigger: string): Promise<ReloadResult>
  close(): void
}

/** The running state a reload reads and replaces. */
export interface ReloadState {
  readonly shared: Shared
  readonly app: Pick<App, 'swap'>
}

// Settings applied live, by their environment name, and how to read each off Config.
const LIVE: ReadonlyArray<readonly [string, (c: Config) => unknown]> = [
  ['LAPSE_ROUTES', (c) => c.routes],
  ['LAPSE_ISSUER', (c) => c.issuers],
  ['LAPSE_AUDIENCE', (c) => c.audiences],
  ['LAPSE_ALGORITHMS', (c) => c.algorithms],
  ['LAPSE_CLOCK_SKEW', (c) => c.clockSkewS],
  ['LAPSE_MAX_TOKEN_LIFETIME', (c) => c.maxLifetimeS],
  ['LAPSE_REQUIRED_CLAIMS', (c) => c.requiredClaims],
  ['LAPSE_TOKEN_TYPES', (c) => c.tokenTypes],
  ['LAPSE_REVOCABLE_CLAIMS', (c) => c.revocableClaims],
  ['LAPSE_LOG_LEVEL', (c) => c.log.level],
  ['LAPSE_LOG_ALLOWS', (c) => c.log.allows],
  ['LAPSE_LOG_ALLOWS_SAMPLE_RATE', (c) => c.log.allowsSampleRate],
  // Compared, never logged: only the name goes into the line.
  ['LAPSE_ADMIN_TOKEN', (c) => c.admin.token],
  ['LAPSE_ADMIN_TOKEN_FILE', (c) => c.admin.tokenFile],
  ['LAPSE_ADMIN_TOKEN_NAME', (c) => c.admin.tokenName],
  ['LAPSE_JWKS_FILE', (c) => c.keys.jwksFile],
  ['LAPSE_TOKEN_CACHE_SIZE', (c) => c.tokenCacheSize],
  ['LAPSE_ALLOW_QUERY_TOKEN', (c) => c.allowQueryToken],
  ['LAPSE_MAX_TOKEN_BYTES', (c) => c.maxTokenBytes],
  ['LAPSE_HOSTS', (c) => c.hosts],
  ['LAPSE_REALM', (c) => c.realm],
  ['LAPSE_DRAIN_DELAY', (c) => c.drainDelayS],
  ['LAPSE_SHUTDOWN_TIMEOUT', (c) => c.shutdownTimeoutS],
  ['LAPSE_SENDER_CONSTRAINED', (c) => c.senderConstrained],
]

// Settings that need a restart: sockets, connections and pools built once. A change is warned
// about and the running value is kept (`keep` writes it into the new configuration).
type Mutable = { -readonly [K in keyof Config]: Config[K] }
const RESTART: ReadonlyArray<readonly [string, (c: Config) => unknown, (next: Mutable, old: Config) => void]> = [
  [
    'LAPSE_LISTEN',
    (c) => c.listen,
    (n, o) => {
      n.listen = o.listen
    },
  ],
  [
    'LAPSE_ADMIN_LISTEN',
    (c) => c.admin.listen,
    (n, o) => {
      n.admin = { ...n.admin, listen: o.admin.listen }
    },
  ],
  [
    'LAPSE_UPSTREAM',
    (c) => c.upstream?.href,
    (n, o) => {
      n.upstream = o.upstream
    },
  ],
  [
    'LAPSE_UPSTREAM_TIMEOUT',
    (c) => c.upstreamTimeoutMs,
    (n, o) => {
      n.upstreamTimeoutMs = o.upstreamTimeoutMs
    },
  ],
  [
    'LAPSE_UPSTREAM_MAX_CONNECTIONS',
    (c) => c.upstreamMaxConnections,
    (n, o) => {
      n.upstreamMaxConnections = o.upstreamMaxConnections
    },
  ],
  [
    'LAPSE_FORWARD_AUTHORIZATION',
    (c) => c.forwardAuthorization,
    (n, o) => {
      n.forwardAuthorization = o.forwardAuthorization
    },
  ],
  [
    'LAPSE_REDIS_URL',
    (c) => c.redis?.url,
    (n, o) => {
      n.redis = o.redis
    },
  ],
  [
    'LAPSE_REDIS_PREFIX',
    (c) => c.redis?.prefix,
    (n, o) => {
      n.redis = o.redis
    },
  ],
  [
    'LAPSE_REVOCATION_CACHE',
    (c) => c.redis?.cache,
    (n, o) => {
      n.redis = o.redis
    },
  ],
  [
    'LAPSE_REVOCATION_TIMEOUT',
    (c) => c.revocationTimeoutMs,
    (n, o) => {
      n.revocationTimeoutMs = o.revocationTimeoutMs
    },
  ],
  [
    'LAPSE_STARTUP_WAIT',
    (c) => c.startupWaitMs,
    (n, o) => {
      n.startupWaitMs = o.startupWaitMs
    },
  ],
  // DPoP's nonces and replay cache are built once (docs/binding.md).
  [
    'LAPSE_DPOP_ALGORITHMS',
    (c) => c.dpop.algorithms,
    (n, o) => {
      n.dpop = o.dpop
    },
  ],
  [
    'LAPSE_DPOP_MAX_AGE',
    (c) => c.dpop.maxAgeS,
    (n, o) => {
      n.dpop = o.dpop
    },
  ],
  [
    'LAPSE_PUBLIC_ORIGINS',
    (c) => c.dpop.publicOrigins,
    (n, o) => {
      n.dpop = o.dpop
    },
  ],
  [
    'LAPSE_DPOP_NONCE',
    (c) => c.dpop.nonceSecret !== undefined,
    (n, o) => {
      n.dpop = o.dpop
    },
  ],
  [
    'LAPSE_DPOP_NONCE_SECRET',
    (c) => c.dpop.nonceSecret,
    (n, o) => {
      n.dpop = o.dpop
    },
  ],
  [
    'LAPSE_DPOP_NONCE_SECRET_FILE',
    (c) => c.dpop.nonceSecret,
    (n, o) => {
      n.dpop = o.dpop
    },
  ],
  // The decision listener's socket, and its token, hashed once when the listener is built.
  [
    'LAPSE_DECISION_LISTEN',
    (c) => c.decision?.listen,
    (n, o) => {
      n.decision = o.decision
    },
  ],
  [
    'LAPSE_DECISION_TOKEN',
    (c) => c.decision?.token,
    (n, o) => {
      n.decision = o.decision
    },
  ],
  [
    'LAPSE_DECISION_TOKEN_FILE',
    (c) => c.decision?.token,
    (n, o) => {
      n.decision = o.decision
    },
  ],
  [
    'LAPSE_JWKS_URL',
    (c) => c.keys.jwksUrl,
    (n, o) => {
      n.keys = { ...n.keys, jwksUrl: o.keys.jwksUrl, jwksFile: o.keys.jwksFile }
    },
  ],
  [
    'LAPSE_JWKS_REFRESH',
    (c) => c.keys.refreshS,
    (n, o) => {
      n.keys = { ...n.keys, refreshS: o.keys.refreshS }
    },
  ],
  [
    'LAPSE_JWKS_COOLDOWN',
    (c) => c.keys.cooldownS,
    (n, o) => {
      n.keys = { ...n.keys, cooldownS: o.keys.cooldownS }
    },
  ],
  [
    'LAPSE_JWKS_TIMEOUT',
    (c) => c.keys.timeoutMs,
    (n, o) => {
      n.keys = { ...n.keys, timeoutMs: o.keys.timeoutMs }
    },
  ],
  [
    'LAPSE_CLIENT_HEADER_TIMEOUT',
    (c) => c.clientHeaderTimeoutMs,
    (n, o) => {
      n.clientHeaderTimeoutMs = o.clientHeaderTimeoutMs
    },
  ],
  [
    'LAPSE_CLIENT_IDLE_TIMEOUT',
    (c) => c.clientIdleTimeoutMs,
    (n, o) => {
      n.clientIdleTimeoutMs = o.clientIdleTimeoutMs
    },
  ],
  [
    'LAPSE_MAX_HEADER_BYTES',
    (c) => c.maxHeaderBytes,
    (n, o) => {
      n.maxHeaderBytes = o.maxHeaderBytes
    },
  ],
  [
    'LAPSE_MAX_HEADER_FIELDS',
    (c) => c.maxHeaderFields,
    (n, o) => {
      n.maxHeaderFields = o.maxHeaderFields
    },
  ],
  // The stdout sink is made once per process.
  [
    'LAPSE_LOG_BUFFER_BYTES',
    (c) => c.log.bufferBytes,
    (n, o) => {
      n.log = { ...n.log, bufferBytes: o.log.bufferBytes }
    },
  ],
  [
    'LAPSE_STREAM_RECHECK_INTERVAL',
    (c) => c.streamRecheckIntervalS,
    (n, o) => {
      n.streamRecheckIntervalS = o.streamRecheckIntervalS
    },
  ],
  // The listener's TLS is set up at start; the files' contents rotate live through http/tls.ts's own watch.
  [
    'LAPSE_TLS_CERT_FILE',
    (c) => c.tls?.certFile,
    (n, o) => {
      n.tls = o.tls
    },
  ],
  [
    'LAPSE_TLS_KEY_FILE',
    (c) => c.tls?.keyFile,
    (n, o) => {
      n.tls = o.tls
    },
  ],
  [
    'LAPSE_TLS_CLIENT_CA_FILE',
    (c) => c.tls?.clientCaFile,
    (n, o) => {
      n.tls = o.tls
    },
  ],
  [
    'LAPSE_TLS_CLIENT_AUTH',
    (c) => c.tls?.clientAuth,
    (n, o) => {
      n.tls = o.tls
    },
  ],
  // The forwarder, built once, is told whether the header is trusted.
  [
    'LAPSE_CLIENT_CERT_HEADER',
    (c) => c.clientCertHeader,
    (n, o) => {
      n.clientCertHeader = o.clientCertHeader
    },
  ],
]

/** The environment names of the settings a reload applies, and of those that need a restart. */
export const LIVE_SETTINGS: readonly string[] = LIVE.map(([name]) => name)
export const RESTART_SETTINGS: readonly string[] = RESTART.map(([name]) => name)

const same = (a: unknown, b: unknown) => JSON.stringify(a) === JSON.stringify(b)

/** The files whose change reloads: the configuration file, the key file, the admin token file. */
export function filesOf(env: Env, config: Config): string[] {
  return [env.LAPSE_CONFIG, config.keys.jwksFile, config.admin.tokenFile].filter((f): f is string => !!f)
}

const digestOf = (file: string | undefined): string | undefined => {
  if (!file) return undefined
  try {
    return createHash('sha256').update(readFileSync(file)).digest('hex')
  } catch {
    return undefined // buildPolicy reports the unreadable file
  }
}

export function createReloader(env: Env, state: ReloadState, opts: { quietMs?: number } = {}): Reloader {
  const { shared } = state
  const log = shared.log
  const meter = shared.telemetry.meterProvider?.getMeter('lapse')
  const reloads: Counter | undefined = meter?.createCounter(A.METRIC_CONFIG_RELOADS, { description: 'configuration reloads, by result' })
  let lastSuccessS: number | undefined
  meter
    ?.createObservableGauge(A.METRIC_CONFIG_LAST_RELOAD_SUCCESS, {
      description: 'when the configuration was last reloaded successfully, epoch seconds',
    })
    .addCallback((result) => {
      if (lastSuccessS !== undefined) result.observe(lastSuccessS)
    })
  let jwksDigest = digestOf(shared.current.config.keys.jwksFile)
  let watcher: FileWatcher | undefined
  let watched = ''

  const watchCurrent = () => {
    const files = filesOf(env, shared.current.config)
    if (files.join('\0') === watched) return
    watcher?.close()
    watched = files.join('\0')
    watcher =
      files.length === 0
        ? undefined
        : watchFiles(files, () => void reloader.reload('file'), {
            quietMs: opts.quietMs ?? 200,
            onError: (dir, err) =>
              log.warn(
                { dir, err: (err as NodeJS.ErrnoException).code ?? err.message },
                'cannot watch a configuration directory: reload with SIGHUP',
              ),
          })
  }

  async function reloadOnce(trigger: string): Promise<ReloadResult> {
    const old = shared.current.config
    try {
      const loaded = loadConfig(env)
      const next = { ...loaded, admin: { ...loaded.admin }, keys: { ...loaded.keys } } as Mutable
      const restart: string[] = []
      for (const [name, get, keep] of RESTART) {
        if (same(get(old), get(next))) continue
        restart.push(name)
        keep(next, old)
      }
      const config = Object.freeze(next) as Config
      const changed = LIVE.filter(([, get]) => !same(get(old), get(config))).map(([name]) => name)
      const digest = digestOf(config.keys.jwksFile)
      if (config.keys.jwksFile && digest !== jwksDigest && !changed.includes('LAPSE_JWKS_FILE')) changed.push('LAPSE_JWKS_FILE')
      // A key file is read again (its contents may have changed); a URL's resolver is kept unless
      // the algorithms it filters by changed.
      const reuse = !config.keys.jwksFile && same(old.algorithms, config.algorithms) ? shared.current.keys : undefined
      const policy = await buildPolicy(config, shared, reuse)
      if (!reuse && !config.keys.jwksFile) await untilLoaded(policy.keys, config.keys.timeoutMs)
      // From here to the swap nothing awaits: no request sees half of it.
      const before = shared.current
      for (const warning of loaded.warnings) log.warn({}, warning)
      for (const name of restart)
        log.warn({ setting: name }, `${name} changed: it takes effect only at a restart; the running value is kept`)
      if (config.log.level !== old.log.level) log.level = config.log.level
      const deps = assembleDeps(config, shared, policy)
      shared.current = deps
      state.app.swap(deps)
      // Closing stops its refresh timer only: exchanges that started before still resolve keys with it.
      if (policy.keys !== before.keys) before.keys.close()
      jwksDigest = digest
      lastSuccessS = shared.clock.now() / 1000
      reloads?.add(1, { [A.ATTR_RELOAD_RESULT]: 'ok' })
      // Written whatever LAPSE_LOG_LEVEL now says (as audit lines are): a reload is a change of policy.
      const record = log.levelVal > 30 && log.level !== 'silent' ? log.child({}, { level: 'info' }) : log
      record.info(
        { trigger, changed, restart_needed: restart },
        changed.length ? 'configuration reloaded' : 'configuration reloaded: nothing changed',
      )
      watchCurrent()
      return 'ok'
    } catch (err) {
      reloads?.add(1, { [A.ATTR_RELOAD_RESULT]: 'error' })
      // The line a failed start prints (cli/index.ts), so one alert rule catches both.
      if (err instanceof LapseError) log.error({ trigger, code: err.code }, `${err.code} ${err.message}`)
      else log.error({ trigger, err: (err as Error).message }, 'reload failed')
      log.error({ trigger }, 'configuration not reloaded: the last good one stays in force')
      return 'error'
    }
  }

  let running: Promise<ReloadResult> | undefined
  let again: Promise<ReloadResult> | undefined
  const reloader: Reloader = {
    reload(trigger) {
      if (!running) {
        running = reloadOnce(trigger).finally(() => {
          running = undefined
        })
        return running
      }
      // One reload after the running one covers every change that came in meanwhile.
      again ??= running.then(() => {
        again = undefined
        return reloader.reload(trigger)
      })
      return again
    },
    close() {
      watcher?.close()
    },
  }
  watchCurrent()
  return reloader
}

/** A new JWKS URL resolver fetches in the background: the swap waits for its first key set. */
async function untilLoaded(keys: KeyResolver, timeoutMs: number): Promise<void> {
  const deadline = performance.now() + timeoutMs
  while (!keys.ready() && performance.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 10))
  if (keys.ready()) return
  keys.close()
  throw new LapseError('ERR_KEYS_INVALID', 'LAPSE_JWKS_URL: no key set could be fetched within LAPSE_JWKS_TIMEOUT')
}
