// The demo's stand-in for a real service: echoes what Lapse told it about the caller.
import { createServer, type Server } from 'node:http'

export function startDemoUpstream(): Promise<{ server: Server; url: string }> {
  const server = createServer((req, res) => {
    const body = JSON.stringify({
      hello: 'from the demo upstream',
      method: req.method,
      path: req.url,
      subject: req.headers['x-auth-subject'] ?? null,
      scopes: req.headers['x-auth-scopes'] ?? null,
      expires_at: req.headers['x-auth-expires-at'] ?? null,
    })
    res.writeHead(200, { 'content-type': 'application/json' }).end(`${body}\n`)
  })
  return new Promise((resolve) => {
    server.listen(0, '127.0.0.1', () => {
      const addr = server.address() as { port: number }
      resolve({ server, url: `http://127.0.0.1:${addr.port}` })
    })
  })
}
