/**
 * Several replicas of one workload for the shared-session tests (DESIGN.md §8): REAL sidecar processes
 * (bin/authz-sidecar.js, which runs dist/bundle: `npm run build` first), each on its own loopback port and
 * otherwise with the same config (the same cookie secret file, the same session store, the same provider and
 * client, the same upstream), in front of one recording upstream, signing in at one real oidc-provider.
 *
 * The callback URL (and so the provider's registered redirect URI, post-logout redirect URIs and back-channel
 * logout URI) is replica A's origin, as it would be the one origin of a load balancer. The scripted browser's
 * cookie jar is keyed by host, not port (like a real browser's), so a cookie set by A is sent to B too: a
 * browser whose requests a load balancer spreads over the replicas. Every replica's host is an allowed
 * redirect host, so a sign-in that starts at B comes back to B.
 */
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { request } from 'undici';
import { ScriptedBrowser, signInAtProvider, type BrowserPage } from './scripted-browser.js';
import { startServe, writeConfig, type ServeProcess } from './serve.js';
import { USERS } from './signin-env.js';
import { EXAMPLE_MODEL, EXAMPLE_POLICY } from './sidecar.js';
import { startSignInProvider, type SignInProvider, type SignInProviderOptions } from './signin-provider.js';
import { freePort, startRecordingUpstream, type RecordingUpstream } from './upstream.js';

export const PREFIX = '/.authz';
export const CLIENT_ID = 'orders-web';
export const COOKIE = 'authz';

export interface Replica {
  readonly name: string;
  readonly port: number;
  /** http://127.0.0.1:PORT of its proxy door. */
  readonly origin: string;
  readonly adminUrl: string;
  readonly process: ServeProcess;
}

export interface ReplicaSet {
  readonly op: SignInProvider;
  readonly upstream: RecordingUpstream;
  /** A (the callback's origin), B, ... */
  readonly replicas: readonly Replica[];
  readonly dir: string;
  /** The cookie secret file every replica uses. */
  readonly secretFile: string;
  browser(): ScriptedBrowser;
  /** Opens `origin + path` in `browser`, signs in at the provider as `login`, returns the page it ends on. */
  signIn(browser: ScriptedBrowser, origin: string, path: string, login?: string): Promise<BrowserPage>;
  /** Starts one more replica (its own port, the same config); `ready: false` does not wait for /readyz. */
  startReplica(name: string, options?: { ready?: boolean }): Promise<Replica>;
  close(): Promise<void>;
}

export interface ReplicaOptions {
  /** How many replicas (default 2). */
  readonly count?: number;
  /** `cookie`, or the redis store at this URL. */
  readonly store: 'cookie' | { readonly redisUrl: string; readonly keyPrefix?: string; readonly passwordFile?: string };
  readonly provider?: Omit<SignInProviderOptions, 'clients'>;
  /** A public client (PKCE alone): oidc-provider rotates its refresh tokens on every use (single use). */
  readonly publicClient?: boolean;
  /** Merged over `signIn.session` (maxAgeSeconds, refreshBeforeSeconds). */
  readonly session?: Record<string, unknown>;
  /** Merged over the whole config (headers, authn, ...); paths in it must be absolute. */
  readonly config?: Record<string, unknown>;
}

export async function startReplicas(options: ReplicaOptions): Promise<ReplicaSet> {
  const count = options.count ?? 2;
  const ports: number[] = [];
  for (let i = 0; i < count; i++) ports.push(await freePort());
  const callbackOrigin = `http://127.0.0.1:${ports[0] as number}`;
  const dir = await mkdtemp(join(tmpdir(), 'authz-replicas-'));
  const clientSecret = `secret-${randomBytes(8).toString('hex')}`;
  const secretFile = join(dir, 'cookie-secret');
  await writeFile(secretFile, randomBytes(48).toString('base64'));
  const clientSecretFile = join(dir, 'client-secret');
  await writeFile(clientSecretFile, `${clientSecret}\n`);

  const op = await startSignInProvider({
    users: USERS,
    ...options.provider,
    clients: [
      {
        clientId: CLIENT_ID,
        ...(options.publicClient === true ? {} : { clientSecret }),
        redirectUris: [`${callbackOrigin}${PREFIX}/callback`],
        postLogoutRedirectUris: [`${callbackOrigin}/`, `${callbackOrigin}/bye`],
        backchannelLogoutUri: `${callbackOrigin}${PREFIX}/backchannel-logout`,
      },
    ],
  });
  const upstream = await startRecordingUpstream();
  const browsers: ScriptedBrowser[] = [];
  const replicas: Replica[] = [];

  const configFor = (port: number): Record<string, unknown> => {
    const { signIn: signInExtra, ...extra } = (options.config ?? {}) as { signIn?: Record<string, unknown> } & Record<string, unknown>;
    return {
      listen: `127.0.0.1:${port}`,
      admin: { listen: '127.0.0.1:0' },
      upstream: { url: upstream.url },
      logging: { level: 'info', decisions: 'none' },
      headers: { claims: { 'x-auth-email': 'email' } },
      ...extra,
      authz: { model: EXAMPLE_MODEL, policy: EXAMPLE_POLICY },
      signIn: {
        callbackUrl: `${callbackOrigin}${PREFIX}/callback`,
        providers: [
          {
            name: 'corp',
            issuer: op.issuer,
            clientId: CLIENT_ID,
            ...(options.publicClient === true ? {} : { clientSecretFile }),
            scopes: ['openid', 'profile', 'email', 'roles'],
          },
        ],
        cookie: { name: COOKIE, secretFiles: [secretFile], secure: false },
        allowedRedirectHosts: ports.map((p) => `127.0.0.1:${p}`),
        session: {
          ...(options.store === 'cookie'
            ? { store: 'cookie' }
            : {
                store: 'redis',
                redis: {
                  url: options.store.redisUrl,
                  ...(options.store.keyPrefix === undefined ? {} : { keyPrefix: options.store.keyPrefix }),
                  ...(options.store.passwordFile === undefined ? {} : { passwordFile: options.store.passwordFile }),
                },
              }),
          ...options.session,
        },
        ...signInExtra,
      },
    };
  };

  const launch = async (name: string, port: number, ready = true): Promise<Replica> => {
    const file = await writeConfig(dir, `replica-${name}`, configFor(port));
    const proc = await startServe({ config: file, ready });
    const replica: Replica = { name, port, origin: `http://127.0.0.1:${port}`, adminUrl: proc.adminUrl, process: proc };
    replicas.push(replica);
    return replica;
  };

  const close = async (): Promise<void> => {
    await Promise.all(browsers.map((b) => b.close()));
    await Promise.all(replicas.map((r) => r.process.stop('SIGTERM').catch(() => undefined)));
    await upstream.close();
    await op.close();
    await rm(dir, { recursive: true, force: true });
  };

  try {
    // Started one after the other: two cores, and a failure names the replica.
    for (const [i, port] of ports.entries()) await launch(String.fromCharCode(65 + i), port);
  } catch (err) {
    await close();
    throw err;
  }

  return {
    op,
    upstream,
    replicas,
    dir,
    secretFile,
    browser() {
      const b = new ScriptedBrowser();
      browsers.push(b);
      return b;
    },
    async signIn(browser, origin, path, login = 'alice') {
      const first = await browser.get(`${origin}${path}`);
      const { page } = await signInAtProvider(browser, first, { login });
      return page;
    },
    async startReplica(name, startOptions = {}) {
      return launch(name, await freePort(), startOptions.ready ?? true);
    },
    close,
  };
}

/* ---- requests ------------------------------------------------------------------------------------------ */

export interface Answer {
  readonly status: number;
  readonly headers: Record<string, string | string[] | undefined>;
  readonly body: string;
}

/** A plain HTTP request (no redirects followed, no jar). */
export async function send(url: string, options: { method?: string; headers?: Record<string, string>; body?: string } = {}): Promise<Answer> {
  const res = await request(url, { method: (options.method ?? 'GET') as 'GET', headers: options.headers ?? {}, ...(options.body === undefined ? {} : { body: options.body }) });
  return { status: res.statusCode, headers: res.headers, body: options.method === 'HEAD' ? '' : await res.body.text() };
}

/** A fetch()/XHR with `cookie`: JSON wanted, CORS mode, same origin (never sent to sign in: 401 instead). */
export function xhr(origin: string, cookie: string, path = '/orders'): Promise<Answer> {
  return send(`${origin}${path}`, { headers: { ...(cookie === '' ? {} : { cookie }), accept: 'application/json', 'sec-fetch-mode': 'cors', 'sec-fetch-dest': 'empty', 'sec-fetch-site': 'same-origin' } });
}

/** The problem+json body of a refusal. */
export function problemOf(answer: { readonly headers: Record<string, string | string[] | undefined>; readonly body: string }): { code: string; detail: string } {
  const type = String(answer.headers['content-type']);
  if (!type.startsWith('application/problem+json')) throw new Error(`not a problem answer (${type}): ${answer.body.slice(0, 200)}`);
  return JSON.parse(answer.body) as { code: string; detail: string };
}

export function setCookiesOf(answer: { readonly headers: Record<string, string | string[] | undefined> }): string[] {
  const v = answer.headers['set-cookie'];
  return v === undefined ? [] : Array.isArray(v) ? v : [v];
}

/** Set-Cookie lines that clear the session cookie (or chunks of it). */
export function sessionCleared(lines: readonly string[]): string[] {
  return lines.filter((l) => new RegExp(`^${COOKIE}(\\.\\d)?=;`).test(l) && /;\s*Max-Age=0(\s*;|$)/i.test(l));
}

/** Set-Cookie lines that store the session cookie (or chunks of it). */
export function sessionStored(lines: readonly string[]): string[] {
  return lines.filter((l) => new RegExp(`^${COOKIE}(\\.\\d)?=[^;]+;`).test(l) && !/;\s*Max-Age=0(\s*;|$)/i.test(l));
}

/** The session cookie's value in the browser's jar. */
export function jarSession(browser: ScriptedBrowser): string | undefined {
  return browser.cookies.all().find((c) => c.name === COOKIE)?.value;
}

/** The replica's /readyz answer. */
export async function readyz(replica: Replica): Promise<{ status: number; body: { sessionStore?: { store: string; up: boolean }; missing?: string[] } }> {
  const res = await send(`${replica.adminUrl}/readyz`);
  return { status: res.status, body: JSON.parse(res.body) as { sessionStore?: { store: string; up: boolean } } };
}

/** A sample's value in the replica's /metrics (`series` is the name with its labels, exactly as printed); NaN when absent. */
export async function metric(replica: Replica, series: string): Promise<number> {
  const res = await send(`${replica.adminUrl}/metrics`);
  const line = res.body.split('\n').find((l) => l.startsWith(`${series} `));
  return line === undefined ? Number.NaN : Number(line.slice(series.length + 1));
}

/** Polls `check` every 50 ms until it is true; throws naming `what` after `timeoutMs`. */
export async function until(what: string, check: () => Promise<boolean>, timeoutMs = 8_000): Promise<number> {
  const t0 = Date.now();
  for (;;) {
    if (await check()) return Date.now() - t0;
    if (Date.now() - t0 > timeoutMs) throw new Error(`${what}: not within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** `count` concurrent XHRs to `path` with `cookie`, spread round-robin over `origins` (A, B, A, B, ...). */
export function burst(origins: readonly string[], cookie: string, count = 20, path = '/orders'): Promise<Array<Answer & { readonly origin: string }>> {
  return Promise.all(
    Array.from({ length: count }, async (_, i) => {
      const origin = origins[i % origins.length] as string;
      return { ...(await xhr(origin, cookie, path)), origin };
    }),
  );
}

/** The token endpoint requests the provider received: code grants at sign-in, refresh_token grants after. */
export function tokenRequests(op: SignInProvider): number {
  return op.requestLog.filter((r) => r.method === 'POST' && r.path === new URL(op.tokenEndpoint).pathname).length;
}
