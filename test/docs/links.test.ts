// The operator's docs hold together: every relative link in README.md and docs/*.md reaches a file
// that exists and, when it names a #fragment, a heading of that file (GitHub's anchor rules); and
// the README's first two code blocks are the two commands an operator runs first.
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs'
import { dirname, join, relative, resolve } from 'node:path'
import t from 'tap'

const ROOT = resolve(import.meta.dirname, '../..')
const PAGES = [
  'README.md',
  ...readdirSync(join(ROOT, 'docs'))
    .filter((f) => f.endsWith('.md'))
    .map((f) => `docs/${f}`),
]

/** The text outside fenced code blocks, line by line (a `# comment` in a shell block is no heading). */
function proseLines(markdown: string): string[] {
  const lines: string[] = []
  let fence: string | undefined
  for (const line of markdown.split('\n')) {
    const m = /^ {0,3}(`{3,}|~{3,})/.exec(line)
    if (m) {
      if (fence === undefined) fence = m[1]![0]!.repeat(m[1]!.length)
      else if (line.trim().startsWith(fence)) fence = undefined
      continue
    }
    if (fence === undefined) lines.push(line)
  }
  return lines
}

/** The fenced code blocks, in order. */
function fencedBlocks(markdown: string): string[] {
  const blocks: string[] = []
  let current: string[] | undefined
  let fence = ''
  for (const line of markdown.split('\n')) {
    const m = /^ {0,3}(`{3,}|~{3,})/.exec(line)
    if (m && current === undefined) {
      current = []
      fence = m[1]!
    } else if (current !== undefined && line.trim().startsWith(fence)) {
      blocks.push(current.join('\n'))
      current = undefined
    } else if (current !== undefined) {
      current.push(line)
    }
  }
  return blocks
}

/** GitHub's heading anchor: the heading's text, lower-cased, punctuation dropped, spaces as hyphens. */
function slug(heading: string): string {
  const text = heading
    .replace(/!?\[([^\]]*)\]\([^)]*\)/g, '$1') // a link's text only
    .replace(/[`*]/g, '')
    .trim()
  return text
    .toLowerCase()
    .replace(/[^\p{L}\p{M}\p{N}\p{Pc} -]/gu, '')
    .replace(/ /g, '-')
}

/** Every anchor a page offers; a repeated heading gets -1, -2, … as on GitHub. */
function anchorsOf(markdown: string): Set<string> {
  const anchors = new Set<string>()
  const seen = new Map<string, number>()
  for (const line of proseLines(markdown)) {
    const m = /^ {0,3}#{1,6}\s+(.*?)\s*#*\s*$/.exec(line)
    if (!m) continue
    const base = slug(m[1]!)
    const n = seen.get(base) ?? 0
    seen.set(base, n + 1)
    anchors.add(n === 0 ? base : `${base}-${n}`)
  }
  return anchors
}

/** Link targets written in the page: inline `[text](target)` and reference definitions. */
function linkTargets(markdown: string): string[] {
  const targets: string[] = []
  for (const raw of proseLines(markdown)) {
    const line = raw.replace(/`[^`]*`/g, '') // inline code is not a link
    for (const m of line.matchAll(/\]\(\s*<?([^)\s>]+)>?(?:\s+"[^"]*")?\s*\)/g)) targets.push(m[1]!)
    const def = /^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)/.exec(line)
    if (def) targets.push(def[1]!)
  }
  return targets
}

const isExternal = (target: string) => /^[a-z][a-z0-9+.-]*:/i.test(target)

t.test('slug follows GitHub', async (t) => {
  t.equal(slug("Telemetry's cost"), 'telemetrys-cost')
  t.equal(slug('Configuration: `LAPSE_HOSTS`'), 'configuration-lapse_hosts')
  t.equal(
    slug('What Lapse leaves to the issuer, the network and the upstream'),
    'what-lapse-leaves-to-the-issuer-the-network-and-the-upstream',
  )
  t.equal(slug('Targets (issue 7)'), 'targets-issue-7')
  t.equal(slug('The [Redis](https://redis.io) set'), 'the-redis-set')
  t.same([...anchorsOf('# A\n\n```sh\n# not a heading\n```\n\n## A\n')], ['a', 'a-1'])
})

t.test('every relative link resolves', async (t) => {
  const anchorCache = new Map<string, Set<string>>()
  const anchors = (file: string) => {
    let set = anchorCache.get(file)
    if (!set) anchorCache.set(file, (set = anchorsOf(readFileSync(file, 'utf8'))))
    return set
  }
  let checked = 0
  for (const page of PAGES) {
    const file = join(ROOT, page)
    for (const target of linkTargets(readFileSync(file, 'utf8'))) {
      if (isExternal(target)) continue
      checked++
      const hash = target.indexOf('#')
      const path = hash === -1 ? target : target.slice(0, hash)
      const fragment = hash === -1 ? undefined : decodeURIComponent(target.slice(hash + 1))
      const dest = path === '' ? file : resolve(dirname(file), decodeURIComponent(path))
      const where = `${page} → ${target}`
      if (!t.ok(existsSync(dest), `${where}: ${relative(ROOT, dest)} exists`)) continue
      if (fragment === undefined) continue
      if (!statSync(dest).isFile() || !dest.endsWith('.md')) {
        t.fail(`${where}: a #fragment on a file that has no headings`)
        continue
      }
      t.ok(anchors(dest).has(fragment), `${where}: heading #${fragment} exists in ${relative(ROOT, dest)}`)
    }
  }
  // The README links to every page of docs/, so an empty count means the extraction broke.
  t.ok(checked > PAGES.length, `found ${checked} relative links in ${PAGES.length} pages`)
})

t.test("the README's first code blocks are the two commands", async (t) => {
  const blocks = fencedBlocks(readFileSync(join(ROOT, 'README.md'), 'utf8'))
  t.ok(blocks.length >= 2, 'the README has at least two fenced code blocks')
  t.match(blocks[0] ?? '', /^\s*npm ci && npm start\b/m, 'the first runs Lapse on its embedded defaults')
  t.match(blocks[1] ?? '', /^\s*npm test\b/m, 'the second runs the whole suite')
})
