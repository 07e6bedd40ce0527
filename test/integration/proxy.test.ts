/**
 * The proxy front door end to end: a real OpenID Provider (oidc-provider, client-credentials grant issuing
 * JWT access tokens with a roles claim), a real recording upstream, the sidecar on loopback, real HTTP and
 * WebSocket clients. Policy: the example in policies/ (readers read orders, admins do anything on orders,
 * anonymous may GET /public/*).
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import { startTestProvider, type TestProvider } from '../support/oidc-provider.js';
import { rawRequest } from '../support/raw-http.js';
import { startTestSidecar, waitReady, type TestSidecar } from '../support/sidecar.js';
import { freePort, startRecordingUpstream, type Recorded, type RecordingUpstream } from '../support/upstream.js';

const AUDIENCE = 'urn:orders-api';
const OTHER_AUDIENCE = 'urn:billing-api';

let idp: TestProvider;
let foreignIdp: TestProvider;
let upstream: RecordingUpstream;
let sidecar: TestSidecar;
let clockOffsetMs = 0;
let readerToken: string;
let adminToken: string;

function last(): Recorded {
  const r = upstream.requests.at(-1);
  if (r === undefined) throw new Error('the upstream received nothing');
  return r;
}

function bearer(token: string): Record<string, string> {
  return { authorization: `Bearer ${token}` };
}

/** Every header the upstream received whose name looks like an identity header, in any spelling. */
function identityHeadersSeen(r: Recorded): Array<[string, string]> {
  const out: Array<[string, string]> = [];
  for (let i = 0; i < r.rawHeaders.length; i += 2) {
    const name = r.rawHeaders[i] ?? '';
    if (/^x[-_]auth[-_]/i.test(name)) out.push([name, r.rawHeaders[i + 1] ?? '']);
  }
  return out;
}

beforeAll(async () => {
  [idp, foreignIdp, upstream] = await Promise.all([
    startTestProvider({
      clients: [
        { clientId: 'reader-app', clientSecret: 'reader-secret-0123456789abcdef', roles: ['reader'] },
        { clientId: 'admin-app', clientSecret: 'admin-secret-0123456789abcdefg', roles: ['admin'] },
        { clientId: 'nobody-app', clientSecret: 'nobody-secret-0123456789abcdef', roles: [] },
      ],
      audiences: [AUDIENCE, OTHER_AUDIENCE],
    }),
    startTestProvider({
      clients: [{ clientId: 'reader-app', clientSecret: 'reader-secret-0123456789abcdef', roles: ['admin'] }],
      audiences: [AUDIENCE],
    }),
    startRecordingUpstream(),
  ]);
  sidecar = await startTestSidecar(
    {
      upstream: { url: upstream.url, timeoutSeconds: 1 },
      authn: { jwt: [{ issuer: idp.issuer, audiences: [AUDIENCE], jwksUri: idp.jwksUri, clockSkewSeconds: 5 }] },
    },
    { now: () => new Date(Date.now() + clockOffsetMs) },
  );
  await waitReady(sidecar.adminUrl);
  [readerToken, adminToken] = await Promise.all([idp.getToken('reader-app'), idp.getToken('admin-app')]);
});

afterAll(async () => {
  await sidecar?.close();
  await Promise.all([idp?.close(), foreignIdp?.close(), upstream?.close()]);
});

beforeEach(() => {
  clockOffsetMs = 0;
  upstream.delayMs = 0;
});

describe('allow', () => {
  it('forwards an allowed request with identity headers from the verified token and without the token', async () => {
    const res = await fetch(`${sidecar.url}/orders/42`, { headers: bearer(readerToken) });
    expect(res.status).toBe(200);
    expect(res.headers.get('x-upstream')).toBe('recording');
    const seen = last();
    expect(seen.url).toBe('/orders/42');
    expect(seen.headers['x-auth-subject']).toBe('reader-app');
    expect(seen.headers['x-auth-roles']).toBe('reader');
    expect(seen.headers['x-auth-issuer']).toBe(idp.issuer);
    expect(seen.headers['authorization']).toBeUndefined();
    expect(seen.headers['x-request-id']).toMatch(/^[0-9a-f-]{36}$/);
  });

  it('lets role inheritance from policy g lines apply on top of token roles (admin may read)', async () => {
    const res = await fetch(`${sidecar.url}/orders`, { headers: bearer(adminToken) });
    expect(res.status).toBe(200);
    expect(last().headers['x-auth-roles']).toBe('admin');
  });

  it('authorizes HEAD as GET', async () => {
    const res = await fetch(`${sidecar.url}/orders/7`, { method: 'HEAD', headers: bearer(readerToken) });
    expect(res.status).toBe(200);
    expect(last().method).toBe('HEAD');
  });

  it('lets anonymous callers reach what the policy allows anonymous, with no identity headers', async () => {
    const res = await fetch(`${sidecar.url}/public/hello`);
    expect(res.status).toBe(200);
    expect(last().url).toBe('/public/hello');
    expect(identityHeadersSeen(last())).toEqual([]);
  });

  it('keeps a sane x-request-id from the client and forwards it', async () => {
    const res = await fetch(`${sidecar.url}/public/id`, { headers: { 'x-request-id': 'trace-abc.123' } });
    expect(res.status).toBe(200);
    expect(last().headers['x-request-id']).toBe('trace-abc.123');
  });

  it('replaces an x-request-id that is not a sane token (log injection)', async () => {
    await fetch(`${sidecar.url}/public/id`, { headers: { 'x-request-id': 'a'.repeat(300) } });
    expect(last().headers['x-request-id']).toMatch(/^[0-9a-f-]{36}$/);
  });

  it('forwards the request body and method unchanged', async () => {
    const res = await fetch(`${sidecar.url}/orders`, { method: 'POST', headers: { ...bearer(adminToken), 'content-type': 'application/json' }, body: '{"item":"book"}' });
    expect(res.status).toBe(200);
    expect(last().method).toBe('POST');
    expect(last().body).toBe('{"item":"book"}');
  });
});

describe('deny', () => {
  it('answers 401 with a Bearer challenge and a problem body when there is no token', async () => {
    const before = upstream.requests.length;
    const res = await fetch(`${sidecar.url}/orders/42`);
    expect(res.status).toBe(401);
    expect(res.headers.get('www-authenticate')).toBe('Bearer realm="authz-sidecar"');
    expect(res.headers.get('content-type')).toMatch(/^application\/problem\+json/);
    const body = (await res.json()) as Record<string, unknown>;
    expect(body).toMatchObject({ status: 401, title: 'Unauthorized', code: 'CREDENTIALS_MISSING', type: 'urn:authz-sidecar:problem:CREDENTIALS_MISSING' });
    expect(typeof body['detail']).toBe('string');
    expect(upstream.requests.length).toBe(before);
  });

  const invalid: Array<[name: string, token: () => Promise<string>, code: string]> = [
    ['an expired token', async () => {
      clockOffsetMs = 3_600_000; // the token lives 300 s at the IdP; the sidecar's clock is an hour ahead
      return readerToken;
    }, 'TOKEN_EXPIRED'],
    ['a token for another audience', () => idp.getToken('reader-app', { audience: OTHER_AUDIENCE }), 'TOKEN_AUDIENCE'],
    ['a token of an unknown issuer', () => foreignIdp.getToken('reader-app'), 'TOKEN_ISSUER'],
    ['a token with a bad signature', async () => {
      const [h, p, s = ''] = readerToken.split('.');
      const flipped = (s[10] === 'A' ? 'B' : 'A');
      return `${h}.${p}.${s.slice(0, 10)}${flipped}${s.slice(11)}`;
    }, 'TOKEN_INVALID'],
    ['a token whose payload was changed (roles: admin)', async () => {
      const [h, p = '', s] = readerToken.split('.');
      const claims = JSON.parse(Buffer.from(p, 'base64url').toString()) as Record<string, unknown>;
      claims['roles'] = ['admin'];
      return `${h}.${Buffer.from(JSON.stringify(claims)).toString('base64url')}.${s}`;
    }, 'TOKEN_INVALID'],
    ['a token with alg none', async () => {
      const [, p] = readerToken.split('.');
      return `${Buffer.from('{"alg":"none","typ":"JWT"}').toString('base64url')}.${p}.`;
    }, 'TOKEN_INVALID'],
  ];
  it.each(invalid)('answers 401 invalid_token for %s, never anonymous', async (_name, makeToken, code) => {
    const token = await makeToken();
    // /public/* is open to anonymous callers: a bad token there must still be refused, not downgraded.
    for (const path of ['/orders/42', '/public/hello']) {
      const res = await fetch(`${sidecar.url}${path}`, { headers: bearer(token) });
      expect(res.status).toBe(401);
      expect(res.headers.get('www-authenticate')).toMatch(/^Bearer realm="authz-sidecar", error="invalid_token", error_description="[^"]+"$/);
      const body = (await res.json()) as Record<string, unknown>;
      expect(body['code']).toBe(code);
      expect(JSON.stringify(body)).not.toContain(token.split('.')[1]);
    }
  });

  it('answers 403 problem+json when the role has no permission', async () => {
    const before = upstream.requests.length;
    const res = await fetch(`${sidecar.url}/orders/42`, { method: 'DELETE', headers: bearer(readerToken) });
    expect(res.status).toBe(403);
    expect(res.headers.get('content-type')).toMatch(/^application\/problem\+json/);
    expect(res.headers.get('www-authenticate')).toBeNull();
    expect(await res.json()).toMatchObject({ status: 403, code: 'POLICY_DENIED', title: 'Forbidden' });
    expect(upstream.requests.length).toBe(before);
  });

  it('answers 403 for a token without roles', async () => {
    const res = await fetch(`${sidecar.url}/orders/42`, { headers: bearer(await idp.getToken('nobody-app')) });
    expect(res.status).toBe(403);
  });

  it('answers 400 for two Authorization headers', async () => {
    const host = new URL(sidecar.url).host;
    const res = await rawRequest(sidecar.url, [
      'GET /public/x HTTP/1.1', `Host: ${host}`, `Authorization: Bearer ${readerToken}`, `Authorization: Bearer ${adminToken}`,
    ]);
    expect(res.status).toBe(400);
    expect(res.body).toContain('CREDENTIALS_CONFLICT');
  });

  it('answers 400 invalid_request for an Authorization header that is not Bearer', async () => {
    const res = await fetch(`${sidecar.url}/public/x`, { headers: { authorization: 'Basic YWxpY2U6c2VjcmV0' } });
    expect(res.status).toBe(400);
    expect(res.headers.get('www-authenticate')).toContain('error="invalid_request"');
  });
});

describe('identity headers from clients never reach the upstream', () => {
  const spoofed = [
    'X-Auth-Subject: root',
    'x-auth-roles: admin',
    'X-AUTH-ISSUER: https://evil.example',
    'X_Auth_Subject: root-underscore',
    'x_auth_roles: admin',
    'X-Auth_Scopes: everything',
    'X-Auth-Anything-Else: 1',
  ];

  it.each([
    ['anonymous', '/public/spoof', undefined],
    ['authenticated', '/orders/9', 'reader'],
  ] as const)('%s request: every spelling is removed and only the sidecar’s values arrive', async (_kind, path, role) => {
    const host = new URL(sidecar.url).host;
    const auth = role === undefined ? [] : [`Authorization: Bearer ${readerToken}`];
    const res = await rawRequest(sidecar.url, [`GET ${path} HTTP/1.1`, `Host: ${host}`, ...auth, ...spoofed]);
    expect(res.status).toBe(200);
    const seen = identityHeadersSeen(last());
    if (role === undefined) {
      expect(seen).toEqual([]);
    } else {
      expect(Object.fromEntries(seen)).toEqual({
        'x-auth-subject': 'reader-app',
        'x-auth-issuer': idp.issuer,
        'x-auth-roles': 'reader',
      });
    }
  });

  it('method-override and URL-rewrite headers never reach the upstream (a GET authorized must not run as DELETE)', async () => {
    const res = await fetch(`${sidecar.url}/public/override`, {
      headers: { 'X-HTTP-Method-Override': 'DELETE', 'X-HTTP-Method': 'DELETE', 'X-Method-Override': 'DELETE', 'X-Original-URL': '/admin', 'X-Rewrite-URL': '/admin' },
    });
    expect(res.status).toBe(200);
    const names = Object.keys(last().headers);
    for (const h of ['x-http-method-override', 'x-http-method', 'x-method-override', 'x-original-url', 'x-rewrite-url']) expect(names).not.toContain(h);
  });

  it('a spoofed identity header cannot influence the decision (no role from a header)', async () => {
    const res = await fetch(`${sidecar.url}/orders/42`, { method: 'DELETE', headers: { ...bearer(readerToken), 'x-auth-roles': 'admin' } });
    expect(res.status).toBe(403);
  });
});

describe('canonical path', () => {
  const cases: Array<[target: string, upstreamSees: string]> = [
    ['/public/a/../b/./c//d', '/public/b/c/d'],
    ['/public/%2e%2e/public/x', '/public/x'],
    ['/public/%7Euser/%41', '/public/~user/A'],
    ['/x/../public/y?q=../z&a=%2F&b=%zz', '/public/y?q=../z&a=%2F&b=%zz'],
    ['//public//y', '/public/y'],
    ['http://example.test/public/abs?k=v', '/public/abs?k=v'],
  ];
  it.each(cases)('%s reaches the upstream as %s', async (target, expected) => {
    const host = new URL(sidecar.url).host;
    const res = await rawRequest(sidecar.url, [`GET ${target} HTTP/1.1`, `Host: ${host}`]);
    expect(res.status).toBe(200);
    expect(last().url).toBe(expected);
  });

  it('decides on the canonical path, not the raw one (/public/../orders is /orders)', async () => {
    const host = new URL(sidecar.url).host;
    const before = upstream.requests.length;
    const res = await rawRequest(sidecar.url, [`GET /public/../orders/42 HTTP/1.1`, `Host: ${host}`]);
    expect(res.status).toBe(401);
    expect(upstream.requests.length).toBe(before);
  });

  it.each([
    ['/public/a%2Fb', 'PATH_ENCODED_SLASH'],
    ['/public/a;jsessionid=1', 'PATH_SEMICOLON'],
    ['/public/..;/orders/42', 'PATH_SEMICOLON'],
    ['/public/a%00', 'PATH_CONTROL_CHAR'],
    ['/public/%ff', 'PATH_BAD_ENCODING'],
    ['/public/a\\b', 'PATH_BACKSLASH'],
  ])('rejects %s with 400 %s before anything reaches the upstream', async (target, code) => {
    const host = new URL(sidecar.url).host;
    const before = upstream.requests.length;
    const res = await rawRequest(sidecar.url, [`GET ${target} HTTP/1.1`, `Host: ${host}`]);
    expect(res.status).toBe(400);
    expect(res.body).toContain(code);
    expect(upstream.requests.length).toBe(before);
  });

  it('forwards the host the decision was made for (absolute-form authority over Host) as x-forwarded-host', async () => {
    const host = new URL(sidecar.url).host;
    const res = await rawRequest(sidecar.url, ['GET http://decided.example/public/abs HTTP/1.1', `Host: ${host}`]);
    expect(res.status).toBe(200);
    expect(last().headers['x-forwarded-host']).toBe('decided.example');
  });

  it('rejects OPTIONS * with 400', async () => {
    const host = new URL(sidecar.url).host;
    const res = await rawRequest(sidecar.url, ['OPTIONS * HTTP/1.1', `Host: ${host}`]);
    expect(res.status).toBe(400);
  });
});

describe('WebSocket', () => {
  function open(path: string, headers: Record<string, string> = {}): Promise<{ ws: WebSocket; status: number }> {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(`${sidecar.url.replace('http:', 'ws:')}${path}`, { headers });
      ws.once('open', () => resolve({ ws, status: 101 }));
      ws.once('unexpected-response', (_req, res) => {
        resolve({ ws, status: res.statusCode ?? 0 });
        res.resume();
      });
      ws.once('error', reject);
    });
  }

  it('refuses the upgrade with 401 before the 101 when there is no token', async () => {
    const before = upstream.requests.length;
    const { status } = await open('/orders/stream');
    expect(status).toBe(401);
    expect(upstream.requests.length).toBe(before);
  });

  it('refuses the upgrade with 403 for a role without permission', async () => {
    const before = upstream.requests.length;
    const { status } = await open('/admin/stream', bearer(readerToken));
    expect(status).toBe(403);
    expect(upstream.requests.length).toBe(before);
  });

  it('passes an allowed upgrade with identity headers on the upstream handshake and relays messages', async () => {
    const { ws, status } = await open('/orders/stream?since=5', { ...bearer(readerToken), 'X-Auth-Subject': 'root', 'x_auth_roles': 'admin' });
    expect(status).toBe(101);
    const reply = new Promise<string>((resolve) => ws.once('message', (d: Buffer) => resolve(d.toString('utf8'))));
    ws.send('hello');
    expect(await reply).toBe('echo:hello');
    ws.close();
    const handshake = upstream.requests.filter((r) => r.websocket).at(-1);
    expect(handshake?.url).toBe('/orders/stream?since=5');
    expect(Object.fromEntries(identityHeadersSeen(handshake as Recorded))).toEqual({
      'x-auth-subject': 'reader-app',
      'x-auth-issuer': idp.issuer,
      'x-auth-roles': 'reader',
    });
    expect(handshake?.headers['authorization']).toBeUndefined();
  });
});

describe('upstream failures', () => {
  it('answers 504 when the upstream is slow, and the sidecar stays healthy', async () => {
    upstream.delayMs = 3_000;
    const res = await fetch(`${sidecar.url}/public/slow`);
    expect(res.status).toBe(504);
    expect(await res.json()).toMatchObject({ code: 'UPSTREAM_TIMEOUT', status: 504 });
    expect((await fetch(`${sidecar.adminUrl}/healthz`)).status).toBe(200);
    upstream.delayMs = 0;
    expect((await fetch(`${sidecar.url}/public/after`)).status).toBe(200);
  });

  it('answers 502 when the upstream is down, and /healthz stays 200', async () => {
    const down = await startTestSidecar({
      upstream: { url: `http://127.0.0.1:${await freePort()}` },
      authn: { jwt: [{ issuer: idp.issuer, audiences: [AUDIENCE], jwksUri: idp.jwksUri }] },
    });
    try {
      const res = await fetch(`${down.url}/public/x`);
      expect(res.status).toBe(502);
      const body = (await res.json()) as Record<string, unknown>;
      expect(body).toMatchObject({ code: 'UPSTREAM_UNAVAILABLE', status: 502 });
      expect(JSON.stringify(body)).not.toMatch(/ECONNREFUSED|at .*\.js/);
      expect((await fetch(`${down.adminUrl}/healthz`)).status).toBe(200);
    } finally {
      await down.close();
    }
  });
});

describe('forwarding details', () => {
  it('passes on only the final answer when the app sends informational ones first (103 Early Hints, 102)', async () => {
    const port = await freePort();
    const app = createServer((req, res) => {
      res.writeEarlyHints({ link: '</style.css>; rel=preload; as=style' });
      res.writeProcessing();
      res.writeHead(201, { 'content-type': 'text/plain' });
      res.end(`created ${req.url ?? ''}`);
    });
    await new Promise<void>((r) => app.listen(port, '127.0.0.1', () => r()));
    const hinted = await startTestSidecar({
      upstream: { url: `http://127.0.0.1:${port}` },
      authn: { jwt: [{ issuer: idp.issuer, audiences: [AUDIENCE], jwksUri: idp.jwksUri }] },
    });
    try {
      const res = await fetch(`${hinted.url}/public/hinted`);
      expect(res.status).toBe(201);
      expect(await res.text()).toBe('created /public/hinted');
    } finally {
      await hinted.close();
      await new Promise((r) => app.close(r));
    }
  });

  it('keeps idle client connections 72 s, longer than the usual 60 s of load balancers in front', async () => {
    const res = await fetch(`${sidecar.url}/public/keepalive`);
    await res.arrayBuffer();
    expect(res.headers.get('keep-alive')).toBe('timeout=72');
  });
});

describe('unix socket upstream', () => {
  it('forwards over a unix socket, HTTP and WebSocket', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'authz-unix-'));
    const app = await startRecordingUpstream({ socketPath: join(dir, 'app.sock') });
    const viaUnix = await startTestSidecar({
      upstream: { url: app.url },
      authn: { jwt: [{ issuer: idp.issuer, audiences: [AUDIENCE], jwksUri: idp.jwksUri }] },
    });
    try {
      await waitReady(viaUnix.adminUrl);
      const res = await fetch(`${viaUnix.url}/orders/1?x=y`, { headers: bearer(readerToken) });
      expect(res.status).toBe(200);
      expect(app.requests.at(-1)?.url).toBe('/orders/1?x=y');
      expect(app.requests.at(-1)?.headers['x-auth-subject']).toBe('reader-app');

      const ws = new WebSocket(`${viaUnix.url.replace('http:', 'ws:')}/orders/ws`, { headers: bearer(readerToken) });
      await new Promise<void>((resolve, reject) => {
        ws.once('open', () => resolve());
        ws.once('error', reject);
      });
      const echoed = new Promise<string>((resolve) => ws.once('message', (d: Buffer) => resolve(d.toString('utf8'))));
      ws.send('over-unix');
      expect(await echoed).toBe('echo:over-unix');
      ws.close();
      expect(app.requests.filter((r) => r.websocket).at(-1)?.headers['x-auth-subject']).toBe('reader-app');
    } finally {
      await viaUnix.close();
      await app.close();
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe('admin', () => {
  it('reports ready once the issuer keys are loaded, and healthy', async () => {
    const ready = await fetch(`${sidecar.adminUrl}/readyz`);
    expect(ready.status).toBe(200);
    expect(await ready.json()).toMatchObject({ status: 'ready', missing: [] });
    expect((await fetch(`${sidecar.adminUrl}/healthz`)).status).toBe(200);
  });

  it('is 503 not ready, naming the issuer, while keys cannot be fetched', async () => {
    const port = await freePort();
    const noKeys = await startTestSidecar({
      upstream: { url: upstream.url },
      authn: { jwt: [{ issuer: 'http://127.0.0.1:1/idp', audiences: [AUDIENCE], jwksUri: `http://127.0.0.1:${port}/jwks` }] },
    });
    try {
      const res = await fetch(`${noKeys.adminUrl}/readyz`);
      expect(res.status).toBe(503);
      expect(await res.json()).toMatchObject({ status: 'not ready', missing: ['keys of issuer http://127.0.0.1:1/idp'] });
      // And a request needing those keys gets 503, never allow.
      const forged = `${Buffer.from('{"alg":"RS256","kid":"k"}').toString('base64url')}.${Buffer.from(JSON.stringify({ iss: 'http://127.0.0.1:1/idp', sub: 'x', aud: AUDIENCE, exp: 4102444800 })).toString('base64url')}.c2ln`;
      const denied = await fetch(`${noKeys.url}/public/x`, { headers: bearer(forged) });
      expect(denied.status).toBe(503);
    } finally {
      await noKeys.close();
    }
  });
});
