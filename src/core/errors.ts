// Every error Lapse raises itself is a LapseError with one of these stable codes; docs/errors.md
// says what to do about each (test/docs/contract.test.ts keeps the two in step). Callers tell
// errors apart by `code`, never by `message`.
//
//   throw new LapseError('ERR_RULES_INVALID', 'LAPSE_ROUTES: …')

/**
 * Lapse's own codes. Library codes (jose's `ERR_JW*`, Node's, undici's `UND_ERR_*`) are not
 * listed: they are translated where they arise, in tables keyed by the library's code.
 */
export const ERROR_CODES = [
  // Start-up: printed as `lapse: <code> <message>`, exit 2.
  'ERR_CONFIG_INVALID',
  'ERR_CONFIG_FILE',
  'ERR_RULES_INVALID',
  'ERR_RULES_DUPLICATE',
  'ERR_KEYS_INVALID',
  'ERR_LISTEN',
  // A rotated TLS certificate, key or CA that could not be applied: logged, the last good one stays.
  'ERR_TLS_RELOAD',
  // A JWKS refresh that failed: logged, the last good key set stays.
  'ERR_JWKS_HTTP_STATUS',
  'ERR_JWKS_TOO_LARGE',
  'ERR_JWKS_INVALID',
  'ERR_JWKS_NO_USABLE_KEY',
  // A lookup that could not answer: the request gets a 503, the span carries the code.
  'ERR_KEYS_UNAVAILABLE',
  'ERR_REVOCATION_UNAVAILABLE',
  'ERR_REPLAY_UNAVAILABLE',
  // An upstream exchange that stopped early: logged with the 502/504 it was answered.
  'ERR_UPSTREAM_TIMEOUT',
  'ERR_UPSTREAM_BAD_HANDSHAKE',
  'ERR_CLIENT_GONE',
  // Telemetry that could not start: a warning, Lapse runs without spans or metrics.
  'ERR_OTEL_GLOBALS_TAKEN',
] as const

export type ErrorCode = (typeof ERROR_CODES)[number]

export class LapseError extends Error {
  constructor(
    readonly code: ErrorCode,
    message: string,
    options?: ErrorOptions,
  ) {
    super(message, options)
  }
}
