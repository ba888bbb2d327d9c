// One span, one metric update and one audit line per decision.
//
//   const trace = recorder.start(req)                    // lapse.authorize, child of the incoming traceparent
//   await decide({ …, steps: trace.steps }, deps)        // key fetch and revocation lookup become child spans
//   recorder.decided(trace, outcome)                     // attributes, metrics
//   recorder.inject(trace, req.headers)                  // the upstream's traceparent: parent = the decision span
//   recorder.finish(trace, { status, upstreamFailure })  // at response end: span ends, audit line written
//
// Nothing here waits on an exporter: spans end into the SDK's batch processor and audit lines,
// built as text (audit-line.ts), into the logger's destination: the stdout sink (line-sink.ts).
// No token, signature or raw query string is ever written: only claims Lapse has verified (sub,
// client_id, jti, iat, exp) and the normalized path.
import type { TLSSocket } from 'node:tls'
import type { IncomingHttpHeaders, IncomingMessage } from 'node:http'
import { performance } from 'node:perf_hooks'
import { W3CTraceContextPropagator } from '@opentelemetry/core'
import {
  INVALID_SPAN_CONTEXT,
  ROOT_CONTEXT,
  SpanKind,
  SpanStatusCode,
  defaultTextMapGetter,
  defaultTextMapSetter,
  isSpanContextValid,
  trace as traceApi,
  type Attributes,
  type Context,
  type Span,
  type TextMapPropagator,
  type Tracer,
} from '@opentelemetry/api'
import {
  ATTR_CLIENT_ADDRESS,
  ATTR_ERROR_TYPE,
  ATTR_HTTP_REQUEST_METHOD,
  ATTR_HTTP_REQUEST_METHOD_ORIGINAL,
  ATTR_HTTP_RESPONSE_STATUS_CODE,
  ATTR_HTTP_ROUTE,
  ATTR_NETWORK_PROTOCOL_VERSION,
  ATTR_URL_PATH,
  ATTR_URL_SCHEME,
} from '@opentelemetry/semantic-conventions'
import pino, { type Logger } from 'pino'
import type { AnswerName } from '../core/answers.js'
import type { Clock, Outcome, Reason, RevocationEntry, Step, StepTracer } from '../core/types.js'
import { decisionLine, revocationLine, type LineOut } from './audit-line.js'
import * as A from './semconv.js'

/** What the recorder reports per decision; telemetry/metrics.ts implements it over OTel instruments. */
export interface DecisionMetrics {
  recordDecision(attrs: { decision: string; reason: string; route: string; httpRoute: string }, durationMs: number): void
  recordRevocationLookup(durationMs: number): void
  /** An allow with `failedOpen`. */
  recordFailedOpen?(attrs: { route: string; httpRoute: string }): void
  /** A long-lived exchange cut because its token lapsed. */
  recordCut?(reason: string, kind: string): void
}

export interface RecorderOptions {
  readonly tracer: Tracer
  /** False when `tracer` is known to be a no-op (telemetry off): spans and context work are skipped. */
  readonly tracing?: boolean | undefined
  readonly log: Logger
  /** Where audit lines go; the destination `log` writes to when absent. */
  readonly lines?: LineOut | undefined
  readonly clock: Clock
  readonly logAllows: 'all' | 'sampled' | 'none'
  readonly allowsSampleRate: number
  readonly metrics?: DecisionMetrics | undefined
  /** How trace context is read from the client and written to the upstream; W3C `traceparent` by default. */
  readonly propagator?: TextMapPropagator | undefined
  readonly random?: () => number
}

export interface RequestTrace {
  readonly span: Span
  /** Context whose active span is the decision span: the parent of child spans and of the upstream's traceparent. */
  readonly context: Context
  /** Times the decision's I/O, and makes each a child span when the decision span is recorded. */
  readonly steps: StepTracer
  readonly startedMs: number
  /** Monotonic, sub-millisecond: durations are measured with performance.now(), not the injected clock. */
  readonly startedPerfMs: number
  lookupMs: number | undefined
  readonly method: string
  path: string
  outcome: Outcome | undefined
  decidedMs: number | undefined
}

export interface Recorder {
  /** `method`: the request's method as decided, when it is not `req.method` (a decision request names the original's). */
  start(req: IncomingMessage, method?: string): RequestTrace
  decided(trace: RequestTrace, outcome: Outcome): void
  /**
   * `status` undefined: no answer reached the client (it left first); the span gets no status code.
   * `answer`: the answer Lapse wrote that was not the decision's (core/answers.ts), other than an
   * upstream failure's, which `upstreamFailure` names.
   */
  finish(trace: RequestTrace, end: ExchangeEnd): void
  /** W3C trace context headers for the upstream, with the decision span as parent. */
  inject(trace: RequestTrace, headers: Record<string, unknown>): void
  /**
   * A revocation write or lift on the admin API: starts its `lapse.revocation.change` span, child of
   * the caller's traceparent. `done` ends it and writes the audit line, which carries its trace id
   * like a decision line does; `ended` ends it with no audit line (nothing changed), as a fault
   * when given one (the revocation set failed).
   */
  revocationChange(headers: IncomingHttpHeaders, action: 'revoke' | 'lift'): RevocationChangeTrace
}

export interface ExchangeEnd {
  readonly status: number | undefined
  readonly upstreamFailure?: string | undefined
  readonly answer?: AnswerName | undefined
  readonly remoteAddress: string | undefined
  readonly note?: Record<string, unknown> | undefined
}

export interface RevocationChangeTrace {
  done(entry: RevocationEntry): void
  ended(fault?: string): void
}

// HTTP semantic conventions: methods outside this set are reported as `_OTHER` (bounded cardinality).
const KNOWN_METHODS = new Set(['GET', 'HEAD', 'POST', 'PUT', 'DELETE', 'CONNECT', 'OPTIONS', 'TRACE', 'PATCH', 'QUERY'])

// Only Lapse's own 5xx answers are faults; a denial is an expected outcome (STYLE.md "Telemetry").
const FAULT_STATUSES = new Set([502, 503, 504])

const STEP_SPANS: Record<Step, string> = {
  jwks_fetch: A.SPAN_JWKS_FETCH,
  revocation_lookup: A.SPAN_REVOCATION_LOOKUP,
}

export function reasonOfOutcome(outcome: Outcome | undefined): Reason | 'unknown' {
  if (!outcome) return 'unknown'
  return outcome.decision.allow ? 'ok' : outcome.decision.reason
}

/** An error's stable code for `error.type`; never its message, which may quote a URL or a value. */
export function errorType(err: unknown): string {
  const code = (err as { code?: unknown } | undefined)?.code
  if (typeof code === 'string' && /^[A-Za-z0-9_.-]{1,64}$/.test(code)) return code
  const name = (err as { name?: unknown } | undefined)?.name
  return typeof name === 'string' && /^[A-Za-z0-9_.-]{1,64}$/.test(name) ? name : 'Error'
}

/**
 * Runs each step in a span under `parent`: the decision's context for request steps, the root
 * context for background work (a scheduled JWKS refresh is a trace of its own).
 */
export function createStepTracer(tracer: Tracer, parent: Context = ROOT_CONTEXT): StepTracer {
  return {
    run: (step, work) => runInSpan(tracer, parent, step, work),
    ran: (step, startedPerfMs, result) => recordRan(tracer, parent, step, startedPerfMs, performance.now(), result),
  }
}

async function runInSpan<T>(tracer: Tracer, parent: Context, step: Step, work: () => Promise<T>): Promise<T> {
  const span = tracer.startSpan(STEP_SPANS[step], { kind: SpanKind.INTERNAL }, parent)
  try {
    const result = await work()
    if (step === 'revocation_lookup' && typeof result === 'boolean') span.setAttribute(A.ATTR_REVOKED, result)
    return result
  } catch (err) {
    span.setStatus({ code: SpanStatusCode.ERROR })
    span.setAttribute(ATTR_ERROR_TYPE, errorType(err))
    throw err
  } finally {
    span.end()
  }
}

/** The span `runInSpan` would have made, for a step that already ran (times are performance.now()). */
function recordRan(tracer: Tracer, parent: Context, step: Step, startedPerfMs: number, endedPerfMs: number, result: unknown): void {
  const span = tracer.startSpan(STEP_SPANS[step], { kind: SpanKind.INTERNAL, startTime: startedPerfMs }, parent)
  if (step === 'revocation_lookup' && typeof result === 'boolean') span.setAttribute(A.ATTR_REVOKED, result)
  span.end(endedPerfMs)
}

/** One request's trace; it is its own StepTracer, so a request costs no closures for it. */
class Trace implements RequestTrace, StepTracer {
  readonly steps: StepTracer = this
  lookupMs: number | undefined = undefined
  path = ''
  outcome: Outcome | undefined = undefined
  decidedMs: number | undefined = undefined

  constructor(
    readonly span: Span,
    readonly context: Context,
    /** Set when the decision span records: steps become its child spans. */
    private readonly tracer: Tracer | undefined,
    readonly method: string,
    readonly startedMs: number,
    readonly startedPerfMs: number,
    /** The client's headers, read for its trace context only if an audit line needs it (tracing off). */
    readonly headers: IncomingMessage['headers'],
  ) {}

  async run<T>(step: Step, work: () => Promise<T>): Promise<T> {
    const startedMs = performance.now()
    try {
      return await (this.tracer ? runInSpan(this.tracer, this.context, step, work) : work())
    } finally {
      if (step === 'revocation_lookup') this.lookupMs = performance.now() - startedMs
    }
  }

  ran(step: Step, startedPerfMs: number, result: unknown): void {
    const endedPerfMs = performance.now()
    if (step === 'revocation_lookup') this.lookupMs = endedPerfMs - startedPerfMs
    if (this.tracer) recordRan(this.tracer, this.context, step, startedPerfMs, endedPerfMs, result)
  }
}

/** The stream a pino logger writes its lines to (pino.symbols.streamSym, the public name of it). */
export function destinationOf(log: Logger): LineOut | undefined {
  return (log as unknown as Record<symbol, LineOut | undefined>)[pino.symbols.streamSym]
}

/** The span of every request while tracing is off: records nothing, carries no context. */
const INERT_SPAN = traceApi.wrapSpanContext(INVALID_SPAN_CONTEXT)

export function createRecorder(opts: RecorderOptions): Recorder {
  const random = opts.random ?? Math.random
  const tracing = opts.tracing !== false
  const propagator = opts.propagator ?? new W3CTraceContextPropagator()
  const shouldLogAllow = () => opts.logAllows === 'all' || (opts.logAllows === 'sampled' && random() < opts.allowsSampleRate)
  // Audit lines are the record of who was let in; LAPSE_LOG_LEVEL quiets operational lines, not
  // them (only `silent` does). Denials are always written; allows as LAPSE_LOG_ALLOWS says.
  const log = opts.log
  // levelVal, not level: `level` maps the number back to its name on every read (a profile showed it).
  const auditing = () => log.levelVal !== Number.POSITIVE_INFINITY
  // Written as text straight to the logger's destination, in its place among pino's lines.
  const out: LineOut | undefined = opts.lines ?? destinationOf(log)
  const traceHeaders = propagator.fields().map((name) => name.toLowerCase())
  const clientSpanContext = (headers: IncomingHttpHeaders) => {
    for (const name of traceHeaders) {
      if (headers[name] !== undefined) {
        return traceApi.getSpanContext(propagator.extract(ROOT_CONTEXT, headers, defaultTextMapGetter)) ?? INVALID_SPAN_CONTEXT
      }
    }
    return INVALID_SPAN_CONTEXT
  }

  return {
    start(req, method = req.method ?? '') {
      if (!tracing) return new Trace(INERT_SPAN, ROOT_CONTEXT, undefined, method, opts.clock.now(), performance.now(), req.headers)
      const parent = propagator.extract(ROOT_CONTEXT, req.headers, defaultTextMapGetter)
      const attributes: Attributes = {
        [ATTR_HTTP_REQUEST_METHOD]: KNOWN_METHODS.has(method) ? method : '_OTHER',
        [ATTR_URL_SCHEME]: (req.socket as TLSSocket | undefined)?.encrypted === true ? 'https' : 'http',
        [ATTR_NETWORK_PROTOCOL_VERSION]: req.httpVersion,
      }
      if (!KNOWN_METHODS.has(method)) attributes[ATTR_HTTP_REQUEST_METHOD_ORIGINAL] = method
      const span = opts.tracer.startSpan(A.SPAN_AUTHORIZE, { kind: SpanKind.SERVER, attributes }, parent)
      const context = traceApi.setSpan(parent, span)
      return new Trace(
        span,
        context,
        span.isRecording() ? opts.tracer : undefined,
        method,
        opts.clock.now(),
        performance.now(),
        req.headers,
      )
    },

    decided(t, outcome) {
      t.outcome = outcome
      t.decidedMs = opts.clock.now()
      const d = outcome.decision
      const reason = d.allow ? 'ok' : d.reason
      if (outcome.target) t.path = outcome.target.path
      const span = t.span
      if (span.isRecording()) {
        span.setAttribute(A.ATTR_DECISION, d.allow ? 'allow' : 'deny')
        span.setAttribute(A.ATTR_REASON, reason)
        if (d.rule) {
          span.setAttribute(A.ATTR_ROUTE, d.rule.id)
          span.setAttribute(ATTR_HTTP_ROUTE, d.rule.path)
          if (d.rule.scopes.length) span.setAttribute(A.ATTR_SCOPES_REQUIRED, d.rule.scopes.join(' '))
        }
        if (outcome.target) span.setAttribute(ATTR_URL_PATH, outcome.target.path)
        const id = d.identity
        if (id) {
          if (id.sub !== undefined) span.setAttribute(A.ATTR_ENDUSER_ID, id.sub)
          if (id.clientId !== undefined) span.setAttribute(A.ATTR_CLIENT_ID, id.clientId)
          if (id.jti !== undefined) span.setAttribute(A.ATTR_TOKEN_JTI, id.jti)
          span.setAttribute(A.ATTR_TOKEN_EXPIRES_IN_S, id.expS - Math.floor(t.decidedMs / 1000))
        }
        if (d.allow && d.failedOpen) span.setAttribute(A.ATTR_FAILED_OPEN, true)
        if (d.allow && d.binding) {
          span.setAttribute(A.ATTR_TOKEN_BINDING, d.binding.kind)
          span.setAttribute(A.ATTR_TOKEN_KEY_THUMBPRINT, d.binding.thumbprint)
        }
      }
      if (opts.metrics) {
        const labels = { decision: d.allow ? 'allow' : 'deny', reason, route: d.rule?.id ?? '', httpRoute: d.rule?.path ?? '' }
        opts.metrics.recordDecision(labels, performance.now() - t.startedPerfMs)
        const lookupMs = t.lookupMs ?? outcome.revocationMs
        if (lookupMs !== undefined) opts.metrics.recordRevocationLookup(lookupMs)
        if (d.allow && d.failedOpen) opts.metrics.recordFailedOpen?.(labels)
      }
    },

    finish(t, end) {
      const span = t.span
      const d = t.outcome?.decision
      if (span.isRecording()) {
        if (end.status !== undefined) span.setAttribute(ATTR_HTTP_RESPONSE_STATUS_CODE, end.status)
        if (end.remoteAddress) span.setAttribute(ATTR_CLIENT_ADDRESS, end.remoteAddress)
        // 502/504 (upstream down or slow), Lapse's own 503 (fail closed) and its 500 (a bug); an
        // upstream's own 503 passed through on an allowed request is the upstream's story, not ours.
        const fault =
          end.upstreamFailure ??
          (end.answer === 'internal_error'
            ? end.answer
            : d && !d.allow && end.status !== undefined && FAULT_STATUSES.has(end.status)
              ? d.reason
              : undefined)
        if (fault) {
          span.setStatus({ code: SpanStatusCode.ERROR })
          span.setAttribute(ATTR_ERROR_TYPE, fault)
        }
      }
      // A long-lived exchange cut because its token lapsed says why and after how long, on the
      // span and in an audit line that sampling never drops.
      const note = end.note
      const cut = note?.cut
      if (cut !== undefined) opts.metrics?.recordCut?.(String(cut), String(note?.connection))
      if (cut !== undefined && span.isRecording()) {
        span.setAttribute(A.ATTR_CONNECTION_CUT, String(cut))
        span.setAttribute(A.ATTR_CONNECTION_KIND, String(note?.connection))
        span.setAttribute(A.ATTR_CONNECTION_LIVED_MS, Number(note?.lived_ms))
      }
      span.end()
      if (d?.allow && !d.failedOpen && cut === undefined && !shouldLogAllow()) return
      if (!auditing()) return
      // Tracing off: the line still names the client's trace, as the upstream sees it (most
      // requests carry none: the propagator is not asked unless one of its headers came).
      const ctx = tracing ? span.spanContext() : clientSpanContext((t as Trace).headers)
      const traced = ctx !== INVALID_SPAN_CONTEXT && isSpanContextValid(ctx)
      out?.write(
        decisionLine({
          traceId: traced ? ctx.traceId : undefined,
          spanId: traced ? ctx.spanId : undefined,
          decision: d?.allow ? 'allow' : 'deny',
          reason: reasonOfOutcome(t.outcome),
          failedOpen: d?.allow === true && d.failedOpen === true,
          route: d?.rule?.path,
          method: t.method,
          path: t.path || undefined,
          status: end.status,
          upstreamFailure: end.upstreamFailure,
          answer: end.answer,
          token: d?.identity,
          binding: d?.allow ? d.binding?.kind : undefined,
          keyThumbprint: d?.allow ? d.binding?.thumbprint : undefined,
          // Under a rule with max_uses: which use this was (the refused one for token_reused).
          use: d?.use,
          maxUses: d?.rule?.binding?.maxUses,
          remote: end.remoteAddress,
          latencyUs: Math.round((performance.now() - t.startedPerfMs) * 1000),
          note: end.note,
        }),
      )
    },

    inject(t, headers) {
      // Tracing off: the client's trace context is already among the forwarded headers.
      if (tracing) propagator.inject(t.context, headers, defaultTextMapSetter)
    },

    revocationChange(headers, action) {
      const parent = propagator.extract(ROOT_CONTEXT, headers, defaultTextMapGetter)
      const span = tracing
        ? opts.tracer.startSpan(
            A.SPAN_REVOCATION_CHANGE,
            { kind: SpanKind.SERVER, attributes: { [A.ATTR_REVOCATION_ACTION]: action } },
            parent,
          )
        : INERT_SPAN
      return {
        done(e) {
          if (span.isRecording()) {
            span.setAttribute(A.ATTR_REVOCATION_CLAIM, e.claim)
            span.setAttribute(A.ATTR_REVOCATION_VALUE, e.value)
            if (e.iss !== undefined) span.setAttribute(A.ATTR_REVOCATION_ISS, e.iss)
            span.setAttribute(A.ATTR_REVOCATION_BY, e.by)
          }
          span.end()
          // Tracing off: the line still names the caller's trace, as a decision line does.
          const ctx = tracing ? span.spanContext() : (traceApi.getSpanContext(parent) ?? INVALID_SPAN_CONTEXT)
          const traced = ctx !== INVALID_SPAN_CONTEXT && isSpanContextValid(ctx)
          if (!auditing()) return
          out?.write(
            revocationLine({
              traceId: traced ? ctx.traceId : undefined,
              spanId: traced ? ctx.spanId : undefined,
              action,
              by: e.by,
              claim: e.claim,
              value: e.value,
              iss: e.iss,
              issuedBefore: e.issuedBeforeS,
              expiresAt: e.expiresAtS,
              reason: e.reason,
            }),
          )
        },
        ended(fault) {
          if (fault !== undefined && span.isRecording()) {
            span.setStatus({ code: SpanStatusCode.ERROR })
            span.setAttribute(ATTR_ERROR_TYPE, fault)
          }
          span.end()
        },
      }
    },
  }
}
