/**
 * Sign-in behaviour added after the security review (real provider, real sidecar, real HTTP):
 * - a GET sign-out from another site asks for a same-origin POST instead of signing out;
 * - a WebSocket handshake that brings a session is Origin-checked (cross-site WebSocket hijacking);
 * - a refreshed session's cookie rides on the 101 of a WebSocket handshake;
 * - a refresh replaces the session's claims: a role taken away at the provider goes.
 */
import { request as httpRequest, type IncomingMessage } from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseForms } from '../support/scripted-browser.js';
import { COOKIE, startSignInEnv, USERS, type SignInEnv } from '../support/signin-env.js';

/** A WebSocket handshake through the sidecar: the 101's headers, or the refusal's status. */
function handshake(origin: string, headers: Record<string, string>): Promise<{ status: number; headers: IncomingMessage['headers'] }> {
  return new Promise((resolve, reject) => {
    const url = new URL('/orders/ws', origin);
    const req = httpRequest({
      host: url.hostname,
      port: url.port,
      path: url.pathname,
      headers: { connection: 'Upgrade', upgrade: 'websocket', 'sec-websocket-version': '13', 'sec-websocket-key': 'dGhlIHNhbXBsZSBub25jZQ==', ...headers },
    });
    req.on('upgrade', (res, socket) => {
      socket.destroy();
      resolve({ status: res.statusCode ?? 0, headers: res.headers });
    });
    req.on('response', (res) => {
      res.resume();
      resolve({ status: res.statusCode ?? 0, headers: res.headers });
    });
    req.on('error', reject);
    req.end();
  });
}

describe('after the security review', () => {
  const users = structuredClone(USERS);
  let env: SignInEnv;
  beforeAll(async () => {
    // A refresh is due 2 s after sign-in: the access token lives 62 s, the sidecar refreshes 60 s before expiry.
    env = await startSignInEnv({ provider: { users, accessTokenTtlSeconds: 62 }, signIn: { session: { refreshBeforeSeconds: 60 } } });
  });
  afterAll(async () => {
    await env.close();
  });

  it('asks a GET sign-out from another site to confirm with a same-origin POST, and signs out only then', async () => {
    const browser = env.browser();
    await env.signIn(browser, '/orders/1');
    const page = await browser.get(`${env.origin}/.authz/sign-out?rd=%2Fbye`, { from: 'https://elsewhere.example/', followRedirects: false });
    expect(page.status).toBe(200);
    const form = parseForms(page.body, page.url)[0];
    expect(form?.method).toBe('POST');
    expect(form?.action).toBe(`${env.origin}/.authz/sign-out?rd=%2Fbye`);
    // Still signed in.
    expect((await browser.get(`${env.origin}/.authz/userinfo`, { headers: { accept: 'application/json' } })).status).toBe(200);
    const out = await browser.submitForm(page, form as NonNullable<typeof form>, { followRedirects: false });
    expect(out.status).toBe(302);
    expect((await browser.get(`${env.origin}/.authz/userinfo`, { headers: { accept: 'application/json' } })).status).toBe(401);
  });

  it('refuses a WebSocket handshake with a session from another origin, and takes one from its own with the refreshed cookie on the 101', async () => {
    const browser = env.browser();
    await env.signIn(browser, '/orders/1');
    const cookie = `${COOKIE}=${browser.cookies.get(env.origin, COOKIE) ?? ''}`;
    const foreign = await handshake(env.origin, { cookie, origin: 'https://evil.example' });
    expect(foreign.status).toBe(403);
    await new Promise((r) => setTimeout(r, 2_500));
    const own = await handshake(env.origin, { cookie, origin: env.origin });
    expect(own.status).toBe(101);
    const setCookie = own.headers['set-cookie'] ?? [];
    expect(setCookie.some((line) => line.startsWith(`${COOKIE}=`) && !/Max-Age=0/.test(line))).toBe(true);
    expect(env.upstream.requests.at(-1)?.websocket).toBe(true);
    expect(env.upstream.requests.at(-1)?.headers['x-auth-subject']).toBe('user-alice');
  });

  it('replaces the claims at a refresh: a role taken away at the provider goes', async () => {
    const browser = env.browser();
    await env.signIn(browser, '/orders/1', 'rita');
    expect(env.upstream.requests.at(-1)?.headers['x-auth-roles']).toBe('reader');
    (users['rita'] as { roles: string[] }).roles = [];
    // Not due yet: the session's claims still say reader.
    expect((await browser.get(`${env.origin}/orders/1`, { headers: { accept: 'application/json' }, followRedirects: false })).status).toBe(200);
    await new Promise((r) => setTimeout(r, 2_500));
    // Due now: the request refreshes first and is decided on the refreshed claims.
    const after = await browser.get(`${env.origin}/orders/1`, { headers: { accept: 'application/json' }, followRedirects: false });
    expect(after.status).toBe(403);
    expect(after.hops[0]?.setCookies.some((line) => line.startsWith(`${COOKIE}=`) && !/Max-Age=0/.test(line))).toBe(true);
  });
});
