// The rows of issue 7. `server` names a fleet member, `auth` what each request carries: one
// token reused (a verification-cache hit for Lapse), or a fresh token per request from a pool.
// Rows 1 and 2 carry the same Authorization header unchecked, so every row moves the same bytes
// and the ratios price the checking alone.
//
// Row 2 is always the floor on the forwarding engine Lapse itself uses; row 2x is the other
// engine, kept so the engine can be chosen by measurement.
/** Rows 3f and 7f: under a third of row 3's capacity on the slowest machine this ran on. */
export const FIXED_RATE = 2000
/** Row 3b's path: the bench token's client_id in the captured segment, as long as every other row's /v1/items. */
export const BOUND_PATH = '/v1/bench'

export function defineRows({ engine }) {
  const floors = {
    'http-proxy': { server: 'floor-http-proxy', label: 'http-proxy pass-through, keep-alive agent, no auth' },
    undici: { server: 'floor-undici', label: 'undici Pool pass-through, no auth' },
  }
  const other = engine === 'undici' ? 'http-proxy' : 'undici'
  return [
    { id: '1', label: 'direct to the upstream (ceiling)', server: 'upstream', auth: 'token' },
    { id: '2', label: `${floors[engine].label} (floor)`, server: floors[engine].server, auth: 'token' },
    { id: '2x', label: `${floors[other].label} (other engine)`, server: floors[other].server, auth: 'token' },
    { id: '3', label: 'Lapse, one RS256 token (cache hit), memory set', server: 'lapse-mem', auth: 'token' },
    // Row 3 with issue 24's route binding: the rule captures a path segment and binds it to the
    // token's client_id (`bench`), so every request pays the capture and the comparison and
    // forwards X-Auth-Bound-Client. The path is as long as row 3's, so only the check differs.
    {
      id: '3b',
      label: 'row 3 with a path capture bound to a claim (/v1/{client}, client_id)',
      server: 'lapse-bound',
      auth: 'token',
      path: BOUND_PATH,
    },
    // Row 3 as shipped: an audit line for every allow (LAPSE_LOG_ALLOWS=all), to a file.
    { id: '3l', label: 'row 3 with an audit line per allow (the default)', server: 'lapse-mem-audit', auth: 'token' },
    // Row 3l with Lapse's stdout on /dev/null: the line built, batched and written, without the
    // file system's work on every write. Beside row 3l it tells the line from the sink.
    {
      id: '3ln',
      label: "row 3l with Lapse's stdout on /dev/null (the line without the file write)",
      server: 'lapse-mem-audit-null',
      auth: 'token',
      optional: true,
    },
    { id: '4a', label: 'Lapse, one RS256 token, Redis set + local cache', server: 'lapse-redis-cache', auth: 'token' },
    { id: '4b', label: 'Lapse, one RS256 token, Redis set, no local cache', server: 'lapse-redis-nocache', auth: 'token' },
    {
      id: '4u',
      label: 'Lapse, one RS256 token, Redis set + local cache, route with max_uses (one Redis write per request)',
      server: 'lapse-redis-uses',
      auth: 'token',
    },
    { id: '5r', label: 'Lapse, fresh RS256 token per request (pool)', server: 'lapse-verify', auth: 'pool', alg: 'RS256' },
    { id: '5e', label: 'Lapse, fresh ES256 token per request (pool)', server: 'lapse-verify', auth: 'pool', alg: 'ES256' },
    // Row 3 over TLS with a client certificate and a token bound to it (RFC 8705): the handshake
    // is paid once per keep-alive connection, then TLS records and the binding check per request.
    { id: '3m', label: 'row 3 over TLS, client certificate, certificate-bound token', server: 'lapse-mtls', auth: 'mtls', optional: true },
    { id: '6', label: 'fastify + @fastify/http-proxy + @fastify/jwt, RS256', server: 'fastify', auth: 'token' },
    { id: '6c', label: 'row 6 with fast-jwt verify cache on (not default)', server: 'fastify-cache', auth: 'token', optional: true },
    // Row 7 is measured once Lapse has stopped recording spans for the dead collector (run.mjs
    // waits for that under load); row 7r is the price of recording them for a live one.
    { id: '7', label: 'Lapse, telemetry on, collector unreachable', server: 'lapse-otel', auth: 'token', settle: 'spans-paused' },
    { id: '7r', label: 'Lapse, telemetry on, collector taking every span', server: 'lapse-otel-live', auth: 'token' },
    // The same two servers at a fixed load well below either's capacity: the latency a client sees
    // with telemetry on and the collector gone, not the capacity it costs (rows 3 and 7).
    { id: '3f', label: `row 3 at a fixed ${FIXED_RATE} req/s (latency)`, server: 'lapse-mem', auth: 'token', rate: FIXED_RATE },
    // Row 4b's latency at that load: every request waits for a Redis read, batched per turn of the loop.
    {
      id: '4bf',
      label: `row 4b at a fixed ${FIXED_RATE} req/s (latency)`,
      server: 'lapse-redis-nocache',
      auth: 'token',
      rate: FIXED_RATE,
      optional: true,
    },
    // Row 8: a DPoP-bound token (reused, a verification-cache hit) with a new proof on every
    // request: one proof verification and one replay-cache write per request (memory set).
    { id: '8', label: 'Lapse, one DPoP-bound RS256 token (cache hit), a new ES256 proof per request', server: 'lapse-mem', auth: 'dpop' },
    {
      id: '7f',
      label: `row 7 at a fixed ${FIXED_RATE} req/s (latency)`,
      server: 'lapse-otel',
      auth: 'token',
      rate: FIXED_RATE,
      settle: 'spans-paused',
    },
    // Lapse as the decision service of an nginx the platform already runs (docs/ingress.md): nginx
    // alone, then nginx with auth_request → Lapse through the shipped snippets. Row na's ratio to
    // row n is the price of the decision API; the extra sub-request is paid in nginx's worker (a
    // second upstream exchange per request) and in Lapse's decision, not in the upstream.
    { id: 'n', label: 'nginx alone, keep-alive to the upstream, no auth', server: 'nginx', auth: 'token' },
    { id: 'na', label: 'nginx + auth_request → Lapse decision API, one RS256 token', server: 'nginx-lapse', auth: 'token', vs: 'n' },
  ]
}

/**
 * Rows that run back to back in every round (in this order or its reverse), because a target
 * compares them: this host slows down in phases of tens of seconds, and two rows measured in the
 * same phase give a ratio that phase cannot move. Each target is judged on the median over the
 * rounds of that round's ratio (report.mjs).
 */
export const ADJACENT = [
  ['2', '3', '3b', '3l', '3ln', '7', '8'],
  ['3f', '7f'],
  ['n', 'na'],
]

/**
 * The units a round is shuffled in: each row with its "@base" twin, and the rows of an ADJACENT
 * group (when more than one of them runs) joined into one unit.
 */
export function adjacentGroups(runnable) {
  const units = new Map(runnable.filter((r) => !r.pairOf).map((r) => [r.id, [r, ...runnable.filter((b) => b.pairOf === r.id)]]))
  const groups = []
  for (const ids of ADJACENT) {
    const members = ids.filter((id) => units.has(id))
    if (members.length < 2) continue
    groups.push(members.flatMap((id) => units.get(id)))
    for (const id of members) units.delete(id)
  }
  return [...groups, ...units.values()]
}

/** Rows run by default: all but the optional ones. */
export const defaultRowIds = (rows) => rows.filter((r) => !r.optional).map((r) => r.id)
