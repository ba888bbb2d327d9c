// A real OTLP/HTTP receiver for tests: it accepts what Lapse's exporters send with
// OTEL_EXPORTER_OTLP_PROTOCOL=http/json, decodes it, and keeps every raw body for scanning.
//
//   const otlp = await startOtlpReceiver()                    // or { silent: true }: accepts, never answers
//   env.OTEL_EXPORTER_OTLP_ENDPOINT = otlp.url
//   await waitFor(() => otlp.spans().find((s) => s.name === 'lapse.authorize'), '…')
import { createServer, type IncomingHttpHeaders, type IncomingMessage, type Server } from 'node:http'
import type { Socket } from 'node:net'

export interface ReceivedSpan {
  readonly traceId: string
  readonly spanId: string
  readonly parentSpanId: string | undefined
  readonly name: string
  readonly kind: number
  readonly attributes: Record<string, unknown>
  readonly status: { code: number }
  readonly resource: Record<string, unknown>
  readonly scope: string
}

export interface ReceivedPoint {
  readonly metric: string
  readonly unit: string
  readonly attributes: Record<string, unknown>
  /** Sum and gauge points: the value; histogram points: the count. */
  readonly value: number
}

export interface OtlpReceiver {
  readonly url: string
  /** Every request body as received, for secret scans. */
  readonly bodies: Array<{
    readonly path: string
    readonly contentType: string
    readonly headers: IncomingHttpHeaders
    readonly raw: string
  }>
  spans(): ReceivedSpan[]
  /** Points of the latest export that carried `metric` (exports are cumulative). */
  points(metric: string): ReceivedPoint[]
  close(): Promise<void>
}

type AnyValue = {
  stringValue?: string
  intValue?: number | string
  doubleValue?: number
  boolValue?: boolean
  arrayValue?: { values?: AnyValue[] }
}
type KeyValue = { key: string; value: AnyValue }

function decodeValue(v: AnyValue): unknown {
  if (v.stringValue !== undefined) return v.stringValue
  if (v.intValue !== undefined) return Number(v.intValue)
  if (v.doubleValue !== undefined) return v.doubleValue
  if (v.boolValue !== undefined) return v.boolValue
  if (v.arrayValue) return (v.arrayValue.values ?? []).map(decodeValue)
  return undefined
}

export function decodeAttributes(list: KeyValue[] | undefined): Record<string, unknown> {
  return Object.fromEntries((list ?? []).map((kv) => [kv.key, decodeValue(kv.value)]))
}

export async function startOtlpReceiver(opts: { silent?: boolean; port?: number } = {}): Promise<OtlpReceiver> {
  const bodies: OtlpReceiver['bodies'] = []
  // biome-ignore lint/suspicious/noExplicitAny: OTLP JSON as received, read loosely by the tests
  const traceBatches: any[] = []
  // biome-ignore lint/suspicious/noExplicitAny: OTLP JSON as received, read loosely by the tests
  const metricBatches: any[] = []
  const sockets = new Set<Socket>()
  const server: Server = createServer((req: IncomingMessage, res) => {
    const chunks: Buffer[] = []
    req.on('data', (c: Buffer) => chunks.push(c))
    req.on('end', () => {
      const raw = Buffer.concat(chunks).toString('utf8')
      const contentType = req.headers['content-type'] ?? ''
      bodies.push({ path: req.url ?? '', contentType, headers: req.headers, raw })
      if (opts.silent) return // a collector that accepts and never answers
      if (!contentType.startsWith('application/json')) {
        res.writeHead(415).end()
        return
      }
      const json = JSON.parse(raw)
      if (req.url === '/v1/traces') traceBatches.push(json)
      else if (req.url === '/v1/metrics') metricBatches.push(json)
      res.writeHead(200, { 'content-type': 'application/json' }).end('{}')
    })
  })
  server.on('connection', (s: Socket) => {
    sockets.add(s)
    s.on('close', () => sockets.delete(s))
  })
  await new Promise<void>((resolve) => server.listen(opts.port ?? 0, '127.0.0.1', resolve))
  const port = (server.address() as { port: number }).port

  return {
    url: `http://127.0.0.1:${port}`,
    bodies,
    spans() {
      const out: ReceivedSpan[] = []
      for (const batch of traceBatches) {
        for (const rs of batch.resourceSpans ?? []) {
          const resource = decodeAttributes(rs.resource?.attributes)
          for (const ss of rs.scopeSpans ?? []) {
            for (const s of ss.spans ?? []) {
              out.push({
                traceId: s.traceId,
                spanId: s.spanId,
                parentSpanId: s.parentSpanId || undefined,
                name: s.name,
                kind: s.kind,
                attributes: decodeAttributes(s.attributes),
                status: { code: s.status?.code ?? 0 },
                resource,
                scope: ss.scope?.name ?? '',
              })
            }
          }
        }
      }
      return out
    },
    points(metric) {
      for (const batch of [...metricBatches].reverse()) {
        const out: ReceivedPoint[] = []
        for (const rm of batch.resourceMetrics ?? []) {
          for (const sm of rm.scopeMetrics ?? []) {
            for (const m of sm.metrics ?? []) {
              if (m.name !== metric) continue
              const data = m.sum ?? m.gauge ?? m.histogram
              for (const p of data?.dataPoints ?? []) {
                const value = m.histogram ? Number(p.count) : Number(p.asInt ?? p.asDouble)
                out.push({ metric: m.name, unit: m.unit ?? '', attributes: decodeAttributes(p.attributes), value })
              }
            }
          }
        }
        if (out.length) return out
      }
      return []
    },
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy()
        server.close(() => resolve())
      }),
  }
}
