import { RevocationUnavailableError } from '../core/types.js'

/**
 * The work's answer within `ms`, or RevocationUnavailableError: the caller never waits longer than
 * `ms` plus one turn of the loop.
 *
 * The budget measures the server's silence, not our own stalls: when the timer fires, a reply may
 * already sit unread in the socket (a long synchronous stretch or a descheduled process delays the
 * timer and the read alike). libuv runs timers, then polls the sockets, then the setImmediate
 * queue, so one setImmediate hop lets that reply be read and settle the work before we refuse.
 */
export function bounded<T>(work: Promise<T>, ms: number, what: string): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    let settled = false
    const timer = setTimeout(() => {
      setImmediate(() => {
        if (!settled) reject(new RevocationUnavailableError(`${what}: no answer within ${ms} ms`))
      })
    }, ms)
    work.then(
      (value) => {
        settled = true
        clearTimeout(timer)
        resolve(value)
      },
      (err: unknown) => {
        settled = true
        clearTimeout(timer)
        reject(new RevocationUnavailableError(`${what} failed: ${(err as Error).message}`, { cause: err }))
      },
    )
  })
}
