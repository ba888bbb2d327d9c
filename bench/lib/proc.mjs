// Child processes for the benchmark: spawn pinned to a core, wait until ready, read RSS, stop.
//
//   const child = spawnPinned('node', ['lib/upstream.mjs', port], { cpu: 1, name: 'upstream', logDir })
//   await waitHttp(`http://127.0.0.1:${port}/`, { timeoutMs: 10_000 })
//   rssKb(child.pid); await stopAll()
import { spawn, spawnSync } from 'node:child_process'
import { openSync, readFileSync, readdirSync, closeSync } from 'node:fs'
import { createServer } from 'node:net'
import { join } from 'node:path'

const children = new Set()

/** Whether `taskset` can pin: present on PATH and at least two CPUs to split between. */
export function canPin(cpuCount) {
  if (cpuCount < 2) return false
  const probe = spawnSync('taskset', ['-c', '0', 'true'], { stdio: 'ignore' })
  return probe.status === 0
}

/** A free loopback port: bound once on port 0, then released. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = createServer()
    srv.unref()
    srv.on('error', reject)
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address()
      srv.close(() => resolve(port))
    })
  })
}

/**
 * Spawns `cmd args` pinned to `cpu` with taskset (when `cpu` is a number), output to
 * `<logDir>/<name>.log` so a chatty child can never block on a full pipe, or to `outPath`
 * (row 3ln: /dev/null).
 */
export function spawnPinned(cmd, args, { cpu, name, logDir, env = process.env, cwd, outPath } = {}) {
  const logPath = outPath ?? join(logDir, `${name}.log`)
  const fd = openSync(logPath, 'a')
  const pinned = typeof cpu === 'number'
  // taskset execs the command, so the child's pid is the server's own pid (for /proc/<pid>/status).
  const child = pinned
    ? spawn('taskset', ['-c', String(cpu), cmd, ...args], { stdio: ['ignore', fd, fd], env, cwd })
    : spawn(cmd, args, { stdio: ['ignore', fd, fd], env, cwd })
  closeSync(fd)
  child.benchName = name
  child.logPath = logPath
  child.exited = false
  child.once('exit', () => {
    child.exited = true
    children.delete(child)
  })
  children.add(child)
  return child
}

/** The last lines of a child's log, for an error message. */
export function tailLog(child, lines = 20) {
  try {
    return readFileSync(child.logPath, 'utf8').trimEnd().split('\n').slice(-lines).join('\n')
  } catch {
    return '(no log)'
  }
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms))

/** Polls `url` until it answers `status`, the child dies, or `timeoutMs` passes (then throws). */
export async function waitHttp(url, { timeoutMs = 15_000, status = 200, child } = {}) {
  const deadline = Date.now() + timeoutMs
  let last = 'no answer'
  while (Date.now() < deadline) {
    if (child?.exited) throw new Error(`${child.benchName} exited before ready:\n${tailLog(child)}`)
    try {
      const res = await fetch(url, { signal: AbortSignal.timeout(1000) })
      await res.arrayBuffer()
      if (res.status === status) return
      last = `status ${res.status}`
    } catch (err) {
      last = err.cause?.code ?? err.message
    }
    await sleep(100)
  }
  throw new Error(`${url} not ready after ${timeoutMs} ms (${last})${child ? `:\n${tailLog(child)}` : ''}`)
}

/** Resident set size in kB from /proc/<pid>/status, or undefined off Linux. */
export function rssKb(pid) {
  try {
    const m = /^VmRSS:\s+(\d+)\s+kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))
    return m ? Number(m[1]) : undefined
  } catch {
    return undefined
  }
}

/** CPU time (user + system, all threads) a process has used so far, in ms; undefined off Linux. */
export function cpuMs(pid) {
  try {
    const fields = statFields(`/proc/${pid}/stat`)
    return ((Number(fields[11]) + Number(fields[12])) * 1000) / CLOCK_TICKS
  } catch {
    return undefined
  }
}

/**
 * The same CPU time split three ways, in ms: user and system time of the whole process, and the
 * part of it spent by threads other than the main one (V8's compiler and GC helpers, libuv's
 * pool). A difference between two configurations that shows in `user` but not in `otherThreads`
 * is JavaScript on the event loop; one in `system` is syscalls. A thread that ends mid-window takes
 * its time out of `otherThreads` (not out of the process totals); Node's own threads live as long
 * as the process. Undefined off Linux.
 */
export function cpuSplitMs(pid) {
  try {
    const fields = statFields(`/proc/${pid}/stat`)
    let otherThreads = 0
    for (const tid of readdirSync(`/proc/${pid}/task`)) {
      if (tid === String(pid)) continue
      // A thread may end between the listing and the read.
      try {
        const t = statFields(`/proc/${pid}/task/${tid}/stat`)
        otherThreads += Number(t[11]) + Number(t[12])
      } catch {}
    }
    return {
      user: (Number(fields[11]) * 1000) / CLOCK_TICKS,
      system: (Number(fields[12]) * 1000) / CLOCK_TICKS,
      otherThreads: (otherThreads * 1000) / CLOCK_TICKS,
    }
  } catch {
    return undefined
  }
}
// Fields after the parenthesised command name (which may hold spaces): utime (field 14 of the
// line) is [11], stime (15) [12].
const statFields = (path) => {
  const stat = readFileSync(path, 'utf8')
  return stat.slice(stat.lastIndexOf(')') + 2).split(' ')
}
// USER_HZ: 100 on every Linux architecture Node runs on.
const CLOCK_TICKS = 100

/**
 * CPU time the whole machine has been busy (all CPUs, ms), counting time stolen by a hypervisor
 * as busy: both are time our processes did not get. Undefined off Linux.
 */
export function machineBusyMs() {
  try {
    const line = readFileSync('/proc/stat', 'utf8').split('\n', 1)[0]
    const [user, nice, system, , , irq, softirq, steal] = line.trim().split(/\s+/).slice(1).map(Number)
    return ((user + nice + system + irq + softirq + (steal || 0)) * 1000) / CLOCK_TICKS
  } catch {
    return undefined
  }
}

/** SIGTERM, then SIGKILL after `graceMs`; resolves once the child is gone. */
export async function stop(child, graceMs = 3000) {
  if (!child || child.exited) return
  const gone = new Promise((r) => child.once('exit', r))
  child.kill('SIGTERM')
  const timer = setTimeout(() => {
    if (!child.exited) child.kill('SIGKILL')
  }, graceMs)
  await gone
  clearTimeout(timer)
}

export async function stopAll() {
  await Promise.all([...children].map((c) => stop(c)))
}

/** Kills what is left synchronously: the last resort on exit or a signal. */
export function killAllSync() {
  for (const c of children) if (!c.exited) c.kill('SIGKILL')
}

/** Runs a node script pinned to `cpu`, returns its stdout parsed as JSON (bounded by `timeoutMs`). */
export function runJson(cmd, args, { cpu, timeoutMs, env = process.env, cwd } = {}) {
  return new Promise((resolve, reject) => {
    const pinned = typeof cpu === 'number'
    const child = pinned
      ? spawn('taskset', ['-c', String(cpu), cmd, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env, cwd })
      : spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], env, cwd })
    let out = ''
    let err = ''
    child.stdout.setEncoding('utf8').on('data', (d) => {
      out += d
    })
    child.stderr.setEncoding('utf8').on('data', (d) => {
      err += d
    })
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs)
    child.on('exit', (code, signal) => {
      clearTimeout(timer)
      if (code !== 0) return reject(new Error(`${args[0]} exited ${code ?? signal}: ${err.slice(-2000)}`))
      try {
        resolve(JSON.parse(out))
      } catch {
        reject(new Error(`${args[0]} printed no JSON: ${out.slice(-500)} ${err.slice(-1000)}`))
      }
    })
  })
}
