// nginx for rows n and na: alone in front of the stub upstream, and with auth_request asking
// Lapse's decision listener through the shipped snippets (deploy/nginx/, rendered as the tests
// render them). One worker, keep-alive to the upstream and to Lapse, no access log.
//
//   const conf = writeNginxConf({ dir, port, upstreamUrl, decision: { address, token } })   // decision: omit for nginx alone
//   spawnPinned(nginxBinary(), ['-p', dir, '-c', conf, '-g', 'daemon off;'], …)
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { spawnSync } from 'node:child_process'

export function nginxBinary() {
  const found = ['/usr/sbin/nginx', '/usr/local/sbin/nginx', '/usr/local/nginx/sbin/nginx'].find((p) => existsSync(p))
  return found ?? (spawnSync('sh', ['-c', 'command -v nginx']).stdout.toString().trim() || undefined)
}

function render(root, file, values) {
  const text = readFileSync(join(root, 'deploy', 'nginx', file), 'utf8').replace(/\{\{([A-Z_]+)\}\}/g, (m, name) => values[name] ?? m)
  if (/\{\{[A-Z_]+\}\}/.test(text)) throw new Error(`deploy/nginx/${file}: a placeholder was not filled in`)
  return text
}

/** Writes nginx.conf (and the rendered snippets) into `dir`; returns its path. */
export function writeNginxConf({ root, dir, port, upstreamUrl, decision }) {
  mkdirSync(dir, { recursive: true })
  const upstream = new URL(upstreamUrl)
  // Upstream blocks with keepalive: both rows reuse connections, so the difference is the sub-request.
  const blocks = [`upstream bench_upstream { server ${upstream.host}; keepalive 32; }`]
  let protect = ''
  let server = ''
  if (decision) {
    blocks.push(`upstream lapse_decision { server ${decision.address}; keepalive 32; }`)
    const values = { LAPSE_DECISION_ADDRESS: 'lapse_decision', LAPSE_DECISION_TOKEN: decision.token }
    writeFileSync(join(dir, 'lapse-decision.conf'), render(root, 'lapse-decision.conf', values))
    writeFileSync(join(dir, 'lapse-protect.conf'), render(root, 'lapse-protect.conf', values))
    server = `include ${join(dir, 'lapse-decision.conf')};`
    protect = `include ${join(dir, 'lapse-protect.conf')};`
  }
  const temp = ['client_body', 'proxy', 'fastcgi', 'uwsgi', 'scgi'].map((k) => `${k}_temp_path ${join(dir, k)};`).join(' ')
  const conf = join(dir, 'nginx.conf')
  writeFileSync(
    conf,
    `worker_processes 1;
pid ${join(dir, 'nginx.pid')};
error_log stderr warn;
events { worker_connections 1024; }
http {
  access_log off;
  ${temp}
  ${blocks.join('\n  ')}
  server {
    listen 127.0.0.1:${port};
    ${server}
    location = /ready-probe { return 200 'ok'; }
    location / {
      ${protect}
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_pass http://bench_upstream;
    }
  }
}
`,
  )
  return conf
}
