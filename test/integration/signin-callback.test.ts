/**
 * Browser sign-in, DESIGN.md §7: the start and callback routes (PKCE S256, state, nonce, RFC 9207 iss, the
 * provider's errors, a new session at every sign-in, state cookies), return URLs against the open-redirect
 * corpus, several providers, and back-channel logout. Everything runs on real servers on loopback: a real
 * oidc-provider with its login and consent pages, the real sidecar (proxy door), a recording upstream, and a
 * scripted browser with a cookie jar.
 */
import { randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createCookieCodec } from '../../src/signin/cookie-codec.js';
import { rawRequest } from '../support/raw-http.js';
import { confirmLogoutAtProvider, signInAtProvider, type ScriptedBrowser } from '../support/scripted-browser.js';
import { COOKIE, USERS, startSignInEnv, type SignInEnv } from '../support/signin-env.js';
import { startSignInProvider, type SignInProvider } from '../support/signin-provider.js';
import { freePort } from '../support/upstream.js';

const PREFIX = '/.authz';
const STATE_COOKIE = `${COOKIE}-s-`;

interface Answer {
  readonly status: number;
  readonly headers: Record<string, string | string[] | undefined>;
  readonly body: string;
}

/** A plain HTTP request (no redirects followed, no cookie jar). */
async function send(url: string, options: { method?: string; headers?: Record<string, string>; body?: string } = {}): Promise<Answer> {
  const res = await request(url, { method: (options.method ?? 'GET') as 'GET', headers: options.headers ?? {}, ...(options.body === undefined ? {} : { body: options.body }) });
  return { status: res.statusCode, headers: res.headers, body: await res.body.text() };
}

/** The problem document of a refusal (asserting its media type), with `code` and `detail`. */
function problemOf(answer: { readonly headers: Record<string, string | string[] | undefined>; readonly body: string }): { code: string; detail: string; status: number } {
  expect(String(answer.headers['content-type'])).toMatch(/^application\/problem\+json/);
  return JSON.parse(answer.body) as { code: string; detail: string; status: number };
}

function setCookiesOf(answer: { readonly headers: Record<string, string | string[] | undefined> }): string[] {
  const v = answer.headers['set-cookie'];
  return v === undefined ? [] : Array.isArray(v) ? v : [v];
}

/** Set-Cookie lines that store a session (the session cookie or a chunk of it, not a clearing). */
function sessionStored(lines: readonly string[]): string[] {
  return lines.filter((l) => new RegExp(`^${COOKIE}(\\.\\d)?=[^;]+;`).test(l) && !/;\s*Max-Age=0(\s*;|$)/i.test(l));
}

function jarSession(browser: ScriptedBrowser): string | undefined {
  return browser.cookies.all().find((c) => c.name === COOKIE)?.value;
}

function jarStateCookies(browser: ScriptedBrowser): string[] {
  return browser.cookies
    .all()
    .filter((c) => c.name.startsWith(STATE_COOKIE))
    .map((c) => c.name);
}

/**
 * Opens `path` (or a start URL) and drives the provider's login and consent pages, stopping before the
 * sidecar's callback: the callback URL the provider sent the browser to (code, state, iss).
 */
async function toCallback(origin: string, browser: ScriptedBrowser, url: string, login = 'alice'): Promise<string> {
  const stopBefore = `${origin}${PREFIX}/callback`;
  const first = await browser.get(url.startsWith('http') ? url : `${origin}${url}`, { stopBefore });
  const { page } = await signInAtProvider(browser, first, { login, navigation: { stopBefore } });
  expect(page.redirectNotFollowed?.reason).toBe('stopBefore');
  return (page.redirectNotFollowed as { url: string }).url;
}

/** The session cookie's sealed content, opened with the env's own cookie secret (to read its ids). */
async function openSession(env: SignInEnv, value: string): Promise<Record<string, unknown>> {
  const bytes = await readFile(env.secretFiles[0] as string);
  const payload = await createCookieCodec([{ bytes: new Uint8Array(bytes), what: 'test' }]).open(value);
  expect(payload).toBeDefined();
  return payload as Record<string, unknown>;
}

/** Whether `browser`'s session lets it read /orders as `sub` (the app saw it), without following a redirect. */
async function readsOrdersAs(env: SignInEnv, browser: ScriptedBrowser): Promise<{ status: number; subject: string | undefined; location: string | undefined }> {
  const before = env.upstream.requests.length;
  const page = await browser.get(`${env.origin}/orders`, { followRedirects: false });
  const seen = env.upstream.requests.length > before ? env.upstream.requests.at(-1) : undefined;
  const location = page.headers.location as string | undefined;
  // The redirect to sign in may be relative or absolute (on the callback's origin): compared resolved.
  return { status: page.status, subject: seen?.headers['x-auth-subject'] as string | undefined, location: location === undefined ? undefined : new URL(location, page.url).href };
}

/** An HTML attribute value as a browser reads it (numeric and the usual named entities). */
function decodeHtml(text: string): string {
  return text.replace(/&(?:#(\d+)|#x([0-9a-f]+)|(amp|lt|gt|quot|apos));/gi, (_m, dec?: string, hex?: string, name?: string) => {
    if (dec !== undefined) return String.fromCodePoint(Number(dec));
    if (hex !== undefined) return String.fromCodePoint(Number.parseInt(hex, 16));
    return ({ amp: '&', lt: '<', gt: '>', quot: '"', apos: "'" } as Record<string, string>)[(name ?? '').toLowerCase()] ?? '';
  });
}

function withParam(url: string, name: string, value: string): string {
  const u = new URL(url);
  u.searchParams.set(name, value);
  return u.href;
}

/** Changes one character of `value` at `index` (to another base64url character). */
function flip(value: string, index: number): string {
  const c = value.charAt(index);
  return `${value.slice(0, index)}${c === 'A' ? 'B' : 'A'}${value.slice(index + 1)}`;
}

describe('the callback: PKCE, state, nonce, iss and the provider\'s errors', () => {
  let env: SignInEnv;
  beforeAll(async () => {
    env = await startSignInEnv();
  });
  afterAll(async () => {
    await env.close();
  });

  it('sends the browser to the provider with PKCE S256, state, nonce, the callback URL and openid, and a state cookie named after the state', async () => {
    const browser = env.browser();
    const page = await browser.get(`${env.origin}${PREFIX}/start?rd=%2Forders`, { stopBefore: env.op.authorizationEndpoint });
    expect(page.status).toBe(302);
    expect(page.redirectNotFollowed?.reason).toBe('stopBefore');
    const auth = new URL((page.redirectNotFollowed as { url: string }).url);
    expect(`${auth.origin}${auth.pathname}`).toBe(env.op.authorizationEndpoint);
    const q = auth.searchParams;
    expect(q.get('response_type')).toBe('code');
    expect(q.get('client_id')).toBe(env.clientId);
    expect(q.get('redirect_uri')).toBe(`${env.origin}${PREFIX}/callback`);
    expect(q.get('code_challenge_method')).toBe('S256');
    expect(q.get('code_challenge')).toMatch(/^[A-Za-z0-9_-]{43}$/);
    const state = q.get('state') ?? '';
    const nonce = q.get('nonce') ?? '';
    expect(state).toMatch(/^[A-Za-z0-9_-]{22,}$/);
    expect(nonce).toMatch(/^[A-Za-z0-9_-]{22,}$/);
    expect(nonce).not.toBe(state);
    expect((q.get('scope') ?? '').split(' ')).toContain('openid');
    expect(String(page.headers['cache-control'])).toContain('no-store');
    // The pending sign-in's cookie is named after its state (its first 16 characters).
    const lines = setCookiesOf(page).filter((l) => l.startsWith(STATE_COOKIE));
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(new RegExp(`^${STATE_COOKIE}${state.slice(0, 16)}=`));
    // No session from merely starting.
    expect(sessionStored(setCookiesOf(page))).toEqual([]);

    // A second start: fresh state, nonce and challenge.
    const again = await browser.get(`${env.origin}${PREFIX}/start?rd=%2Forders`, { stopBefore: env.op.authorizationEndpoint });
    const q2 = new URL((again.redirectNotFollowed as { url: string }).url).searchParams;
    expect(q2.get('state')).not.toBe(state);
    expect(q2.get('nonce')).not.toBe(nonce);
    expect(q2.get('code_challenge')).not.toBe(q.get('code_challenge'));
  });

  it('signs in when nothing was tampered with, and clears the state cookie', async () => {
    const browser = env.browser();
    const callback = await toCallback(env.origin, browser, '/orders/3');
    const u = new URL(callback);
    expect(u.searchParams.get('code')).toBeTruthy();
    expect(u.searchParams.get('iss')).toBe(env.op.issuer);
    const page = await browser.get(callback, { followRedirects: false });
    expect(page.status).toBe(302);
    expect(page.headers.location).toBe('/orders/3');
    expect(sessionStored(setCookiesOf(page))).toHaveLength(1);
    expect(setCookiesOf(page).some((l) => l.startsWith(STATE_COOKIE) && /Max-Age=0/.test(l))).toBe(true);
    expect(jarStateCookies(browser)).toEqual([]);
    expect((await readsOrdersAs(env, browser)).subject).toBe('user-alice');
  });

  it('refuses a state altered on the way back with 400 SIGNIN_FAILED and no session', async () => {
    const browser = env.browser();
    const callback = await toCallback(env.origin, browser, '/orders');
    const state = new URL(callback).searchParams.get('state') ?? '';

    // Another state entirely (no state cookie of that name): refused; the genuine pending sign-in survives.
    const foreign = await browser.get(withParam(callback, 'state', flip(state, 0)), { followRedirects: false });
    expect(foreign.status).toBe(400);
    expect(problemOf(foreign).code).toBe('SIGNIN_FAILED');
    expect(foreign.headers.location).toBeUndefined();
    expect(sessionStored(setCookiesOf(foreign))).toEqual([]);
    expect(jarSession(browser)).toBeUndefined();

    // The same cookie name but a different state (only its last character changed): the whole state must match.
    const tail = await browser.get(withParam(callback, 'state', flip(state, state.length - 1)), { followRedirects: false });
    expect(tail.status).toBe(400);
    const p = problemOf(tail);
    expect(p.code).toBe('SIGNIN_FAILED');
    expect(p.detail).toMatch(/state/);
    expect(sessionStored(setCookiesOf(tail))).toEqual([]);
    expect(jarSession(browser)).toBeUndefined();
  });

  it('leaves a pending sign-in usable after a callback with a foreign state', async () => {
    const browser = env.browser();
    const callback = await toCallback(env.origin, browser, '/orders/11');
    const state = new URL(callback).searchParams.get('state') ?? '';
    const foreign = await browser.get(withParam(callback, 'state', flip(state, 0)), { followRedirects: false });
    expect(foreign.status).toBe(400);
    const genuine = await browser.get(callback, { followRedirects: false });
    expect(genuine.status).toBe(302);
    expect(genuine.headers.location).toBe('/orders/11');
    expect(sessionStored(setCookiesOf(genuine))).toHaveLength(1);
  });

  it('refuses a callback whose state cookie is gone (another browser, or deleted) with 400 and no session', async () => {
    const browser = env.browser();
    const callback = await toCallback(env.origin, browser, '/orders');
    const stateCookies = jarStateCookies(browser);
    expect(stateCookies).toHaveLength(1);
    for (const name of stateCookies) browser.cookies.delete(name);
    const page = await browser.get(callback, { followRedirects: false });
    expect(page.status).toBe(400);
    const p = problemOf(page);
    expect(p.code).toBe('SIGNIN_FAILED');
    expect(p.detail).toMatch(/pending sign-in|state/);
    expect(page.headers.location).toBeUndefined();
    expect(sessionStored(setCookiesOf(page))).toEqual([]);
    expect(jarSession(browser)).toBeUndefined();

    // The same callback in a browser that never started a sign-in: refused too.
    const other = await env.browser().get(callback, { followRedirects: false });
    expect(other.status).toBe(400);
    expect(problemOf(other).code).toBe('SIGNIN_FAILED');
    expect(sessionStored(setCookiesOf(other))).toEqual([]);
  });

  it('refuses a replayed callback after a successful sign-in (400, no new session), also when the state cookie is put back: the provider refuses the used code', async () => {
    const browser = env.browser();
    const callback = await toCallback(env.origin, browser, '/orders');
    const saved = browser.cookies.all().find((c) => c.name.startsWith(STATE_COOKIE));
    expect(saved).toBeDefined();
    const first = await browser.get(callback, { followRedirects: false });
    expect(first.status).toBe(302);
    const session = jarSession(browser);
    expect(session).toBeDefined();

    // The same URL again: the pending sign-in is used up.
    const replay = await browser.get(callback, { followRedirects: false });
    expect(replay.status).toBe(400);
    expect(problemOf(replay).code).toBe('SIGNIN_FAILED');
    expect(sessionStored(setCookiesOf(replay))).toEqual([]);
    expect(jarSession(browser)).toBe(session);

    // With a copy of the state cookie put back, the code reaches the provider again, which refuses it.
    const { name, value } = saved as { name: string; value: string };
    browser.cookies.store(`${name}=${value}; Path=/`, env.origin);
    const tokenRequests = env.op.requests('/token');
    const withCookie = await browser.get(callback, { followRedirects: false });
    expect(withCookie.status).toBe(400);
    const p = problemOf(withCookie);
    expect(p.code).toBe('SIGNIN_FAILED');
    expect(p.detail).toMatch(/invalid_grant/);
    expect(env.op.requests('/token')).toBe(tokenRequests + 1);
    expect(sessionStored(setCookiesOf(withCookie))).toEqual([]);
    expect(jarSession(browser)).toBe(session);
  });

  it('checks PKCE: a code paired with another pending sign-in\'s state (its verifier) is refused by the provider', async () => {
    const browser = env.browser();
    const first = new URL(await toCallback(env.origin, browser, `${PREFIX}/start?rd=%2Forders%2F1`));
    // The provider session exists now: the second sign-in goes straight back to the callback.
    const second = new URL(await toCallback(env.origin, browser, `${PREFIX}/start?rd=%2Forders%2F2`));
    expect(second.searchParams.get('state')).not.toBe(first.searchParams.get('state'));
    const crossed = new URL(first.href);
    crossed.searchParams.set('state', second.searchParams.get('state') ?? '');
    const page = await browser.get(crossed.href, { followRedirects: false });
    expect(page.status).toBe(400);
    const p = problemOf(page);
    expect(p.code).toBe('SIGNIN_FAILED');
    expect(p.detail).toMatch(/invalid_grant/);
    expect(sessionStored(setCookiesOf(page))).toEqual([]);
    expect(jarSession(browser)).toBeUndefined();
  });

  it('checks PKCE: a code_challenge replaced in the authorization request makes the code exchange fail', async () => {
    const browser = env.browser();
    const start = await browser.get(`${env.origin}${PREFIX}/start?rd=%2Forders`, { stopBefore: env.op.authorizationEndpoint });
    const auth = new URL((start.redirectNotFollowed as { url: string }).url);
    auth.searchParams.set('code_challenge', 'E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM');
    const callback = await toCallback(env.origin, browser, auth.href);
    const page = await browser.get(callback, { followRedirects: false });
    expect(page.status).toBe(400);
    const p = problemOf(page);
    expect(p.code).toBe('SIGNIN_FAILED');
    expect(p.detail).toMatch(/invalid_grant/);
    expect(jarSession(browser)).toBeUndefined();
  });

  it('checks the nonce: a nonce replaced in the authorization request fails the ID token check', async () => {
    const browser = env.browser();
    const start = await browser.get(`${env.origin}${PREFIX}/start?rd=%2Forders`, { stopBefore: env.op.authorizationEndpoint });
    const auth = new URL((start.redirectNotFollowed as { url: string }).url);
    auth.searchParams.set('nonce', 'a-nonce-the-sidecar-never-made');
    const callback = await toCallback(env.origin, browser, auth.href);
    const tokenRequests = env.op.requests('/token');
    const page = await browser.get(callback, { followRedirects: false });
    expect(page.status).toBe(400);
    const p = problemOf(page);
    expect(p.code).toBe('SIGNIN_FAILED');
    // The code was exchanged (the nonce is in the ID token), and still no session.
    expect(env.op.requests('/token')).toBe(tokenRequests + 1);
    expect(sessionStored(setCookiesOf(page))).toEqual([]);
    expect(jarSession(browser)).toBeUndefined();
    // DESIGN §7: the 400 names what failed.
    expect(p.detail).toMatch(/nonce/i);
  });

  it('checks the state end to end: a state replaced in the authorization request comes back unknown', async () => {
    const browser = env.browser();
    const start = await browser.get(`${env.origin}${PREFIX}/start?rd=%2Forders`, { stopBefore: env.op.authorizationEndpoint });
    const auth = new URL((start.redirectNotFollowed as { url: string }).url);
    auth.searchParams.set('state', 'an-attackers-state-value-0123456789');
    const callback = await toCallback(env.origin, browser, auth.href);
    const tokenRequests = env.op.requests('/token');
    const page = await browser.get(callback, { followRedirects: false });
    expect(page.status).toBe(400);
    expect(problemOf(page).code).toBe('SIGNIN_FAILED');
    // Refused before the code is ever exchanged.
    expect(env.op.requests('/token')).toBe(tokenRequests);
    expect(jarSession(browser)).toBeUndefined();
  });

  it('checks RFC 9207 iss: a callback naming another issuer is refused 400 before the code is exchanged', async () => {
    const browser = env.browser();
    const callback = await toCallback(env.origin, browser, '/orders');
    const tokenRequests = env.op.requests('/token');
    const page = await browser.get(withParam(callback, 'iss', 'http://127.0.0.1:1'), { followRedirects: false });
    expect(page.status).toBe(400);
    const p = problemOf(page);
    expect(p.code).toBe('SIGNIN_FAILED');
    expect(env.op.requests('/token')).toBe(tokenRequests);
    expect(sessionStored(setCookiesOf(page))).toEqual([]);
    expect(jarSession(browser)).toBeUndefined();
    // DESIGN §7: the 400 names what failed.
    expect(p.detail).toMatch(/\biss\b|issuer/);
  });

  it('refuses a callback without the iss the provider always sends (RFC 9207)', async () => {
    const browser = env.browser();
    const callback = new URL(await toCallback(env.origin, browser, '/orders'));
    callback.searchParams.delete('iss');
    const tokenRequests = env.op.requests('/token');
    const page = await browser.get(callback.href, { followRedirects: false });
    expect(page.status).toBe(400);
    expect(problemOf(page).code).toBe('SIGNIN_FAILED');
    expect(env.op.requests('/token')).toBe(tokenRequests);
    expect(jarSession(browser)).toBeUndefined();
  });

  it('answers 503 SIGNIN_UNAVAILABLE when the provider cannot be reached to exchange the code, starting no session', async () => {
    const browser = env.browser();
    const callback = await toCallback(env.origin, browser, '/orders');
    await env.op.stop();
    try {
      const page = await browser.get(callback, { followRedirects: false });
      expect(page.status).toBe(503);
      expect(problemOf(page).code).toBe('SIGNIN_UNAVAILABLE');
      expect(page.headers.location).toBeUndefined();
      expect(sessionStored(setCookiesOf(page))).toEqual([]);
      expect(jarSession(browser)).toBeUndefined();
    } finally {
      await env.op.start();
    }
    // The provider back: signing in works again.
    const again = await toCallback(env.origin, browser, `${PREFIX}/start?rd=%2Forders`);
    expect((await browser.get(again, { followRedirects: false })).status).toBe(302);
    expect(jarSession(browser)).toBeDefined();
  });

  it('answers other paths under the prefix 404 and wrong methods 405, never forwarding them to the app', async () => {
    const before = env.upstream.requests.length;
    for (const [method, path, status, code] of [
      ['GET', PREFIX, 404, 'NOT_FOUND'],
      ['GET', `${PREFIX}/`, 404, 'NOT_FOUND'],
      ['GET', `${PREFIX}/nope`, 404, 'NOT_FOUND'],
      ['GET', `${PREFIX}/start/x`, 404, 'NOT_FOUND'],
      ['POST', `${PREFIX}/start`, 405, 'METHOD_NOT_ALLOWED'],
      ['POST', `${PREFIX}/callback`, 405, 'METHOD_NOT_ALLOWED'],
      ['DELETE', `${PREFIX}/sign-out`, 405, 'METHOD_NOT_ALLOWED'],
      ['PUT', `${PREFIX}/userinfo`, 405, 'METHOD_NOT_ALLOWED'],
      ['GET', `${PREFIX}/backchannel-logout`, 405, 'METHOD_NOT_ALLOWED'],
    ] as const) {
      const res = await send(`${env.origin}${path}`, { method, headers: { accept: 'text/html' } });
      expect(res.status, `${method} ${path}`).toBe(status);
      expect(problemOf(res).code).toBe(code);
    }
    expect(env.upstream.requests.length).toBe(before);
  });

  it('never turns the request\'s own odd path or Host into an unsafe return URL when sending a navigation to sign in', async () => {
    const port = new URL(env.origin).port;
    for (const [target, host] of [
      ['//evil.com/x', `127.0.0.1:${port}`],
      ['/orders', 'evil.com'],
      ['/orders', `127.0.0.1:${port}@evil.com`],
    ] as const) {
      const res = await rawRequest(env.origin, [`GET ${target} HTTP/1.1`, `Host: ${host}`, 'Accept: text/html', 'Sec-Fetch-Mode: navigate', 'Sec-Fetch-Dest: document']);
      if (res.status !== 302) {
        // Refused outright is fine too, as long as it is no redirect.
        expect(res.status, `${target} ${host}`).toBeGreaterThanOrEqual(400);
        expect(res.headers['location']).toBeUndefined();
        continue;
      }
      const location = new URL(res.headers['location'] as string, env.origin);
      expect(location.origin, `${target} ${host}`).toBe(env.origin);
      expect(location.pathname).toBe(`${PREFIX}/start`);
      const rd = location.searchParams.get('rd') ?? '';
      const resolved = new URL(rd, env.origin);
      expect(resolved.origin, `${target} ${host} -> rd ${rd}`).toBe(env.origin);
      expect(rd.startsWith('//')).toBe(false);
    }
  });

  it('answers the provider\'s error=access_denied (the user cancelled at the provider) with a 400 naming it, and no session', async () => {
    const browser = env.browser();
    const login = await browser.get(`${env.origin}/orders`);
    expect(login.status).toBe(200);
    const abort = /href="([^"]*\/abort)"/.exec(login.body)?.[1];
    expect(abort).toBeDefined();
    const page = await browser.get(new URL(decodeHtml(abort as string), login.url).href, { from: login.url });
    const callbackHop = page.hops.find((h) => h.url.startsWith(`${env.origin}${PREFIX}/callback`));
    expect(new URL(callbackHop?.url ?? 'http://x/').searchParams.get('error')).toBe('access_denied');
    expect(page.url.startsWith(`${env.origin}${PREFIX}/callback`)).toBe(true);
    expect(page.status).toBe(400);
    const p = problemOf(page);
    expect(p.code).toBe('SIGNIN_FAILED');
    expect(p.detail).toContain('access_denied');
    expect(sessionStored(setCookiesOf(page))).toEqual([]);
    expect(jarSession(browser)).toBeUndefined();
    // That pending sign-in is over: its state cookie is cleared.
    expect(jarStateCookies(browser)).toEqual([]);
  });
});

describe('a new session at every sign-in', () => {
  let env: SignInEnv;
  beforeAll(async () => {
    env = await startSignInEnv();
  });
  afterAll(async () => {
    await env.close();
  });

  it('gives a browser that signs in twice a new session each time (signing out the first leaves the second)', async () => {
    const browser = env.browser();
    await env.signIn(browser, '/orders');
    const first = jarSession(browser) as string;
    expect(first).toBeDefined();
    // Signing in again (the provider session makes it a straight pass): a new cookie with a new session id.
    const page = await browser.get(`${env.origin}${PREFIX}/start?rd=%2Forders`);
    const { page: landed } = await signInAtProvider(browser, page, { login: 'alice' });
    expect(landed.status).toBe(200);
    const second = jarSession(browser) as string;
    expect(second).toBeDefined();
    expect(second).not.toBe(first);
    const [a, b] = await Promise.all([openSession(env, first), openSession(env, second)]);
    expect(a['sub']).toBe('user-alice');
    expect(b['sub']).toBe('user-alice');
    expect(b['id']).not.toBe(a['id']);

    // Sign out with a copy of the first cookie: only the first session ends.
    const old = env.browser();
    old.cookies.store(`${COOKIE}=${first}; Path=/`, env.origin);
    const out = await old.get(`${env.origin}${PREFIX}/sign-out`, { followRedirects: false });
    expect(out.status).toBe(302);
    old.cookies.store(`${COOKIE}=${first}; Path=/`, env.origin);
    const refused = await readsOrdersAs(env, old);
    expect(refused.status).toBe(302);
    expect(refused.location).toBe(`${env.origin}${PREFIX}/start?rd=%2Forders`);
    const still = await readsOrdersAs(env, browser);
    expect(still.status).toBe(200);
    expect(still.subject).toBe('user-alice');
  });

  it('replaces a session cookie planted before sign-in (session fixation): the planted copy stays its own user', async () => {
    // The attacker signs in as rita in their own browser and plants that cookie in the victim's browser.
    const attacker = env.browser();
    await env.signIn(attacker, '/orders', 'rita');
    const planted = jarSession(attacker) as string;
    expect(planted).toBeDefined();
    const victim = env.browser();
    victim.cookies.store(`${COOKIE}=${planted}; Path=/; HttpOnly; SameSite=Lax`, env.origin);
    expect((await readsOrdersAs(env, victim)).subject).toBe('user-rita');

    // The victim signs in as alice.
    const start = await victim.get(`${env.origin}${PREFIX}/start?rd=%2Forders`);
    const { page } = await signInAtProvider(victim, start, { login: 'alice' });
    expect(page.status).toBe(200);
    const callbackHop = page.hops.find((h) => h.url.startsWith(`${env.origin}${PREFIX}/callback`));
    expect(callbackHop?.requestHeaders.cookie).toContain(`${COOKIE}=${planted}`);
    expect(sessionStored(callbackHop?.setCookies ?? [])).toHaveLength(1);
    const fresh = jarSession(victim) as string;
    expect(fresh).not.toBe(planted);
    expect((await openSession(env, fresh))['id']).not.toBe((await openSession(env, planted))['id']);
    expect((await readsOrdersAs(env, victim)).subject).toBe('user-alice');
    // The attacker's copy is still rita's session, never the victim's.
    const attackerView = await readsOrdersAs(env, attacker);
    expect(attackerView.status).toBe(200);
    expect(attackerView.subject).toBe('user-rita');
  });
});

describe('state cookies', () => {
  let env: SignInEnv;
  beforeAll(async () => {
    env = await startSignInEnv();
  });
  afterAll(async () => {
    await env.close();
  });

  it('keeps at most 5 pending sign-ins (the oldest dropped), each 10 minutes, SameSite=Lax, HttpOnly, under the prefix only', async () => {
    const browser = env.browser();
    const started: Array<{ state: string; auth: string }> = [];
    for (let i = 0; i < 7; i++) {
      const page = await browser.get(`${env.origin}${PREFIX}/start?rd=%2Forders%2F${i}`, { followRedirects: false });
      expect(page.status).toBe(302);
      const auth = new URL(page.headers.location as string);
      const state = auth.searchParams.get('state') ?? '';
      started.push({ state, auth: auth.href });
      const line = setCookiesOf(page).find((l) => l.startsWith(`${STATE_COOKIE}${state.slice(0, 16)}=`));
      expect(line).toBeDefined();
      const attributes = (line as string).split(';').map((a) => a.trim().toLowerCase());
      expect(attributes).toContain('max-age=600');
      expect(attributes).toContain('samesite=lax');
      expect(attributes).toContain('httponly');
      // Requests to the app never carry them (five long ones would outgrow a header section).
      expect(attributes).toContain('path=/.authz/');
      expect(attributes).not.toContain('secure');
      expect(jarStateCookies(browser).length).toBeLessThanOrEqual(5);
    }
    const kept = jarStateCookies(browser).sort();
    expect(kept).toHaveLength(5);
    expect(kept).toEqual(started.slice(2).map((s) => `${STATE_COOKIE}${s.state.slice(0, 16)}`).sort());

    // The oldest pending sign-in was dropped: coming back from the provider with it is refused.
    const dropped = await toCallback(env.origin, browser, (started[0] as { auth: string }).auth);
    const refused = await browser.get(dropped, { followRedirects: false });
    expect(refused.status).toBe(400);
    expect(problemOf(refused).code).toBe('SIGNIN_FAILED');
    expect(jarSession(browser)).toBeUndefined();
    // The newest still completes, back to its own return URL.
    const newest = await toCallback(env.origin, browser, (started[6] as { auth: string }).auth);
    const done = await browser.get(newest, { followRedirects: false });
    expect(done.status).toBe(302);
    expect(done.headers.location).toBe('/orders/6');
    expect(jarSession(browser)).toBeDefined();
    expect(jarStateCookies(browser)).toHaveLength(4);
  });
});

/** Return URL shapes of the oauth2-proxy and mod_auth_openidc advisories (see src/signin/return-url.ts). */
function corpus(port: number): string[] {
  const here = `127.0.0.1:${port}`;
  return [
    '//evil.com',
    '///evil.com',
    '//evil.com/%2F..',
    '/\\evil.com',
    '/\\/evil.com',
    '\\/\\/evil.com',
    '\\\\evil.com',
    '/%2Fevil.com',
    '/%2F%2Fevil.com',
    '/%2fevil.com',
    '/%5Cevil.com',
    '/%5c%5cevil.com',
    '/%09/evil.com',
    '/\t/evil.com',
    '/\n/evil.com',
    '/\r\n/evil.com',
    '\t//evil.com',
    '/ /evil.com',
    '/%20/evil.com',
    '/%0d%0a/evil.com',
    '/%00/evil.com',
    '/\u0000/evil.com',
    '/%E3%80%80/evil.com',
    '/%C2%A0/evil.com',
    '/%e2%80%a8/evil.com',
    ' /orders',
    '/orders ',
    'https://evil.com',
    'http://evil.com',
    'http://evil.com/orders',
    `https://${here}@evil.com`,
    `http://${here}@evil.com/`,
    `http://evil.com@${here}/`,
    `http://user:pass@${here}/`,
    `http://${here}.evil.com/`,
    `http://${here}\\@evil.com/`,
    'http://evil.com\\.127.0.0.1/',
    'http://evil.com%2F.127.0.0.1/',
    'http://evil.com?.127.0.0.1',
    'http://evil.com#.127.0.0.1',
    `http://127.0.0.1:${port + 1}/`,
    `http://localhost:${port}/`,
    'https:evil.com',
    'https:/evil.com',
    'http:evil.com',
    'https:\\\\evil.com',
    'javascript:alert(1)',
    'JaVaScRiPt:alert(1)',
    'javascript://%0aalert(1)',
    'data:text/html,<script>alert(1)</script>',
    'ftp://evil.com/',
    'evil.com',
    'orders',
    '',
    `/${'a'.repeat(2100)}`,
  ];
}

/** Shapes sent literally in the query (no encoding of their own), as a crafted link would carry them. */
const RAW_SHAPES = ['//evil.com', '/%2F%2Fevil.com', '%2F%2Fevil.com', '/%5Cevil.com', '/%255Cevil.com', '/%2509/evil.com', '%09//evil.com', 'https:evil.com', 'javascript:alert(1)', '/\\evil.com', '\\\\evil.com'];

describe('return URLs through the proxy door: the open-redirect corpus is refused', () => {
  let env: SignInEnv;
  let port: number;
  beforeAll(async () => {
    port = await freePort();
    env = await startSignInEnv({ port });
  });
  afterAll(async () => {
    await env.close();
  });

  for (const route of ['start', 'sign-out'] as const) {
    it(`refuses every corpus shape at ${route}?rd= with 400 and no Location`, async () => {
      const failures: string[] = [];
      for (const shape of corpus(port)) {
        const res = await send(`${env.origin}${PREFIX}/${route}?${new URLSearchParams({ rd: shape }).toString()}`, { headers: { accept: 'text/html' } });
        const code = res.status === 400 ? (JSON.parse(res.body) as { code?: string }).code : undefined;
        if (res.status !== 400 || res.headers.location !== undefined || code !== 'SIGNIN_FAILED') failures.push(`${JSON.stringify(shape)} -> ${res.status} ${String(res.headers.location)} ${String(code)}`);
      }
      expect(failures).toEqual([]);
    });

    it(`refuses the shapes sent literally in the query at ${route}?rd= with 400 and no Location`, async () => {
      const failures: string[] = [];
      for (const shape of RAW_SHAPES) {
        const res = await rawRequest(env.origin, [`GET ${PREFIX}/${route}?rd=${shape} HTTP/1.1`, `Host: 127.0.0.1:${port}`, 'Accept: text/html']);
        if (res.status !== 400 || res.headers['location'] !== undefined) failures.push(`${JSON.stringify(shape)} -> ${res.status} ${String(res.headers['location'])}`);
      }
      expect(failures).toEqual([]);
    });
  }

  it('refuses rd given twice', async () => {
    for (const route of ['start', 'sign-out']) {
      const res = await send(`${env.origin}${PREFIX}/${route}?rd=%2Forders&rd=%2F%2Fevil.com`);
      expect(res.status).toBe(400);
      expect(res.headers.location).toBeUndefined();
    }
  });

  it('follows an allowed path and an absolute URL on the callback\'s host to the end of the sign-in', async () => {
    for (const rd of ['/orders/9?x=1&y=%2F', `http://127.0.0.1:${port}/orders/8`]) {
      const browser = env.browser();
      const start = await browser.get(`${env.origin}${PREFIX}/start?${new URLSearchParams({ rd }).toString()}`);
      const { page } = await signInAtProvider(browser, start, { login: 'alice' });
      expect(page.status).toBe(200);
      expect(page.url).toBe(new URL(rd, env.origin).href);
      expect(env.upstream.requests.at(-1)?.headers['x-auth-subject']).toBe('user-alice');
    }
  });

  it('sends sign-out to an allowed rd (straight there without a session; via the provider\'s end_session with one)', async () => {
    for (const rd of ['/public/bye', `http://127.0.0.1:${port}/public/bye?x=1`]) {
      const res = await send(`${env.origin}${PREFIX}/sign-out?${new URLSearchParams({ rd }).toString()}`);
      expect(res.status).toBe(302);
      expect(res.headers.location).toBe(rd);
    }
    const browser = env.browser();
    await env.signIn(browser, '/orders');
    const out = await browser.get(`${env.origin}${PREFIX}/sign-out?rd=%2Fbye`, { followRedirects: false });
    expect(out.status).toBe(302);
    const end = new URL(out.headers.location as string);
    expect(`${end.origin}${end.pathname}`).toBe(env.op.endSessionEndpoint);
    expect(end.searchParams.get('post_logout_redirect_uri')).toBe(`${env.origin}/bye`);
  });
});

describe('return URLs with secure cookies: http is not a return URL', () => {
  let env: SignInEnv;
  let port: number;
  let dir: string;
  beforeAll(async () => {
    port = await freePort();
    dir = await mkdtemp(join(tmpdir(), 'authz-signin-secure-'));
    const secret = join(dir, 'cookie-secret');
    await writeFile(secret, randomBytes(48).toString('base64'));
    // The callback is https (a TLS terminator in front); the proxy door itself is plain http on loopback.
    env = await startSignInEnv({
      port,
      secretFiles: [secret],
      signIn: { callbackUrl: `https://127.0.0.1:${port}${PREFIX}/callback`, cookie: { name: COOKIE, secretFiles: [secret], secure: true } },
    });
  });
  afterAll(async () => {
    await env.close();
    await rm(dir, { recursive: true, force: true });
  });

  it('refuses http URLs on the callback host and allows https ones', async () => {
    for (const rd of [`http://127.0.0.1:${port}/orders`, 'http://evil.com/', `http://127.0.0.1:${port}@evil.com/`]) {
      const res = await send(`${env.origin}${PREFIX}/start?${new URLSearchParams({ rd }).toString()}`);
      expect(res.status, rd).toBe(400);
      expect(res.headers.location).toBeUndefined();
      expect(problemOf(res).code).toBe('SIGNIN_FAILED');
      const out = await send(`${env.origin}${PREFIX}/sign-out?${new URLSearchParams({ rd }).toString()}`);
      expect(out.status, rd).toBe(400);
      expect(out.headers.location).toBeUndefined();
    }
    const ok = await send(`${env.origin}${PREFIX}/start?${new URLSearchParams({ rd: `https://127.0.0.1:${port}/orders` }).toString()}`);
    expect(ok.status).toBe(302);
    expect(String(ok.headers.location).startsWith(env.op.authorizationEndpoint)).toBe(true);
    // The state cookie is Secure now.
    expect(setCookiesOf(ok).find((l) => l.startsWith(STATE_COOKIE))).toMatch(/;\s*Secure/);
    const out = await send(`${env.origin}${PREFIX}/sign-out?${new URLSearchParams({ rd: `https://127.0.0.1:${port}/bye` }).toString()}`);
    expect(out.status).toBe(302);
    expect(out.headers.location).toBe(`https://127.0.0.1:${port}/bye`);
  });
});

describe('cookie.sameSite: strict', () => {
  let env: SignInEnv;
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'authz-signin-strict-'));
    const secret = join(dir, 'cookie-secret');
    await writeFile(secret, randomBytes(48).toString('base64'));
    env = await startSignInEnv({ secretFiles: [secret], signIn: { cookie: { name: COOKIE, secretFiles: [secret], secure: false, sameSite: 'strict' } } });
  });
  afterAll(async () => {
    await env.close();
    await rm(dir, { recursive: true, force: true });
  });

  it('ends the callback with a 200 page that moves on to the return URL (a Strict cookie is not sent on the provider\'s redirect), state cookies staying Lax', async () => {
    const browser = env.browser();
    const first = await browser.get(`${env.origin}/orders/2?a=1`);
    const startHop = first.hops.find((h) => h.url.startsWith(`${env.origin}${PREFIX}/start`));
    expect(startHop?.setCookies.find((l) => l.startsWith(STATE_COOKIE))).toMatch(/SameSite=Lax/);
    const { page } = await signInAtProvider(browser, first, { login: 'alice' });
    expect(page.url.startsWith(`${env.origin}${PREFIX}/callback`)).toBe(true);
    expect(page.status).toBe(200);
    expect(String(page.headers['content-type'])).toMatch(/^text\/html/);
    const refresh = /<meta http-equiv="refresh" content="0;url=([^"]*)">/.exec(page.body)?.[1];
    expect(decodeHtml(refresh ?? '')).toBe('/orders/2?a=1');
    const stored = sessionStored(setCookiesOf(page));
    expect(stored).toHaveLength(1);
    expect(stored[0]).toMatch(/SameSite=Strict/);
    // The page's same-site navigation carries the session.
    const next = await browser.get(new URL(decodeHtml(refresh ?? ''), page.url).href, { from: page.url });
    expect(next.status).toBe(200);
    expect(env.upstream.requests.at(-1)?.headers['x-auth-subject']).toBe('user-alice');
  });
});

describe('two providers', () => {
  let env: SignInEnv;
  let partner: SignInProvider;
  let corp: SignInProvider;
  let dir: string;
  beforeAll(async () => {
    const port = await freePort();
    const origin = `http://127.0.0.1:${port}`;
    dir = await mkdtemp(join(tmpdir(), 'authz-signin-two-'));
    // signIn.providers replaces the env's whole list: both providers here are this test's own (the env's
    // provider is not known before it starts, so it is left out).
    const secrets = { corp: `corp-${randomBytes(8).toString('hex')}`, partner: `partner-${randomBytes(8).toString('hex')}` };
    corp = await startSignInProvider({ users: USERS, clients: [{ clientId: 'orders-corp', clientSecret: secrets.corp, redirectUris: [`${origin}${PREFIX}/callback`], backchannelLogoutUri: `${origin}${PREFIX}/backchannel-logout` }] });
    partner = await startSignInProvider({ users: USERS, clients: [{ clientId: 'orders-partner', clientSecret: secrets.partner, redirectUris: [`${origin}${PREFIX}/callback`], backchannelLogoutUri: `${origin}${PREFIX}/backchannel-logout` }] });
    await writeFile(join(dir, 'corp'), secrets.corp);
    await writeFile(join(dir, 'partner'), secrets.partner);
    env = await startSignInEnv({
      port,
      signIn: {
        providers: [
          { name: 'corp', issuer: corp.issuer, clientId: 'orders-corp', clientSecretFile: join(dir, 'corp'), scopes: ['openid', 'email', 'roles'] },
          { name: 'partner', issuer: partner.issuer, clientId: 'orders-partner', clientSecretFile: join(dir, 'partner'), scopes: ['openid', 'email', 'roles'] },
        ],
      },
    });
  });
  afterAll(async () => {
    await env.close();
    await corp.close();
    await partner.close();
    await rm(dir, { recursive: true, force: true });
  });

  it('shows a chooser with one link per provider when start names none, and each link signs in at its provider', async () => {
    const browser = env.browser();
    const chooser = await browser.get(`${env.origin}/orders/5`);
    expect(chooser.status).toBe(200);
    expect(chooser.url).toBe(`${env.origin}${PREFIX}/start?rd=%2Forders%2F5`);
    expect(String(chooser.headers['content-type'])).toMatch(/^text\/html/);
    expect(String(chooser.headers['cache-control'])).toContain('no-store');
    // No pending sign-in yet.
    expect(setCookiesOf(chooser)).toEqual([]);
    const links = [...chooser.body.matchAll(/<a href="([^"]*)">([^<]*)<\/a>/g)].map((m) => ({ href: decodeHtml(m[1] ?? ''), text: m[2] }));
    expect(links.map((l) => l.text)).toEqual(['corp', 'partner']);
    for (const link of links) {
      const u = new URL(link.href, chooser.url);
      expect(u.pathname).toBe(`${PREFIX}/start`);
      expect(u.searchParams.get('provider')).toBe(link.text);
      expect(u.searchParams.get('rd')).toBe('/orders/5');
    }

    for (const [name, op] of [['corp', corp], ['partner', partner]] as const) {
      const b = env.browser();
      const first = await b.get(`${env.origin}/orders/5`);
      const link = links.find((l) => l.text === name) as { href: string };
      const start = await b.get(new URL(link.href, first.url).href, { from: first.url, stopBefore: op.authorizationEndpoint });
      expect(start.redirectNotFollowed?.url.startsWith(op.authorizationEndpoint)).toBe(true);
      const atProvider = await b.get((start.redirectNotFollowed as { url: string }).url, { from: first.url });
      const { page } = await signInAtProvider(b, atProvider, { login: 'alice' });
      expect(page.status).toBe(200);
      expect(page.url).toBe(`${env.origin}/orders/5`);
      const seen = env.upstream.requests.at(-1);
      expect(seen?.headers['x-auth-issuer']).toBe(op.issuer);
      expect(seen?.headers['x-auth-subject']).toBe('user-alice');
      const info = await b.get(`${env.origin}${PREFIX}/userinfo`, { headers: { accept: 'application/json' } });
      expect((JSON.parse(info.body) as { provider: string }).provider).toBe(name);
    }
  });

  it('ends a session only by a logout token of its own provider: another provider naming the same sid ends nothing there', async () => {
    const browser = env.browser();
    const start = await browser.get(`${env.origin}${PREFIX}/start?rd=%2Forders&provider=corp`);
    const { page } = await signInAtProvider(browser, start, { login: 'alice' });
    expect(page.status).toBe(200);
    const sid = (await openSession(env, jarSession(browser) as string))['psid'] as string;
    expect(typeof sid).toBe('string');
    const post = async (token: string): Promise<number> =>
      (await send(`${env.origin}${PREFIX}/backchannel-logout`, { method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: new URLSearchParams({ logout_token: token }).toString() })).status;

    // The partner's own valid token naming that sid (and alice): accepted for the partner, corp's session stays.
    expect(await post(await partner.signLogoutToken(partner.logoutTokenClaims({ clientId: 'orders-partner', sid })))).toBe(200);
    expect(await post(await partner.signLogoutToken(partner.logoutTokenClaims({ clientId: 'orders-partner', sub: 'user-alice' })))).toBe(200);
    expect((await readsOrdersAs(env, browser)).subject).toBe('user-alice');
    // corp's issuer and audience signed with the partner's key: refused.
    expect(await post(await partner.signLogoutToken({ ...corp.logoutTokenClaims({ clientId: 'orders-corp', sid }) }, { kid: null }))).toBe(400);
    // corp's audience on the partner's token: refused.
    expect(await post(await partner.signLogoutToken(partner.logoutTokenClaims({ clientId: 'orders-corp', sid })))).toBe(400);
    expect((await readsOrdersAs(env, browser)).subject).toBe('user-alice');
    // corp's own token ends it.
    expect(await post(await corp.signLogoutToken(corp.logoutTokenClaims({ clientId: 'orders-corp', sid })))).toBe(200);
    const ended = await readsOrdersAs(env, browser);
    expect(ended.status).toBe(302);
    expect(ended.subject).toBeUndefined();
  });

  it('refuses an unknown or repeated provider= with 400', async () => {
    for (const query of ['provider=nope&rd=%2Forders', 'provider=corp&provider=partner&rd=%2Forders', 'provider=&rd=%2F']) {
      const res = await send(`${env.origin}${PREFIX}/start?${query}`);
      expect(res.status, query).toBe(400);
      expect(problemOf(res).code).toBe('SIGNIN_FAILED');
      expect(res.headers.location).toBeUndefined();
      expect(setCookiesOf(res)).toEqual([]);
    }
  });
});

describe('back-channel logout', () => {
  let env: SignInEnv;
  beforeAll(async () => {
    env = await startSignInEnv();
  });
  afterAll(async () => {
    await env.close();
  });

  const post = (token: string | undefined, extra = ''): Promise<Answer> =>
    send(`${env.origin}${PREFIX}/backchannel-logout`, {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body: `${token === undefined ? '' : new URLSearchParams({ logout_token: token }).toString()}${extra}`,
    });

  it('ends the session whose sid the provider names after a logout at the provider; another session of the same user stays', async () => {
    const browser = env.browser();
    await env.signIn(browser, '/orders');
    const other = env.browser();
    await env.signIn(other, '/orders');
    const sid = (await openSession(env, jarSession(browser) as string))['psid'];
    expect(typeof sid).toBe('string');
    expect((await openSession(env, jarSession(other) as string))['psid']).not.toBe(sid);
    expect((await readsOrdersAs(env, browser)).status).toBe(200);

    // Sign out at the provider (its end_session page, "Yes, sign me out"): it POSTs a logout token to the sidecar.
    const before = env.op.backchannelLogouts.length;
    const confirm = await browser.get(`${env.op.endSessionEndpoint}?client_id=${env.clientId}`);
    expect(confirm.status).toBe(200);
    const done = await confirmLogoutAtProvider(browser, confirm);
    expect(done.status).toBe(200);
    const deliveries = env.op.backchannelLogouts.slice(before);
    expect(deliveries).toEqual([{ clientId: env.clientId, sub: 'user-alice', sid, ok: true }]);

    // The session is refused from now on: the next navigation is sent to sign in, the cookie cleared.
    const page = await browser.get(`${env.origin}/orders`, { followRedirects: false });
    expect(page.status).toBe(302);
    expect(new URL(page.headers.location as string, page.url).href).toBe(`${env.origin}${PREFIX}/start?rd=%2Forders`);
    expect(setCookiesOf(page).some((l) => l.startsWith(`${COOKIE}=;`) && /Max-Age=0/.test(l))).toBe(true);
    // The other session (another provider session, another sid) goes on.
    const still = await readsOrdersAs(env, other);
    expect(still.status).toBe(200);
    expect(still.subject).toBe('user-alice');
  });

  it('refuses every invalid logout token with 400, and the session it names stays usable', async () => {
    const browser = env.browser();
    await env.signIn(browser, '/orders');
    const sid = (await openSession(env, jarSession(browser) as string))['psid'] as string;
    const op = env.op;
    const valid = (): Record<string, unknown> => op.logoutTokenClaims({ clientId: env.clientId, sid, sub: 'user-alice' });
    const now = Math.floor(Date.now() / 1000);
    const b64 = (v: unknown): string => Buffer.from(JSON.stringify(v)).toString('base64url');
    const variants: Array<[string, Promise<string>]> = [
      ['no events member', op.signLogoutToken({ ...valid(), events: undefined })],
      ['another event', op.signLogoutToken({ ...valid(), events: { 'http://schemas.openid.net/event/other': {} } })],
      ['the event not an object', op.signLogoutToken({ ...valid(), events: { 'http://schemas.openid.net/event/backchannel-logout': 'yes' } })],
      ['a nonce', op.signLogoutToken({ ...valid(), nonce: 'n-0S6_WzA2Mj' })],
      ['wrong aud', op.signLogoutToken({ ...valid(), aud: 'another-client' })],
      ['wrong iss', op.signLogoutToken({ ...valid(), iss: 'http://127.0.0.1:1' })],
      ['signed with a foreign key', op.signLogoutToken(valid(), { withProviderKey: false })],
      ['signed with a foreign key and no kid', op.signLogoutToken(valid(), { withProviderKey: false, kid: null })],
      ['missing jti', op.signLogoutToken({ ...valid(), jti: undefined })],
      ['empty jti', op.signLogoutToken({ ...valid(), jti: '' })],
      ['no sid and no sub', op.signLogoutToken({ ...valid(), sid: undefined, sub: undefined })],
      ['iat missing', op.signLogoutToken({ ...valid(), iat: undefined })],
      ['iat an hour old', op.signLogoutToken({ ...valid(), iat: now - 3600, exp: now + 60 })],
      ['iat ten minutes ahead', op.signLogoutToken({ ...valid(), iat: now + 600, exp: now + 720 })],
      ['expired', op.signLogoutToken({ ...valid(), iat: now - 200, exp: now - 100 })],
      ['alg none', Promise.resolve(`${b64({ alg: 'none', typ: 'logout+jwt' })}.${b64(valid())}.`)],
      ['not a JWT', Promise.resolve('not-a-jwt')],
      ['a JWT with a broken signature', op.signLogoutToken(valid()).then((t) => `${t.slice(0, -6)}AAAAAA`)],
    ];
    const failures: string[] = [];
    for (const [what, token] of variants) {
      const res = await post(await token);
      const code = res.status === 400 ? problemOf(res).code : undefined;
      if (res.status !== 400 || code !== 'SIGNIN_FAILED') failures.push(`${what}: ${res.status} ${res.body}`);
    }
    // No logout_token at all, two of them, a GET.
    const none = await post(undefined, 'foo=bar');
    if (none.status !== 400) failures.push(`no logout_token: ${none.status}`);
    const t1 = await op.signLogoutToken(valid());
    const two = await post(t1, `&${new URLSearchParams({ logout_token: t1 }).toString()}`);
    if (two.status !== 400) failures.push(`two logout_tokens: ${two.status}`);
    const get = await send(`${env.origin}${PREFIX}/backchannel-logout`);
    if (get.status !== 405) failures.push(`GET: ${get.status}`);
    expect(failures).toEqual([]);

    const still = await readsOrdersAs(env, browser);
    expect(still.status).toBe(200);
    expect(still.subject).toBe('user-alice');
  });

  it('accepts a valid token once: the same jti again is a 400', async () => {
    const token = await env.op.signLogoutToken(env.op.logoutTokenClaims({ clientId: env.clientId, sid: `unrelated-${randomBytes(4).toString('hex')}` }));
    const first = await post(token);
    expect(first.status).toBe(200);
    expect(first.body).toBe('');
    const second = await post(token);
    expect(second.status).toBe(400);
    const p = problemOf(second);
    expect(p.code).toBe('SIGNIN_FAILED');
    expect(p.detail).toMatch(/already used/);
  });

  it('ends every session of a sub with a sub-only token, and no one else\'s', async () => {
    const a1 = env.browser();
    const a2 = env.browser();
    const rita = env.browser();
    await env.signIn(a1, '/orders');
    await env.signIn(a2, '/orders');
    await env.signIn(rita, '/orders', 'rita');
    const res = await post(await env.op.signLogoutToken(env.op.logoutTokenClaims({ clientId: env.clientId, sub: 'user-alice' })));
    expect(res.status).toBe(200);
    for (const b of [a1, a2]) {
      const page = await readsOrdersAs(env, b);
      expect(page.status).toBe(302);
      expect(page.location).toBe(`${env.origin}${PREFIX}/start?rd=%2Forders`);
    }
    const r = await readsOrdersAs(env, rita);
    expect(r.status).toBe(200);
    expect(r.subject).toBe('user-rita');
  });

  it('counts sign-ins and back-channel logouts in the metrics', async () => {
    const res = await send(`${env.sidecar.adminUrl}/metrics`);
    expect(res.status).toBe(200);
    const value = (series: string): number => Number(new RegExp(`^${series.replace(/[{}]/g, '\\$&')} (\\d+)$`, 'm').exec(res.body)?.[1] ?? 'NaN');
    // The sign-ins above (2 + 1 + 3), and the logout tokens accepted (the provider's, the unrelated sid, the sub).
    expect(value('authz_sidecar_signin_total{provider="corp",result="success"}')).toBe(6);
    expect(value('authz_sidecar_logout_total{kind="backchannel"}')).toBe(3);
  });
});
