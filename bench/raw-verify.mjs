#!/usr/bin/env node
// What one signature check costs on this machine, with nothing of Lapse around it: node:crypto's
// one-shot verify over a KeyObject, as src/core/signature.ts calls it, for RS256 (2048-bit key) and
// ES256, on signing inputs the size of the bench's tokens. Row 5r's ceiling follows from it (a
// fresh token costs at least this over row 3; bench/README.md, issue 27).
//
//   taskset -c 1 node bench/raw-verify.mjs [--rounds 15] [--calls 3000]
//
// CPU time (process.cpuUsage) per call, so other work on a shared host does not count; each
// round's figure, then min, median and max over the rounds.
import { generateKeyPairSync, sign, verify } from 'node:crypto'
import { parseArgs } from 'node:util'

const { values } = parseArgs({ options: { rounds: { type: 'string', default: '15' }, calls: { type: 'string', default: '3000' } } })
const rounds = Number(values.rounds)
const calls = Number(values.calls)
const INPUTS = 1000

function measure(name, keyType, keyOptions, verifyKey, signKey) {
  const { publicKey, privateKey } = generateKeyPairSync(keyType, keyOptions)
  const inputs = []
  const signatures = []
  for (let i = 0; i < INPUTS; i++) {
    // A header and payload as long as a bench token's (≈ 560 characters before the last dot).
    const input = Buffer.from(`eyJhbGciOiJSUzI1NiJ9.${'x'.repeat(540)}${i}`)
    inputs.push(input)
    signatures.push(sign('sha256', input, signKey(privateKey)))
  }
  const key = verifyKey(publicKey)
  const perCall = []
  for (let r = 0; r < rounds; r++) {
    const c0 = process.cpuUsage()
    for (let i = 0; i < calls; i++) {
      if (!verify('sha256', inputs[i % INPUTS], key, signatures[i % INPUTS])) throw new Error(`${name}: a good signature failed`)
    }
    const c = process.cpuUsage(c0)
    perCall.push((c.user + c.system) / calls)
  }
  const sorted = [...perCall].sort((a, b) => a - b)
  const f = (x) => x.toFixed(1)
  process.stdout.write(
    `${name}: ${f(sorted[0])} / ${f(sorted[sorted.length >> 1])} / ${f(sorted[sorted.length - 1])} µs of CPU a verify (min / median / max of ${rounds} rounds of ${calls})\n`,
  )
}

measure(
  'RS256',
  'rsa',
  { modulusLength: 2048 },
  (k) => k,
  (k) => k,
)
measure(
  'ES256',
  'ec',
  { namedCurve: 'P-256' },
  (k) => ({ key: k, dsaEncoding: 'ieee-p1363' }),
  (k) => ({ key: k, dsaEncoding: 'ieee-p1363' }),
)
