// The calling workload's SPIFFE ID against a route rule's `peers`: exact IDs, or a prefix ending
// in `/*` that stands for one more path segment.
//
//   peerPatternProblem('spiffe://prod.example/ns/ci/*')      // undefined: a valid pattern
//   peerAllowed(rule.peers, 'spiffe://prod.example/ns/ci/sa/deployer')
//
// SPIFFE ID grammar (SPIFFE-ID §2): `spiffe://`, a trust domain of lower-case letters, digits, `.`,
// `-`, `_`, then path segments of letters, digits, `.`, `-`, `_`, none empty, `.` or `..`; no
// query, fragment, port or user info; at most 2048 bytes.

const TRUST_DOMAIN = /^[a-z0-9._-]+$/
const SEGMENT = /^[A-Za-z0-9._-]+$/
const SCHEME = 'spiffe://'
const MAX_ID_BYTES = 2048

/** Whether `id` is a SPIFFE ID as SPIFFE-ID §2 defines it. */
export function isSpiffeId(id: string): boolean {
  if (id.length > MAX_ID_BYTES || !id.startsWith(SCHEME)) return false
  const rest = id.slice(SCHEME.length)
  const slash = rest.indexOf('/')
  const domain = slash < 0 ? rest : rest.slice(0, slash)
  if (domain === '' || !TRUST_DOMAIN.test(domain)) return false
  if (slash < 0) return true
  for (const segment of rest.slice(slash + 1).split('/')) {
    if (!SEGMENT.test(segment) || segment === '.' || segment === '..') return false
  }
  return true
}

/** Why a `peers` entry can never match a SPIFFE ID, or undefined when it is a valid pattern. */
export function peerPatternProblem(pattern: string): string | undefined {
  const id = pattern.endsWith('/*') ? `${pattern.slice(0, -1)}x` : pattern
  if (!isSpiffeId(id)) return 'a peer is a SPIFFE ID (spiffe://trust-domain/path), optionally ending in /* for one more segment'
  return undefined
}

/**
 * Whether the peer may call: no list lets anyone; with a list, a request without a (valid) peer ID
 * never matches. `peer` is a valid SPIFFE ID (the http layer forwards nothing else), so the
 * segment a `/*` stands for is valid too: it only has to be one, non-empty, without `/`.
 */
export function peerAllowed(patterns: readonly string[] | undefined, peer: string | undefined): boolean {
  if (patterns === undefined) return true
  if (peer === undefined) return false
  for (const p of patterns) {
    if (p === peer) return true
    if (p.endsWith('/*')) {
      const prefix = p.slice(0, -1)
      if (peer.length > prefix.length && peer.startsWith(prefix) && peer.indexOf('/', prefix.length) < 0) return true
    }
  }
  return false
}
