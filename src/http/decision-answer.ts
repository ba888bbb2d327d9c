// The decision API's answers (docs/ingress.md): a decision, never an upstream's body. Allow is 200
// with the identity headers for the front proxy to copy onto the upstream request; deny is the
// answer proxy mode gives, from the reasons table.
//
//   writeAnswer(res, decisionAnswer(outcome.decision, realm, 'nginx'))
import type { Answer } from '../core/answers.js'
import { toAnswer } from '../core/reasons.js'
import type { Decision, Denial, Identity } from '../core/types.js'
import type { DecisionProtocol } from '../extract/original-request.js'
import { identityFields, toHeaderValue } from './headers.js'

/** The header in which an nginx decision carries its JSON body: auth_request drops the body. */
export const NGINX_ANSWER_HEADER = 'x-lapse-answer'

export function decisionAnswer(d: Decision, realm: string, protocol: DecisionProtocol): Answer {
  if (d.allow) return { status: 200, headers: allowHeaders(d.identity), body: '' }
  return deniedAnswer(d, realm, protocol)
}

export function deniedAnswer(d: Denial, realm: string, protocol: DecisionProtocol): Answer {
  const answer = toAnswer(d, realm)
  if (protocol !== 'nginx') return answer
  return { ...answer, headers: { ...answer.headers, [NGINX_ANSWER_HEADER]: toHeaderValue(answer.body) } }
}

/**
 * All five names on every allow: front proxies copy a listed header from the answer only when it
 * is there (Envoy's allowed_upstream_headers, Caddy's copy_headers), so a name left out would let
 * the client's own copy through to the upstream; an empty one replaces it.
 */
function allowHeaders(identity: Identity | undefined): Record<string, string> {
  const headers: Record<string, string> = {
    'cache-control': 'no-store',
    'content-length': '0',
    'x-auth-subject': '',
    'x-auth-client-id': '',
    'x-auth-token-id': '',
    'x-auth-scopes': '',
    'x-auth-expires-at': '',
  }
  if (identity === undefined) return headers
  const fields = identityFields(identity)
  for (let i = 0; i < fields.length; i += 2) headers[fields[i]!] = fields[i + 1]!
  return headers
}
