// Whether a JSON text repeats a member name within one object: JSON.parse keeps the last of two
// equal names, another parser may keep the first, so such a token means two things at once and is
// refused (RFC 7515 §5.2 and RFC 7519 §4 let a verifier reject duplicates; Lapse must).
//
//   repeatsMember('{"sub":"a","sub":"b"}', JSON.parse(...))   // true
//   repeatsMember('{"sub":"a"}', JSON.parse(...))             // false
//
// Why: docs/security.md#forged-or-tampered-tokens.

/**
 * True when some object in `text` names a member more than once; `parsed` is JSON.parse(text),
 * never another value: it walks the structure, not the grammar. The text holds as many names as
 * the parsed value has keys in all its objects exactly when no object repeats one, however spelled
 * ("a" and "\u0061" are one name): counting needs no slices or sets, and runs on every fresh token.
 */
export function repeatsMember(text: string, parsed: unknown): boolean {
  return countNames(text) !== countKeys(parsed)
}

/** Member names in the text: the strings that open a member of an object. */
function countNames(json: string): number {
  // Per open container: true for an object, false for an array.
  const inObject: boolean[] = []
  let expectName = false
  let names = 0
  for (let i = 0; i < json.length; i++) {
    const c = json.charCodeAt(i)
    if (c === 0x22 /* " */) {
      if (expectName) names++
      expectName = false
      i = closingQuote(json, i)
    } else if (c === 0x7b /* { */) {
      inObject.push(true)
      expectName = true
    } else if (c === 0x5b /* [ */) {
      inObject.push(false)
      expectName = false
    } else if (c === 0x7d /* } */ || c === 0x5d /* ] */) {
      inObject.pop()
      expectName = false
    } else if (c === 0x2c /* , */) {
      expectName = inObject[inObject.length - 1] === true
    }
  }
  return names
}

/**
 * The index of the quote that closes the string opened at `open`. Found with indexOf, which is
 * much faster than a loop over claim values; a quote preceded by an odd run of backslashes is
 * escaped and skipped.
 */
function closingQuote(json: string, open: number): number {
  let at = json.indexOf('"', open + 1)
  for (;;) {
    // Only on text JSON.parse refused; ending the scan keeps even that from looping.
    if (at === -1) return json.length
    let slashes = 0
    while (json.charCodeAt(at - 1 - slashes) === 0x5c /* \ */) slashes++
    if (slashes % 2 === 0) return at
    at = json.indexOf('"', at + 1)
  }
}

/** Own keys over every object in a parsed JSON value; iterative, so deep nesting cannot overflow the stack. */
function countKeys(value: unknown): number {
  let keys = 0
  const pending: unknown[] = [value]
  while (pending.length > 0) {
    const v = pending.pop()
    if (v === null || typeof v !== 'object') continue
    if (Array.isArray(v)) {
      for (const item of v) if (item !== null && typeof item === 'object') pending.push(item)
      continue
    }
    // JSON.parse makes "__proto__" an own data key like any other, so Object.keys counts it.
    for (const key of Object.keys(v)) {
      keys++
      const member = (v as Record<string, unknown>)[key]
      if (member !== null && typeof member === 'object') pending.push(member)
    }
  }
  return keys
}
