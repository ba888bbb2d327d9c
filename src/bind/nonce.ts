// Stateless DPoP nonces (RFC 9449 §8–9): an HMAC of a time step under a secret every sidecar
// shares, so any sidecar accepts any other's nonce and none keeps state.
//
//   const nonces = createNonces({ secret, stepS: 60, clock })
//   nonces.check(proof.nonce)   // 'current' | 'previous' | undefined (missing, stale or forged)
//   nonces.current()            // what DPoP-Nonce carries
import { createHmac, timingSafeEqual } from 'node:crypto'
import type { Clock } from '../core/types.js'

export interface Nonces {
  /** The nonce of the current step. */
  current(): string
  /** A nonce of the current step, of the one before it, or undefined for anything else. */
  check(nonce: unknown): 'current' | 'previous' | undefined
}

// 128 bits of the MAC: enough that a nonce cannot be guessed, short enough for every request.
const MAC_BYTES = 16

export function createNonces(opts: { readonly secret: Buffer; readonly stepS: number; readonly clock: Clock }): Nonces {
  const stepMs = opts.stepS * 1000
  const macOf = (step: number) => createHmac('sha256', opts.secret).update(`lapse-dpop-nonce:${step}`).digest().subarray(0, MAC_BYTES)
  let cached: { step: number; nonce: string } | undefined
  const stepNow = () => Math.floor(opts.clock.now() / stepMs)
  return {
    current() {
      const step = stepNow()
      if (cached?.step !== step) cached = { step, nonce: `${step.toString(36)}.${macOf(step).toString('base64url')}` }
      return cached.nonce
    },
    check(nonce) {
      if (typeof nonce !== 'string' || nonce.length > 64) return undefined
      const dot = nonce.indexOf('.')
      if (dot <= 0) return undefined
      const stepText = nonce.slice(0, dot)
      if (!/^[0-9a-z]{1,12}$/.test(stepText)) return undefined
      const step = Number.parseInt(stepText, 36)
      const now = stepNow()
      if (step !== now && step !== now - 1) return undefined
      const given = Buffer.from(nonce.slice(dot + 1), 'base64url')
      const expected = macOf(step)
      if (given.length !== expected.length || !timingSafeEqual(given, expected)) return undefined
      // A canonical spelling only: base64url decoding forgives trailing bits and stray characters.
      if (`${step.toString(36)}.${expected.toString('base64url')}` !== nonce) return undefined
      return step === now ? 'current' : 'previous'
    },
  }
}
