// Requests over TLS through a real Lapse (undici, with or without a client certificate), with the
// audit line each produced.
//
//   const res = await callTls(lapse, '/orders/1', { agent: clientAgent(pki, pki.client(id)), token })
import { Agent, request } from 'undici'
import type { IncomingHttpHeaders } from 'node:http'
import { decisions, waitFor, type Lapse } from '../fixtures/app.js'
import type { Issued, Pki } from '../fixtures/certs.js'

export interface TlsSent {
  readonly status: number
  readonly headers: IncomingHttpHeaders
  readonly body: string
  readonly audit: Record<string, unknown>
}

export const httpsUrl = (lapse: Lapse) => lapse.url.replace(/^http:/, 'https:')

/** An undici Agent trusting the test CA, presenting `client` when given. */
export function clientAgent(pki: Pki, client?: Issued, opts: { keepAlive?: boolean } = {}): Agent {
  return new Agent({
    connect: { ca: pki.ca.cert, ...(client ? { cert: client.cert, key: client.key } : {}) },
    ...(opts.keepAlive === false ? { pipelining: 0 } : {}),
  })
}

export async function callTls(
  lapse: Lapse,
  path: string,
  opts: { agent: Agent; token?: string; headers?: Record<string, string> },
): Promise<TlsSent> {
  const before = decisions(lapse).length
  const res = await request(`${httpsUrl(lapse)}${path}`, {
    dispatcher: opts.agent,
    headers: { ...(opts.token ? { authorization: `Bearer ${opts.token}` } : {}), ...opts.headers },
  })
  const body = await res.body.text()
  await waitFor(() => decisions(lapse).length > before, 'the audit line of the request')
  return { status: res.statusCode, headers: res.headers as IncomingHttpHeaders, body, audit: decisions(lapse)[before]! }
}
