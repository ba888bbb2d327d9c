// Certificate-bound tokens (RFC 8705 §3): a token whose confirmation claim holds a certificate
// thumbprint, `cnf["x5t#S256"]`, is good only on a connection that presented that certificate.
//
//   const cert = clientCertOf(socket.getPeerX509Certificate(), socket.authorized)   // once per connection
//   const bound = checkCertBinding(identity.claims, cert)   // undefined: not cert-bound; a Binding; or 'mtls_key_mismatch'
import { createHash, type X509Certificate } from 'node:crypto'
import type { Binding, Claims } from '../core/types.js'
import { isSpiffeId } from './peers.js'

/** What one connection (or the mesh's XFCC header) says about the client's certificate. */
export interface ClientCert {
  /** RFC 8705 §3.1: base64url (no padding) of the SHA-256 of the certificate's DER. */
  readonly thumbprint: string
  /** The certificate's SPIFFE ID (its one URI SAN), only from a certificate that was verified. */
  readonly peer: string | undefined
  /** What an allowed decision carries for a token bound to this certificate: one object per certificate. */
  readonly binding: Binding
}

/** RFC 8705 §3.1's `x5t#S256` of a DER certificate. */
export function thumbprintOf(der: Uint8Array): string {
  return createHash('sha256').update(der).digest('base64url')
}

/**
 * The ClientCert of a presented certificate. A certificate that did not chain to the configured
 * CA still binds (the handshake proved its key, as RFC 8705 §2.2's self-signed mode needs), but
 * names no peer: a SPIFFE ID is an identity only when a trusted CA vouched for it.
 */
export function clientCertOf(x509: X509Certificate, verified: boolean): ClientCert {
  return fromParts(thumbprintOf(x509.raw), verified ? spiffeIdOf(x509.subjectAltName) : undefined)
}

export function fromParts(thumbprint: string, peer: string | undefined): ClientCert {
  return { thumbprint, peer, binding: { kind: 'mtls', thumbprint } }
}

/**
 * The SPIFFE ID in Node's `subjectAltName` text (`URI:spiffe://…, DNS:…`). An X.509-SVID has
 * exactly one URI SAN (SPIFFE X509-SVID §2): with more, or one that is not a SPIFFE ID, none.
 * Node quotes a value holding `,` or `"`; such a value is not a SPIFFE ID anyway.
 */
export function spiffeIdOf(subjectAltName: string | undefined): string | undefined {
  if (subjectAltName === undefined) return undefined
  let found: string | undefined
  let count = 0
  for (const entry of subjectAltName.split(', ')) {
    if (!entry.startsWith('URI:')) continue
    count++
    found = entry.slice(4)
  }
  return count === 1 && isSpiffeId(found!) ? found : undefined
}

/**
 * RFC 8705 §3: the token's `cnf["x5t#S256"]` against the connection's certificate. undefined when
 * the token is not certificate-bound; the Binding when it matches; else the denial's reason.
 */
export function checkCertBinding(claims: Claims, cert: ClientCert | undefined): Binding | 'mtls_key_mismatch' | undefined {
  const cnf = claims.cnf
  if (typeof cnf !== 'object' || cnf === null) return undefined
  const want = (cnf as Readonly<Record<string, unknown>>)['x5t#S256']
  if (want === undefined) return undefined
  // A thumbprint that is not a string can match no certificate: refused like any other mismatch.
  if (cert === undefined || want !== cert.thumbprint) return 'mtls_key_mismatch'
  return cert.binding
}
