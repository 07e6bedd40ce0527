/**
 * A real nginx (Debian nginx-light, /usr/sbin/nginx) on loopback for the sign-in tests: the shipped
 * deploy/nginx/nginx.conf rendered with this test's ports (and cookie name), run in the foreground without a
 * master process, everything under a temp prefix. test/integration/check-doors.test.ts starts its own nginx
 * the same way (its copy is kept as it is).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export const NGINX_BINARY = ['/usr/sbin/nginx', '/usr/bin/nginx'].find((p) => existsSync(p));
export const SHIPPED_NGINX_CONF = join(import.meta.dirname, '../../deploy/nginx/nginx.conf');

/** The placeholders of the shipped example, as written there. */
const SHIPPED = { listen: 'listen 8080;', app: 'http://127.0.0.1:3000', forwardAuth: 'http://127.0.0.1:9193', cookie: '__Host-authz' } as const;

export interface NginxRendering {
  /** the loopback port nginx listens on */
  readonly port: number;
  /** the app's URL, http://127.0.0.1:PORT */
  readonly upstream: string;
  /** the sidecar's forward-auth listener, host:port */
  readonly forwardAuth: string;
  /** signIn.cookie.name of the sidecar (the example names `__Host-authz`) */
  readonly cookieName?: string;
}

/**
 * deploy/nginx/nginx.conf with the example's ports and cookie name replaced, every occurrence. Throws when a
 * placeholder is missing from the file (the example changed: the tests would run something else).
 */
export async function renderShippedNginxConf(r: NginxRendering): Promise<string> {
  const shipped = await readFile(SHIPPED_NGINX_CONF, 'utf8');
  for (const [what, text] of Object.entries(SHIPPED)) {
    if (!shipped.includes(text)) throw new Error(`deploy/nginx/nginx.conf no longer contains ${JSON.stringify(text)} (${what}); update test/support/nginx.ts`);
  }
  return shipped
    .replaceAll(SHIPPED.listen, `listen 127.0.0.1:${r.port};`)
    .replaceAll(SHIPPED.app, r.upstream)
    .replaceAll(SHIPPED.forwardAuth, `http://${r.forwardAuth}`)
    .replaceAll(SHIPPED.cookie, r.cookieName ?? SHIPPED.cookie);
}

export interface NginxServer {
  /** http://127.0.0.1:PORT */
  readonly url: string;
  readonly port: number;
  /** the configuration nginx runs */
  readonly config: string;
  errorLog(): Promise<string>;
  stop(): Promise<void>;
}

/** Starts nginx with `config` (which must listen on 127.0.0.1:`port`) and waits until it answers. */
export async function startNginx(config: string, port: number): Promise<NginxServer> {
  if (NGINX_BINARY === undefined) {
    throw new Error('nginx is not installed (looked for /usr/sbin/nginx and /usr/bin/nginx): install it with `apt-get install nginx-light`');
  }
  const dir = await mkdtemp(join(tmpdir(), 'authz-nginx-'));
  await mkdir(join(dir, 'logs'));
  const file = join(dir, 'nginx.conf');
  await writeFile(file, config);
  const errorLog = (): Promise<string> => readFile(join(dir, 'logs/error.log'), 'utf8').catch(() => '');
  const child: ChildProcess = spawn(
    NGINX_BINARY,
    ['-p', `${dir}/`, '-c', file, '-e', join(dir, 'logs/error.log'), '-g', `daemon off; master_process off; pid ${dir}/nginx.pid;`],
    { stdio: 'ignore' },
  );
  const url = `http://127.0.0.1:${port}`;
  const stop = async (): Promise<void> => {
    if (child.exitCode === null && child.signalCode === null) {
      const exited = new Promise((r) => child.once('exit', r));
      child.kill('SIGTERM');
      await exited;
    }
    await rm(dir, { recursive: true, force: true });
  };
  const deadline = Date.now() + 10_000;
  for (;;) {
    // Any answer will do (the check may well say 401): nginx is up.
    const up = await fetch(`${url}/`, { redirect: 'manual' }).then(
      () => true,
      () => false,
    );
    if (up) break;
    if (child.exitCode !== null || Date.now() > deadline) {
      const log = await errorLog();
      await stop();
      throw new Error(`nginx did not start: ${log}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  return { url, port, config, errorLog, stop };
}
