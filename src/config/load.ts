// Reads settings from the environment and the optional YAML file, validates them once and
// freezes the result. A bad value throws a ConfigError whose message is one line naming the setting.
//
//   const config = loadConfig(process.env)          // throws ConfigError
import { readFileSync } from 'node:fs'
import { parse as parseYaml } from 'yaml'
import { z } from 'zod'
import { ConfigError } from '../core/errors.js'
import { envName, routeSchema, SETTING_NAMES, settingsSchema, type RouteSetting, type Settings } from './schema.js'

export interface HostPort { readonly host: string; readonly port: number }

export interface Config {
  readonly listen: HostPort
  readonly upstream: URL
  readonly issuers: readonly string[]
  readonly audiences: readonly string[]
  readonly keys: {
    readonly jwksUrl: string | undefined
    readonly jwksFile: string | undefined
    readonly refreshS: number
    readonly cooldownS: number
    readonly timeoutMs: number
  }
  readonly algorithms: readonly string[]
  readonly clockSkewS: number
  readonly maxLifetimeS: number
  readonly requiredClaims: readonly string[]
  readonly tokenTypes: readonly string[] | undefined
  readonly revocableClaims: readonly string[]
  readonly redis: { readonly url: string; readonly prefix: string; readonly cache: boolean } | undefined
  readonly revocationTimeoutMs: number
  /** How long start-up waits for the keys and the revocation set before listening anyway. */
  readonly startupWaitMs: number
  readonly routes: readonly RouteSetting[]
  readonly admin: { readonly listen: HostPort; readonly token: string | undefined; readonly tokenName: string }
  readonly upstreamTimeoutMs: number
  readonly upstreamMaxConnections: number
  readonly clientHeaderTimeoutMs: number
  readonly clientIdleTimeoutMs: number
  readonly maxHeaderBytes: number
  readonly maxTokenBytes: number
  readonly maxHeaderFields: number
  /** LAPSE_HOSTS: lower-case, without trailing dot; undefined serves any valid Host. */
  readonly hosts: readonly string[] | undefined
  readonly tokenCacheSize: number
  readonly allowQueryToken: boolean
  readonly forwardAuthorization: boolean
  readonly streamRecheckIntervalS: number
  readonly log: { readonly level: Settings['log_level']; readonly allows: Settings['log_allows']; readonly allowsSampleRate: number }
  readonly realm: string
  /** Settings that were not understood: reported as warnings, not errors. */
  readonly warnings: readonly string[]
}

const fail = (setting: string, why: string): never => {
  throw new ConfigError('ERR_CONFIG_INVALID', `${settingLabel(setting)}: ${why}`)
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
    throw new ConfigError('ERR_CONFIG_FILE', `LAPSE_CONFIG: cannot read ${path} (${(err as NodeJS.ErrnoException).code ?? 'error'})`)
  }
  let doc: unknown
  try {
    doc = parseYaml(text, { uniqueKeys: true, maxAliasCount: 100 })
  } catch (err) {
    throw new ConfigError('ERR_CONFIG_FILE', `LAPSE_CONFIG: ${path} is not valid YAML: ${(err as Error).message.split('\n')[0]}`)
  }
  if (doc === null || doc === undefined) return {}
  if (typeof doc !== 'object' || Array.isArray(doc)) throw new ConfigError('ERR_CONFIG_FILE', `LAPSE_CONFIG: ${path} must hold a mapping of settings`)
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
  throw new ConfigError('ERR_RULES_INVALID', `LAPSE_ROUTES: ${message}${at}`)
}

function hostPort(value: string): HostPort {
  const i = value.lastIndexOf(':')
  return { host: value.slice(0, i).replace(/^\[(.*)\]$/, '$1'), port: Number(value.slice(i + 1)) }
}

function readAdminToken(s: Settings): string | undefined {
  if (s.admin_token && s.admin_token_file) return fail('admin_token', 'set LAPSE_ADMIN_TOKEN or LAPSE_ADMIN_TOKEN_FILE, not both')
  if (!s.admin_token_file) return s.admin_token
  let token: string
  try {
    token = readFileSync(s.admin_token_file, 'utf8').trim()
  } catch (err) {
    return fail('admin_token_file', `cannot read ${s.admin_token_file} (${(err as NodeJS.ErrnoException).code ?? 'error'})`)
  }
  if (token.length < 16) return fail('admin_token_file', 'the token must be at least 16 characters')
  return token
}

export function loadConfig(env: Readonly<Record<string, string | undefined>>): Config {
  const warnings: string[] = []
  const raw = collectRaw(env, warnings)
  const parsed = settingsSchema.safeParse(raw)
  if (!parsed.success) return describeIssue(parsed.error.issues[0]!, raw) as never
  const s = parsed.data
  if (!s.jwks_url && !s.jwks_file) fail('jwks_url', 'one of LAPSE_JWKS_URL or LAPSE_JWKS_FILE is required')
  if (s.jwks_url && s.jwks_file) fail('jwks_url', 'set LAPSE_JWKS_URL or LAPSE_JWKS_FILE, not both')
  const config: Config = {
    listen: hostPort(s.listen),
    upstream: new URL(s.upstream),
    issuers: s.issuer,
    audiences: s.audience,
    keys: { jwksUrl: s.jwks_url, jwksFile: s.jwks_file, refreshS: s.jwks_refresh, cooldownS: s.jwks_cooldown, timeoutMs: s.jwks_timeout },
    algorithms: [...new Set(s.algorithms)],
    clockSkewS: s.clock_skew,
    maxLifetimeS: s.max_token_lifetime,
    // A token without exp would never lapse, so exp is required whatever the setting says.
    requiredClaims: [...new Set(['exp', ...s.required_claims])],
    tokenTypes: s.token_types,
    revocableClaims: [...new Set(s.revocable_claims)],
    redis: s.redis_url ? { url: s.redis_url, prefix: s.redis_prefix, cache: s.revocation_cache } : undefined,
    revocationTimeoutMs: s.revocation_timeout,
    startupWaitMs: s.startup_wait,
    routes: parseRoutes(s.routes),
    admin: { listen: hostPort(s.admin_listen), token: readAdminToken(s), tokenName: s.admin_token_name },
    upstreamTimeoutMs: s.upstream_timeout,
    upstreamMaxConnections: s.upstream_max_connections,
    clientHeaderTimeoutMs: s.client_header_timeout,
    clientIdleTimeoutMs: s.client_idle_timeout,
    maxHeaderBytes: s.max_header_bytes,
    maxTokenBytes: s.max_token_bytes,
    maxHeaderFields: s.max_header_fields,
    hosts: s.hosts ? [...new Set(s.hosts.map((h) => h.toLowerCase().replace(/\.$/, '')))] : undefined,
    tokenCacheSize: s.token_cache_size,
    allowQueryToken: s.allow_query_token,
    forwardAuthorization: s.forward_authorization,
    streamRecheckIntervalS: s.stream_recheck_interval,
    log: { level: s.log_level, allows: s.log_allows, allowsSampleRate: s.log_allows_sample_rate },
    realm: s.realm,
    warnings,
  }
  return deepFreeze(config)
}

function deepFreeze<T>(value: T): T {
  if (value && typeof value === 'object' && !(value instanceof URL) && !Object.isFrozen(value)) {
    for (const inner of Object.values(value)) deepFreeze(inner)
    Object.freeze(value)
  }
  return value
}
