#!/usr/bin/env node
// Instructions per request of a real `lapse proxy` under valgrind's callgrind: a count, not a
// time, so the host's other tenants do not move it. It is not exact either: when V8 collects and
// compiles inside the counted window varies, and two runs of one build differ by up to about 4%
// (233k and 244k a request for row 3's configuration), so a difference of a few thousand needs
// several runs. It prices the work of Lapse's own process in user space; what the kernel does for
// it (socket and file writes) and what the CPU's caches make of it are not in it: the
// side-by-side rows stay the verdict, this says whether a change removed work.
//
//   node instructions.mjs                                  # LAPSE_LOG_ALLOWS none against all (the audit line)
//   node instructions.mjs --against 14bed29                # the same on a commit too (built in a temporary tree)
//   node instructions.mjs --variants none,all --requests 6000
//
// Each variant: Lapse on this tree (and on --against's) under callgrind with rows 3/3l's
// configuration, stdout to a file as in the bench, a stub upstream and autocannon (10 connections,
// one RS256 token) outside valgrind; `--requests` requests to warm up (V8 compiles the hot path),
// then the counters are zeroed, the same number again is sent, and the count is dumped. Needs
// valgrind (Debian's package); a variant takes about a minute and a half for 6,000 requests.
import { execFileSync, spawn, spawnSync } from 'node:child_process'
import { mkdirSync, mkdtempSync, openSync, readFileSync, readdirSync, rmSync, symlinkSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import autocannon from 'autocannon'
import { makeKeys, mintToken, SCOPE } from './lib/keys.mjs'
import { freePort, stop, waitHttp } from './lib/proc.mjs'

const benchDir = dirname(fileURLToPath(import.meta.url))
const root = resolve(benchDir, '..')
const { values: args } = parseArgs({
  options: {
    variants: { type: 'string', default: 'none,all' },
    requests: { type: 'string', default: '6000' },
    against: { type: 'string' },
    keep: { type: 'boolean', default: false },
  },
})
const REQUESTS = Number(args.requests)
const ISS = 'https://issuer.bench.lapse.test'
const AUD = 'bench-api'

if (spawnSync('valgrind', ['--version'], { stdio: 'ignore' }).status !== 0) {
  console.error('valgrind is not on PATH (Debian: apt-get install -y valgrind)')
  process.exit(2)
}

const dir = mkdtempSync(join(tmpdir(), 'lapse-instructions-'))
const children = []
try {
  const trees = [{ name: 'this tree', root }]
  if (args.against) trees.push({ name: args.against, root: baseTree(args.against) })
  const keys = await makeKeys(dir)
  const token = await mintToken(keys, 'RS256', { iss: ISS, aud: AUD, ttlS: 3600 })
  const upstreamPort = await freePort()
  const upstream = spawn(process.execPath, [join(benchDir, 'lib', 'upstream.mjs'), String(upstreamPort)], { stdio: 'ignore' })
  children.push(upstream)
  await waitHttp(`http://127.0.0.1:${upstreamPort}/ready-probe`, { child: upstream })

  const results = []
  for (const tree of trees) {
    for (const allows of args.variants.split(',')) {
      const perRequest = await count(tree.root, allows, `http://127.0.0.1:${upstreamPort}`, keys.jwksFile, token)
      results.push({ tree: tree.name, allows, perRequest })
      console.log(
        `${tree.name.padEnd(10)} LAPSE_LOG_ALLOWS=${allows.padEnd(5)} ${Math.round(perRequest).toLocaleString('en')} instructions a request`,
      )
    }
  }
  for (const tree of trees) {
    const mine = results.filter((r) => r.tree === tree.name)
    for (const r of mine.slice(1)) {
      const added = r.perRequest - mine[0].perRequest
      console.log(
        `${tree.name}: ${r.allows} against ${mine[0].allows}: ${added >= 0 ? '+' : ''}${Math.round(added).toLocaleString('en')} a request (× ${(r.perRequest / mine[0].perRequest).toFixed(4)})`,
      )
    }
  }
  if (trees.length === 2) {
    for (const r of results.filter((x) => x.tree === 'this tree')) {
      const b = results.find((x) => x.tree !== 'this tree' && x.allows === r.allows)
      console.log(`LAPSE_LOG_ALLOWS=${r.allows}: this tree ÷ ${args.against} × ${(r.perRequest / b.perRequest).toFixed(4)}`)
    }
  }
} finally {
  for (const c of children) await stop(c, 30_000)
  if (!args.keep) rmSync(dir, { recursive: true, force: true })
  else console.log(`kept ${dir}`)
}

/** Instructions per request of one Lapse under callgrind, counted after a warm-up of as many requests. */
async function count(lapseRoot, allows, upstreamUrl, jwksFile, token) {
  const [port, adminPort] = [await freePort(), await freePort()]
  const name = `${allows}-${children.length}`
  const outFile = join(dir, `callgrind-${name}.out`)
  const child = spawn(
    'valgrind',
    // --single-threaded: V8 compiles and collects on the main thread, counted with the rest. It
    // did not make runs repeat exactly (the 4% above is with it): when a collection falls still varies.
    [
      '--tool=callgrind',
      `--callgrind-out-file=${outFile}`,
      process.execPath,
      '--single-threaded',
      join(lapseRoot, 'bin', 'lapse.js'),
      'proxy',
    ],
    {
      stdio: ['ignore', openSync(join(dir, `${name}.log`), 'a'), openSync(join(dir, `${name}.err`), 'a')],
      env: {
        PATH: process.env.PATH,
        LAPSE_LISTEN: `127.0.0.1:${port}`,
        LAPSE_ADMIN_LISTEN: `127.0.0.1:${adminPort}`,
        LAPSE_DRAIN_DELAY: '0',
        LAPSE_UPSTREAM: upstreamUrl,
        LAPSE_ISSUER: ISS,
        LAPSE_AUDIENCE: AUD,
        LAPSE_JWKS_FILE: jwksFile,
        LAPSE_ROUTES: JSON.stringify([{ path: '/**', scopes: [SCOPE] }]),
        LAPSE_LOG_ALLOWS: allows,
        LAPSE_MAX_TOKEN_LIFETIME: '7200',
        OTEL_SDK_DISABLED: 'true',
      },
    },
  )
  children.push(child)
  await waitHttp(`http://127.0.0.1:${adminPort}/readyz`, { child, timeoutMs: 180_000 })
  const load = async () => {
    const r = await autocannon({
      url: `http://127.0.0.1:${port}/v1/items`,
      connections: 10,
      amount: REQUESTS,
      timeout: 60,
      headers: { authorization: `Bearer ${token}` },
    })
    if (r['2xx'] !== REQUESTS) throw new Error(`${name}: ${r['2xx']} of ${REQUESTS} requests answered 2xx`)
  }
  await load()
  execFileSync('callgrind_control', ['--zero', String(child.pid)], { stdio: 'ignore' })
  await load()
  execFileSync('callgrind_control', ['--dump', String(child.pid)], { stdio: 'ignore' })
  // The dump is written by the process itself, at its next turn under valgrind.
  const dumped = await waitFor(() => readdirSync(dir).find((f) => f.startsWith(`callgrind-${name}.out.`)))
  const text = readFileSync(join(dir, dumped), 'utf8')
  const total = /^(?:summary|totals):\s+(\d+)/m.exec(text)
  if (!total) throw new Error(`${name}: no total in ${dumped}`)
  await stop(child, 60_000)
  return Number(total[1]) / REQUESTS
}

async function waitFor(probe, timeoutMs = 60_000) {
  const until = Date.now() + timeoutMs
  for (;;) {
    const v = probe()
    if (v) return v
    if (Date.now() > until) throw new Error('callgrind wrote no dump')
    await new Promise((r) => setTimeout(r, 200))
  }
}

/** Commit `ref` extracted and built beside this run, with this tree's node_modules. */
function baseTree(ref) {
  const sha = execFileSync('git', ['rev-parse', '--short=10', `${ref}^{commit}`], { cwd: root, encoding: 'utf8' }).trim()
  const tree = join(dir, `base-${sha}`)
  mkdirSync(tree)
  execFileSync('sh', ['-c', `git archive ${sha} | tar -x -C '${tree}'`], { cwd: root })
  symlinkSync(join(root, 'node_modules'), join(tree, 'node_modules'))
  execFileSync('npm', ['run', 'build'], { cwd: tree, stdio: 'ignore' })
  return tree
}
