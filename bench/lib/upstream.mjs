// The stub upstream: keep-alive node:http, one small fixed JSON body for every request.
//
//   node lib/upstream.mjs <port>
import { createServer } from 'node:http'

const port = Number(process.argv[2])
const body = Buffer.from(JSON.stringify({ ok: true, service: 'bench-upstream', items: [1, 2, 3] }))
const headers = { 'content-type': 'application/json', 'content-length': String(body.length) }

const server = createServer((req, res) => {
  // Drain any request body so the connection stays reusable.
  req.resume()
  req.on('end', () => {
    res.writeHead(200, headers)
    res.end(body)
  })
})
// Longer than any client's idle time, so neither side closes a pooled connection mid-run.
server.keepAliveTimeout = 120_000
server.headersTimeout = 125_000
server.listen(port, '127.0.0.1')
process.on('SIGTERM', () => {
  server.closeAllConnections()
  server.close(() => process.exit(0))
})
