// Certificate rotation under open connections, with the files laid out as Kubernetes mounts a
// Secret: tls.crt → ..data/tls.crt, and ..data a symlink swapped atomically to a new directory.
import { mkdirSync, renameSync, symlinkSync, writeFileSync } from 'node:fs'
import { Agent as HttpsAgent, request as httpsRequest } from 'node:https'
import { join } from 'node:path'
import type { TLSSocket } from 'node:tls'
import t from 'tap'
import { runApp, waitFor } from '../fixtures/app.js'
import { makePki, type Issued } from '../fixtures/certs.js'
import { testKeys } from '../fixtures/keys.js'
import { callTls, clientAgent, httpsUrl } from './helpers.js'

const pki = makePki()
const serverCert = (name: string) => pki.issue(name, 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n')

/** A Secret volume: `files` written into a fresh timestamped directory, then `..data` swapped to it by one rename. */
function project(dir: string, generation: number, files: Record<string, Buffer>): void {
  const data = join(dir, `..2026_12_07_${generation}`)
  mkdirSync(data)
  for (const [name, bytes] of Object.entries(files)) writeFileSync(join(data, name), bytes)
  symlinkSync(data, join(dir, '..data_tmp'))
  renameSync(join(dir, '..data_tmp'), join(dir, '..data'))
}

function mountSecret(files: Record<string, Buffer>): string {
  const dir = join(pki.dir, `secret-${Math.random().toString(36).slice(2)}`)
  mkdirSync(dir)
  project(dir, 0, files)
  for (const name of Object.keys(files)) symlinkSync(join('..data', name), join(dir, name))
  return dir
}

interface Got {
  status: number
  serial: string | undefined
  socket: TLSSocket
}

function get(url: string, agent: HttpsAgent | false, token: string): Promise<Got> {
  return new Promise((resolve, reject) => {
    const req = httpsRequest(url, { agent, ca: pki.ca.cert, headers: { authorization: `Bearer ${token}` } }, (res) => {
      const socket = res.socket as TLSSocket
      const serial = socket.getPeerX509Certificate()?.serialNumber
      res.resume()
      res.on('end', () => resolve({ status: res.statusCode ?? 0, serial, socket }))
    })
    req.on('error', reject)
    req.end()
  })
}

const pair = (c: Issued) => ({ 'tls.crt': c.cert, 'tls.key': c.key })

t.test(
  'a certificate rotated by a ..data swap: the open keep-alive connection keeps working, a new one gets the new certificate; a bad pair keeps the last good one',
  async (t) => {
    const first = serverCert('rot-1')
    const second = serverCert('rot-2')
    const third = serverCert('rot-3')
    const dir = mountSecret(pair(first))
    const lapse = await runApp(t, { env: { LAPSE_TLS_CERT_FILE: join(dir, 'tls.crt'), LAPSE_TLS_KEY_FILE: join(dir, 'tls.key') } })
    const token = await (await testKeys()).mint()
    const url = `${httpsUrl(lapse)}/orders/1`
    const keepAlive = new HttpsAgent({ keepAlive: true, maxSockets: 1, ca: pki.ca.cert })
    t.teardown(() => keepAlive.destroy())

    const before = await get(url, keepAlive, token)
    t.equal(before.status, 200)
    t.equal(before.serial, first.serial, 'the first certificate is served')

    project(dir, 1, pair(second))
    await waitFor(
      async () => (await get(url, false, token)).serial === second.serial,
      'a new connection to see the rotated certificate',
      5000,
    )
    const reused = await get(url, keepAlive, token)
    t.equal(reused.socket, before.socket, 'the same keep-alive connection, made with the first certificate')
    t.equal(reused.status, 200, 'the open connection was not dropped')
    t.match(
      lapse.lines.find((l) => l.msg === 'TLS certificate reloaded'),
      { level: 30 },
      'the reload is logged',
    )

    // A key that is not the certificate's: logged, and the last good pair stays.
    project(dir, 2, { 'tls.crt': third.cert, 'tls.key': first.key })
    await waitFor(() => lapse.lines.some((l) => l.err === 'ERR_TLS_RELOAD' && l.level === 40), 'the ERR_TLS_RELOAD warning', 5000)
    t.equal((await get(url, false, token)).serial, second.serial, 'new connections still get the last good certificate')
    t.equal((await get(url, false, token)).status, 200)

    // The next good pair is applied.
    project(dir, 3, pair(third))
    await waitFor(async () => (await get(url, false, token)).serial === third.serial, 'the repaired pair to be applied', 5000)
  },
)

t.test('a rotated client CA: certificates of the new CA are accepted from then on', async (t) => {
  const next = makePki()
  const newcomer = next.client('spiffe://prod.example/ns/ci/sa/deployer', 'newcomer')
  const dir = mountSecret({ 'ca.crt': pki.ca.cert })
  const lapse = await runApp(t, {
    env: {
      LAPSE_TLS_CERT_FILE: pki.server.certFile,
      LAPSE_TLS_KEY_FILE: pki.server.keyFile,
      LAPSE_TLS_CLIENT_CA_FILE: join(dir, 'ca.crt'),
      LAPSE_TLS_CLIENT_AUTH: 'require',
    },
  })
  const token = await (await testKeys()).mint()
  const refused = clientAgent(pki, newcomer)
  const failed = await callTls(lapse, '/orders/1', { agent: refused, token }).then(
    () => 'answered',
    () => 'refused',
  )
  t.equal(failed, 'refused', 'before the rotation, the new CA is unknown')
  await refused.close()
  project(dir, 1, { 'ca.crt': Buffer.concat([pki.ca.cert, next.ca.cert]) })
  await waitFor(
    async () => {
      const agent = clientAgent(pki, newcomer)
      try {
        return (await callTls(lapse, '/orders/1', { agent, token }).catch(() => undefined))?.status === 200
      } finally {
        await agent.close()
      }
    },
    'the rotated CA bundle to be applied',
    5000,
  )
  t.pass('a certificate of the new CA is accepted')
})

t.test('files that are symlinks into another directory, rewritten in place there, are re-read too', async (t) => {
  const fresh = serverCert('inplace-2')
  const elsewhere = join(pki.dir, `store-${Math.random().toString(36).slice(2)}`)
  const links = join(pki.dir, `links-${Math.random().toString(36).slice(2)}`)
  mkdirSync(elsewhere)
  mkdirSync(links)
  writeFileSync(join(elsewhere, 'server.pem'), pki.server.cert)
  writeFileSync(join(elsewhere, 'server-key.pem'), pki.server.key)
  symlinkSync(join(elsewhere, 'server.pem'), join(links, 'tls.crt'))
  symlinkSync(join(elsewhere, 'server-key.pem'), join(links, 'tls.key'))
  const lapse = await runApp(t, { env: { LAPSE_TLS_CERT_FILE: join(links, 'tls.crt'), LAPSE_TLS_KEY_FILE: join(links, 'tls.key') } })
  const token = await (await testKeys()).mint()
  const url = `${httpsUrl(lapse)}/orders/1`
  t.equal((await get(url, false, token)).serial, pki.server.serial)
  writeFileSync(join(elsewhere, 'server.pem'), fresh.cert)
  writeFileSync(join(elsewhere, 'server-key.pem'), fresh.key)
  await waitFor(async () => (await get(url, false, token)).serial === fresh.serial, 'the rewritten certificate to be applied', 5000)
  t.pass('the certificate rewritten in place, in a directory not named in the settings, is served')
})
