// Row 2u, the other floor: a plain pass-through on an undici Pool, no auth. It exists so the
// forwarding engine can be chosen by measurement (issue 7): http-proxy versus undici.
//
//   node lib/floor-undici.mjs <port> <upstream url>
import { createServer } from 'node:http'
import { Pool } from 'undici'

const port = Number(process.argv[2])
const pool = new Pool(process.argv[3], { connections: 64, keepAliveTimeout: 60_000 })
// RFC 9110 §7.6.1: connection-specific fields are not forwarded.
const HOP_BY_HOP = new Set(['connection', 'keep-alive', 'proxy-connection', 'transfer-encoding', 'te', 'trailer', 'upgrade', 'host'])

const pick = (headers) => {
  const out = {}
  for (const [k, v] of Object.entries(headers)) if (!HOP_BY_HOP.has(k)) out[k] = v
  return out
}

const server = createServer((req, res) => {
  const hasBody = req.headers['content-length'] !== undefined || req.headers['transfer-encoding'] !== undefined
  pool.stream(
    { path: req.url, method: req.method, headers: pick(req.headers), body: hasBody ? req : undefined },
    ({ statusCode, headers }) => {
      res.writeHead(statusCode, pick(headers))
      return res
    },
    (err) => {
      if (!err) return
      if (!res.headersSent) res.writeHead(502)
      res.end()
    },
  )
})
server.keepAliveTimeout = 120_000
server.headersTimeout = 125_000
server.listen(port, '127.0.0.1')
process.on('SIGTERM', () => {
  server.closeAllConnections()
  server.close(() => pool.close().then(() => process.exit(0)))
})
