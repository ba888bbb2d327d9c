#!/usr/bin/env node
// The decision alone, without sockets: extract → verify (cached) → revocation (memory) →
// authorize, in operations per second, so a hot-path regression shows without network noise.
// It calls the core's compiled modules in ../../dist (run `npm run build` at the root first),
// wired the way src/main.ts and src/http/server.ts wire them.
//
//   node micro/decision.bench.mjs                 # a table
//   node micro/decision.bench.mjs --time 200 --rounds 3 --pool 1000 --json
//   node micro/decision.bench.mjs --root /tmp/lapse-base   # time another built tree's dist/ (an A/B)
//
// Each case is warmed up, then timed in `--rounds` bounded rounds of `--time` ms; the median
// round is reported.
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync } from 'node:fs'
import { createRequire } from 'node:module'
import { tmpdir } from 'node:os'
import { dirname, join, resolve } from 'node:path'
import { performance } from 'node:perf_hooks'
import { fileURLToPath, pathToFileURL } from 'node:url'
import { parseArgs } from 'node:util'
import { makeDpopHolder, proofSigner } from '../lib/dpop.mjs'
import { decideDepsOf, inProcessEnv, recordedRequest, silentLogger } from '../lib/in-process.mjs'
import { makeKeys, mintPool, mintToken, SCOPE } from '../lib/keys.mjs'
import { freePort } from '../lib/proc.mjs'

const here = dirname(fileURLToPath(import.meta.url))
// --root: another Lapse tree's build (an in-process A/B against an exported, built commit).
let root = resolve(here, '..', '..')
const ISS = 'https://issuer.bench.lapse.test'
const AUD = 'bench-api'
const PATH = '/v1/items'
// A usual request's head as Node hands it over (req.rawHeaders): method overrides are looked for in it.
const RAW_HEADERS = ['Host', '127.0.0.1', 'Authorization', 'Bearer …', 'Connection', 'keep-alive', 'User-Agent', 'bench/1', 'Accept', '*/*']

/** Imports a module of the core's build; a missing one names the build step. */
async function core(rel) {
  try {
    return await import(pathToFileURL(join(root, 'dist', rel)).href)
  } catch (err) {
    throw new Error(`cannot load dist/${rel} (run \`npm run build\` at the root): ${err.message}`)
  }
}

function need(mod, name, rel) {
  if (typeof mod[name] !== 'function')
    throw new Error(`dist/${rel} has no export ${name}: the core's API changed, update bench/micro/decision.bench.mjs`)
  return mod[name]
}

const median = (xs) => [...xs].sort((a, b) => a - b)[xs.length >> 1]

/**
 * Times `fn(i)` (awaited when `async`) in rounds of `timeMs`; returns the median ops/s.
 * Bounded: every loop stops on the clock, checked every `batch` calls.
 */
async function time(fn, { async, timeMs, warmupMs, rounds, batch = 64 }) {
  let sink = 0
  const run = async (ms) => {
    let n = 0
    const t0 = performance.now()
    const stop = t0 + ms
    while (performance.now() < stop) {
      if (async) for (let i = 0; i < batch; i++) sink ^= (await fn(n + i)) ? 1 : 0
      else for (let i = 0; i < batch; i++) sink ^= fn(n + i) ? 1 : 0
      n += batch
    }
    return n / ((performance.now() - t0) / 1000)
  }
  await run(warmupMs)
  const results = []
  for (let r = 0; r < rounds; r++) results.push(await run(timeMs))
  if (sink === 2) process.stdout.write('') // keep the results observable
  return median(results)
}

export async function runMicro({ timeMs = 500, rounds = 3, warmupMs = 300, poolSize = 1000 } = {}) {
  const dir = mkdtempSync(join(tmpdir(), 'lapse-micro-'))
  try {
    const keys = await makeKeys(dir)
    const claims = { iss: ISS, aud: AUD, ttlS: 3000 }
    const token = await mintToken(keys, 'RS256', claims)
    const pools = { RS256: await mintPool(keys, 'RS256', poolSize, claims), ES256: await mintPool(keys, 'ES256', poolSize, claims) }

    const { loadConfig } = await core('config/load.js')
    const main = await core('main.js')
    const buildDeps = need(main, 'buildDeps', 'main.js')
    const decide = need(await core('decide/decide.js'), 'decide', 'decide/decide.js')
    const extractBearer = need(await core('extract/bearer.js'), 'extractBearer', 'extract/bearer.js')
    const normalizeTarget = need(await core('target/request-target.js'), 'normalizeTarget', 'target/request-target.js')
    const checkScopes = need(await core('authorize/scopes.js'), 'checkScopes', 'authorize/scopes.js')
    const toTokenRef = need(await core('revocation/model.js'), 'toTokenRef', 'revocation/model.js')
    const startTelemetry = need(await core('telemetry/settings.js'), 'startTelemetry', 'telemetry/settings.js')
    const silent = silentLogger()

    const env = (extra = {}) => inProcessEnv({ jwksFile: keys.jwksFile, iss: ISS, aud: AUD, ...extra })
    // Telemetry off as `lapse proxy` starts it with OTEL_SDK_DISABLED=true (buildDeps alone would
    // fall back to the API's global tracer and do span and context work per request).
    const off = await startTelemetry({ OTEL_SDK_DISABLED: 'true' }, { log: silent, clock: { now: () => Date.now() } })
    const cachedDeps = await buildDeps(loadConfig(env()), { log: silent, telemetry: off })
    const freshDeps = await buildDeps(loadConfig(env({ LAPSE_TOKEN_CACHE_SIZE: '0' })), { log: silent })
    const cached = decideDepsOf(cachedDeps)
    // Issue 27: a rule that captures a segment and binds it to a claim (the token's client_id is
    // `bench`) must add under 2 µs to the hot path; compare with the case before it.
    const boundRoutes = JSON.stringify([{ path: '/v1/{client}', scopes: [SCOPE], claims: { client_id: '{client}' } }])
    const bound = decideDepsOf(await buildDeps(loadConfig(env({ LAPSE_ROUTES: boundRoutes })), { log: silent }))
    // Row 7's configuration without sockets: the SDK on, exporting to a loopback port where nothing
    // listens (a short export timeout, so the first failure and the pause come within a second or two).
    const otelEnv = env({
      OTEL_EXPORTER_OTLP_ENDPOINT: `http://127.0.0.1:${await freePort()}`,
      OTEL_EXPORTER_OTLP_TIMEOUT: '300',
      OTEL_BSP_SCHEDULE_DELAY: '50',
    })
    const telemetry = await startTelemetry(otelEnv, { log: silent, clock: { now: () => Date.now() } })
    const tracedDeps = await buildDeps(loadConfig(otelEnv), { log: silent, telemetry })
    const traced = decideDepsOf(tracedDeps)
    const fresh = decideDepsOf(freshDeps)
    // The default LAPSE_LOG_ALLOWS=all: each request builds its audit line and hands it to the
    // stdout sink, here one on /dev/null (batched writes included, as in row 3l).
    const { LineSink } = await core('telemetry/line-sink.js')
    const nullFd = openSync('/dev/null', 'w')
    const pino = createRequire(join(root, 'package.json'))('pino')
    const auditLog = pino(
      { level: 'info' },
      new LineSink({ fd: nullFd, capBytes: 16 << 20, /* a build before capBytes: */ capChars: 16 << 20 }),
    )
    const auditedDeps = await buildDeps(loadConfig(env({ LAPSE_LOG_LEVEL: 'info', LAPSE_LOG_ALLOWS: 'all' })), {
      log: auditLog,
      telemetry: off,
    })
    const audited = decideDepsOf(auditedDeps)

    const authorization = [`Bearer ${token}`]
    const input = { method: 'GET', url: PATH, authorization, rawHeaders: RAW_HEADERS }
    const boundInput = { method: 'GET', url: '/v1/bench', authorization, rawHeaders: RAW_HEADERS }
    const boundFirst = await decide(boundInput, bound)
    if (!boundFirst.decision.allow) throw new Error(`the bench token was denied on the bound rule: ${boundFirst.decision.reason}`)
    const first = await decide(input, cached)
    if (!first.decision.allow) throw new Error(`the bench token was denied: ${first.decision.reason}`)
    const identity = first.decision.identity
    const ref = toTokenRef(identity, cached.revocableClaims)
    const rule = first.decision.rule
    const extractOpts = { allowQueryToken: false, maxTokenBytes: cached.maxTokenBytes }
    const poolInputs = (alg) =>
      pools[alg].map((t) => ({ method: 'GET', url: PATH, authorization: [`Bearer ${t}`], rawHeaders: RAW_HEADERS }))
    const rsInputs = poolInputs('RS256')
    const esInputs = poolInputs('ES256')
    // decide answers a cached token without a promise, and returns one when it must wait.
    const allowed = (o) => o.decision.allow
    const decided = (o) => (o instanceof Promise ? o.then(allowed) : allowed(o))
    const hot = (o) => {
      if (o instanceof Promise) throw new Error('the hot path waited: a cached token and the memory set must decide without a promise')
      return allowed(o)
    }

    // What http/server.ts does around each decision: recorder.start, decide, decided, inject, finish.
    const request = (deps, d) => recordedRequest(deps, d, { decide, path: PATH, authorization, rawHeaders: RAW_HEADERS })
    await decide(input, traced)
    await decide(input, audited)
    await pausedSpans(tracedDeps.recorder, request(tracedDeps, traced))

    // Row 8 without sockets: one DPoP-bound token (cached) and a new ES256 proof per decision, each
    // proof used once (the replay cache refuses a second use), so enough are signed beforehand for
    // every call the case can make at ≥ 30 µs a decision (an ES256 verify alone takes longer); a pool that runs out fails the case.
    const holder = await makeDpopHolder(dir)
    const dpopToken = await mintToken(keys, 'RS256', { ...claims, cnf: { jkt: holder.jkt } })
    const prove = proofSigner(JSON.parse(readFileSync(holder.keyFile, 'utf8')))
    const dpopDeps = { ...cached, dpop: cachedDeps.dpop }
    const proofCount = Math.ceil(((warmupMs + rounds * timeMs) * 1000) / 30)
    const dpopInputs = Array.from({ length: proofCount }, () => ({
      method: 'GET',
      url: PATH,
      authorization: [`DPoP ${dpopToken}`],
      rawHeaders: ['Host', '127.0.0.1', 'Authorization', 'DPoP …', 'DPoP', prove('GET', `http://127.0.0.1${PATH}`, dpopToken)],
    }))
    let nextProof = 0
    const dpopDecision = () => {
      const input = dpopInputs[nextProof++]
      if (input === undefined) throw new Error(`the DPoP case used all ${proofCount} proofs: raise proofCount`)
      return decided(decide(input, dpopDeps))
    }
    if (!(await dpopDecision())) throw new Error('the DPoP-bound bench token and its proof were denied')

    const cases = [
      { name: 'extract: bearer from Authorization', fn: () => extractBearer(authorization, '', extractOpts) },
      { name: 'authorize: normalize path + match rule', fn: () => cached.match('GET', normalizeTarget(PATH).path) },
      { name: 'authorize: scopes', fn: () => checkScopes(identity.scopes, rule.scopes) === undefined },
      { name: 'verify: cached token', fn: () => cached.verify.cached(token) !== undefined },
      { name: 'revocation: memory set', fn: () => cached.revocations.isRevokedNow(ref) === false },
      { name: 'decide: cached token, memory set (hot path)', fn: () => hot(decide(input, cached)) },
      { name: 'decide: as above, rule with a capture bound to a claim', fn: () => hot(decide(boundInput, bound)) },
      { name: 'request: decide + record, telemetry off', fn: request(cachedDeps, cached) },
      { name: 'request: as above, with its audit line (LAPSE_LOG_ALLOWS=all)', fn: request(auditedDeps, audited) },
      { name: 'request: decide + record, telemetry on, collector gone', fn: request(tracedDeps, traced) },
      { name: 'decide: cached DPoP-bound token, a new ES256 proof (memory replay cache)', async: true, fn: dpopDecision },
      {
        name: 'decide: fresh RS256 token (signature checked)',
        async: true,
        fn: (i) => decided(decide(rsInputs[i % rsInputs.length], fresh)),
      },
      {
        name: 'decide: fresh ES256 token (signature checked)',
        async: true,
        fn: (i) => decided(decide(esInputs[i % esInputs.length], fresh)),
      },
    ]
    const results = []
    for (const c of cases) {
      const opsPerS = await time(c.fn, { async: c.async, timeMs, warmupMs, rounds })
      results.push({ name: c.name, opsPerS, usPerOp: 1e6 / opsPerS })
    }
    await telemetry.shutdown().catch(() => {})
    closeSync(nullFd)
    for (const deps of [cachedDeps, freshDeps, tracedDeps, auditedDeps]) {
      deps.keys.close?.()
      deps.forwarder?.close?.()
      await deps.revocations.close?.()
    }
    return { timeMs, rounds, results }
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
}

/**
 * Runs `request` until the recorder stops recording spans for the unreachable collector (as bench
 * row 7 waits for it), so the telemetry case measures the paused path a dead collector leaves.
 */
async function pausedSpans(recorder, request) {
  const recording = () => recorder.start({ method: 'GET', url: PATH, httpVersion: '1.1', headers: {} }).span.isRecording()
  const deadline = Date.now() + 30_000
  while (recording()) {
    if (Date.now() > deadline) throw new Error('telemetry still records spans 30 s after the collector went missing')
    request()
    await new Promise((resolve) => setTimeout(resolve, 5))
  }
}

export function formatMicro({ results }) {
  const w = Math.max(...results.map((r) => r.name.length))
  const lines = [`| ${'decision micro-benchmark'.padEnd(w)} |      ops/s |   µs/op |`, `|${'-'.repeat(w + 2)}|-----------:|--------:|`]
  for (const r of results)
    lines.push(`| ${r.name.padEnd(w)} | ${Math.round(r.opsPerS).toString().padStart(10)} | ${r.usPerOp.toFixed(2).padStart(7)} |`)
  return lines.join('\n')
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const { values } = parseArgs({
    options: {
      time: { type: 'string', default: '500' },
      rounds: { type: 'string', default: '3' },
      pool: { type: 'string', default: '1000' },
      json: { type: 'boolean', default: false },
      root: { type: 'string' },
    },
  })
  if (values.root) root = resolve(values.root)
  const positive = (name) => {
    const n = Number(values[name])
    if (!Number.isInteger(n) || n < 1) throw new Error(`--${name} must be a positive integer`)
    return n
  }
  const out = await runMicro({
    timeMs: positive('time'),
    rounds: positive('rounds'),
    poolSize: positive('pool'),
    warmupMs: Math.min(300, positive('time')),
  })
  process.stdout.write(values.json ? `${JSON.stringify(out)}\n` : `${formatMicro(out)}\n`)
  process.exit(0)
}
