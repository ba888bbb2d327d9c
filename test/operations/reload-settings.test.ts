// Every setting is either applied by a reload or named as needing a restart, never both and never
// neither (a new setting must be classified), and docs/operations.md's table says the same.
import { readFileSync } from 'node:fs'
import t from 'tap'
import { envName, SETTING_NAMES } from '../../src/config/schema.js'
import { LIVE_SETTINGS, RESTART_SETTINGS } from '../../src/reload.js'

t.test('each setting changes live or needs a restart, exactly one of the two', async (t) => {
  const all = SETTING_NAMES.map(envName).sort()
  t.same(
    [...LIVE_SETTINGS, ...RESTART_SETTINGS].filter((n) => !all.includes(n)),
    [],
    'no unknown name',
  )
  t.same(
    all.filter((n) => !LIVE_SETTINGS.includes(n) && !RESTART_SETTINGS.includes(n)),
    [],
    'every setting is classified',
  )
  t.same(
    LIVE_SETTINGS.filter((n) => RESTART_SETTINGS.includes(n)),
    [],
    'none is both',
  )
})

t.test("docs/operations.md's live-reload table lists the same settings in the same columns", async (t) => {
  const page = readFileSync(new URL('../../docs/operations.md', import.meta.url), 'utf8')
  const section = page.slice(page.indexOf('## Live reload'), page.indexOf('## Shutdown'))
  const row = section.split('\n').find((l) => l.startsWith('| `LAPSE_'))!
  const [live, restart] = row.split(' | ').map((cell) => [...cell.matchAll(/`(LAPSE_[A-Z_]+)`/g)].map((m) => m[1]!).sort())
  t.same(live, [...LIVE_SETTINGS].sort(), 'changes live')
  t.same(restart, [...RESTART_SETTINGS].sort(), 'needs a restart')
})
