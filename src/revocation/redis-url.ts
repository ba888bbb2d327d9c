// LAPSE_REDIS_URL → where the shared revocation set lives, as ioredis connection options.
//
//   const target = parseRedisUrl('redis-sentinel://:s3cret@10.0.0.1:26379,10.0.0.2:26379/mymaster')
//   // { kind: 'sentinel', options: { sentinels: [...], name: 'mymaster', password: 's3cret' }, safeUrl }
//
// The accepted forms: docs/revocation.md#the-redis-set. Parsed by hand, not with WHATWG URL: a
// comma-separated host list is not a valid URL authority. No error message repeats the password;
// `safeUrl` is the URL for logs.
import type { ConnectionOptions } from 'node:tls'

interface RedisNode {
  readonly host: string
  readonly port: number
}

/** Connection options every form shares; `tls` is set for the TLS forms. */
interface RedisAuth {
  readonly username?: string
  readonly password?: string
  readonly db?: number
  readonly tls?: ConnectionOptions
}

export type RedisTarget =
  | {
      readonly kind: 'standalone'
      readonly safeUrl: string
      readonly options: RedisAuth & ({ host: string; port: number } | { path: string })
    }
  | {
      readonly kind: 'sentinel'
      readonly safeUrl: string
      readonly options: RedisAuth & {
        sentinels: RedisNode[]
        name: string
        sentinelUsername?: string
        sentinelPassword?: string
        enableTLSForSentinelMode?: boolean
        sentinelTLS?: ConnectionOptions
      }
    }
  | { readonly kind: 'cluster'; readonly safeUrl: string; readonly nodes: RedisNode[]; readonly options: RedisAuth }

const DEFAULT_PORTS = { redis: 6379, sentinel: 26379 } as const

// scheme :// [userinfo @] authority [/path] [?query]; the authority may be empty (unix://)
const URL_SHAPE = /^([a-z][a-z0-9+.-]*):\/\/(?:([^@/?]*)@)?([^/?]*)([^?]*)(?:\?(.*))?$/i

export function parseRedisUrl(url: string): RedisTarget {
  const match = URL_SHAPE.exec(url.trim())
  if (!match) fail('is not a URL (expected e.g. redis://host:6379)')
  const [, schemeRaw = '', userinfo, authority = '', path = '', query] = match
  const scheme = schemeRaw.toLowerCase()
  const parts: Parts = { userinfo, authority, path, params: parseQuery(query) }
  const safeUrl = redact(url.trim(), userinfo)
  switch (scheme) {
    case 'redis':
    case 'rediss':
      return { kind: 'standalone', safeUrl, options: parseStandalone(parts, scheme === 'rediss') }
    case 'unix':
      return { kind: 'standalone', safeUrl, options: parseUnix(parts) }
    case 'redis-sentinel':
    case 'rediss-sentinel':
      return { kind: 'sentinel', safeUrl, options: parseSentinel(parts, scheme === 'rediss-sentinel') }
    case 'redis-cluster':
    case 'rediss-cluster':
      return { kind: 'cluster', safeUrl, ...parseCluster(parts, scheme === 'rediss-cluster') }
    default:
      fail(`has unsupported scheme "${scheme}:" (use redis://, rediss://, unix://, redis-sentinel:// or redis-cluster://)`)
  }
}

interface Parts {
  readonly userinfo: string | undefined
  readonly authority: string
  readonly path: string
  readonly params: Map<string, string>
}

function parseStandalone(parts: Parts, tls: boolean) {
  const [node, ...more] = parseNodes(parts.authority, DEFAULT_PORTS.redis)
  if (!node || more.length > 0) fail('needs exactly one host (use redis-cluster:// or redis-sentinel:// for several)')
  rejectUnknownParams(parts.params, [])
  const db = parseDbPath(parts.path)
  return { ...node, ...credentials(parts.userinfo), ...dbOption(db), ...tlsOption(tls) }
}

function parseUnix(parts: Parts) {
  if (parts.authority !== '') fail('unix:// takes a path, not a host: unix:///run/redis.sock')
  if (!parts.path.startsWith('/') || parts.path.length < 2) fail('unix:// needs an absolute socket path')
  rejectUnknownParams(parts.params, ['db'])
  const db = parts.params.get('db')
  return { path: decode(parts.path), ...credentials(parts.userinfo), ...dbOption(db === undefined ? undefined : parseDb(db)) }
}

function parseSentinel(parts: Parts, tls: boolean) {
  const sentinels = parseNodes(parts.authority, DEFAULT_PORTS.sentinel)
  if (sentinels.length === 0) fail('redis-sentinel:// needs at least one sentinel host:port')
  const [, name, dbText, ...extra] = parts.path.split('/')
  if (!name || extra.length > 0) fail('redis-sentinel:// needs the master name as its path: redis-sentinel://host:26379/mymaster')
  rejectUnknownParams(parts.params, ['sentinel_password', 'sentinel_username'])
  const sentinelPassword = parts.params.get('sentinel_password')
  const sentinelUsername = parts.params.get('sentinel_username')
  return {
    sentinels,
    name: decode(name),
    ...credentials(parts.userinfo),
    ...dbOption(dbText === undefined || dbText === '' ? undefined : parseDb(dbText)),
    ...(sentinelPassword === undefined ? {} : { sentinelPassword }),
    ...(sentinelUsername === undefined ? {} : { sentinelUsername }),
    ...(tls ? { tls: {}, sentinelTLS: {}, enableTLSForSentinelMode: true } : {}),
  }
}

function parseCluster(parts: Parts, tls: boolean) {
  const nodes = parseNodes(parts.authority, DEFAULT_PORTS.redis)
  if (nodes.length === 0) fail('redis-cluster:// needs at least one seed host:port')
  // Cluster has one keyspace: a database number there is always a mistake.
  if (parts.path !== '' && parts.path !== '/') fail('redis-cluster:// takes no path (Cluster has no databases)')
  rejectUnknownParams(parts.params, [])
  return { nodes, options: { ...credentials(parts.userinfo), ...tlsOption(tls) } }
}

function parseNodes(authority: string, defaultPort: number): RedisNode[] {
  if (authority === '') return []
  return authority.split(',').map((hostPort) => parseNode(hostPort, defaultPort))
}

function parseNode(hostPort: string, defaultPort: number): RedisNode {
  // [v6]:port, or host:port, or host
  const shape = /^(?:\[([0-9a-f:.]+)\]|([^:[\]]+))(?::(\d{1,5}))?$/i.exec(hostPort)
  const host = shape?.[1] ?? shape?.[2]
  if (!shape || !host) fail(`has a bad host "${hostPort}"`)
  const port = shape[3] === undefined ? defaultPort : Number(shape[3])
  if (port < 1 || port > 65535) fail(`has a bad port in "${hostPort}"`)
  return { host: decode(host), port }
}

function credentials(userinfo: string | undefined): { username?: string; password?: string } {
  if (userinfo === undefined || userinfo === '') return {}
  const colon = userinfo.indexOf(':')
  const username = decode(colon < 0 ? userinfo : userinfo.slice(0, colon))
  const password = colon < 0 ? undefined : decode(userinfo.slice(colon + 1))
  // `redis://user@host` without a password is how some tools spell a password-only URL (`:pw@`
  // is the standard one); we follow the standard, so a lone word is a user name.
  return { ...(username === '' ? {} : { username }), ...(password === undefined || password === '' ? {} : { password }) }
}

function parseDbPath(path: string): number | undefined {
  if (path === '' || path === '/') return undefined
  return parseDb(path.slice(1))
}

function parseDb(text: string): number {
  if (!/^\d{1,2}$/.test(text)) fail(`has a bad database number "${text}"`)
  return Number(text)
}

const dbOption = (db: number | undefined) => (db === undefined ? {} : { db })
const tlsOption = (tls: boolean) => (tls ? { tls: {} } : {})

function parseQuery(query: string | undefined): Map<string, string> {
  const params = new Map<string, string>()
  if (query === undefined || query === '') return params
  for (const pair of query.split('&')) {
    const eq = pair.indexOf('=')
    const name = decode(eq < 0 ? pair : pair.slice(0, eq))
    params.set(name, decode(eq < 0 ? '' : pair.slice(eq + 1)))
  }
  return params
}

// An ignored parameter would be a silent misconfiguration (a typo in `sentinel_password`
// would connect without it), so anything we do not read stops the start.
function rejectUnknownParams(params: Map<string, string>, known: readonly string[]) {
  for (const name of params.keys()) {
    if (!known.includes(name)) fail(`has an unknown parameter "${name}"${known.length ? ` (known: ${known.join(', ')})` : ''}`)
  }
}

function decode(text: string): string {
  try {
    return decodeURIComponent(text)
  } catch {
    fail('has a bad percent-encoding')
  }
}

/** The URL with its password and query values (which may hold sentinel_password) masked. */
function redact(url: string, userinfo: string | undefined): string {
  let safe = url
  if (userinfo?.includes(':')) safe = safe.replace(`${userinfo}@`, `${userinfo.slice(0, userinfo.indexOf(':'))}:***@`)
  return safe.replace(/([?&][^=&]*password=)[^&]*/gi, '$1***')
}

function fail(why: string): never {
  throw new TypeError(`redis url ${why}`)
}
