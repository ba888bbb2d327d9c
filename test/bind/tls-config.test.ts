// LAPSE_TLS_*, LAPSE_CLIENT_CERT_HEADER and `peers` are checked at start, naming what is wrong and where.
import { execFile } from 'node:child_process'
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import t, { type Test } from 'tap'
import { loadConfig } from '../../src/config/load.js'
import { LapseError } from '../../src/core/errors.js'
import { baseEnv } from '../fixtures/app.js'
import { makePki } from '../fixtures/certs.js'

const pki = makePki()
const other = pki.client(undefined, 'other')
const env = (extra: Record<string, string>, routes: readonly object[] = [{ path: '/x', scopes: [] }]) => ({
  ...baseEnv('http://127.0.0.1:1', '/dev/null', routes),
  ...extra,
})
const TLS = { LAPSE_TLS_CERT_FILE: pki.server.certFile, LAPSE_TLS_KEY_FILE: pki.server.keyFile }

function refused(t: Test, extra: Record<string, string>, code: string, message: RegExp, routes?: readonly object[]) {
  let thrown: unknown
  try {
    loadConfig(env(extra, routes))
  } catch (err) {
    thrown = err
  }
  t.ok(thrown instanceof LapseError, `refused: ${message}`)
  t.equal((thrown as LapseError).code, code)
  t.match((thrown as LapseError).message, message)
}

t.test('valid TLS settings load, client auth defaults to request', async (t) => {
  const config = loadConfig(env({ ...TLS, LAPSE_TLS_CLIENT_CA_FILE: pki.ca.certFile }))
  t.same(config.tls, { certFile: pki.server.certFile, keyFile: pki.server.keyFile, clientCaFile: pki.ca.certFile, clientAuth: 'request' })
  t.equal(loadConfig(env({})).tls, undefined, 'no TLS by default')
  t.equal(loadConfig(env({ LAPSE_CLIENT_CERT_HEADER: 'X-Forwarded-Client-Cert' })).clientCertHeader, 'x-forwarded-client-cert')
})

t.test('bad TLS settings stop the start with ERR_CONFIG_INVALID naming the setting', async (t) => {
  const garbage = join(pki.dir, 'garbage.pem')
  writeFileSync(garbage, 'not a pem')
  refused(t, { LAPSE_TLS_CERT_FILE: pki.server.certFile }, 'ERR_CONFIG_INVALID', /^LAPSE_TLS_KEY_FILE: .*set together/)
  refused(t, { LAPSE_TLS_KEY_FILE: pki.server.keyFile }, 'ERR_CONFIG_INVALID', /^LAPSE_TLS_CERT_FILE: /)
  refused(t, { LAPSE_TLS_CLIENT_CA_FILE: pki.ca.certFile }, 'ERR_CONFIG_INVALID', /^LAPSE_TLS_CLIENT_CA_FILE: needs LAPSE_TLS_CERT_FILE/)
  refused(t, { ...TLS, LAPSE_TLS_CLIENT_AUTH: 'require' }, 'ERR_CONFIG_INVALID', /^LAPSE_TLS_CLIENT_AUTH: needs LAPSE_TLS_CLIENT_CA_FILE/)
  refused(
    t,
    { ...TLS, LAPSE_TLS_CLIENT_CA_FILE: pki.ca.certFile, LAPSE_TLS_CLIENT_AUTH: 'optional' },
    'ERR_CONFIG_INVALID',
    /^LAPSE_TLS_CLIENT_AUTH: /,
  )
  refused(
    t,
    { ...TLS, LAPSE_TLS_CERT_FILE: join(pki.dir, 'missing.crt') },
    'ERR_CONFIG_INVALID',
    /^LAPSE_TLS_CERT_FILE: cannot read .*ENOENT/,
  )
  refused(
    t,
    { ...TLS, LAPSE_TLS_KEY_FILE: other.keyFile },
    'ERR_CONFIG_INVALID',
    /^LAPSE_TLS_KEY_FILE: .* is not the key of the certificate/,
  )
  refused(t, { ...TLS, LAPSE_TLS_CERT_FILE: garbage }, 'ERR_CONFIG_INVALID', /^LAPSE_TLS_CERT_FILE: .* holds no PEM certificate/)
  refused(t, { ...TLS, LAPSE_TLS_KEY_FILE: garbage }, 'ERR_CONFIG_INVALID', /^LAPSE_TLS_KEY_FILE: .* holds no unencrypted PEM private key/)
  refused(t, { ...TLS, LAPSE_TLS_CLIENT_CA_FILE: garbage }, 'ERR_CONFIG_INVALID', /^LAPSE_TLS_CLIENT_CA_FILE: .* holds no PEM certificate/)
  refused(t, { LAPSE_CLIENT_CERT_HEADER: 'x-client-cert' }, 'ERR_CONFIG_INVALID', /^LAPSE_CLIENT_CERT_HEADER: .*x-forwarded-client-cert/)
})

t.test('peers patterns are checked at start with their location', async (t) => {
  const routes = [
    { path: '/a', scopes: [] },
    { path: '/b', scopes: [] },
    { path: '/c', peers: ['spiffe://prod.example/ns/*/sa'] },
  ]
  refused(t, {}, 'ERR_RULES_INVALID', /a peer is a SPIFFE ID .*\(at routes\[2\]\.peers\[0\]\)$/, routes)
  refused(t, {}, 'ERR_RULES_INVALID', /\(at routes\[0\]\.peers\)$/, [{ path: '/a', peers: [] }])
  const ok = loadConfig(env({}, [{ path: '/a', peers: ['spiffe://prod.example/ns/ci/sa/deployer', 'spiffe://prod.example/ns/ci/*'] }]))
  t.same(ok.routes[0]!.peers, ['spiffe://prod.example/ns/ci/sa/deployer', 'spiffe://prod.example/ns/ci/*'])
})

t.test("lapse proxy with a key that is not the certificate's: exit 2, one line naming LAPSE_TLS_KEY_FILE", async (t) => {
  const bin = join(import.meta.dirname, '../../bin/lapse.js')
  const childEnv: Record<string, string> = {
    PATH: process.env.PATH ?? '',
    ...env({ ...TLS, LAPSE_TLS_KEY_FILE: other.keyFile }),
    LAPSE_JWKS_FILE: '/dev/null',
  }
  const r = await new Promise<{ code: number | null; stderr: string }>((resolve) => {
    execFile(process.execPath, [bin, 'proxy'], { env: childEnv, timeout: 20_000 }, (err, _stdout, stderr) =>
      resolve({ code: err ? ((err as { code?: number }).code ?? null) : 0, stderr }),
    )
  })
  t.equal(r.code, 2)
  const lines = r.stderr.split('\n').filter((l) => l.trim() !== '')
  t.equal(lines.length, 1, 'one line')
  t.match(lines[0], /^lapse: ERR_CONFIG_INVALID LAPSE_TLS_KEY_FILE: .* is not the key of the certificate/)
})
