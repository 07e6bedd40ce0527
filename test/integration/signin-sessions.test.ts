/**
 * Browser sessions, DESIGN.md §7: sign-out, refresh (on the sidecar's own clock, shifted), maxAgeSeconds, a
 * bearer token over a session, forwardToken, the cookie (attributes, encryption, chunks, key rotation,
 * tampering, CSRF), `/readyz` waiting for provider discovery, and who is redirected to sign in. Real servers on
 * loopback: a real oidc-provider, the real sidecar (proxy door), a recording upstream, a scripted browser.
 *
 * The env here is built from the support pieces directly (startSignInProvider, startTestSidecar) rather than
 * startSignInEnv, because these tests need the sidecar's clock (`now`) and restarts of the sidecar alone (same
 * port, same provider) with other cookie secrets.
 */
import { randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { request } from 'undici';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { createCookieCodec } from '../../src/signin/cookie-codec.js';
import { rawSocketExchange } from '../support/raw-http.js';
import { confirmLogoutAtProvider, ScriptedBrowser, signInAtProvider, type BrowserPage } from '../support/scripted-browser.js';
import { startTestSidecar, waitReady, type TestSidecar } from '../support/sidecar.js';
import { COOKIE, USERS } from '../support/signin-env.js';
import { startSignInProvider, type SignInProvider, type SignInProviderOptions } from '../support/signin-provider.js';
import { freePort, startRecordingUpstream, type RecordingUpstream } from '../support/upstream.js';

const PREFIX = '/.authz';
const CLIENT_ID = 'orders-web';
const EMAIL = 'alice@example.test';

/* ---- the environment ---------------------------------------------------------------------------------- */

interface Env {
  readonly op: SignInProvider;
  readonly upstream: RecordingUpstream;
  readonly port: number;
  readonly origin: string;
  readonly dir: string;
  /** Cookie secret files in use, first seals. */
  secretFiles: string[];
  sidecar: TestSidecar;
  /** Seconds added to the sidecar's clock (sessions, cookies and refresh decisions use it). */
  clockOffset: number;
  browser(): ScriptedBrowser;
  /** Opens `path`, signs in at the provider as `login`, returns the page it ends on (its hops: the last navigation's). */
  signIn(browser: ScriptedBrowser, path: string, login?: string): Promise<BrowserPage>;
  /** A new cookie secret file (48 random bytes, base64). */
  newSecret(): Promise<string>;
  /** Stops the sidecar and starts it again on the same port with `secretFiles` (same provider, same upstream). */
  restart(secretFiles: string[]): Promise<void>;
  close(): Promise<void>;
}

interface EnvOptions {
  readonly provider?: Omit<SignInProviderOptions, 'clients'>;
  /** Merged over the `signIn` section. */
  readonly signIn?: Record<string, unknown>;
  /** Merged over the whole config; a function of the provider (its issuer and JWKS URL). */
  readonly config?: (op: SignInProvider) => Record<string, unknown>;
}

async function startEnv(options: EnvOptions = {}): Promise<Env> {
  const port = await freePort();
  const origin = `http://127.0.0.1:${port}`;
  const dir = await mkdtemp(join(tmpdir(), 'authz-signin-sessions-'));
  const clientSecret = `secret-${randomBytes(8).toString('hex')}`;
  const op = await startSignInProvider({
    users: USERS,
    ...options.provider,
    clients: [
      {
        clientId: CLIENT_ID,
        clientSecret,
        redirectUris: [`${origin}${PREFIX}/callback`],
        postLogoutRedirectUris: [`${origin}/`, `${origin}/bye`],
        backchannelLogoutUri: `${origin}${PREFIX}/backchannel-logout`,
      },
    ],
  });
  const upstream = await startRecordingUpstream();
  const clientSecretFile = join(dir, 'client-secret');
  await writeFile(clientSecretFile, `${clientSecret}\n`);
  const browsers: ScriptedBrowser[] = [];
  let count = 0;
  const newSecret = async (): Promise<string> => {
    const file = join(dir, `cookie-secret-${count++}`);
    await writeFile(file, randomBytes(48).toString('base64'));
    return file;
  };
  const env: Env = {
    op,
    upstream,
    port,
    origin,
    dir,
    secretFiles: [await newSecret()],
    sidecar: undefined as unknown as TestSidecar,
    clockOffset: 0,
    browser() {
      const b = new ScriptedBrowser();
      browsers.push(b);
      return b;
    },
    async signIn(browser, path, login = 'alice') {
      const first = await browser.get(`${origin}${path}`);
      const { page } = await signInAtProvider(browser, first, { login });
      return page;
    },
    newSecret,
    async restart(secretFiles) {
      await env.sidecar.close();
      env.secretFiles = secretFiles;
      env.sidecar = await launch();
    },
    async close() {
      await Promise.all(browsers.map((b) => b.close()));
      await env.sidecar.close();
      await upstream.close();
      await op.close();
      await rm(dir, { recursive: true, force: true });
    },
  };
  const launch = async (): Promise<TestSidecar> => {
    const sidecar = await startTestSidecar(
      {
        listen: `127.0.0.1:${port}`,
        upstream: { url: upstream.url },
        headers: { claims: { 'x-auth-email': 'email' } },
        ...options.config?.(op),
        signIn: {
          callbackUrl: `${origin}${PREFIX}/callback`,
          providers: [{ name: 'corp', issuer: op.issuer, clientId: CLIENT_ID, clientSecretFile, scopes: ['openid', 'profile', 'email', 'roles'] }],
          cookie: { name: COOKIE, secretFiles: env.secretFiles, secure: false },
          ...options.signIn,
        },
      },
      { now: () => new Date(Date.now() + env.clockOffset * 1000) },
    );
    await waitReady(sidecar.adminUrl);
    return sidecar;
  };
  try {
    env.sidecar = await launch();
  } catch (err) {
    await upstream.close();
    await op.close();
    throw err;
  }
  return env;
}

/* ---- helpers ------------------------------------------------------------------------------------------ */

interface Answer {
  readonly status: number;
  readonly headers: Record<string, string | string[] | undefined>;
  readonly body: string;
}

/** A plain HTTP request (no redirects followed, no jar): an XHR / fetch / API client unless headers say otherwise. */
async function send(url: string, options: { method?: string; headers?: Record<string, string>; body?: string } = {}): Promise<Answer> {
  const res = await request(url, { method: (options.method ?? 'GET') as 'GET', headers: options.headers ?? {}, ...(options.body === undefined ? {} : { body: options.body }) });
  return { status: res.statusCode, headers: res.headers, body: options.method === 'HEAD' ? '' : await res.body.text() };
}

function problemOf(answer: { readonly headers: Record<string, string | string[] | undefined>; readonly body: string }): { code: string; detail: string } {
  expect(String(answer.headers['content-type'])).toMatch(/^application\/problem\+json/);
  return JSON.parse(answer.body) as { code: string; detail: string };
}

function setCookiesOf(answer: { readonly headers: Record<string, string | string[] | undefined> }): string[] {
  const v = answer.headers['set-cookie'];
  return v === undefined ? [] : Array.isArray(v) ? v : [v];
}

/** Set-Cookie lines that store the session (or chunks of it). */
function sessionStored(lines: readonly string[]): string[] {
  return lines.filter((l) => new RegExp(`^${COOKIE}(\\.\\d)?=[^;]+;`).test(l) && !/;\s*Max-Age=0(\s*;|$)/i.test(l));
}

/** Set-Cookie lines that clear the session (or chunks of it). */
function sessionCleared(lines: readonly string[]): string[] {
  return lines.filter((l) => new RegExp(`^${COOKIE}(\\.\\d)?=;`).test(l) && /;\s*Max-Age=0(\s*;|$)/i.test(l));
}

function attributesOf(line: string): Map<string, string> {
  const map = new Map<string, string>();
  for (const part of line.split(';').slice(1)) {
    const [k = '', v = ''] = part.trim().split('=');
    map.set(k.toLowerCase(), v);
  }
  return map;
}

function maxAgeOf(line: string): number {
  return Number(attributesOf(line).get('max-age'));
}

function jarSession(browser: ScriptedBrowser): string | undefined {
  return browser.cookies.all().find((c) => c.name === COOKIE)?.value;
}

/** The Cookie header the browser sends to the sidecar. */
function cookieHeader(env: Env, browser: ScriptedBrowser): string {
  return browser.cookies.headerFor(`${env.origin}/`);
}

/** The session cookie's sealed content, opened with `secretFile` (the env's first by default). */
async function openSession(env: Env, value: string, secretFile = env.secretFiles[0] as string): Promise<Record<string, unknown>> {
  const bytes = await readFile(secretFile);
  const payload = await createCookieCodec([{ bytes: new Uint8Array(bytes), what: 'test' }]).open(value, new Date(Date.now() + env.clockOffset * 1000));
  expect(payload, 'the cookie opens with the test secret').toBeDefined();
  return payload as Record<string, unknown>;
}

function kidOf(value: string): string {
  return (JSON.parse(Buffer.from(value.split('.')[0] ?? '', 'base64url').toString('utf8')) as { kid: string }).kid;
}

/** A fetch()/XHR to /orders with the browser's cookies: JSON wanted, CORS mode. */
function xhr(env: Env, browser: ScriptedBrowser, path = '/orders'): Promise<Answer> {
  return send(`${env.origin}${path}`, { headers: { cookie: cookieHeader(env, browser), accept: 'application/json', 'sec-fetch-mode': 'cors', 'sec-fetch-dest': 'empty', 'sec-fetch-site': 'same-origin' } });
}

/** A GET navigation over a raw socket (no client-side header size limit): status and every Set-Cookie line. */
async function rawGet(env: Env, target: string, cookie: string): Promise<{ status: number; setCookies: string[] }> {
  const lines = [`GET ${target} HTTP/1.1`, `Host: 127.0.0.1:${env.port}`, 'Accept: text/html', 'Sec-Fetch-Mode: navigate', 'Sec-Fetch-Dest: document', ...(cookie === '' ? [] : [`Cookie: ${cookie}`]), 'Connection: close', '', ''];
  const text = await rawSocketExchange('127.0.0.1', env.port, lines.join('\r\n'));
  const head = text.slice(0, text.indexOf('\r\n\r\n'));
  const [statusLine = '', ...headerLines] = head.split('\r\n');
  return {
    status: Number(statusLine.split(' ')[1]),
    setCookies: headerLines.filter((l) => /^set-cookie:/i.test(l)).map((l) => l.slice(l.indexOf(':') + 1).trim()),
  };
}

/** A navigation to `path` (not following the answer's redirect) and what the app saw, if it was reached. */
async function navigate(env: Env, browser: ScriptedBrowser, path = '/orders'): Promise<{ page: BrowserPage; subject: string | undefined }> {
  const before = env.upstream.requests.length;
  const page = await browser.get(`${env.origin}${path}`, { followRedirects: false });
  const seen = env.upstream.requests.length > before ? env.upstream.requests.at(-1) : undefined;
  return { page, subject: seen?.headers['x-auth-subject'] as string | undefined };
}

/** The redirect to sign in may be relative or absolute (on the callback's origin): compared resolved against the request. */
function resolvedLocation(location: string | string[] | undefined, requestUrl: string): string | undefined {
  return typeof location === 'string' ? new URL(location, requestUrl).href : undefined;
}

/** The navigation was sent to sign in (302 to start with rd = the path). */
function expectSentToSignIn(page: BrowserPage, path = '/orders'): void {
  expect(page.status).toBe(302);
  expect(resolvedLocation(page.headers.location, page.url)).toBe(`${new URL(page.url).origin}${PREFIX}/start?${new URLSearchParams({ rd: path }).toString()}`);
}

/** The Set-Cookie lines of the sidecar's callback answer among `page.hops`. */
function callbackSetCookies(env: Env, page: BrowserPage): string[] {
  const hop = page.hops.find((h) => h.url.startsWith(`${env.origin}${PREFIX}/callback`));
  expect(hop, 'the sign-in went through the callback').toBeDefined();
  return hop?.setCookies ?? [];
}

const B64URL = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';

/** Changes the top bit of the base64url character at `index` (always a data bit, even in a last character). */
function flip(value: string, index: number): string {
  const v = B64URL.indexOf(value.charAt(index));
  expect(v).toBeGreaterThanOrEqual(0);
  return `${value.slice(0, index)}${B64URL.charAt(v ^ 0x20)}${value.slice(index + 1)}`;
}

/* ---- tests -------------------------------------------------------------------------------------------- */

const MAX_AGE = 3600;
const ACCESS_TTL = 300;
const REFRESH_BEFORE = 60;

describe('sessions (access token 300 s, refresh 60 s before, maxAgeSeconds 3600)', () => {
  let env: Env;
  beforeAll(async () => {
    env = await startEnv({
      provider: {
        accessTokenTtlSeconds: ACCESS_TTL,
        users: {
          ...USERS,
          // A large session: 300 long group names (in the ID token and in the claims) need several cookie chunks.
          groupie: { sub: 'user-groupie', email: 'groupie@example.test', roles: ['reader'], groups: Array.from({ length: 300 }, (_, i) => `grp-${String(i).padStart(3, '0')}`) },
          collector: { sub: 'user-collector', roles: ['reader'], groups: Array.from({ length: 300 }, (_, i) => `group-${String(i).padStart(3, '0')}-directory-x`) },
          hoarder: { sub: 'user-hoarder', roles: ['reader'], groups: Array.from({ length: 300 }, (_, i) => `group-${String(i).padStart(3, '0')}-of-a-rather-long-directory-name`) },
        },
      },
      signIn: { session: { maxAgeSeconds: MAX_AGE, refreshBeforeSeconds: REFRESH_BEFORE } },
    });
  });
  afterEach(async () => {
    env.clockOffset = 0;
    env.op.subOverride = undefined;
    await env.op.start();
  });
  afterAll(async () => {
    await env.close();
  });

  describe('sign-out', () => {
    it('GET sign-out: 302 to the provider\'s end_session with id_token_hint and post_logout_redirect_uri, the cookie cleared; the provider accepts it', async () => {
      const browser = env.browser();
      await env.signIn(browser, '/orders');
      const session = await openSession(env, jarSession(browser) as string);
      const out = await browser.get(`${env.origin}${PREFIX}/sign-out?rd=%2Fbye`, { followRedirects: false });
      expect(out.status).toBe(302);
      const end = new URL(out.headers.location as string);
      expect(`${end.origin}${end.pathname}`).toBe(env.op.endSessionEndpoint);
      expect(end.searchParams.get('id_token_hint')).toBe(session['idt']);
      expect(end.searchParams.get('post_logout_redirect_uri')).toBe(`${env.origin}/bye`);
      const cleared = sessionCleared(setCookiesOf(out));
      expect(cleared).toHaveLength(1);
      expect(attributesOf(cleared[0] as string).get('path')).toBe('/');
      expect(jarSession(browser)).toBeUndefined();

      // At the provider: its logout confirmation (the hint and the redirect URI were accepted), then back to /bye.
      const confirm = await browser.get(out.headers.location as string, { from: out.url });
      expect(confirm.status).toBe(200);
      const done = await confirmLogoutAtProvider(browser, confirm);
      expect(done.hops.some((h) => h.url === `${env.origin}/bye`)).toBe(true);
      // No session left: userinfo says so.
      const info = await send(`${env.origin}${PREFIX}/userinfo`, { headers: { cookie: cookieHeader(env, browser), accept: 'application/json' } });
      expect(info.status).toBe(401);
      expect(problemOf(info).code).toBe('CREDENTIALS_MISSING');
    });

    it('refuses a copy of the cookie saved before sign-out: navigation sent to start, fetch 401', async () => {
      const browser = env.browser();
      await env.signIn(browser, '/orders');
      const saved = jarSession(browser) as string;
      expect((await navigate(env, browser)).subject).toBe('user-alice');
      const out = await browser.get(`${env.origin}${PREFIX}/sign-out`, { followRedirects: false });
      expect(out.status).toBe(302);
      expect(new URL(out.headers.location as string).searchParams.get('post_logout_redirect_uri')).toBe(`${env.origin}/`);

      const replay = env.browser();
      replay.cookies.store(`${COOKIE}=${saved}; Path=/`, env.origin);
      const { page, subject } = await navigate(env, replay);
      expectSentToSignIn(page);
      expect(subject).toBeUndefined();
      expect(sessionCleared(setCookiesOf(page))).toHaveLength(1);
      const api = await send(`${env.origin}/orders`, { headers: { cookie: `${COOKIE}=${saved}`, accept: 'application/json' } });
      expect(api.status).toBe(401);
      expect(String(api.headers['www-authenticate'])).toMatch(/^Bearer /);
      expect(sessionCleared(setCookiesOf(api))).toHaveLength(1);
    });

    it('refuses a cross-site POST sign-out with 403 CSRF_REJECTED and keeps the session; a same-origin POST signs out', async () => {
      const browser = env.browser();
      await env.signIn(browser, '/orders');
      const url = `${env.origin}${PREFIX}/sign-out`;
      for (const headers of [
        { origin: 'https://evil.example', 'sec-fetch-site': 'cross-site' },
        { origin: 'https://evil.example', 'sec-fetch-site': null },
        { origin: 'http://127.0.0.1:1', 'sec-fetch-site': 'same-site' },
        { origin: 'null', 'sec-fetch-site': 'cross-site' },
        { origin: null, 'sec-fetch-site': null },
      ]) {
        const res = await browser.post(url, {}, { headers, followRedirects: false });
        expect(res.status, JSON.stringify(headers)).toBe(403);
        expect(problemOf(res).code).toBe('CSRF_REJECTED');
        expect(res.headers.location).toBeUndefined();
        expect(setCookiesOf(res)).toEqual([]);
      }
      expect((await navigate(env, browser)).subject).toBe('user-alice');
      // The browser's own form on this origin.
      const ok = await browser.post(url, {}, { from: `${env.origin}/orders`, followRedirects: false });
      expect(ok.status).toBe(302);
      expect((ok.headers.location as string).startsWith(env.op.endSessionEndpoint)).toBe(true);
      expect(sessionCleared(setCookiesOf(ok))).toHaveLength(1);
      expect(jarSession(browser)).toBeUndefined();
    });

    it('refuses an unsafe request to the app that uses the session cross-site (403 CSRF_REJECTED), the app never reached', async () => {
      const browser = env.browser();
      await env.signIn(browser, '/orders');
      const before = env.upstream.requests.length;
      const evil = await browser.post(`${env.origin}/orders`, { item: 'x' }, { headers: { origin: 'https://evil.example', 'sec-fetch-site': 'cross-site' }, followRedirects: false });
      expect(evil.status).toBe(403);
      expect(problemOf(evil).code).toBe('CSRF_REJECTED');
      expect(env.upstream.requests.length).toBe(before);
      const own = await browser.post(`${env.origin}/orders`, { item: 'x' }, { from: `${env.origin}/orders`, followRedirects: false });
      expect(own.status).toBe(200);
      expect(env.upstream.requests.at(-1)?.headers['x-auth-subject']).toBe('user-alice');
    });
  });

  describe('refresh', () => {
    const due = ACCESS_TTL - REFRESH_BEFORE + 10; // the access token is still valid, the refresh is due

    it('refreshes a session once due: a new cookie on the answer (Max-Age what is left of maxAgeSeconds), the app still sees the user', async () => {
      const browser = env.browser();
      await env.signIn(browser, '/orders');
      const old = jarSession(browser) as string;
      const before = await openSession(env, old);
      const tokens = env.op.requests('/token');
      env.clockOffset = due;
      const { page, subject } = await navigate(env, browser);
      expect(page.status).toBe(200);
      expect(subject).toBe('user-alice');
      expect(env.upstream.requests.at(-1)?.headers['x-auth-email']).toBe(EMAIL);
      expect(env.op.requests('/token')).toBe(tokens + 1);
      const stored = sessionStored(setCookiesOf(page));
      expect(stored).toHaveLength(1);
      expect(Math.abs(maxAgeOf(stored[0] as string) - (MAX_AGE - due))).toBeLessThanOrEqual(2);
      const fresh = jarSession(browser) as string;
      expect(fresh).not.toBe(old);
      const after = await openSession(env, fresh);
      expect(after['id']).toBe(before['id']);
      expect(after['at']).not.toBe(before['at']);
      expect(after['ate'] as number).toBeGreaterThan(before['ate'] as number);
      // The new cookie is not due: no further refresh.
      const next = await navigate(env, browser);
      expect(next.page.status).toBe(200);
      expect(setCookiesOf(next.page)).toEqual([]);
      expect(env.op.requests('/token')).toBe(tokens + 1);
    });

    it('refreshes once for concurrent requests that bring the same old cookie; all succeed', async () => {
      const browser = env.browser();
      await env.signIn(browser, '/orders');
      const cookie = cookieHeader(env, browser);
      const tokens = env.op.requests('/token');
      env.clockOffset = due;
      const answers = await Promise.all(Array.from({ length: 6 }, () => send(`${env.origin}/orders`, { headers: { cookie, accept: 'application/json' } })));
      for (const a of answers) {
        expect(a.status).toBe(200);
        expect(sessionStored(setCookiesOf(a))).toHaveLength(1);
      }
      expect(env.op.requests('/token')).toBe(tokens + 1);
      // One more with the old cookie a moment later: the same refresh's outcome, no new grant.
      const late = await send(`${env.origin}/orders`, { headers: { cookie, accept: 'application/json' } });
      expect(late.status).toBe(200);
      expect(env.op.requests('/token')).toBe(tokens + 1);
    });

    it('ends the session when the provider refuses the refresh (invalid_grant): cleared, sent to sign in, and the old cookie stays refused', async () => {
      const browser = env.browser();
      await env.signIn(browser, '/orders');
      const cookie = cookieHeader(env, browser);
      expect(await env.op.revokeAll()).toBeGreaterThan(0);
      env.clockOffset = due;
      const tokens = env.op.requests('/token');
      const { page, subject } = await navigate(env, browser);
      expectSentToSignIn(page);
      expect(subject).toBeUndefined();
      expect(sessionCleared(setCookiesOf(page))).toHaveLength(1);
      expect(env.op.requests('/token')).toBe(tokens + 1);
      const again = await send(`${env.origin}/orders`, { headers: { cookie, accept: 'application/json' } });
      expect(again.status).toBe(401);
      expect(env.op.requests('/token')).toBe(tokens + 1);
    });

    it('ends the session when the refreshed ID token names another sub', async () => {
      const browser = env.browser();
      await env.signIn(browser, '/orders');
      env.op.subOverride = 'user-mallory';
      env.clockOffset = due;
      const tokens = env.op.requests('/token');
      const { page, subject } = await navigate(env, browser);
      expect(env.op.requests('/token')).toBe(tokens + 1);
      expectSentToSignIn(page);
      expect(subject).toBeUndefined();
      expect(sessionCleared(setCookiesOf(page))).toHaveLength(1);
      expect(sessionStored(setCookiesOf(page))).toEqual([]);
    });

    it('keeps the session while the provider is down and the access token still valid', async () => {
      const browser = env.browser();
      await env.signIn(browser, '/orders');
      await env.op.stop();
      env.clockOffset = due;
      const { page, subject } = await navigate(env, browser);
      expect(page.status).toBe(200);
      expect(subject).toBe('user-alice');
      expect(setCookiesOf(page)).toEqual([]);
    });

    it('answers 503 SESSION_UNAVAILABLE when the provider is down and the access token expired; the refresh goes through once it is back', async () => {
      const browser = env.browser();
      await env.signIn(browser, '/orders');
      await env.op.stop();
      env.clockOffset = ACCESS_TTL + 5;
      const before = env.upstream.requests.length;
      const { page } = await navigate(env, browser);
      expect(page.status).toBe(503);
      expect(problemOf(page).code).toBe('SESSION_UNAVAILABLE');
      expect(page.headers.location).toBeUndefined();
      expect(sessionCleared(setCookiesOf(page))).toEqual([]);
      const api = await xhr(env, browser);
      expect(api.status).toBe(503);
      expect(env.upstream.requests.length).toBe(before);

      await env.op.start();
      const back = await navigate(env, browser);
      expect(back.page.status).toBe(200);
      expect(back.subject).toBe('user-alice');
      expect(sessionStored(setCookiesOf(back.page))).toHaveLength(1);
    });

    it('counts refreshes in the metrics', async () => {
      const res = await send(`${env.sidecar.adminUrl}/metrics`);
      const value = (result: string): number => Number(new RegExp(`^authz_sidecar_session_refresh_total\\{provider="corp",result="${result}"\\} (\\d+)$`, 'm').exec(res.body)?.[1] ?? 'NaN');
      // success: the first test, the concurrent one, the provider back; ended: invalid_grant, another sub.
      expect(value('success')).toBe(3);
      expect(value('ended')).toBe(2);
      expect(value('failure')).toBeGreaterThanOrEqual(2);
    });
  });

  describe('maxAgeSeconds', () => {
    it('sets Max-Age to maxAgeSeconds, keeps the absolute end across refreshes, and refuses the session past it though the browser still sends it', async () => {
      const browser = env.browser();
      const landed = await env.signIn(browser, '/orders');
      const stored = sessionStored(callbackSetCookies(env, landed));
      expect(stored).toHaveLength(1);
      expect(Math.abs(maxAgeOf(stored[0] as string) - MAX_AGE)).toBeLessThanOrEqual(1);

      // Just before the end (the access token long expired): refreshed, and the new cookie has a second or so left.
      env.clockOffset = MAX_AGE - 3;
      const late = await navigate(env, browser);
      expect(late.page.status).toBe(200);
      expect(late.subject).toBe('user-alice');
      const refreshed = sessionStored(setCookiesOf(late.page));
      expect(refreshed).toHaveLength(1);
      expect(maxAgeOf(refreshed[0] as string)).toBeLessThanOrEqual(3);

      // Past the end: no session (the scripted browser still has the cookie: it runs on the real clock).
      env.clockOffset = MAX_AGE + 1;
      expect(jarSession(browser)).toBeDefined();
      const over = await navigate(env, browser);
      expectSentToSignIn(over.page);
      expect(over.subject).toBeUndefined();
      expect(sessionCleared(setCookiesOf(over.page))).toHaveLength(1);
    });
  });

  describe('state cookies expire', () => {
    it('refuses a pending sign-in older than 10 minutes on the sidecar\'s clock, though the browser still sends its cookie', async () => {
      const stopBefore = `${env.origin}${PREFIX}/callback`;
      const toCallback = async (browser: ScriptedBrowser): Promise<string> => {
        const first = await browser.get(`${env.origin}/orders`, { stopBefore });
        const { page } = await signInAtProvider(browser, first, { login: 'alice', navigation: { stopBefore } });
        return (page.redirectNotFollowed as { url: string }).url;
      };
      const fresh = env.browser();
      const inTime = await toCallback(fresh);
      env.clockOffset = 590;
      const ok = await fresh.get(inTime, { followRedirects: false });
      expect(ok.status).toBe(302);
      expect(sessionStored(setCookiesOf(ok))).toHaveLength(1);

      env.clockOffset = 0;
      const slow = env.browser();
      const late = await toCallback(slow);
      env.clockOffset = 601;
      expect(slow.cookies.all().some((c) => c.name.startsWith(`${COOKIE}-s-`))).toBe(true);
      const tokens = env.op.requests('/token');
      const refused = await slow.get(late, { followRedirects: false });
      expect(refused.status).toBe(400);
      expect(problemOf(refused).code).toBe('SIGNIN_FAILED');
      expect(sessionStored(setCookiesOf(refused))).toEqual([]);
      expect(env.op.requests('/token')).toBe(tokens);
    });
  });

  describe('a bearer token is decided alone', () => {
    it('answers a request with a valid session and a bad bearer token 401 (TOKEN_ISSUER: no jwt issuers here), even a navigation', async () => {
      const browser = env.browser();
      await env.signIn(browser, '/orders');
      const before = env.upstream.requests.length;
      for (const token of ['garbage', await env.op.signLogoutToken({ iss: env.op.issuer, sub: 'user-alice', aud: CLIENT_ID, exp: Math.floor(Date.now() / 1000) + 60 }, { typ: null })]) {
        const page = await browser.get(`${env.origin}/orders`, { headers: { authorization: `Bearer ${token}` }, followRedirects: false });
        expect(page.status).toBe(401);
        expect(problemOf(page).code).toBe('TOKEN_ISSUER');
        expect(String(page.headers['www-authenticate'])).toMatch(/^Bearer .*error="invalid_token"/);
        const api = await send(`${env.origin}/orders`, { headers: { cookie: cookieHeader(env, browser), authorization: `Bearer ${token}`, accept: 'application/json' } });
        expect(api.status).toBe(401);
        expect(problemOf(api).code).toBe('TOKEN_ISSUER');
      }
      expect(env.upstream.requests.length).toBe(before);
      // The session itself is fine.
      expect((await navigate(env, browser)).subject).toBe('user-alice');
      // Without forwardToken the app gets no Authorization header from the session.
      expect(env.upstream.requests.at(-1)?.headers.authorization).toBeUndefined();
    });
  });

  describe('the cookie', () => {
    it('has the attributes: HttpOnly, SameSite=Lax, Path=/, Max-Age = maxAgeSeconds, no Secure (secure: false), no Domain', async () => {
      const browser = env.browser();
      const landed = await env.signIn(browser, '/orders');
      const [line] = sessionStored(callbackSetCookies(env, landed));
      const attributes = attributesOf(line as string);
      expect(attributes.has('httponly')).toBe(true);
      expect(attributes.get('samesite')).toBe('Lax');
      expect(attributes.get('path')).toBe('/');
      expect(Math.abs(Number(attributes.get('max-age')) - MAX_AGE)).toBeLessThanOrEqual(1);
      expect(attributes.has('secure')).toBe(false);
      expect(attributes.has('domain')).toBe(false);
      expect(attributes.has('expires')).toBe(false);
    });

    it('is encrypted: a 5-part JWE (dir, A256GCM) in which neither the email nor the subject can be read', async () => {
      const browser = env.browser();
      await env.signIn(browser, '/orders');
      const value = jarSession(browser) as string;
      const parts = value.split('.');
      expect(parts).toHaveLength(5);
      const header = JSON.parse(Buffer.from(parts[0] as string, 'base64url').toString('utf8')) as Record<string, unknown>;
      expect(header['alg']).toBe('dir');
      expect(header['enc']).toBe('A256GCM');
      expect(typeof header['kid']).toBe('string');
      expect(parts[1]).toBe(''); // dir: no encrypted key
      for (const text of [value, ...parts.map((p) => Buffer.from(p, 'base64url').toString('latin1'))]) {
        expect(text).not.toContain(EMAIL);
        expect(text).not.toContain('user-alice');
        expect(text).not.toContain('Alice');
      }
      // It does open with the secret, and holds the user.
      expect((await openSession(env, value))['sub']).toBe('user-alice');
    });

    it('splits a large session into authz.0, authz.1, ...; the app sees the user and gets none of the chunks', async () => {
      const browser = env.browser();
      const landed = await env.signIn(browser, '/orders', 'groupie');
      const stored = sessionStored(callbackSetCookies(env, landed));
      const names = stored.map((l) => l.slice(0, l.indexOf('=')));
      expect(names.length).toBeGreaterThan(1);
      expect(names).toEqual(names.map((_, i) => `${COOKIE}.${i}`));
      expect(stored.every((l) => l.indexOf(';') - l.indexOf('=') - 1 <= 3800)).toBe(true);
      expect(jarSession(browser)).toBeUndefined();
      expect(landed.status).toBe(200);
      const seen = env.upstream.requests.at(-1);
      expect(seen?.headers['x-auth-subject']).toBe('user-groupie');
      expect(String(seen?.headers.cookie ?? '')).not.toMatch(new RegExp(`(^|;\\s*)${COOKIE}(\\.\\d)?=`));

      // A chunk missing: no session, every chunk cleared, sent to sign in.
      browser.cookies.delete(`${COOKIE}.1`);
      const { page, subject } = await navigate(env, browser);
      expectSentToSignIn(page);
      expect(subject).toBeUndefined();
      expect(sessionCleared(setCookiesOf(page)).length).toBe(names.length - 1);
    });

    it('refuses at the callback a session too large for 8 chunks (400 naming it), setting no session cookie', async () => {
      const browser = env.browser();
      const landed = await env.signIn(browser, '/orders', 'hoarder');
      expect(landed.url.startsWith(`${env.origin}${PREFIX}/callback`)).toBe(true);
      expect(landed.status).toBe(400);
      const p = problemOf(landed);
      expect(p.code).toBe('SIGNIN_FAILED');
      expect(p.detail).toMatch(/cannot be stored/);
      expect(sessionStored(setCookiesOf(landed))).toEqual([]);
      expect(browser.cookies.all().filter((c) => c.name.startsWith(`${COOKIE}.`) || c.name === COOKIE)).toEqual([]);
    });

    it('never sets a session it cannot read back: a session that fits in the chunks but not in a request the sidecar accepts', async () => {
      // 300 group names of 21 characters: about 25 KB of session cookies (7 chunks, within the 8 allowed),
      // more than the 16 KiB header section the sidecar's HTTP listener accepts. The callback and the next
      // request go over raw sockets: undici (the scripted browser) refuses response headers over 16 KiB, a
      // browser takes them.
      const browser = env.browser();
      const stopBefore = `${env.origin}${PREFIX}/callback`;
      const first = await browser.get(`${env.origin}/orders`, { stopBefore });
      const { page } = await signInAtProvider(browser, first, { login: 'collector', navigation: { stopBefore } });
      const callbackUrl = new URL((page.redirectNotFollowed as { url: string }).url);
      const callback = await rawGet(env, `${callbackUrl.pathname}${callbackUrl.search}`, browser.cookies.headerFor(callbackUrl));
      const stored = sessionStored(callback.setCookies);
      if (callback.status === 400) {
        // Refused cleanly: nothing stored.
        expect(stored).toEqual([]);
        return;
      }
      expect(callback.status).toBe(302);
      expect(stored.length).toBeGreaterThan(1);
      expect(stored.length).toBeLessThanOrEqual(8);
      // Then every request carries the chunks: the session must work (a 431 here locks the browser out of the
      // site, sign-out included, for maxAgeSeconds).
      const cookies = stored.map((l) => l.slice(0, l.indexOf(';'))).join('; ');
      const before = env.upstream.requests.length;
      const next = await rawGet(env, '/orders', cookies);
      expect({ status: next.status, cookieBytes: cookies.length }).toMatchObject({ status: 200 });
      expect(env.upstream.requests.length).toBe(before + 1);
      expect(env.upstream.requests.at(-1)?.headers['x-auth-subject']).toBe('user-collector');
      const out = await rawGet(env, `${PREFIX}/sign-out`, cookies);
      expect(out.status).toBe(302);
    });

    it('refuses a tampered cookie (any part changed): no session, cleared, sent to sign in; fetch gets 401', async () => {
      const browser = env.browser();
      await env.signIn(browser, '/orders');
      const value = jarSession(browser) as string;
      const parts = value.split('.');
      const at = (part: number): number => parts.slice(0, part).join('.').length + (part === 0 ? 0 : 1) + Math.floor((parts[part] as string).length / 2);
      for (const index of [at(0), at(2), at(3), at(4), value.length - 1]) {
        const tampered = flip(value, index);
        expect(tampered).not.toBe(value);
        const b = env.browser();
        b.cookies.store(`${COOKIE}=${tampered}; Path=/`, env.origin);
        const { page, subject } = await navigate(env, b);
        expectSentToSignIn(page);
        expect(subject).toBeUndefined();
        expect(sessionCleared(setCookiesOf(page))).toHaveLength(1);
        const api = await send(`${env.origin}/orders`, { headers: { cookie: `${COOKIE}=${tampered}`, accept: 'application/json' } });
        expect(api.status).toBe(401);
        expect(problemOf(api).code).toBe('CREDENTIALS_MISSING');
      }
      expect((await navigate(env, browser)).subject).toBe('user-alice');
    });

    it('passes the app\'s own cookies through and never the sidecar\'s', async () => {
      const browser = env.browser();
      await env.signIn(browser, '/orders');
      browser.cookies.store('theme=dark; Path=/', env.origin);
      browser.cookies.store(`${COOKIE}x=app-cookie; Path=/`, env.origin);
      await navigate(env, browser);
      const cookie = String(env.upstream.requests.at(-1)?.headers.cookie ?? '');
      expect(cookie).toContain('theme=dark');
      expect(cookie).toContain(`${COOKIE}x=app-cookie`);
      expect(cookie).not.toMatch(new RegExp(`(^|;\\s*)${COOKIE}(\\.\\d)?=`));
    });
  });

  describe('who is sent to sign in (unauthenticated: auto)', () => {
    const nav = { accept: 'text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8', 'sec-fetch-mode': 'navigate', 'sec-fetch-dest': 'document', 'sec-fetch-site': 'none' };

    it('redirects browser navigations only; XHR, fetch, JSON clients and POSTs get the 401 with its Bearer challenge', async () => {
      const cases: Array<[string, { method?: string; headers: Record<string, string> }, 302 | 401]> = [
        ['a navigation', { headers: nav }, 302],
        ['a HEAD navigation', { method: 'HEAD', headers: nav }, 302],
        ['no fetch metadata, Accept */* (curl)', { headers: { accept: '*/*' } }, 302],
        ['Accept: application/json', { headers: { accept: 'application/json' } }, 401],
        ['no Accept at all', { headers: {} }, 401],
        ['X-Requested-With: XMLHttpRequest', { headers: { ...nav, 'x-requested-with': 'XMLHttpRequest' } }, 401],
        ['Sec-Fetch-Mode: cors', { headers: { ...nav, 'sec-fetch-mode': 'cors' } }, 401],
        ['Sec-Fetch-Mode: no-cors', { headers: { ...nav, 'sec-fetch-mode': 'no-cors' } }, 401],
        ['Sec-Fetch-Dest: empty', { headers: { ...nav, 'sec-fetch-dest': 'empty' } }, 401],
        ['Sec-Fetch-Dest: iframe', { headers: { ...nav, 'sec-fetch-dest': 'iframe' } }, 401],
        ['a form POST', { method: 'POST', headers: { ...nav, 'content-type': 'application/x-www-form-urlencoded' } }, 401],
        ['a DELETE', { method: 'DELETE', headers: nav }, 401],
      ];
      const failures: string[] = [];
      for (const [what, options, expected] of cases) {
        const res = await send(`${env.origin}/orders?x=1`, { ...options, ...(options.method === 'POST' ? { body: 'a=b' } : {}) });
        const ok =
          expected === 302
            ? res.status === 302 && resolvedLocation(res.headers.location, env.origin) === `${env.origin}${PREFIX}/start?rd=%2Forders%3Fx%3D1`
            : res.status === 401 && res.headers.location === undefined && /^Bearer /.test(String(res.headers['www-authenticate']));
        if (!ok) failures.push(`${what}: ${res.status} ${String(res.headers.location)}`);
      }
      expect(failures).toEqual([]);
      // What anonymous may see is not redirected at all.
      const open = await send(`${env.origin}/public/x`, { headers: nav });
      expect(open.status).toBe(200);
    });

    for (const [mode, expectations] of [
      ['redirect', { navigation: 302, json: 302, xhr: 302, post: 401 }],
      ['deny', { navigation: 401, json: 401, xhr: 401, post: 401 }],
    ] as const) {
      it(`with unauthenticated: ${mode}: navigation ${expectations.navigation}, JSON GET ${expectations.json}, XHR ${expectations.xhr}, POST ${expectations.post}`, async () => {
        const port = await freePort();
        const sidecar = await startTestSidecar({
          listen: `127.0.0.1:${port}`,
          upstream: { url: env.upstream.url },
          signIn: {
            callbackUrl: `http://127.0.0.1:${port}${PREFIX}/callback`,
            providers: [{ name: 'corp', issuer: env.op.issuer, clientId: CLIENT_ID }],
            cookie: { name: COOKIE, secretFiles: env.secretFiles, secure: false },
            unauthenticated: mode,
          },
        });
        try {
          await waitReady(sidecar.adminUrl);
          const url = `http://127.0.0.1:${port}/orders`;
          const got = {
            navigation: await send(url, { headers: nav }),
            json: await send(url, { headers: { accept: 'application/json' } }),
            xhr: await send(url, { headers: { ...nav, 'x-requested-with': 'XMLHttpRequest', 'sec-fetch-mode': 'cors' } }),
            post: await send(url, { method: 'POST', headers: nav, body: 'a=b' }),
          };
          for (const [what, res] of Object.entries(got)) {
            const expected = expectations[what as keyof typeof expectations];
            expect(res.status, what).toBe(expected);
            if (expected === 302) expect(resolvedLocation(res.headers.location, url), what).toBe(`http://127.0.0.1:${port}${PREFIX}/start?rd=%2Forders`);
            else expect(res.headers.location, what).toBeUndefined();
          }
        } finally {
          await sidecar.close();
        }
      });
    }
  });
});

describe('a back-channel logout by sub', () => {
  // Its own env: the sub's revocation (and the shifted clock) must not reach other tests' sessions of alice.
  let env: Env;
  beforeAll(async () => {
    env = await startEnv();
  });
  afterAll(async () => {
    await env.close();
  });

  it('ends the sessions that existed, not one signed in right after it (within the same second)', async () => {
    const old = env.browser();
    await env.signIn(old, '/orders');
    const fresh = env.browser();
    const stopBefore = `${env.origin}${PREFIX}/callback`;
    const first = await fresh.get(`${env.origin}/orders`, { stopBefore });
    const { page } = await signInAtProvider(fresh, first, { login: 'alice', navigation: { stopBefore } });
    const callback = (page.redirectNotFollowed as { url: string }).url;
    const token = await env.op.signLogoutToken(env.op.logoutTokenClaims({ clientId: CLIENT_ID, sub: 'user-alice' }));

    // The sidecar's clock put just past the start of one of its seconds: the logout and the sign-in after it
    // fall in that same second (the test would only pass by accident, never fail by one, on a slow machine).
    env.clockOffset = ((1_020 - (Date.now() % 1_000)) % 1_000) / 1_000;
    const logout = await send(`${env.origin}${PREFIX}/backchannel-logout`, { method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: new URLSearchParams({ logout_token: token }).toString() });
    expect(logout.status).toBe(200);
    expectSentToSignIn((await navigate(env, old)).page);
    const signedIn = await fresh.get(callback, { followRedirects: false });
    expect(signedIn.status).toBe(302);
    const after = await navigate(env, fresh);
    expect(after.page.status).toBe(200);
    expect(after.subject).toBe('user-alice');
  });
});

describe('forwardToken, and a valid bearer token over a session', () => {
  let env: Env;
  beforeAll(async () => {
    env = await startEnv({
      config: (op) => ({
        headers: { forwardToken: true, claims: { 'x-auth-email': 'email' } },
        authn: { jwt: [{ issuer: op.issuer, audiences: ['orders-api'], jwksUri: op.jwksUri }] },
      }),
    });
  });
  afterAll(async () => {
    await env.close();
  });

  it('forwards the session\'s access token (not the ID token) as Authorization: Bearer', async () => {
    const browser = env.browser();
    await env.signIn(browser, '/orders/4');
    const session = await openSession(env, jarSession(browser) as string);
    const { page, subject } = await navigate(env, browser, '/orders/4');
    expect(page.status).toBe(200);
    expect(subject).toBe('user-alice');
    const authorization = env.upstream.requests.at(-1)?.headers.authorization;
    expect(typeof session['at']).toBe('string');
    expect(authorization).toBe(`Bearer ${session['at'] as string}`);
    expect(authorization).not.toBe(`Bearer ${session['idt'] as string}`);
    expect(String(env.upstream.requests.at(-1)?.headers.cookie ?? '')).not.toMatch(new RegExp(`(^|;\\s*)${COOKIE}(\\.\\d)?=`));
  });

  it('decides on a valid bearer token of another user alone, ignoring the session (and its CSRF check)', async () => {
    const browser = env.browser();
    await env.signIn(browser, '/orders');
    const now = Math.floor(Date.now() / 1000);
    const token = await env.op.signLogoutToken({ iss: env.op.issuer, sub: 'user-rita', aud: 'orders-api', iat: now, exp: now + 120, roles: ['reader'] }, { typ: null });
    const read = await browser.get(`${env.origin}/orders/7`, { headers: { authorization: `Bearer ${token}` }, followRedirects: false });
    expect(read.status).toBe(200);
    expect(env.upstream.requests.at(-1)?.headers['x-auth-subject']).toBe('user-rita');
    // alice (admin) could delete; rita's token cannot, whatever the cookie says.
    const del = await send(`${env.origin}/orders/7`, { method: 'DELETE', headers: { cookie: cookieHeader(env, browser), authorization: `Bearer ${token}`, origin: env.origin } });
    expect(del.status).toBe(403);
    expect(problemOf(del).code).toBe('POLICY_DENIED');
    const mine = await send(`${env.origin}/orders/7`, { method: 'DELETE', headers: { cookie: cookieHeader(env, browser), origin: env.origin, 'sec-fetch-site': 'same-origin' } });
    expect(mine.status).toBe(200);
    expect(env.upstream.requests.at(-1)?.headers['x-auth-subject']).toBe('user-alice');
  });
});

describe('cookie secret rotation', () => {
  let env: Env;
  beforeAll(async () => {
    env = await startEnv();
  });
  afterAll(async () => {
    await env.close();
  });

  it('opens cookies sealed with an old secret kept second, seals new ones with the new first secret, and refuses them once the old secret is gone', async () => {
    const oldSecret = env.secretFiles[0] as string;
    const before = env.browser();
    await env.signIn(before, '/orders');
    const oldCookie = jarSession(before) as string;
    const oldKid = kidOf(oldCookie);

    const newSecret = await env.newSecret();
    await env.restart([newSecret, oldSecret]);
    const still = await navigate(env, before);
    expect(still.page.status).toBe(200);
    expect(still.subject).toBe('user-alice');
    expect(jarSession(before)).toBe(oldCookie);

    const after = env.browser();
    await env.signIn(after, '/orders');
    const newCookie = jarSession(after) as string;
    expect(kidOf(newCookie)).not.toBe(oldKid);
    expect((await openSession(env, newCookie, newSecret))['sub']).toBe('user-alice');

    // The old secret retired: its cookies are no session; the new ones go on.
    await env.restart([newSecret]);
    const gone = await navigate(env, before);
    expectSentToSignIn(gone.page);
    expect(sessionCleared(setCookiesOf(gone.page))).toHaveLength(1);
    const fine = await navigate(env, after);
    expect(fine.page.status).toBe(200);
    expect(fine.subject).toBe('user-alice');
  });
});

describe('/readyz waits for provider discovery', () => {
  it('is 503 naming the provider while its issuer is down, and ready within a few seconds once it is up', async () => {
    const port = await freePort();
    const op = await startSignInProvider({ users: USERS, clients: [{ clientId: CLIENT_ID, redirectUris: [`http://127.0.0.1:${port}${PREFIX}/callback`] }] });
    await op.stop();
    const dir = await mkdtemp(join(tmpdir(), 'authz-signin-ready-'));
    const secret = join(dir, 'cookie-secret');
    await writeFile(secret, randomBytes(48).toString('base64'));
    const upstream = await startRecordingUpstream();
    let sidecar: TestSidecar | undefined;
    try {
      sidecar = await startTestSidecar({
        listen: `127.0.0.1:${port}`,
        upstream: { url: upstream.url },
        signIn: {
          callbackUrl: `http://127.0.0.1:${port}${PREFIX}/callback`,
          providers: [{ name: 'corp', issuer: op.issuer, clientId: CLIENT_ID }],
          cookie: { name: COOKIE, secretFiles: [secret], secure: false },
        },
      });
      const notReady = await send(`${sidecar.adminUrl}/readyz`);
      expect(notReady.status).toBe(503);
      const body = JSON.parse(notReady.body) as { missing: string[] };
      expect(body.missing).toContain(`discovery of sign-in provider corp (${op.issuer})`);
      // Meanwhile a sign-in cannot start.
      const start = await send(`http://127.0.0.1:${port}${PREFIX}/start?rd=%2F`);
      expect(start.status).toBe(503);
      expect(problemOf(start).code).toBe('SIGNIN_UNAVAILABLE');
      expect(start.headers.location).toBeUndefined();

      await op.start();
      const t0 = Date.now();
      await waitReady(sidecar.adminUrl, 6_000);
      expect(Date.now() - t0).toBeLessThan(6_000);
      const started = await send(`http://127.0.0.1:${port}${PREFIX}/start?rd=%2F`);
      expect(started.status).toBe(302);
      expect(String(started.headers.location).startsWith(op.authorizationEndpoint)).toBe(true);
    } finally {
      await sidecar?.close();
      await upstream.close();
      await op.close();
      await rm(dir, { recursive: true, force: true });
    }
  });
});
