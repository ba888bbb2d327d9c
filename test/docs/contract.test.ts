// The docs cannot drift from the code: each list an operator relies on is checked both ways
// against the code it documents. Error codes against docs/errors.md; deny reasons against
// docs/answers.md and telemetry.md's `lapse.reason`; settings against configuration.md; span,
// attribute and metric names against telemetry.md. Where a page holds the list is part of the
// contract, and each test says where it looks.
import { readdirSync, readFileSync } from 'node:fs'
import { join, resolve } from 'node:path'
import { errors as joseErrors } from 'jose'
import t, { type Test } from 'tap'
import { envName, SETTING_NAMES, settingsSchema } from '../../src/config/schema.js'
import { ERROR_CODES, type ErrorCode } from '../../src/core/errors.js'
import { REASONS } from '../../src/core/reasons.js'
import type { DenyReason } from '../../src/core/types.js'
import * as semconv from '../../src/telemetry/semconv.js'

const ROOT = resolve(import.meta.dirname, '../..')
const page = (name: string) => readFileSync(join(ROOT, 'docs', name), 'utf8')

// Compile-time: ERROR_CODES and REASONS are complete by construction (ErrorCode is read off the
// array; REASONS is a Record<DenyReason, …>), so these lists are every code and every reason.
const CODES: readonly ErrorCode[] = ERROR_CODES
const REASON_NAMES = Object.keys(REASONS) as DenyReason[]

interface Table {
  readonly header: readonly string[]
  readonly rows: ReadonlyArray<readonly string[]>
}

/** The cells of a table line: split on `|` outside code spans; `\|` stays in its cell. */
function cells(line: string): string[] {
  const out: string[] = []
  let cell = ''
  let code = false
  const body = line.trim().replace(/^\|/, '').replace(/\|$/, '')
  for (let i = 0; i < body.length; i++) {
    const c = body[i]!
    if (c === '\\' && body[i + 1] === '|') {
      cell += '|'
      i++
      continue
    }
    if (c === '`') code = !code
    if (c === '|' && !code) {
      out.push(cell.trim())
      cell = ''
      continue
    }
    cell += c
  }
  out.push(cell.trim())
  return out
}

/** Every pipe table of a Markdown text (outside fenced code), with its header cells. */
function tablesOf(markdown: string): Table[] {
  const tables: Table[] = []
  const lines = markdown.split('\n')
  let fenced = false
  for (let i = 0; i < lines.length; i++) {
    if (/^\s*```/.test(lines[i]!)) fenced = !fenced
    if (fenced || !lines[i]!.startsWith('|') || !/^\|[\s:|-]+\|?\s*$/.test(lines[i + 1] ?? '')) continue
    const header = cells(lines[i]!)
    const rows: string[][] = []
    for (i += 2; i < lines.length && lines[i]!.startsWith('|'); i++) rows.push(cells(lines[i]!))
    tables.push({ header, rows })
  }
  return tables
}

/** The text of one `## heading` section, up to the next heading of the same level. */
function section(markdown: string, heading: string): string {
  const start = markdown.split('\n').indexOf(`## ${heading}`)
  if (start < 0) throw new Error(`no "## ${heading}" section`)
  const rest = markdown.split('\n').slice(start + 1)
  const end = rest.findIndex((l) => /^## /.test(l))
  return rest.slice(0, end < 0 ? undefined : end).join('\n')
}

/** The names written as code spans in a cell or text (fenced blocks left out), matching `pattern` whole. */
function spans(text: string, pattern: RegExp): string[] {
  return [...text.replace(/^\s*```[\s\S]*?^\s*```/gm, '').matchAll(/`([^`\n]+)`/g)].map((m) => m[1]!).filter((s) => pattern.test(s))
}

/** Names one list has and the other lacks, both ways, for one readable failure. */
function compare(t: Test, code: readonly string[], docs: readonly string[], where: string) {
  const documented = new Set(docs)
  const known = new Set(code)
  t.same(
    code.filter((n) => !documented.has(n)),
    [],
    `every one is in ${where}`,
  )
  t.same(
    [...documented].filter((n) => !known.has(n)),
    [],
    `everything ${where} names exists in the code`,
  )
}

t.test(
  'error codes: each of ERROR_CODES has one row with a "what to do" in docs/errors.md, and that registry names no other',
  async (t) => {
    // The registry is every table of errors.md with a "what to do" column; a code's row is the one
    // whose first cell names it. The library codes' table has no such column and is not Lapse's.
    const docs = page('errors.md')
    const registry = tablesOf(docs).filter((tb) => tb.header.includes('what to do'))
    t.ok(registry.length >= 3, 'errors.md has its registry tables')
    const rows = registry.flatMap((tb) =>
      tb.rows.flatMap((row) => spans(row[0]!, /^ERR_[A-Z_]+$/).map((code) => ({ code, todo: row[tb.header.indexOf('what to do')] ?? '' }))),
    )
    compare(
      t,
      CODES,
      rows.map((r) => r.code),
      'the registry of docs/errors.md',
    )
    for (const r of rows) t.ok(r.todo.length > 0, `${r.code}: says what to do`)
    const seen = rows.map((r) => r.code)
    t.same(
      seen.filter((c, i) => seen.indexOf(c) !== i),
      [],
      'each code has one row',
    )
  },
)

t.test("error codes: every ERR_* literal in src/ is Lapse's (in ERROR_CODES) or a library's that Lapse translates", async (t) => {
  // A code thrown ad hoc (`Object.assign(new Error(…), { code: 'ERR_…' })`) would not be in the
  // union, so it would miss docs/errors.md too. Library codes: jose's, and Node's http server's.
  const library = new Set<string>([...Object.values(joseErrors).map((e) => (e as { code: string }).code), 'ERR_HTTP_REQUEST_TIMEOUT'])
  const src = join(ROOT, 'src')
  const found = new Set<string>()
  for (const file of readdirSync(src, { recursive: true }) as string[]) {
    if (!file.endsWith('.ts')) continue
    for (const m of readFileSync(join(src, file), 'utf8').matchAll(/['"`](ERR_[A-Z0-9_]+)['"`]/g)) found.add(m[1]!)
  }
  t.ok(found.size >= CODES.length, 'the scan sees the codes of src/')
  t.same(
    [...found].filter((c) => !(CODES as readonly string[]).includes(c) && !library.has(c)).sort(),
    [],
    "no ERR_* code outside ERROR_CODES but libraries'",
  )
})

t.test('deny reasons: each is in docs/answers.md with its status, error and description, and answers.md names no other', async (t) => {
  const docs = section(page('answers.md'), 'Denials')
  const tables = tablesOf(docs)
  // The denials table: situation | status | WWW-Authenticate | reason.
  const denials = tables.find((tb) => tb.header[0] === 'situation' && tb.header.at(-1) === 'reason')
  // The reason table: reason | `error` | `error_description`, one row per reason.
  const table = tables.find((tb) => tb.header[0] === 'reason')
  if (!denials || !table) return t.fail('answers.md "Denials" has its two tables')
  const statuses = new Map(
    denials.rows.flatMap((row) => spans(row.at(-1)!, /^[a-z_]+$/).map((r) => [r, Number(/^\d{3}/.exec(row[1]!)?.[0])] as const)),
  )
  compare(t, REASON_NAMES, [...statuses.keys()], 'the denials table of answers.md')
  compare(
    t,
    REASON_NAMES,
    table.rows.flatMap((row) => spans(row[0]!, /^[a-z_]+$/)),
    'the reason table of answers.md',
  )
  for (const reason of REASON_NAMES) {
    const want = REASONS[reason]
    if (statuses.has(reason)) t.equal(statuses.get(reason), want.status, `${reason}: status`)
    const row = table.rows.find((r) => spans(r[0]!, /^[a-z_]+$/).includes(reason))
    if (row) t.same([spans(row[1]!, /./)[0], row[2]], [want.error, want.description], `${reason}: error and error_description`)
  }
})

t.test("deny reasons: telemetry.md's `lapse.reason` row lists each, and no other", async (t) => {
  const span = tablesOf(section(page('telemetry.md'), 'The decision span')).find((tb) => tb.header[0] === 'attribute')
  const row = span?.rows.find((r) => r[0] === '`lapse.reason`')
  if (!row) return t.fail('telemetry.md "The decision span" has the `lapse.reason` row')
  compare(
    t,
    REASON_NAMES,
    spans(row[1]!, /^[a-z_]+$/).filter((r) => r !== 'ok'),
    'the `lapse.reason` row of telemetry.md',
  )
})

t.test('settings: each is a row of the settings table of docs/configuration.md, and that table names no other', async (t) => {
  // The table under "## Settings"; a row may name two variables (`LAPSE_JWKS_URL` / `LAPSE_JWKS_FILE`).
  // Other LAPSE_* names in prose (LAPSE_CONFIG, LAPSE_ADMIN_URL…) are not settings and not checked.
  const table = tablesOf(section(page('configuration.md'), 'Settings')).find((tb) => tb.header[0] === 'variable')
  if (!table) return t.fail('configuration.md "Settings" has its table')
  compare(
    t,
    SETTING_NAMES.map(envName),
    table.rows.flatMap((row) => spans(row[0]!, /^LAPSE_[A-Z0-9_]+$/)),
    'the settings table of configuration.md',
  )
})

t.test('settings: each says what it is in the schema, where its type and default are', async (t) => {
  t.same(
    SETTING_NAMES.filter((k) => !settingsSchema.shape[k].description),
    [],
    'every setting of the schema has a description',
  )
})

t.test(
  'telemetry names: each span, attribute and metric name of semconv.ts is in docs/telemetry.md, and every `lapse.*` name there is one',
  async (t) => {
    const docs = page('telemetry.md')
    const names: string[] = Object.values(semconv).filter((v) => typeof v === 'string')
    t.ok(names.length > 20, 'semconv.ts exports the names')
    // A name is documented as a code span, dotted or in its Prometheus form (a label: `lapse_revocation_backend`).
    const written = new Set(spans(docs, /^[a-z][a-z0-9_.]*$/))
    t.same(
      names.filter((n) => !written.has(n) && !written.has(n.replaceAll('.', '_'))),
      [],
      'every name of semconv.ts is in telemetry.md',
    )
    // The other way: every code span in telemetry.md that is a whole `lapse.…` name.
    t.same(
      [...written].filter((n) => n.startsWith('lapse.') && !names.includes(n)),
      [],
      'every `lapse.*` name in telemetry.md is in semconv.ts',
    )
  },
)
