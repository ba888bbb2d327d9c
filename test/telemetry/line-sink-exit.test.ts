// Lines still waiting in the stdout sink when the process ends are written out: a process that
// dies of an uncaught exception or an unhandled rejection, or calls process.exit, has every line
// it handed over on its stdout (a pipe, or a file), whole. The child is a real Node process on
// the built sink (dist/), with stdout as the proxy has it; its lines are taken within one flush
// delay and a batch, so none is written before it dies.
import { spawn } from 'node:child_process'
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t, { type Test } from 'tap'

const SINK = new URL('../../dist/telemetry/line-sink.js', import.meta.url).href
const LINES = 300

/** A child that hands LINES lines to the sink, then ends as `end` says. */
const child = (end: string) => `
import { stdoutSink } from ${JSON.stringify(SINK)}
const sink = stdoutSink({ capBytes: 16 << 20 })
for (let i = 0; i < ${LINES}; i++) sink.write(JSON.stringify({ i, audit: 'decision' }) + '\\n')
setImmediate(() => { ${end} })
`

function run(end: string, stdout: 'pipe' | number) {
  const proc = spawn(process.execPath, ['--input-type=module', '-e', child(end)], { stdio: ['ignore', stdout, 'pipe'] })
  let out = ''
  let err = ''
  proc.stdout?.on('data', (c: Buffer) => {
    out += c.toString()
  })
  proc.stderr?.on('data', (c: Buffer) => {
    err += c.toString()
  })
  return new Promise<{ code: number | null; out: string; err: string }>((resolve) =>
    proc.once('close', (code) => resolve({ code, out, err })),
  )
}

function assertLines(t: Test, out: string) {
  const lines = out.split('\n')
  t.equal(lines.pop(), '', 'the output ends with a whole line')
  t.same(
    lines.map((l) => (JSON.parse(l) as { i: number }).i),
    Array.from({ length: LINES }, (_, i) => i),
    'every line, once, in order',
  )
}

const ENDS: ReadonlyArray<[string, string, number, RegExp]> = [
  ['an uncaught exception', "throw new Error('boom')", 1, /Error: boom/],
  ['an unhandled rejection', "Promise.reject(new Error('rejected'))", 1, /rejected/],
  ['process.exit(3)', 'process.exit(3)', 3, /^$/],
]

for (const [name, end, code, stderr] of ENDS) {
  t.test(`${name}: the lines waiting in the sink are on stdout (a pipe)`, async (t) => {
    const r = await run(end, 'pipe')
    t.equal(r.code, code, 'exit code')
    t.match(r.err, stderr)
    assertLines(t, r.out)
  })
}

t.test('an uncaught exception with stdout a file: the lines are in the file', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'lapse-exit-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const path = join(dir, 'stdout.log')
  const fd = openSync(path, 'w')
  const r = await run("throw new Error('boom')", fd)
  closeSync(fd)
  t.equal(r.code, 1)
  assertLines(t, readFileSync(path, 'utf8'))
})
