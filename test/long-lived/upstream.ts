// An upstream for long-lived exchanges: a WebSocket echo server and never-ending chunked streams
// on one real HTTP server (test/fixtures/upstream.ts), recording how each WebSocket was closed.
//
//   const up = await startLongLivedUpstream(t)
//   const lapse = await runApp(t, { upstream: up.upstream, clock })
//   up.closes      // [{ code: 1008, reason: 'token expired' }] once Lapse has cut a WebSocket
import type { IncomingMessage, ServerResponse } from 'node:http'
import type { Test } from 'tap'
import WebSocket, { WebSocketServer } from 'ws'
import { startUpstream, type Upstream } from '../fixtures/upstream.js'

export interface LongLivedUpstream {
  readonly upstream: Upstream
  readonly wss: WebSocketServer
  /** How each upstream-side WebSocket closed, in order. */
  readonly closes: Array<{ code: number; reason: string }>
  /** Streams the upstream is still writing. */
  readonly openStreams: number
}

/** `GET /…/stream…` writes a chunk every `everyMs`, forever; anything else answers 200 JSON. */
function streamOrEcho(state: { open: number }, everyMs: number) {
  return (req: IncomingMessage, res: ServerResponse) => {
    req.resume()
    if (!/stream|download/.test(req.url ?? '')) return void res.writeHead(200, { 'content-type': 'application/json' }).end('{"ok":true}')
    res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-store' })
    state.open++
    let n = 0
    const timer = setInterval(() => res.write(`data: ${n++}\n\n`), everyMs)
    res.once('close', () => {
      clearInterval(timer)
      state.open--
    })
  }
}

export async function startLongLivedUpstream(t: Test, opts: { streamEveryMs?: number } = {}): Promise<LongLivedUpstream> {
  const state = { open: 0 }
  const upstream = await startUpstream(streamOrEcho(state, opts.streamEveryMs ?? 20))
  const wss = new WebSocketServer({ server: upstream.server })
  const closes: Array<{ code: number; reason: string }> = []
  wss.on('connection', (ws: WebSocket) => {
    ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }))
    ws.on('close', (code, reason) => closes.push({ code, reason: reason.toString('utf8') }))
    ws.on('error', () => {})
  })
  t.teardown(async () => {
    for (const ws of wss.clients) ws.terminate()
    await new Promise<void>((resolve) => wss.close(() => resolve()))
    await upstream.close()
  })
  return {
    upstream,
    wss,
    closes,
    get openStreams() {
      return state.open
    },
  }
}

/** A WebSocket client through Lapse that remembers how it closed. */
export interface Client {
  readonly ws: WebSocket
  readonly closed: Promise<{ code: number; reason: string; atMs: number }>
  /** Sends `text` and resolves with the echo. */
  echo(text: string, timeoutMs?: number): Promise<string>
}

export function openClient(url: string, token: string | undefined, path = '/orders/live'): Promise<Client> {
  const ws = new WebSocket(`${url.replace(/^http/, 'ws')}${path}`, {
    headers: token === undefined ? {} : { authorization: `Bearer ${token}` },
  })
  const closed = new Promise<{ code: number; reason: string; atMs: number }>((resolve) =>
    ws.once('close', (code, reason) => resolve({ code, reason: reason.toString('utf8'), atMs: Date.now() })),
  )
  ws.on('error', () => {})
  const echo = (text: string, timeoutMs = 1000) =>
    new Promise<string>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no echo of ${text} within ${timeoutMs} ms`)), timeoutMs)
      ws.once('message', (data) => {
        clearTimeout(timer)
        resolve(data.toString())
      })
      ws.send(text)
    })
  return new Promise((resolve, reject) => {
    ws.once('open', () => resolve({ ws, closed, echo }))
    ws.once('unexpected-response', (req, res) => {
      const chunks: Buffer[] = []
      res.on('data', (c: Buffer) => chunks.push(c))
      res.on('end', () => {
        req.destroy()
        const body = Buffer.concat(chunks).toString('utf8')
        reject(Object.assign(new Error(`upgrade answered ${res.statusCode}`), { status: res.statusCode, headers: res.headers, body }))
      })
    })
    ws.once('error', reject)
  })
}

/** Resolves with the close, or with 'open' if the socket is still open after `ms`. */
export function closedWithin(client: Client, ms: number): Promise<{ code: number; reason: string; atMs: number } | 'open'> {
  return Promise.race([client.closed, new Promise<'open'>((resolve) => setTimeout(() => resolve('open'), ms))])
}

export const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))
