// `lapse revoke` and `lapse lift` as an operator runs them: the compiled CLI (bin/lapse.js, so
// `npm run build` must have run) against a running Lapse whose admin API writes to Redis.
import { execFile } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import t from 'tap'
import { ADMIN_TOKEN, bearer, runApp, send, waitFor, type Lapse } from '../fixtures/app.js'
import { testKeys } from '../fixtures/keys.js'
import { freePort } from '../fixtures/redis-server.js'
import { entryKey, nowS, redisEnv, redisFor, revocationAudits, untilReady } from './helpers.js'

const BIN = fileURLToPath(new URL('../../bin/lapse.js', import.meta.url))
const keys = await testKeys()
const redis = await redisFor(t)
const raw = redis.client()

interface Run { code: number; stdout: string; stderr: string }

/** Asynchronous on purpose: the admin API it talks to runs in this very process. */
function lapseCli(args: string[], env: Record<string, string>): Promise<Run> {
  return new Promise((resolve) => {
    execFile(process.execPath, [BIN, ...args], { env: { PATH: process.env.PATH ?? '', ...env }, timeout: 30_000 }, (err, stdout, stderr) => {
      const code = err ? (typeof err.code === 'number' ? err.code : -1) : 0
      resolve({ code, stdout, stderr })
    })
  })
}

const adminEnv = (lapse: Lapse, token = ADMIN_TOKEN) => ({ LAPSE_ADMIN_URL: lapse.adminUrl, LAPSE_ADMIN_TOKEN: token })

// One Lapse for the whole file: every process start counts on a small CI box.
const lapse = await runApp(t, { env: redisEnv(redis, 'cli') })
await untilReady(lapse)

t.test('lapse revoke, then lapse lift: exit 0, the entry stored and removed, audit lines say (cli)', async (t) => {
  const token = await keys.mint({ sub: 'ci-deployer' }, { nowS: nowS() - 5 })
  t.equal((await send(`${lapse.url}/orders/1`, { headers: [bearer(token)] })).status, 200, 'allowed before')

  const revoked = await lapseCli(['revoke', '--claim', 'sub', '--value', 'ci-deployer', '--reason', 'pipeline compromised'], adminEnv(lapse))
  t.equal(revoked.code, 0, 'revoke exits 0')
  t.equal(revoked.stderr, '', 'nothing on stderr')
  const printed = JSON.parse(revoked.stdout) as Record<string, unknown>
  t.match(printed, { claim: 'sub', value: 'ci-deployer', reason: 'pipeline compromised', by: 'admin (cli)' }, 'prints the stored entry')
  const stored = await raw.get(entryKey('cli', 'sub', 'ci-deployer'))
  t.match(JSON.parse(stored ?? 'null'), { claim: 'sub', value: 'ci-deployer', reason: 'pipeline compromised', by: 'admin (cli)' }, 'the entry is in Redis')
  t.equal((await send(`${lapse.url}/orders/1`, { headers: [bearer(token)] })).status, 401, 'the token is refused')

  const lifted = await lapseCli(['lift', '--claim', 'sub', '--value', 'ci-deployer'], adminEnv(lapse))
  t.equal(lifted.code, 0, 'lift exits 0')
  t.equal(lifted.stdout, 'lifted\n')
  t.equal(await raw.exists(entryKey('cli', 'sub', 'ci-deployer')), 0, 'the entry is gone from Redis')
  t.equal((await send(`${lapse.url}/orders/1`, { headers: [bearer(token)] })).status, 200, 'the token works again')

  await waitFor(() => revocationAudits(lapse).length >= 2, 'the audit lines')
  const [revokeLine, liftLine] = revocationAudits(lapse)
  const want = { by: 'admin (cli)', claim: 'sub', value: 'ci-deployer', issued_before: printed.issued_before, reason: 'pipeline compromised' }
  t.match(revokeLine, { action: 'revoke', ...want }, 'the revoke audit line')
  t.match(liftLine, { action: 'lift', ...want }, 'the lift audit line')
})

t.test('lapse revoke with --iss and --issued-before as epoch seconds', async (t) => {
  const T = nowS() - 60
  const run = await lapseCli(['revoke', '--claim', 'jti', '--value', 'j-1', '--iss', 'https://issuer.test', '--issued-before', String(T)], adminEnv(lapse))
  t.equal(run.code, 0)
  t.match(JSON.parse(await raw.get(entryKey('cli', 'jti', 'j-1', 'https://issuer.test')) ?? 'null'), { issuedBeforeS: T, iss: 'https://issuer.test' })
})

t.test('failures: non-zero exit and one clear line on stderr, nothing written', async (t) => {
  const keysBefore = (await raw.keys('{cli}:*')).sort()
  const auditsBefore = revocationAudits(lapse).length
  const closedPort = await freePort() // nothing listens there
  const cases: Array<[name: string, args: string[], env: Record<string, string>, line: RegExp]> = [
    ['wrong token', ['revoke', '--claim', 'sub', '--value', 'x'], adminEnv(lapse, 'wrong-token-wrong-token'), /^lapse: revoke failed \(401\): a valid admin token is required$/],
    ['claim not revocable', ['revoke', '--claim', 'email', '--value', 'x'], adminEnv(lapse), /^lapse: revoke failed \(400\): "email" is not a revocable claim/],
    ['lift of nothing', ['lift', '--claim', 'sub', '--value', 'nobody'], adminEnv(lapse), /^lapse: lift failed \(404\): no such revocation$/],
    ['no token', ['revoke', '--claim', 'sub', '--value', 'x'], { LAPSE_ADMIN_URL: lapse.adminUrl }, /^lapse: LAPSE_ADMIN_TOKEN or LAPSE_ADMIN_TOKEN_FILE is required/],
    ['admin API unreachable', ['revoke', '--claim', 'sub', '--value', 'x'], { LAPSE_ADMIN_URL: `http://127.0.0.1:${closedPort}`, LAPSE_ADMIN_TOKEN: ADMIN_TOKEN },
      new RegExp(`^lapse: cannot reach the admin API at http://127\\.0\\.0\\.1:${closedPort}: ECONNREFUSED$`)],
  ]
  // Two at a time: each run starts a Node process, and a loaded CI box has few cores.
  const runs: Run[] = []
  for (let i = 0; i < cases.length; i += 2) runs.push(...(await Promise.all(cases.slice(i, i + 2).map(([, args, env]) => lapseCli(args, env)))))
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
