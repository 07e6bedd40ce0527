/**
 * bin/entrypoint.sh, the image's ENTRYPOINT: the runtime defaults measured for the sidecar, which a
 * manifest's env overrides but never drops, then `exec node bin/authz-sidecar.js` with the arguments.
 * Run with a stand-in `node` first on PATH that prints what it was given.
 */
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { chmod, mkdir, mkdtemp, rm, rmdir, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

const ENTRYPOINT = fileURLToPath(new URL('../../bin/entrypoint.sh', import.meta.url));
const run = promisify(execFile);
let dir = '';

beforeAll(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'authz-entrypoint-'));
  // exec keeps the pid: the stand-in reports its own pid and the shell's, which must be the same process.
  await writeFile(path.join(dir, 'node'), '#!/bin/sh\nprintf "%s\\n%s\\n%s\\n%s\\n" "$NODE_OPTIONS" "$MALLOC_ARENA_MAX" "$*" "$$"\n');
  await chmod(path.join(dir, 'node'), 0o755);
});
afterAll(async () => {
  if (dir !== '') await rm(dir, { recursive: true, force: true });
});

async function start(env: Record<string, string>, ...args: string[]): Promise<{ nodeOptions: string; arenas: string; argv: string }> {
  return startIn(undefined, env, ...args);
}

/** Runs the entrypoint, inside the memory cgroup `cgroup` (a v1 folder) when given, as a container's process is. */
async function startIn(cgroup: string | undefined, env: Record<string, string>, ...args: string[]): Promise<{ nodeOptions: string; arenas: string; argv: string }> {
  const base = Object.fromEntries(Object.entries(process.env).filter(([k]) => k !== 'NODE_OPTIONS' && k !== 'MALLOC_ARENA_MAX')) as Record<string, string>;
  const command = cgroup === undefined ? ['sh', ENTRYPOINT, ...args] : ['sh', '-c', `echo $$ > ${cgroup}/cgroup.procs && exec sh "$@"`, 'pod', ENTRYPOINT, ...args];
  const { stdout } = await run(command[0] as string, command.slice(1), { env: { ...base, ...env, PATH: `${dir}:${process.env.PATH ?? ''}` } });
  const [nodeOptions = '', arenas = '', argv = ''] = stdout.split('\n');
  return { nodeOptions: nodeOptions.trim(), arenas, argv };
}

/** This process's memory cgroup (v1), under which a test cgroup is made. */
function memoryCgroup(): string {
  const line = readFileSync('/proc/self/cgroup', 'utf8').split('\n').find((l) => /^\d+:memory:/.test(l));
  if (line === undefined) throw new Error('no cgroup v1 memory controller on this machine (bench/pods.mjs needs one too)');
  return path.join('/sys/fs/cgroup/memory', line.split(':')[2] ?? '');
}

describe('bin/entrypoint.sh', () => {
  it('sets the measured defaults and runs the CLI with the arguments', async () => {
    const got = await start({}, 'serve', '--config', '/etc/authz-sidecar/authz-sidecar.yaml');
    expect(got.nodeOptions).toMatch(/^--max-semi-space-size=\d+$/);
    expect(got.arenas).toBe('2');
    expect(got.argv).toBe(`${path.join(path.dirname(ENTRYPOINT), 'authz-sidecar.js')} serve --config /etc/authz-sidecar/authz-sidecar.yaml`);
  });

  it("lets a manifest's env win: MALLOC_ARENA_MAX replaced, NODE_OPTIONS placed after the defaults (the last V8 flag wins)", async () => {
    const got = await start({ MALLOC_ARENA_MAX: '4', NODE_OPTIONS: '--max-semi-space-size=8 --enable-source-maps' }, '--version');
    expect(got.arenas).toBe('4');
    const flags = got.nodeOptions.split(/\s+/);
    expect(flags.at(-2)).toBe('--max-semi-space-size=8');
    expect(flags.at(-1)).toBe('--enable-source-maps');
    expect(flags[0]).toMatch(/^--max-semi-space-size=\d+$/);
  });

  it("caps V8's old space at half the container's memory limit, which Node alone sizes above it", async () => {
    const cgroup = path.join(memoryCgroup(), `authz-entrypoint-${process.pid}`);
    await mkdir(cgroup);
    try {
      await writeFile(path.join(cgroup, 'memory.limit_in_bytes'), String(176 * 2 ** 20));
      const got = await startIn(cgroup, {}, 'serve');
      expect(got.nodeOptions.split(/\s+/)).toContain('--max-old-space-size=88');
      // A manifest's own cap comes after, and wins.
      const own = await startIn(cgroup, { NODE_OPTIONS: '--max-old-space-size=100' }, 'serve');
      expect(own.nodeOptions.split(/\s+/).at(-1)).toBe('--max-old-space-size=100');
    } finally {
      await rmdir(cgroup);
    }
    // As a runtime without a cgroup namespace shows it: the container's cgroup mounted as the root of
    // /sys/fs/cgroup/memory, while /proc/self/cgroup still names the host's path (which then does not exist).
    const mounted = path.join(memoryCgroup(), `authz-entrypoint-mnt-${process.pid}`);
    await mkdir(mounted);
    try {
      await writeFile(path.join(mounted, 'memory.limit_in_bytes'), String(176 * 2 ** 20));
      const base = Object.fromEntries(Object.entries(process.env).filter(([k]) => k !== 'NODE_OPTIONS' && k !== 'MALLOC_ARENA_MAX')) as Record<string, string>;
      const script = `echo $$ > ${mounted}/cgroup.procs && mount --bind ${mounted} /sys/fs/cgroup/memory && exec sh "$@"`;
      const { stdout } = await run('unshare', ['--mount', 'sh', '-c', script, 'pod', ENTRYPOINT, 'serve'], { env: { ...base, PATH: `${dir}:${process.env.PATH ?? ''}` } });
      expect((stdout.split('\n')[0] ?? '').split(/\s+/)).toContain('--max-old-space-size=88');
    } finally {
      await rmdir(mounted);
    }
    // Outside a limited cgroup (this test process's own has none below the machine's memory): no cap.
    expect((await start({}, 'serve')).nodeOptions).not.toContain('--max-old-space-size');
  });
});
