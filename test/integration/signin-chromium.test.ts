/**
 * Issue #15's must-show: a REAL browser (Debian's Chromium, driven by playwright-core) signs in through the
 * real oidc-provider's login and consent pages, typing and clicking, through each kind of door: the proxy
 * door; a real nginx running deploy/nginx/nginx.conf (auth_request to the forward-auth listener); a real Caddy
 * running deploy/caddy/Caddyfile (forward_auth); the HTTP ext_authz door behind the Envoy stand-in configured
 * from deploy/istio/mesh-config.yaml. Each ends on the page it first asked for (path and query), served by the
 * app with the identity headers and without the sidecar's cookies. Then sign-out through the proxy door, out
 * through the provider's logout page and back. One browser; a fresh context (cookies, storage) per journey.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Browser, BrowserContext, Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { renderShippedCaddyfile, startCaddy } from '../support/caddy.js';
import { launchChromium, newLoopbackContext, signInWithChromium } from '../support/chromium.js';
import { relayOptionsFromIstio, startEnvoyRelay } from '../support/envoy-relay.js';
import { renderShippedNginxConf, startNginx } from '../support/nginx.js';
import { COOKIE, startSignInEnv, type SignInEnv } from '../support/signin-env.js';
import { freePort } from '../support/upstream.js';

const ROOT = join(import.meta.dirname, '../..');
const OWN_COOKIE = new RegExp(`(^|;\\s*)${COOKIE}(\\.\\d|-s-[^=]*)?=`);
const PAGE = '/orders/7?tab=2';

type FrontKind = 'proxy' | 'nginx' | 'caddy' | 'relay';

interface Front {
  readonly kind: FrontKind;
  readonly env: SignInEnv;
  readonly origin: string;
  close(): Promise<void>;
}

/** A provider, upstream and sidecar for one front, the front on the callback URL's port (as in signin-doors). */
async function startFront(kind: FrontKind): Promise<Front> {
  if (kind === 'proxy') {
    const env = await startSignInEnv();
    return { kind, env, origin: env.origin, close: () => env.close() };
  }
  const mesh = parse(await readFile(join(ROOT, 'deploy/istio/mesh-config.yaml'), 'utf8')) as {
    spec: { meshConfig: { extensionProviders: Array<{ name: string; envoyExtAuthzHttp?: Record<string, unknown> }> } };
  };
  const istio = mesh.spec.meshConfig.extensionProviders.find((p) => p.name === 'authz-sidecar-http')?.envoyExtAuthzHttp;
  if (istio === undefined) throw new Error('deploy/istio/mesh-config.yaml has no authz-sidecar-http provider');
  const port = await freePort();
  const env = await startSignInEnv({
    port,
    config: {
      listen: '127.0.0.1:0',
      extAuthz: { forwardAuth: { listen: '127.0.0.1:0' }, http: { listen: '127.0.0.1:0', pathPrefix: istio['pathPrefix'] } },
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
    return { kind, env, origin: env.origin, close: async () => (await relay.close(), await env.close()) };
  } catch (err) {
    await env.close();
    throw err;
  }
}

/** Every response the page saw (redirects included), as "STATUS URL". */
function recordResponses(page: Page): string[] {
  const seen: string[] = [];
  page.on('response', (r) => seen.push(`${r.status()} ${r.url()}`));
  return seen;
}

let browser: Browser;
const fronts = new Map<FrontKind, Front>();
const contexts: BrowserContext[] = [];

beforeAll(async () => {
  const [launched, ...started] = await Promise.all([launchChromium(), ...(['proxy', 'nginx', 'caddy', 'relay'] as const).map((k) => startFront(k))]);
  browser = launched;
  for (const f of started) fronts.set(f.kind, f);
}, 60_000);

afterAll(async () => {
  await Promise.all(contexts.map((c) => c.close()));
  await browser?.close();
  await Promise.all([...fronts.values()].map((f) => f.close()));
});

async function freshPage(): Promise<{ context: BrowserContext; page: Page }> {
  const context = await newLoopbackContext(browser);
  contexts.push(context);
  return { context, page: await context.newPage() };
}

function front(kind: FrontKind): Front {
  const f = fronts.get(kind);
  if (f === undefined) throw new Error(`the ${kind} front did not start`);
  return f;
}

describe.each(['proxy', 'nginx', 'caddy', 'relay'] as const)('Chromium signs in through the %s door', (kind) => {
  it('goes through the provider login and consent pages and ends on the page it asked for, with the identity at the app', async () => {
    const f = front(kind);
    const { context, page } = await freshPage();
    const responses = recordResponses(page);
    const ended = await signInWithChromium(page, `${f.origin}${PAGE}`, 'alice');
    expect(ended).toBe(`${f.origin}${PAGE}`);
    // The way there: redirected to the start route, the provider's pages, the callback, the page.
    expect(responses[0]).toBe(`302 ${f.origin}${PAGE}`);
    expect(responses[1]).toBe(`302 ${f.origin}/.authz/start?rd=${encodeURIComponent(PAGE)}`);
    expect(responses.some((r) => r.startsWith(`200 ${f.env.op.issuer}/interaction/`))).toBe(true);
    expect(responses.some((r) => r.startsWith(`302 ${f.origin}/.authz/callback?`))).toBe(true);
    expect(responses.at(-1)).toBe(`200 ${f.origin}${PAGE}`);
    // The app's answer is what the browser shows.
    expect(JSON.parse((await page.locator('body').textContent()) ?? '{}')).toEqual({ ok: true, url: PAGE });
    const seen = f.env.upstream.requests.at(-1);
    expect(seen?.url).toBe(PAGE);
    expect(seen?.headers['x-auth-subject']).toBe('user-alice');
    expect(seen?.headers['x-auth-issuer']).toBe(f.env.op.issuer);
    expect(seen?.headers['x-auth-roles']).toBe('admin,staff');
    expect(seen?.headers['sec-fetch-mode']).toBe('navigate');
    expect(String(seen?.headers.cookie ?? '')).not.toMatch(OWN_COOKIE);
    // Chromium holds the session: HttpOnly, SameSite=Lax, Path=/, on the front's host; no pending sign-in left.
    const cookies = await context.cookies(f.origin);
    const session = cookies.find((c) => c.name === COOKIE);
    expect(session).toMatchObject({ httpOnly: true, sameSite: 'Lax', path: '/', domain: '127.0.0.1' });
    expect(cookies.filter((c) => c.name.startsWith(`${COOKIE}-s-`))).toEqual([]);
    // And it stays signed in: the next page goes straight to the app.
    const next = await page.goto(`${f.origin}/orders/8`);
    expect(next?.status()).toBe(200);
    expect(f.env.upstream.requests.at(-1)?.url).toBe('/orders/8');
  });
});

describe('Chromium signs out through the proxy door', () => {
  it("ends the session, goes through the provider's logout page and back, and the old cookie is refused", async () => {
    const f = front('proxy');
    const { context, page } = await freshPage();
    expect(await signInWithChromium(page, `${f.origin}${PAGE}`, 'rita')).toBe(`${f.origin}${PAGE}`);
    const old = (await context.cookies(f.origin)).find((c) => c.name === COOKIE)?.value;
    expect(old).toBeDefined();
    const responses = recordResponses(page);

    // Sign-out: the sidecar's 302 to the provider's end_session endpoint, its "Do you want to sign-out" page.
    await page.goto(`${f.origin}/.authz/sign-out?rd=%2Fbye`);
    expect(responses[0]).toBe(`302 ${f.origin}/.authz/sign-out?rd=%2Fbye`);
    expect(new URL(page.url()).origin).toBe(f.env.op.issuer);
    expect((await context.cookies(f.origin)).find((c) => c.name === COOKIE)).toBeUndefined();
    await Promise.all([page.waitForURL((u) => u.origin === f.origin || u.pathname.includes('/interaction/')), page.getByRole('button', { name: 'Yes, sign me out' }).click()]);

    // Back at /bye (the post_logout_redirect_uri), without a session: sent to sign in again, and the provider,
    // whose session ended too, asks for the login again.
    expect(responses).toContain(`302 ${f.origin}/bye`);
    await page.waitForLoadState('load');
    expect(new URL(page.url()).origin).toBe(f.env.op.issuer);
    expect(await page.locator('input[name="login"]').count()).toBe(1);
    expect(f.env.upstream.requests.some((r) => r.url === '/bye')).toBe(false);

    // A copy of the old cookie is refused from now on.
    const replay = await context.request.get(`${f.origin}/orders/7`, { headers: { cookie: `${COOKIE}=${old ?? ''}`, accept: 'application/json' }, maxRedirects: 0 });
    expect(replay.status()).toBe(401);
  });
});
