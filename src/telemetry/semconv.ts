// Lapse's own span, attribute and metric names (DESIGN.md "Telemetry"): public interface, stable,
// never reused once retired. Standard ones come from @opentelemetry/semantic-conventions as ATTR_*.

// Spans: one per decision, and one per I/O step the decision waited on (its children).
export const SPAN_AUTHORIZE = 'lapse.authorize'
export const SPAN_JWKS_FETCH = 'lapse.jwks.fetch'
export const SPAN_REVOCATION_LOOKUP = 'lapse.revocation.lookup'
// One per revocation written or lifted through the admin API, child of the caller's traceparent.
export const SPAN_REVOCATION_CHANGE = 'lapse.revocation.change'

// Decision span attributes (also the labels of the decision metrics).
export const ATTR_DECISION = 'lapse.decision'
export const ATTR_REASON = 'lapse.reason'
export const ATTR_ROUTE = 'lapse.route'
export const ATTR_CLIENT_ID = 'lapse.client_id'
export const ATTR_TOKEN_JTI = 'lapse.token.jti'
export const ATTR_TOKEN_EXPIRES_IN_S = 'lapse.token.expires_in_s'
export const ATTR_SCOPES_REQUIRED = 'lapse.scopes.required'
export const ATTR_FAILED_OPEN = 'lapse.failed_open'
/** The sender constraint the request proved: `dpop` or `mtls`. */
export const ATTR_TOKEN_BINDING = 'lapse.token.binding'
/** Its key's thumbprint: the JWK SHA-256 thumbprint (DPoP) or the certificate's x5t#S256 (mTLS). Never the proof. */
export const ATTR_TOKEN_KEY_THUMBPRINT = 'lapse.token.key_thumbprint'
export const ATTR_ENDUSER_ID = 'enduser.id'

// Step span attributes.
export const ATTR_REVOKED = 'lapse.revocation.revoked'
export const ATTR_REVOCATION_BACKEND = 'lapse.revocation.backend'
export const ATTR_REVOCATION_PERSISTENCE = 'lapse.revocation.persistence'

// Revocation change span attributes: what the audit line says, but the free-text reason.
/** `revoke` or `lift`. */
export const ATTR_REVOCATION_ACTION = 'lapse.revocation.action'
export const ATTR_REVOCATION_CLAIM = 'lapse.revocation.claim'
export const ATTR_REVOCATION_VALUE = 'lapse.revocation.value'
/** The entry's issuer; absent for an entry that binds every issuer. */
export const ATTR_REVOCATION_ISS = 'lapse.revocation.iss'
/** The admin token's name (`LAPSE_ADMIN_TOKEN_NAME`), `(cli)` appended when `lapse revoke` wrote it. */
export const ATTR_REVOCATION_BY = 'lapse.revocation.by'

// Metrics. Durations are in seconds, as OpenTelemetry's semantic conventions ask (the Prometheus
// text keeps the name without a unit suffix: `lapse_decision_duration_bucket`).
export const METRIC_DECISIONS = 'lapse.decisions'
export const METRIC_DECISION_DURATION = 'lapse.decision.duration'
export const METRIC_REVOCATION_LOOKUP_DURATION = 'lapse.revocation.lookup.duration'
export const METRIC_JWKS_KEYS = 'lapse.jwks.keys'
export const METRIC_JWKS_REFRESH_AGE = 'lapse.jwks.refresh.age'
export const METRIC_REVOCATION_BACKEND_UP = 'lapse.revocation.backend.up'
export const METRIC_REVOCATION_PERSISTENT = 'lapse.revocation.persistent'
export const METRIC_TOKEN_CACHE_SIZE = 'lapse.token_cache.size'
export const METRIC_SPANS_UNRECORDED = 'lapse.telemetry.spans.unrecorded'
/** Audit and log lines the stdout sink dropped while stdout took none (telemetry/line-sink.ts). */
export const METRIC_LOG_LINES_DROPPED = 'lapse.log.lines.dropped'
/** Allows let through while the revocation set (or the use counter) could not answer: on_revocation_unavailable: open. */
export const METRIC_FAILED_OPEN = 'lapse.decisions.failed_open'
/** 1 while the revocation event channel delivers (Redis: subscribed, heartbeat fresh; memory: always). */
export const METRIC_REVOCATION_EVENTS_UP = 'lapse.revocation.events.up'
/** 1 while revocation checks may answer from the local cache. */
export const METRIC_REVOCATION_CACHE_ACTIVE = 'lapse.revocation.cache.active'
/** Long-lived exchanges (WebSockets, streamed responses) registered for cuts. */
export const METRIC_CONNECTIONS_OPEN = 'lapse.connections.open'
/** Long-lived exchanges cut because their token lapsed, by `lapse.connection.cut` and kind. */
export const METRIC_CONNECTIONS_CUT = 'lapse.connections.cut'
export const METRIC_CONFIG_RELOADS = 'lapse.config.reloads'
// The unit is in the name, as Prometheus writes timestamps (`…_timestamp_seconds`).
export const METRIC_CONFIG_LAST_RELOAD_SUCCESS = 'lapse.config.last_reload_success_timestamp_seconds'
/** Of lapse.config.reloads: `ok` or `error`. Bare, as Prometheus users read it: `{result="error"}`. */
export const ATTR_RELOAD_RESULT = 'result'

/** Why a WebSocket or streamed response was closed by Lapse: `expired` or `revoked`. */
export const ATTR_CONNECTION_CUT = 'lapse.connection.cut'
/** `websocket` or `stream`. */
export const ATTR_CONNECTION_KIND = 'lapse.connection.kind'
/** How long the exchange lived before the cut, milliseconds. */
export const ATTR_CONNECTION_LIVED_MS = 'lapse.connection.lived_ms'
