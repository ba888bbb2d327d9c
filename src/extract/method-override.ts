// The methods a request asks the upstream to run instead of its own → a list, or a denial. Pure.
//
//   const named = extractOverrides(req.rawHeaders, target.query)   // undefined: no override (the usual request)
//   if (named && 'reason' in named) deny(named.reason)
//
// Frameworks run a POST as the method named in `X-HTTP-Method-Override`, `X-HTTP-Method`,
// `X-Method-Override` (express's method-override, ASP.NET, Google APIs) or a `_method` parameter
// (Laravel, Symfony, Rails forms, express): a request decided as a POST would run as a DELETE. So
// every method named is decided too (decide.ts); the request is forwarded unchanged.
import type { DenyReason } from '../core/types.js'

type Refusal = { readonly reason: DenyReason; readonly description: string }

// Folded spellings: lower case, every character that is not a letter or digit as `-`. Node and
// CGI-style gateways disagree on which separators a header name may use (`X_HTTP_Method`,
// `x.http.method`), so each spelling an upstream could read as one of these is one of these.
const HEADER_NAMES = ['x-http-method-override', 'x-http-method', 'x-method-override']
// RFC 9110 §5.6.2: method = token; tchar = "!" / "#" / "$" / "%" / "&" / "'" / "*" / "+" / "-" /
// "." / "^" / "_" / "`" / "|" / "~" / DIGIT / ALPHA.
const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/
const SEPARATOR = /([&;])/

export function extractOverrides(rawHeaders: readonly string[], query: string): readonly string[] | Refusal | undefined {
  let values: string[] | undefined
  for (let i = 0; i < rawHeaders.length; i += 2) {
    const name = rawHeaders[i]!
    // Fast path: most headers have none of the three lengths (13, 17, 22) or do not start with x.
    const length = name.length
    if ((length !== 13 && length !== 17 && length !== 22) || (name.charCodeAt(0) | 0x20) !== 0x78) continue
    if (HEADER_NAMES.some((n) => foldsTo(name, n))) (values ??= []).push(rawHeaders[i + 1]!)
  }
  const params = queryOverrides(query)
  if (params === null) return invalid()
  if (params !== undefined) (values ??= []).push(...params)
  if (values === undefined) return undefined
  const methods = new Set<string>()
  for (const value of values) {
    // RFC 9110 §5.6.1: a list; empty elements are ignored, each element is trimmed of OWS.
    for (const element of value.split(',')) {
      const m = element.trim().toUpperCase()
      if (m === '') continue
      if (!TOKEN.test(m)) return invalid()
      methods.add(m)
    }
  }
  return [...methods]
}

const invalid = (): Refusal => ({ reason: 'invalid_request', description: 'invalid method override' })

/** Whether `name`, lower-cased with every non-alphanumeric character as `-`, is `folded`; no allocation. */
function foldsTo(name: string, folded: string): boolean {
  if (name.length !== folded.length) return false
  for (let i = 0; i < name.length; i++) {
    const c = name.charCodeAt(i)
    const want = folded.charCodeAt(i)
    if (want === 0x2d) {
      if (isAlphanumeric(c)) return false
    } else if ((c >= 0x41 && c <= 0x5a ? c | 0x20 : c) !== want) {
      return false
    }
  }
  return true
}

const isAlphanumeric = (c: number) => (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5a) || (c >= 0x61 && c <= 0x7a)

/**
 * The values of `_method` parameters, split on `&` and `;` as extract/bearer.ts splits for
 * `access_token`; null when one cannot be decoded. A name counts when, decoded, it spells
 * `_method` as PHP reads parameter names (leading spaces dropped, `.` and space as `_`, an array
 * suffix `[…]`): every non-alphanumeric character before `method` stands for the `_`.
 */
function queryOverrides(query: string): string[] | null | undefined {
  // Fast path only when no escape could spell the name (`%5Fmethod`).
  if (!query.includes('method') && !query.includes('%')) return undefined
  let found: string[] | undefined
  const pieces = query.split(SEPARATOR)
  for (let i = 0; i < pieces.length; i += 2) {
    const part = pieces[i]!
    const eq = part.indexOf('=')
    const name = safeDecode(eq === -1 ? part : part.slice(0, eq))
    if (name === undefined || !isMethodParam(name)) continue
    const value = safeDecode(eq === -1 ? '' : part.slice(eq + 1))
    if (value === undefined) return null
    ;(found ??= []).push(value)
  }
  return found
}

function isMethodParam(decoded: string): boolean {
  const name = decoded.replace(/^ +/, '')
  const bracket = name.indexOf('[')
  const base = bracket === -1 ? name : name.slice(0, bracket)
  return base.length === 7 && base.endsWith('method') && !isAlphanumeric(base.charCodeAt(0))
}

function safeDecode(s: string): string | undefined {
  try {
    return decodeURIComponent(s.replace(/\+/g, ' '))
  } catch {
    return undefined
  }
}
