// The audit lines built as text (src/telemetry/audit-line.ts) are the lines pino wrote before:
// the same head, the same fields in the same order, undefined ones left out, and every value as
// JSON.stringify writes it, whatever the strings hold (quotes, backslashes, control characters,
// non-ASCII, lone surrogates).
import fc from 'fast-check'
import pino from 'pino'
import t from 'tap'
import { decisionLine, msOfUs, revocationLine, type DecisionLineFields } from '../../src/telemetry/audit-line.js'
import { jsonString } from '../../src/telemetry/json-line.js'
import type { TokenMemo } from '../../src/core/types.js'

const TIME = /"time":"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"/

/** The line as one JSON.stringify of the documented fields would write it, time left out. */
function reference(f: DecisionLineFields): string {
  return `{"level":"info","time":"<t>","service":"lapse",${JSON.stringify({
    audit: 'decision',
    trace_id: f.traceId,
    span_id: f.spanId,
    decision: f.decision,
    reason: f.reason,
    failed_open: f.failedOpen ? true : undefined,
    route: f.route,
    method: f.method,
    path: f.path,
    status: f.status,
    upstream_failure: f.upstreamFailure,
    answer: f.answer,
    sub: f.token?.sub,
    client_id: f.token?.clientId,
    jti: f.token?.jti,
    iat: f.token?.iatS,
    exp: f.token?.expS,
    binding: f.binding,
    key_thumbprint: f.keyThumbprint,
    use: f.use,
    max_uses: f.maxUses,
    remote: f.remote,
    latency_ms: f.latencyUs / 1000,
    ...f.note,
    msg: 'decision',
  }).slice(1)}\n`
}

const untime = (line: string) => line.replace(TIME, '"time":"<t>"')

// Any text, including what JSON must escape and UTF-16 that is not well formed.
const text = fc.oneof(
  fc.string(),
  fc.string({ unit: 'binary' }),
  fc.string({ unit: fc.constantFrom('"', '\\', '\n', '\u0000', '\ud800', 'é', 'a') }),
)
const maybe = <T>(a: fc.Arbitrary<T>) => fc.option(a, { nil: undefined })
const number = fc.oneof(fc.integer(), fc.double(), fc.constantFrom(Number.NaN, Number.POSITIVE_INFINITY, -0))

const fields: fc.Arbitrary<DecisionLineFields> = fc.record({
  traceId: maybe(text),
  spanId: maybe(text),
  decision: fc.constantFrom('allow' as const, 'deny' as const),
  reason: text,
  failedOpen: fc.boolean(),
  route: maybe(text),
  method: text,
  path: maybe(text),
  status: maybe(fc.integer({ min: 100, max: 599 })),
  upstreamFailure: maybe(text),
  answer: maybe(text),
  token: maybe(
    fc.record({
      sub: maybe(text),
      clientId: maybe(text),
      jti: maybe(text),
      iatS: maybe(number),
      expS: number,
      // A fresh memo per token, as the verifier makes one.
      memo: fc.constant(undefined).map((): TokenMemo => ({})),
    }),
  ),
  binding: maybe(text),
  keyThumbprint: maybe(text),
  use: maybe(fc.integer()),
  maxUses: maybe(fc.integer()),
  remote: maybe(text),
  latencyUs: fc.oneof(fc.nat(), fc.integer(), number),
  note: maybe(
    fc.dictionary(
      // Not an array index: an object lists those first, whatever the order they were set in (the
      // recorder's notes are cut, connection, lived_ms, client_closed and decision_api).
      text.filter((k) => !['audit', 'msg', 'level', 'time', 'service'].includes(k) && !/^(0|[1-9]\d*)$/.test(k)),
      fc.oneof(text, number, fc.boolean(), fc.constant(undefined)),
      { maxKeys: 3 },
    ),
  ),
})

t.test('a decision line is the JSON.stringify of its fields, whatever they hold', async (t) => {
  fc.assert(
    fc.property(fields, (f) => {
      // Keys the fixed fields already have would move in an object; the recorder's notes never use them.
      if (f.note && Object.keys(f.note).some((k) => reference({ ...f, note: undefined }).includes(`${JSON.stringify(k)}:`))) return true
      return untime(decisionLine(f)) === reference(f)
    }),
    { numRuns: 2000 },
  )
  t.pass('2000 generated lines')
})

t.test("a token's fields are made once and its later lines are the same text", async (t) => {
  // Lines one after another, as a sidecar writes them: the same token and route again, and
  // between them other methods, statuses, remotes and tokens (the kept pieces must follow).
  const lines = fc.array(fields, { minLength: 2, maxLength: 8 })
  fc.assert(
    fc.property(lines, fc.nat(), (fs, pick) => {
      const again = fs[pick % fs.length]!
      for (const f of [...fs, again, { ...again, method: 'DELETE', status: 503, remote: '10.0.0.9' }]) {
        if (f.note !== undefined) continue
        if (untime(decisionLine(f)) !== reference(f)) return false
      }
      return true
    }),
    { numRuns: 500 },
  )
  const token = { sub: 'ci', clientId: 'deployer', jti: 'j-1', iatS: 1795589079, expS: 1795589379, memo: {} as TokenMemo }
  const f = (await fc.sample(fields, 1))[0]!
  const line = { ...f, token, use: undefined, upstreamFailure: undefined, answer: undefined, note: undefined }
  decisionLine(line)
  t.equal(token.memo.auditFields, undefined, "a token's first line keeps none of its text (it may be its only one)")
  t.equal(untime(decisionLine(line)), reference(line), 'its second line')
  t.equal(token.memo.auditFields, ',"sub":"ci","client_id":"deployer","jti":"j-1","iat":1795589079,"exp":1795589379', 'kept from then on')
  t.equal(untime(decisionLine(line)), reference(line), 'its third line, from the kept middle')
  t.equal(untime(decisionLine({ ...line, path: '/other' })), reference({ ...line, path: '/other' }), 'another path')
})

t.test('latency_ms: microseconds written as JSON.stringify writes them ÷ 1000', async (t) => {
  fc.assert(
    fc.property(
      fc.oneof(fc.nat(), fc.integer({ min: 0, max: 5000 }), fc.integer(), number),
      (us) => msOfUs(us) === JSON.stringify(us / 1000),
    ),
    { numRuns: 20000 },
  )
  for (const us of [0, 1, 10, 100, 1000, 1010, 1100, 1001, 999, 123456, 2 ** 31 - 1, 2 ** 31])
    t.equal(msOfUs(us), JSON.stringify(us / 1000), `${us} µs`)
})

t.test('jsonString is JSON.stringify', async (t) => {
  fc.assert(
    fc.property(text, (s) => jsonString(s) === JSON.stringify(s)),
    { numRuns: 5000 },
  )
  t.pass('5000 generated strings')
})

t.test('the lines pino wrote with main.ts createLogger: the same text but for the time', async (t) => {
  const written: string[] = []
  const log = pino(
    { level: 'info', base: { service: 'lapse' }, timestamp: pino.stdTimeFunctions.isoTime, formatters: { level: (l) => ({ level: l }) } },
    { write: (s: string) => void written.push(s) },
  )
  const f: DecisionLineFields = {
    traceId: '4bf92f3577b34da6a3ce929d0e0e4736',
    spanId: '8542f28cdbc9617e',
    decision: 'allow',
    reason: 'ok',
    failedOpen: false,
    route: '/orders/**',
    method: 'GET',
    path: '/orders/42 "ü"',
    status: 200,
    upstreamFailure: undefined,
    answer: undefined,
    token: {
      sub: 'ci-deployer',
      clientId: 'deploy-pipeline',
      jti: '17f9e53c-3f4e-4457-8631-00976803c8b0',
      iatS: 1795589079,
      expS: 1795589379,
      memo: {},
    },
    binding: undefined,
    keyThumbprint: undefined,
    use: 2,
    maxUses: 5,
    remote: '127.0.0.1',
    latencyUs: 4228,
    note: { cut: 'expired', connection: 'websocket', lived_ms: 30000 },
  }
  log.info(
    {
      audit: 'decision',
      trace_id: f.traceId,
      span_id: f.spanId,
      decision: f.decision,
      reason: f.reason,
      route: f.route,
      method: f.method,
      path: f.path,
      status: f.status,
      sub: f.token?.sub,
      client_id: f.token?.clientId,
      jti: f.token?.jti,
      iat: f.token?.iatS,
      exp: f.token?.expS,
      use: f.use,
      max_uses: f.maxUses,
      remote: f.remote,
      latency_ms: 4.228,
      ...f.note,
    },
    'decision',
  )
  t.equal(untime(decisionLine(f)), untime(written[0]!), 'a decision line')
  const e = {
    by: 'admin',
    claim: 'sub',
    value: 'contractor-7',
    issuedBeforeS: 1795589080,
    expiresAtS: 1795592710,
    reason: 'contract ended',
  }
  log.info(
    {
      audit: 'revocation',
      action: 'revoke',
      by: e.by,
      claim: e.claim,
      value: e.value,
      iss: undefined,
      issued_before: e.issuedBeforeS,
      expires_at: e.expiresAtS,
      reason: e.reason,
    },
    'revocation revoke',
  )
  t.equal(
    untime(
      revocationLine({
        traceId: undefined,
        spanId: undefined,
        action: 'revoke',
        by: e.by,
        claim: e.claim,
        value: e.value,
        iss: undefined,
        issuedBefore: e.issuedBeforeS,
        expiresAt: e.expiresAtS,
        reason: e.reason,
      }),
    ),
    untime(written[1]!),
    'a revocation line',
  )
})
