// One schema for every setting: its type, default and meaning, and the value Lapse uses (a URL,
// a host and port…). Keys are the YAML names; the environment variable is `LAPSE_` + the key in
// upper case. config/load.ts groups the parsed settings into Config, whose type is read off this.
//
//   const parsed = settingsSchema.safeParse(raw)   // raw: { upstream: 'http://…', … }
import { isIPv6 } from 'node:net'
import { z } from 'zod'
import { peerPatternProblem } from '../bind/peers.js'
import { parseRedisUrl } from '../revocation/redis-url.js'

const ASYMMETRIC = ['RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512', 'ES256', 'ES384', 'ES512', 'EdDSA', 'Ed25519'] as const
// HMAC is only accepted when named explicitly: a shared secret lets every verifier mint tokens.
const SYMMETRIC = ['HS256', 'HS384', 'HS512'] as const
export const KNOWN_ALGORITHMS: readonly string[] = [...ASYMMETRIC, ...SYMMETRIC]

/** Comma-separated in the environment, a list in YAML. */
const csv = z.preprocess(
  (v) => {
    if (typeof v === 'string')
      return v
        .split(',')
        .map((s) => s.trim())
        .filter((s) => s !== '')
    return v
  },
  z.array(z.string().min(1)),
)

const bool = z.preprocess((v) => {
  if (typeof v !== 'string') return v
  const s = v.trim().toLowerCase()
  if (['true', '1', 'yes', 'on'].includes(s)) return true
  if (['false', '0', 'no', 'off'].includes(s)) return false
  return v
}, z.boolean())

const int = (min: number, max: number) => z.coerce.number().int().min(min).max(max)

export interface HostPort {
  readonly host: string
  readonly port: number
}

const hostPortText = z
  .string()
  .regex(/^(\[[0-9a-fA-F:.]+\]|[^\s:[\]]+):\d{1,5}$/, 'expected host:port')
  .refine((s) => Number(s.slice(s.lastIndexOf(':') + 1)) <= 65535, 'port out of range')
const toHostPort = (s: string): HostPort => {
  const i = s.lastIndexOf(':')
  return { host: s.slice(0, i).replace(/^\[(.*)\]$/, '$1'), port: Number(s.slice(i + 1)) }
}
const hostPort = (fallback: string) => hostPortText.default(fallback).transform(toHostPort)
// A port alone binds loopback: the decision listener trusts its callers' headers about the
// original request, so only the front proxy may reach it.
const loopbackPort = z
  .preprocess(
    (v) => (typeof v === 'number' || (typeof v === 'string' && /^\d{1,5}$/.test(v.trim())) ? `127.0.0.1:${String(v).trim()}` : v),
    hostPortText,
  )
  .transform(toHostPort)

const unique = <T>(list: readonly T[]): T[] => [...new Set(list)]

// A LAPSE_HOSTS entry: a host name (dot-separated labels of letters, digits and `-`, as hostOf in
// extract/request-head.ts accepts them), `*.` before one for the names below it, or a bracketed
// IPv6 address; never a port.
const hostEntry = z.string().refine((s) => {
  if (s.startsWith('[') && s.endsWith(']')) return isIPv6(s.slice(1, -1))
  return /^(\*\.)?[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*\.?$/.test(s)
}, 'expected a host name without port, *.name, or [IPv6]')

const httpUrl = z.string().refine((s) => {
  try {
    const u = new URL(s)
    return (u.protocol === 'http:' || u.protocol === 'https:') && u.username === '' && u.password === ''
  } catch {
    return false
  }
}, 'expected an http:// or https:// URL without credentials')

// A route rule's claim requirement: a claim name as revocable_claims spells them, and literal
// values; a string "{name}" refers to a path capture (authorize/routes.ts).
const claimName = z.string().regex(/^[A-Za-z0-9_.:-]+$/, 'a claim name is letters, digits, _ . : -')
const claimLiteral = z.union([z.string(), z.number(), z.boolean()])

export const routeSchema = z.strictObject({
  path: z.string().startsWith('/', 'a route path starts with /'),
  methods: z
    .array(z.string().regex(/^[A-Za-z]+$/, 'a method is letters only'))
    .min(1)
    .optional(),
  scopes: z.array(z.string().regex(/^[\x21\x23-\x5B\x5D-\x7E]+$/, 'a scope is printable ASCII without space, " or \\')).default([]),
  public: z.boolean().default(false),
  on_revocation_unavailable: z.enum(['closed', 'open']).default('closed'),
  cut_streams_at_expiry: z.boolean().default(true),
  sender_constrained: z.boolean().optional(),
  claims: z.record(claimName, z.union([claimLiteral, z.array(claimLiteral).min(1)])).optional(),
  max_token_age: int(0, 31_536_000).optional(),
  acr_values: z
    .array(z.string().regex(/^[\x21\x23-\x5B\x5D-\x7E]+$/, 'an acr value is printable ASCII without space, " or \\'))
    .min(1)
    .optional(),
  max_uses: int(1, 1_000_000_000).optional(),
  peers: z
    .array(
      z.string().superRefine((p, ctx) => {
        const problem = peerPatternProblem(p)
        if (problem) ctx.addIssue({ code: 'custom', message: problem })
      }),
    )
    .min(1)
    .optional(),
})
export type RouteSetting = z.infer<typeof routeSchema>

const routes = z.preprocess((v) => (typeof v === 'string' ? v : v), z.union([z.string(), z.array(routeSchema)]))

export const settingsSchema = z.strictObject({
  listen: hostPort('0.0.0.0:8080').describe('where clients connect'),
  upstream: httpUrl
    .transform((s) => new URL(s))
    .optional()
    .describe('the protected service; required unless decision_listen is set (then unset runs Lapse as a decision service only)'),
  issuer: csv.pipe(z.array(z.string()).min(1)).describe('accepted iss values'),
  audience: csv.pipe(z.array(z.string()).min(1)).describe("this resource's audience"),
  jwks_url: httpUrl.optional().describe('JWKS endpoint of the issuer'),
  jwks_file: z.string().min(1).optional().describe('a JWKS file'),
  jwks_refresh: int(10, 86_400).default(300).describe('seconds between background JWKS refreshes'),
  jwks_cooldown: int(1, 3600).default(30).describe('seconds between refetches caused by an unknown kid'),
  jwks_timeout: int(100, 60_000).default(5000).describe('milliseconds a JWKS fetch may take'),
  algorithms: csv
    .pipe(z.array(z.enum(KNOWN_ALGORITHMS as [string, ...string[]])).min(1))
    .default(['RS256', 'PS256', 'ES256', 'EdDSA'])
    .transform(unique)
    .describe('accepted JWS algorithms; HMAC only when named'),
  clock_skew: int(0, 300).default(30).describe('tolerance on exp/nbf/iat, seconds'),
  max_token_lifetime: int(0, 31_536_000).default(3600).describe('refuse tokens whose exp - iat is longer, seconds; 0 turns the policy off'),
  // A token without exp would never lapse, so exp is required whatever the setting says.
  required_claims: csv
    .default(['iss', 'aud', 'exp', 'iat', 'jti', 'sub'])
    .transform((c) => unique(['exp', ...c]))
    .describe('claims a token must carry; exp always'),
  token_types: csv.optional().describe('accepted typ header values; unset accepts any'),
  revocable_claims: csv
    .pipe(z.array(z.string().regex(/^[A-Za-z0-9_.:-]+$/, 'a claim name is letters, digits, _ . : -')).min(1))
    .default(['jti', 'sub', 'client_id', 'sid'])
    .transform(unique)
    .describe('claims the revocation set is keyed on'),
  redis_url: z
    .string()
    .superRefine((url, ctx) => {
      try {
        parseRedisUrl(url)
      } catch (err) {
        // parseRedisUrl's messages never repeat the password.
        ctx.addIssue({ code: 'custom', message: (err as Error).message })
      }
    })
    .optional()
    .describe('the shared revocation set; unset keeps revocations in memory'),
  redis_prefix: z
    .string()
    .regex(/^[A-Za-z0-9_.-]+$/)
    .default('lapse')
    .describe('key prefix in Redis, also the Cluster hash tag'),
  revocation_timeout: int(1, 10_000).default(50).describe('milliseconds a revocation check may take before 503'),
  startup_wait: int(0, 600_000)
    .default(5000)
    .describe('milliseconds the proxy port waits at start for the keys and a first answer of the revocation set'),
  revocation_cache: bool.default(true).describe('cache revocation answers locally, invalidated by Redis events'),
  routes: routes.optional().describe('route rules; none means deny all'),
  admin_listen: hostPort('127.0.0.1:9901').describe('admin API, health and metrics'),
  admin_token: z.string().min(16, 'at least 16 characters').optional().describe('bearer secret of the revocation API'),
  admin_token_file: z.string().min(1).optional().describe('a file holding admin_token'),
  decision_listen: loopbackPort
    .optional()
    .describe(
      'the decision API for nginx auth_request, Envoy/Istio ext_authz, Traefik and Caddy forward auth, as host:port (a port alone binds 127.0.0.1); unset: off',
    ),
  decision_token: z
    .string()
    .min(16, 'at least 16 characters')
    .optional()
    .describe('shared secret the front proxy sends in X-Lapse-Decision-Token; unset: not checked'),
  decision_token_file: z.string().min(1).optional().describe('a file holding decision_token'),
  admin_token_name: z
    .string()
    .regex(/^[A-Za-z0-9_.@-]+$/)
    .default('admin')
    .describe('who the admin token is, in audit lines'),
  upstream_timeout: int(1, 3_600_000).default(30_000).describe('milliseconds until the upstream sends response headers, then 504'),
  upstream_max_connections: int(1, 65_536)
    .default(256)
    .describe('HTTP connections to the upstream at most; further requests wait for one, within upstream_timeout'),
  client_header_timeout: int(1000, 600_000).default(10_000).describe('milliseconds a client may take to send its headers'),
  client_idle_timeout: int(0, 86_400_000).default(120_000).describe('milliseconds a client connection may sit idle'),
  max_header_bytes: int(1024, 1_048_576).default(16_384).describe('largest request head accepted, bytes; more is refused with 431'),
  max_token_bytes: int(256, 65_536).default(8192).describe('longest token accepted, bytes'),
  // Envoy's default max_request_headers_count. Node keeps 1000 fields by default; past what Lapse
  // reads, framing and token fields would go unseen, so a longer head is refused with 431.
  max_header_fields: int(10, 1000)
    .default(100)
    .describe('header fields a request head may have (each line counts, repeats included); more is refused with 431'),
  hosts: csv
    .pipe(z.array(hostEntry).min(1))
    .transform((hosts) => unique(hosts.map((h) => h.toLowerCase().replace(/\.$/, ''))))
    .optional()
    .describe(
      'Host names this sidecar serves, without port; *.example.com matches names below example.com; unset accepts any valid Host; another gets 421',
    ),
  token_cache_size: int(0, 1_000_000).default(10_000).describe('verified tokens kept; 0 verifies every request'),
  allow_query_token: bool.default(false).describe('accept access_token in the query string (RFC 6750 §2.3)'),
  forward_authorization: bool.default(true).describe('pass the Authorization header on to the upstream'),
  stream_recheck_interval: int(1, 3600).default(30).describe('seconds between re-checks of open long-lived connections'),
  log_level: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info').describe('level of operational lines'),
  log_allows: z.enum(['all', 'sampled', 'none']).default('all').describe('audit lines for allowed requests'),
  log_allows_sample_rate: z.coerce.number().min(0).max(1).default(0.01).describe('share of allows logged when log_allows is sampled'),
  log_buffer_bytes: int(65_536, 1_073_741_824)
    .default(16_777_216)
    .describe('log and audit text held while stdout takes none, bytes; beyond it lines are dropped and counted'),
  dpop_algorithms: csv
    .pipe(z.array(z.enum(ASYMMETRIC)).min(1))
    .default(['ES256', 'EdDSA', 'RS256', 'PS256'])
    .transform(unique)
    .describe('accepted DPoP proof algorithms, asymmetric only (RFC 9449 §4.3)'),
  dpop_max_age: int(1, 3600).default(60).describe('seconds a DPoP proof is accepted after its iat, plus clock_skew'),
  public_origins: csv
    .pipe(
      z
        .array(
          httpUrl.refine(
            (s) => new URL(s).pathname === '/' && !s.includes('?') && !s.includes('#'),
            'expected an origin (scheme://host[:port]) without path',
          ),
        )
        .min(1),
    )
    .transform((list) => unique(list.map((s) => new URL(s).origin)))
    .optional()
    .describe('origins clients use, for DPoP htu; unset: the request Host with http or https'),
  dpop_nonce: bool.default(false).describe('require server nonces in DPoP proofs (RFC 9449 §9)'),
  dpop_nonce_secret: z.string().min(32, 'at least 32 characters').optional().describe('secret every sidecar shares to make DPoP nonces'),
  dpop_nonce_secret_file: z.string().min(1).optional().describe('a file holding dpop_nonce_secret'),
  sender_constrained: bool
    .default(false)
    .describe('every protected route accepts only bound tokens (DPoP or mTLS); a rule may say otherwise'),
  tls_cert_file: z
    .string()
    .min(1)
    .optional()
    .describe('PEM certificate (with its chain) Lapse serves HTTPS with; needs tls_key_file; re-read when it changes'),
  tls_key_file: z.string().min(1).optional().describe('PEM private key of tls_cert_file; re-read when it changes'),
  tls_client_ca_file: z
    .string()
    .min(1)
    .optional()
    .describe(
      'PEM CA certificates client certificates are verified against; set, Lapse asks clients for a certificate; re-read when it changes',
    ),
  tls_client_auth: z
    .enum(['request', 'require'])
    .optional()
    .describe('request: a client certificate is optional; require: the handshake fails without a valid one; default request'),
  client_cert_header: z
    .string()
    .transform((s) => s.trim().toLowerCase())
    .pipe(z.literal('x-forwarded-client-cert', "the only header format read is Envoy's x-forwarded-client-cert"))
    .optional()
    .describe("read the client certificate from the mesh's x-forwarded-client-cert header (trusted); unset, that header is removed"),
  drain_delay: int(0, 3600)
    .default(5)
    .describe('seconds Lapse keeps serving after SIGTERM, /readyz answering 503, before it stops accepting'),
  shutdown_timeout: int(0, 3600)
    .default(20)
    .describe('seconds in-flight requests get to finish once Lapse stops accepting, then the rest are cut'),
  realm: z
    .string()
    .regex(/^[\x20\x21\x23-\x5B\x5D-\x7E]+$/)
    .default('lapse')
    .describe('realm of WWW-Authenticate challenges'),
})

export type Settings = z.output<typeof settingsSchema>
export const SETTING_NAMES = Object.keys(settingsSchema.shape) as ReadonlyArray<keyof Settings>
export const envName = (key: string) => `LAPSE_${key.toUpperCase()}`
