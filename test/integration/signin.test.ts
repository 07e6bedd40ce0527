/**
 * Browser sign-in through the proxy door (DESIGN.md §7) against a real OpenID Provider with its real login
 * and consent pages, a real upstream and the real sidecar; the browser is scripted (real HTTP, a cookie jar).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { signInAtProvider } from '../support/scripted-browser.js';
import { COOKIE, startSignInEnv, type SignInEnv } from '../support/signin-env.js';

describe('browser sign-in through the proxy door', () => {
  let env: SignInEnv;
  beforeAll(async () => {
    env = await startSignInEnv();
  });
  afterAll(async () => {
    await env.close();
  });

  it('sends a browser through the provider login and back to the page it asked for, with identity headers at the app', async () => {
    const browser = env.browser();
    const first = await browser.get(`${env.origin}/orders/7?x=1`);
    const hops = first.hops.map((h) => `${h.status} ${new URL(h.url).pathname}`);
    expect(hops.slice(0, 3)).toEqual(['302 /orders/7', '302 /.authz/start', '303 /auth']);
    expect(first.hops[1]?.url).toBe(`${env.origin}/.authz/start?rd=%2Forders%2F7%3Fx%3D1`);
    const { page } = await signInAtProvider(browser, first, { login: 'alice' });
    expect(page.status).toBe(200);
    expect(page.url).toBe(`${env.origin}/orders/7?x=1`);
    const seen = env.upstream.requests.at(-1);
    expect(seen?.url).toBe('/orders/7?x=1');
    expect(seen?.headers['x-auth-subject']).toBe('user-alice');
    expect(seen?.headers['x-auth-issuer']).toBe(env.op.issuer);
    expect(seen?.headers['x-auth-roles']).toBe('admin,staff');
    expect(seen?.headers['x-auth-email']).toBe('alice@example.test');
    // The sidecar's own cookies never reach the app.
    expect(String(seen?.headers.cookie ?? '')).not.toMatch(new RegExp(`(^|; )${COOKIE}(\\.\\d)?=|${COOKIE}-s-`));
    const session = browser.cookies.all().find((c) => c.name === COOKIE);
    expect(session?.httpOnly).toBe(true);
    expect(session?.sameSite).toBe('lax');
    expect(session?.path).toBe('/');
  });

  it('answers an XHR or fetch without a session with the 401 and its Bearer challenge', async () => {
    const res = await fetch(`${env.origin}/orders`, { headers: { accept: 'application/json' } });
    expect(res.status).toBe(401);
    expect(res.headers.get('www-authenticate')).toMatch(/^Bearer /);
  });

  it('shows the session at userinfo', async () => {
    const browser = env.browser();
    await env.signIn(browser, '/orders');
    const page = await browser.get(`${env.origin}/.authz/userinfo`, { headers: { accept: 'application/json' } });
    expect(page.status).toBe(200);
    const body = JSON.parse(page.body) as Record<string, unknown>;
    expect(body).toMatchObject({ subject: 'user-alice', issuer: env.op.issuer, provider: 'corp', roles: ['admin', 'staff'], claims: { email: 'alice@example.test' } });
    expect(Date.parse(body['expiresAt'] as string)).toBeGreaterThan(Date.now());
  });
});
