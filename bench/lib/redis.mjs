// A private redis-server for the Redis rows: its own loopback port, nothing on disk.
// Never the shared instance on 6379.
//
//   const redis = await startRedis({ cpu: 0, logDir })   // redis.url, redis.child
import { createConnection } from 'node:net'
import { freePort, spawnPinned, tailLog } from './proc.mjs'

function ping(port) {
  return new Promise((resolve) => {
    const sock = createConnection({ host: '127.0.0.1', port })
    const done = (ok) => {
      sock.destroy()
      resolve(ok)
    }
    sock.setTimeout(500, () => done(false))
    sock.on('error', () => done(false))
    sock.on('connect', () => sock.write('PING\r\n'))
    sock.on('data', (d) => done(d.toString().startsWith('+PONG')))
  })
}

export async function startRedis({ cpu, logDir }) {
  const port = await freePort()
  const child = spawnPinned(
    'redis-server',
    ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--daemonize', 'no', '--protected-mode', 'yes'],
    { cpu, name: 'redis', logDir },
  )
  const deadline = Date.now() + 10_000
  while (Date.now() < deadline) {
    if (child.exited) break
    if (await ping(port)) return { url: `redis://127.0.0.1:${port}`, port, child }
    await new Promise((r) => setTimeout(r, 100))
  }
  throw new Error(`redis-server did not answer PING on ${port}:\n${tailLog(child)}`)
}
