// Caddy forward_auth → Lapse's decision API, through a real Caddy running deploy/caddy/Caddyfile as shipped.
import t from 'tap'
import { frontProxyCases } from './front-cases.js'
import { CADDY, startCaddy } from './front-proxies.js'

t.test('Caddy forward_auth', { skip: CADDY ? false : "no caddy binary found (.ci/run installs Debian's caddy)" }, async (t) => {
  frontProxyCases(t, { name: 'caddy', protocol: 'forward', start: startCaddy, downStatus: 502 })
})
