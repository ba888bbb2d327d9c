// extractOverrides as a table: which header names and query parameters carry an override, how
// values are read, and what is refused.
import t from 'tap'
import { extractOverrides } from '../../src/extract/method-override.js'

type Want = readonly string[] | 'invalid' | undefined
const cases: Array<[string, string[], string, Want]> = [
  ['no override: the usual request', ['Host', 'x', 'Authorization', 'Bearer a', 'Accept', '*/*'], 'page=2', undefined],
  ['a look-alike header is not one', ['X-HTTP-Method-Overrides', 'DELETE', 'X-HTTP-Methods', 'PUT', 'Y-HTTP-Method', 'PUT'], '', undefined],
  ['a parameter that only contains "method"', [], 'method=DELETE&xmethod=PUT&_methods=PUT&a_method=PUT', undefined],
  [
    'each header, any case',
    ['X-HTTP-Method-Override', 'DELETE', 'x-http-method', 'put', 'X-METHOD-OVERRIDE', 'Patch'],
    '',
    ['DELETE', 'PUT', 'PATCH'],
  ],
  [
    'folded spellings',
    ['X_HTTP_Method_Override', 'DELETE', 'x.http.method', 'PUT', 'x~method+override', 'PATCH'],
    '',
    ['DELETE', 'PUT', 'PATCH'],
  ],
  ['a list, with empty elements and OWS', ['X-HTTP-Method', ' ,DELETE ,\tput,,'], '', ['DELETE', 'PUT']],
  ['repeated header lines', ['X-HTTP-Method', 'DELETE', 'X-HTTP-Method', 'PUT'], '', ['DELETE', 'PUT']],
  ['duplicates are one', ['X-HTTP-Method', 'DELETE, delete'], '_method=Delete', ['DELETE']],
  ['query: & and ; separate, escapes decode', [], 'a=1;_method=DELETE&%5Fmethod=PUT&_method=%50ATCH', ['DELETE', 'PUT', 'PATCH']],
  ['query: PHP spellings', [], '.method=DELETE&+_method=PUT&_method[]=PATCH&_method[x]=COPY', ['DELETE', 'PUT', 'PATCH', 'COPY']],
  ['query: an empty value names nothing', [], '_method=&_method', []],
  ['not a token', ['X-HTTP-Method-Override', 'DEL ETE'], '', 'invalid'],
  ['not a token in a list', ['X-HTTP-Method', 'DELETE, PU(T'], '', 'invalid'],
  ['not a token in the query', [], '_method=DE%2FLETE', 'invalid'],
  ['an undecodable value', [], '_method=%FF', 'invalid'],
  ['non-ASCII', ['X-HTTP-Method', 'DÉLETE'], '', 'invalid'],
]

for (const [name, headers, query, want] of cases) {
  t.test(name, async (t) => {
    const got = extractOverrides(headers, query)
    if (want === 'invalid') t.same(got, { reason: 'invalid_request', description: 'invalid method override' })
    else t.same(got, want)
  })
}
