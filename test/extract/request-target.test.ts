// normalizeTarget as a table: the tricky request targets, each either normalized to the one
// path that is matched and forwarded, or refused as invalid_request.
import t from 'tap'
import { normalizeTarget } from '../../src/target/request-target.js'

const normalized: Array<[raw: string, path: string, why: string]> = [
  ['/a/../b', '/b', 'dot-dot resolved'],
  ['/a/./b', '/a/b', 'dot resolved'],
  ['/a/b/../../c', '/c', 'two levels up'],
  ['/a/%2e%2e/b', '/b', 'encoded dot-dot (lower case) decoded, then resolved'],
  ['/a/%2E%2E/b', '/b', 'encoded dot-dot (upper case)'],
  ['/a/.%2e/b', '/b', 'half-encoded dot-dot'],
  ['/a/%2e/b', '/a/b', 'encoded dot'],
  ['//a//b', '/a/b', 'empty segments merged'],
  ['/a///', '/a/', 'empty segments merged, trailing slash kept'],
  ['/a/', '/a/', 'trailing slash kept'],
  ['/a', '/a', 'no trailing slash added'],
  ['/a/b/..', '/a/', 'dot-dot as the last segment leaves a trailing slash'],
  ['/a/.', '/a/', 'dot as the last segment leaves a trailing slash'],
  ['/', '/', 'the root'],
  ['/%41%62c', '/Abc', 'unreserved characters decoded'],
  ['/%7e%2D%5f', '/~-_', 'unreserved punctuation decoded'],
  ['/a%20b', '/a%20b', 'reserved escapes kept'],
  ['/%e2%82%ac', '/%E2%82%AC', 'escapes upper-cased (valid UTF-8 kept)'],
  ["/a:b@c!$&'()*+,=", "/a:b@c!$&'()*+,=", 'sub-delims and : @ are path characters'],
  ['/v1/jobs%3Apurge', '/v1/jobs:purge', 'an encoded ":" is decoded: one path, whichever spelling'],
  ['/v1/jobs%3apurge', '/v1/jobs:purge', 'an encoded ":" in lower-case hex'],
  ['/users/%40me/keys', '/users/@me/keys', 'an encoded "@" is decoded'],
  ['/%21%24%26%27%28%29%2A%2B%2C%3D%3A%40', "/!$&'()*+,=:@", 'every encoded sub-delim a segment may hold raw, and : @'],
  ['/a/%2A', '/a/*', 'an encoded "*" is decoded into plain text (rules compare it, never read it as a wildcard)'],
  ['/a%3Fb%23c%25d', '/a%3Fb%23c%25d', 'encoded "?", "#" and "%" are kept: decoded they would end or re-escape the path'],
  ['/a%5Bb%5D', '/a%5Bb%5D', 'encoded "[" and "]" are kept (not allowed raw in a path)'],
  ['/Orders', '/Orders', 'case kept'],
]

const refused: Array<[raw: string, why: string]> = [
  ['/a/%2Fb', 'encoded slash'],
  ['/a%2fb', 'encoded slash (lower case)'],
  ['/a/%2e%2e%2fb', 'encoded dot-dot-slash'],
  ['/a\\b', 'raw backslash'],
  ['/a/..\\b', 'backslash dot-dot'],
  ['/a%5Cb', 'encoded backslash'],
  ['/a;b', 'raw semicolon'],
  ['/a/..;/b', 'Tomcat path parameter'],
  ['/a%3Bb', 'encoded semicolon'],
  ['/a%3bb', 'encoded semicolon (lower case): not decoded into the raw ";" that is refused'],
  ['/v1/jobs%EF%BC%9Apurge', 'fullwidth colon (NFKC ":")'],
  ['/users/%EF%BC%A0me', 'fullwidth commercial at (NFKC "@")'],
  ['/%C0%AE%C0%AE/b', 'overlong UTF-8 for ".."'],
  ['/%C0%AF', 'overlong UTF-8 for "/"'],
  ['/%E0%80%AF', 'three-byte overlong "/"'],
  ['/%ff', 'not UTF-8'],
  ['/%C3', 'truncated UTF-8'],
  ['/a%00b', 'encoded NUL'],
  ['/a%0Ab', 'encoded line feed'],
  ['/a%', 'broken escape'],
  ['/a%zz', 'non-hex escape'],
  ['/a b', 'raw space'],
  ['/é', 'raw non-ASCII'],
  ['/..', 'dot-dot above the root'],
  ['/a/../../b', 'dot-dot above the root, further in'],
  ['/%2e%2e/a', 'encoded dot-dot above the root'],
  ['http://evil.example/a', 'absolute-form'],
  ['evil.example:443', 'authority-form'],
  ['*', 'asterisk-form'],
  ['', 'empty target'],
  ['/a?x=%zz', 'broken escape in the query'],
  ['/a?x=\\', 'backslash in the query'],
]

t.test('tricky paths normalize to one path', async (t) => {
  for (const [raw, path, why] of normalized) {
    const got = normalizeTarget(raw)
    t.same(got, { path, query: '', hasQuery: false }, `${raw} → ${path} (${why})`)
  }
})

t.test('paths that cannot be normalized safely are refused as invalid_request', async (t) => {
  for (const [raw, why] of refused) {
    const got = normalizeTarget(raw)
    t.equal('reason' in got ? got.reason : got.path, 'invalid_request', `${JSON.stringify(raw)} refused (${why})`)
    if ('description' in got) t.type(got.description, 'string')
  }
})

t.test('the query is kept verbatim and apart from the path', async (t) => {
  t.same(
    normalizeTarget('/a/../b?x=1&y=%2F..'),
    { path: '/b', query: 'x=1&y=%2F..', hasQuery: true },
    'an encoded slash is fine in the query',
  )
  t.same(normalizeTarget('/a?'), { path: '/a', query: '', hasQuery: true }, 'an empty query is still a query')
  t.same(normalizeTarget('/a?x=a;b'), { path: '/a', query: 'x=a;b', hasQuery: true }, '; does not split a query')
  t.same(normalizeTarget('/a?x=/../b'), { path: '/a', query: 'x=/../b', hasQuery: true }, 'dot segments in the query are data')
})

t.test('normalizing is idempotent: a normalized path normalizes to itself', async (t) => {
  for (const [, path] of normalized) {
    const again = normalizeTarget(path)
    t.equal('path' in again ? again.path : again.reason, path, path)
  }
})
