/**
 * A real Caddy (/usr/bin/caddy, Debian's 2.6) on loopback for the sign-in tests: the shipped
 * deploy/caddy/Caddyfile with its site address, ports and cookie name replaced, behind a global options block
 * that keeps Caddy to plain http on loopback (admin endpoint off, no automatic HTTPS, storage and HOME in a
 * temp folder), run in the foreground.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export const CADDY_BINARY = ['/usr/bin/caddy', '/usr/local/bin/caddy'].find((p) => existsSync(p));
export const SHIPPED_CADDYFILE = join(import.meta.dirname, '../../deploy/caddy/Caddyfile');

/** The placeholders of the shipped example, as written there. */
const SHIPPED = { site: 'orders.example.com {', app: '127.0.0.1:3000', forwardAuth: '127.0.0.1:9193', cookie: '__Host-authz' } as const;

export interface CaddyRendering {
  readonly port: number;
  /** the app's URL, http://127.0.0.1:PORT */
  readonly upstream: string;
  /** the sidecar's forward-auth listener, host:port */
  readonly forwardAuth: string;
  /** signIn.cookie.name of the sidecar (the example names `__Host-authz`) */
  readonly cookieName?: string;
}

/** deploy/caddy/Caddyfile with the example's site address, ports and cookie name replaced, every occurrence. */
export async function renderShippedCaddyfile(r: CaddyRendering): Promise<string> {
  const shipped = await readFile(SHIPPED_CADDYFILE, 'utf8');
  for (const [what, text] of Object.entries(SHIPPED)) {
    if (!shipped.includes(text)) throw new Error(`deploy/caddy/Caddyfile no longer contains ${JSON.stringify(text)} (${what}); update test/support/caddy.ts`);
  }
  return shipped
    .replaceAll(SHIPPED.site, `http://127.0.0.1:${r.port} {`)
    .replaceAll(SHIPPED.app, new URL(r.upstream).host)
    .replaceAll(SHIPPED.forwardAuth, r.forwardAuth)
    .replaceAll(SHIPPED.cookie, r.cookieName ?? SHIPPED.cookie);
}

export interface CaddyServer {
  /** http://127.0.0.1:PORT */
  readonly url: string;
  readonly port: number;
  /** the Caddyfile Caddy runs (global options included) */
  readonly caddyfile: string;
  /** what Caddy printed (its log) */
  output(): string;
  stop(): Promise<void>;
}

/**
 * Starts Caddy with `siteBlocks` (a Caddyfile without a global options block; its site must be
 * http://127.0.0.1:`port`) and waits until it answers.
 */
export async function startCaddy(siteBlocks: string, port: number): Promise<CaddyServer> {
  if (CADDY_BINARY === undefined) throw new Error('caddy is not installed (looked for /usr/bin/caddy): install it with `apt-get install caddy`');
  const dir = await mkdtemp(join(tmpdir(), 'authz-caddy-'));
  const caddyfile = `{
	admin off
	auto_https off
	storage file_system ${join(dir, 'data')}
	log {
		level WARN
	}
}

${siteBlocks}`;
  const file = join(dir, 'Caddyfile');
  await writeFile(file, caddyfile);
  let output = '';
  const child: ChildProcess = spawn(CADDY_BINARY, ['run', '--config', file, '--adapter', 'caddyfile'], {
    stdio: ['ignore', 'pipe', 'pipe'],
    cwd: dir,
    // Nothing written outside the temp folder (Caddy keeps its data and config under HOME / XDG_*).
    env: { PATH: process.env['PATH'] ?? '/usr/bin:/bin', HOME: dir, XDG_DATA_HOME: join(dir, 'xdg-data'), XDG_CONFIG_HOME: join(dir, 'xdg-config') },
  });
  child.stdout?.on('data', (c: Buffer) => (output += c.toString('utf8')));
  child.stderr?.on('data', (c: Buffer) => (output += c.toString('utf8')));
  const url = `http://127.0.0.1:${port}`;
  const stop = async (): Promise<void> => {
    if (child.exitCode === null && child.signalCode === null) {
      const exited = new Promise((r) => child.once('exit', r));
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 5_000);
      await exited;
      clearTimeout(timer);
    }
    await rm(dir, { recursive: true, force: true });
  };
  const deadline = Date.now() + 10_000;
  for (;;) {
    const up = await fetch(`${url}/`, { redirect: 'manual' }).then(
      () => true,
      () => false,
    );
    if (up) break;
    if (child.exitCode !== null || Date.now() > deadline) {
      await stop();
      throw new Error(`caddy did not start:\n${output}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  return { url, port, caddyfile, output: () => output, stop };
}
