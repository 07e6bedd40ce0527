/**
 * Browser sign-in (DESIGN.md §7) through every door, with the scripted browser (real HTTP, a cookie jar) and a
 * real OpenID Provider's login and consent pages: the proxy door; a real nginx running deploy/nginx/nginx.conf
 * (auth_request to the forward-auth listener); a real Caddy running deploy/caddy/Caddyfile (forward_auth);
 * the HTTP ext_authz door behind an Envoy stand-in configured from deploy/istio/mesh-config.yaml
 * (test/support/envoy-relay.ts); and the gRPC ext_authz door called as Envoy calls it. Each front gets its own
 * provider and sidecar, since the callback URL names the front's origin.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { request } from 'undici';
import { parse } from 'yaml';
import { renderShippedCaddyfile, startCaddy } from '../support/caddy.js';
import { relayOptionsFromIstio, startEnvoyRelay, type EnvoyRelay } from '../support/envoy-relay.js';
import { renderShippedNginxConf, startNginx } from '../support/nginx.js';
import { confirmLogoutAtProvider, signInAtProvider, type BrowserPage, type ScriptedBrowser } from '../support/scripted-browser.js';
import { COOKIE, startSignInEnv, USERS, type SignInEnv, type SignInEnvOptions } from '../support/signin-env.js';
import { freePort } from '../support/upstream.js';

const ROOT = join(import.meta.dirname, '../..');
/** The sidecar's own cookies: the session, its chunks, pending sign-ins. */
const OWN_COOKIE = new RegExp(`(^|;\\s*)${COOKIE}(\\.\\d|-s-[^=]*)?=`);
/** What a Chrome navigation sends (fetch() cannot send sec-fetch-mode: navigate; the check doors read it as given). */
const NAVIGATION = { accept: 'text/html,application/xhtml+xml,*/*;q=0.8', 'sec-fetch-mode': 'navigate', 'sec-fetch-dest': 'document', 'sec-fetch-site': 'none' };
const PAGE = '/orders/7?tab=2';
const START_PAGE = `/.authz/start?rd=${encodeURIComponent(PAGE)}`;

type FrontKind = 'proxy' | 'nginx' | 'caddy' | 'relay';

interface Front {
  readonly kind: FrontKind;
  readonly env: SignInEnv;
  /** the browser's origin: the front (and the callback URL's origin) */
  readonly origin: string;
  readonly relay?: EnvoyRelay;
  /** the HTTP ext_authz door's relay path prefix, from the Istio provider */
  close(): Promise<void>;
}

/** The Istio HTTP ext_authz provider shipped in deploy/istio/mesh-config.yaml. */
async function istioHttpProvider(): Promise<Record<string, unknown>> {
  const mesh = parse(await readFile(join(ROOT, 'deploy/istio/mesh-config.yaml'), 'utf8')) as {
    spec: { meshConfig: { extensionProviders: Array<{ name: string; envoyExtAuthzHttp?: Record<string, unknown> }> } };
  };
  const provider = mesh.spec.meshConfig.extensionProviders.find((p) => p.name === 'authz-sidecar-http')?.envoyExtAuthzHttp;
  if (provider === undefined) throw new Error('deploy/istio/mesh-config.yaml has no authz-sidecar-http provider');
  return provider;
}

/**
 * A provider, upstream and sidecar for one front, the front itself on the callback URL's port. The sidecar has
 * every check door (forward-auth, HTTP and gRPC ext_authz) besides its proxy door.
 */
async function startFront(kind: FrontKind, options: Pick<SignInEnvOptions, 'provider' | 'signIn'> = {}): Promise<Front> {
  if (kind === 'proxy') {
    const env = await startSignInEnv(options);
    return { kind, env, origin: env.origin, close: () => env.close() };
  }
  const istio = await istioHttpProvider();
  const port = await freePort();
  const env = await startSignInEnv({
    ...options,
    port,
    config: {
      listen: '127.0.0.1:0',
      extAuthz: {
        forwardAuth: { listen: '127.0.0.1:0' },
        http: { listen: '127.0.0.1:0', pathPrefix: istio['pathPrefix'] },
        grpc: { listen: '127.0.0.1:0' },
      },
    },
  });
  const forwardAuth = env.sidecar.extAuthz.forwardAuth ?? '';
  try {
    if (kind === 'nginx') {
      const nginx = await startNginx(await renderShippedNginxConf({ port, upstream: env.upstream.url, forwardAuth, cookieName: COOKIE }), port);
      return { kind, env, origin: env.origin, close: async () => (await nginx.stop(), await env.close()) };
    }
    if (kind === 'caddy') {
      const caddy = await startCaddy(await renderShippedCaddyfile({ port, upstream: env.upstream.url, forwardAuth, cookieName: COOKIE }), port);
      return { kind, env, origin: env.origin, close: async () => (await caddy.stop(), await env.close()) };
    }
    const relay = await startEnvoyRelay(relayOptionsFromIstio(istio, { authzServer: env.sidecar.extAuthz.http ?? '', upstream: env.upstream.url, port }));
    return { kind, env, origin: env.origin, relay, close: async () => (await relay.close(), await env.close()) };
  } catch (err) {
    await env.close();
    throw err;
  }
}

/** Opens PAGE without a session, signs in at the provider as alice, and returns the first hop and the end. */
async function journey(front: Front, browser: ScriptedBrowser, path = PAGE, login = 'alice'): Promise<{ first: BrowserPage; page: BrowserPage }> {
  const first = await browser.get(`${front.origin}${path}`);
  const { page } = await signInAtProvider(browser, first, { login });
  return { first, page };
}

function sessionCookie(browser: ScriptedBrowser): string {
  const found = browser.cookies.all().find((c) => c.name === COOKIE);
  if (found === undefined) throw new Error('the browser has no session cookie');
  return found.value;
}

interface Answer {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: string;
}

/**
 * One request with exactly these headers (undici's request: fetch() would replace sec-fetch-mode with
 * 'cors', and a navigation is what gets the redirect). Redirects are not followed.
 */
async function send(url: string, options: { method?: 'GET' | 'POST'; headers?: Record<string, string>; body?: string } = {}): Promise<Answer> {
  const res = await request(url, { method: options.method ?? 'GET', headers: options.headers ?? {}, body: options.body });
  return { status: res.statusCode, headers: res.headers, body: await res.body.text() };
}

function header(answer: Answer, name: string): string | undefined {
  const v = answer.headers[name];
  return Array.isArray(v) ? v.join(', ') : v;
}

function setCookies(answer: Answer): string[] {
  const v = answer.headers['set-cookie'];
  return v === undefined ? [] : Array.isArray(v) ? v : [v];
}

/** A user whose session needs two cookie chunks (many groups, as a real directory gives some people). */
const BIG_USER = { big: { sub: 'user-big', roles: ['admin'], groups: Array.from({ length: 90 }, (_, i) => `directory-group-${String(i).padStart(3, '0')}-with-a-long-name`) } };

const fronts = new Map<FrontKind, Front>();
beforeAll(async () => {
  const started = await Promise.all((['proxy', 'nginx', 'caddy', 'relay'] as const).map((k) => startFront(k, { provider: { users: { ...USERS, ...BIG_USER } } })));
  for (const f of started) fronts.set(f.kind, f);
});
afterAll(async () => {
  await Promise.all([...fronts.values()].map((f) => f.close()));
});

function front(kind: FrontKind): Front {
  const f = fronts.get(kind);
  if (f === undefined) throw new Error(`the ${kind} front did not start`);
  return f;
}

describe.each(['proxy', 'nginx', 'caddy', 'relay'] as const)('sign-in through the %s door', (kind) => {
  it('sends a navigation to sign in, through the provider login and consent, back to the page with the identity at the app', async () => {
    const f = front(kind);
    const browser = f.env.browser();
    const { first, page } = await journey(f, browser);
    // The first answer: the 302 to the start route (on the callback's origin) with the page as rd, encoded.
    expect(first.hops[0]?.status).toBe(302);
    expect(first.hops[0]?.location).toBe(`${f.origin}${START_PAGE}`);
    expect(new URL(first.hops[1]?.url ?? '').pathname).toBe('/.authz/start');
    expect(first.hops[1]?.status).toBe(302);
    expect(first.hops[1]?.location?.startsWith(`${f.env.op.issuer}/`)).toBe(true);
    expect(first.hops[1]?.setCookies.some((c) => c.startsWith(`${COOKIE}-s-`))).toBe(true);
    // The end: the page it asked for, served by the app with the identity headers.
    expect(page.status).toBe(200);
    expect(page.url).toBe(`${f.origin}${PAGE}`);
    const callback = page.hops.find((h) => new URL(h.url).pathname === '/.authz/callback');
    expect(callback?.status).toBe(302);
    expect(callback?.location).toBe(PAGE);
    expect(callback?.setCookies.some((c) => c.startsWith(`${COOKIE}=`))).toBe(true);
    const seen = f.env.upstream.requests.at(-1);
    expect(seen?.url).toBe(PAGE);
    expect(seen?.headers['x-auth-subject']).toBe('user-alice');
    expect(seen?.headers['x-auth-issuer']).toBe(f.env.op.issuer);
    expect(seen?.headers['x-auth-roles']).toBe('admin,staff');
    expect(String(seen?.headers.cookie ?? '')).not.toMatch(OWN_COOKIE);
    // The provider's own cookies (same host on loopback) are not the sidecar's: they go through.
    expect(String(seen?.headers.cookie ?? '')).toMatch(/_session=/);
  });

  it("keeps the sidecar's cookies from the app, and the app's own cookies for it", async () => {
    const f = front(kind);
    const browser = f.env.browser();
    await journey(f, browser);
    const session = sessionCookie(browser);
    const only = await send(`${f.origin}/orders/8`, { headers: { ...NAVIGATION, cookie: `${COOKIE}=${session}` } });
    expect(only.status).toBe(200);
    const seenOnly = f.env.upstream.requests.at(-1);
    expect(seenOnly?.url).toBe('/orders/8');
    expect(seenOnly?.headers['x-auth-subject']).toBe('user-alice');
    // Nothing left for the app: no Cookie header, or an empty one.
    expect(seenOnly?.headers.cookie ?? '').toBe('');
    const mixed = await send(`${f.origin}/orders/9`, { headers: { ...NAVIGATION, cookie: `app=1; ${COOKIE}=${session}; ${COOKIE}-s-AAAAAAAAAAAAAAAA=x; theme=dark` } });
    expect(mixed.status).toBe(200);
    expect(f.env.upstream.requests.at(-1)?.headers.cookie).toBe('app=1; theme=dark');
    const anonymous = await send(`${f.origin}/public/a`, { headers: { cookie: 'app=2; theme=light' } });
    expect(anonymous.status).toBe(200);
    expect(f.env.upstream.requests.at(-1)?.headers.cookie).toBe('app=2; theme=light');
  });

  it("carries large cookies: a session of two chunks, and 6 KB of the app's own beside it", async () => {
    const f = front(kind);
    const browser = f.env.browser();
    const { page } = await journey(f, browser, PAGE, 'big');
    expect(page.status).toBe(200);
    const chunks = browser.cookies.all().filter((c) => /^authz\.\d$/.test(c.name));
    expect(chunks.length).toBe(2);
    expect(f.env.upstream.requests.at(-1)?.headers['x-auth-subject']).toBe('user-big');
    const appCookies = Array.from({ length: 6 }, (_, i) => `app${i}=${'v'.repeat(1000)}`).join('; ');
    const session = chunks.map((c) => `${c.name}=${c.value}`).join('; ');
    const big = await send(`${f.origin}/orders/10`, { headers: { ...NAVIGATION, cookie: `${appCookies}; ${session}` } });
    expect(big.status).toBe(200);
    const seen = f.env.upstream.requests.at(-1);
    expect(seen?.headers['x-auth-subject']).toBe('user-big');
    expect(seen?.headers.cookie).toBe(appCookies);
  });

  it('refuses a cross-site POST that brings the session (CSRF) with 403, and lets a same-origin one through', async () => {
    const f = front(kind);
    const browser = f.env.browser();
    await journey(f, browser);
    const cookie = `${COOKIE}=${sessionCookie(browser)}`;
    const form = { 'content-type': 'application/x-www-form-urlencoded' };
    const before = f.env.upstream.requests.length;
    const cross = await send(`${f.origin}/orders`, { method: 'POST', headers: { ...form, cookie, origin: 'http://evil.example', 'sec-fetch-site': 'cross-site' }, body: 'a=1' });
    expect(cross.status).toBe(403);
    const noSite = await send(`${f.origin}/orders`, { method: 'POST', headers: { ...form, cookie, origin: 'http://evil.example' }, body: 'a=1' });
    expect(noSite.status).toBe(403);
    expect(f.env.upstream.requests.length).toBe(before);
    // The check sees the browser's Host (nginx passes $http_host, Caddy and Envoy keep it), so the page's own
    // Origin matches.
    const same = await send(`${f.origin}/orders`, { method: 'POST', headers: { ...form, cookie, origin: f.origin, 'sec-fetch-site': 'same-origin' }, body: 'a=1' });
    expect(same.status).toBe(200);
    expect(f.env.upstream.requests.at(-1)).toMatchObject({ method: 'POST', url: '/orders', body: 'a=1' });
    expect(f.env.upstream.requests.at(-1)?.headers['x-auth-subject']).toBe('user-alice');
  });

  it('sends a browser with a tampered session cookie to sign in (and clears it), never to the app', async () => {
    const f = front(kind);
    const browser = f.env.browser();
    await journey(f, browser);
    const value = sessionCookie(browser);
    const tampered = `${value.slice(0, -6)}${value.slice(-6) === 'AAAAAA' ? 'BBBBBB' : 'AAAAAA'}`;
    const before = f.env.upstream.requests.length;
    const res = await send(`${f.origin}${PAGE}`, { headers: { ...NAVIGATION, cookie: `${COOKIE}=${tampered}` } });
    expect(res.status).toBe(302);
    expect(header(res, 'location')).toBe(`${f.origin}${START_PAGE}`);
    expect(setCookies(res)).toContain(`${COOKIE}=; Path=/; Max-Age=0; HttpOnly; SameSite=Lax`);
    expect(f.env.upstream.requests.length).toBe(before);
  });

  it('answers a fetch without a session with the 401 and its Bearer challenge, not a redirect', async () => {
    const f = front(kind);
    const res = await send(`${f.origin}/orders/7`, { headers: { accept: 'application/json', 'sec-fetch-mode': 'cors', 'sec-fetch-dest': 'empty' } });
    expect(res.status).toBe(401);
    expect(header(res, 'www-authenticate')).toBe('Bearer realm="authz-sidecar"');
    expect(header(res, 'location')).toBeUndefined();
  });
});

describe('nginx (deploy/nginx/nginx.conf)', () => {
  it("auth_request's check (X-Original-*) without a session is a 401, never a 302; Traefik's (X-Forwarded-*) is the 302", async () => {
    const f = front('nginx');
    const forwardAuth = `http://${f.env.sidecar.extAuthz.forwardAuth ?? ''}`;
    const host = new URL(f.origin).host;
    const nginxStyle = await send(`${forwardAuth}/_authz`, { headers: { ...NAVIGATION, host, 'x-original-method': 'GET', 'x-original-uri': PAGE } });
    expect(nginxStyle.status).toBe(401);
    expect(header(nginxStyle, 'location')).toBeUndefined();
    const traefikStyle = await send(`${forwardAuth}/`, {
      headers: { ...NAVIGATION, 'x-forwarded-method': 'GET', 'x-forwarded-uri': PAGE, 'x-forwarded-host': host, 'x-forwarded-proto': 'http' },
    });
    expect(traefikStyle.status).toBe(302);
    expect(header(traefikStyle, 'location')).toBe(`${f.origin}${START_PAGE}`);
  });

  it('turns the 401 of a navigation into the redirect to sign in, with the whole page (query and all) as rd', async () => {
    const f = front('nginx');
    const res = await send(`${f.origin}/orders/7?tab=2&sort=a,b&q=x%2Fy`, { headers: NAVIGATION });
    expect(res.status).toBe(302);
    const location = new URL(header(res, 'location') ?? '');
    expect(location.origin + location.pathname).toBe(`${f.origin}/.authz/start`);
    expect(location.searchParams.get('rd')).toBe('/orders/7?tab=2&sort=a,b&q=x%2Fy');
  });

  it("keeps a client's X-Forwarded-*/X-Original-*/X-Auth-* off the sign-in routes", async () => {
    const f = front('nginx');
    const res = await send(`${f.origin}${START_PAGE}`, { headers: { ...NAVIGATION, 'x-forwarded-uri': '/public/x', 'x-forwarded-method': 'GET', 'x-original-uri': '/public/y', 'x-auth-subject': 'root' } });
    expect(res.status).toBe(302);
    expect(header(res, 'location')?.startsWith(`${f.env.op.issuer}/`)).toBe(true);
  });
});

describe.each(['nginx', 'caddy'] as const)('return URLs through %s', (kind) => {
  it.each(['//evil.com', '//evil.com/x', '/\\evil.com', '/%2Fevil.com', 'https://evil.com/', 'http://evil.com', '/%09/evil.com', 'https:evil.com'])(
    'refuses start?rd=%s with 400 and no Location',
    async (rd) => {
      const f = front(kind);
      const res = await send(`${f.origin}/.authz/start?rd=${encodeURIComponent(rd)}`, { headers: NAVIGATION });
      expect(res.status).toBe(400);
      expect(header(res, 'location')).toBeUndefined();
      expect(JSON.parse(res.body)).toMatchObject({ code: 'SIGNIN_FAILED' });
    },
  );
});

describe('HTTP ext_authz behind the Envoy stand-in (deploy/istio/mesh-config.yaml)', () => {
  it('sends the check only the headers Istio is told to include (a client X-Auth-* never reaches the check)', async () => {
    const f = front('relay');
    const relay = f.relay as EnvoyRelay;
    await send(`${f.origin}/public/x`, { headers: { 'x-auth-subject': 'root', 'x-other': '1' } });
    const check = relay.checks.at(-1);
    expect(check?.path).toBe('/ext-authz/public/x');
    expect(check?.headers['x-auth-subject']).toBeUndefined();
    expect(check?.headers['x-other']).toBeUndefined();
    expect(f.env.upstream.requests.at(-1)?.headers['x-auth-subject']).toBeUndefined();
  });

  it("takes the provider's back-channel logout (its form body goes with the check): the session ends", async () => {
    const f = front('relay');
    const browser = f.env.browser();
    // rita: a logout by sub refuses every session of hers started until now, alice's stay.
    const first = await browser.get(`${f.origin}/orders/11`);
    const { page } = await signInAtProvider(browser, first, { login: 'rita' });
    expect(page.status).toBe(200);
    const cookie = `${COOKIE}=${sessionCookie(browser)}`;
    const token = await f.env.op.signLogoutToken(f.env.op.logoutTokenClaims({ clientId: f.env.clientId, sub: 'user-rita' }));
    const res = await send(`${f.origin}/.authz/backchannel-logout`, {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body: new URLSearchParams({ logout_token: token }).toString(),
    });
    expect(res.status).toBeLessThan(300);
    expect((f.relay as EnvoyRelay).checks.at(-1)?.body).toContain('logout_token=');
    const after = await send(`${f.origin}/orders/11`, { headers: { ...NAVIGATION, cookie } });
    expect(after.status).toBe(302);
    expect(header(after, 'location')).toBe(`${f.origin}/.authz/start?rd=%2Forders%2F11`);
  });

  it("answers the provider's own back-channel logout delivery with a success it accepts (200 or 204, OIDC Back-Channel Logout 1.0 §2.8)", async () => {
    const f = front('relay');
    const browser = f.env.browser();
    const first = await browser.get(`${f.origin}/orders/12`);
    await signInAtProvider(browser, first, { login: 'nobody' });
    // Sign out through the front; the provider's logout page; "Yes, sign me out" ends the provider session,
    // and the provider POSTs a logout token to the client's backchannel_logout_uri: this front.
    const out = await browser.get(`${f.origin}/.authz/sign-out?rd=%2Fbye`);
    const deliveriesBefore = f.env.op.backchannelLogouts.length;
    await confirmLogoutAtProvider(browser, out);
    const delivery = f.env.op.backchannelLogouts.slice(deliveriesBefore).find((d) => d.sub === 'user-nobody');
    expect(delivery, 'the provider delivered a logout token to the front').toBeDefined();
    // BUG (src/frontends/http-check-door.ts): the route's empty 200 goes out as 203 through ext_authz HTTP,
    // which oidc-provider (like the spec) counts as a failed delivery.
    expect(delivery?.error).toBeUndefined();
    expect(delivery?.ok).toBe(true);
  });
});

// ---- gRPC ext_authz (Envoy's Check, with the repository's proto subset) -----------------------------------------

interface HeaderValueOption {
  header: { key: string; value: string };
  append?: { value: boolean } | null;
  append_action?: string;
}
interface CheckResponse {
  status: { code: number };
  http_response?: 'ok_response' | 'denied_response';
  ok_response?: { headers: HeaderValueOption[]; headers_to_remove: string[]; response_headers_to_add?: HeaderValueOption[] };
  denied_response?: { status: { code: string | number }; headers: HeaderValueOption[]; body: string };
}
type AuthorizationClient = grpc.Client & { Check(req: unknown, cb: (err: grpc.ServiceError | null, res: CheckResponse) => void): void };

const definitions = protoLoader.loadSync('envoy/service/auth/v3/external_auth.proto', {
  includeDirs: [join(ROOT, 'proto')],
  keepCase: true,
  longs: String,
  enums: String,
  defaults: true,
  oneofs: true,
});
const Authorization = (grpc.loadPackageDefinition(definitions) as unknown as {
  envoy: { service: { auth: { v3: { Authorization: new (address: string, creds: grpc.ChannelCredentials) => AuthorizationClient } } } };
}).envoy.service.auth.v3.Authorization;

function grpcCheck(client: AuthorizationClient, host: string, method: string, path: string, headers: Record<string, string>): Promise<CheckResponse> {
  return new Promise((resolve, reject) => {
    client.Check({ attributes: { request: { http: { method, path, host, scheme: 'http', protocol: 'HTTP/1.1', headers: { ...headers, ':authority': host } } } } }, (err, res) =>
      err ? reject(err) : resolve(res),
    );
  });
}

function values(options: HeaderValueOption[] | undefined, key: string): string[] {
  return (options ?? []).filter((o) => o.header.key === key).map((o) => o.header.value);
}

describe('gRPC ext_authz', () => {
  let client: AuthorizationClient;
  beforeAll(() => {
    client = new Authorization(front('relay').env.sidecar.extAuthz.grpc ?? '', grpc.credentials.createInsecure());
  });
  afterAll(() => client?.close());

  it('answers a navigation without a session with a denied_response 302 to the start route', async () => {
    const f = front('relay');
    const res = await grpcCheck(client, new URL(f.origin).host, 'GET', PAGE, NAVIGATION);
    expect(res.http_response).toBe('denied_response');
    expect(String(res.denied_response?.status.code)).toMatch(/^(302|Found)$/);
    expect(values(res.denied_response?.headers, 'location')).toEqual([`${f.origin}${START_PAGE}`]);
  });

  it("answers the start route with the 302 to the provider and the pending sign-in's cookie", async () => {
    const f = front('relay');
    const res = await grpcCheck(client, new URL(f.origin).host, 'GET', START_PAGE, NAVIGATION);
    expect(res.http_response).toBe('denied_response');
    expect(String(res.denied_response?.status.code)).toMatch(/^(302|Found)$/);
    const location = values(res.denied_response?.headers, 'location')[0] ?? '';
    expect(location.startsWith(`${f.env.op.issuer}/`)).toBe(true);
    expect(new URL(location).searchParams.get('redirect_uri')).toBe(`${f.origin}/.authz/callback`);
    expect(values(res.denied_response?.headers, 'set-cookie').some((c) => c.startsWith(`${COOKIE}-s-`))).toBe(true);
  });

  it("allows with a session: identity headers, and the Cookie header overwritten without the sidecar's cookies", async () => {
    const f = front('relay');
    const browser = f.env.browser();
    await journey(f, browser);
    const cookie = `app=1; ${COOKIE}=${sessionCookie(browser)}`;
    const res = await grpcCheck(client, new URL(f.origin).host, 'GET', PAGE, { ...NAVIGATION, cookie });
    expect(res.http_response).toBe('ok_response');
    expect(values(res.ok_response?.headers, 'x-auth-subject')).toEqual(['user-alice']);
    const forwarded = res.ok_response?.headers.find((o) => o.header.key === 'cookie');
    expect(forwarded?.header.value).toBe('app=1');
    expect(forwarded?.append_action).toBe('OVERWRITE_IF_EXISTS_OR_ADD');
    // The session alone: the Cookie header goes.
    const alone = await grpcCheck(client, new URL(f.origin).host, 'GET', PAGE, { ...NAVIGATION, cookie: `${COOKIE}=${sessionCookie(browser)}` });
    expect(alone.http_response).toBe('ok_response');
    expect(alone.ok_response?.headers_to_remove).toContain('cookie');
    expect(values(alone.ok_response?.headers, 'cookie')).toEqual([]);
  });
});

// ---- a refreshed session's cookie through every door ---------------------------------------------------------

describe('a refreshed session reaches the browser', () => {
  // Access tokens of 61 s, refreshed when they expire within 61 s: every request with the session refreshes
  // (shared per session for 60 s), and each answer carries the new cookie.
  let f: Front;
  let relay: EnvoyRelay;
  let client: AuthorizationClient;
  beforeAll(async () => {
    f = await startFront('nginx', { provider: { accessTokenTtlSeconds: 61 }, signIn: { session: { refreshBeforeSeconds: 61 } } });
    relay = await startEnvoyRelay(relayOptionsFromIstio(await istioHttpProvider(), { authzServer: f.env.sidecar.extAuthz.http ?? '', upstream: f.env.upstream.url }));
    client = new Authorization(f.env.sidecar.extAuthz.grpc ?? '', grpc.credentials.createInsecure());
  });
  afterAll(async () => {
    client?.close();
    await relay?.close();
    await f?.close();
  });

  it('through nginx (auth_request_set + add_header), through the Envoy stand-in (headersToDownstreamOnAllow) and in gRPC response_headers_to_add', async () => {
    const browser = f.env.browser();
    const { page } = await journey(f, browser);
    expect(page.status).toBe(200);
    const callback = page.hops.find((h) => new URL(h.url).pathname === '/.authz/callback');
    const signedIn = callback?.setCookies.find((c) => c.startsWith(`${COOKIE}=`));
    expect(signedIn).toBeDefined();

    // nginx: the app's answer carries the refreshed cookie.
    const viaNginx = await browser.get(`${f.origin}/orders/3`);
    expect(viaNginx.status).toBe(200);
    const nginxCookie = (viaNginx.hops.at(-1)?.setCookies ?? []).find((c) => c.startsWith(`${COOKIE}=`));
    expect(nginxCookie).toMatch(new RegExp(`^${COOKIE}=[^;]+; Path=/; Max-Age=\\d+; HttpOnly; SameSite=Lax$`));
    expect(nginxCookie).not.toBe(signedIn);
    expect(f.env.upstream.requests.at(-1)?.headers['x-auth-subject']).toBe('user-alice');
    // The code exchange, then at least one refresh.
    expect(f.env.op.requests('/token')).toBeGreaterThanOrEqual(2);

    // The Envoy stand-in (same sidecar, the browser's cookie jar is per host).
    const viaRelay = await browser.get(`${relay.url}/orders/4`);
    expect(viaRelay.status).toBe(200);
    expect((viaRelay.hops.at(-1)?.setCookies ?? []).some((c) => c.startsWith(`${COOKIE}=`))).toBe(true);
    expect(f.env.upstream.requests.at(-1)?.headers['x-auth-subject']).toBe('user-alice');

    // gRPC: ok_response.response_headers_to_add.
    const res = await grpcCheck(client, new URL(f.origin).host, 'GET', '/orders/5', { ...NAVIGATION, cookie: `${COOKIE}=${sessionCookie(browser)}` });
    expect(res.http_response).toBe('ok_response');
    const added = values(res.ok_response?.response_headers_to_add, 'set-cookie');
    expect(added.some((c) => c.startsWith(`${COOKIE}=`))).toBe(true);
  });
});
