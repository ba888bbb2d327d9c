// A missing or malformed setting stops the start with one line naming the setting, both through
// loadConfig and through the real `lapse proxy` command; the YAML file works, env wins over it.
import { execFile, spawn } from 'node:child_process'
import { existsSync, mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import t from 'tap'
import { loadConfig } from '../../src/config/load.js'
import { testKeys } from '../fixtures/keys.js'

const ROOT = resolve(import.meta.dirname, '../..')
const BIN = join(ROOT, 'bin/lapse.js')
// `npm test` builds dist/ before tap runs; bin/lapse.js runs the build.
const BUILT = existsSync(join(ROOT, 'dist/cli/index.js'))

async function validEnv(): Promise<Record<string, string | undefined>> {
  return {
    LAPSE_LISTEN: '127.0.0.1:0',
    LAPSE_ADMIN_LISTEN: '127.0.0.1:0',
    LAPSE_DRAIN_DELAY: '0',
    LAPSE_UPSTREAM: 'http://127.0.0.1:3000',
    LAPSE_ISSUER: 'https://issuer.test',
    LAPSE_AUDIENCE: 'orders-api',
    LAPSE_JWKS_FILE: (await testKeys()).jwksPath,
  }
}

interface Bad {
  readonly name: string
  readonly change: Record<string, string | undefined>
  /** The setting the one line must name. */
  readonly setting: RegExp
  /** What the line must say about it. */
  readonly why: RegExp
  /** Also run through the real command (each spawn costs a Node start, so not every row). */
  readonly spawn?: true
}

const bad: Bad[] = [
  { spawn: true, name: 'LAPSE_UPSTREAM missing', change: { LAPSE_UPSTREAM: undefined }, setting: /^LAPSE_UPSTREAM: /, why: /required/ },
  { spawn: true, name: 'LAPSE_ISSUER missing', change: { LAPSE_ISSUER: undefined }, setting: /^LAPSE_ISSUER: /, why: /required/ },
  { spawn: true, name: 'LAPSE_AUDIENCE missing', change: { LAPSE_AUDIENCE: undefined }, setting: /^LAPSE_AUDIENCE: /, why: /required/ },
  {
    spawn: true,
    name: 'both LAPSE_JWKS_URL and LAPSE_JWKS_FILE unset',
    change: { LAPSE_JWKS_FILE: undefined },
    setting: /^LAPSE_JWKS_URL: /,
    why: /LAPSE_JWKS_FILE.*required/,
  },
  { spawn: true, name: 'LAPSE_UPSTREAM not a URL', change: { LAPSE_UPSTREAM: 'not a url' }, setting: /^LAPSE_UPSTREAM: /, why: /URL/ },
  { name: 'LAPSE_UPSTREAM with another scheme', change: { LAPSE_UPSTREAM: 'ftp://127.0.0.1/' }, setting: /^LAPSE_UPSTREAM: /, why: /http/ },
  {
    spawn: true,
    name: 'LAPSE_JWKS_URL not a URL',
    change: { LAPSE_JWKS_FILE: undefined, LAPSE_JWKS_URL: 'issuer/jwks' },
    setting: /^LAPSE_JWKS_URL: /,
    why: /URL/,
  },
  {
    spawn: true,
    name: 'LAPSE_CLOCK_SKEW not a number',
    change: { LAPSE_CLOCK_SKEW: 'abc' },
    setting: /^LAPSE_CLOCK_SKEW: /,
    why: /number/,
  },
  { name: 'LAPSE_CLOCK_SKEW not whole', change: { LAPSE_CLOCK_SKEW: '1.5' }, setting: /^LAPSE_CLOCK_SKEW: /, why: /int/ },
  {
    name: 'LAPSE_MAX_TOKEN_LIFETIME negative',
    change: { LAPSE_MAX_TOKEN_LIFETIME: '-1' },
    setting: /^LAPSE_MAX_TOKEN_LIFETIME: /,
    why: />=\s*0/,
  },
  {
    spawn: true,
    name: "LAPSE_ALGORITHMS with the unknown algorithm 'none'",
    change: { LAPSE_ALGORITHMS: 'ES256,none' },
    setting: /^LAPSE_ALGORITHMS: /,
    why: /expected one of/,
  },
  {
    name: 'LAPSE_UPSTREAM_MAX_CONNECTIONS zero',
    change: { LAPSE_UPSTREAM_MAX_CONNECTIONS: '0' },
    setting: /^LAPSE_UPSTREAM_MAX_CONNECTIONS: /,
    why: />=\s*1/,
  },
  { name: 'LAPSE_LISTEN without a port', change: { LAPSE_LISTEN: 'localhost' }, setting: /^LAPSE_LISTEN: /, why: /host:port/ },
  {
    name: 'LAPSE_ALLOW_QUERY_TOKEN not a boolean',
    change: { LAPSE_ALLOW_QUERY_TOKEN: 'maybe' },
    setting: /^LAPSE_ALLOW_QUERY_TOKEN: /,
    why: /boolean/,
  },
  { name: 'LAPSE_ISSUER an empty list', change: { LAPSE_ISSUER: ' , ' }, setting: /^LAPSE_ISSUER: /, why: /1/ },
  {
    name: 'LAPSE_MAX_HEADER_FIELDS below 10',
    change: { LAPSE_MAX_HEADER_FIELDS: '9' },
    setting: /^LAPSE_MAX_HEADER_FIELDS: /,
    why: />=\s*10/,
  },
  {
    name: 'LAPSE_MAX_HEADER_FIELDS above what Node keeps by default',
    change: { LAPSE_MAX_HEADER_FIELDS: '1001' },
    setting: /^LAPSE_MAX_HEADER_FIELDS: /,
    why: /<=\s*1000/,
  },
  {
    spawn: true,
    name: 'LAPSE_HOSTS entry with a port',
    change: { LAPSE_HOSTS: 'api.example.com:8080' },
    setting: /^LAPSE_HOSTS: /,
    why: /without port/,
  },
  {
    name: 'LAPSE_HOSTS entry with a path',
    change: { LAPSE_HOSTS: 'api.example.com,evil/admin' },
    setting: /^LAPSE_HOSTS: /,
    why: /host name/,
  },
  { name: 'LAPSE_HOSTS wildcard not a whole label', change: { LAPSE_HOSTS: '*example.com' }, setting: /^LAPSE_HOSTS: /, why: /\*\.name/ },
  { name: 'LAPSE_HOSTS bad IPv6', change: { LAPSE_HOSTS: '[::1::2]' }, setting: /^LAPSE_HOSTS: /, why: /IPv6/ },
  { name: 'LAPSE_HOSTS an empty list', change: { LAPSE_HOSTS: ' , ' }, setting: /^LAPSE_HOSTS: /, why: /1/ },
  { spawn: true, name: 'LAPSE_ROUTES not YAML or JSON', change: { LAPSE_ROUTES: '[{' }, setting: /^LAPSE_ROUTES: /, why: /YAML|JSON/ },
]

t.test('loadConfig: each missing or malformed setting → LapseError, one line naming it', async (t) => {
  const base = await validEnv()
  t.doesNotThrow(() => loadConfig(base), 'the base environment is valid')
  for (const c of bad) {
    const env = { ...base, ...c.change }
    try {
      loadConfig(env)
      t.fail(`${c.name}: accepted`)
    } catch (err) {
      const e = err as { code?: string; message: string }
      t.match(e.code, /^ERR_(CONFIG|RULES)_INVALID$/, `${c.name}: code`)
      t.match(e.message, c.setting, `${c.name}: names the setting`)
      t.match(e.message, c.why, `${c.name}: says why`)
      t.notOk(e.message.includes('\n'), `${c.name}: one line`)
    }
  }
})

/** Runs `node bin/lapse.js proxy` with only `env` (and PATH; no telemetry export); resolves when it exits. */
function runProxy(
  env: Record<string, string | undefined>,
): Promise<{ code: number | null; signal: string | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      [BIN, 'proxy'],
      { env: { PATH: process.env.PATH, OTEL_SDK_DISABLED: 'true', ...env }, cwd: ROOT, timeout: 15_000 },
      (err, stdout, stderr) => {
        const e = err as (Error & { code?: number | string; signal?: string }) | null
        resolve({ code: e ? (typeof e.code === 'number' ? e.code : -1) : 0, signal: e?.signal ?? null, stdout, stderr })
      },
    )
  })
}

t.test('lapse proxy: each missing or malformed setting → non-zero exit, exactly one stderr line naming it, no stack trace', async (t) => {
  t.ok(BUILT, 'dist/ is built (npm test builds it; run `npm run build` before running this file alone)')
  if (!BUILT) return
  const base = await validEnv()
  const results = await Promise.all(bad.filter((c) => c.spawn).map(async (c) => ({ c, r: await runProxy({ ...base, ...c.change }) })))
  for (const { c, r } of results) {
    t.equal(r.signal, null, `${c.name}: exited by itself`)
    t.not(r.code, 0, `${c.name}: non-zero exit`)
    const lines = r.stderr.split('\n').filter((l) => l.trim() !== '')
    t.equal(lines.length, 1, `${c.name}: exactly one stderr line (exit ${r.code}, signal ${r.signal}, stdout ${r.stdout.length} bytes)`)
    const line = lines[0] ?? ''
    t.match(line, /^lapse: ERR_[A-Z_]+ /, `${c.name}: an ERR_* code`)
    t.match(line.replace(/^lapse: ERR_[A-Z_]+ /, ''), c.setting, `${c.name}: names the setting`)
    t.notMatch(r.stderr, /^\s+at /m, `${c.name}: no stack trace`)
    t.equal(r.stdout, '', `${c.name}: nothing on stdout`)
  }
})

t.test('lapse proxy: the same base environment starts, listens, and stops on SIGTERM with exit 0', async (t) => {
  t.ok(BUILT, 'dist/ is built')
  if (!BUILT) return
  const child = spawn(process.execPath, [BIN, 'proxy'], {
    env: { PATH: process.env.PATH, OTEL_SDK_DISABLED: 'true', ...(await validEnv()) },
    cwd: ROOT,
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  t.teardown(() => {
    if (child.exitCode === null) child.kill('SIGKILL')
  })
  let stdout = ''
  child.stdout.on('data', (c: Buffer) => {
    stdout += c.toString('utf8')
  })
  const listening = await new Promise<boolean>((resolve) => {
    const timer = setTimeout(() => resolve(false), 10_000)
    child.stdout.on('data', () => {
      if (stdout.includes('lapse is listening')) {
        clearTimeout(timer)
        resolve(true)
      }
    })
    child.once('exit', () => {
      clearTimeout(timer)
      resolve(false)
    })
  })
  t.ok(listening, 'logged "lapse is listening"')
  const exit = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)))
  child.kill('SIGTERM')
  t.equal(await exit, 0, 'clean exit')
})

t.test('YAML file via LAPSE_CONFIG: settings read from it, environment wins over it', async (t) => {
  const keys = await testKeys()
  const dir = mkdtempSync(join(tmpdir(), 'lapse-config-'))
  const file = join(dir, 'lapse.yaml')
  writeFileSync(
    file,
    [
      'upstream: http://127.0.0.1:3000',
      'issuer: [https://a.test, https://b.test]',
      'audience: from-file',
      `jwks_file: ${keys.jwksPath}`,
      'clock_skew: 10',
      'max_token_lifetime: 600',
      'routes:',
      '  - { path: /healthz, public: true }',
      '  - { path: /orders/**, methods: [GET], scopes: [orders:read] }',
      '',
    ].join('\n'),
  )

  const fromFile = loadConfig({ LAPSE_CONFIG: file })
  t.equal(fromFile.upstream!.href, 'http://127.0.0.1:3000/')
  t.same(fromFile.issuers, ['https://a.test', 'https://b.test'])
  t.same(fromFile.audiences, ['from-file'])
  t.equal(fromFile.clockSkewS, 10)
  t.equal(fromFile.maxLifetimeS, 600)
  t.equal(fromFile.routes.length, 2)
  t.same(fromFile.routes[1]?.scopes, ['orders:read'])
  t.equal(fromFile.allowQueryToken, false, 'defaults fill what the file leaves out')

  const overridden = loadConfig({
    LAPSE_CONFIG: file,
    LAPSE_CLOCK_SKEW: '5',
    LAPSE_AUDIENCE: 'from-env,second',
    LAPSE_ROUTES: '[{"path":"/only","public":true}]',
  })
  t.equal(overridden.clockSkewS, 5, 'env wins for a number')
  t.same(overridden.audiences, ['from-env', 'second'], 'env wins for a list')
  t.same(
    overridden.routes.map((r) => r.path),
    ['/only'],
    'env wins for routes',
  )
  t.same(overridden.issuers, ['https://a.test', 'https://b.test'], 'what env does not set still comes from the file')
  t.ok(Object.isFrozen(overridden) && Object.isFrozen(overridden.routes), 'the result is frozen')
})

t.test('LAPSE_HOSTS and LAPSE_MAX_HEADER_FIELDS: defaults, normalized lists, YAML keys hosts and max_header_fields', async (t) => {
  const base = await validEnv()
  const plain = loadConfig(base)
  t.equal(plain.hosts, undefined, 'unset: any valid Host')
  t.equal(plain.maxHeaderFields, 100, 'Envoy’s default')
  const set = loadConfig({
    ...base,
    LAPSE_HOSTS: 'API.Example.com., *.Example.org , [::1], 10.0.0.1,api.example.com',
    LAPSE_MAX_HEADER_FIELDS: '250',
  })
  t.same(set.hosts, ['api.example.com', '*.example.org', '[::1]', '10.0.0.1'], 'lower-cased, trailing dot dropped, repeats once')
  t.equal(set.maxHeaderFields, 250)
  const dir = mkdtempSync(join(tmpdir(), 'lapse-config-'))
  const file = join(dir, 'lapse.yaml')
  writeFileSync(file, 'hosts: [api.example.com, "*.example.org"]\nmax_header_fields: 40\n')
  const fromFile = loadConfig({ ...base, LAPSE_CONFIG: file })
  t.same(fromFile.hosts, ['api.example.com', '*.example.org'])
  t.equal(fromFile.maxHeaderFields, 40)
})

t.test('YAML file problems name LAPSE_CONFIG or the setting, in one line', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'lapse-config-'))
  const write = (name: string, text: string) => {
    const path = join(dir, name)
    writeFileSync(path, text)
    return path
  }
  const cases: Array<[string, string, RegExp, string]> = [
    ['missing file', join(dir, 'nope.yaml'), /^LAPSE_CONFIG: cannot read/, 'ERR_CONFIG_FILE'],
    ['not YAML', write('broken.yaml', 'upstream: [unclosed\n'), /^LAPSE_CONFIG: .* is not valid YAML/, 'ERR_CONFIG_FILE'],
    ['not a mapping', write('list.yaml', '- a\n- b\n'), /^LAPSE_CONFIG: .* must hold a mapping/, 'ERR_CONFIG_FILE'],
    [
      'unknown key',
      write('typo.yaml', 'upstream: http://127.0.0.1:1\nissuer: i\naudience: a\njwks_file: f\nclock_skwe: 5\n'),
      /^LAPSE_CLOCK_SKWE: not a Lapse setting/,
      'ERR_CONFIG_INVALID',
    ],
    [
      'bad value',
      write('bad.yaml', 'upstream: http://127.0.0.1:1\nissuer: i\naudience: a\njwks_file: f\nclock_skew: soon\n'),
      /^LAPSE_CLOCK_SKEW: /,
      'ERR_CONFIG_INVALID',
    ],
  ]
  for (const [what, path, message, code] of cases) {
    t.throws(() => loadConfig({ LAPSE_CONFIG: path }), { code, message }, what)
  }
})

t.test('a malformed rule is ERR_RULES_INVALID at the same place, from the file or from LAPSE_ROUTES', async (t) => {
  const env = await validEnv()
  const dir = mkdtempSync(join(tmpdir(), 'lapse-config-'))
  const file = join(dir, 'routes.yaml')
  const rules: Array<[string, string, string]> = [
    ['a path without its /', '[{ path: orders }]', 'a route path starts with / (at routes[0].path)'],
    [
      'a method that is not letters',
      '[{ path: /a }, { path: /b, methods: [GET, "PO ST"] }]',
      'a method is letters only (at routes[1].methods[1])',
    ],
    ['an unknown key (not a setting of its own)', '[{ path: /a, scope: [x] }]', '"scope" (at routes[0])'],
  ]
  for (const [what, yaml, where] of rules) {
    writeFileSync(file, `routes: ${yaml}\n`)
    const expect = { code: 'ERR_RULES_INVALID', message: new RegExp(`^LAPSE_ROUTES: .*${where.replace(/[[\]().]/g, '\\$&')}$`) }
    t.throws(() => loadConfig({ ...env, LAPSE_CONFIG: file }), expect, `${what}, in the file`)
    t.throws(() => loadConfig({ ...env, LAPSE_ROUTES: yaml }), expect, `${what}, in LAPSE_ROUTES`)
  }
})
