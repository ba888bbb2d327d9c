// Tools for the adversarial suite: hand-built tokens (any header text, any payload bytes, any
// signature), raw HTTP over a socket (paths and framing a client library would refuse or
// normalize), and a scan that no token or signature leaked into anything Lapse wrote.
//
//   const token = await signRaw(pair, '{"alg":"ES256","alg":"none"}', JSON.stringify(claims))
//   const res = await rawHttp(lapse.url, 'GET //admin HTTP/1.1\r\nHost: x\r\n\r\n')
import { webcrypto } from 'node:crypto'
import { connect } from 'node:net'
import type { Test } from 'tap'
import { manualClock } from '../../src/core/clock.js'
import { runApp, type Lapse } from '../fixtures/app.js'
import type { Upstream } from '../fixtures/upstream.js'
import type { KeyPair } from '../fixtures/keys.js'
import { assertNoSecrets } from '../fixtures/secrets.js'

export const T0_MS = Date.parse('2030-01-01T00:00:00Z')
export const T0_S = T0_MS / 1000

/** The rule set the issue names: /admin/** protected, /public/** open, and an ordinary API. */
export const GUARDED_ROUTES = [
  { path: '/public/**', public: true },
  { path: '/admin/**', scopes: ['admin'] },
  { path: '/orders/**', scopes: ['orders:read'] },
]

/** Lapse in front of GUARDED_ROUTES, its clock fixed at T0. */
export const startGuarded = (t: Test, env: Record<string, string> = {}, upstream?: Upstream): Promise<Lapse> =>
  runApp(t, { routes: GUARDED_ROUTES, clock: manualClock(T0_MS), env, ...(upstream ? { upstream } : {}) })

export const b64url = (data: string | Uint8Array): string => Buffer.from(data).toString('base64url')

const SUBTLE_PARAMS: Record<string, webcrypto.AlgorithmIdentifier | webcrypto.EcdsaParams | webcrypto.RsaPssParams> = {
  ES256: { name: 'ECDSA', hash: 'SHA-256' },
  RS256: { name: 'RSASSA-PKCS1-v1_5' },
  PS256: { name: 'RSA-PSS', saltLength: 32 },
  EdDSA: { name: 'Ed25519' },
}

/**
 * Signs exactly `headerText` and `payload` (no JSON round trip, so duplicate members, odd
 * spacing and non-JSON survive) with the pair's private key, as the pair's algorithm.
 */
export async function signRaw(pair: KeyPair, headerText: string, payload: string | Uint8Array): Promise<string> {
  const input = `${b64url(headerText)}.${b64url(payload)}`
  const sig = await webcrypto.subtle.sign(SUBTLE_PARAMS[pair.alg]!, pair.privateKey as unknown as webcrypto.CryptoKey, Buffer.from(input))
  return `${input}.${b64url(new Uint8Array(sig))}`
}

export const headerOf = (pair: KeyPair, extra: Record<string, unknown> = {}) => JSON.stringify({ alg: pair.alg, kid: pair.kid, ...extra })

export interface RawResponse {
  /** 0 when the connection closed without any answer. */
  readonly status: number
  readonly head: string
  readonly body: string
  /** Whether Lapse closed the connection (rather than the client's timeout ending the wait). */
  readonly closedByServer: boolean
  readonly elapsedMs: number
}

/**
 * Writes `chunks` on a fresh connection (a function chunk is awaited: pauses, slow writes) and
 * reads until the server closes or `waitMs` passes. Returns the first response on the wire.
 */
export function rawHttp(
  url: string,
  chunks: ReadonlyArray<string | Buffer | (() => Promise<void>)> | string,
  waitMs = 3000,
): Promise<RawResponse> {
  const { hostname, port } = new URL(url)
  const list = typeof chunks === 'string' ? [chunks] : chunks
  return new Promise((resolve) => {
    const started = Date.now()
    const socket = connect(Number(port), hostname)
    const received: Buffer[] = []
    let closedByServer = false
    let done = false
    const finish = () => {
      if (done) return
      done = true
      clearTimeout(timer)
      socket.destroy()
      const text = Buffer.concat(received).toString('latin1')
      const end = text.indexOf('\r\n\r\n')
      const head = end === -1 ? text : text.slice(0, end)
      const m = /^HTTP\/1\.[01] (\d{3})/.exec(head)
      resolve({
        status: m ? Number(m[1]) : 0,
        head,
        body: end === -1 ? '' : text.slice(end + 4),
        closedByServer,
        elapsedMs: Date.now() - started,
      })
    }
    const timer = setTimeout(finish, waitMs)
    socket.on('data', (d: Buffer) => received.push(d))
    socket.on('end', () => {
      closedByServer = true
      finish()
    })
    socket.on('close', () => {
      closedByServer = true
      finish()
    })
    socket.on('error', () => {
      closedByServer = true
      finish()
    })
    socket.once('connect', async () => {
      for (const chunk of list) {
        if (done || socket.destroyed) return
        if (typeof chunk === 'function') await chunk()
        else socket.write(chunk)
      }
    })
  })
}

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms))

/**
 * Asserts that no token or signature the test sent appears in any line Lapse logged (the shared
 * scan of test/fixtures/secrets.ts: failures name the secret, never print it).
 */
export function assertNothingLeaked(t: Test, lapse: Lapse, secrets: Record<string, string>): void {
  assertNoSecrets(
    t,
    lapse.rawLines.map((text, i) => ({ where: `log line ${i + 1}`, text })),
    Object.entries(secrets).map(([name, value]) => ({ name, value })),
  )
}
