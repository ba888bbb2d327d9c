// `lapse revoke` and `lapse lift` as an operator runs them: the compiled CLI (bin/lapse.js, so
// `npm run build` must have run) against a running Lapse whose admin API writes to Redis.
import { execFile } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t, { type Test } from 'tap'
import { ADMIN_TOKEN, bearer, runApp, send, waitFor, type Lapse } from '../fixtures/app.js'
import { ISSUER, testKeys } from '../fixtures/keys.js'
import { freePort } from '../fixtures/redis-server.js'
import { entryKey, nowS, OTHER_ISSUER, redisEnv, redisFor, revocationAudits, untilReady } from './helpers.js'

const BIN = fileURLToPath(new URL('../../bin/lapse.js', import.meta.url))
const keys = await testKeys()
const redis = await redisFor(t)
const raw = redis.client()

interface Run {
  code: number
  stdout: string
  stderr: string
}

/** Asynchronous on purpose: the admin API it talks to runs in this very process. */
function lapseCli(args: string[], env: Record<string, string>): Promise<Run> {
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      [BIN, ...args],
      { env: { PATH: process.env.PATH ?? '', ...env }, timeout: 30_000 },
      (err, stdout, stderr) => {
        const code = err ? (typeof err.code === 'number' ? err.code : -1) : 0
        resolve({ code, stdout, stderr })
      },
    )
  })
}

const adminEnv = (lapse: Lapse, token = ADMIN_TOKEN) => ({ LAPSE_ADMIN_URL: lapse.adminUrl, LAPSE_ADMIN_TOKEN: token })

// One Lapse for the whole file: every process start counts on a small CI box.
const lapse = await runApp(t, { env: redisEnv(redis, 'cli') })
await untilReady(lapse)
// A Lapse of its own for the listing and the bulk revocations, so the entries are exactly these.
const bulk = await runApp(t, { env: redisEnv(redis, 'cli-bulk', { LAPSE_ISSUER: `${ISSUER},${OTHER_ISSUER}` }) })
await untilReady(bulk)

t.test('lapse revoke, then lapse lift: exit 0, the entry stored and removed, audit lines say (cli)', async (t) => {
  const token = await keys.mint({ sub: 'ci-deployer' }, { nowS: nowS() - 5 })
  t.equal((await send(`${lapse.url}/orders/1`, { headers: [bearer(token)] })).status, 200, 'allowed before')

  const revoked = await lapseCli(
    ['revoke', '--claim', 'sub', '--value', 'ci-deployer', '--reason', 'pipeline compromised'],
    adminEnv(lapse),
  )
  t.equal(revoked.code, 0, 'revoke exits 0')
  t.equal(revoked.stderr, '', 'nothing on stderr')
  const printed = JSON.parse(revoked.stdout) as Record<string, unknown>
  t.match(printed, { claim: 'sub', value: 'ci-deployer', reason: 'pipeline compromised', by: 'admin (cli)' }, 'prints the stored entry')
  const stored = await raw.get(entryKey('cli', 'sub', 'ci-deployer'))
  t.match(
    JSON.parse(stored ?? 'null'),
    { claim: 'sub', value: 'ci-deployer', reason: 'pipeline compromised', by: 'admin (cli)' },
    'the entry is in Redis',
  )
  t.equal((await send(`${lapse.url}/orders/1`, { headers: [bearer(token)] })).status, 401, 'the token is refused')

  const lifted = await lapseCli(['lift', '--claim', 'sub', '--value', 'ci-deployer'], adminEnv(lapse))
  t.equal(lifted.code, 0, 'lift exits 0')
  t.equal(lifted.stdout, 'lifted\n')
  t.equal(await raw.exists(entryKey('cli', 'sub', 'ci-deployer')), 0, 'the entry is gone from Redis')
  t.equal((await send(`${lapse.url}/orders/1`, { headers: [bearer(token)] })).status, 200, 'the token works again')

  await waitFor(() => revocationAudits(lapse).length >= 2, 'the audit lines')
  const [revokeLine, liftLine] = revocationAudits(lapse)
  const want = {
    by: 'admin (cli)',
    claim: 'sub',
    value: 'ci-deployer',
    issued_before: printed.issued_before,
    reason: 'pipeline compromised',
  }
  t.match(revokeLine, { action: 'revoke', ...want }, 'the revoke audit line')
  t.match(liftLine, { action: 'lift', ...want }, 'the lift audit line')
})

t.test('lapse revoke with --iss and --issued-before as epoch seconds', async (t) => {
  const T = nowS() - 60
  const run = await lapseCli(
    ['revoke', '--claim', 'jti', '--value', 'j-1', '--iss', 'https://issuer.test', '--issued-before', String(T)],
    adminEnv(lapse),
  )
  t.equal(run.code, 0)
  t.match(JSON.parse((await raw.get(entryKey('cli', 'jti', 'j-1', 'https://issuer.test'))) ?? 'null'), {
    issuedBeforeS: T,
    iss: 'https://issuer.test',
  })
})

t.test('failures: non-zero exit and one clear line on stderr, nothing written', async (t) => {
  const keysBefore = (await raw.keys('{cli}:*')).sort()
  const auditsBefore = revocationAudits(lapse).length
  const closedPort = await freePort() // nothing listens there
  const cases: Array<[name: string, args: string[], env: Record<string, string>, line: RegExp]> = [
    [
      'wrong token',
      ['revoke', '--claim', 'sub', '--value', 'x'],
      adminEnv(lapse, 'wrong-token-wrong-token'),
      /^lapse: revoke failed \(401\): a valid admin token is required$/,
    ],
    [
      'claim not revocable',
      ['revoke', '--claim', 'email', '--value', 'x'],
      adminEnv(lapse),
      /^lapse: revoke failed \(400\): "email" is not a revocable claim/,
    ],
    [
      'lift of nothing',
      ['lift', '--claim', 'sub', '--value', 'nobody'],
      adminEnv(lapse),
      /^lapse: lift failed \(404\): no such revocation$/,
    ],
    [
      'no token',
      ['revoke', '--claim', 'sub', '--value', 'x'],
      { LAPSE_ADMIN_URL: lapse.adminUrl },
      /^lapse: LAPSE_ADMIN_TOKEN or LAPSE_ADMIN_TOKEN_FILE is required/,
    ],
    [
      'admin API unreachable',
      ['revoke', '--claim', 'sub', '--value', 'x'],
      { LAPSE_ADMIN_URL: `http://127.0.0.1:${closedPort}`, LAPSE_ADMIN_TOKEN: ADMIN_TOKEN },
      new RegExp(`^lapse: cannot reach the admin API at http://127\\.0\\.0\\.1:${closedPort}: ECONNREFUSED$`),
    ],
  ]
  // Two at a time: each run starts a Node process, and a loaded CI box has few cores.
  const runs: Run[] = []
  for (let i = 0; i < cases.length; i += 2)
    runs.push(...(await Promise.all(cases.slice(i, i + 2).map(([, args, env]) => lapseCli(args, env)))))
  for (const [i, [name, , , line]] of cases.entries()) {
    const run = runs[i]!
    t.not(run.code, 0, `${name}: non-zero exit (${run.code})`)
    const lines = run.stderr.split('\n').filter(Boolean)
    t.equal(lines.length, 1, `${name}: one stderr line`)
    t.match(lines[0], line, `${name}: ${lines[0] ?? ''}`)
    t.equal(run.stdout, '', `${name}: nothing on stdout`)
  }
  t.same((await raw.keys('{cli}:*')).sort(), keysBefore, 'nothing written')
  t.equal(revocationAudits(lapse).length, auditsBefore, 'no audit line for a refused change')
})

async function writeTemp(t: Test, name: string, text: string): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'lapse-cli-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  const path = join(dir, name)
  await writeFile(path, text)
  return path
}

t.test('lapse revoke --file: every line answered by its number, the good ones written, exit 1 when one failed', async (t) => {
  const file = await writeTemp(
    t,
    'incident.jsonl',
    [
      JSON.stringify({ claim: 'sub', value: 'mallory', reason: 'INC-7 laptop stolen' }),
      '',
      '# the pipeline tokens',
      JSON.stringify({ claim: 'jti', value: 'j-77', iss: OTHER_ISSUER, reason: 'INC-7' }),
      '{"claim": "sub", "value": ',
      JSON.stringify({ claim: 'email', value: 'm@example.com' }),
      '["sub", "x"]',
      JSON.stringify({ claim: 'sub', value: 'trent', reason: 'INC-7', surprise: 1 }),
      JSON.stringify({ claim: 'client_id', value: 'ci-runner', reason: 'INC-7' }),
    ].join('\n'),
  )
  const run = await lapseCli(['revoke', '--file', file], adminEnv(bulk))
  t.equal(run.code, 1, 'exit 1: some lines failed')
  t.equal(run.stderr, '')
  t.same(run.stdout.split('\n').filter(Boolean), [
    'line 1: ok sub=mallory',
    `line 4: ok jti=j-77 (iss ${OTHER_ISSUER})`,
    'line 5: error: not valid JSON',
    'line 6: error (400): "email" is not a revocable claim (LAPSE_REVOCABLE_CLAIMS: jti, sub, client_id, sid)',
    'line 7: error: a line must be a JSON object, as the POST /v1/revocations body',
    'line 8: error (400): unknown field "surprise"',
    'line 9: ok client_id=ci-runner',
    '3 revoked, 4 failed',
  ])
  t.match(
    JSON.parse((await raw.get(entryKey('cli-bulk', 'sub', 'mallory'))) ?? 'null'),
    { reason: 'INC-7 laptop stolen', by: 'admin (cli)' },
    'written',
  )
  t.ok(await raw.get(entryKey('cli-bulk', 'jti', 'j-77', OTHER_ISSUER)), 'bound to its issuer')
  t.ok(await raw.get(entryKey('cli-bulk', 'client_id', 'ci-runner')))
  t.equal(await raw.exists(entryKey('cli-bulk', 'sub', 'trent')), 0, 'a refused line writes nothing')

  const good = await writeTemp(t, 'good.jsonl', `${JSON.stringify({ claim: 'sid', value: 's-1', reason: 'INC-8' })}\n`)
  const clean = await lapseCli(['revoke', '--file', good], adminEnv(bulk))
  t.equal(clean.code, 0, 'every line ok: exit 0')
  t.equal(clean.stdout, 'line 1: ok sid=s-1\n1 revoked, 0 failed\n')

  const refused = await lapseCli(['revoke', '--file', good], adminEnv(bulk, 'wrong-token-wrong-token'))
  t.equal(refused.code, 1)
  t.equal(refused.stdout, 'line 1: error (401): a valid admin token is required\n0 revoked, 1 failed\n', "the server's message, per line")
  const both = await lapseCli(['revoke', '--file', good, '--claim', 'sub'], adminEnv(bulk))
  t.equal(both.code, 2)
  t.match(both.stderr, /--file takes the entries from the file/)
})

t.test('lapse revocations: every page as a table, filters, --json; control characters shown escaped', async (t) => {
  const lines = Array.from({ length: 30 }, (_, i) =>
    JSON.stringify({ claim: i % 2 ? 'sid' : 'sub', value: `bulk-${String(i).padStart(2, '0')}`, reason: `rotation ${i}` }),
  )
  lines.push(JSON.stringify({ claim: 'sub', value: 'evil\u001b[2J', reason: 'bell\u0007' }))
  const revoked = await lapseCli(['revoke', '--file', await writeTemp(t, 'many.jsonl', lines.join('\n'))], adminEnv(bulk))
  t.equal(revoked.code, 0, revoked.stdout)

  const all = await lapseCli(['revocations', '--json', '--page-size', '7'], adminEnv(bulk))
  t.equal(all.code, 0)
  const listed = JSON.parse(all.stdout) as Array<Record<string, unknown>>
  const fromRedis = (await raw.keys('{cli-bulk}:rev:*')).length
  t.equal(listed.length, fromRedis, `every entry of the set over pages of 7 (${fromRedis})`)
  t.equal(new Set(listed.map((e) => `${e.claim}=${e.value}@${e.iss}`)).size, listed.length, 'each once')
  t.match(
    listed.find((e) => e.value === 'bulk-03'),
    { claim: 'sid', iss: null, reason: 'rotation 3', by: 'admin (cli)' },
  )

  const table = await lapseCli(['revocations', '--claim', 'sid', '--page-size', '4'], adminEnv(bulk))
  t.equal(table.code, 0)
  const rows = table.stdout.split('\n').filter(Boolean)
  t.match(rows[0], /^CLAIM +VALUE +ISSUER +T +EXPIRES +REASON +BY$/, 'the header')
  t.equal(rows.length, 1 + 16, 'the 16 sid entries (15 here, s-1 before), one row each')
  t.match(rows[1], /^sid +bulk-01 +\* +\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ +\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ +rotation 1 +admin \(cli\)$/)

  const issuer = await lapseCli(['revocations', '--iss', OTHER_ISSUER], adminEnv(bulk))
  t.same(
    issuer.stdout
      .split('\n')
      .filter(Boolean)
      .slice(1)
      .map((row) => row.split(/ +/).slice(0, 3)),
    [['jti', 'j-77', OTHER_ISSUER]],
    '--iss',
  )

  const evil = await lapseCli(['revocations', '--reason-contains', 'BELL'], adminEnv(bulk))
  t.equal(evil.code, 0)
  t.notOk(/[\u0000-\u001f]/.test(evil.stdout.replaceAll('\n', '')), 'no control character reaches the terminal')
  t.match(evil.stdout, /evil\\u001b\[2J/, 'the escape shown escaped')

  const none = await lapseCli(['revocations', '--claim', 'client_id', '--reason-contains', 'nothing like it'], adminEnv(bulk))
  t.equal(none.stdout, 'no active revocations\n')
  const denied = await lapseCli(['revocations'], adminEnv(bulk, 'wrong-token-wrong-token'))
  t.equal(denied.code, 1)
  t.equal(denied.stderr, 'lapse: revocations failed (401): a valid admin token is required\n')
})

t.test('lapse revoke --file - reads the lines from stdin', async (t) => {
  const child = execFile(process.execPath, [BIN, 'revoke', '--file', '-'], {
    env: { PATH: process.env.PATH ?? '', ...adminEnv(bulk) },
    timeout: 30_000,
  })
  let stdout = ''
  child.stdout!.on('data', (chunk: Buffer) => {
    stdout += chunk.toString()
  })
  child.stdin!.end(`${JSON.stringify({ claim: 'sub', value: 'from-stdin', reason: 'INC-9' })}\n`)
  const code = await new Promise<number | null>((resolve) => child.on('close', resolve))
  t.equal(code, 0)
  t.equal(stdout, 'line 1: ok sub=from-stdin\n1 revoked, 0 failed\n')
  t.ok(await raw.get(entryKey('cli-bulk', 'sub', 'from-stdin')))
})
