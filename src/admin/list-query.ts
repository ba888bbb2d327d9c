// The query of GET /v1/revocations → a RevocationQuery, or a clear reason it is refused. Pure.
//
//   parseListQuery(new URLSearchParams('claim=sub&limit=50'))
import type { RevocationQuery } from '../core/types.js'

export const DEFAULT_LIST_LIMIT = 100
export const MAX_LIST_LIMIT = 1000
// A cursor is the store's own (a few keys of the set at most); a longer one is not ours.
const MAX_CURSOR_CHARS = 8192
const PARAMS = new Set(['claim', 'iss', 'reason_contains', 'limit', 'cursor'])

export function parseListQuery(params: URLSearchParams): RevocationQuery | { error: string } {
  const seen = new Set<string>()
  for (const name of params.keys()) {
    // A misspelt filter (`claims=sub`) would otherwise list everything and look like an answer.
    if (!PARAMS.has(name)) return { error: `unknown parameter "${name}" (claim, iss, reason_contains, limit, cursor)` }
    if (seen.has(name)) return { error: `"${name}" is given twice` }
    seen.add(name)
  }
  const text = (name: string, max: number): string | undefined | { error: string } => {
    const v = params.get(name)
    if (v === null) return undefined
    if (v === '' || v.length > max) return { error: `"${name}" must be a non-empty text of at most ${max} characters` }
    return v
  }
  const claim = text('claim', 256)
  const iss = text('iss', 2048)
  const reasonContains = text('reason_contains', 512)
  const cursor = text('cursor', MAX_CURSOR_CHARS)
  for (const v of [claim, iss, reasonContains, cursor]) if (typeof v === 'object') return v
  const rawLimit = params.get('limit')
  const limit = rawLimit === null ? DEFAULT_LIST_LIMIT : /^\d{1,4}$/.test(rawLimit) ? Number(rawLimit) : Number.NaN
  if (!(limit >= 1 && limit <= MAX_LIST_LIMIT)) return { error: `"limit" must be a whole number from 1 to ${MAX_LIST_LIMIT}` }
  return {
    claim: claim as string | undefined,
    iss: iss as string | undefined,
    reasonContains: reasonContains as string | undefined,
    cursor: cursor as string | undefined,
    limit,
  }
}
