// The raw request target → one normalized path that is both matched and forwarded, or a denial.
//
//   const target = normalizeTarget(req.url)   // { path: '/b', query: 'x=1' } for '/a/../b?x=1'
//   normalizeTarget(original.url, true)          // a front proxy's target (decision API): '/a/../b' refused
//
// Why: matching one form and forwarding another is how proxies get bypassed, so there is one.
// Unreserved escapes are decoded (RFC 3986 §6.2.2.2), segments resolved, case kept (RFC 3986
// paths are case-sensitive); the rules in order: docs/configuration.md#path-normalization.
import type { DenyReason, Target } from '../core/types.js'

type Refusal = { readonly reason: DenyReason; readonly description: string }

const refuse = (description: string): Refusal => ({ reason: 'invalid_request', description })

// pchar without ';' plus '/' and '%' (escapes are checked separately).
const PATH_CHAR = /^[A-Za-z0-9\-._~!$&'()*+,=:@/%]*$/
// RFC 3986 query: pchar / "/" / "?"; `;` is harmless here since it does not split a path.
const QUERY_CHAR = /^[A-Za-z0-9\-._~!$&'()*+,;=:@/?%[\]|^`{}"<>]*$/
// Unreserved characters plus the pchar ones (RFC 3986 §3.3) that may stand raw in a segment.
// Left encoded, `%3A` and `:` would be two paths to the rules but one to an upstream that decodes
// the path once (most do): `/v1/jobs%3Apurge` would miss a `/v1/jobs:purge` rule, fall to `/v1/*`,
// and run as the purge. Decoded, every spelling is matched and forwarded as one path. A decoded
// `*` is only ever text: the matcher compares segments, it never reads a path as a pattern.
// `;` stays refused (Tomcat's `..;`), and `/ ? # %` stay encoded: decoded, they would change
// where the path ends or how it splits.
const DECODED = /[A-Za-z0-9\-._~!$&'()*+,=:@]/
// Upstreams that apply Unicode compatibility normalization (NFKC) turn U+FF0E "．" into "." and
// U+FF1A "：" into ":": such a character is one of these to them, so it is refused rather than
// matched as something else.
const NFKC_SIGNIFICANT = /[./\\;%?#!$&'()*+,=:@]/
const utf8 = new TextDecoder('utf-8', { fatal: true })

/**
 * `asSent`: the target is forwarded by a front proxy as it was sent, not as Lapse resolves it (the
 * decision API), so a path with a dot segment (`..`, `.`, `%2e%2e`) or an empty segment other than
 * a trailing slash is refused: an upstream that does not resolve it as RFC 3986 §5.2.4 does
 * (Express matches `/admin/../public/x` under `/admin`; `new URL('//admin/x', base)` reads a host)
 * would serve another path than the one decided on.
 */
export function normalizeTarget(rawUrl: string, asSent = false): Target | Refusal {
  if (!rawUrl.startsWith('/')) return refuse('request target must be a path')
  const q = rawUrl.indexOf('?')
  const rawPath = q === -1 ? rawUrl : rawUrl.slice(0, q)
  const query = q === -1 ? '' : rawUrl.slice(q + 1)
  if (!PATH_CHAR.test(rawPath)) return refuse('path contains a character that is not allowed')
  if (!QUERY_CHAR.test(query) || !validEscapes(query)) return refuse('query contains a character that is not allowed')
  const decoded = decodeEscapes(rawPath)
  if (typeof decoded !== 'string') return decoded
  if (asSent && hasSegmentToResolve(decoded))
    return refuse('a path with dot or empty segments is forwarded as sent: it cannot be decided as one path')
  const path = resolveSegments(decoded)
  if (path === undefined) return refuse('path leaves the root')
  return { path, query, hasQuery: q !== -1 }
}

function validEscapes(s: string): boolean {
  for (let i = s.indexOf('%'); i !== -1; i = s.indexOf('%', i + 1)) {
    if (!isHex(s.charCodeAt(i + 1)) || !isHex(s.charCodeAt(i + 2))) return false
  }
  return true
}

function decodeEscapes(path: string): string | Refusal {
  if (!path.includes('%')) return path
  let out = ''
  let i = 0
  while (i < path.length) {
    const ch = path[i]!
    if (ch !== '%') {
      out += ch
      i++
      continue
    }
    const bytes: number[] = []
    let j = i
    while (path[j] === '%') {
      if (!isHex(path.charCodeAt(j + 1)) || !isHex(path.charCodeAt(j + 2))) return refuse('path has a broken percent escape')
      bytes.push(parseInt(path.slice(j + 1, j + 3), 16))
      j += 3
    }
    const piece = decodeEscapeRun(bytes)
    if (typeof piece !== 'string') return piece
    out += piece
    i = j
  }
  return out
}

/** One run of consecutive escapes: must be valid UTF-8; unreserved and pchar ASCII decoded, the rest re-encoded. */
function decodeEscapeRun(bytes: number[]): string | Refusal {
  let text: string
  try {
    text = utf8.decode(Uint8Array.from(bytes))
  } catch {
    return refuse('path has an escape that is not valid UTF-8')
  }
  // A segment matched as "．．" would be served as ".." by an NFKC upstream, "jobs：purge" as "jobs:purge".
  for (const ch of text) {
    if (ch > '\x7f' && NFKC_SIGNIFICANT.test(ch.normalize('NFKC')))
      return refuse('path has an encoded character that normalizes to a delimiter or a reserved character')
  }
  let out = ''
  for (const b of bytes) {
    if (b === 0x2f || b === 0x5c || b === 0x3b) return refuse('path has an encoded "/", "\\" or ";"')
    if (b < 0x20 || b === 0x7f) return refuse('path has an encoded control character')
    const ch = String.fromCharCode(b)
    out += b < 0x80 && DECODED.test(ch) ? ch : `%${b.toString(16).toUpperCase().padStart(2, '0')}`
  }
  return out
}

// A path with no empty, `.` or `..` segment is already resolved (most requests' paths).
const NEEDS_RESOLVING = /\/(?:\.\.?)?(?:\/|$)/

// A `.` or `..` segment anywhere, or an empty one before the last (a trailing slash is kept as such).
const TO_RESOLVE = /\/(?:\.\.?(?:\/|$)|\/)/

function hasSegmentToResolve(path: string): boolean {
  return TO_RESOLVE.test(path)
}

function resolveSegments(path: string): string | undefined {
  if (!NEEDS_RESOLVING.test(path)) return path
  const parts = path.split('/')
  const out: string[] = []
  const last = parts.length - 1
  let trailing = false
  for (let i = 1; i <= last; i++) {
    const seg = parts[i]!
    trailing = i === last && (seg === '' || seg === '.' || seg === '..')
    if (seg === '' || seg === '.') continue
    if (seg === '..') {
      if (out.length === 0) return undefined
      out.pop()
      continue
    }
    out.push(seg)
  }
  if (out.length === 0) return '/'
  return `/${out.join('/')}${trailing ? '/' : ''}`
}

function isHex(c: number): boolean {
  return (c >= 48 && c <= 57) || (c >= 65 && c <= 70) || (c >= 97 && c <= 102)
}
