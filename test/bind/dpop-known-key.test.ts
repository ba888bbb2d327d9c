// The proof check once its key is known (src/bind/dpop.ts): a key imported for one token serves
// the next token bound to it, a matched htu is remembered, and the memory replay cache answers
// without a promise. Each shortcut must give the answer the full check gives: every case below is
// decided by a policy that has seen the holder's key and by a fresh one, and the two must agree.
import { randomUUID } from 'node:crypto'
import t from 'tap'
import { checkProof, type DpopPolicy, type ProofRequest, type ProofResult } from '../../src/bind/dpop.js'
import { createMemoryReplayCache } from '../../src/bind/replay-memory.js'
import { systemClock } from '../../src/core/clock.js'
import type { TokenMemo } from '../../src/core/types.js'
import { normalizeTarget } from '../../src/target/request-target.js'
import { testKeys } from '../fixtures/keys.js'
import { newHolder, type Holder } from './dpop-helpers.js'

const keys = await testKeys()
const HOST = 'rs.example'
const URL_ = `https://${HOST}/orders/1`

const newPolicy = (): DpopPolicy => ({
  algorithms: new Set(['ES256', 'RS256', 'PS256', 'EdDSA', 'Ed25519']),
  maxAgeS: 270,
  clockSkewS: 30,
  publicOrigins: undefined,
  nonces: undefined,
  replay: createMemoryReplayCache({ clock: systemClock }),
  clock: systemClock,
})

const normalizePath = (p: string) => {
  const n = normalizeTarget(p)
  return 'reason' in n ? undefined : n.path
}

const request = (token: string, jkt: string, proof: string, memo: TokenMemo = {}, host = HOST): ProofRequest => ({
  method: 'GET',
  path: '/orders/1',
  host,
  proofs: [proof],
  token,
  jkt,
  normalizePath,
  memo,
})

const outcome = (got: ProofResult) => ('reason' in got ? got.reason : 'allowed')

t.test('a key known from another token bound to it: the answer comes without a promise, and is the full check’s', async (t) => {
  for (const alg of ['ES256', 'RS256', 'Ed25519'] as const) {
    const holder = await newHolder(alg)
    const policy = newPolicy()
    const first = await keys.mint({ cnf: { jkt: holder.jkt }, jti: randomUUID() })
    const primed = checkProof(request(first, holder.jkt, await holder.proof(URL_, 'GET', first)), policy)
    t.ok(primed instanceof Promise, `${alg}: the first proof of a key waits for its import`)
    t.equal(outcome(await primed), 'allowed')

    // A second token, a new memo: the key comes from the policy's memo by thumbprint.
    const second = await keys.mint({ cnf: { jkt: holder.jkt }, jti: randomUUID() })
    const got = checkProof(request(second, holder.jkt, await holder.proof(URL_, 'GET', second)), policy)
    t.notOk(got instanceof Promise, `${alg}: a known key and the memory replay cache answer at once`)
    t.equal(outcome(await got), 'allowed', alg)
  }
})

t.test('with the key known, every mutation is refused as a fresh policy refuses it', async (t) => {
  const holder = await newHolder('ES256')
  const stranger = await newHolder('ES256')
  const token = await keys.mint({ cnf: { jkt: holder.jkt }, jti: randomUUID() })
  const strangerToken = await keys.mint({ cnf: { jkt: stranger.jkt }, jti: randomUUID() })
  const known = newPolicy()
  const memo: TokenMemo = {}
  t.equal(outcome(await checkProof(request(token, holder.jkt, await holder.proof(URL_, 'GET', token), memo), known)), 'allowed')
  t.ok(memo.dpopKey, 'the token memo holds the key')

  const broken = async () => {
    const p = await holder.proof(URL_, 'GET', token)
    const sig = Buffer.from(p.split('.')[2]!, 'base64url')
    sig[7]! ^= 0x01
    return `${p.split('.').slice(0, 2).join('.')}.${sig.toString('base64url')}`
  }
  const cases: Array<[string, () => Promise<ProofRequest>, string]> = [
    ['a broken signature', async () => request(token, holder.jkt, await broken(), memo), 'dpop_proof_invalid'],
    [
      "another key's jwk, the token bound to the known key",
      async () => request(token, holder.jkt, await holder.mutated({ htu: URL_, htm: 'GET', token, header: { jwk: stranger.jwk } }), memo),
      'dpop_proof_invalid',
    ],
    [
      'another key signing with its own jwk, the token bound to the known key',
      async () => request(token, holder.jkt, await stranger.proof(URL_, 'GET', token), memo),
      'dpop_key_mismatch',
    ],
    [
      'the known key, a token bound to another',
      async () => request(strangerToken, stranger.jkt, await holder.proof(URL_, 'GET', strangerToken)),
      'dpop_key_mismatch',
    ],
    [
      'a critical extension in the header',
      async () =>
        request(token, holder.jkt, await holder.mutated({ htu: URL_, htm: 'GET', token, header: { crit: ['b64'], b64: true } }), memo),
      'dpop_proof_invalid',
    ],
    [
      'the matched htu, sent to another Host',
      async () => request(token, holder.jkt, await holder.proof(URL_, 'GET', token), memo, 'other.example'),
      'dpop_proof_invalid',
    ],
    [
      'ath of another token',
      async () => request(token, holder.jkt, await holder.proof(URL_, 'GET', strangerToken), memo),
      'dpop_proof_invalid',
    ],
    ['the control: a valid proof', async () => request(token, holder.jkt, await holder.proof(URL_, 'GET', token), memo), 'allowed'],
  ]
  for (const [name, make, expected] of cases) {
    const req = await make()
    const fast = outcome(await checkProof(req, known))
    const full = outcome(await checkProof({ ...req, memo: {} }, newPolicy()))
    t.equal(fast, expected, `${name}: with the key known`)
    t.equal(full, expected, `${name}: a fresh policy`)
  }
  // The same key spelled with members an import reads beyond the thumbprint's: whatever jose makes
  // of them, the known key must not answer differently.
  const variants: Array<[string, Record<string, unknown>]> = [
    ['key_ops sign only', { key_ops: ['sign'] }],
    ['key_ops verify', { key_ops: ['verify'] }],
    ['use enc', { use: 'enc' }],
    ['alg of another algorithm', { alg: 'ES384' }],
    ['ext false', { ext: false }],
  ]
  for (const [name, extra] of variants) {
    const proof = await holder.mutated({ htu: URL_, htm: 'GET', token, header: { jwk: { ...holder.jwk, ...extra } } })
    const req = request(token, holder.jkt, proof, memo)
    const fast = outcome(await checkProof(req, known))
    const full = outcome(await checkProof(request(token, holder.jkt, proof, {}), newPolicy()))
    t.equal(fast, full, `${name}: the known key answers as a fresh import does (${full})`)
  }
})

t.test('single use holds on the synchronous path: the same proof again → dpop_replayed', async (t) => {
  const holder = await newHolder('ES256')
  const policy = newPolicy()
  const token = await keys.mint({ cnf: { jkt: holder.jkt }, jti: randomUUID() })
  const memo: TokenMemo = {}
  t.equal(outcome(await checkProof(request(token, holder.jkt, await holder.proof(URL_, 'GET', token), memo), policy)), 'allowed')
  const proof = await holder.proof(URL_, 'GET', token)
  const once = checkProof(request(token, holder.jkt, proof, memo), policy)
  const twice = checkProof(request(token, holder.jkt, proof, memo), policy)
  t.notOk(once instanceof Promise)
  t.equal(outcome(await once), 'allowed')
  t.equal(outcome(await twice), 'dpop_replayed')
})

t.test('a replay cache without an in-process answer is asked with a promise, and its failure fails closed', async (t) => {
  const holder: Holder = await newHolder('ES256')
  const token = await keys.mint({ cnf: { jkt: holder.jkt }, jti: randomUUID() })
  const memo: TokenMemo = {}
  const down: DpopPolicy = {
    ...newPolicy(),
    replay: { kind: 'redis', firstUse: () => Promise.reject(new Error('down')), close: async () => {} },
  }
  const got = checkProof(request(token, holder.jkt, await holder.proof(URL_, 'GET', token), memo), down)
  t.equal(outcome(await got), 'dpop_replay_unavailable')
  const again = checkProof(request(token, holder.jkt, await holder.proof(URL_, 'GET', token), memo), down)
  t.ok(again instanceof Promise, 'the key is known, the replay cache still waits')
  t.equal(outcome(await again), 'dpop_replay_unavailable')
})
