/** Small helpers shared by the benchmarks: free ports, waiting for a server to answer, naming a checkout. */
import { execFileSync } from 'node:child_process';
import { createServer } from 'node:net';

export function freePort() {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

/** Resolves when `url` answers any HTTP status; rejects if `child` exits first or after `timeoutMs`. */
export async function waitForHttp(url, child, timeoutMs = 15_000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (child && (child.exitCode !== null || child.signalCode !== null)) throw new Error(`${url}: the server exited (${child.exitCode ?? child.signalCode})`);
    try {
      const res = await fetch(url, { signal: AbortSignal.timeout(1000) });
      await res.arrayBuffer();
      return res.status;
    } catch {
      if (Date.now() > deadline) throw new Error(`${url}: no answer within ${timeoutMs} ms`);
      await new Promise((r) => setTimeout(r, 5));
    }
  }
}

/** A checkout's short commit, marked when its tracked files differ from it; 'unknown' outside git. */
export function describeCheckout(root) {
  try {
    const sha = execFileSync('git', ['-C', root, 'rev-parse', '--short', 'HEAD'], { encoding: 'utf8' }).trim();
    const dirty = execFileSync('git', ['-C', root, 'status', '--porcelain', '--untracked-files=no'], { encoding: 'utf8' }).trim() !== '';
    return `${sha}${dirty ? ' (with uncommitted changes)' : ''}`;
  } catch {
    return 'unknown';
  }
}
