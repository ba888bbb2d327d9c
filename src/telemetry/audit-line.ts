// The audit lines, built as text: one per decision and one per revocation change
// (docs/telemetry.md#the-audit-log lists every field).
//
//   out.write(decisionLine({ audit fields… }))   // '{"level":"info","time":…,"msg":"decision"}\n'
//
// The same text pino wrote for them before (field order, omitted undefined fields, JSON escaping);
// test/telemetry/audit-line.test.ts holds the two to each other. Built without a logger because
// the line per request was the largest cost Lapse added to a request (bench/README.md, issue 27).
// For the same reason the parts that repeat are made once: a route's, a status's, a method's and a
// remote address's text once per value, and a token's fields and the line's whole middle once per
// token while they repeat (in its memo, which the verification cache keeps). A line is then five
// pieces, not forty: cheaper to join and to copy out.
import type { AuditLineMiddle, TokenMemo } from '../core/types.js'
import { jsonNumber, jsonString, jsonValue, lineHead } from './json-line.js'

/** Where audit lines go: Lapse's stdout sink (line-sink.ts), or any stream a test gives pino. */
export interface LineOut {
  write(line: string): unknown
}

/** The verified token a line names: an Identity (core/types.ts) is one. */
export interface TokenLineFields {
  readonly sub: string | undefined
  readonly clientId: string | undefined
  readonly jti: string | undefined
  readonly iatS: number | undefined
  readonly expS: number
  /** Where the fields' text is kept for the token's next line. */
  readonly memo: TokenMemo
}

export interface DecisionLineFields {
  readonly traceId: string | undefined
  readonly spanId: string | undefined
  readonly decision: 'allow' | 'deny'
  readonly reason: string
  readonly failedOpen: boolean
  readonly route: string | undefined
  readonly method: string
  readonly path: string | undefined
  readonly status: number | undefined
  readonly upstreamFailure: string | undefined
  readonly answer: string | undefined
  /** The token decided on, once verified: its sub, client_id, jti, iat and exp. */
  readonly token: TokenLineFields | undefined
  readonly binding: string | undefined
  readonly keyThumbprint: string | undefined
  readonly use: number | undefined
  readonly maxUses: number | undefined
  readonly remote: string | undefined
  /** From the request's arrival to this line, in whole microseconds (written as `latency_ms`). */
  readonly latencyUs: number
  /** Fields of a cut, a client that left, the decision API: appended as they are. */
  readonly note: Readonly<Record<string, unknown>> | undefined
}

const str = (key: string, v: string | undefined) => (v === undefined ? '' : `,"${key}":${jsonString(v)}`)
const num = (key: string, v: number | undefined) => (v === undefined ? '' : `,"${key}":${jsonNumber(v)}`)

function extra(note: Readonly<Record<string, unknown>> | undefined): string {
  if (note === undefined) return ''
  let s = ''
  for (const key in note) {
    const v = jsonValue(note[key])
    if (v !== undefined) s += `,${jsonString(key)}:${v}`
  }
  return s
}

/** `,"route":"/v1/**"` by rule path, made once per path. */
const routeSegments = new Map<string, string>()
/** `,"status":200` by status code. */
const statusSegments: string[] = []
/** Rule paths kept at most (reloads can bring new ones): past it the map starts over. */
const MAX_KEPT = 256

function routeSegment(route: string | undefined): string {
  if (route === undefined) return ''
  let seg = routeSegments.get(route)
  if (seg === undefined) {
    seg = str('route', route)
    if (routeSegments.size >= MAX_KEPT) routeSegments.clear()
    routeSegments.set(route, seg)
  }
  return seg
}

let lastMethod = 'GET'
let lastMethodSegment = ',"method":"GET"'
function methodSegment(method: string): string {
  if (method !== lastMethod) {
    lastMethod = method
    lastMethodSegment = `,"method":${jsonString(method)}`
  }
  return lastMethodSegment
}

function statusSegment(status: number | undefined): string {
  if (status === undefined) return ''
  if (!(status >= 100 && status <= 599 && Number.isInteger(status))) return num('status', status)
  return (statusSegments[status] ??= num('status', status))
}

let lastRemote: string | undefined
let lastRemoteSegment = ''
function remoteSegment(remote: string | undefined): string {
  if (remote === undefined) return ''
  if (remote !== lastRemote) {
    lastRemote = remote
    lastRemoteSegment = str('remote', remote)
  }
  return lastRemoteSegment
}

/**
 * `,"sub":…,"client_id":…,"jti":…,"iat":…,"exp":…`, kept in the token's memo from its second
 * line on: a token seen once (most of a fresh-token workload) keeps nothing.
 */
function tokenSegment(t: TokenLineFields | undefined): string {
  if (t === undefined) return ''
  const memo = t.memo
  if (memo.auditFields !== undefined) return memo.auditFields
  const text = `${str('sub', t.sub)}${str('client_id', t.clientId)}${str('jti', t.jti)}${num('iat', t.iatS)}${num('exp', t.expS)}`
  if (memo.auditLast === undefined) return text
  // Flat: kept for as long as the verification cache keeps the token, as one string rather than
  // the tree of pieces it was joined from.
  memo.auditFields = flat(text)
  return text
}

/** Microseconds as milliseconds with up to three decimals, as `${us / 1000}` writes it, without formatting a double. */
export function msOfUs(us: number): string {
  if (!(us >= 0 && us < 2 ** 31 && Number.isInteger(us))) return jsonNumber(us / 1000)
  const ms = (us / 1000) | 0
  const frac = us - ms * 1000
  if (frac === 0) return `${ms}`
  if (frac % 100 === 0) return `${ms}.${frac / 100}`
  if (frac % 10 === 0) return `${ms}.${frac < 100 ? '0' : ''}${frac / 10}`
  return `${ms}.${frac < 10 ? '00' : frac < 100 ? '0' : ''}${frac}`
}

const ALLOW_OK = ',"decision":"allow","reason":"ok"'

/** The fields between span_id and latency_ms: the line's middle, the same on most of a token's lines. */
function middle(f: DecisionLineFields): string {
  const verdict = f.decision === 'allow' && f.reason === 'ok' ? ALLOW_OK : `,"decision":"${f.decision}","reason":${jsonString(f.reason)}`
  return (
    `${verdict}${f.failedOpen ? ',"failed_open":true' : ''}` +
    `${routeSegment(f.route)}${methodSegment(f.method)}${str('path', f.path)}${statusSegment(f.status)}` +
    `${str('upstream_failure', f.upstreamFailure)}${str('answer', f.answer)}${tokenSegment(f.token)}` +
    `${str('binding', f.binding)}${str('key_thumbprint', f.keyThumbprint)}${num('use', f.use)}${num('max_uses', f.maxUses)}` +
    `${remoteSegment(f.remote)}`
  )
}

/** A token's memo after its first line. */
const SEEN_ONCE: AuditLineMiddle = {
  path: undefined,
  status: undefined,
  route: undefined,
  method: '',
  remote: undefined,
  decision: '',
  reason: '',
  failedOpen: false,
  binding: undefined,
  keyThumbprint: undefined,
  maxUses: undefined,
  text: '',
}

/**
 * The middle of this token's last line, reused while the next line's fields that vary are the
 * same (a client calling one path again and again): the line is then five pieces. Kept from a
 * token's second line on (about 450 bytes with its fields, while the verification cache keeps the
 * token). Lines with a use count, an upstream failure or an answer of Lapse's own are built
 * whole each time.
 */
function middleOf(f: DecisionLineFields): string {
  const t = f.token
  if (t === undefined || f.use !== undefined || f.upstreamFailure !== undefined || f.answer !== undefined) return middle(f)
  const last = t.memo.auditLast
  // The token's first line: it may be its only one, so nothing is kept but that it was seen.
  if (last === undefined) {
    const text = middle(f)
    t.memo.auditLast = SEEN_ONCE
    return text
  }
  if (
    last !== SEEN_ONCE &&
    last.path === f.path &&
    last.status === f.status &&
    last.route === f.route &&
    last.method === f.method &&
    last.remote === f.remote &&
    last.decision === f.decision &&
    last.reason === f.reason &&
    last.failedOpen === f.failedOpen &&
    last.binding === f.binding &&
    last.keyThumbprint === f.keyThumbprint &&
    last.maxUses === f.maxUses
  )
    return last.text
  const text = flat(middle(f))
  t.memo.auditLast = {
    path: f.path,
    status: f.status,
    route: f.route,
    method: f.method,
    remote: f.remote,
    decision: f.decision,
    reason: f.reason,
    failedOpen: f.failedOpen,
    binding: f.binding,
    keyThumbprint: f.keyThumbprint,
    maxUses: f.maxUses,
    text,
  }
  return text
}

/** A string of pieces made into one (V8 joins them on first read): a kept string is not re-walked by each line. */
function flat(s: string): string {
  s.charCodeAt(0)
  return s
}

let lastHead = ''
let decisionHead = ''

export function decisionLine(f: DecisionLineFields): string {
  const head = lineHead('info')
  if (head !== lastHead) {
    lastHead = head
    decisionHead = flat(`${head}"audit":"decision"`)
  }
  return (
    `${decisionHead}${str('trace_id', f.traceId)}${str('span_id', f.spanId)}${middleOf(f)}` +
    `,"latency_ms":${msOfUs(f.latencyUs)}${extra(f.note)},"msg":"decision"}\n`
  )
}

export interface RevocationLineFields {
  readonly traceId: string | undefined
  readonly spanId: string | undefined
  readonly action: 'revoke' | 'lift'
  readonly by: string
  readonly claim: string
  readonly value: string
  readonly iss: string | undefined
  readonly issuedBefore: number
  readonly expiresAt: number
  readonly reason: string | undefined
}

export function revocationLine(f: RevocationLineFields): string {
  return (
    `${lineHead('info')}"audit":"revocation"${str('trace_id', f.traceId)}${str('span_id', f.spanId)}` +
    `,"action":"${f.action}","by":${jsonString(f.by)},"claim":${jsonString(f.claim)},"value":${jsonString(f.value)}` +
    `${str('iss', f.iss)},"issued_before":${jsonNumber(f.issuedBefore)},"expires_at":${jsonNumber(f.expiresAt)}` +
    `${str('reason', f.reason)},"msg":"revocation ${f.action}"}\n`
  )
}
