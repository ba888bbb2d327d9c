// Live reload through a real `lapse proxy` process: a Kubernetes volume's `..data` swap, SIGHUP,
// an invalid configuration, a setting that needs a restart, and 50 reloads under a request loop.
import { mkdirSync, mkdtempSync, renameSync, rmSync, symlinkSync, writeFileSync } from 'node:fs'
import { Agent, request } from 'node:http'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { ADMIN_TOKEN, send, waitFor, type Sent } from '../fixtures/app.js'
import { startChildProxy, type ChildProxy } from '../fixtures/child-proxy.js'
import { AUDIENCE, ISSUER, newKeyPair, signToken, defaultClaims, testKeys } from '../fixtures/keys.js'
import { freePort } from '../fixtures/redis-server.js'
import { startUpstream } from '../fixtures/upstream.js'

const bearer = (token: string): [string, string] => ['authorization', `Bearer ${token}`]
const reloadsIn = (lapse: ChildProxy, msg = 'configuration reloaded') =>
  lapse
    .output()
    .split('\n')
    .filter((l) => l.includes(`"msg":"${msg}`)).length
const metricsOn = { OTEL_SDK_DISABLED: 'false', OTEL_TRACES_EXPORTER: 'none', OTEL_METRICS_EXPORTER: 'none' }

/**
 * A directory laid out as the kubelet mounts a ConfigMap or Secret: the files live in a timestamped
 * `..2026_…` directory, `..data` links to it, and each visible name links through `..data`. An
 * update writes a new timestamped directory, points a temporary link at it and renames that link
 * over `..data` (one atomic rename), then removes the old directory.
 */
function kubeVolume(files: Record<string, string>) {
  const dir = mkdtempSync(join(tmpdir(), 'lapse-volume-'))
  let n = 0
  let current = ''
  const write = (contents: Record<string, string>) => {
    const stamp = `..2026_12_07_15_00_${String(n++).padStart(2, '0')}.${process.pid}`
    mkdirSync(join(dir, stamp))
    for (const [name, text] of Object.entries(contents)) writeFileSync(join(dir, stamp, name), text)
    symlinkSync(stamp, join(dir, '..data_tmp'))
    renameSync(join(dir, '..data_tmp'), join(dir, '..data'))
    if (current) rmSync(join(dir, current), { recursive: true })
    current = stamp
  }
  write(files)
  for (const name of Object.keys(files)) symlinkSync(join('..data', name), join(dir, name))
  return { dir, path: (name: string) => join(dir, name), swap: write, remove: () => rmSync(dir, { recursive: true, force: true }) }
}

const yamlOf = (settings: Record<string, unknown>) => JSON.stringify(settings) // JSON is YAML

t.test('a ConfigMap/Secret `..data` swap reloads routes, the key file and the admin token at once', async (t) => {
  const upstream = await startUpstream()
  t.teardown(() => upstream.close())
  const [oldKey, newKey] = [await newKeyPair('ES256'), await newKeyPair('ES256')]
  const oldToken = 'old-admin-token-0123456789'
  const newToken = 'new-admin-token-9876543210'
  const vol = kubeVolume({
    'config.yaml': '',
    'jwks.json': JSON.stringify({ keys: [oldKey.publicJwk] }),
    'admin-token': oldToken,
  })
  t.teardown(vol.remove)
  const settings = (path: string) =>
    yamlOf({
      routes: [{ path, scopes: ['orders:read'] }],
      jwks_file: vol.path('jwks.json'),
      admin_token_file: vol.path('admin-token'),
    })
  vol.swap({ 'config.yaml': settings('/a/**'), 'jwks.json': JSON.stringify({ keys: [oldKey.publicJwk] }), 'admin-token': oldToken })
  const lapse = await startChildProxy(t, {
    LAPSE_UPSTREAM: upstream.url,
    LAPSE_ISSUER: ISSUER,
    LAPSE_AUDIENCE: AUDIENCE,
    LAPSE_CONFIG: vol.path('config.yaml'),
    ...metricsOn,
  })
  const nowS = Math.floor(Date.now() / 1000)
  const signedOld = await signToken(oldKey, defaultClaims(nowS))
  const signedNew = await signToken(newKey, defaultClaims(nowS))
  const before = await send(`${lapse.url}/a/1`, { headers: [bearer(signedOld)] })
  t.equal(before.status, 200, 'before: the old key and route serve')
  t.equal(upstream.requests.length, 1)

  vol.swap({ 'config.yaml': settings('/b/**'), 'jwks.json': JSON.stringify({ keys: [newKey.publicJwk] }), 'admin-token': newToken })
  await waitFor(() => reloadsIn(lapse) === 1, 'the reload after the ..data swap', 10_000)

  const reached = upstream.requests.length
  const oldRoute = await send(`${lapse.url}/a/1`, { headers: [bearer(signedNew)] })
  t.equal(oldRoute.status, 403, 'the old route is gone')
  t.match(oldRoute.body, /no route rule allows this request/, 'no_route')
  const oldKeyNow = await send(`${lapse.url}/b/1`, { headers: [bearer(signedOld)] })
  t.equal(oldKeyNow.status, 401, 'a token of the retired key is refused')
  t.match(oldKeyNow.headers['www-authenticate'], /error="invalid_token", error_description="token signing key is unknown"/, 'unknown_key')
  t.equal(upstream.requests.length, reached, 'neither denial reached the upstream')
  const fresh = await send(`${lapse.url}/b/1`, { headers: [bearer(signedNew)] })
  t.equal(fresh.status, 200, 'the new key on the new route is let through')

  const adminRead = (token: string) => send(`${lapse.adminUrl}/v1/revocations/jti/nothing`, { headers: [bearer(token)] })
  t.equal((await adminRead(oldToken)).status, 401, 'the old admin token no longer works')
  t.not((await adminRead(newToken)).status, 401, 'the new admin token does')

  const line = JSON.parse(
    lapse
      .output()
      .split('\n')
      .find((l) => l.includes('"msg":"configuration reloaded'))!,
  )
  t.same([...line.changed].sort(), ['LAPSE_ADMIN_TOKEN', 'LAPSE_JWKS_FILE', 'LAPSE_ROUTES'], 'the line names what changed')
  t.equal(line.trigger, 'file')
  t.notMatch(lapse.output(), newToken, 'the new admin token is never logged')
  t.notMatch(lapse.output(), oldToken, 'nor the old one')
  const metrics = (await send(`${lapse.adminUrl}/metrics`)).body
  t.match(metrics, /lapse_config_reloads_total\{result="ok"[^}]*\} 1\n/)
  const at = Number(/lapse_config_last_reload_success_timestamp_seconds\{[^}]*\} (\S+)/.exec(metrics)?.[1])
  t.ok(Math.abs(at - Date.now() / 1000) < 30, 'the gauge holds the time of the reload')
})

t.test('SIGHUP: an invalid configuration changes nothing; a setting that needs a restart is warned about and kept', async (t) => {
  const upstream = await startUpstream()
  t.teardown(() => upstream.close())
  const keys = await testKeys()
  const dir = mkdtempSync(join(tmpdir(), 'lapse-sighup-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const file = join(dir, 'lapse.yaml')
  // The listen address comes from the file (the environment would win over it): an empty
  // LAPSE_LISTEN counts as unset.
  const port = await freePort()
  const listen = `127.0.0.1:${port}`
  writeFileSync(file, yamlOf({ listen, routes: [{ path: '/a/**', scopes: ['orders:read'] }] }))
  const child = await startChildProxy(t, {
    LAPSE_LISTEN: '',
    LAPSE_UPSTREAM: upstream.url,
    LAPSE_ISSUER: ISSUER,
    LAPSE_AUDIENCE: AUDIENCE,
    LAPSE_JWKS_FILE: keys.jwksPath,
    LAPSE_ADMIN_TOKEN: ADMIN_TOKEN,
    LAPSE_CONFIG: file,
    ...metricsOn,
  })
  const lapse = { ...child, url: `http://${listen}` }
  const token = await keys.mint()
  t.equal((await send(`${lapse.url}/a/1`, { headers: [bearer(token)] })).status, 200)

  // A rule with a typo: the whole file is refused, the running rules stay.
  writeFileSync(
    file,
    yamlOf({
      listen,
      routes: [
        { path: '/b/**', scopes: ['orders:read'] },
        { path: '/c/**', metods: ['GET'] },
      ],
    }),
  )
  await waitFor(() => lapse.output().includes('ERR_RULES_INVALID'), 'the refused reload', 10_000)
  const errorLine = JSON.parse(
    lapse
      .output()
      .split('\n')
      .find((l) => l.includes('ERR_RULES_INVALID'))!,
  )
  t.match(errorLine.msg, /^ERR_RULES_INVALID LAPSE_ROUTES: .*\(at routes\[1\]\)/, 'the line a failed start prints')
  t.equal(errorLine.level, 'error')
  t.equal((await send(`${lapse.url}/a/1`, { headers: [bearer(token)] })).status, 200, 'the last good rules still decide')
  const reached = upstream.requests.length
  const denied = await send(`${lapse.url}/b/1`, { headers: [bearer(token)] })
  t.equal(denied.status, 403, 'the refused rules never applied')
  t.match(denied.body, /no route rule allows this request/, 'no_route')
  t.equal(upstream.requests.length, reached, 'the denial did not reach the upstream')
  t.equal((await send(`${lapse.adminUrl}/readyz`)).status, 200, '/readyz stays 200')
  t.match((await send(`${lapse.adminUrl}/metrics`)).body, /lapse_config_reloads_total\{result="error"[^}]*\} 1\n/)
  t.equal(reloadsIn(lapse), 0)

  // SIGHUP (the file watch has fired already for the write above, so wait for its error first).
  const otherPort = await freePort()
  writeFileSync(
    file,
    yamlOf({
      routes: [{ path: '/b/**', scopes: ['orders:read'] }],
      listen: `127.0.0.1:${otherPort}`,
      upstream_timeout: 1234,
      log_level: 'warn',
      log_allows: 'none',
    }),
  )
  lapse.signal('SIGHUP')
  await waitFor(() => reloadsIn(lapse) >= 1, 'the reload', 10_000)
  t.equal((await send(`${lapse.url}/b/1`, { headers: [bearer(token)] })).status, 200, 'the new rules decide')
  t.equal((await send(`${lapse.url}/a/1`, { headers: [bearer(token)] })).status, 403)
  const warned = lapse
    .output()
    .split('\n')
    .filter((l) => l.includes('takes effect only at a restart'))
    .map((l) => JSON.parse(l).setting as string)
  t.ok(warned.includes('LAPSE_LISTEN'), 'LAPSE_LISTEN is named as needing a restart')
  t.ok(warned.includes('LAPSE_UPSTREAM_TIMEOUT'), 'LAPSE_UPSTREAM_TIMEOUT too')
  await t.rejects(send(`http://127.0.0.1:${otherPort}/b/1`), { code: 'ECONNREFUSED' }, 'the new listen address is not taken')
  t.match((await send(`${lapse.adminUrl}/metrics`)).body, /lapse_config_reloads_total\{result="ok"[^}]*\} [12]\n/)

  // Log settings change live: allows are no longer audited, operational info lines stop.
  const allowLines = () =>
    lapse
      .output()
      .split('\n')
      .filter((l) => l.includes('"decision":"allow"')).length
  await new Promise((r) => setTimeout(r, 1500)) // pino flushes at least every second
  const allowsBefore = allowLines()
  t.ok(allowsBefore >= 2, 'allows were audited before')
  t.equal((await send(`${lapse.url}/b/2`, { headers: [bearer(token)] })).status, 200)
  const denied2 = await send(`${lapse.url}/a/2`, { headers: [bearer(token)] })
  t.equal(denied2.status, 403)
  await waitFor(() => lapse.output().includes('"path":"/a/2"'), 'the denial audit line', 5000)
  await new Promise((r) => setTimeout(r, 1200))
  t.equal(allowLines(), allowsBefore, 'LAPSE_LOG_ALLOWS=none applied: the allow is not audited')
  // SIGHUP and the file watch both reloaded: the first names the changes, the second finds none.
  const reloadLines = lapse
    .output()
    .split('\n')
    .filter((l) => l.includes('"msg":"configuration reloaded'))
    .map((l) => JSON.parse(l) as { changed: string[] })
  t.ok(
    reloadLines.some((l) => l.changed.includes('LAPSE_LOG_LEVEL') && l.changed.includes('LAPSE_LOG_ALLOWS')),
    'the reload line names the log settings, written although the level is now warn',
  )
})

t.test('50 reloads alternating two policies under a request loop: no failed request, every answer from one policy', async (t) => {
  const upstream = await startUpstream()
  t.teardown(() => upstream.close())
  const keys = await testKeys()
  const dir = mkdtempSync(join(tmpdir(), 'lapse-reloads-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const file = join(dir, 'lapse.yaml')
  // Policy A trusts issuer A and wants scope a; policy B trusts issuer B and wants scope b. A
  // token of issuer A with scope b is 403 under A, 401 under B, and 200 only under a mix (A's
  // verifier, B's routes); one with scope a is 200 under A, 401 under B, 403 only under a mix.
  const issA = 'https://issuer-a.test'
  const policy = (which: 'a' | 'b') =>
    yamlOf({ issuer: which === 'a' ? issA : 'https://issuer-b.test', routes: [{ path: '/x/**', scopes: [which] }] })
  writeFileSync(file, policy('a'))
  const lapse = await startChildProxy(t, {
    LAPSE_UPSTREAM: upstream.url,
    LAPSE_AUDIENCE: AUDIENCE,
    LAPSE_JWKS_FILE: keys.jwksPath,
    LAPSE_CONFIG: file,
  })
  const tokens = { a: await keys.mint({ iss: issA, scope: 'a' }), b: await keys.mint({ iss: issA, scope: 'b' }) }
  const allowed = { a: new Set([200, 401]), b: new Set([403, 401]) }
  const seen = { a: new Map<number, number>(), b: new Map<number, number>() }
  const failures: string[] = []
  let stop = false
  let sent = 0
  const client = async (agent: Agent, which: 'a' | 'b') => {
    while (!stop && sent < 20_000) {
      sent++
      try {
        const res = await get(agent, `${lapse.url}/x/1`, tokens[which])
        seen[which].set(res.status, (seen[which].get(res.status) ?? 0) + 1)
        if (!allowed[which].has(res.status)) failures.push(`${which}: ${res.status} ${res.body}`)
      } catch (err) {
        failures.push(`${which}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`)
      }
    }
  }
  const agents = Array.from({ length: 4 }, () => new Agent({ keepAlive: true, maxSockets: 2 }))
  t.teardown(() => {
    for (const a of agents) a.destroy()
  })
  const loops = agents.flatMap((agent, i) => [client(agent, i % 2 ? 'a' : 'b'), client(agent, i % 2 ? 'b' : 'a')])
  const deadline = Date.now() + 90_000
  for (let i = 1; i <= 50 && Date.now() < deadline; i++) {
    // Written whole then renamed, as an operator should: a reader never sees a half-written file.
    writeFileSync(`${file}.tmp`, policy(i % 2 ? 'b' : 'a'))
    renameSync(`${file}.tmp`, file)
    lapse.signal('SIGHUP')
    // The file watch may add reloads of its own: each is one more swap between the two policies.
    await waitFor(() => reloadsIn(lapse) >= i, `reload ${i}`, 10_000)
    await new Promise((r) => setTimeout(r, 20))
  }
  stop = true
  await Promise.all(loops)
  t.ok(reloadsIn(lapse) >= 50, `50 reloads (${reloadsIn(lapse)})`)
  t.same(failures, [], `no failed, reset or mixed answer among ${sent} requests`)
  t.ok((seen.a.get(200) ?? 0) > 0 && (seen.a.get(401) ?? 0) > 0, 'both policies decided requests')
  t.ok((seen.b.get(403) ?? 0) > 0 && (seen.b.get(401) ?? 0) > 0)
  t.same(
    lapse
      .output()
      .split('\n')
      .filter((l) => /ERR_|reload failed/.test(l)),
    [],
    'no reload failed',
  )
})

function get(agent: Agent, url: string, token: string): Promise<Sent> {
  return new Promise((resolve, reject) => {
    const req = request(url, { agent, headers: { authorization: `Bearer ${token}` } }, (res) => {
      const chunks: Buffer[] = []
      res.on('data', (c: Buffer) => chunks.push(c))
      res.on('end', () => {
        const body = Buffer.concat(chunks).toString('utf8')
        resolve({ status: res.statusCode ?? 0, headers: res.headers, body, json: () => JSON.parse(body) })
      })
      res.on('error', reject)
    })
    req.on('error', reject)
    req.end()
  })
}
