/**
 * Watches mounted files the way Kubernetes updates them: the kubelet writes a new timestamped folder and
 * swaps the `..data` symlink, so the file's own inode never changes (Oathkeeper #229). We watch the folders
 * that hold the files, not the files, and debounce the burst of events one swap makes.
 */
import { watch, type FSWatcher } from 'node:fs';
import { dirname } from 'node:path';

export const WATCH_DEBOUNCE_MS = 250;

export function watchFiles(files: readonly string[], onChange: () => void, debounceMs = WATCH_DEBOUNCE_MS): () => void {
  const folders = [...new Set(files.map((f) => dirname(f)))];
  let timer: NodeJS.Timeout | undefined;
  const fire = (): void => {
    if (timer !== undefined) clearTimeout(timer);
    timer = setTimeout(() => {
      timer = undefined;
      onChange();
    }, debounceMs);
    timer.unref();
  };
  const watchers: FSWatcher[] = folders.map((folder) => {
    const w = watch(folder, { persistent: false }, fire);
    w.on('error', () => undefined);
    return w;
  });
  return () => {
    if (timer !== undefined) clearTimeout(timer);
    for (const w of watchers) w.close();
  };
}
