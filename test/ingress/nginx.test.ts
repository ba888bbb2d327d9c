// nginx auth_request → Lapse's decision API, through a real nginx running deploy/nginx/ as shipped.
import t from 'tap'
import { frontProxyCases } from './front-cases.js'
import { NGINX, startNginx } from './front-proxies.js'

t.test('nginx auth_request', { skip: NGINX ? false : "no nginx binary found (.ci/run installs Debian's nginx)" }, async (t) => {
  frontProxyCases(t, {
    name: 'nginx',
    protocol: 'nginx',
    start: startNginx,
    downStatus: 503,
    // nginx decodes %2F in $uri and resolves the dot segment after it: $uri would be /public/x while
    // the upstream gets /admin/..%2Fpublic/x. Lapse decides on $request_uri, the forwarded form.
    extraAttacks: [
      ['encoded slash that nginx resolves in $uri', '/admin/..%2Fpublic/x'],
      ['encoded dot-dot and slash out of /admin', '/admin/%2e%2e%2fpublic/x'],
    ],
  })
})
