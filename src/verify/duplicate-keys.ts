// Finds a member name repeated within one JSON object. JSON.parse keeps the last of two equal
// names; another parser (an upstream re-reading the token, a library in another language) may
// keep the first, so a token whose header or claims repeat a name means two things at once and
// is refused (RFC 7515 §5.2 and RFC 7519 §4 let a verifier reject duplicates; Lapse must).
//
//   findDuplicateKey('{"sub":"a","sub":"b"}')   // 'sub'
//   findDuplicateKey('{"sub":"a"}')             // undefined
//
// Call it only on text JSON.parse accepted: it walks the structure, not the grammar.

/** The first repeated member name, compared after unescaping ("a" and "\u0061" are the same). */
export function findDuplicateKey(json: string): string | undefined {
  // One entry per open container: the names seen so far for an object, null for an array.
  const stack: Array<Set<string> | null> = []
  let expectName = false
  for (let i = 0; i < json.length; i++) {
    const c = json.charCodeAt(i)
    if (c === 0x22 /* " */) {
      let j = i + 1
      while (json.charCodeAt(j) !== 0x22) j += json.charCodeAt(j) === 0x5c /* \ */ ? 2 : 1
      if (expectName) {
        const names = stack[stack.length - 1]!
        const raw = json.slice(i + 1, j)
        const name = raw.includes('\\') ? (JSON.parse(json.slice(i, j + 1)) as string) : raw
        if (names.has(name)) return name
        names.add(name)
        expectName = false
      }
      i = j
    } else if (c === 0x7b /* { */) {
      stack.push(new Set())
      expectName = true
    } else if (c === 0x5b /* [ */) {
      stack.push(null)
      expectName = false
    } else if (c === 0x7d /* } */ || c === 0x5d /* ] */) {
      stack.pop()
      expectName = false
    } else if (c === 0x2c /* , */) {
      expectName = stack[stack.length - 1] instanceof Set
    }
  }
  return undefined
}
