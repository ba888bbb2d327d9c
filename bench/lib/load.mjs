// The load generator, one process per measurement (pinned apart from the servers): autocannon at
// a fixed concurrency for a bounded time, with a fine-grained latency histogram of our own
// (autocannon's own histogram has 1 ms resolution, too coarse for a "+1 ms p99" target).
//
//   node lib/load.mjs <config.json>   → prints one JSON result on stdout
//   config: { url, connections, durationS, token?, tokenFile?, dpop?: { token, keyFile }, rate?, tls? }   rate: requests/s over all connections; tls: lib/pki.mjs files
import { readFileSync } from 'node:fs'
import autocannon from 'autocannon'
import { proofSigner } from './dpop.mjs'
import { clientTls } from './pki.mjs'

const cfg = JSON.parse(readFileSync(process.argv[2], 'utf8'))

// Latency histogram: 10 µs buckets up to 1 s, then one overflow bucket.
const BUCKET_US = 10
const buckets = new Uint32Array(100_001)
let samples = 0
const record = (ms) => {
  const i = Math.min(buckets.length - 1, Math.floor((ms * 1000) / BUCKET_US))
  buckets[i]++
  samples++
}
const percentileMs = (p) => {
  if (samples === 0) return 0
  const rank = Math.ceil((p / 100) * samples)
  let seen = 0
  for (let i = 0; i < buckets.length; i++) {
    seen += buckets[i]
    if (seen >= rank) return ((i + 0.5) * BUCKET_US) / 1000
  }
  return Infinity
}

const opts = {
  url: cfg.url,
  connections: cfg.connections,
  duration: cfg.durationS,
  pipelining: 1,
  timeout: 10,
  headers: cfg.token ? { authorization: `Bearer ${cfg.token}` } : {},
}
if (cfg.rate) opts.overallRate = cfg.rate
// Row 3m: each connection presents the client certificate its token is bound to.
if (cfg.tls) opts.tlsOptions = clientTls(cfg.tls)
if (cfg.tokenFile) {
  // A fresh token on every request: one shared cursor over the pool, across all connections.
  const tokens = JSON.parse(readFileSync(cfg.tokenFile, 'utf8'))
  let next = 0
  opts.requests = [
    {
      method: 'GET',
      setupRequest: (req) => {
        const token = tokens[next]
        next = next + 1 === tokens.length ? 0 : next + 1
        req.headers = { authorization: `Bearer ${token}` }
        return req
      },
    },
  ]
}

if (cfg.dpop) {
  // Row 8: one DPoP-bound token, a new proof on every request (RFC 9449 §4.2: htu without the query).
  const prove = proofSigner(JSON.parse(readFileSync(cfg.dpop.keyFile, 'utf8')))
  const htu = cfg.url.replace(/[?#].*$/, '')
  const authorization = `DPoP ${cfg.dpop.token}`
  opts.headers = {}
  opts.requests = [
    {
      method: 'GET',
      setupRequest: (req) => {
        req.headers = { authorization, dpop: prove('GET', htu, cfg.dpop.token) }
        return req
      },
    },
  ]
}

const statuses = {}
const instance = autocannon(opts, (err, result) => {
  if (err) {
    process.stderr.write(String(err.stack ?? err))
    process.exit(1)
  }
  const ok = result['2xx']
  process.stdout.write(
    JSON.stringify({
      durationS: result.duration,
      requests: result.requests.total,
      ok,
      rps: ok / result.duration,
      p50Ms: percentileMs(50),
      p90Ms: percentileMs(90),
      p99Ms: percentileMs(99),
      maxMs: percentileMs(100),
      errors: result.errors,
      timeouts: result.timeouts,
      non2xx: result.non2xx,
      statuses,
      // Our own CPU time, so the caller can tell other work on the machine from ours.
      loadgenCpuMs: (() => {
        const u = process.cpuUsage()
        return (u.user + u.system) / 1000
      })(),
    }),
  )
})
instance.on('response', (_client, statusCode, _bytes, responseTimeMs) => {
  statuses[statusCode] = (statuses[statusCode] ?? 0) + 1
  if (statusCode >= 200 && statusCode < 300) record(responseTimeMs)
})
