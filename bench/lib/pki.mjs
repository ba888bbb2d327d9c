// The certificates of row 3m, made by openssl: a CA, a server certificate for 127.0.0.1 and one
// client certificate, and the client certificate's RFC 8705 thumbprint for the token's cnf.
//
//   const pki = makeBenchPki(runDir)   // { caFile, serverCertFile, serverKeyFile, clientCertFile, clientKeyFile, thumbprint }
import { execFileSync } from 'node:child_process'
import { createHash, X509Certificate } from 'node:crypto'
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'

const EC = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes']

export function makeBenchPki(parent) {
  const dir = join(parent, 'pki')
  mkdirSync(dir, { recursive: true })
  const openssl = (args) => execFileSync('openssl', args, { cwd: dir, stdio: ['ignore', 'ignore', 'pipe'] })
  openssl([
    'req',
    '-x509',
    ...EC,
    '-keyout',
    'ca.key',
    '-out',
    'ca.crt',
    '-days',
    '7',
    '-subj',
    '/CN=bench CA',
    '-addext',
    'basicConstraints=critical,CA:TRUE',
  ])
  const issue = (name, ext, serial) => {
    writeFileSync(join(dir, `${name}.ext`), ext)
    openssl(['req', ...EC, '-keyout', `${name}.key`, '-out', `${name}.csr`, '-subj', `/CN=${name}`])
    openssl([
      'x509',
      '-req',
      '-in',
      `${name}.csr`,
      '-CA',
      'ca.crt',
      '-CAkey',
      'ca.key',
      '-set_serial',
      String(serial),
      '-days',
      '7',
      '-out',
      `${name}.crt`,
      '-extfile',
      `${name}.ext`,
    ])
  }
  issue('server', 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n', 2)
  issue('client', 'subjectAltName=URI:spiffe://bench.example/ns/bench/sa/client\nextendedKeyUsage=clientAuth\n', 3)
  const der = new X509Certificate(readFileSync(join(dir, 'client.crt'))).raw
  return {
    caFile: join(dir, 'ca.crt'),
    serverCertFile: join(dir, 'server.crt'),
    serverKeyFile: join(dir, 'server.key'),
    clientCertFile: join(dir, 'client.crt'),
    clientKeyFile: join(dir, 'client.key'),
    thumbprint: createHash('sha256').update(der).digest('base64url'),
  }
}

/** The TLS options a client of row 3m connects with (autocannon's tlsOptions, https.request). */
export const clientTls = (tls) => ({
  ca: readFileSync(tls.caFile),
  cert: readFileSync(tls.clientCertFile),
  key: readFileSync(tls.clientKeyFile),
})
