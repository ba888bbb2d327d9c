// One span and one audit line per decision.
//
//   const trace = recorder.start(req)                    // lapse.authorize, child of the incoming traceparent
//   recorder.decided(trace, outcome)                     // attributes, metrics
//   recorder.finish(trace, { status, upstreamFailure })  // at response end: span ends, audit line written
import type { IncomingMessage } from 'node:http'
import { context, propagation, ROOT_CONTEXT, SpanKind, SpanStatusCode, trace as traceApi, type Context, type Span, type Tracer } from '@opentelemetry/api'
import { ATTR_HTTP_REQUEST_METHOD, ATTR_HTTP_RESPONSE_STATUS_CODE, ATTR_HTTP_ROUTE, ATTR_URL_PATH, ATTR_ERROR_TYPE, ATTR_CLIENT_ADDRESS } from '@opentelemetry/semantic-conventions'
import type { Logger } from 'pino'
import type { Outcome } from '../pipeline/decide.js'
import type { Clock, Reason } from '../pipeline/types.js'
import * as A from './semconv.js'

export interface DecisionMetrics {
  recordDecision(attrs: { decision: string; reason: string; route: string }, durationMs: number): void
  recordRevocationLookup(durationMs: number): void
}

export interface RecorderOptions {
  readonly tracer: Tracer
  readonly log: Logger
  readonly clock: Clock
  readonly logAllows: 'all' | 'sampled' | 'none'
  readonly allowsSampleRate: number
  readonly metrics?: DecisionMetrics | undefined
  readonly random?: () => number
}

export interface RequestTrace {
  readonly span: Span
  /** Context whose active span is the decision span: the parent of child spans and of the upstream's traceparent. */
  readonly context: Context
  readonly startedMs: number
  readonly method: string
  path: string
  outcome: Outcome | undefined
  decidedMs: number | undefined
}

export interface Recorder {
  start(req: IncomingMessage): RequestTrace
  decided(trace: RequestTrace, outcome: Outcome): void
  finish(trace: RequestTrace, end: { status: number; upstreamFailure?: string | undefined; remoteAddress: string | undefined; note?: Record<string, unknown> }): void
  /** W3C trace context headers for the upstream, with the decision span as parent. */
  inject(trace: RequestTrace, headers: Record<string, unknown>): void
}

const headerGetter = {
  keys: (carrier: IncomingMessage['headers']) => Object.keys(carrier),
  get: (carrier: IncomingMessage['headers'], key: string) => carrier[key],
}

export function reasonOfOutcome(outcome: Outcome | undefined): Reason | 'unknown' {
  if (!outcome) return 'unknown'
  return outcome.decision.allow ? 'ok' : outcome.decision.reason
}

export function createRecorder(opts: RecorderOptions): Recorder {
  const random = opts.random ?? Math.random
  const shouldLogAllow = () => opts.logAllows === 'all' || (opts.logAllows === 'sampled' && random() < opts.allowsSampleRate)

  return {
    start(req) {
      const parent = propagation.extract(ROOT_CONTEXT, req.headers, headerGetter)
      const span = opts.tracer.startSpan(A.SPAN_AUTHORIZE, { kind: SpanKind.SERVER, attributes: { [ATTR_HTTP_REQUEST_METHOD]: req.method ?? '' } }, parent)
      return { span, context: traceApi.setSpan(parent, span), startedMs: opts.clock.now(), method: req.method ?? '', path: '', outcome: undefined, decidedMs: undefined }
    },

    decided(t, outcome) {
      t.outcome = outcome
      t.decidedMs = opts.clock.now()
      const d = outcome.decision
      const reason = d.allow ? 'ok' : d.reason
      const route = d.rule?.id ?? ''
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
      }
      opts.metrics?.recordDecision({ decision: d.allow ? 'allow' : 'deny', reason, route }, t.decidedMs - t.startedMs)
      if (outcome.revocationMs !== undefined) opts.metrics?.recordRevocationLookup(outcome.revocationMs)
    },

    finish(t, end) {
      const span = t.span
      const d = t.outcome?.decision
      span.setAttribute(ATTR_HTTP_RESPONSE_STATUS_CODE, end.status)
      if (end.remoteAddress) span.setAttribute(ATTR_CLIENT_ADDRESS, end.remoteAddress)
      // A denial is an expected outcome; only proxy faults mark the span as an error.
      const fault = end.upstreamFailure ?? (end.status === 503 && d && !d.allow ? d.reason : undefined)
      if (fault) {
        span.setStatus({ code: SpanStatusCode.ERROR })
        span.setAttribute(ATTR_ERROR_TYPE, fault)
      }
      span.end()
      if (d?.allow && !d.failedOpen && !shouldLogAllow()) return
      const ctx = span.spanContext()
      const id = d?.identity
      opts.log.info({
        audit: 'decision',
        trace_id: ctx.traceId,
        span_id: ctx.spanId,
        decision: d ? (d.allow ? 'allow' : 'deny') : 'deny',
        reason: reasonOfOutcome(t.outcome),
        failed_open: d?.allow && d.failedOpen ? true : undefined,
        route: d?.rule?.path,
        method: t.method,
        path: t.path || undefined,
        status: end.status,
        upstream_failure: end.upstreamFailure,
        sub: id?.sub,
        client_id: id?.clientId,
        jti: id?.jti,
        iat: id?.iatS,
        exp: id?.expS,
        remote: end.remoteAddress,
        latency_ms: Math.round((opts.clock.now() - t.startedMs) * 1000) / 1000,
        ...end.note,
      }, 'decision')
    },

    inject(t, headers) {
      propagation.inject(t.context, headers)
    },
  }
}

export { context }
