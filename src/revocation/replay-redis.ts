// The DPoP replay cache in the revocation set's Redis: every sidecar sharing the set refuses a
// proof any of them has seen. One atomic SET NX PX per proof, under the set's prefix and hash tag.
//
//   const replay = createRedisReplayCache({ url, prefix: 'lapse', timeoutMs: 50 })
//   await replay.firstUse(`${jkt}:${jti}`, ttlMs)   // true once; rejects with ReplayUnavailableError
import type { ConnectionOptions } from 'node:tls'
import { ReplayUnavailableError, type ReplayCache } from '../core/types.js'
import { connectBeside, quietly } from './redis-store.js'

export function createRedisReplayCache(opts: {
  readonly url: string
  readonly prefix: string
  readonly timeoutMs: number
  readonly tls?: ConnectionOptions
}): ReplayCache & { ready(): boolean } {
  // The budget measures Redis's silence, as the revocation check's does (bounded.ts): when the
  // timer fires, one setImmediate hop lets a reply already in the socket be read first.
  // The same hash tag as the revocation entries (`{lapse}:rev:…`): one slot on Cluster.
  if (opts.prefix === '' || /[{}]/.test(opts.prefix)) throw new TypeError('redis prefix must be non-empty and contain no { or }')
  const base = `{${opts.prefix}}:dpop:`
  const data = connectBeside(opts.url, opts.tls)
  // The first connection failure is the caller's answer (503); ioredis keeps reconnecting.
  data.on('error', () => {})
  return {
    kind: 'redis',
    ready: () => data.status === 'ready',
    firstUse(key, ttlMs) {
      return new Promise<boolean>((resolve, reject) => {
        let settled = false
        const timer = setTimeout(
          () =>
            setImmediate(() => {
              if (!settled) reject(new ReplayUnavailableError(`replay cache: no answer within ${opts.timeoutMs} ms`))
            }),
          opts.timeoutMs,
        )
        // SET NX PX: written only if absent, with its expiry, in one atomic step (no check-then-set race).
        data.set(`${base}${key}`, '1', 'PX', Math.max(1, Math.ceil(ttlMs)), 'NX').then(
          (answer) => {
            settled = true
            clearTimeout(timer)
            resolve(answer === 'OK')
          },
          (err: unknown) => {
            settled = true
            clearTimeout(timer)
            reject(new ReplayUnavailableError(`replay cache failed: ${(err as Error).message}`, { cause: err }))
          },
        )
      })
    },
    close: () => quietly(data),
  }
}
