// Every JSON answer Lapse writes itself has one shape, made here: a status, `content-type:
// application/json`, `cache-control: no-store` and `{"error", "error_description"}`. Decisions take
// their row from reasons.ts (REASONS); every other answer, the proxy's and the admin API's, from
// ANSWERS below. http/ writes an Answer to a socket, writeAnswer to a ServerResponse.
//
//   writeAnswer(res, answerOf('upstream_timeout'))
//   writeAnswer(res, answerOf('not_found', { description: 'no such revocation' }))
import type { ServerResponse } from 'node:http'

export interface Answer {
  readonly status: number
  readonly headers: Readonly<Record<string, string>>
  readonly body: string
}

/** The answers that are not decisions. Stable names: the audit line's `answer` field carries them. */
export type AnswerName =
  | 'upstream_unavailable'
  | 'upstream_timeout'
  | 'unsupported_transfer_coding'
  | 'head_too_large'
  | 'request_timeout'
  | 'malformed_http'
  | 'internal_error'
  | 'admin_invalid_request'
  | 'admin_unauthorized'
  | 'admin_off'
  | 'not_found'
  | 'method_not_allowed'
  | 'revocation_write_failed'
  | 'revocation_set_unreachable'
  | 'decision_token_invalid'

interface AnswerRow {
  readonly status: 400 | 401 | 403 | 404 | 405 | 408 | 431 | 500 | 501 | 502 | 503 | 504
  readonly error: string
  /** Absent: the body has no `error_description` unless the writer gives one. */
  readonly description?: string
  readonly headers?: Readonly<Record<string, string>>
}

export const RETRY_AFTER_S = 1
const RETRY = { 'retry-after': String(RETRY_AFTER_S) }

// Record<AnswerName, …> makes the compiler keep this table complete.
export const ANSWERS: Readonly<Record<AnswerName, AnswerRow>> = {
  // An allowed request whose forwarding failed before any byte of the upstream's answer was sent.
  upstream_unavailable: { status: 502, error: 'bad_gateway', description: 'the upstream is unavailable' },
  upstream_timeout: { status: 504, error: 'gateway_timeout', description: 'the upstream did not answer in time' },
  // RFC 9112 §6.1: a server that receives a transfer coding it does not understand SHOULD answer
  // 501. 400 would blame a well-formed request; 501 tells the client the coding is what Lapse
  // lacks, so it can resend the body plain (or with Content-Encoding, which is end to end).
  unsupported_transfer_coding: { status: 501, error: 'not_implemented', description: 'only the chunked transfer coding is accepted' },
  // Node's parser refused the head (LAPSE_MAX_HEADER_BYTES), or kept too little of it to replay.
  head_too_large: { status: 431, error: 'invalid_request', description: 'request headers too large' },
  request_timeout: { status: 408, error: 'invalid_request', description: 'request timed out' },
  malformed_http: { status: 400, error: 'invalid_request', description: 'malformed HTTP request' },
  // A bug inside Lapse, on the proxy or the admin listener.
  internal_error: { status: 500, error: 'internal_error', description: 'internal error' },
  // The admin API (docs/revocation.md#admin-api).
  admin_invalid_request: { status: 400, error: 'invalid_request', description: 'malformed request' },
  admin_unauthorized: {
    status: 401,
    error: 'unauthorized',
    description: 'a valid admin token is required',
    headers: { 'www-authenticate': 'Bearer realm="lapse-admin"' },
  },
  admin_off: { status: 403, error: 'forbidden', description: 'the revocation API is off until LAPSE_ADMIN_TOKEN is set' },
  not_found: { status: 404, error: 'not_found' },
  method_not_allowed: { status: 405, error: 'method_not_allowed' },
  revocation_write_failed: {
    status: 503,
    error: 'temporarily_unavailable',
    description: 'the revocation set did not acknowledge the write',
    headers: RETRY,
  },
  revocation_set_unreachable: {
    status: 503,
    error: 'temporarily_unavailable',
    description: 'the revocation set is unreachable',
    headers: RETRY,
  },
  // The decision listener (docs/ingress.md#trust): a request without LAPSE_DECISION_TOKEN did not
  // come from the front proxy. 403, which every front proxy passes to its client as a refusal.
  decision_token_invalid: { status: 403, error: 'forbidden', description: 'the decision request did not carry the decision token' },
}

/** The one function that makes a JSON answer: every status Lapse writes itself comes through it. */
export function jsonAnswer(status: number, body: object, headers?: Readonly<Record<string, string>>): Answer {
  const text = JSON.stringify(body)
  return {
    status,
    headers: {
      'content-type': 'application/json',
      'cache-control': 'no-store',
      ...headers,
      'content-length': String(Buffer.byteLength(text)),
    },
    body: text,
  }
}

/** An error answer: `error`, and `error_description` when there is one. */
export function errorAnswer(
  status: number,
  error: string,
  description: string | undefined,
  headers?: Readonly<Record<string, string>>,
): Answer {
  return jsonAnswer(status, description === undefined ? { error } : { error, error_description: description }, headers)
}

// Built once: the answers written without a description or header of the caller's cost nothing per request.
const FIXED = Object.fromEntries(
  Object.entries(ANSWERS).map(([name, row]) => [name, errorAnswer(row.status, row.error, row.description, row.headers)]),
) as Record<AnswerName, Answer>

/** A row's answer; `description` replaces the row's phrase, `headers` add to its own (`allow` on a 405). */
export function answerOf(
  name: AnswerName,
  extra?: { readonly description?: string; readonly headers?: Readonly<Record<string, string>> },
): Answer {
  if (extra === undefined) return FIXED[name]
  const row = ANSWERS[name]
  return errorAnswer(
    row.status,
    row.error,
    extra.description ?? row.description,
    extra.headers ? { ...row.headers, ...extra.headers } : row.headers,
  )
}

/**
 * Writes an answer to a ServerResponse. Here rather than in http/ because the admin listener,
 * an adapter of the same rank as http/, writes its answers with it too (test/architecture.test.ts).
 */
export function writeAnswer(res: ServerResponse, answer: Answer): void {
  res.writeHead(answer.status, answer.headers).end(answer.body)
}
