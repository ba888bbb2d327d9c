// `lapse dpop-proof` and `lapse token --jkt`, run as the docs show them (node bin/lapse.js …), and
// the worked curl example of docs/binding.md against a real Lapse trusting the development key.
import { execFile } from 'node:child_process'
import { mkdtempSync, readFileSync, statSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import t from 'tap'
import { decodeProtectedHeader, decodeJwt } from 'jose'
import { DEV_AUDIENCE, DEV_ISSUER } from '../../src/cli/dev-key.js'
import { runApp } from '../fixtures/app.js'

const run = promisify(execFile)
const ROOT = join(import.meta.dirname, '../..')
const lapse = (args: string[], env: Record<string, string>) =>
  run(process.execPath, [join(ROOT, 'bin/lapse.js'), ...args], { env: { ...process.env, ...env } })

t.test('the worked example: a key, a token bound to it, a proof, and curl through a real Lapse', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'lapse-dpop-cli-'))
  const env = { LAPSE_DEV_DIR: dir }
  const jkt = (await lapse(['dpop-proof', '--jkt'], env)).stdout.trim()
  t.match(jkt, /^[A-Za-z0-9_-]{43}$/, 'the thumbprint of a key made on first use')
  t.equal(statSync(join(dir, 'dpop-key.json')).mode & 0o777, 0o600, 'the private key is readable by its owner only')
  t.equal((await lapse(['dpop-proof', '--jkt'], env)).stdout.trim(), jkt, 'the same key the next time')

  const token = (await lapse(['token', '--sub', 'me', '--scope', 'orders:read', '--jkt', jkt], env)).stdout.trim()
  t.same((decodeJwt(token) as { cnf?: unknown }).cnf, { jkt })

  const app = await runApp(t, { env: { LAPSE_JWKS_FILE: join(dir, 'jwks.json'), LAPSE_ISSUER: DEV_ISSUER, LAPSE_AUDIENCE: DEV_AUDIENCE } })
  const url = `${app.url}/orders/1`
  const proof = (await lapse(['dpop-proof', '--method', 'GET', '--url', `${url}?page=2`, '--token', token], env)).stdout.trim()
  const header = decodeProtectedHeader(proof)
  t.equal(header.typ, 'dpop+jwt')
  t.notOk('d' in (header.jwk ?? {}), 'the proof carries the public key only')
  t.equal((decodeJwt(proof) as { htu?: string }).htu, url, 'htu without the query')
  t.notOk(readFileSync(join(dir, 'dpop-key.json'), 'utf8').includes(proof.split('.')[2]!))

  const curl = (p: string) =>
    run('curl', ['-s', '-o', '/dev/null', '-w', '%{http_code}', '-H', `Authorization: DPoP ${token}`, '-H', `DPoP: ${p}`, `${url}?page=2`])
  t.equal((await curl(proof)).stdout, '200', 'curl with the proof gets through')
  t.equal((await curl(proof)).stdout, '401', 'the same proof again is refused')
  t.equal(app.upstream.calls, 1)
})

t.test('dpop-proof refuses what it cannot make a proof of', async (t) => {
  const env = { LAPSE_DEV_DIR: mkdtempSync(join(tmpdir(), 'lapse-dpop-cli-')) }
  await t.rejects(lapse(['dpop-proof', '--url', 'http://x/'], env), { code: 2, stderr: /--method is required/ })
  await t.rejects(lapse(['dpop-proof', '--method', 'GET', '--url', 'ftp://x/'], env), { code: 2, stderr: /--url is required/ })
  await t.rejects(lapse(['token', '--sub', 'me', '--jkt', 'short'], env), { code: 2, stderr: /--jkt takes/ })
})
