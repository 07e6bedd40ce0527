/**
 * Sign-in against providers without some of the things the others have (DESIGN.md §7): no refresh token
 * (the session lasts as long as its access token, then ends) and no end_session_endpoint (sign-out goes
 * straight to the return URL). Real oidc-provider, real sidecar, scripted browser.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { COOKIE, startSignInEnv, type SignInEnv } from '../support/signin-env.js';

describe('a provider that issues no refresh token and has no end_session_endpoint', () => {
  let env: SignInEnv;
  beforeAll(async () => {
    env = await startSignInEnv({
      provider: { refreshTokens: false, endSession: false, accessTokenTtlSeconds: 3 },
      signIn: { session: { refreshBeforeSeconds: 2 } },
    });
  });
  afterAll(async () => {
    await env.close();
  });

  it('keeps the session while its access token is valid, then ends it (cleared, sent to sign in again)', async () => {
    const browser = env.browser();
    const page = await env.signIn(browser, '/orders/1');
    expect(page.status).toBe(200);
    const tokenRequests = env.op.requests('/token');
    // Within refreshBeforeSeconds of the expiry but not past it: nothing to refresh with, still served.
    const soon = await browser.get(`${env.origin}/orders/1`);
    expect(soon.status).toBe(200);
    expect(env.upstream.requests.at(-1)?.headers['x-auth-subject']).toBe('user-alice');
    await new Promise((r) => setTimeout(r, 3_200));
    const later = await browser.get(`${env.origin}/orders/1`, { followRedirects: false });
    expect(later.status).toBe(302);
    expect(new URL(later.headers['location'] as string).pathname).toBe('/.authz/start');
    expect(later.hops[0]?.setCookies.some((c) => c.startsWith(`${COOKIE}=;`) && /Max-Age=0/.test(c))).toBe(true);
    // No refresh was tried: there was no refresh token.
    expect(env.op.requests('/token')).toBe(tokenRequests);
  });

  it('signs out straight to the return URL when the provider has no end_session_endpoint', async () => {
    const browser = env.browser();
    await env.signIn(browser, '/orders/1');
    const copy = browser.cookies.get(env.origin, COOKIE) ?? '';
    expect(copy).not.toBe('');
    const out = await browser.get(`${env.origin}/.authz/sign-out?rd=%2Fbye`, { followRedirects: false });
    expect(out.status).toBe(302);
    expect(out.headers['location']).toBe('/bye');
    expect(out.hops[0]?.setCookies.some((c) => c.startsWith(`${COOKIE}=;`) && /Max-Age=0/.test(c))).toBe(true);
    // A copy of the cookie kept from before the sign-out is refused.
    const after = await fetch(`${env.origin}/.authz/userinfo`, { headers: { accept: 'application/json', cookie: `${COOKIE}=${copy}` } });
    expect(after.status).toBe(401);
  });
});
