// Envoy's x-forwarded-client-cert (XFCC) header → the client certificate the mesh verified, when
// LAPSE_CLIENT_CERT_HEADER says a mesh in front of Lapse terminates mTLS and writes it.
//
//   const cert = parseXfcc(req.headers['x-forwarded-client-cert'])   // undefined: no usable element
//
// The format (Envoy, "HTTP header manipulation", x-forwarded-client-cert): elements separated by
// `,`, each added by one proxy, which appends its own at the end; an element is `key=value` pairs
// separated by `;`; a value holding `,`, `;` or `=` is double-quoted (`Subject` always is). Lapse
// reads the last element, the one the proxy in front of it appended: `Hash` (hex SHA-256 of the
// DER), `Cert` (URL-encoded PEM) and `URI` (the URI SAN; Envoy writes one pair per URI SAN).
import { X509Certificate } from 'node:crypto'
import { clientCertOf, fromParts, type ClientCert } from './mtls.js'
import { isSpiffeId } from './peers.js'

const HEX_SHA256 = /^[0-9A-Fa-f]{64}$/

/**
 * The certificate the last XFCC element describes. Malformed or contradictory (a Hash that is not
 * the Cert's) means no certificate: a bound token is then refused and a `peers` rule denies.
 */
export function parseXfcc(value: string | undefined): ClientCert | undefined {
  if (value === undefined || value === '') return undefined
  const pairs = split(lastElement(value), ';')
  let hash: string | undefined
  let pem: string | undefined
  const uris: string[] = []
  for (const pair of pairs) {
    const eq = pair.indexOf('=')
    if (eq <= 0) return undefined
    const key = pair.slice(0, eq).trim().toLowerCase()
    const v = unquote(pair.slice(eq + 1).trim())
    if (v === undefined) return undefined
    if (key === 'hash') hash = v
    else if (key === 'cert') pem = v
    else if (key === 'uri') uris.push(v)
  }
  let thumbprint: string | undefined
  if (hash !== undefined) {
    if (!HEX_SHA256.test(hash)) return undefined
    thumbprint = Buffer.from(hash, 'hex').toString('base64url')
  }
  let fromCert: ClientCert | undefined
  if (pem !== undefined) {
    fromCert = certOfPem(pem)
    if (fromCert === undefined || (thumbprint !== undefined && thumbprint !== fromCert.thumbprint)) return undefined
    thumbprint = fromCert.thumbprint
  }
  if (thumbprint === undefined) return undefined
  // SPIFFE X509-SVID §2: one URI SAN. Without URI pairs, the Cert's own SAN says it.
  const peer = uris.length === 0 ? fromCert?.peer : uris.length === 1 && isSpiffeId(uris[0]!) ? uris[0] : undefined
  return fromParts(thumbprint, peer)
}

function certOfPem(encoded: string): ClientCert | undefined {
  try {
    // The mesh verified the certificate; Lapse only reads it.
    return clientCertOf(new X509Certificate(decodeURIComponent(encoded)), true)
  } catch {
    return undefined
  }
}

/** The text after the last `,` outside double quotes. */
function lastElement(value: string): string {
  let quoted = false
  let start = 0
  for (let i = 0; i < value.length; i++) {
    const c = value.charCodeAt(i)
    if (c === 0x5c && quoted) i++
    else if (c === 0x22) quoted = !quoted
    else if (c === 0x2c && !quoted) start = i + 1
  }
  return value.slice(start)
}

/** `text` cut at each `sep` outside double quotes. */
function split(text: string, sep: string): string[] {
  const parts: string[] = []
  let quoted = false
  let start = 0
  for (let i = 0; i < text.length; i++) {
    const c = text[i]
    if (c === '\\' && quoted) i++
    else if (c === '"') quoted = !quoted
    else if (c === sep && !quoted) {
      parts.push(text.slice(start, i))
      start = i + 1
    }
  }
  parts.push(text.slice(start))
  return parts
}

/** A value without its double quotes and backslash escapes; undefined when a quote is left open. */
function unquote(v: string): string | undefined {
  if (!v.startsWith('"')) return v.includes('"') ? undefined : v
  if (v.length < 2 || !v.endsWith('"')) return undefined
  return v.slice(1, -1).replace(/\\(.)/g, '$1')
}
