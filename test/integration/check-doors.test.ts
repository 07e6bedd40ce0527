/**
 * The HTTP check doors as their proxies call them: Envoy's HTTP ext_authz service (original method,
 * pathPrefix + original path and query, original headers) and forward-auth (X-Forwarded-* from Traefik or
 * Caddy, X-Original-* from nginx), plus an end-to-end run through a real nginx `auth_request`.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestProvider, type TestProvider } from '../support/oidc-provider.js';
import { rawRequest } from '../support/raw-http.js';
import { startTestSidecar, waitReady, type TestSidecar } from '../support/sidecar.js';
import { freePort, startRecordingUpstream, type RecordingUpstream } from '../support/upstream.js';

const AUDIENCE = 'urn:orders-api';
const NGINX = ['/usr/sbin/nginx', '/usr/bin/nginx'].find((p) => existsSync(p));

let idp: TestProvider;
let upstream: RecordingUpstream;
let sidecar: TestSidecar;
let reader: string;
let httpUrl: string;
let forwardUrl: string;

beforeAll(async () => {
  [idp, upstream] = await Promise.all([
    startTestProvider({
      clients: [{ clientId: 'reader-app', clientSecret: 'reader-secret-0123456789abcdef', roles: ['reader'] }],
      audiences: [AUDIENCE],
    }),
    startRecordingUpstream(),
  ]);
  sidecar = await startTestSidecar({
    upstream: { url: upstream.url },
    extAuthz: { http: { listen: '127.0.0.1:0', pathPrefix: '/ext-authz' }, forwardAuth: { listen: '127.0.0.1:0' } },
    authn: { jwt: [{ issuer: idp.issuer, audiences: [AUDIENCE], jwksUri: idp.jwksUri }] },
  });
  await waitReady(sidecar.adminUrl);
  reader = await idp.getToken('reader-app');
  httpUrl = `http://${sidecar.extAuthz.http ?? ''}`;
  forwardUrl = `http://${sidecar.extAuthz.forwardAuth ?? ''}`;
});

afterAll(async () => {
  await sidecar?.close();
  await Promise.all([idp?.close(), upstream?.close()]);
});

describe('HTTP ext_authz (Envoy rules)', () => {
  it('answers 200 with identity headers and the headers Envoy must remove', async () => {
    const res = await fetch(`${httpUrl}/ext-authz/orders/42?expand=items`, {
      headers: { authorization: `Bearer ${reader}`, 'x-auth-subject': 'root', 'x-auth-other': '1' },
    });
    expect(res.status).toBe(200);
    expect(res.headers.get('x-auth-subject')).toBe('reader-app');
    expect(res.headers.get('x-auth-roles')).toBe('reader');
    expect(res.headers.get('x-auth-issuer')).toBe(idp.issuer);
    // Every header the sidecar owns and does not set goes, seen in the check or not, plus spoofed ones seen.
    // (both spellings of each owned name; the ones the sidecar sets are never removed).
    expect(res.headers.get('x-envoy-auth-headers-to-remove')?.split(',').sort()).toEqual(['authorization', 'x-auth-other', 'x-auth-scopes', 'x-http-method', 'x-http-method-override', 'x-method-override', 'x-original-url', 'x-rewrite-url', 'x_auth_issuer', 'x_auth_roles', 'x_auth_scopes', 'x_auth_subject', 'x_http_method', 'x_http_method_override', 'x_method_override', 'x_original_url', 'x_rewrite_url']);
    expect(await res.text()).toBe('');
  });

  it('uses the original method: DELETE by a reader is a 403 with the problem body Envoy passes on', async () => {
    const res = await fetch(`${httpUrl}/ext-authz/orders/42`, { method: 'DELETE', headers: { authorization: `Bearer ${reader}` } });
    expect(res.status).toBe(403);
    expect(res.headers.get('content-type')).toMatch(/^application\/problem\+json/);
    expect(await res.json()).toMatchObject({ status: 403, code: 'POLICY_DENIED' });
  });

  it('answers 401 with WWW-Authenticate without a token, and for a bad one', async () => {
    const none = await fetch(`${httpUrl}/ext-authz/orders/42`);
    expect(none.status).toBe(401);
    expect(none.headers.get('www-authenticate')).toBe('Bearer realm="authz-sidecar"');
    const bad = await fetch(`${httpUrl}/ext-authz/orders/42`, { headers: { authorization: 'Bearer a.b.c' } });
    expect(bad.status).toBe(401);
    expect(bad.headers.get('www-authenticate')).toContain('error="invalid_token"');
  });

  it('ignores a request body (with_request_body) and still decides', async () => {
    const res = await fetch(`${httpUrl}/ext-authz/public/form`, { method: 'GET', headers: { 'content-type': 'application/json' } });
    expect(res.status).toBe(200);
    const post = await fetch(`${httpUrl}/ext-authz/orders`, { method: 'POST', headers: { 'content-type': 'application/octet-stream' }, body: 'x'.repeat(1000) });
    expect(post.status).toBe(401);
  });

  it('applies the canonical path rules after the prefix, raw, and refuses paths Envoy should have normalized', async () => {
    const host = new URL(httpUrl).host;
    // Envoy forwards the raw path to the app: a path that needs normalizing is refused, never authorized
    // in a form the app does not receive.
    const up = await rawRequest(httpUrl, ['GET /ext-authz/public/%2e%2e/orders/1 HTTP/1.1', `Host: ${host}`]);
    expect(up.status).toBe(400);
    expect(up.body).toContain('PATH_NOT_CANONICAL');
    const tilde = await rawRequest(httpUrl, ['GET /ext-authz/public/%7Euser HTTP/1.1', `Host: ${host}`]);
    expect(tilde.status).toBe(200);
    const slash = await rawRequest(httpUrl, ['GET /ext-authz/public/a%2Fb HTTP/1.1', `Host: ${host}`]);
    expect(slash.status).toBe(400);
  });

  it('answers 400 when the path lacks the configured prefix', async () => {
    const res = await fetch(`${httpUrl}/orders/1`);
    expect(res.status).toBe(400);
  });
});

describe('forward-auth', () => {
  it('reads the original request from X-Forwarded-* (Traefik, Caddy)', async () => {
    const ok = await fetch(`${forwardUrl}/`, {
      headers: { 'x-forwarded-method': 'GET', 'x-forwarded-uri': '/orders/7?x=1', 'x-forwarded-host': 'shop.example', 'x-forwarded-proto': 'https', authorization: `Bearer ${reader}` },
    });
    expect(ok.status).toBe(200);
    expect(ok.headers.get('x-auth-subject')).toBe('reader-app');
    const denied = await fetch(`${forwardUrl}/`, {
      headers: { 'x-forwarded-method': 'DELETE', 'x-forwarded-uri': '/orders/7', authorization: `Bearer ${reader}` },
    });
    expect(denied.status).toBe(403);
  });

  it('reads the original request from X-Original-* (nginx)', async () => {
    const res = await fetch(`${forwardUrl}/_authz`, { headers: { 'x-original-method': 'GET', 'x-original-uri': '/orders/8' } });
    expect(res.status).toBe(401);
    expect(res.headers.get('www-authenticate')).toBe('Bearer realm="authz-sidecar"');
  });

  it('refuses a forwarded URI that would need normalizing, in either direction', async () => {
    for (const uri of ['/public/../orders/9', '/orders/../public/9', '/public//x']) {
      const res = await fetch(`${forwardUrl}/`, { headers: { 'x-forwarded-method': 'GET', 'x-forwarded-uri': uri } });
      expect(res.status).toBe(400);
    }
  });

  it('answers 400 for both header families, or a repeated method header (a client adding its own)', async () => {
    const both = await fetch(`${forwardUrl}/`, { headers: { 'x-original-method': 'GET', 'x-original-uri': '/orders/1', 'x-forwarded-uri': '/public/x' } });
    expect(both.status).toBe(400);
    const host = new URL(forwardUrl).host;
    const twice = await rawRequest(forwardUrl, ['GET / HTTP/1.1', `Host: ${host}`, 'X-Forwarded-Uri: /public/a', 'X-Forwarded-Method: GET', 'X-Forwarded-Method: DELETE']);
    expect(twice.status).toBe(400);
    const noMethod = await fetch(`${forwardUrl}/`, { headers: { 'x-original-uri': '/public/a' } });
    expect(noMethod.status).toBe(400);
  });

  it('answers 400 without an original URI, or with two', async () => {
    expect((await fetch(`${forwardUrl}/`)).status).toBe(400);
    const host = new URL(forwardUrl).host;
    const two = await rawRequest(forwardUrl, ['GET / HTTP/1.1', `Host: ${host}`, 'X-Forwarded-Method: GET', 'X-Forwarded-Uri: /public/a', 'X-Forwarded-Uri: /orders/1']);
    expect(two.status).toBe(400);
  });
});

// nginx (Debian nginx-light) in front of the recording upstream, asking the forward-auth listener.
// CI installs nginx and always runs this; elsewhere a missing nginx is reported loudly and the suite skipped.
if (NGINX === undefined && process.env['CI'] === undefined) {
  console.warn('\n*** nginx is not installed: the nginx auth_request end-to-end test is SKIPPED. Install it with `apt-get install nginx-light` (CI does). ***\n');
}
describe.skipIf(NGINX === undefined && process.env['CI'] === undefined)('nginx auth_request end to end', () => {
  let nginx: ChildProcess | undefined;
  let nginxUrl: string;
  let dir: string;

  beforeAll(async () => {
    if (NGINX === undefined) throw new Error('nginx is not installed; CI must install nginx-light (see .ci/run)');
    dir = await mkdtemp(join(tmpdir(), 'authz-nginx-'));
    await mkdir(join(dir, 'logs'));
    const port = await freePort();
    // The shipped example, with its ports pointed at this test's servers.
    const shipped = await readFile(join(import.meta.dirname, '../../deploy/nginx/nginx.conf'), 'utf8');
    const config = shipped
      .replace('listen 8080;', `listen 127.0.0.1:${port};`)
      .replace('http://127.0.0.1:3000', upstream.url)
      .replace('http://127.0.0.1:9193', `http://${sidecar.extAuthz.forwardAuth ?? ''}`);
    expect(config).not.toBe(shipped);
    await writeFile(join(dir, 'nginx.conf'), config);
    nginx = spawn(NGINX, ['-p', `${dir}/`, '-c', join(dir, 'nginx.conf'), '-e', join(dir, 'logs/error.log'), '-g', `daemon off; master_process off; pid ${dir}/nginx.pid;`], {
      stdio: 'ignore',
    });
    nginxUrl = `http://127.0.0.1:${port}`;
    const deadline = Date.now() + 10_000;
    for (;;) {
      const up = await fetch(`${nginxUrl}/public/ping`).then(() => true, () => false);
      if (up) break;
      if (Date.now() > deadline) throw new Error(`nginx did not start: ${await readFile(join(dir, 'logs/error.log'), 'utf8').catch(() => '')}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  });

  afterAll(async () => {
    nginx?.kill('SIGTERM');
    if (nginx !== undefined && nginx.exitCode === null) await new Promise((r) => nginx?.once('exit', r));
    await rm(dir, { recursive: true, force: true });
  });

  it('an allowed request reaches the upstream with the subject header nginx set from the answer', async () => {
    const res = await fetch(`${nginxUrl}/orders/31?a=b`, { headers: { authorization: `Bearer ${reader}`, 'x-auth-subject': 'root' } });
    expect(res.status).toBe(200);
    const seen = upstream.requests.at(-1);
    expect(seen?.url).toBe('/orders/31?a=b');
    expect(seen?.headers['x-auth-subject']).toBe('reader-app');
    expect(seen?.headers['x-auth-roles']).toBe('reader');
    expect(seen?.headers['authorization']).toBeUndefined();
  });

  it('a client cannot pick the method or path that is checked with its own X-Forwarded-* headers', async () => {
    const before = upstream.requests.length;
    const path = await fetch(`${nginxUrl}/orders/34`, { headers: { 'x-forwarded-uri': '/public/x' } });
    expect(path.status).toBe(401);
    const method = await fetch(`${nginxUrl}/orders/34`, { method: 'DELETE', headers: { authorization: `Bearer ${reader}`, 'x-forwarded-method': 'GET' } });
    expect(method.status).toBe(403);
    expect(upstream.requests.length).toBe(before);
  });

  it('no client identity or override header reaches the upstream, even for anonymous callers', async () => {
    const res = await fetch(`${nginxUrl}/public/spoof`, {
      headers: { 'x-auth-subject': 'root', 'x-auth-roles': 'admin', 'x-auth-scopes': 'admin', 'x-auth-issuer': 'evil', 'x-http-method-override': 'DELETE', 'x-original-url': '/admin' },
    });
    expect(res.status).toBe(200);
    const names = Object.keys(upstream.requests.at(-1)?.headers ?? {});
    for (const h of ['x-auth-subject', 'x-auth-roles', 'x-auth-scopes', 'x-auth-issuer', 'x-http-method-override', 'x-original-url']) expect(names).not.toContain(h);
  });

  it('a path that would need normalizing is refused, not authorized in a form the app never sees', async () => {
    const host = new URL(nginxUrl).host;
    const res = await rawRequest(nginxUrl, ['GET /public//../orders/42 HTTP/1.1', `Host: ${host}`]);
    expect(res.status).toBeGreaterThanOrEqual(400);
    expect(res.status).not.toBe(404);
    expect(upstream.requests.at(-1)?.url).not.toBe('/public//../orders/42');
  });

  it('401 reaches the client with the Bearer challenge, and nothing reaches the upstream', async () => {
    const before = upstream.requests.length;
    const res = await fetch(`${nginxUrl}/orders/32`);
    expect(res.status).toBe(401);
    expect(res.headers.get('www-authenticate')).toBe('Bearer realm="authz-sidecar"');
    expect(upstream.requests.length).toBe(before);
  });

  it('403 reaches the client', async () => {
    const before = upstream.requests.length;
    const res = await fetch(`${nginxUrl}/orders/33`, { method: 'DELETE', headers: { authorization: `Bearer ${reader}` } });
    expect(res.status).toBe(403);
    expect(upstream.requests.length).toBe(before);
  });

  it('anonymous access to what the policy allows, without identity headers', async () => {
    const res = await fetch(`${nginxUrl}/public/hello`);
    expect(res.status).toBe(200);
    expect(upstream.requests.at(-1)?.headers['x-auth-subject']).toBeUndefined();
  });
});
