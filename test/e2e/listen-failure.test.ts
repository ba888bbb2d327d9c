// listen() binds the proxy port and then the admin port; when the admin port cannot be bound, it
// rejects and closes the proxy port again: no half-started sidecar takes traffic.
import { createServer, connect, type Server } from 'node:net'
import pino from 'pino'
import t from 'tap'

import { loadConfig } from '../../src/config/load.js'
import { buildDeps, createSidecar } from '../../src/main.js'
import { baseEnv } from '../fixtures/app.js'
import { testKeys } from '../fixtures/keys.js'
import { startUpstream } from '../fixtures/upstream.js'

const listening = (server: Server, port = 0) =>
  new Promise<number>((resolve) => server.listen(port, '127.0.0.1', () => resolve((server.address() as { port: number }).port)))

/** A loopback port nothing listens on right now. */
async function freePort(): Promise<number> {
  const probe = createServer()
  const port = await listening(probe)
  await new Promise((r) => probe.close(r))
  return port
}

const connects = (port: number) =>
  new Promise<boolean>((resolve) => {
    const socket = connect(port, '127.0.0.1')
    socket.once('connect', () => {
      socket.destroy()
      resolve(true)
    })
    socket.once('error', () => resolve(false))
  })

t.test('admin port taken → listen rejects with EADDRINUSE and the proxy port is closed again', async (t) => {
  const keys = await testKeys()
  const upstream = await startUpstream()
  t.teardown(() => upstream.close())
  const squatter = createServer()
  const adminPort = await listening(squatter)
  t.teardown(() => new Promise((r) => squatter.close(r)))
  const proxyPort = await freePort()
  const config = loadConfig({
    ...baseEnv(upstream.url, keys.jwksPath, [{ path: '/**', scopes: ['x'] }]),
    LAPSE_LISTEN: `127.0.0.1:${proxyPort}`,
    LAPSE_ADMIN_LISTEN: `127.0.0.1:${adminPort}`,
  })
  const deps = await buildDeps(config, { log: pino({ level: 'silent' }) })
  const app = createSidecar(deps)
  t.teardown(async () => {
    await app.close()
    deps.keys.close()
    deps.forwarder?.close()
    deps.connections?.close()
    await deps.revocations.close()
  })

  await t.rejects(app.listen(), { code: 'EADDRINUSE' }, 'listen rejects')
  t.equal(app.app.server.listening, false, 'the proxy server is not listening')
  t.equal(await connects(proxyPort), false, 'a connection to the proxy port is refused')
})
