// Memory does not grow with the number of reloads: a Lapse reloads in a loop in its own process
// (started with --expose-gc, so the heap is measured after a full collection), with a request
// between reloads, and the heap after 2N reloads is compared with the heap after N.
import { execFile } from 'node:child_process'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import t from 'tap'
import { baseEnv } from '../fixtures/app.js'
import { testKeys } from '../fixtures/keys.js'
import { startUpstream } from '../fixtures/upstream.js'

const LOOP = fileURLToPath(new URL('../fixtures/reload-loop.mjs', import.meta.url))
const DIST_MAIN = fileURLToPath(new URL('../../dist/main.js', import.meta.url))
const N = 150

t.test(`the heap after ${2 * N} reloads is within 1 MiB of the heap after ${N}`, async (t) => {
  const upstream = await startUpstream()
  t.teardown(() => upstream.close())
  const keys = await testKeys()
  const dir = mkdtempSync(join(tmpdir(), 'lapse-reload-memory-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const file = join(dir, 'lapse.yaml')
  writeFileSync(file, '{}')
  const { LAPSE_ROUTES: _routes, ...env } = baseEnv(upstream.url, keys.jwksPath, [])
  const out = await new Promise<string>((resolve, reject) => {
    execFile(
      process.execPath,
      ['--expose-gc', LOOP],
      {
        env: {
          PATH: process.env.PATH,
          OTEL_SDK_DISABLED: 'true',
          LAPSE_DIST_MAIN: DIST_MAIN,
          WARM: '50',
          N: String(N),
          TEST_ENV: JSON.stringify({ ...env, LAPSE_CONFIG: file, LAPSE_LOG_LEVEL: 'warn', LAPSE_LOG_ALLOWS: 'none' }),
        },
        timeout: 240_000,
        maxBuffer: 64 * 1024 * 1024,
      },
      (err, _stdout, stderr) => (err ? reject(new Error(`${err.message}\n${stderr}`)) : resolve(stderr)),
    )
  })
  const heap = JSON.parse(/^HEAP (.*)$/m.exec(out)![1]!) as { h1: number; h2: number; h3: number }
  t.comment(
    `heap after 50, ${50 + N}, ${50 + 2 * N} reloads: ${[heap.h1, heap.h2, heap.h3].map((h) => `${(h / 1048576).toFixed(2)} MiB`).join(', ')}`,
  )
  t.ok(heap.h3 - heap.h2 < 1024 * 1024, `the second ${N} reloads add under 1 MiB (${heap.h3 - heap.h2} bytes)`)
  t.ok(heap.h2 - heap.h1 < 1024 * 1024, `nor did the first ${N} (${heap.h2 - heap.h1} bytes)`)
})
