// headers (+ query) → one bearer token, or a denial. Pure: no I/O, no clock.
//
//   const got = extractBearer(req.headersDistinct.authorization, query, { allowQueryToken, maxTokenBytes }, verify.knows)
//   if ('reason' in got) deny(got.reason)
import type { DenyReason } from '../core/types.js'

export interface Extracted {
  readonly token: string | undefined
  /** The query string without `access_token`, when the token came from there. */
  readonly query: string
  /** `dpop` when the token came as `Authorization: DPoP <token>` (RFC 9449 §7.1); absent for Bearer. */
  readonly scheme?: 'dpop' | undefined
  /**
   * True when the token was found to be three non-empty parts of base64url's alphabet joined by
   * dots (a compact JWS's shape): the verifier need not scan its characters again.
   */
  readonly jws?: true | undefined
}

// RFC 6750 §2.1: b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
const B64TOKEN = /^[A-Za-z0-9\-._~+/]+=*$/
// RFC 7235 §2.1: the scheme is case-insensitive and separated from the credentials by 1*SP.
const BEARER = /^bearer +(\S+)$/i
// RFC 9449 §7.1: the DPoP scheme carries the token as token68, the same characters as b64token.
const DPOP = /^dpop +(\S+)$/i
// Both at once, for the usual well-formed header: one pass over the token instead of two.
const BEARER_B64TOKEN = /^[Bb][Ee][Aa][Rr][Ee][Rr] +([A-Za-z0-9\-._~+/]+=*)$/
// The usual header of all: an exact `Bearer ` and a compact JWS (RFC 7515 §7.1), whose characters
// are a subset of b64token's. Checked here, this one pass stands in for the verifier's own scan of
// the parts (verify-token.ts), which a fresh token would otherwise pay for a second time.
const BEARER_JWS = /^Bearer [A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$/

export function extractBearer(
  authorization: readonly string[] | undefined,
  query: string,
  opts: { readonly allowQueryToken: boolean; readonly maxTokenBytes: number },
  /** The verifier's `knows`: a token it has cached passed the checks below when it first came. */
  known?: (token: string) => boolean,
): Extracted | { readonly reason: DenyReason; readonly description: string } {
  const fromQuery = findQueryToken(query)
  if (authorization && authorization.length > 1) return invalid('more than one Authorization header')
  const header = authorization?.[0]
  if (fromQuery.found && header !== undefined) return invalid('token sent twice (header and query string)')
  if (fromQuery.found && fromQuery.count > 1) return invalid('token sent twice in the query string')
  if (fromQuery.found && !opts.allowQueryToken) return invalid('tokens in the query string are not accepted')

  let token: string | undefined
  let scheme: 'dpop' | undefined
  if (header !== undefined) {
    // The usual request repeats a token already verified: an exact `Bearer ` and a cache hit stand
    // in for the character check, which is linear in the token (bench/README.md).
    if (header.startsWith('Bearer ')) {
      const candidate = header.slice(7)
      if (candidate.length <= opts.maxTokenBytes) {
        // The verifier caches only tokens that passed its structural checks, all of them this shape.
        if (known?.(candidate) || BEARER_JWS.test(header)) return { token: candidate, query, jws: true }
      }
    }
    const well = BEARER_B64TOKEN.exec(header)
    if (well && well[1]!.length <= opts.maxTokenBytes) return { token: well[1], query }
  }
  if (header !== undefined) {
    const m = BEARER.exec(header) ?? DPOP.exec(header)
    // Another scheme (Basic, Digest) carries no bearer token: answer as if none was sent so the
    // challenge tells the client which scheme to use.
    if (!m) {
      if (/^bearer(\s|$)/i.test(header)) return malformed('Authorization is not "Bearer <token>"')
      return /^dpop(\s|$)/i.test(header) ? malformed('Authorization is not "DPoP <token>"') : { token: undefined, query }
    }
    token = m[1]
    if (m[0].charCodeAt(0) === 0x44 || m[0].charCodeAt(0) === 0x64) scheme = 'dpop'
  } else if (fromQuery.found) {
    token = fromQuery.value
    query = fromQuery.rest
  }
  if (token === undefined) return { token: undefined, query }
  if (token.length > opts.maxTokenBytes) return malformed('token is too long')
  if (!B64TOKEN.test(token)) return malformed('token has characters a bearer token cannot contain')
  return scheme === undefined ? { token, query } : { token, query, scheme }
}

const invalid = (description: string) => ({ reason: 'invalid_request' as const, description })
const malformed = (description: string) => ({ reason: 'malformed' as const, description })

// `;` separates parameters too for many upstreams (Python's parse_qs before 3.9.2, Go's net/url
// before 1.17, Rack before 3): `?x=1;access_token=…` carries a token to them, so it is one here,
// refused or taken and removed like any other.
const SEPARATOR = /([&;])/

/**
 * Finds `access_token` parameters without decoding the rest of the query, which is forwarded
 * verbatim: the parameters kept keep the separators they had.
 */
function findQueryToken(query: string): { found: false } | { found: true; value: string; rest: string; count: number } {
  // Fast path only when no escape could spell the name (`access%5Ftoken` decodes to it too).
  if (!query.includes('access_token') && !query.includes('%')) return { found: false }
  // [param, separator, param, separator, …, param]
  const pieces = query.split(SEPARATOR)
  let rest = ''
  let kept = 0
  let value: string | undefined
  let count = 0
  for (let i = 0; i < pieces.length; i += 2) {
    const part = pieces[i]!
    const eq = part.indexOf('=')
    const name = safeDecode(eq === -1 ? part : part.slice(0, eq))
    if (name === 'access_token') {
      count++
      value = safeDecode(eq === -1 ? '' : part.slice(eq + 1)) ?? ''
    } else {
      // A kept parameter keeps the separator before it, unless it now comes first.
      rest += kept++ === 0 ? part : `${pieces[i - 1]}${part}`
    }
  }
  if (count === 0) return { found: false }
  return { found: true, value: value ?? '', rest, count }
}

function safeDecode(s: string): string | undefined {
  try {
    return decodeURIComponent(s.replace(/\+/g, ' '))
  } catch {
    return undefined
  }
}
