// LAPSE_REDIS_URL forms → ioredis options; bad URLs stop the start without echoing the password.
import t from 'tap'
import { parseRedisUrl } from '../../src/revocation/redis-url.js'

t.test('accepted forms', async (t) => {
  const cases: Array<[string, unknown]> = [
    ['redis://127.0.0.1', { kind: 'standalone', options: { host: '127.0.0.1', port: 6379 } }],
    [
      'redis://:s3cr%40t@redis.internal:6380/2',
      { kind: 'standalone', options: { host: 'redis.internal', port: 6380, password: 's3cr@t', db: 2 } },
    ],
    ['redis://lapse:pw@[::1]:7000', { kind: 'standalone', options: { host: '::1', port: 7000, username: 'lapse', password: 'pw' } }],
    ['rediss://:pw@cache.example.com', { kind: 'standalone', options: { host: 'cache.example.com', port: 6379, password: 'pw', tls: {} } }],
    ['unix:///run/redis/redis.sock', { kind: 'standalone', options: { path: '/run/redis/redis.sock' } }],
    ['unix://:pw@/run/redis.sock?db=3', { kind: 'standalone', options: { path: '/run/redis.sock', password: 'pw', db: 3 } }],
    [
      'redis-sentinel://:pw@10.0.0.1:26379,10.0.0.2/mymaster',
      {
        kind: 'sentinel',
        options: {
          sentinels: [
            { host: '10.0.0.1', port: 26379 },
            { host: '10.0.0.2', port: 26379 },
          ],
          name: 'mymaster',
          password: 'pw',
        },
      },
    ],
    [
      'redis-sentinel://s1:26379/main/1?sentinel_password=spw',
      {
        kind: 'sentinel',
        options: { sentinels: [{ host: 's1', port: 26379 }], name: 'main', db: 1, sentinelPassword: 'spw' },
      },
    ],
    [
      'rediss-sentinel://s1:26379/main',
      {
        kind: 'sentinel',
        options: { name: 'main', tls: {}, sentinelTLS: {}, enableTLSForSentinelMode: true },
      },
    ],
    [
      'redis-cluster://:pw@n1:7000,n2:7001,n3',
      {
        kind: 'cluster',
        nodes: [
          { host: 'n1', port: 7000 },
          { host: 'n2', port: 7001 },
          { host: 'n3', port: 6379 },
        ],
        options: { password: 'pw' },
      },
    ],
    ['rediss-cluster://n1:7000', { kind: 'cluster', options: { tls: {} } }],
  ]
  for (const [url, expected] of cases) t.match(parseRedisUrl(url), expected, url)
})

t.test('safeUrl masks the passwords', async (t) => {
  t.equal(parseRedisUrl('redis://lapse:hunter2@h:1').safeUrl, 'redis://lapse:***@h:1')
  t.equal(parseRedisUrl('redis-sentinel://:a@s:1/m?sentinel_password=b').safeUrl, 'redis-sentinel://:***@s:1/m?sentinel_password=***')
})

t.test('refused forms, with the reason and never the password', async (t) => {
  const cases: Array<[string, RegExp]> = [
    ['http://:hunter2@h', /unsupported scheme "http:"/],
    ['127.0.0.1:6379', /is not a URL/],
    ['redis://:hunter2@a:1,b:2', /exactly one host/],
    ['redis://:hunter2@h:99999', /bad port/],
    ['redis://:hunter2@h/x', /bad database/],
    ['redis://:hunter2@h?family=6', /unknown parameter "family"/],
    ['redis-sentinel://:hunter2@s:26379', /master name/],
    ['redis-sentinel://s:26379/m?sentinel_pasword=x', /unknown parameter "sentinel_pasword"/],
    ['redis-cluster://:hunter2@n1:7000/0', /no path/],
    ['unix://:hunter2@host/run/redis.sock', /takes a path, not a host/],
  ]
  for (const [url, reason] of cases) {
    t.throws(() => parseRedisUrl(url), reason, url)
    try {
      parseRedisUrl(url)
    } catch (err) {
      t.notMatch((err as Error).message, /hunter2/, 'no password in the message')
    }
  }
})
