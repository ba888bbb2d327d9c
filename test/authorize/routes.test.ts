// compileRoutes as a table: first match wins, `*` is one segment, `**` any rest, methods,
// public rules, and the boot errors for rules that are invalid or could never match.
import t from 'tap'
import { z } from 'zod'
import { compileRoutes } from '../../src/authorize/routes.js'
import { routeSchema } from '../../src/config/schema.js'

const compile = (rules: readonly object[]) => compileRoutes(z.array(routeSchema).parse(rules))

interface Case {
  readonly name: string
  readonly rules: readonly object[]
  /** [method, normalized path, index of the matching rule or undefined for no match] */
  readonly checks: ReadonlyArray<readonly [string, string, number | undefined]>
}

const cases: Case[] = [
  {
    name: 'first match wins, whatever comes after',
    rules: [
      { path: '/orders/**', methods: ['GET'], scopes: ['orders:read'] },
      { path: '/orders/**', methods: ['POST', 'PUT', 'DELETE'], scopes: ['orders:write'] },
      { path: '/**', scopes: ['admin'] },
    ],
    checks: [
      ['GET', '/orders/1', 0],
      ['POST', '/orders/1', 1],
      ['DELETE', '/orders', 1],
      ['PATCH', '/orders/1', 2],
      ['GET', '/other', 2],
    ],
  },
  {
    name: 'a partly shadowed rule still takes the methods before it did not',
    rules: [
      { path: '/orders/**', methods: ['GET'], scopes: ['orders:read'] },
      { path: '/orders/**', scopes: ['orders:write'] },
    ],
    checks: [
      ['GET', '/orders/1', 0],
      ['POST', '/orders/1', 1],
      ['PATCH', '/orders/1', 1],
    ],
  },
  {
    name: '* is exactly one non-empty segment',
    rules: [{ path: '/orders/*', scopes: ['x'] }],
    checks: [
      ['GET', '/orders/1', 0],
      ['GET', '/orders', undefined],
      ['GET', '/orders/', undefined],
      ['GET', '/orders/1/items', undefined],
      ['GET', '/orders/1/', undefined],
    ],
  },
  {
    name: '* in the middle',
    rules: [{ path: '/a/*/c', scopes: ['x'] }],
    checks: [
      ['GET', '/a/b/c', 0],
      ['GET', '/a/zzz/c', 0],
      ['GET', '/a/b/d', undefined],
      ['GET', '/a/c', undefined],
      ['GET', '/a/b/c/d', undefined],
    ],
  },
  {
    name: '** is any rest, including none',
    rules: [{ path: '/orders/**', scopes: ['x'] }],
    checks: [
      ['GET', '/orders', 0],
      ['GET', '/orders/', 0],
      ['GET', '/orders/1', 0],
      ['GET', '/orders/1/items/2', 0],
      ['GET', '/ordersX', undefined],
      ['GET', '/order', undefined],
      ['GET', '/', undefined],
    ],
  },
  {
    name: '/** covers everything, the root too',
    rules: [{ path: '/**', scopes: ['x'] }],
    checks: [
      ['GET', '/', 0],
      ['GET', '/a', 0],
      ['GET', '/a/b/c/', 0],
    ],
  },
  {
    name: 'literal paths match exactly, trailing slash and case included',
    rules: [
      { path: '/healthz', public: true },
      { path: '/docs/', public: true },
    ],
    checks: [
      ['GET', '/healthz', 0],
      ['GET', '/healthz/', undefined],
      ['GET', '/Healthz', undefined],
      ['GET', '/docs/', 1],
      ['GET', '/docs', undefined],
    ],
  },
  {
    name: 'methods: listed ones only, and HEAD where GET is listed; names are case-insensitive in config',
    rules: [{ path: '/r', methods: ['get', 'Post'], scopes: ['x'] }],
    checks: [
      ['GET', '/r', 0],
      ['POST', '/r', 0],
      ['HEAD', '/r', 0],
      ['DELETE', '/r', undefined],
      ['OPTIONS', '/r', undefined],
      ['head', '/r', undefined],
    ],
  },
  {
    name: 'a rule for GET takes HEAD first; a later rule for every method gets what is left',
    rules: [
      { path: '/o/**', methods: ['GET'], scopes: ['read'] },
      { path: '/o/**', scopes: ['write'] },
    ],
    checks: [
      ['HEAD', '/o/1', 0],
      ['GET', '/o/1', 0],
      ['POST', '/o/1', 1],
      ['HEAD', '/x', undefined],
    ],
  },
  {
    name: 'a rule for HEAD alone before a GET rule keeps HEAD; GET goes on to the later rule',
    rules: [
      { path: '/h', methods: ['HEAD'], scopes: ['peek'] },
      { path: '/h', methods: ['GET'], scopes: ['read'] },
    ],
    checks: [
      ['HEAD', '/h', 0],
      ['GET', '/h', 1],
      ['POST', '/h', undefined],
    ],
  },
  {
    name: 'a rule without GET does not take HEAD',
    rules: [
      { path: '/w', methods: ['POST'], scopes: ['write'] },
      { path: '/w', methods: ['HEAD'], scopes: ['peek'] },
    ],
    checks: [
      ['HEAD', '/w', 1],
      ['POST', '/w', 0],
      ['GET', '/w', undefined],
    ],
  },
  {
    name: '{name} is one non-empty segment, as * is, mixed with literals and **',
    rules: [
      { path: '/tenants/{tenant}/orders/**', scopes: ['x'] },
      { path: '/t/{a}/{b}', scopes: ['x'] },
    ],
    checks: [
      ['GET', '/tenants/acme/orders', 0],
      ['GET', '/tenants/acme/orders/7/items', 0],
      ['GET', '/tenants/orders', undefined],
      ['GET', '/tenants//orders', undefined],
      ['GET', '/t/1/2', 1],
      ['GET', '/t/1', undefined],
      ['GET', '/t/1/2/3', undefined],
    ],
  },
  {
    name: 'no methods means every method',
    rules: [{ path: '/r', scopes: ['x'] }],
    checks: [
      ['GET', '/r', 0],
      ['OPTIONS', '/r', 0],
      ['PROPFIND', '/r', 0],
    ],
  },
  {
    name: 'percent-encoded literal segments compare against the normalized path',
    rules: [{ path: '/files/a%20b', scopes: ['x'] }],
    checks: [
      ['GET', '/files/a%20b', 0],
      ['GET', '/files/a b', undefined],
      ['GET', '/files/a%2520b', undefined],
    ],
  },
  {
    name: 'no rules → nothing matches (deny all)',
    rules: [],
    checks: [
      ['GET', '/', undefined],
      ['GET', '/anything', undefined],
    ],
  },
]

for (const c of cases) {
  t.test(c.name, async (t) => {
    const match = compile(c.rules)
    for (const [method, path, want] of c.checks) {
      t.equal(
        match(method, path)?.id,
        want === undefined ? undefined : String(want),
        `${method} ${path} → ${want === undefined ? 'no rule' : `routes[${want}]`}`,
      )
    }
  })
}

t.test('a matched rule carries its scopes, public flag and template path', async (t) => {
  const match = compile([
    { path: '/healthz', public: true },
    { path: '/orders/*', methods: ['GET'], scopes: ['orders:read', 'tenant:1'] },
  ])
  const pub = match('GET', '/healthz')!
  t.equal(pub.public, true)
  t.same(pub.scopes, [])
  const rule = match('GET', '/orders/7')!
  t.equal(rule.public, false)
  t.same(rule.scopes, ['orders:read', 'tenant:1'])
  t.equal(rule.path, '/orders/*', 'the template, never the raw path')
  t.equal(rule.onRevocationUnavailable, 'closed', 'fail closed unless a rule says otherwise')
})

t.test('rules that could never match fail the boot with ERR_RULES_DUPLICATE', async (t) => {
  const dupes: Array<[string, object[]]> = [
    [
      'same path, no methods twice',
      [
        { path: '/a', scopes: ['x'] },
        { path: '/a', scopes: ['y'] },
      ],
    ],
    [
      'same path, same method',
      [
        { path: '/a/**', methods: ['GET'] },
        { path: '/a/**', methods: ['GET'], scopes: ['y'] },
      ],
    ],
    [
      'same path, every method before a narrower rule',
      [
        { path: '/a', scopes: ['x'] },
        { path: '/a', methods: ['GET'] },
      ],
    ],
    [
      'same path, methods covered by two earlier rules',
      [
        { path: '/a', methods: ['GET'] },
        { path: '/a', methods: ['POST'] },
        { path: '/a', methods: ['post', 'GET'] },
      ],
    ],
    // The later rule's GET would never apply: its scopes would silently not be the ones checked.
    [
      'same path, the later rule names a method an earlier one takes',
      [
        { path: '/a', methods: ['GET'], scopes: ['x'] },
        { path: '/a', methods: ['POST', 'get'], scopes: ['y'] },
      ],
    ],
    // The earlier GET rule takes HEAD: the later rule's HEAD scopes would never be checked.
    [
      'same path, the later rule names HEAD after a GET rule',
      [
        { path: '/a', methods: ['GET'], scopes: ['x'] },
        { path: '/a', methods: ['HEAD'], scopes: ['y'] },
      ],
    ],
  ]
  for (const [what, rules] of dupes) {
    t.throws(
      () => compile(rules),
      {
        code: 'ERR_RULES_DUPLICATE',
        message:
          /^LAPSE_ROUTES: routes\[\d\] \(\/a(\/\*\*)?\) can never apply to (GET|POST|HEAD|every method): routes\[\d\] takes it first( \(a rule for GET takes HEAD too\))?$/,
      },
      what,
    )
  }
  t.throws(
    () =>
      compile([
        { path: '/a', methods: ['GET'] },
        { path: '/a', methods: ['POST', 'get'] },
      ]),
    { message: 'LAPSE_ROUTES: routes[1] (/a) can never apply to GET: routes[0] takes it first' },
    'the message names the rule, the method and the rule that takes it',
  )
  t.throws(
    () =>
      compile([
        { path: '/a', methods: ['GET'] },
        { path: '/a', methods: ['HEAD'] },
      ]),
    { message: 'LAPSE_ROUTES: routes[1] (/a) can never apply to HEAD: routes[0] takes it first (a rule for GET takes HEAD too)' },
    'the message says why a GET rule took HEAD',
  )
  const fine: Array<[string, object[]]> = [
    [
      'same path, disjoint methods',
      [
        { path: '/a', methods: ['GET'] },
        { path: '/a', methods: ['POST'] },
      ],
    ],
    [
      'same path, every other method after a narrower rule',
      [
        { path: '/a', methods: ['GET'], scopes: ['read'] },
        { path: '/a', scopes: ['write'] },
      ],
    ],
    // The GET rule's implied HEAD is not a method it names: the HEAD rule before it keeps HEAD.
    [
      'same path, a HEAD rule before a GET rule',
      [
        { path: '/a', methods: ['HEAD'], scopes: ['peek'] },
        { path: '/a', methods: ['GET'], scopes: ['read'] },
      ],
    ],
    ['different paths', [{ path: '/a' }, { path: '/a/' }, { path: '/a/*' }]],
  ]
  for (const [what, rules] of fine) t.doesNotThrow(() => compile(rules), what)
})

t.test('invalid rules fail the boot with ERR_RULES_INVALID', async (t) => {
  const invalid: Array<[string, object]> = [
    ['** before the last segment', { path: '/a/**/b' }],
    ['* mixed with text', { path: '/a/b*' }],
    ['a dot segment', { path: '/a/../b' }],
    ['a single-dot segment', { path: '/a/./b' }],
    ['public and scoped at once', { path: '/a', public: true, scopes: ['x'] }],
    // Request paths hold these decoded (or upper-case), so the rule could never match, and the
    // paths it meant to guard would fall to the next, broader rule.
    ['an encoded ":" (request paths hold it decoded)', { path: '/v1/jobs%3Apurge' }],
    ['an encoded "@"', { path: '/users/%40me/**' }],
    ['an encoded "*"', { path: '/a/%2A' }],
    ['an encoded unreserved character', { path: '/%7Euser' }],
    ['an escape in lower-case hex', { path: '/caf%c3%a9' }],
  ]
  for (const [what, rule] of invalid) {
    t.throws(() => compile([rule]), { code: 'ERR_RULES_INVALID', message: /^LAPSE_ROUTES: / }, what)
  }
  t.throws(
    () => compile([{ path: '/v1/jobs%3Apurge' }]),
    { message: /"%3A", which request paths hold decoded \(":"\)/ },
    'the message says how requests spell it',
  )
  for (const path of ['/a%20b', '/caf%C3%A9', '/a%3Fb', '/v1/jobs:purge', '/users/@me/**']) {
    t.doesNotThrow(() => compile([{ path }]), `${path}: a spelling normalized request paths use`)
  }
})
