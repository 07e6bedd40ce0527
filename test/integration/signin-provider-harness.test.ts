/**
 * Proves the browser sign-in harness: a real oidc-provider (test/support/signin-provider.ts) driven by the scripted
 * browser (test/support/scripted-browser.ts) through its real login and consent pages, with the relying party's
 * side done by hand with openid-client: authorization code + PKCE, ID token claims, refresh (and rotation),
 * revocation, the sub override, RP-initiated and back-channel logout, self-made logout tokens, stop/start.
 */
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createRemoteJWKSet, decodeJwt, decodeProtectedHeader, errors as joseErrors, jwtVerify } from 'jose';
import * as client from 'openid-client';
import { startSignInProvider, type SignInProvider } from '../support/signin-provider.js';
import { confirmLogoutAtProvider, CookieJar, parseForms, ScriptedBrowser, signInAtProvider, type BrowserPage } from '../support/scripted-browser.js';

const BACKCHANNEL_EVENT = 'http://schemas.openid.net/event/backchannel-logout';

interface Received {
  method: string;
  path: string;
  query: URLSearchParams;
  body: string;
}

/** The relying party's loopback endpoints: /callback, /logged-out (GET) and /backchannel (POST, 200). */
async function startRelyingParty(): Promise<{ server: Server; origin: string; received: Received[] }> {
  const received: Received[] = [];
  const server = createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://127.0.0.1');
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      received.push({ method: req.method ?? 'GET', path: url.pathname, query: url.searchParams, body: Buffer.concat(chunks).toString('utf8') });
      res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' }).end(`<!DOCTYPE html><p>relying party ${url.pathname}</p>`);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return { server, origin: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, received };
}

async function oauthErrorOf(promise: Promise<unknown>): Promise<string> {
  try {
    await promise;
  } catch (err) {
    if (err instanceof client.ResponseBodyError) return err.error;
    throw err;
  }
  throw new Error('expected the grant to be refused');
}

describe('sign-in provider harness', () => {
  let op: SignInProvider;
  let rp: Awaited<ReturnType<typeof startRelyingParty>>;
  let web: client.Configuration; // confidential client
  let spa: client.Configuration; // public client
  const browsers: ScriptedBrowser[] = [];

  const newBrowser = (): ScriptedBrowser => {
    const browser = new ScriptedBrowser();
    browsers.push(browser);
    return browser;
  };

  /** buildAuthorizationUrl with PKCE S256, state and nonce; the browser signs in; the code grant. */
  async function signIn(config: client.Configuration, browser: ScriptedBrowser, login: string) {
    const codeVerifier = client.randomPKCECodeVerifier();
    const state = client.randomState();
    const nonce = client.randomNonce();
    const authorizationUrl = client.buildAuthorizationUrl(config, {
      redirect_uri: `${rp.origin}/callback`,
      scope: 'openid profile email roles',
      code_challenge: await client.calculatePKCECodeChallenge(codeVerifier),
      code_challenge_method: 'S256',
      state,
      nonce,
    });
    const first = await browser.get(authorizationUrl);
    const { page, interactions } = await signInAtProvider(browser, first, { login });
    const tokens = await client.authorizationCodeGrant(config, new URL(page.url), {
      pkceCodeVerifier: codeVerifier,
      expectedState: state,
      expectedNonce: nonce,
      idTokenExpected: true,
    });
    return { first, page, interactions, tokens, state, nonce };
  }

  beforeAll(async () => {
    rp = await startRelyingParty();
    op = await startSignInProvider({
      users: {
        alice: { sub: 'user-alice', email: 'alice@example.test', name: 'Alice Example', roles: ['admin', 'reader'], groups: ['staff'] },
        bob: { email: 'bob@example.test' },
      },
      clients: [
        {
          clientId: 'web',
          clientSecret: 'web secret: with spaces+symbols',
          redirectUris: [`${rp.origin}/callback`],
          postLogoutRedirectUris: [`${rp.origin}/logged-out`],
          backchannelLogoutUri: `${rp.origin}/backchannel`,
        },
        { clientId: 'spa', redirectUris: [`${rp.origin}/callback`] },
      ],
      accessTokenTtlSeconds: 120,
    });
    const options = { execute: [client.allowInsecureRequests] };
    web = await client.discovery(new URL(op.issuer), 'web', undefined, client.ClientSecretBasic('web secret: with spaces+symbols'), options);
    spa = await client.discovery(new URL(op.issuer), 'spa', undefined, client.None(), options);
  });

  afterAll(async () => {
    await Promise.all(browsers.map((b) => b.close()));
    await op?.close();
    await new Promise<void>((resolve) => (rp ? rp.server.close(() => resolve()) : resolve()));
  });

  it('publishes the sign-in metadata: code + PKCE S256, RFC 9207 iss, end session, back-channel logout', async () => {
    expect(op.issuer).toBe(`http://127.0.0.1:${op.port}`);
    const res = await fetch(op.discoveryUrl);
    expect(res.status).toBe(200);
    const meta = (await res.json()) as Record<string, unknown>;
    expect(meta).toMatchObject({
      issuer: op.issuer,
      authorization_endpoint: op.authorizationEndpoint,
      token_endpoint: op.tokenEndpoint,
      jwks_uri: op.jwksUri,
      end_session_endpoint: op.endSessionEndpoint,
      backchannel_logout_supported: true,
      backchannel_logout_session_supported: true,
      authorization_response_iss_parameter_supported: true,
      code_challenge_methods_supported: ['S256'],
      response_types_supported: ['code'],
    });
    expect(meta.scopes_supported).toEqual(expect.arrayContaining(['openid', 'profile', 'email', 'roles']));
    expect(meta.claims_supported).toEqual(expect.arrayContaining(['sub', 'email', 'name', 'roles', 'groups', 'sid']));
    expect(web.serverMetadata().end_session_endpoint).toBe(op.endSessionEndpoint);
  });

  it('signs in through the real login and consent pages; the code grant gives the user claims, sid and a refresh token', async () => {
    const browser = newBrowser();
    const { first, page, interactions, tokens, state, nonce } = await signIn(web, browser, 'alice');

    // The authorization request went to oidc-provider's login page with the navigation headers of a typed URL.
    expect(first.hops[0]?.url.startsWith(op.authorizationEndpoint)).toBe(true);
    expect(first.hops[0]?.requestHeaders).toMatchObject({ 'sec-fetch-site': 'none', 'sec-fetch-mode': 'navigate', 'sec-fetch-dest': 'document' });
    expect(first.hops[0]?.status).toBe(303);
    expect(first.url).toMatch(new RegExp(`^${op.issuer}/interaction/[\\w-]+$`));
    const loginForm = parseForms(first.body, first.url)[0];
    expect(loginForm).toMatchObject({ method: 'POST', action: first.url });
    expect(loginForm?.fields.map(([name]) => name)).toEqual(['prompt', 'login', 'password']);
    const cookieNames = (setCookies: string[] | undefined): string[] => (setCookies ?? []).map((line) => line.split('=', 1)[0] ?? '');
    expect(cookieNames(first.hops[0]?.setCookies)).toEqual(['_interaction', '_interaction.sig', '_interaction_resume', '_interaction_resume.sig']);
    expect(interactions).toEqual(['login', 'consent']);
    // The last hops: the consent POST (same-origin form, with Origin) -> /auth/:uid (resume; the resume cookie is
    // deleted with a past Expires) -> the redirect URI (same-site: same host, another port).
    const [consentPost, resume, landing] = page.hops.slice(-3);
    expect(consentPost).toMatchObject({ method: 'POST', status: 303 });
    expect(consentPost?.requestHeaders).toMatchObject({ origin: op.issuer, 'sec-fetch-site': 'same-origin', 'content-type': 'application/x-www-form-urlencoded' });
    expect(resume?.url).toMatch(new RegExp(`^${op.issuer}/auth/[\\w-]+$`));
    expect(cookieNames(resume?.setCookies)).toEqual(expect.arrayContaining(['_interaction_resume', '_session']));
    expect(browser.cookies.all().map((c) => c.name)).not.toContain('_interaction_resume');
    expect(landing).toMatchObject({ method: 'GET', status: 200 });
    expect(landing?.requestHeaders['sec-fetch-site']).toBe('same-site');

    // Landed on the redirect URI with code, state and RFC 9207 iss; the RP server saw exactly that.
    const callback = new URL(page.url);
    expect(`${callback.origin}${callback.pathname}`).toBe(`${rp.origin}/callback`);
    expect(page.status).toBe(200);
    expect(callback.searchParams.get('state')).toBe(state);
    expect(callback.searchParams.get('iss')).toBe(op.issuer);
    expect(callback.searchParams.get('code')).toMatch(/^[\w-]{20,}$/);
    expect(rp.received.at(-1)).toMatchObject({ method: 'GET', path: '/callback' });
    expect(rp.received.at(-1)?.query.get('code')).toBe(callback.searchParams.get('code'));
    expect(browser.cookies.all().map((c) => c.name)).toContain('_session');

    expect(tokens.token_type.toLowerCase()).toBe('bearer');
    expect(tokens.expires_in).toBe(120);
    expect(tokens.refresh_token).toEqual(expect.any(String));
    expect(tokens.scope?.split(' ').sort()).toEqual(['email', 'openid', 'profile', 'roles']);
    const claims = tokens.claims();
    expect(claims).toMatchObject({
      iss: op.issuer,
      aud: 'web',
      sub: 'user-alice',
      email: 'alice@example.test',
      email_verified: true,
      name: 'Alice Example',
      roles: ['admin', 'reader'],
      groups: ['staff'],
    });
    expect(claims?.sid).toEqual(expect.any(String));
    expect(claims?.nonce).toBe(nonce);
    expect(Object.keys(claims ?? {}).sort()).toEqual(
      ['aud', 'email', 'email_verified', 'exp', 'groups', 'iat', 'iss', 'name', 'nonce', 'roles', 'sid', 'sub'],
    );
    expect((claims?.exp ?? 0) - (claims?.iat ?? 0)).toBe(120);
    expect(decodeProtectedHeader(tokens.id_token ?? '')).toMatchObject({ alg: 'RS256', kid: op.currentKid });
  });

  it('requires PKCE with S256', async () => {
    const browser = newBrowser();
    const base = { client_id: 'web', response_type: 'code', redirect_uri: `${rp.origin}/callback`, scope: 'openid', state: 's-1' };
    const withoutPkce = await browser.get(`${op.authorizationEndpoint}?${new URLSearchParams(base).toString()}`);
    const plain = await browser.get(
      `${op.authorizationEndpoint}?${new URLSearchParams({ ...base, code_challenge: 'a'.repeat(43), code_challenge_method: 'plain' }).toString()}`,
    );
    for (const page of [withoutPkce, plain]) {
      const query = new URL(page.url).searchParams;
      expect(page.url.startsWith(`${rp.origin}/callback?`)).toBe(true);
      expect([query.get('error'), query.get('state'), query.get('iss')]).toEqual(['invalid_request', 's-1', op.issuer]);
      expect(query.get('code')).toBeNull();
    }
  });

  it('refreshes; a confidential client keeps its refresh token, revokeAll makes the next refresh invalid_grant', async () => {
    const browser = newBrowser();
    const { tokens } = await signIn(web, browser, 'alice');
    const sid = tokens.claims()?.sid;
    const refreshed = await client.refreshTokenGrant(web, tokens.refresh_token ?? '');
    expect(refreshed.access_token).not.toBe(tokens.access_token);
    // oidc-provider's default rotateRefreshToken: confidential clients get the same one back until 70% of its TTL.
    expect(refreshed.refresh_token).toBe(tokens.refresh_token);
    expect(refreshed.claims()).toMatchObject({ sub: 'user-alice', email: 'alice@example.test', roles: ['admin', 'reader'], sid });
    // oidc-provider copies the authorization request's nonce into refreshed ID tokens.
    expect(refreshed.claims()?.nonce).toBe(tokens.claims()?.nonce);

    // A second sign-in in the same browser goes straight through (provider session, consent already given).
    const again = await signIn(web, browser, 'alice');
    expect(again.interactions).toEqual([]);

    expect(await op.revokeAll()).toBeGreaterThanOrEqual(1);
    expect(await oauthErrorOf(client.refreshTokenGrant(web, refreshed.refresh_token ?? ''))).toBe('invalid_grant');
    expect(await oauthErrorOf(client.refreshTokenGrant(web, again.tokens.refresh_token ?? ''))).toBe('invalid_grant');
  });

  it('a public client rotates its refresh token on every use; reusing the old one revokes the grant', async () => {
    const browser = newBrowser();
    const { tokens, interactions } = await signIn(spa, browser, 'bob');
    expect(interactions).toEqual(['login', 'consent']);
    expect(tokens.claims()).toMatchObject({ sub: 'bob', email: 'bob@example.test' });
    expect(tokens.claims()?.sid).toBeUndefined(); // no backchannel_logout_uri registered for 'spa'
    const rotated = await client.refreshTokenGrant(spa, tokens.refresh_token ?? '');
    expect(rotated.refresh_token).toEqual(expect.any(String));
    expect(rotated.refresh_token).not.toBe(tokens.refresh_token);
    expect(await oauthErrorOf(client.refreshTokenGrant(spa, tokens.refresh_token ?? ''))).toBe('invalid_grant');
    expect(await oauthErrorOf(client.refreshTokenGrant(spa, rotated.refresh_token ?? ''))).toBe('invalid_grant');
  });

  it('subOverride gives refreshed ID tokens another sub; revokeGrantsOf revokes one account only', async () => {
    const alice = await signIn(web, newBrowser(), 'alice');
    const bob = await signIn(spa, newBrowser(), 'bob');
    op.subOverride = 'someone-else';
    try {
      const refreshed = await client.refreshTokenGrant(web, alice.tokens.refresh_token ?? '');
      expect(refreshed.claims()).toMatchObject({ sub: 'someone-else', email: 'alice@example.test' });
    } finally {
      op.subOverride = undefined;
    }
    expect((await client.refreshTokenGrant(web, alice.tokens.refresh_token ?? '')).claims()?.sub).toBe('user-alice');

    expect(await op.revokeGrantsOf('user-alice')).toBeGreaterThanOrEqual(1);
    expect(await oauthErrorOf(client.refreshTokenGrant(web, alice.tokens.refresh_token ?? ''))).toBe('invalid_grant');
    expect((await client.refreshTokenGrant(spa, bob.tokens.refresh_token ?? '')).claims()?.sub).toBe('bob');
  });

  it('endSessions() logs every browser out at the provider; the session-bound refresh tokens die with it', async () => {
    const browser = newBrowser();
    const { tokens } = await signIn(web, browser, 'bob');
    expect(await op.endSessions()).toBeGreaterThanOrEqual(1);
    expect(await oauthErrorOf(client.refreshTokenGrant(web, tokens.refresh_token ?? ''))).toBe('invalid_grant');
    const again = await signIn(web, browser, 'bob');
    expect(again.interactions).toEqual(['login', 'consent']); // oidc-provider finds earlier grants through the session
    expect(again.tokens.claims()?.sub).toBe('bob');
  });

  it('RP-initiated logout ends the session and delivers a back-channel logout token', async () => {
    const browser = newBrowser();
    const { tokens } = await signIn(web, browser, 'alice');
    const idClaims = tokens.claims();
    const before = rp.received.length;
    const endSession = client.buildEndSessionUrl(web, {
      id_token_hint: tokens.id_token ?? '',
      post_logout_redirect_uri: `${rp.origin}/logged-out`,
      state: 'bye',
    });
    const confirmPage: BrowserPage = await browser.get(endSession, { from: `${rp.origin}/callback` });
    expect(confirmPage.status).toBe(200);
    expect(confirmPage.hops[0]?.requestHeaders).toMatchObject({ 'sec-fetch-site': 'same-site', referer: `${rp.origin}/` });
    const done = await confirmLogoutAtProvider(browser, confirmPage);
    expect(done.url).toBe(`${rp.origin}/logged-out?state=bye`);
    expect(browser.cookies.all().map((c) => c.name)).not.toContain('_session');

    const delivered = rp.received.slice(before).find((r) => r.path === '/backchannel');
    expect(delivered?.method).toBe('POST');
    const logoutToken = new URLSearchParams(delivered?.body ?? '').get('logout_token') ?? '';
    const jwks = createRemoteJWKSet(new URL(op.jwksUri));
    const { payload, protectedHeader } = await jwtVerify(logoutToken, jwks, { issuer: op.issuer, audience: 'web', typ: 'logout+jwt' });
    expect(protectedHeader).toMatchObject({ alg: 'RS256', kid: op.currentKid, typ: 'logout+jwt' });
    expect(payload).toMatchObject({ sub: 'user-alice', sid: idClaims?.sid, events: { [BACKCHANNEL_EVENT]: {} } });
    expect(payload.jti).toEqual(expect.any(String));
    expect(Object.keys(payload).sort()).toEqual(['aud', 'events', 'exp', 'iat', 'iss', 'jti', 'sid', 'sub']);
    expect((payload.exp ?? 0) - (payload.iat ?? 0)).toBe(120);
    expect(payload.nonce).toBeUndefined();
    expect(op.backchannelLogouts.at(-1)).toMatchObject({ clientId: 'web', sub: 'user-alice', sid: idClaims?.sid, ok: true });

    // The session-bound refresh token died with the provider session.
    expect(await oauthErrorOf(client.refreshTokenGrant(web, tokens.refresh_token ?? ''))).toBe('invalid_grant');
    // Signing in again needs the login page again.
    expect((await signIn(web, browser, 'alice')).interactions[0]).toBe('login');
  });

  it('signs logout tokens with the provider key (verifiable through its JWKS) or a foreign one', async () => {
    const claims = op.logoutTokenClaims({ clientId: 'web', sub: 'user-alice', sid: 'sid-1' });
    const jwks = createRemoteJWKSet(new URL(op.jwksUri));
    const token = await op.signLogoutToken(claims);
    const { payload, protectedHeader } = await jwtVerify(token, jwks, { issuer: op.issuer, audience: 'web', typ: 'logout+jwt' });
    expect(protectedHeader).toEqual({ alg: 'RS256', kid: op.currentKid, typ: 'logout+jwt' });
    expect(payload).toEqual(claims);
    expect(Object.keys(payload).sort()).toEqual(['aud', 'events', 'exp', 'iat', 'iss', 'jti', 'sid', 'sub']);

    const withoutJti = await op.signLogoutToken({ ...claims, jti: undefined, nonce: 'n-1' }, { typ: null, kid: null });
    expect(decodeJwt(withoutJti)).not.toHaveProperty('jti');
    expect(decodeJwt(withoutJti).nonce).toBe('n-1');
    expect(decodeProtectedHeader(withoutJti)).toEqual({ alg: 'RS256' });

    const forged = await op.signLogoutToken(claims, { withProviderKey: false });
    expect(decodeProtectedHeader(forged).kid).toBe(op.currentKid);
    await expect(jwtVerify(forged, jwks)).rejects.toBeInstanceOf(joseErrors.JWSSignatureVerificationFailed);
  });

  it("the browser's cookie jar honours Max-Age/Expires deletion, Path, Domain, prefixes and SameSite", () => {
    const jar = new CookieJar();
    const page = 'http://127.0.0.1:1234/app/page';
    expect(jar.store('a=1', page)).toBe(true); // default path: /app
    expect(jar.store('b=2; Path=/; Max-Age=60; SameSite=Strict', page)).toBe(true);
    expect(jar.store('c=3; Path=/other', page)).toBe(true);
    expect(jar.store('d=4; Domain=example.test', page)).toBe(false); // not this host
    expect(jar.store('__Host-e=5; Path=/', page)).toBe(false); // __Host- needs Secure
    expect(jar.store('__Host-e=5; Path=/; Secure', page)).toBe(true); // Secure is accepted on loopback http
    expect(jar.headerFor('http://127.0.0.1:999/app/x')).toBe('a=1; b=2; __Host-e=5'); // ports do not matter
    expect(jar.headerFor('http://127.0.0.1:1234/application')).toBe('b=2; __Host-e=5');
    expect(jar.headerFor('http://localhost:1234/app/x')).toBe('');
    expect(jar.headerFor('http://127.0.0.1:1234/app/x', { crossSite: true, method: 'GET', topLevel: true })).toBe('a=1; __Host-e=5');
    expect(jar.headerFor('http://127.0.0.1:1234/app/x', { crossSite: true, method: 'POST', topLevel: true })).toBe('');
    jar.store('b=gone; Path=/; Max-Age=0', page);
    jar.store('a=gone; Expires=Thu, 01 Jan 1970 00:00:00 GMT', page);
    expect(jar.headerFor('http://127.0.0.1:1234/app/x')).toBe('__Host-e=5');
    const byOrigin = new CookieJar('origin');
    byOrigin.store('s=1; Path=/', page);
    expect([byOrigin.headerFor('http://127.0.0.1:1234/'), byOrigin.headerFor('http://127.0.0.1:999/')]).toEqual(['s=1', '']);
  });

  it('stop() takes the provider down on its port; start() brings it back with its state', async () => {
    const browser = newBrowser();
    const { tokens } = await signIn(web, browser, 'alice');
    op.resetRequests();
    await op.stop();
    await expect(fetch(op.discoveryUrl)).rejects.toThrow();
    await expect(browser.get(op.discoveryUrl)).rejects.toThrow();
    await op.start();
    const refreshed = await client.refreshTokenGrant(web, tokens.refresh_token ?? '');
    expect(refreshed.claims()?.sub).toBe('user-alice');
    expect(op.requests('/token')).toBe(1);
    expect(op.requests(op.discoveryUrl)).toBe(0);
    expect(op.serverErrors).toEqual([]);
  });
});
