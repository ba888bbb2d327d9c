// The audit lines, built as text: one per decision and one per revocation change
// (docs/telemetry.md#the-audit-log lists every field).
//
//   out.write(decisionLine({ audit fields… }))   // '{"level":"info","time":…,"msg":"decision"}\n'
//
// The same text pino wrote for them before (field order, omitted undefined fields, JSON escaping);
// test/telemetry/audit-line.test.ts holds the two to each other. Built without a logger because
// the line per request was the largest cost Lapse added to a request (bench/README.md, issue 27).
import { jsonNumber, jsonString, jsonValue, lineHead } from './json-line.js'

/** Where audit lines go: Lapse's stdout sink (line-sink.ts), or any stream a test gives pino. */
export interface LineOut {
  write(line: string): unknown
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
  readonly sub: string | undefined
  readonly clientId: string | undefined
  readonly jti: string | undefined
  readonly iat: number | undefined
  readonly exp: number | undefined
  readonly binding: string | undefined
  readonly keyThumbprint: string | undefined
  readonly use: number | undefined
  readonly maxUses: number | undefined
  readonly remote: string | undefined
  readonly latencyMs: number
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

export function decisionLine(f: DecisionLineFields): string {
  return (
    `${lineHead('info')}"audit":"decision"${str('trace_id', f.traceId)}${str('span_id', f.spanId)}` +
    `,"decision":"${f.decision}","reason":${jsonString(f.reason)}${f.failedOpen ? ',"failed_open":true' : ''}` +
    `${str('route', f.route)},"method":${jsonString(f.method)}${str('path', f.path)}${num('status', f.status)}` +
    `${str('upstream_failure', f.upstreamFailure)}${str('answer', f.answer)}` +
    `${str('sub', f.sub)}${str('client_id', f.clientId)}${str('jti', f.jti)}${num('iat', f.iat)}${num('exp', f.exp)}` +
    `${str('binding', f.binding)}${str('key_thumbprint', f.keyThumbprint)}${num('use', f.use)}${num('max_uses', f.maxUses)}` +
    `${str('remote', f.remote)},"latency_ms":${jsonNumber(f.latencyMs)}${extra(f.note)},"msg":"decision"}\n`
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
