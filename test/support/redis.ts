/**
 * A real redis-server (the Debian package, /usr/bin/redis-server) on a loopback port for the session store
 * tests: no persistence, a password when asked, stop() and start() on the same port (an outage), and a
 * client of the tests' own to read every key and value the sidecar wrote.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createClient } from '@redis/client';
import { freePort } from './upstream.js';

export const REDIS_SERVER = '/usr/bin/redis-server';

export interface TestRedis {
  readonly port: number;
  /** redis://127.0.0.1:PORT/0 */
  readonly url: string;
  /** Every key with its value (strings; sets as their sorted members joined by ","), for "nothing in clear" checks. */
  dump(): Promise<Map<string, string>>;
  /** The remaining time to live of a key in ms (-1: none, -2: no such key). */
  pttl(key: string): Promise<number>;
  stop(): Promise<void>;
  start(): Promise<void>;
  close(): Promise<void>;
}

/** Every redis-server still running when this process exits (a soak stopped with Ctrl-C) is killed with it. */
const running = new Set<ChildProcess>();
process.once('exit', () => {
  for (const child of running) child.kill('SIGKILL');
});

export async function startRedis(options: { password?: string } = {}): Promise<TestRedis> {
  const port = await freePort();
  const dir = await mkdtemp(join(tmpdir(), 'authz-redis-'));
  let child: ChildProcess | undefined;

  async function launch(): Promise<void> {
    const args = ['--bind', '127.0.0.1', '--port', String(port), '--save', '', '--appendonly', 'no', '--dir', dir, ...(options.password === undefined ? [] : ['--requirepass', options.password])];
    const proc = spawn(REDIS_SERVER, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    child = proc;
    running.add(proc);
    proc.once('exit', () => running.delete(proc));
    await new Promise<void>((resolve, reject) => {
      let out = '';
      const timer = setTimeout(() => reject(new Error(`redis-server did not start: ${out}`)), 10_000);
      proc.once('error', (err) => {
        clearTimeout(timer);
        reject(new Error(`cannot run ${REDIS_SERVER} (Debian package redis-server): ${err.message}`));
      });
      proc.stdout?.on('data', (d: Buffer) => {
        out += d.toString();
        if (out.includes('Ready to accept connections')) {
          clearTimeout(timer);
          resolve();
        }
      });
    });
  }

  async function kill(): Promise<void> {
    const proc = child;
    child = undefined;
    if (proc === undefined || proc.exitCode !== null) return;
    await new Promise<void>((resolve) => {
      proc.once('exit', () => resolve());
      proc.kill('SIGKILL');
    });
  }

  type Client = ReturnType<typeof newClient>;
  function newClient(): ReturnType<typeof createClient> {
    return createClient({ url: `redis://127.0.0.1:${port}/0`, ...(options.password === undefined ? {} : { password: options.password }) });
  }
  async function withClient<T>(fn: (c: Client) => Promise<T>): Promise<T> {
    const c = newClient();
    c.on('error', () => undefined);
    await c.connect();
    try {
      return await fn(c);
    } finally {
      await c.close();
    }
  }

  await launch();
  return {
    port,
    url: `redis://127.0.0.1:${port}/0`,
    dump: () =>
      withClient(async (c) => {
        const out = new Map<string, string>();
        for (const key of await c.keys('*')) {
          const type = await c.type(key);
          out.set(key, type === 'set' ? (await c.sMembers(key)).sort().join(',') : String(await c.get(key)));
        }
        return out;
      }),
    pttl: (key) => withClient((c) => c.pTTL(key)),
    stop: kill,
    start: launch,
    async close() {
      await kill();
      await rm(dir, { recursive: true, force: true });
    },
  };
}
