// The checks on a request's head that come before any decision: it has no more fields than Lapse
// reads in full, and one valid Host that this sidecar serves. A refusal is a Denial like any other.
//
//   const checkHead = createHeadCheck({ maxHeaderFields: 100, hosts: ['api.example.com', '*.example.com'] })
//   const refusal = checkHead(req.rawHeaders)   // undefined: go on and decide
import { isIPv6 } from 'node:net'
import type { Denial } from '../core/types.js'

export interface HeadPolicy {
  /** Header fields a request head may have (LAPSE_MAX_HEADER_FIELDS). */
  readonly maxHeaderFields: number
  /** Host names served (LAPSE_HOSTS), lower-case, without trailing dot; `*.x` entries match names below x. Undefined: any valid host. */
  readonly hosts: readonly string[] | undefined
}

// RFC 6585 §5: 431 when the header fields are too many, whatever their size.
const TOO_MANY_FIELDS: Denial = Object.freeze({ allow: false, reason: 'too_many_header_fields' })
// RFC 9112 §3.2: a request with more than one Host field, or an invalid one, gets 400.
const MANY_HOSTS: Denial = Object.freeze({ allow: false, reason: 'invalid_request', description: 'more than one Host' })
const INVALID_HOST: Denial = Object.freeze({ allow: false, reason: 'invalid_request', description: 'invalid Host' })
const NOT_SERVED: Denial = Object.freeze({ allow: false, reason: 'host_not_allowed' })

// RFC 3986 §3.2.2 authority without userinfo, stricter than its reg-name: dot-separated labels of
// letters, digits and `-` (an IPv4 address is one of them), or a bracketed IPv6 literal; then an
// optional port. Percent-encodings and sub-delims are refused though RFC 3986 allows them: no real
// host name needs them, and upstreams that build a URL from Host decode or split them differently.
const AUTHORITY = /^(?:([A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.?)|\[([0-9A-Fa-f:.]+)\])(?::([0-9]{1,5}))?$/

/**
 * The host of a Host value, lower-case and without port or trailing dot (IPv6 in brackets);
 * undefined when the value is not a valid authority. An empty value is valid (RFC 9112 §3.2: a
 * target without authority) and gives ''.
 */
export function hostOf(value: string): string | undefined {
  if (value === '') return ''
  const m = AUTHORITY.exec(value)
  if (!m) return undefined
  if (m[3] !== undefined && Number(m[3]) > 65535) return undefined
  if (m[2] !== undefined) return isIPv6(m[2]) ? `[${m[2].toLowerCase()}]` : undefined
  const name = m[1]!.toLowerCase()
  return name.endsWith('.') ? name.slice(0, -1) : name
}

/**
 * `originalHost`: a decision request's original Host, when its protocol names it in a header of its
 * own (extract/original-request.ts); the decision request's own Host fields are then not the
 * original's and are not read.
 */
export type HeadCheck = (raw: readonly string[], originalHost?: string) => Denial | undefined

export function createHeadCheck(policy: HeadPolicy): HeadCheck {
  const maxEntries = policy.maxHeaderFields * 2
  const exact = policy.hosts ? new Set(policy.hosts.filter((h) => !h.startsWith('*.'))) : undefined
  // `*.example.com` matches one or more labels before `.example.com`, not example.com itself.
  const suffixes = (policy.hosts ?? []).filter((h) => h.startsWith('*.')).map((h) => h.slice(1))
  const served = (host: string) => exact!.has(host) || suffixes.some((s) => host.length > s.length && host.endsWith(s))
  return (raw, originalHost) => {
    // Node keeps maxHeaderFields + 1 fields at least (http/server.ts sets maxHeadersCount), so a longer
    // head shows here; beyond what Node keeps, its body framing and its token could be fields
    // Lapse never saw.
    if (raw.length > maxEntries) return TOO_MANY_FIELDS
    let value: string | undefined = originalHost
    if (originalHost === undefined) {
      for (let i = 0; i < raw.length; i += 2) {
        const name = raw[i]!
        if (name.length !== 4 || (name !== 'Host' && name !== 'host' && name.toLowerCase() !== 'host')) continue
        if (value !== undefined) return MANY_HOSTS
        value = raw[i + 1]!
      }
    }
    // Only HTTP/1.0 gets here without Host: Node answers 400 to HTTP/1.1 without one.
    if (value === undefined) return exact ? NOT_SERVED : undefined
    const host = hostOf(value)
    if (host === undefined) return INVALID_HOST
    return exact && !served(host) ? NOT_SERVED : undefined
  }
}
