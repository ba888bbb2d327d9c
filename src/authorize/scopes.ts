// Granted scopes vs a rule's required scopes. Pure and synchronous.
//
//   checkScopes(identity.scopes, rule.scopes)   // undefined when every scope is granted
import type { Denial } from '../core/types.js'

export function checkScopes(granted: ReadonlySet<string>, required: readonly string[]): Denial | undefined {
  for (const scope of required) {
    if (!granted.has(scope)) return { allow: false, reason: 'insufficient_scope', requiredScopes: required }
  }
  return undefined
}
