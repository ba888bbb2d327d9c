// Reads settings from the environment and the optional YAML file, validates them once and
// freezes the result. A bad value throws a LapseError whose message is one line naming the setting.
// Config is the schema's output grouped for its readers: its type is read off the schema.
//
//   const config = loadConfig(process.env)          // throws LapseError
import { readFileSync } from 'node:fs'
import { parse as parseYaml } from 'yaml'
import { z } from 'zod'
import { LapseError } from '../core/errors.js'
import { readTls, TlsFileError, type TlsFiles } from './tls.js'
import { envName, routeSchema, SETTING_NAMES, settingsSchema, type RouteSetting, type Settings } from './schema.js'

export type { HostPort } from './schema.js'

const fail = (setting: string, why: string): never => {
  throw new LapseError('ERR_CONFIG_INVALID', `${settingLabel(setting)}: ${why}`)
}
const settingLabel = (key: string) => envName(key)

/** Env wins over the file; unknown LAPSE_* variables are warnings so a typo is visible. */
function collectRaw(env: Readonly<Record<string, string | undefined>>, warnings: string[]): Record<string, unknown> {
  const raw: Record<string, unknown> = {}
  const file = env.LAPSE_CONFIG
  if (file) Object.assign(raw, readConfigFile(file))
  const known = new Set<string>(SETTING_NAMES)
  for (const [name, value] of Object.entries(env)) {
    if (!name.startsWith('LAPSE_') || value === undefined || name === 'LAPSE_CONFIG') continue
    const key = name.slice('LAPSE_'.length).toLowerCase()
    if (!known.has(key)) {
      if (!NON_SETTING_VARIABLES.has(name)) warnings.push(`${name} is not a Lapse setting and was ignored`)
      continue
    }
    if (value.trim() === '') continue
    raw[key] = value
  }
  return raw
}

// Variables read by the CLI helpers rather than the proxy.
const NON_SETTING_VARIABLES = new Set(['LAPSE_DEV_DIR', 'LAPSE_ADMIN_URL'])

function readConfigFile(path: string): Record<string, unknown> {
  let text: string
  try {
    text = readFileSync(path, 'utf8')
  } catch (err) {
    throw new LapseError('ERR_CONFIG_FILE', `LAPSE_CONFIG: cannot read ${path} (${(err as NodeJS.ErrnoException).code ?? 'error'})`)
  }
  let doc: unknown
  try {
    doc = parseYaml(text, { uniqueKeys: true, maxAliasCount: 100 })
  } catch (err) {
    throw new LapseError('ERR_CONFIG_FILE', `LAPSE_CONFIG: ${path} is not valid YAML: ${(err as Error).message.split('\n')[0]}`)
  }
  if (doc === null || doc === undefined) return {}
  if (typeof doc !== 'object' || Array.isArray(doc))
    throw new LapseError('ERR_CONFIG_FILE', `LAPSE_CONFIG: ${path} must hold a mapping of settings`)
  return doc as Record<string, unknown>
}

function describeIssue(issue: z.core.$ZodIssue, raw: Readonly<Record<string, unknown>>): string {
  const key = String(issue.path[0] ?? '?')
  // Rules from the file are checked here, those from LAPSE_ROUTES in parseRoutes: one error code.
  if (key === 'routes' && issue.path.length > 1) return ruleIssue(issue.message, issue.path.slice(1))
  if (issue.code === 'unrecognized_keys') return fail(issue.keys[0] ?? '?', 'not a Lapse setting')
  const where = issue.path.length > 1 ? ` (at ${issue.path.slice(1).join('.')})` : ''
  // Zod 4 leaves `issue.input` out of issues, so "missing" is read from the raw settings: a value
  // that is set but of the wrong type ("abc" for a number) is not "required".
  if (issue.code === 'invalid_type' && raw[key] === undefined) return fail(key, `required${where}`)
  return fail(key, `${issue.message}${where}`)
}

function parseRoutes(value: Settings['routes']): RouteSetting[] {
  if (value === undefined) return []
  let list: unknown = value
  if (typeof value === 'string') {
    try {
      list = parseYaml(value, { uniqueKeys: true })
    } catch (err) {
      return fail('routes', `not valid YAML or JSON: ${(err as Error).message.split('\n')[0]}`)
    }
  }
  const parsed = z.array(routeSchema).safeParse(list)
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!
    return ruleIssue(issue.message, issue.path)
  }
  return parsed.data
}

/** A malformed rule, located as the operator wrote it: `(at routes[1].methods[0])`. */
function ruleIssue(message: string, path: readonly PropertyKey[]): never {
  const at = path.length ? ` (at routes${path.map((k) => (typeof k === 'number' ? `[${k}]` : `.${String(k)}`)).join('')})` : ''
  throw new LapseError('ERR_RULES_INVALID', `LAPSE_ROUTES: ${message}${at}`)
}

/** A use limit counts uses per token, and only `jti` tells one token from another: it must be there. */
function requireJtiForUses(routes: RouteSetting[], requiredClaims: readonly string[]): RouteSetting[] {
  const i = routes.findIndex((r) => r.max_uses !== undefined)
  if (i !== -1 && !requiredClaims.includes('jti'))
    ruleIssue('max_uses counts uses per token, so it needs jti in LAPSE_REQUIRED_CLAIMS', [i, 'max_uses'])
  return routes
}

function readAdminToken(s: Settings): string | undefined {
  return readSecret(s.admin_token, s.admin_token_file, 'admin_token')
}

/** A secret given inline or in a file (`<key>_file`), never both; at least 16 characters. */
function readSecret(inline: string | undefined, file: string | undefined, key: string): string | undefined {
  if (inline && file) return fail(key, `set ${envName(key)} or ${envName(`${key}_file`)}, not both`)
  if (!file) return inline
  let token: string
  try {
    token = readFileSync(file, 'utf8').trim()
  } catch (err) {
    return fail(`${key}_file`, `cannot read ${file} (${(err as NodeJS.ErrnoException).code ?? 'error'})`)
  }
  if (token.length < 16) return fail(`${key}_file`, 'the token must be at least 16 characters')
  return token
}

function readNonceSecret(s: Settings): string | undefined {
  if (s.dpop_nonce_secret && s.dpop_nonce_secret_file)
    return fail('dpop_nonce_secret', 'set LAPSE_DPOP_NONCE_SECRET or LAPSE_DPOP_NONCE_SECRET_FILE, not both')
  let secret = s.dpop_nonce_secret
  if (s.dpop_nonce_secret_file) {
    try {
      secret = readFileSync(s.dpop_nonce_secret_file, 'utf8').trim()
    } catch (err) {
      return fail('dpop_nonce_secret_file', `cannot read ${s.dpop_nonce_secret_file} (${(err as NodeJS.ErrnoException).code ?? 'error'})`)
    }
    if (secret.length < 32) return fail('dpop_nonce_secret_file', 'the secret must be at least 32 characters')
  }
  // Every sidecar must make the same nonces: a secret of its own would refuse the others'.
  if (s.dpop_nonce && secret === undefined)
    return fail('dpop_nonce', 'LAPSE_DPOP_NONCE=true needs LAPSE_DPOP_NONCE_SECRET or LAPSE_DPOP_NONCE_SECRET_FILE')
  return s.dpop_nonce ? secret : undefined
}

/** LAPSE_TLS_*: the files, checked readable and matching now; undefined serves plain HTTP. */
function tlsOf(s: Settings) {
  if (!s.tls_cert_file || !s.tls_key_file) {
    if (s.tls_cert_file || s.tls_key_file)
      return fail(s.tls_cert_file ? 'tls_key_file' : 'tls_cert_file', 'LAPSE_TLS_CERT_FILE and LAPSE_TLS_KEY_FILE are set together')
    if (s.tls_client_ca_file || s.tls_client_auth)
      return fail(s.tls_client_ca_file ? 'tls_client_ca_file' : 'tls_client_auth', 'needs LAPSE_TLS_CERT_FILE and LAPSE_TLS_KEY_FILE')
    return undefined
  }
  if (s.tls_client_auth && !s.tls_client_ca_file) return fail('tls_client_auth', 'needs LAPSE_TLS_CLIENT_CA_FILE')
  const files: TlsFiles = { certFile: s.tls_cert_file, keyFile: s.tls_key_file, clientCaFile: s.tls_client_ca_file }
  try {
    readTls(files)
  } catch (err) {
    if (err instanceof TlsFileError) return fail(err.setting, err.message)
    throw err
  }
  return { ...files, clientAuth: s.tls_client_auth ?? 'request' }
}

/** The decision listener (docs/ingress.md); undefined when LAPSE_DECISION_LISTEN is unset. */
function readDecision(s: Settings) {
  const token = readSecret(s.decision_token, s.decision_token_file, 'decision_token')
  if (!s.decision_listen) return token === undefined ? undefined : fail('decision_token', 'set only with LAPSE_DECISION_LISTEN')
  return { listen: s.decision_listen, token }
}

/** The settings grouped as Lapse reads them; checks that span settings throw here. */
const configSchema = settingsSchema.transform((s) => {
  if (!s.jwks_url && !s.jwks_file) fail('jwks_url', 'one of LAPSE_JWKS_URL or LAPSE_JWKS_FILE is required')
  if (s.jwks_url && s.jwks_file) fail('jwks_url', 'set LAPSE_JWKS_URL or LAPSE_JWKS_FILE, not both')
  // Without an upstream Lapse is a decision service only; without either it would serve nothing.
  if (!s.upstream && !s.decision_listen) fail('upstream', 'required unless LAPSE_DECISION_LISTEN is set')
  return {
    listen: s.listen,
    upstream: s.upstream,
    issuers: s.issuer,
    audiences: s.audience,
    keys: { jwksUrl: s.jwks_url, jwksFile: s.jwks_file, refreshS: s.jwks_refresh, cooldownS: s.jwks_cooldown, timeoutMs: s.jwks_timeout },
    algorithms: s.algorithms,
    clockSkewS: s.clock_skew,
    maxLifetimeS: s.max_token_lifetime,
    requiredClaims: s.required_claims,
    tokenTypes: s.token_types,
    revocableClaims: s.revocable_claims,
    redis: s.redis_url ? { url: s.redis_url, prefix: s.redis_prefix, cache: s.revocation_cache } : undefined,
    revocationTimeoutMs: s.revocation_timeout,
    startupWaitMs: s.startup_wait,
    routes: requireJtiForUses(parseRoutes(s.routes), s.required_claims),
    admin: { listen: s.admin_listen, token: readAdminToken(s), tokenFile: s.admin_token_file, tokenName: s.admin_token_name },
    decision: readDecision(s),
    upstreamTimeoutMs: s.upstream_timeout,
    upstreamMaxConnections: s.upstream_max_connections,
    clientHeaderTimeoutMs: s.client_header_timeout,
    clientIdleTimeoutMs: s.client_idle_timeout,
    maxHeaderBytes: s.max_header_bytes,
    maxTokenBytes: s.max_token_bytes,
    maxHeaderFields: s.max_header_fields,
    /** LAPSE_HOSTS: lower-case, without trailing dot; undefined serves any valid Host. */
    hosts: s.hosts,
    tokenCacheSize: s.token_cache_size,
    allowQueryToken: s.allow_query_token,
    forwardAuthorization: s.forward_authorization,
    streamRecheckIntervalS: s.stream_recheck_interval,
    log: { level: s.log_level, allows: s.log_allows, allowsSampleRate: s.log_allows_sample_rate, bufferBytes: s.log_buffer_bytes },
    realm: s.realm,
    dpop: {
      algorithms: s.dpop_algorithms,
      maxAgeS: s.dpop_max_age,
      /** URL origins; undefined: the request's Host with http or https. */
      publicOrigins: s.public_origins,
      /** The nonce secret when LAPSE_DPOP_NONCE is on; undefined otherwise. */
      nonceSecret: readNonceSecret(s),
    },
    senderConstrained: s.sender_constrained,
    tls: tlsOf(s),
    /** LAPSE_CLIENT_CERT_HEADER: the mesh's header Lapse reads client certificates from; undefined removes it. */
    clientCertHeader: s.client_cert_header,
    drainDelayS: s.drain_delay,
    shutdownTimeoutS: s.shutdown_timeout,
  }
})

const LOOPBACK = /^(127\.\d+\.\d+\.\d+|::1|localhost)$/

/** Deeply read-only, as loadConfig freezes it; a URL stays a URL (frozen too). */
type Frozen<T> = T extends URL
  ? T
  : T extends ReadonlyArray<infer E>
    ? ReadonlyArray<Frozen<E>>
    : T extends object
      ? { readonly [K in keyof T]: Frozen<T[K]> }
      : T

export type Config = Frozen<
  z.output<typeof configSchema> & {
    /** Settings that were not understood: reported as warnings, not errors. */
    warnings: string[]
  }
>

export function loadConfig(env: Readonly<Record<string, string | undefined>>): Config {
  const warnings: string[] = []
  const raw = collectRaw(env, warnings)
  const parsed = configSchema.safeParse(raw)
  if (!parsed.success) return describeIssue(parsed.error.issues[0]!, raw) as never
  const decision = parsed.data.decision
  // The decision listener believes its callers about the original request (docs/ingress.md#trust).
  if (decision && decision.token === undefined && !LOOPBACK.test(decision.listen.host)) {
    warnings.push(
      `LAPSE_DECISION_LISTEN binds ${decision.listen.host} without LAPSE_DECISION_TOKEN: whoever reaches it can ask for decisions about any request; admit only the front proxy`,
    )
  }
  return deepFreeze({ ...parsed.data, warnings })
}

function deepFreeze<T>(value: T): T {
  if (value && typeof value === 'object' && !(value instanceof URL) && !Object.isFrozen(value)) {
    for (const inner of Object.values(value)) deepFreeze(inner)
    Object.freeze(value)
  }
  return value
}
