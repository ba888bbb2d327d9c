// A collector that takes every OTLP/HTTP export and answers at once (row 7r): the cost of
// recording and exporting spans, without a real collector's own CPU on the shared cores.
//
//   node lib/collector.mjs <port>
import { createServer } from 'node:http'

const port = Number(process.argv[2])
let exports = 0
let bytes = 0

const server = createServer((req, res) => {
  req.on('data', (c) => {
    bytes += c.length
  })
  req.on('end', () => {
    if (req.method === 'GET' && req.url === '/stats') {
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ exports, bytes }))
      return
    }
    if (req.method === 'POST') exports++
    // An empty protobuf message is a valid Export*ServiceResponse: full success.
    res.writeHead(200, { 'content-type': 'application/x-protobuf', 'content-length': '0' }).end()
  })
})
server.keepAliveTimeout = 120_000
server.listen(port, '127.0.0.1')
process.on('SIGTERM', () => {
  server.closeAllConnections()
  server.close(() => process.exit(0))
})
