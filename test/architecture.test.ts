// The layers of src/ (issue 22): each folder has a rank, and a file imports only from its own
// folder or from a folder of strictly lower rank; no chain of imports leads from a file back to
// itself. Type-only and dynamic imports count: they tie the code together as much as the others.
import { readdirSync, readFileSync } from 'node:fs'
import { join, posix } from 'node:path'
import t from 'tap'
import ts from 'typescript'

/** Folder of src/ → rank; `.` is src/ itself (main.ts). */
const RANKS: Readonly<Record<string, number>> = {
  // The ground: decision values, reasons, clock, store interfaces, errors. Imports nothing of Lapse.
  core: 0,
  // The stages.
  target: 1,
  extract: 1,
  verify: 1,
  revocation: 1,
  authorize: 1,
  bind: 1,
  // What composes or consumes the stages.
  decide: 2,
  config: 2,
  connections: 2,
  telemetry: 2,
  // The adapters.
  http: 3,
  admin: 3,
  // The composition root, and the CLI that starts it.
  '.': 4,
  cli: 5,
}

/** File (relative to src/) → the files of src/ it imports. */
type Graph = ReadonlyMap<string, readonly string[]>

/** The relative module specifiers of a TypeScript text: static, re-export, type-only and dynamic. */
function importsOf(text: string): string[] {
  return ts
    .preProcessFile(text, true, true)
    .importedFiles.map((f) => f.fileName)
    .filter((s) => s.startsWith('.'))
}

function graphOf(srcDir: string): Graph {
  const files = (readdirSync(srcDir, { recursive: true }) as string[])
    .map((f) => f.split('\\').join('/'))
    .filter((f) => f.endsWith('.ts'))
    .sort()
  return new Map(
    files.map((file) => [
      file,
      [
        ...new Set(
          importsOf(readFileSync(join(srcDir, file), 'utf8')).map((spec) =>
            posix.normalize(posix.join(posix.dirname(file), spec)).replace(/\.js$/, '.ts'),
          ),
        ),
      ],
    ]),
  )
}

const folderOf = (file: string) => (file.includes('/') ? file.slice(0, file.indexOf('/')) : '.')

/** Every import that breaks the layering, as a sentence naming it. */
function layerProblems(graph: Graph): string[] {
  const problems: string[] = []
  for (const [file, targets] of graph) {
    const from = folderOf(file)
    if (RANKS[from] === undefined) problems.push(`${file}: folder "${from}" has no rank in test/architecture.test.ts`)
    for (const target of targets) {
      const to = folderOf(target)
      if (!graph.has(target)) problems.push(`${file} imports ${target}, which is not a file of src/`)
      else if (from === 'core' && to !== 'core') problems.push(`${file} imports ${target}: core imports nothing of Lapse`)
      else if (to !== from && !((RANKS[to] ?? Infinity) < (RANKS[from] ?? -Infinity))) {
        problems.push(
          `${file} imports ${target}: ${from} (rank ${RANKS[from]}) may import only from its own folder or a lower rank, and ${to} has rank ${RANKS[to]}`,
        )
      }
    }
  }
  return problems
}

/** Every import cycle between files, once each, as `a.ts → b.ts → a.ts`. */
function cycles(graph: Graph): string[] {
  const found: string[] = []
  const done = new Set<string>()
  const path: string[] = []
  const visit = (file: string) => {
    const at = path.indexOf(file)
    if (at >= 0) return void found.push([...path.slice(at), file].join(' → '))
    if (done.has(file)) return
    path.push(file)
    for (const target of graph.get(file) ?? []) visit(target)
    path.pop()
    done.add(file)
  }
  for (const file of graph.keys()) visit(file)
  return found
}

t.test('the checker finds a bad import and a cycle in a synthetic graph, and passes a good one', async (t) => {
  const bad: Graph = new Map([
    ['core/types.ts', ['decide/decide.ts']],
    ['decide/decide.ts', ['core/types.ts', 'http/server.ts']],
    ['http/server.ts', ['decide/decide.ts', 'admin/server.ts']],
    ['admin/server.ts', []],
    ['stray/thing.ts', []],
  ])
  t.same(layerProblems(bad), [
    'core/types.ts imports decide/decide.ts: core imports nothing of Lapse',
    'decide/decide.ts imports http/server.ts: decide (rank 2) may import only from its own folder or a lower rank, and http has rank 3',
    'http/server.ts imports admin/server.ts: http (rank 3) may import only from its own folder or a lower rank, and admin has rank 3',
    'stray/thing.ts: folder "stray" has no rank in test/architecture.test.ts',
  ])
  t.same(cycles(bad), ['core/types.ts → decide/decide.ts → core/types.ts', 'decide/decide.ts → http/server.ts → decide/decide.ts'])
  // A cycle inside one folder breaks no rank, and is still a cycle.
  t.same(
    cycles(
      new Map([
        ['http/a.ts', ['http/b.ts']],
        ['http/b.ts', ['http/a.ts']],
      ]),
    ),
    ['http/a.ts → http/b.ts → http/a.ts'],
  )
  const good: Graph = new Map([
    ['core/types.ts', []],
    ['verify/keys.ts', ['core/types.ts']],
    ['main.ts', ['verify/keys.ts', 'core/types.ts']],
    ['cli/index.ts', ['main.ts']],
  ])
  t.same(layerProblems(good), [])
  t.same(cycles(good), [])
})

t.test('the parser reads every kind of import and skips comments and strings', async (t) => {
  const text = [
    "// import { no } from './comment.js'",
    "import type { A } from './a.js'",
    "import {\n  b,\n} from '../b.js'",
    "export { d } from './d.js'",
    "import './e.js'",
    "import pino from 'pino'",
    'const s = "import x from \'./string.js\'"',
    "const m = await import('./f.js')",
  ].join('\n')
  t.same(importsOf(text), ['./a.js', '../b.js', './d.js', './e.js', './f.js'])
})

t.test('src/ keeps its layers and has no import cycle', async (t) => {
  const graph = graphOf(join(import.meta.dirname, '..', 'src'))
  t.ok(graph.size > 30, 'the checker sees the files of src/')
  t.ok(
    [...graph.values()].some((targets) => targets.length > 0),
    'the checker sees imports',
  )
  t.same(layerProblems(graph), [], 'every import stays in its folder or goes down a rank')
  t.same(cycles(graph), [], 'no import cycle')
})
