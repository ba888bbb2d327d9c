// Lapse started the production way (startProxy: the real OTel SDK from OTEL_* variables) in this
// process, in front of a real upstream, its log lines captured.
//
//   const lapse = await startReal(t, { OTEL_EXPORTER_OTLP_ENDPOINT: otlp.url, OTEL_EXPORTER_OTLP_PROTOCOL: 'http/json' })
//   await send(`${lapse.url}/orders/1`, { headers: [bearer(token)] })
//   await lapse.close()        // flushes telemetry, as SIGTERM does
import { Writable } from 'node:stream'
import pino from 'pino'
import type { Test } from 'tap'
import { startProxy, type Running } from '../../src/main.js'
import { baseEnv } from '../fixtures/app.js'
import { testKeys } from '../fixtures/keys.js'
import { startUpstream, type Upstream } from '../fixtures/upstream.js'

export const ROUTES = [
  { path: '/healthz', public: true },
  { path: '/orders/**', methods: ['GET'], scopes: ['orders:read'] },
  { path: '/orders/**', methods: ['POST'], scopes: ['orders:write'] },
]

export interface RealLapse {
  readonly url: string
  readonly adminUrl: string
  readonly upstream: Upstream
  readonly running: Running
  /** Every line Lapse logged, as written. */
  readonly rawLines: string[]
  lines(): Array<Record<string, unknown>>
  close(): Promise<void>
}

/** Optional env: proxy settings (LAPSE_*) default to a test setup; OTEL_* are whatever the test passes. */
export async function startReal(t: Test, env: Record<string, string | undefined>, opts: { logLevel?: string } = {}): Promise<RealLapse> {
  const keys = await testKeys()
  const upstream = await startUpstream()
  const rawLines: string[] = []
  const sink = new Writable({
    write(chunk: Buffer, _enc, done) {
      rawLines.push(
        ...chunk
          .toString('utf8')
          .split('\n')
          .filter((l) => l !== ''),
      )
      done()
    },
  })
  const running = await startProxy(
    { ...baseEnv(upstream.url, keys.jwksPath, ROUTES), ...env },
    { log: pino({ level: opts.logLevel ?? 'info' }, sink) },
  )
  let closed = false
  const close = async () => {
    if (closed) return
    closed = true
    await running.close()
    await upstream.close()
  }
  t.teardown(close)
  return {
    url: `http://127.0.0.1:${running.addresses.proxy!.port}`,
    adminUrl: `http://127.0.0.1:${running.addresses.admin.port}`,
    upstream,
    running,
    rawLines,
    lines: () => rawLines.map((l) => JSON.parse(l) as Record<string, unknown>),
    close,
  }
}
