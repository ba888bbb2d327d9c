// Lapse's own HTTPS listener: its options, the client certificate of each connection, and the
// rotation of its certificate, key and CA while connections stay open.
//
//   const server = createServer(httpsOptions(tls, material, base))
//   const rotation = watchTls(server, tls, log)    // re-reads the files when they change
//   const cert = certOfSocket(socket)              // computed once per connection
//   rotation.close()
import { watch, type FSWatcher } from 'node:fs'
import { dirname, resolve } from 'node:path'
import type { Server, TLSSocket } from 'node:tls'
import type { Logger } from 'pino'
import { clientCertOf, type ClientCert } from '../bind/mtls.js'
import type { Config } from '../config/load.js'
import { readTls, type TlsMaterial } from '../config/tls.js'

export type TlsSettings = NonNullable<Config['tls']>

/** TLS 1.2 at least; ciphers, curves and the rest are Node's defaults. */
const MIN_VERSION = 'TLSv1.2'

/** The secure-context part of the server options: what a rotation replaces. */
function contextOptions(m: TlsMaterial) {
  return { minVersion: MIN_VERSION, cert: m.cert, key: m.key, ...(m.ca ? { ca: m.ca } : {}) } as const
}

export function httpsOptions(tls: TlsSettings, material: TlsMaterial) {
  return {
    ...contextOptions(material),
    // Asked only when a CA is configured. `request` lets a client without a certificate (or with
    // one the CA did not sign) finish the handshake: Lapse then sees no peer, and bound tokens fail.
    requestCert: material.ca !== undefined,
    rejectUnauthorized: tls.clientAuth === 'require',
  }
}

const NO_CERT = Object.freeze({ none: true })
type Known = ClientCert | typeof NO_CERT

/**
 * Per connection: its certificate is the same for every request it carries, since renegotiation
 * (TLS 1.2's way to present another) is refused on Lapse's connections (server.ts).
 */
export function createCertCache(): (socket: TLSSocket) => ClientCert | undefined {
  const known = new WeakMap<TLSSocket, Known>()
  return (socket) => {
    let k = known.get(socket)
    if (k === undefined) {
      const x509 = socket.getPeerX509Certificate()
      k = x509 === undefined ? NO_CERT : clientCertOf(x509, socket.authorized)
      known.set(socket, k)
    }
    return k === NO_CERT ? undefined : (k as ClientCert)
  }
}

export interface Rotation {
  close(): void
}

/** How long the files must be quiet before they are read: a rotation writes several. */
const SETTLE_MS = 100

/**
 * Watches the TLS files and their directories. The directories, because Kubernetes (Secret and
 * ConfigMap volumes, cert-manager's CSI driver) replaces the files by swapping a `..data` symlink
 * in their directory, which a watch on the old file never sees; the files (through their
 * symlinks, so their targets), because a file may live elsewhere and be rewritten in place. A
 * file watch ends with the file it watched, so the files are watched again after every change.
 * On any change the files are read again and, if they differ and make a valid pair, applied to
 * new connections with setSecureContext; open connections keep the context they were made with.
 * A bad or half-written pair is logged, and the last good one stays.
 */
export function watchTls(server: Pick<Server, 'setSecureContext'>, tls: TlsSettings, log: Logger, initial: TlsMaterial): Rotation {
  let current = initial
  let timer: NodeJS.Timeout | undefined
  let closed = false
  const files = [tls.certFile, tls.keyFile, ...(tls.clientCaFile ? [tls.clientCaFile] : [])]
  let fileWatchers: FSWatcher[] = []
  const refused = (err: unknown) =>
    log.warn(
      { err: 'ERR_TLS_RELOAD', detail: (err as Error).message },
      'TLS files changed but cannot be used: the previous certificate stays',
    )
  const reload = () => {
    timer = undefined
    watchFiles()
    let next: TlsMaterial
    try {
      next = readTls(tls)
    } catch (err) {
      return void refused(err)
    }
    if (next.cert.equals(current.cert) && next.key.equals(current.key) && sameCa(next.ca, current.ca)) return
    try {
      server.setSecureContext(contextOptions(next))
    } catch (err) {
      return void refused(err)
    }
    current = next
    log.info({ cert_file: tls.certFile }, 'TLS certificate reloaded')
  }
  const changed = () => {
    if (closed) return
    clearTimeout(timer)
    timer = setTimeout(reload, SETTLE_MS)
    timer.unref()
  }
  // A file may be missing for a moment during a rotation: the directory watch covers that moment.
  function watchFiles(): void {
    for (const w of fileWatchers) w.close()
    fileWatchers = []
    for (const file of files) {
      try {
        fileWatchers.push(watch(file, { persistent: false }, changed).on('error', () => {}))
      } catch {
        // Watched again after the next change in its directory.
      }
    }
  }
  const dirWatchers: FSWatcher[] = []
  for (const dir of new Set(files.map((f) => dirname(resolve(f))))) {
    try {
      const w = watch(dir, { persistent: false }, changed)
      w.on('error', (err) =>
        log.warn({ err: 'ERR_TLS_RELOAD', detail: err.message, dir }, 'cannot watch TLS files any more: rotations are not applied'),
      )
      dirWatchers.push(w)
    } catch (err) {
      log.warn({ err: 'ERR_TLS_RELOAD', detail: (err as Error).message, dir }, 'cannot watch TLS files: rotations are not applied')
    }
  }
  watchFiles()
  return {
    close() {
      closed = true
      clearTimeout(timer)
      for (const w of [...dirWatchers, ...fileWatchers]) w.close()
    },
  }
}

const sameCa = (a: Buffer | undefined, b: Buffer | undefined) => (a === undefined ? b === undefined : b !== undefined && a.equals(b))
