// The headers an allowed request carries upstream: hop-by-hop removed (RFC 9110 §7.6.1),
// client-sent identity headers and request overrides dropped, the forwarding headers written from
// what Lapse saw, Lapse's identity headers added. Pure; mutates a copy.
//
//   const headers = upstreamHeaders(req.headers, identity, { remoteAddress, forwardAuthorization, upgrade: false })
import type { IncomingHttpHeaders } from 'node:http'
import type { Binding, Identity } from '../core/types.js'

const HOP_BY_HOP = [
  'connection',
  'keep-alive',
  'proxy-connection',
  'te',
  'trailer',
  'transfer-encoding',
  'upgrade',
  'proxy-authorization',
  'proxy-authenticate',
]
const HOP_BY_HOP_SET = new Set(HOP_BY_HOP)
const HOP_BY_HOP_LENGTHS = new Set(HOP_BY_HOP.map((name) => name.length))
// Headers through which a client could tell the upstream the request is something else than what
// Lapse decided on. `X-Original-URL` and `X-Rewrite-URL` replace the path in some frameworks
// (Symfony, IIS's URL Rewrite): a request allowed as /public/x would run as the path they name.
// `X-Forwarded-Prefix` makes others (Spring, ASP.NET) strip or prepend a path prefix. The rest say
// who connected, over what, to which host. Lapse writes the X-Forwarded-* trio from its own hop
// below, after dropping the client's copies (so none survives where Lapse writes nothing: no Host,
// no X-Forwarded-Host). `Forwarded` (RFC 7239) and `X-Real-IP` say the same again: they are only
// dropped, not rewritten, since two more headers on every request would cost the upstream and
// Lapse for what X-Forwarded-* already says; an upstream that reads them falls back to its peer.
const OVERRIDES = [
  'x-original-url',
  'x-rewrite-url',
  'x-forwarded-prefix',
  'forwarded',
  'x-real-ip',
  'x-forwarded-for',
  'x-forwarded-proto',
  'x-forwarded-host',
  // The same claims in other dialects: the scheme (Rack, Django, Heroku-style `X-Forwarded-Ssl: on`
  // makes an upstream believe the hop was TLS), the port, the original host, the client address.
  'x-forwarded-port',
  'x-forwarded-scheme',
  'x-forwarded-ssl',
  'x-url-scheme',
  'front-end-https',
  'x-original-host',
  'true-client-ip',
  'x-client-ip',
  'x-cluster-client-ip',
]
// Not forwarded either: `Expect`, because Node already answered `100 Continue` to the client and
// the upstream hop starts fresh.
const DROPPED = new Set([...HOP_BY_HOP, 'expect', ...OVERRIDES])
// Envoy's x-forwarded-client-cert says which certificate the client showed a mesh: a client's own
// would be a forged certificate. It goes upstream only when LAPSE_CLIENT_CERT_HEADER says a mesh in
// front of Lapse writes it (and Lapse reads it); otherwise it is dropped like an identity header.
const CLIENT_CERT_HEADER = 'x-forwarded-client-cert'
const DROPPED_WITH_CLIENT_CERT = new Set([...DROPPED, CLIENT_CERT_HEADER])
// Upstreams disagree on which characters of a field name separate words: CGI gateways (PHP, any
// FastCGI app) turn `-` and `.` into `_`, others drop or fold case and punctuation. So a client
// field whose name folds (see foldName) to a dropped name is dropped too, and so is one that folds
// to a framing field Lapse forwards under its own name only: `Content.Length` could be read as a
// second Content-Length.
const ALIASED = new Set([...DROPPED_WITH_CLIENT_CERT, 'content-length'])
// Never dropped because the client named them in Connection: they frame or route the request, or
// (trace context) Lapse wrote them itself for the upstream, after the client's were replaced.
const PROTECTED = new Set(['host', 'content-length', 'traceparent', 'tracestate'])
const IDENTITY_PREFIX = 'x-auth-'

/**
 * A field name as the most lenient upstream reads it: lower-case, every character that is not an
 * ASCII letter or digit the same separator `-` (runs are not collapsed). Node hands names
 * lower-cased, so one made of [a-z0-9-] only, the usual case, is returned as it is.
 */
export function foldName(name: string): string {
  for (let i = 0; i < name.length; i++) {
    const c = name.charCodeAt(i)
    if ((c >= 0x61 && c <= 0x7a) || (c >= 0x30 && c <= 0x39) || c === 0x2d) continue
    return name.toLowerCase().replace(/[^a-z0-9]/g, '-')
  }
  return name
}

/** The header names a `Connection` value lists, lower-cased, without the ones that are never dropped. */
function namedIn(connection: string): string[] {
  return connection
    .toLowerCase()
    .split(',')
    .map((n) => n.trim())
    .filter((n) => n !== '' && !PROTECTED.has(n))
}

export interface HeaderOptions {
  readonly remoteAddress: string | undefined
  readonly forwardAuthorization: boolean
  /** A WebSocket upgrade keeps `Connection: upgrade` and `Upgrade`. */
  readonly upgrade: boolean
  /** The sender constraint the request proved: sent as `X-Auth-Binding`. */
  readonly binding?: Binding['kind'] | undefined
  /** The X-Auth-Bound-* fields of the deciding rule (authorize/binding.ts), name then decoded value. */
  readonly bound?: readonly string[] | undefined
  /** The client's hop was TLS: X-Forwarded-Proto is https. */
  readonly tls?: boolean | undefined
  /** The caller's SPIFFE ID (bind/mtls.ts), sent as X-Auth-Peer. */
  readonly peer?: string | undefined
  /** LAPSE_CLIENT_CERT_HEADER is set: the mesh's x-forwarded-client-cert (that spelling only) is kept. */
  readonly trustClientCertHeader?: boolean | undefined
}

/** Claim values can hold any Unicode; a header value cannot. Non-printable-ASCII is percent-encoded. */
export function toHeaderValue(value: string): string {
  return /^[\x20-\x24\x26-\x7e]*$/.test(value) ? value : value.replace(/[^\x20-\x24\x26-\x7e]/gu, (ch) => encodeURIComponent(ch))
}

export function upstreamHeaders(incoming: IncomingHttpHeaders, identity: Identity | undefined, opts: HeaderOptions): IncomingHttpHeaders {
  const connection = incoming.connection
  // The usual value names no field that is not dropped anyway.
  // Folded, as the names they are compared with.
  const named =
    typeof connection === 'string' && connection !== 'keep-alive'
      ? new Set(
          namedIn(connection)
            .map(foldName)
            .filter((n) => !PROTECTED.has(n)),
        )
      : undefined
  // Built by adding, never by deleting from a copy: a deleted property leaves V8 a slow dictionary
  // object, read again by undici for every header it writes.
  const headers: IncomingHttpHeaders = {}
  const dropped = opts.trustClientCertHeader ? DROPPED : DROPPED_WITH_CLIENT_CERT
  for (const name of Object.keys(incoming)) {
    if (dropped.has(name) || named?.has(name)) continue
    if (name === 'authorization' && !opts.forwardAuthorization) continue
    // Only Lapse speaks for the caller's identity, in any spelling (X.Auth.Subject, X_Auth_Scopes).
    if (name.charCodeAt(0) === 0x78 && name.startsWith(IDENTITY_PREFIX)) continue
    const folded = foldName(name)
    if (folded !== name && (ALIASED.has(folded) || named?.has(folded) || folded.startsWith(IDENTITY_PREFIX))) continue
    headers[name] = incoming[name]
  }
  if (opts.upgrade) {
    headers.connection = 'upgrade'
    headers.upgrade = incoming.upgrade
  }
  const prior = incoming['x-forwarded-for']
  const remote = opts.remoteAddress ?? 'unknown'
  headers['x-forwarded-for'] = prior ? `${Array.isArray(prior) ? prior.join(', ') : prior}, ${remote}` : remote
  headers['x-forwarded-proto'] = opts.tls ? 'https' : 'http'
  if (incoming.host) headers['x-forwarded-host'] = incoming.host
  if (identity) {
    const fields = identityFields(identity)
    for (let i = 0; i < fields.length; i += 2) headers[fields[i]!] = fields[i + 1]!
  }
  // Per request, not per token: the same token may come with its proof on one request and be refused on another.
  if (opts.binding !== undefined) headers['x-auth-binding'] = opts.binding
  // A SPIFFE ID is letters, digits and `:/._-` only (bind/peers.ts): a valid header value as it is.
  if (opts.peer !== undefined) headers['x-auth-peer'] = opts.peer
  // After the client's X-Auth-* copies were dropped above, in any spelling: only these reach the upstream.
  const bound = opts.bound
  if (bound !== undefined) for (let i = 0; i < bound.length; i += 2) headers[bound[i]!] = toHeaderValue(bound[i + 1]!)
  return headers
}

/** The identity headers as a flat name, value list: built once per token (its memo's `headerFields` slot). */
export function identityFields(identity: Identity): readonly string[] {
  const known = identity.memo.headerFields
  if (known !== undefined) return known
  const fields: string[] = []
  if (identity.sub !== undefined) fields.push('x-auth-subject', toHeaderValue(identity.sub))
  if (identity.clientId !== undefined) fields.push('x-auth-client-id', toHeaderValue(identity.clientId))
  if (identity.jti !== undefined) fields.push('x-auth-token-id', toHeaderValue(identity.jti))
  fields.push('x-auth-scopes', toHeaderValue([...identity.scopes].join(' ')), 'x-auth-expires-at', String(identity.expS))
  identity.memo.headerFields = fields
  return fields
}

/**
 * An upstream's ordinary answer to a WebSocket upgrade, relayed by http-proxy: it writes the head
 * from these headers and pipes the body Node has already de-chunked. The upstream hop's fields
 * (RFC 9110 §7.6.1) would describe framing that is no longer there (`Transfer-Encoding: chunked`
 * over plain bytes), so they go, and the body ends with the connection (RFC 9112 §6.3), as
 * http-proxy's pipe ends it. Mutates `headers`.
 */
export function closeDelimited(headers: IncomingHttpHeaders): void {
  const connection = headers.connection
  const listed = typeof connection === 'string' ? namedIn(connection) : []
  for (const name of [...HOP_BY_HOP, ...listed]) delete headers[name]
  headers.connection = 'close'
}

/**
 * The upstream's response headers (undici's raw name/value list) as the client gets them: without
 * the fields of the upstream hop (RFC 9110 §7.6.1), including those its `Connection` names. Node
 * then frames the response and says keep-alive or close for the client's own connection.
 */
export function responseHeaders(raw: readonly Buffer[]): string[] {
  let listed: Set<string> | undefined
  for (let i = 0; i < raw.length; i += 2) {
    if (raw[i]!.length === 10 && raw[i]!.toString('latin1').toLowerCase() === 'connection') {
      const value = raw[i + 1]!.toString('latin1')
      // The usual value names no field that is not dropped anyway.
      if (value === 'keep-alive') continue
      listed ??= new Set()
      for (const name of namedIn(value)) listed.add(name)
    }
  }
  const out: string[] = []
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i]!.toString('latin1')
    // Only a name of a hop-by-hop length needs lower-casing, unless Connection listed others.
    if (listed !== undefined || HOP_BY_HOP_LENGTHS.has(name.length)) {
      const lower = name.toLowerCase()
      if (HOP_BY_HOP_SET.has(lower) || listed?.has(lower)) continue
    }
    out.push(name, raw[i + 1]!.toString('latin1'))
  }
  return out
}
