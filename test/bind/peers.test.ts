// SPIFFE IDs, `peers` patterns and their matching: tables.
import t from 'tap'
import { isSpiffeId, peerAllowed, peerPatternProblem } from '../../src/bind/peers.js'
import { spiffeIdOf } from '../../src/bind/mtls.js'

t.test('isSpiffeId follows SPIFFE-ID §2', async (t) => {
  for (const id of ['spiffe://prod.example', 'spiffe://prod.example/ns/ci/sa/deployer', 'spiffe://a_b-c.d/x.y_z-1'])
    t.ok(isSpiffeId(id), id)
  for (const id of [
    'spiffe://',
    'spiffe:///x',
    'spiffe://Prod.example/x',
    'spiffe://a/',
    'spiffe://a//b',
    'spiffe://a/./b',
    'spiffe://a/../b',
    'spiffe://a/b?c',
    'spiffe://a/b#c',
    'spiffe://a:80/b',
    'spiffe://u@a/b',
    'https://a/b',
    'spiffe://a/b%2F',
    'spiffe://a/b*',
    `spiffe://a/${'x'.repeat(2048)}`,
  ])
    t.notOk(isSpiffeId(id), id)
})

t.test('peers patterns: exact IDs or a trailing /* ; anything else is a configuration error', async (t) => {
  for (const p of ['spiffe://prod.example/ns/ci/sa/deployer', 'spiffe://prod.example/ns/ci/*', 'spiffe://prod.example/*'])
    t.equal(peerPatternProblem(p), undefined, p)
  for (const p of [
    'spiffe://prod.example/ns/*/sa',
    'spiffe://prod.example/ns/**',
    'spiffe://*/x',
    'spiffe://prod.example/ns/c*',
    'prod.example/ns',
    '*',
  ])
    t.type(peerPatternProblem(p), 'string', p)
})

t.test('peerAllowed: /* is exactly one more segment', async (t) => {
  const peers = ['spiffe://prod.example/ns/ci/sa/deployer', 'spiffe://prod.example/ns/ci/*']
  t.ok(peerAllowed(undefined, undefined), 'no list: anyone, even no peer')
  t.ok(peerAllowed(peers, 'spiffe://prod.example/ns/ci/sa/deployer'))
  t.ok(peerAllowed(peers, 'spiffe://prod.example/ns/ci/builder'))
  t.notOk(peerAllowed(peers, 'spiffe://prod.example/ns/ci/sa/other'), 'two segments below ns/ci')
  t.notOk(peerAllowed(peers, 'spiffe://prod.example/ns/ci'), 'ns/ci itself')
  t.notOk(peerAllowed(peers, 'spiffe://prod.example/ns/cix/a'))
  t.notOk(peerAllowed(peers, 'spiffe://other.example/ns/ci/builder'))
  t.notOk(peerAllowed(peers, undefined), 'no peer')
})

t.test('spiffeIdOf: the one URI SAN, if it is a SPIFFE ID', async (t) => {
  t.equal(spiffeIdOf('URI:spiffe://a/b'), 'spiffe://a/b')
  t.equal(spiffeIdOf('DNS:x.example, URI:spiffe://a/b, IP Address:127.0.0.1'), 'spiffe://a/b')
  t.equal(spiffeIdOf('URI:spiffe://a/b, URI:spiffe://a/c'), undefined, 'two URI SANs')
  t.equal(spiffeIdOf('URI:https://a/b'), undefined)
  t.equal(spiffeIdOf('URI:"spiffe://a/b, DNS:evil"'), undefined, 'a quoted value')
  t.equal(spiffeIdOf(undefined), undefined)
})
