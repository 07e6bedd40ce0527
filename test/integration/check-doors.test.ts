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
    expect(res.headers.get('x-envoy-auth-headers-to-remove')?.split(',').sort()).toEqual(['authorization', 'x-auth-other']);
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

  it('applies the canonical path rules after the prefix, raw', async () => {
    const host = new URL(httpUrl).host;
    const up = await rawRequest(httpUrl, ['GET /ext-authz/public/%2e%2e/orders/1 HTTP/1.1', `Host: ${host}`]);
    expect(up.status).toBe(401);
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

  it('decides on the canonical form of the forwarded URI', async () => {
    const res = await fetch(`${forwardUrl}/`, { headers: { 'x-forwarded-uri': '/public/../orders/9' } });
    expect(res.status).toBe(401);
    const open = await fetch(`${forwardUrl}/`, { headers: { 'x-forwarded-uri': '/orders/../public/9' } });
    expect(open.status).toBe(200);
  });

  it('answers 400 without an original URI, or with two', async () => {
    expect((await fetch(`${forwardUrl}/`)).status).toBe(400);
    const host = new URL(forwardUrl).host;
    const two = await rawRequest(forwardUrl, ['GET / HTTP/1.1', `Host: ${host}`, 'X-Forwarded-Uri: /public/a', 'X-Forwarded-Uri: /orders/1']);
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
    const upstreamPort = new URL(upstream.url).port;
    const config = `
daemon off;
master_process off;
worker_processes 1;
pid ${dir}/nginx.pid;
error_log ${dir}/logs/error.log warn;
events { worker_connections 64; }
http {
  access_log off;
  client_body_temp_path ${dir}/body;
  proxy_temp_path ${dir}/proxy;
  fastcgi_temp_path ${dir}/fastcgi;
  uwsgi_temp_path ${dir}/uwsgi;
  scgi_temp_path ${dir}/scgi;
  server {
    listen 127.0.0.1:${port};
    location / {
      auth_request /_authz;
      auth_request_set $auth_subject $upstream_http_x_auth_subject;
      auth_request_set $auth_roles $upstream_http_x_auth_roles;
      proxy_set_header X-Auth-Subject $auth_subject;
      proxy_set_header X-Auth-Roles $auth_roles;
      proxy_set_header Authorization "";
      proxy_pass http://127.0.0.1:${upstreamPort};
    }
    location = /_authz {
      internal;
      proxy_pass http://${sidecar.extAuthz.forwardAuth ?? ''};
      proxy_pass_request_body off;
      proxy_set_header Content-Length "";
      proxy_set_header X-Original-URI $request_uri;
      proxy_set_header X-Original-Method $request_method;
    }
  }
}
`;
    await writeFile(join(dir, 'nginx.conf'), config);
    nginx = spawn(NGINX, ['-p', dir, '-c', join(dir, 'nginx.conf'), '-e', join(dir, 'logs/error.log')], { stdio: 'ignore' });
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
