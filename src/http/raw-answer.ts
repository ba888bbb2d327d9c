// An Answer written raw to a socket Node has handed over (an upgrade, CONNECT, a parser error),
// where no ServerResponse exists; the connection closes after it.
//
//   writeRawAnswer(socket, answerOf('upstream_timeout'))
import { STATUS_CODES } from 'node:http'
import type { Duplex } from 'node:stream'
import type { Answer } from '../core/answers.js'

/** How long a socket answered here may stay half-open, waiting for the client to close its side. */
const RAW_LINGER_MS = 1000

export function writeRawAnswer(socket: Duplex, answer: Answer): void {
  if (!socket.writable) return void socket.destroy()
  let head = `HTTP/1.1 ${answer.status} ${STATUS_CODES[answer.status] ?? ''}\r\n`
  for (const name in answer.headers) head += `${name}: ${answer.headers[name]}\r\n`
  socket.end(`${head}connection: close\r\n\r\n${answer.body}`)
  // Node's idle timeout no longer watches a socket handed to 'upgrade': a client that never
  // closes its side would hold it for good.
  setTimeout(() => socket.destroy(), RAW_LINGER_MS).unref()
}
