// Lapse's own TLS material, read and checked: at start (config/load.ts, a bad file stops the
// start) and again whenever the files change (http/tls.ts, a bad file keeps the last good pair).
//
//   const material = readTls({ certFile, keyFile, clientCaFile })   // throws TlsFileError naming the setting
import { createPrivateKey, type KeyObject, X509Certificate } from 'node:crypto'
import { readFileSync } from 'node:fs'

export interface TlsFiles {
  readonly certFile: string
  readonly keyFile: string
  readonly clientCaFile?: string | undefined
}

export interface TlsMaterial {
  readonly cert: Buffer
  readonly key: Buffer
  readonly ca: Buffer | undefined
}

/** A TLS file that cannot be used; `setting` is the schema key it came from. */
export class TlsFileError extends Error {
  constructor(
    readonly setting: 'tls_cert_file' | 'tls_key_file' | 'tls_client_ca_file',
    message: string,
  ) {
    super(message)
  }
}

export function readTls(files: TlsFiles): TlsMaterial {
  const cert = readOne('tls_cert_file', files.certFile)
  const key = readOne('tls_key_file', files.keyFile)
  const ca = files.clientCaFile === undefined ? undefined : readOne('tls_client_ca_file', files.clientCaFile)
  let x509: X509Certificate
  try {
    x509 = new X509Certificate(cert)
  } catch {
    throw new TlsFileError('tls_cert_file', `${files.certFile} holds no PEM certificate`)
  }
  let privateKey: KeyObject
  try {
    privateKey = createPrivateKey(key)
  } catch {
    throw new TlsFileError('tls_key_file', `${files.keyFile} holds no unencrypted PEM private key`)
  }
  if (!x509.checkPrivateKey(privateKey))
    throw new TlsFileError('tls_key_file', `${files.keyFile} is not the key of the certificate in ${files.certFile}`)
  if (ca !== undefined) {
    try {
      new X509Certificate(ca)
    } catch {
      throw new TlsFileError('tls_client_ca_file', `${files.clientCaFile} holds no PEM certificate`)
    }
  }
  return { cert, key, ca }
}

function readOne(setting: TlsFileError['setting'], path: string): Buffer {
  try {
    return readFileSync(path)
  } catch (err) {
    throw new TlsFileError(setting, `cannot read ${path} (${(err as NodeJS.ErrnoException).code ?? 'error'})`)
  }
}
