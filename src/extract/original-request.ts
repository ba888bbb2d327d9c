// A front proxy's decision request (nginx auth_request, Traefik/Caddy forward auth, Envoy/Istio
// ext_authz) → the original request it asks about: method, request target and host. Each protocol
// is chosen by the decision request's path and reads the original from its documented headers;
// the target is then normalized and refused by target/request-target.ts like any request's.
//
//   const protocol = protocolOf(req.url)            // undefined: not a decision path (404)
//   const original = readOriginalRequest(protocol, req.method, req.url, req.rawHeaders)   // a Denial, or what to decide on
import type { Denial } from '../core/types.js'

export type DecisionProtocol = 'nginx' | 'forward' | 'envoy'

export interface OriginalRequest {
  readonly protocol: DecisionProtocol
  readonly method: string
  /** The original request target as the front proxy forwards it (path and query). */
  readonly url: string
  /** The original Host when the protocol names it in a header of its own; undefined: the decision request's Host is the original's. */
  readonly host: string | undefined
}

export const NGINX_PATH = '/v1/decide/nginx'
export const FORWARD_PATH = '/v1/decide/forward'
/** Envoy appends the original path (with its query) to the configured path_prefix. */
export const ENVOY_PREFIX = '/v1/decide/envoy'

// RFC 9110 §9.1: a method is a token.
const METHOD = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/

const refuse = (description: string): Denial => ({ allow: false, reason: 'invalid_request', description })

// Headers through which a client tells some upstreams to serve another path than the target
// (Symfony and IIS read X-Original-URL and X-Rewrite-URL, Spring and ASP.NET X-Forwarded-Prefix).
// Proxy mode drops them (http/headers.ts); behind a front proxy they would reach the upstream, so
// a request carrying one is refused. Envoy passes them to Lapse only when allowed_headers names
// them, as the shipped snippet does.
const PATH_OVERRIDES = ['x-original-url', 'x-rewrite-url', 'x-forwarded-prefix']
const PATH_OVERRIDE: Denial = Object.freeze(
  refuse('X-Original-URL, X-Rewrite-URL and X-Forwarded-Prefix are refused: the upstream would serve another path'),
)
// Proxy mode drops every client header whose name folds to an X-Auth-* name (X.Auth.Subject, which
// CGI-style upstreams read as X-Auth-Subject). A front proxy replaces only the five it copies from
// the answer, under their exact names, so any other spelling, or an X-Auth-* name Lapse does not
// answer with, would reach the upstream as if Lapse had said it: refused.
const ANSWERED = ['x-auth-subject', 'x-auth-client-id', 'x-auth-token-id', 'x-auth-scopes', 'x-auth-expires-at']
const IDENTITY_SPOOF: Denial = Object.freeze(refuse('X-Auth-* headers come only from Lapse'))

/** A field name as the most lenient upstream reads it: lower-case, every non-alphanumeric a `-` (as http/headers.ts folds). */
const fold = (name: string) => name.toLowerCase().replace(/[^a-z0-9]/g, '-')

/**
 * The values of the named fields in one pass (names compared case-insensitively); a name given
 * twice, a path override or an identity header the front proxy would not replace, is refused.
 */
function fieldsOf(raw: readonly string[], names: readonly string[], lower: readonly string[]): Array<string | undefined> | Denial {
  const values: Array<string | undefined> = new Array(names.length).fill(undefined)
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i]!
    // Every name read here starts with "x-": most fields are passed over on their first letter.
    const c = name.charCodeAt(0)
    if (c !== 0x78 && c !== 0x58) continue
    const lowered = name.toLowerCase()
    const folded = fold(lowered)
    if (PATH_OVERRIDES.includes(folded)) return PATH_OVERRIDE
    if (folded.startsWith('x-auth-') && !ANSWERED.includes(lowered)) return IDENTITY_SPOOF
    const at = lower.indexOf(lowered)
    if (at === -1) continue
    // Two values would be two requests to decide on: the front proxy and Lapse could each read another.
    if (values[at] !== undefined) return refuse(`more than one ${names[at]}`)
    values[at] = raw[i + 1]!
  }
  return values
}

function checkMethod(method: string | undefined, field: string): string | Denial {
  if (method === undefined || method === '') return refuse(`${field} is missing`)
  if (!METHOD.test(method)) return refuse(`${field} is not a method`)
  return method
}

function checkUri(uri: string | undefined, field: string): string | Denial {
  if (uri === undefined || uri === '') return refuse(`${field} is missing`)
  // Normalized later, like any request target; only a path is a target to decide on.
  if (!uri.startsWith('/')) return refuse(`${field} must be a path`)
  return uri
}

const NGINX_FIELDS = ['X-Original-Method', 'X-Original-URI']
const FORWARD_FIELDS = ['X-Forwarded-Method', 'X-Forwarded-Uri', 'X-Forwarded-Host', 'X-Forwarded-Proto']
const NO_FIELDS: readonly string[] = []
const NGINX_LOWER = NGINX_FIELDS.map((n) => n.toLowerCase())
const FORWARD_LOWER = FORWARD_FIELDS.map((n) => n.toLowerCase())

/** The protocol a decision request speaks, read off its path; undefined: not a decision path. */
export function protocolOf(url: string): DecisionProtocol | undefined {
  // Caddy's forward_auth keeps the original query on the decision request: the path decides.
  const q = url.indexOf('?')
  const path = q === -1 ? url : url.slice(0, q)
  if (path === NGINX_PATH) return 'nginx'
  if (path === FORWARD_PATH) return 'forward'
  if (!url.startsWith(ENVOY_PREFIX)) return undefined
  const next = url.charCodeAt(ENVOY_PREFIX.length)
  // "/v1/decide/envoyx" is another path, not the prefix and "x".
  return Number.isNaN(next) || next === 0x2f || next === 0x3f ? 'envoy' : undefined
}

/** The original request a decision request of `protocol` asks about, or why it is refused. */
export function readOriginalRequest(
  protocol: DecisionProtocol,
  method: string,
  url: string,
  raw: readonly string[],
): OriginalRequest | Denial {
  if (protocol === 'nginx') return readNginx(raw)
  if (protocol === 'forward') return readForward(raw)
  return readEnvoy(method, url.slice(ENVOY_PREFIX.length), raw)
}

/** nginx auth_request: the snippet sets X-Original-Method and X-Original-URI; Host is the original's. */
function readNginx(raw: readonly string[]): OriginalRequest | Denial {
  const fields = fieldsOf(raw, NGINX_FIELDS, NGINX_LOWER)
  if (!Array.isArray(fields)) return fields
  const method = checkMethod(fields[0], 'X-Original-Method')
  if (typeof method !== 'string') return method
  const uri = checkUri(fields[1], 'X-Original-URI')
  if (typeof uri !== 'string') return uri
  return { protocol: 'nginx', method, url: uri, host: undefined }
}

/** Traefik ForwardAuth and Caddy forward_auth: X-Forwarded-Method, -Uri, -Host and -Proto. */
function readForward(raw: readonly string[]): OriginalRequest | Denial {
  const fields = fieldsOf(raw, FORWARD_FIELDS, FORWARD_LOWER)
  if (!Array.isArray(fields)) return fields
  const method = checkMethod(fields[0], 'X-Forwarded-Method')
  if (typeof method !== 'string') return method
  const uri = checkUri(fields[1], 'X-Forwarded-Uri')
  if (typeof uri !== 'string') return uri
  const host = fields[2]
  if (host === undefined) return refuse('X-Forwarded-Host is missing')
  const proto = fields[3]
  if (proto !== undefined && proto !== 'http' && proto !== 'https') return refuse('X-Forwarded-Proto is not http or https')
  return { protocol: 'forward', method, url: uri, host }
}

/** Envoy ext_authz (HTTP service): the original method, the original path after the prefix, the original Host. */
function readEnvoy(method: string, rest: string, raw: readonly string[]): OriginalRequest | Denial {
  const fields = fieldsOf(raw, NO_FIELDS, NO_FIELDS)
  if (!Array.isArray(fields)) return fields
  // The prefix alone (or with only a query) carries no original path: a prefix configured with a trailing "/" would give "//…".
  const uri = checkUri(rest, `the original path after ${ENVOY_PREFIX}`)
  if (typeof uri !== 'string') return uri
  if (!METHOD.test(method)) return refuse('the method is not a method')
  return { protocol: 'envoy', method, url: uri, host: undefined }
}
