import type { Clock } from './types.js'

// The only caller of Date.now(): everything else takes a Clock so expiry is testable without sleeping.
export const systemClock: Clock = { now: () => Date.now() }

/** A clock that stands still until moved: `const c = manualClock(t0); c.advance(1000)`. */
export function manualClock(startMs: number): Clock & { set(ms: number): void; advance(ms: number): void } {
  let nowMs = startMs
  return {
    now: () => nowMs,
    set: (ms) => {
      nowMs = ms
    },
    advance: (ms) => {
      nowMs += ms
    },
  }
}

export const nowS = (clock: Clock): number => Math.floor(clock.now() / 1000)
