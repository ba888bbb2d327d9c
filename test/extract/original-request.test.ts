// readOriginalRequest and protocolOf as tables: each protocol's headers → the original request it
// asks about, or the refusal; paths that are not decision paths → undefined.
import t from 'tap'
import { protocolOf, readOriginalRequest, type DecisionProtocol } from '../../src/extract/original-request.js'

t.test('protocolOf: the decision path names the protocol', async (t) => {
  const cases: Array<[string, DecisionProtocol | undefined]> = [
    ['/v1/decide/nginx', 'nginx'],
    ['/v1/decide/forward', 'forward'],
    ['/v1/decide/forward?x=1', 'forward'], // Caddy keeps the original query
    ['/v1/decide/envoy/orders/1', 'envoy'],
    ['/v1/decide/envoy/orders/1?x=1', 'envoy'],
    ['/v1/decide/envoy?x=1', 'envoy'],
    ['/v1/decide/envoy', 'envoy'],
    ['/v1/decide/envoyx/orders', undefined],
    ['/v1/decide/nginx/', undefined],
    ['/v1/decide/NGINX', undefined],
    ['/v1/decide', undefined],
    ['/', undefined],
    ['/orders/1', undefined],
  ]
  for (const [url, want] of cases) t.equal(protocolOf(url), want, url)
})

const PATH_OVERRIDE = 'X-Original-URL, X-Rewrite-URL and X-Forwarded-Prefix are refused: the upstream would serve another path'

type Row = [
  name: string,
  protocol: DecisionProtocol,
  method: string,
  url: string,
  raw: string[],
  want: { method: string; url: string; host: string | undefined } | string,
]

const rows: Row[] = [
  // nginx: X-Original-Method and X-Original-URI; the Host field is the original's.
  [
    'nginx',
    'nginx',
    'GET',
    '/v1/decide/nginx',
    ['Host', 'api.test', 'X-Original-Method', 'POST', 'X-Original-URI', '/orders/1?x=1'],
    { method: 'POST', url: '/orders/1?x=1', host: undefined },
  ],
  [
    'nginx, names in any case',
    'nginx',
    'GET',
    '/v1/decide/nginx',
    ['x-original-method', 'DELETE', 'X-ORIGINAL-URI', '/a'],
    { method: 'DELETE', url: '/a', host: undefined },
  ],
  [
    'nginx, an extension method',
    'nginx',
    'GET',
    '/v1/decide/nginx',
    ['X-Original-Method', 'PROPFIND', 'X-Original-URI', '/a'],
    { method: 'PROPFIND', url: '/a', host: undefined },
  ],
  ['nginx without X-Original-Method', 'nginx', 'GET', '/v1/decide/nginx', ['X-Original-URI', '/a'], 'X-Original-Method is missing'],
  ['nginx without X-Original-URI', 'nginx', 'GET', '/v1/decide/nginx', ['X-Original-Method', 'GET'], 'X-Original-URI is missing'],
  [
    'nginx, an empty X-Original-URI',
    'nginx',
    'GET',
    '/v1/decide/nginx',
    ['X-Original-Method', 'GET', 'X-Original-URI', ''],
    'X-Original-URI is missing',
  ],
  [
    'nginx, two X-Original-URI',
    'nginx',
    'GET',
    '/v1/decide/nginx',
    ['X-Original-Method', 'GET', 'X-Original-URI', '/public/x', 'X-Original-URI', '/admin'],
    'more than one X-Original-URI',
  ],
  [
    'nginx, two X-Original-Method',
    'nginx',
    'GET',
    '/v1/decide/nginx',
    ['X-Original-Method', 'GET', 'x-original-method', 'POST', 'X-Original-URI', '/a'],
    'more than one X-Original-Method',
  ],
  [
    'nginx, an absolute URI',
    'nginx',
    'GET',
    '/v1/decide/nginx',
    ['X-Original-Method', 'GET', 'X-Original-URI', 'http://x/admin'],
    'X-Original-URI must be a path',
  ],
  [
    'nginx, an asterisk target',
    'nginx',
    'GET',
    '/v1/decide/nginx',
    ['X-Original-Method', 'OPTIONS', 'X-Original-URI', '*'],
    'X-Original-URI must be a path',
  ],
  [
    'nginx, a method with a space',
    'nginx',
    'GET',
    '/v1/decide/nginx',
    ['X-Original-Method', 'GET /admin', 'X-Original-URI', '/a'],
    'X-Original-Method is not a method',
  ],
  // Traefik and Caddy: X-Forwarded-Method, -Uri, -Host, -Proto.
  [
    'forward',
    'forward',
    'GET',
    '/v1/decide/forward',
    ['X-Forwarded-Method', 'PUT', 'X-Forwarded-Uri', '/orders/1', 'X-Forwarded-Host', 'api.test', 'X-Forwarded-Proto', 'https'],
    { method: 'PUT', url: '/orders/1', host: 'api.test' },
  ],
  [
    'forward without -Proto',
    'forward',
    'GET',
    '/v1/decide/forward',
    ['X-Forwarded-Method', 'GET', 'X-Forwarded-Uri', '/a', 'X-Forwarded-Host', 'api.test:8443'],
    { method: 'GET', url: '/a', host: 'api.test:8443' },
  ],
  [
    'forward without -Host',
    'forward',
    'GET',
    '/v1/decide/forward',
    ['X-Forwarded-Method', 'GET', 'X-Forwarded-Uri', '/a'],
    'X-Forwarded-Host is missing',
  ],
  [
    'forward without -Uri',
    'forward',
    'GET',
    '/v1/decide/forward',
    ['X-Forwarded-Method', 'GET', 'X-Forwarded-Host', 'a'],
    'X-Forwarded-Uri is missing',
  ],
  [
    'forward without -Method',
    'forward',
    'GET',
    '/v1/decide/forward',
    ['X-Forwarded-Uri', '/a', 'X-Forwarded-Host', 'a'],
    'X-Forwarded-Method is missing',
  ],
  [
    'forward, two -Uri',
    'forward',
    'GET',
    '/v1/decide/forward',
    ['X-Forwarded-Method', 'GET', 'X-Forwarded-Uri', '/a', 'X-Forwarded-Uri', '/b', 'X-Forwarded-Host', 'a'],
    'more than one X-Forwarded-Uri',
  ],
  [
    'forward, two -Host',
    'forward',
    'GET',
    '/v1/decide/forward',
    ['X-Forwarded-Method', 'GET', 'X-Forwarded-Uri', '/a', 'X-Forwarded-Host', 'a', 'X-Forwarded-Host', 'b'],
    'more than one X-Forwarded-Host',
  ],
  [
    'forward, an odd -Proto',
    'forward',
    'GET',
    '/v1/decide/forward',
    ['X-Forwarded-Method', 'GET', 'X-Forwarded-Uri', '/a', 'X-Forwarded-Host', 'a', 'X-Forwarded-Proto', 'gopher'],
    'X-Forwarded-Proto is not http or https',
  ],
  [
    'forward ignores the nginx fields',
    'forward',
    'GET',
    '/v1/decide/forward',
    ['X-Original-Method', 'GET', 'X-Original-URI', '/a'],
    'X-Forwarded-Method is missing',
  ],
  // Envoy: the original method, the original path after the prefix; Host is the original's.
  [
    'envoy',
    'envoy',
    'DELETE',
    '/v1/decide/envoy/orders/1?x=1',
    ['Host', 'api.test'],
    { method: 'DELETE', url: '/orders/1?x=1', host: undefined },
  ],
  ['envoy, the root', 'envoy', 'GET', '/v1/decide/envoy/', [], { method: 'GET', url: '/', host: undefined }],
  ['envoy, the prefix alone', 'envoy', 'GET', '/v1/decide/envoy', [], 'the original path after /v1/decide/envoy is missing'],
  ['envoy, only a query', 'envoy', 'GET', '/v1/decide/envoy?x=1', [], 'the original path after /v1/decide/envoy must be a path'],
  [
    'nginx, a path override from the client',
    'nginx',
    'GET',
    '/v1/decide/nginx',
    ['X-Original-Method', 'GET', 'X-Original-URI', '/public/x', 'X-Original-URL', '/admin'],
    PATH_OVERRIDE,
  ],
  [
    'forward, X-Rewrite-URL',
    'forward',
    'GET',
    '/v1/decide/forward',
    ['X-Forwarded-Method', 'GET', 'X-Forwarded-Uri', '/a', 'X-Forwarded-Host', 'a', 'x-rewrite-url', '/admin'],
    PATH_OVERRIDE,
  ],
  ['envoy, X-Forwarded-Prefix', 'envoy', 'GET', '/v1/decide/envoy/public/x', ['X-Forwarded-Prefix', '/admin'], PATH_OVERRIDE],
  [
    'envoy ignores X-Original-URI',
    'envoy',
    'GET',
    '/v1/decide/envoy/public/x',
    ['X-Original-URI', '/admin'],
    { method: 'GET', url: '/public/x', host: undefined },
  ],
]

t.test('readOriginalRequest: each protocol as a table', async (t) => {
  for (const [name, protocol, method, url, raw, want] of rows) {
    const got = readOriginalRequest(protocol, method, url, raw)
    if (typeof want === 'string') {
      t.match(got, { allow: false, reason: 'invalid_request', description: want }, `${name}: refused (${want})`)
    } else {
      t.same(got, { protocol, ...want }, name)
    }
  }
})
