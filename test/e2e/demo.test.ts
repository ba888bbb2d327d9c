// `lapse demo` as a newcomer runs it: the printed request gets the demo upstream's answer, and
// the same request once the token's TTL and the clock skew have passed gets 401 invalid_token, as
// the banner says. Real process, real clock.
import { spawn } from 'node:child_process'
import { existsSync, mkdtempSync } from 'node:fs'
import { request as httpRequest } from 'node:http'
import { createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import t, { type Test } from 'tap'
import { CHALLENGE } from '../fixtures/deny.js'

const ROOT = resolve(import.meta.dirname, '../..')
const TTL_S = 2
const SKEW_S = 2

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer()
    server.once('error', reject)
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as { port: number }
      server.close(() => resolve(port))
    })
  })
}

function get(
  url: string,
  authorization: string,
): Promise<{ status: number; headers: Record<string, string | string[] | undefined>; body: string }> {
  return new Promise((resolve, reject) => {
    const req = httpRequest(url, { agent: false, headers: { authorization } })
    req.on('response', (res) => {
      let body = ''
      res.setEncoding('utf8')
      res.on('data', (c: string) => {
        body += c
      })
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }))
    })
    req.on('error', reject)
    req.end()
  })
}

/** `lapse demo --ttl ttlS` as a child process; resolves once it has printed its instructions. */
async function startDemo(t: Test, ttlS: number, env: Record<string, string> = {}) {
  t.ok(
    existsSync(join(ROOT, 'dist/cli/index.js')),
    'dist/ is built (npm test builds it; run `npm run build` before running this file alone)',
  )
  const [port, adminPort] = [await freePort(), await freePort()]
  const child = spawn(process.execPath, [join(ROOT, 'bin/lapse.js'), 'demo', '--ttl', String(ttlS)], {
    cwd: ROOT,
    env: {
      PATH: process.env.PATH,
      LAPSE_LISTEN: `127.0.0.1:${port}`,
      LAPSE_ADMIN_LISTEN: `127.0.0.1:${adminPort}`,
      LAPSE_CLOCK_SKEW: '0',
      LAPSE_DEV_DIR: mkdtempSync(join(tmpdir(), 'lapse-demo-')),
      OTEL_SDK_DISABLED: 'true',
      ...env,
    },
    stdio: ['ignore', 'ignore', 'pipe'],
  })
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)))
  t.teardown(async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGTERM')
      const timer = setTimeout(() => child.kill('SIGKILL'), 5000)
      await exited
      clearTimeout(timer)
    }
  })

  // The printed lines hold a live token: they are parsed here and never echoed into test output.
  let stderr = ''
  child.stderr.setEncoding('utf8')
  child.stderr.on('data', (c: string) => {
    stderr += c
  })
  const curl = /curl -i -H "(Authorization: Bearer [^"]+)" (http:\/\/\S+)/
  const printed = await new Promise<RegExpExecArray | null>((resolve) => {
    const timer = setTimeout(() => resolve(null), 15_000)
    const check = () => {
      const m = curl.exec(stderr)
      if (m && /Mint more with/.test(stderr)) {
        clearTimeout(timer)
        resolve(m)
      }
    }
    child.stderr.on('data', check)
    child.once('exit', () => {
      clearTimeout(timer)
      resolve(null)
    })
  })
  return { child, exited, port, adminPort, printed, stderr: () => stderr }
}

t.test(
  'lapse demo: the printed request is answered by the demo upstream, then refused 401 invalid_token when the banner says',
  async (t) => {
    const { child, exited, port, printed, stderr } = await startDemo(t, TTL_S, { LAPSE_CLOCK_SKEW: String(SKEW_S) })
    t.ok(printed, 'the demo printed a curl command')
    t.match(
      stderr(),
      `After ${TTL_S + SKEW_S} s (its lifetime and the ${SKEW_S} s LAPSE_CLOCK_SKEW allows) the same command answers 401 invalid_token`,
    )
    if (!printed) return
    const [, header, url] = printed
    const authorization = header!.slice('Authorization: '.length)
    t.equal(new URL(url!).port, String(port), 'the printed URL uses LAPSE_LISTEN')
    const token = authorization.slice('Bearer '.length)
    const claims = JSON.parse(Buffer.from(token.split('.')[1]!, 'base64url').toString('utf8')) as { exp: number; iat: number }
    t.equal(claims.exp - claims.iat, TTL_S, 'the token lives --ttl seconds')

    const first = await get(url!, authorization)
    t.equal(first.status, 200, 'the printed request works')
    const answer = JSON.parse(first.body) as Record<string, unknown>
    t.equal(answer.hello, 'from the demo upstream')
    t.equal(answer.subject, 'demo-user', 'the upstream saw the identity Lapse added')

    // Real time has to pass here: the demo runs on the system clock in its own process.
    const until = async (ms: number) => {
      if (ms > Date.now()) await new Promise((r) => setTimeout(r, ms - Date.now()))
    }
    await until(claims.exp * 1000 + 200)
    t.equal((await get(url!, authorization)).status, 200, 'past exp but within the clock skew, the request still works')
    await until((claims.exp + SKEW_S) * 1000 + 100)
    const second = await get(url!, authorization)
    t.equal(second.status, 401, 'the same request after the TTL and the skew is refused')
    t.match(second.headers['www-authenticate'], CHALLENGE.invalidToken)
    t.equal((JSON.parse(second.body) as { error?: string }).error, 'invalid_token')
    t.notOk(second.body.includes(token.split('.')[2]!), 'the answer does not echo the token')

    child.kill('SIGTERM')
    t.equal(await exited, 0, 'the demo stops cleanly on SIGTERM')
  },
)

t.test('lapse demo: the printed revoke command works as printed, and the printed request is then refused', async (t) => {
  const { adminPort, printed, stderr } = await startDemo(t, 600)
  t.ok(printed, 'the demo printed a curl command')
  if (!printed) return
  const [, header, url] = printed
  const authorization = header!.slice('Authorization: '.length)
  t.equal((await get(url!, authorization)).status, 200)

  // This checkout's bin/lapse.js by its absolute path, never `npx lapse` (which could fetch a package from the registry).
  const revoke =
    /^ *LAPSE_ADMIN_URL=(\S+) LAPSE_ADMIN_TOKEN=(\S+) node (\S+) revoke --claim sub --value demo-user --reason "([^"]+)"$/m.exec(stderr())
  t.ok(revoke, 'the demo printed a revoke command')
  if (!revoke) return
  const [, adminUrl, adminToken, bin, reason] = revoke
  t.equal(adminUrl, `http://127.0.0.1:${adminPort}`, 'it names the admin address the demo listens on')
  t.equal(bin, join(ROOT, 'bin/lapse.js'), "it names this checkout's CLI by its absolute path")
  t.notMatch(stderr(), /npx lapse/, 'no npx lapse anywhere in what it prints')
  const cli = spawn(process.execPath, [bin!, 'revoke', '--claim', 'sub', '--value', 'demo-user', '--reason', reason!], {
    env: { PATH: process.env.PATH, LAPSE_ADMIN_URL: adminUrl, LAPSE_ADMIN_TOKEN: adminToken },
    stdio: 'ignore',
  })
  t.equal(await new Promise((resolve) => cli.once('exit', resolve)), 0, 'lapse revoke exits 0')
  const after = await get(url!, authorization)
  t.equal(after.status, 401, 'the same request is refused once revoked')
  t.equal((JSON.parse(after.body) as { error?: string }).error, 'invalid_token')
})

t.test('lapse demo: a --ttl over the lifetime policy fails the start instead of printing a token Lapse refuses', async (t) => {
  const { printed, exited, stderr } = await startDemo(t, 7200)
  t.notOk(printed, 'no curl command was printed')
  t.equal(await exited, 2, 'exit code 2, as for any start-up error')
  t.match(stderr(), 'demo: --ttl 7200 is longer than LAPSE_MAX_TOKEN_LIFETIME (3600 s), so Lapse would refuse the token')
})
