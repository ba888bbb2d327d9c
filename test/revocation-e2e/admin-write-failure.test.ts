// A revocation the set did not take is reported in Lapse's words: what happened (Redis unreachable,
// or no acknowledgement within the budget) and what it means for the entry, never the client
// library's own message ("Stream isn't writeable and enableOfflineQueue options is false").
import t from 'tap'
import { runApp, waitFor, type Lapse } from '../fixtures/app.js'
import { admin, redisEnv, redisFor, untilReady } from './helpers.js'

const body = { claim: 'sub', value: 'ci-deployer', reason: 'pipeline compromised' }

async function failedWrite(lapse: Lapse, before: number): Promise<string> {
  const line = await waitFor(
    () => lapse.lines.slice(before).find((l) => l.msg === 'revocation write failed'),
    'the failed-write log line',
    5000,
  )
  return String(line.err)
}

t.test('Redis gone: 503, and the log says Redis was unreachable and nothing was written', async (t) => {
  const redis = await redisFor(t)
  const lapse = await runApp(t, { env: redisEnv(redis, 'wf1') })
  await untilReady(lapse)
  await redis.kill()
  await waitFor(() => !lapse.running.deps.revocations.ready(), 'set seen gone', 3000)
  const before = lapse.lines.length
  const res = await admin(lapse, 'POST', '/v1/revocations', { body })
  t.equal(res.status, 503)
  t.equal(res.headers['retry-after'], '1')
  const err = await failedWrite(lapse, before)
  t.match(err, /^Redis was unreachable: the revocation was not written$/)
  t.notMatch(JSON.stringify(lapse.lines.slice(before)), /writeable|enableOfflineQueue|Connection is closed/i, 'no client-library wording')
})

t.test('Redis frozen: 503 after the write budget, and the log says it was not acknowledged', async (t) => {
  const redis = await redisFor(t)
  const lapse = await runApp(t, { env: redisEnv(redis, 'wf2') })
  await untilReady(lapse)
  redis.pause()
  const before = lapse.lines.length
  const res = await admin(lapse, 'POST', '/v1/revocations', { body })
  t.equal(res.status, 503)
  const err = await failedWrite(lapse, before)
  t.match(err, /^the revocation set did not acknowledge the write within 2000 ms/)
  t.notMatch(JSON.stringify(lapse.lines.slice(before)), /writeable|enableOfflineQueue|Command timed out/i, 'no client-library wording')
  // The wording says "may not be stored": the frozen server may still apply it when it wakes.
  redis.resume()
})
