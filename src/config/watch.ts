// Calls back when any of the files Lapse reads may have changed. It watches their directories,
// not the files: Kubernetes updates a mounted ConfigMap or Secret by renaming a new `..data`
// symlink over the old one, and the file's own path (a link through `..data`) never sees an
// event. Events come in bursts (write, rename, chmod), so one callback follows a quiet pause.
//
//   const watcher = watchFiles([config, jwks], () => reload('file'), { quietMs: 200 })
//   watcher.close()
import { watch, type FSWatcher } from 'node:fs'
import { basename, dirname, resolve } from 'node:path'

export interface FileWatcher {
  close(): void
}

export function watchFiles(
  files: readonly string[],
  changed: () => void,
  opts: { quietMs: number; onError?: (dir: string, err: Error) => void },
): FileWatcher {
  const byDir = new Map<string, Set<string>>()
  for (const file of files) {
    const path = resolve(file)
    let names = byDir.get(dirname(path))
    if (!names) byDir.set(dirname(path), (names = new Set()))
    names.add(basename(path))
  }
  let timer: NodeJS.Timeout | undefined
  const fire = () => {
    if (timer) clearTimeout(timer)
    timer = setTimeout(() => {
      timer = undefined
      changed()
    }, opts.quietMs)
    timer.unref()
  }
  const watchers: FSWatcher[] = []
  for (const [dir, names] of byDir) {
    try {
      const w = watch(dir, { persistent: false }, (_event, name) => {
        // `..data` is the link Kubernetes swaps; a name Node could not tell is taken as a change.
        if (name === null || names.has(name) || name === '..data') fire()
      })
      w.on('error', (err) => opts.onError?.(dir, err))
      watchers.push(w)
    } catch (err) {
      opts.onError?.(dir, err as Error)
    }
  }
  return {
    close() {
      if (timer) clearTimeout(timer)
      for (const w of watchers) w.close()
    },
  }
}
