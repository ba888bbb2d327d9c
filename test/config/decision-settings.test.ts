// LAPSE_DECISION_LISTEN, LAPSE_DECISION_TOKEN / _FILE and the upstream they make optional: parsed,
// defaulted and refused at start with one line naming the setting.
import { mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { loadConfig } from '../../src/config/load.js'
import { LapseError } from '../../src/core/errors.js'
import { testKeys } from '../fixtures/keys.js'

async function env(extra: Record<string, string | undefined>): Promise<Record<string, string | undefined>> {
  return {
    LAPSE_UPSTREAM: 'http://127.0.0.1:3000',
    LAPSE_ISSUER: 'https://issuer.test',
    LAPSE_AUDIENCE: 'orders-api',
    LAPSE_JWKS_FILE: (await testKeys()).jwksPath,
    ...extra,
  }
}

function refusal(e: Record<string, string | undefined>): string {
  try {
    loadConfig(e)
  } catch (err) {
    if (err instanceof LapseError) return `${err.code} ${err.message}`
    throw err
  }
  return 'accepted'
}

t.test('the listen address: off when unset; a port alone binds 127.0.0.1; host:port as LAPSE_ADMIN_LISTEN', async (t) => {
  t.equal(loadConfig(await env({})).decision, undefined, 'off')
  t.same(loadConfig(await env({ LAPSE_DECISION_LISTEN: '9902' })).decision, { listen: { host: '127.0.0.1', port: 9902 }, token: undefined })
  t.same(loadConfig(await env({ LAPSE_DECISION_LISTEN: ' 9902 ' })).decision?.listen, { host: '127.0.0.1', port: 9902 })
  t.same(loadConfig(await env({ LAPSE_DECISION_LISTEN: '0.0.0.0:9902' })).decision?.listen, { host: '0.0.0.0', port: 9902 })
  t.same(loadConfig(await env({ LAPSE_DECISION_LISTEN: '[::1]:9902' })).decision?.listen, { host: '::1', port: 9902 })
  for (const bad of ['99999', 'localhost', ':9902', 'a b:1', '127.0.0.1:70000']) {
    t.match(refusal(await env({ LAPSE_DECISION_LISTEN: bad })), /^ERR_CONFIG_INVALID LAPSE_DECISION_LISTEN: /, bad)
  }
})

t.test('LAPSE_UPSTREAM is optional only with a decision listener', async (t) => {
  t.equal(
    refusal(await env({ LAPSE_UPSTREAM: undefined })),
    'ERR_CONFIG_INVALID LAPSE_UPSTREAM: required unless LAPSE_DECISION_LISTEN is set',
  )
  const c = loadConfig(await env({ LAPSE_UPSTREAM: undefined, LAPSE_DECISION_LISTEN: '9902' }))
  t.equal(c.upstream, undefined, 'a decision service only')
  t.match(
    refusal(await env({ LAPSE_UPSTREAM: 'ftp://x', LAPSE_DECISION_LISTEN: '9902' })),
    /^ERR_CONFIG_INVALID LAPSE_UPSTREAM: /,
    'a bad upstream is still refused',
  )
})

t.test('the decision token: inline or from a file, 16 characters at least, one of the two, only with the listener', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'lapse-decision-'))
  const file = join(dir, 'token')
  writeFileSync(file, 'from-a-file-0123456789\n')
  t.equal(
    loadConfig(await env({ LAPSE_DECISION_LISTEN: '9902', LAPSE_DECISION_TOKEN: 'inline-0123456789' })).decision?.token,
    'inline-0123456789',
  )
  t.equal(
    loadConfig(await env({ LAPSE_DECISION_LISTEN: '9902', LAPSE_DECISION_TOKEN_FILE: file })).decision?.token,
    'from-a-file-0123456789',
    'trimmed',
  )
  t.match(
    refusal(await env({ LAPSE_DECISION_LISTEN: '9902', LAPSE_DECISION_TOKEN: 'short' })),
    /^ERR_CONFIG_INVALID LAPSE_DECISION_TOKEN: at least 16 characters/,
  )
  t.equal(
    refusal(await env({ LAPSE_DECISION_LISTEN: '9902', LAPSE_DECISION_TOKEN: 'inline-0123456789', LAPSE_DECISION_TOKEN_FILE: file })),
    'ERR_CONFIG_INVALID LAPSE_DECISION_TOKEN: set LAPSE_DECISION_TOKEN or LAPSE_DECISION_TOKEN_FILE, not both',
  )
  t.match(
    refusal(await env({ LAPSE_DECISION_LISTEN: '9902', LAPSE_DECISION_TOKEN_FILE: join(dir, 'absent') })),
    /^ERR_CONFIG_INVALID LAPSE_DECISION_TOKEN_FILE: cannot read .* \(ENOENT\)$/,
  )
  writeFileSync(file, 'short\n')
  t.equal(
    refusal(await env({ LAPSE_DECISION_LISTEN: '9902', LAPSE_DECISION_TOKEN_FILE: file })),
    'ERR_CONFIG_INVALID LAPSE_DECISION_TOKEN_FILE: the token must be at least 16 characters',
  )
  t.equal(
    refusal(await env({ LAPSE_DECISION_TOKEN: 'inline-0123456789' })),
    'ERR_CONFIG_INVALID LAPSE_DECISION_TOKEN: set only with LAPSE_DECISION_LISTEN',
  )
})

t.test('a decision listener off loopback without a token is a warning at start', async (t) => {
  const warned = (e: Record<string, string | undefined>) => loadConfig(e).warnings.some((w) => w.startsWith('LAPSE_DECISION_LISTEN binds'))
  t.ok(warned(await env({ LAPSE_DECISION_LISTEN: '0.0.0.0:9902' })), '0.0.0.0, no token')
  t.notOk(warned(await env({ LAPSE_DECISION_LISTEN: '0.0.0.0:9902', LAPSE_DECISION_TOKEN: 'inline-0123456789' })), 'with a token')
  t.notOk(warned(await env({ LAPSE_DECISION_LISTEN: '9902' })), 'loopback')
  t.notOk(warned(await env({ LAPSE_DECISION_LISTEN: '[::1]:9902' })), 'IPv6 loopback')
})
