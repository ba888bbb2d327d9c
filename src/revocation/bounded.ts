import { RevocationUnavailableError } from '../core/types.js'

/** The work's answer within `ms`, or RevocationUnavailableError: the caller never waits longer. */
export function bounded<T>(work: Promise<T>, ms: number, what: string): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const timer = setTimeout(() => reject(new RevocationUnavailableError(`${what}: no answer within ${ms} ms`)), ms)
    work.then(
      (value) => { clearTimeout(timer); resolve(value) },
      (err: unknown) => {
        clearTimeout(timer)
        reject(new RevocationUnavailableError(`${what} failed: ${(err as Error).message}`, { cause: err }))
      },
    )
  })
}
