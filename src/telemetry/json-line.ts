// The pieces of a log line built without a logger: the head every line of Lapse starts with, and
// JSON values. Audit lines (audit-line.ts) and the stdout sink's own notices (line-sink.ts) use
// them; pino's operational lines have the same head (main.ts createLogger).
//
//   lineHead('info') + '"audit":"decision",…,"msg":"decision"}\n'
//   // {"level":"info","time":"2026-11-25T06:44:39.907Z","service":"lapse","audit":"decision",…}
//
// Why not JSON.stringify of one object per line: a line per request is the largest cost Lapse adds
// (issue 27); concatenating known keys and checking a value needs no escaping is a few times faster.

let second = Number.NaN
let secondText = ''
let headMs = Number.NaN
let headLevel = ''
let head = ''

/**
 * `{"level":"<level>","time":"<ISO 8601, ms>","service":"lapse",` for now: the ISO text of the
 * current second is made once a second, the milliseconds appended.
 */
export function lineHead(level: 'info' | 'warn'): string {
  const now = Date.now()
  // Several lines a millisecond under load: the last head is the next one's.
  if (now === headMs && level === headLevel) return head
  const s = Math.floor(now / 1000)
  if (s !== second) {
    second = s
    // "2026-11-25T06:44:39."
    secondText = new Date(s * 1000).toISOString().slice(0, 20)
  }
  const ms = now - s * 1000
  headMs = now
  headLevel = level
  head = `{"level":"${level}","time":"${secondText}${ms < 10 ? '00' : ms < 100 ? '0' : ''}${ms}Z","service":"lapse",`
  return head
}

// Printable ASCII but `"` and `\`: JSON text as it is. Anything else goes through JSON.stringify,
// which escapes control characters and lone surrogates.
const PLAIN = /^[\x20\x21\x23-\x5b\x5d-\x7e]*$/

/** `s` as a JSON string, exactly as JSON.stringify writes it. */
export function jsonString(s: string): string {
  return s.length <= 256 && PLAIN.test(s) ? `"${s}"` : JSON.stringify(s)
}

/** `n` as JSON.stringify writes it (`null` for NaN and the infinities). */
export function jsonNumber(n: number): string {
  return Number.isFinite(n) ? `${n}` : 'null'
}

/** Any value as JSON.stringify writes it; undefined when it writes nothing (undefined, a function). */
export function jsonValue(v: unknown): string | undefined {
  if (typeof v === 'string') return jsonString(v)
  if (typeof v === 'number') return jsonNumber(v)
  if (typeof v === 'boolean') return v ? 'true' : 'false'
  return JSON.stringify(v)
}
