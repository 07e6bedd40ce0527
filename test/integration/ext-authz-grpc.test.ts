/**
 * gRPC ext_authz as Envoy/Istio calls it, with a client built from the OFFICIAL Envoy protos (shipped by
 * @grpc/grpc-js-xds), against the sidecar's own wire-compatible proto subset. Tokens come from a real
 * oidc-provider.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestProvider, type TestProvider } from '../support/oidc-provider.js';
import { startTestSidecar, waitReady, type TestSidecar } from '../support/sidecar.js';
import { freePort } from '../support/upstream.js';

const AUDIENCE = 'urn:orders-api';
const DEPS = join(dirname(createRequire(import.meta.url).resolve('@grpc/grpc-js-xds/package.json')), 'deps');

interface HeaderValueOption {
  header: { key: string; value: string };
  append?: { value: boolean } | null;
  append_action: string;
}
interface CheckResponse {
  status: { code: number };
  http_response: 'ok_response' | 'denied_response';
  ok_response?: { headers: HeaderValueOption[]; headers_to_remove: string[]; query_parameters_to_remove: string[] };
  denied_response?: { status: { code: string }; headers: HeaderValueOption[]; body: string };
}
type Client = grpc.Client & {
  Check(req: unknown, cb: (err: grpc.ServiceError | null, res: CheckResponse) => void): void;
};
type HealthClient = grpc.Client & {
  Check(req: unknown, cb: (err: grpc.ServiceError | null, res: { status: string }) => void): void;
};

const LOAD_OPTIONS = { keepCase: true, longs: String, enums: String, defaults: true, oneofs: true } as const;
const official = protoLoader.loadSync('envoy/service/auth/v3/external_auth.proto', {
  includeDirs: [join(DEPS, 'envoy-api'), join(DEPS, 'xds'), join(DEPS, 'googleapis'), join(DEPS, 'protoc-gen-validate')],
  ...LOAD_OPTIONS,
});
// The health protocol is not an Envoy API; its standard definition ships in proto/ of this repository.
const health = protoLoader.loadSync('grpc/health/v1/health.proto', { includeDirs: [join(import.meta.dirname, '../../proto')], ...LOAD_OPTIONS });
const pkg = {
  ...(grpc.loadPackageDefinition(official) as unknown as {
    envoy: { service: { auth: { v3: { Authorization: new (address: string, creds: grpc.ChannelCredentials) => Client } } } };
  }),
  ...(grpc.loadPackageDefinition(health) as unknown as {
    grpc: { health: { v1: { Health: new (address: string, creds: grpc.ChannelCredentials) => HealthClient } } };
  }),
};

let idp: TestProvider;
let sidecar: TestSidecar;
let client: Client;
let dir: string;
let readerToken: string;

function check(client_: Client, http: Record<string, unknown>, source: Record<string, unknown> = {}): Promise<CheckResponse> {
  return new Promise((resolve, reject) => {
    client_.Check({ attributes: { source, request: { http: { method: 'GET', host: 'shop.example', scheme: 'https', protocol: 'HTTP/1.1', ...http } } } }, (err, res) =>
      err ? reject(err) : resolve(res),
    );
  });
}

function headerOf(options: HeaderValueOption[] | undefined, key: string): HeaderValueOption | undefined {
  return options?.find((o) => o.header.key === key);
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'authz-grpc-'));
  idp = await startTestProvider({
    clients: [{ clientId: 'reader-app', clientSecret: 'reader-secret-0123456789abcdef', roles: ['reader'] }],
    audiences: [AUDIENCE],
  });
  sidecar = await startTestSidecar({
    upstream: { url: `http://127.0.0.1:${await freePort()}` },
    extAuthz: { grpc: { listen: '127.0.0.1:0' } },
    authn: { jwt: [{ issuer: idp.issuer, audiences: [AUDIENCE], jwksUri: idp.jwksUri }] },
  });
  await waitReady(sidecar.adminUrl);
  client = new pkg.envoy.service.auth.v3.Authorization(sidecar.extAuthz.grpc ?? '', grpc.credentials.createInsecure());
  readerToken = await idp.getToken('reader-app');
});

afterAll(async () => {
  client?.close();
  await sidecar?.close();
  await idp?.close();
  await rm(dir, { recursive: true, force: true });
});

describe('Check', () => {
  it('allows with identity headers that overwrite, and removes the token and spoofed identity headers', async () => {
    const res = await check(client, {
      path: '/orders/42?expand=items',
      headers: { authorization: `Bearer ${readerToken}`, 'x-auth-subject': 'root', 'x-auth-tenant': 'evil', 'x-request-id': 'req-1' },
    });
    expect(res.status.code).toBe(0);
    expect(res.http_response).toBe('ok_response');
    const subject = headerOf(res.ok_response?.headers, 'x-auth-subject');
    expect(subject?.header.value).toBe('reader-app');
    expect(subject?.append?.value).toBe(false);
    expect(subject?.append_action).toBe('OVERWRITE_IF_EXISTS_OR_ADD');
    expect(headerOf(res.ok_response?.headers, 'x-auth-roles')?.header.value).toBe('reader');
    expect(headerOf(res.ok_response?.headers, 'x-auth-issuer')?.header.value).toBe(idp.issuer);
    // Every header the sidecar owns and does not set goes (seen in the check or not), and spoofed ones seen.
    expect(res.ok_response?.headers_to_remove.sort()).toEqual(['authorization', 'x-auth-scopes', 'x-auth-tenant', 'x-http-method', 'x-http-method-override', 'x-method-override', 'x-original-url', 'x-rewrite-url', 'x_auth_issuer', 'x_auth_roles', 'x_auth_scopes', 'x_auth_subject', 'x_http_method', 'x_http_method_override', 'x_method_override', 'x_original_url', 'x_rewrite_url']);
    // Never remove a header the sidecar sets: Envoy applies removals after additions.
    expect(res.ok_response?.headers_to_remove).not.toContain('x-auth-subject');
  });

  it('denies without a token as a successful RPC: status 16, denied_response 401 with a Bearer challenge', async () => {
    const res = await check(client, { path: '/orders/42', headers: {} });
    expect(res.status.code).toBe(16);
    expect(res.http_response).toBe('denied_response');
    expect(res.denied_response?.status.code).toBe('Unauthorized');
    expect(headerOf(res.denied_response?.headers, 'www-authenticate')?.header.value).toBe('Bearer realm="authz-sidecar"');
    expect(headerOf(res.denied_response?.headers, 'content-type')?.header.value).toBe('application/problem+json');
    expect(JSON.parse(res.denied_response?.body ?? '{}')).toMatchObject({ status: 401, code: 'CREDENTIALS_MISSING' });
  });

  it('denies an invalid token with 16 and invalid_token', async () => {
    const res = await check(client, { path: '/orders/42', headers: { authorization: `Bearer ${readerToken}x` } });
    expect(res.status.code).toBe(16);
    expect(headerOf(res.denied_response?.headers, 'www-authenticate')?.header.value).toContain('error="invalid_token"');
  });

  it('denies a role without permission: status 7, denied_response 403', async () => {
    const res = await check(client, { method: 'DELETE', path: '/orders/42', headers: { authorization: `Bearer ${readerToken}` } });
    expect(res.status.code).toBe(7);
    expect(res.denied_response?.status.code).toBe('Forbidden');
    expect(JSON.parse(res.denied_response?.body ?? '{}')).toMatchObject({ status: 403, code: 'POLICY_DENIED' });
  });

  it.each([
    // Envoy forwards the raw path: what would need normalizing is refused, never authorized in another form.
    ['/public/%2e%2e/orders/1', 3, 'PATH_NOT_CANONICAL'],
    ['/public/./../orders/1', 3, 'PATH_NOT_CANONICAL'],
    ['//public//x', 3, 'PATH_NOT_CANONICAL'],
    ['/public/a/../b', 3, 'PATH_NOT_CANONICAL'],
    ['/public/a%2fb', 3, 'PATH_ENCODED_SLASH'],
    ['/public/..;/orders/1', 3, 'PATH_SEMICOLON'],
    ['/public/%7Ea?q=/../../orders', 0, undefined],
    ['/orders/%34%32', 16, undefined],
  ])('applies the canonical path rules to the raw path %s (status %i)', async (path, code, reason) => {
    const res = await check(client, { path, headers: {} });
    expect(res.status.code).toBe(code);
    if (code === 3) {
      expect(res.denied_response?.status.code).toBe('BadRequest');
      expect(JSON.parse(res.denied_response?.body ?? '{}')).toMatchObject({ code: reason });
    }
  });

  it('reads headers from header_map too (newer Envoy)', async () => {
    const res = await check(client, {
      path: '/orders/1',
      headers: {},
      header_map: { headers: [{ key: 'authorization', raw_value: Buffer.from(`Bearer ${readerToken}`) }] },
    });
    expect(res.status.code).toBe(0);
  });

  it('answers 400 as a denied response when there is no HTTP request in the check', async () => {
    const res = await new Promise<CheckResponse>((resolve, reject) => client.Check({ attributes: {} }, (err, r) => (err ? reject(err) : resolve(r))));
    expect(res.status.code).toBe(3);
    expect(res.denied_response?.status.code).toBe('BadRequest');
  });
});

describe('Health', () => {
  it('is SERVING when ready, NOT_SERVING when not', async () => {
    const health = new pkg.grpc.health.v1.Health(sidecar.extAuthz.grpc ?? '', grpc.credentials.createInsecure());
    const serving = await new Promise<{ status: string }>((resolve, reject) => health.Check({ service: '' }, (e, r) => (e ? reject(e) : resolve(r))));
    expect(serving.status).toBe('SERVING');
    health.close();

    const notReady = await startTestSidecar({
      upstream: { url: `http://127.0.0.1:${await freePort()}` },
      extAuthz: { grpc: { listen: '127.0.0.1:0' } },
      authn: { jwt: [{ issuer: 'http://127.0.0.1:1/none', audiences: [AUDIENCE], jwksUri: `http://127.0.0.1:${await freePort()}/jwks` }] },
    });
    const h2 = new pkg.grpc.health.v1.Health(notReady.extAuthz.grpc ?? '', grpc.credentials.createInsecure());
    try {
      const status = await new Promise<{ status: string }>((resolve, reject) => h2.Check({ service: '' }, (e, r) => (e ? reject(e) : resolve(r))));
      expect(status.status).toBe('NOT_SERVING');
    } finally {
      h2.close();
      await notReady.close();
    }
  });
});

describe('SPIFFE principal', () => {
  it('is the peer request field, usable in the policy', async () => {
    const model = join(dir, 'peer-model.conf');
    const policy = join(dir, 'peer-policy.csv');
    await writeFile(
      model,
      '[request_definition]\nr = sub, obj, act, peer\n[policy_definition]\np = sub, obj, act\n[role_definition]\ng = _, _\n' +
        '[policy_effect]\ne = some(where (p.eft == allow))\n[matchers]\nm = (g(r.sub, p.sub) || r.peer == p.sub) && keyMatch2(r.obj, p.obj) && r.act == p.act\n',
    );
    await writeFile(policy, 'p, spiffe://cluster.local/ns/shop/sa/checkout, /internal/*, POST\n');
    const peerSidecar = await startTestSidecar({
      upstream: { url: `http://127.0.0.1:${await freePort()}` },
      extAuthz: { grpc: { listen: '127.0.0.1:0' } },
      authz: { model, policy, request: ['subject', 'path', 'method', 'peer'] },
    });
    const c = new pkg.envoy.service.auth.v3.Authorization(peerSidecar.extAuthz.grpc ?? '', grpc.credentials.createInsecure());
    try {
      const allowed = await check(c, { method: 'POST', path: '/internal/charge', headers: {} }, { principal: 'spiffe://cluster.local/ns/shop/sa/checkout' });
      expect(allowed.status.code).toBe(0);
      const other = await check(c, { method: 'POST', path: '/internal/charge', headers: {} }, { principal: 'spiffe://cluster.local/ns/shop/sa/frontend' });
      expect(other.status.code).toBe(16);
      const none = await check(c, { method: 'POST', path: '/internal/charge', headers: {} });
      expect(none.status.code).toBe(16);
    } finally {
      c.close();
      await peerSidecar.close();
    }
  });
});
