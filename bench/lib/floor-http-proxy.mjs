// Row 2, the floor: a plain http-proxy pass-through with a keep-alive agent and no auth.
//
//   node lib/floor-http-proxy.mjs <port> <upstream url>
import { Agent, createServer } from 'node:http'
import httpProxy from 'http-proxy'

const port = Number(process.argv[2])
const target = process.argv[3]
const agent = new Agent({ keepAlive: true, maxSockets: 64, keepAliveMsecs: 1000 })
const proxy = httpProxy.createProxyServer({ target, agent, xfwd: false })
proxy.on('error', (_err, _req, res) => {
  if (!res.headersSent) res.writeHead(502)
  res.end()
})

const server = createServer((req, res) => proxy.web(req, res))
server.keepAliveTimeout = 120_000
server.headersTimeout = 125_000
server.listen(port, '127.0.0.1')
process.on('SIGTERM', () => {
  server.closeAllConnections()
  server.close(() => process.exit(0))
})
