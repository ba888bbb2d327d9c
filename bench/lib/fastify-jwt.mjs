// Row 6, what a Node user would assemble instead: fastify + @fastify/http-proxy + @fastify/jwt,
// checking the same RS256 token (signature, iss, aud, exp) and the route's scope.
//
//   node lib/fastify-jwt.mjs <port> <upstream url> <public key PEM file> <iss> <aud> <scope>
import { readFileSync } from 'node:fs'
import Fastify from 'fastify'
import proxy from '@fastify/http-proxy'
import jwt from '@fastify/jwt'

const [portArg, upstream, pemFile, iss, aud, scope] = process.argv.slice(2)
// Defaults as a user would write them: no verification cache (fast-jwt's `cache` is off by default).
const cache = process.env.BENCH_FASTIFY_JWT_CACHE === 'true'

const app = Fastify({ logger: false })
await app.register(jwt, {
  secret: { public: readFileSync(pemFile, 'utf8'), private: 'unused: this app only verifies' },
  verify: { algorithms: ['RS256'], allowedIss: iss, allowedAud: aud, requiredClaims: ['exp', 'iat', 'jti', 'sub'], cache },
})
app.addHook('onRequest', async (req, reply) => {
  let claims
  try {
    claims = await req.jwtVerify()
  } catch {
    return reply.code(401).header('www-authenticate', 'Bearer error="invalid_token"').send({ error: 'invalid_token' })
  }
  const granted = typeof claims.scope === 'string' ? claims.scope.split(' ') : []
  if (!granted.includes(scope)) return reply.code(403).send({ error: 'insufficient_scope' })
})
await app.register(proxy, { upstream, prefix: '/', http2: false })
await app.listen({ port: Number(portArg), host: '127.0.0.1' })
process.on('SIGTERM', () => {
  app.close().then(() => process.exit(0))
})
