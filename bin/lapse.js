#!/usr/bin/env node
// Runs the compiled CLI; `npm ci` builds dist/ through the `prepare` script.
import { main } from '../dist/cli/index.js'

main(process.argv.slice(2), process.env).catch((err) => {
  process.stderr.write(`lapse: ${err?.message ? err.message : String(err)}\n`)
  process.exit(1)
})
