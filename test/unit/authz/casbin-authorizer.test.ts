import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  createCasbinAuthorizer,
  PolicyLoadError,
  type CasbinAuthorizer,
  type CasbinAuthorizerOptions,
} from '../../../src/authz/casbin-authorizer.js';
import { headerMap, type AccessRequest } from '../../../src/core/access-request.js';
import { copyClaims, type Identity } from '../../../src/core/identity.js';
import { RBAC_MODEL } from '../../support/models.js';


const RBAC_POLICY = `
p, anonymous, /public/*, GET
p, role:reader, /orders/:id, GET
p, role:writer, /orders, POST
p, role:admin, /admin/*, *
p, user:alice, /me, GET
g, role:admin, role:reader
g, user:carol, role:writer
`;

/** A model without roles whose second request field is compared verbatim: checks what fills r. */
const FIELD_MODEL = `
[request_definition]
r = sub, val

[policy_definition]
p = sub, val

[policy_effect]
e = some(where (p.eft == allow))

[matchers]
m = r.sub == p.sub && r.val == p.val
`;

let dir: string;
let counter = 0;

async function write(text: string, name = `f-${counter++}`): Promise<string> {
  const file = join(dir, name);
  await writeFile(file, text);
  return file;
}

async function authorizer(model: string, policy: string, options: Partial<CasbinAuthorizerOptions> = {}): Promise<CasbinAuthorizer> {
  return createCasbinAuthorizer({ modelPath: await write(model), policyPath: await write(policy), ...options });
}

function request(overrides: Partial<AccessRequest> = {}): AccessRequest {
  return {
    frontDoor: 'proxy',
    method: 'GET',
    path: '/',
    query: undefined,
    host: 'orders.example.com',
    headers: headerMap([]),
    peer: '',
    requestId: 'req-1',
    ...overrides,
  };
}

function user(subject: string, roles: string[] = [], claims: Record<string, unknown> = {}): Identity {
  return { anonymous: false, subject, issuer: 'https://idp.example.com', roles, scopes: [], claims: copyClaims({ sub: subject, ...claims }) };
}

const ANONYMOUS: Identity = { anonymous: true, subject: 'anonymous', issuer: undefined, roles: [], scopes: [], claims: copyClaims({}) };

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'authz-casbin-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('createCasbinAuthorizer: RBAC', () => {
  let authz: CasbinAuthorizer;
  beforeAll(async () => {
    authz = await authorizer(RBAC_MODEL, RBAC_POLICY);
  });

  const cases: Array<{ name: string; identity: Identity; method: string; path: string; allowed: boolean; policy?: string[] }> = [
    { name: 'token role reader may GET an order', identity: user('bob', ['reader']), method: 'GET', path: '/orders/42', allowed: true, policy: ['role:reader', '/orders/:id', 'GET'] },
    { name: 'token role reader may not POST', identity: user('bob', ['reader']), method: 'POST', path: '/orders', allowed: false },
    { name: 'no roles, no access', identity: user('bob'), method: 'GET', path: '/orders/42', allowed: false },
    { name: 'an unknown role grants nothing', identity: user('bob', ['auditor']), method: 'GET', path: '/orders/42', allowed: false },
    { name: 'token role admin inherits reader through a g line', identity: user('bob', ['admin']), method: 'GET', path: '/orders/42', allowed: true, policy: ['role:reader', '/orders/:id', 'GET'] },
    { name: 'token role admin has its own lines', identity: user('bob', ['admin']), method: 'DELETE', path: '/admin/users', allowed: true, policy: ['role:admin', '/admin/*', '*'] },
    { name: 'inheritance goes one way: reader is not admin', identity: user('bob', ['reader']), method: 'GET', path: '/admin/users', allowed: false },
    { name: 'a user g line in the policy still applies', identity: user('carol'), method: 'POST', path: '/orders', allowed: true, policy: ['role:writer', '/orders', 'POST'] },
    { name: 'user lines match the prefixed subject', identity: user('alice'), method: 'GET', path: '/me', allowed: true, policy: ['user:alice', '/me', 'GET'] },
    { name: 'sub "admin" without roles is user:admin, not role:admin', identity: user('admin'), method: 'GET', path: '/admin/users', allowed: false },
    { name: 'sub "role:admin" is user:role:admin, not role:admin', identity: user('role:admin'), method: 'GET', path: '/admin/users', allowed: false },
    { name: 'sub "reader" does not inherit from admin', identity: user('reader'), method: 'GET', path: '/orders/42', allowed: false },
    { name: 'anonymous subject is not prefixed', identity: ANONYMOUS, method: 'GET', path: '/public/logo.png', allowed: true, policy: ['anonymous', '/public/*', 'GET'] },
    { name: 'anonymous may not read orders', identity: ANONYMOUS, method: 'GET', path: '/orders/42', allowed: false },
    { name: 'a token subject named "anonymous" is user:anonymous', identity: user('anonymous'), method: 'GET', path: '/public/logo.png', allowed: false },
    { name: 'HEAD is authorized as GET', identity: user('bob', ['reader']), method: 'HEAD', path: '/orders/42', allowed: true, policy: ['role:reader', '/orders/:id', 'GET'] },
    { name: 'HEAD for anonymous too', identity: ANONYMOUS, method: 'HEAD', path: '/public/x', allowed: true, policy: ['anonymous', '/public/*', 'GET'] },
    { name: 'HEAD does not turn a POST-only line into access', identity: user('carol'), method: 'HEAD', path: '/orders', allowed: false },
  ];
  it.each(cases)('$name', ({ identity, method, path, allowed, policy }) => {
    const result = authz.authorize(request({ method, path }), identity);
    expect(result.allowed).toBe(allowed);
    expect(result.policy).toEqual(allowed ? policy : undefined);
  });

  it('token roles are request-scoped: they never leak into the next request', () => {
    const order = request({ path: '/orders/42' });
    expect(authz.authorize(order, user('bob', ['reader'])).allowed).toBe(true);
    expect(authz.authorize(order, user('bob')).allowed).toBe(false);
    expect(authz.authorize(order, user('bob', ['admin'])).allowed).toBe(true);
    expect(authz.authorize(order, user('bob')).allowed).toBe(false);
    // Nor to another subject.
    expect(authz.authorize(order, user('bob', ['reader'])).allowed).toBe(true);
    expect(authz.authorize(order, user('dave')).allowed).toBe(false);
  });

  it('reports nothing missing', () => {
    expect(authz.missing()).toEqual([]);
  });
});

describe('createCasbinAuthorizer: prefixes', () => {
  it('uses configured prefixes', async () => {
    const authz = await authorizer(RBAC_MODEL, 'p, group/reader, /orders/:id, GET\np, u/alice, /me, GET\n', { subjectPrefix: 'u/', rolePrefix: 'group/' });
    expect(authz.authorize(request({ path: '/orders/1' }), user('bob', ['reader'])).allowed).toBe(true);
    expect(authz.authorize(request({ path: '/me' }), user('alice')).allowed).toBe(true);
    expect(authz.authorize(request({ path: '/orders/1' }), user('bob', ['role:reader'])).allowed).toBe(false);
  });

  it('rejects subjectPrefix equal to rolePrefix', async () => {
    await expect(authorizer(RBAC_MODEL, RBAC_POLICY, { subjectPrefix: 'x:', rolePrefix: 'x:' })).rejects.toThrow(TypeError);
  });

  it('rejects two empty prefixes (the defaults made equal)', async () => {
    await expect(authorizer(RBAC_MODEL, RBAC_POLICY, { subjectPrefix: '', rolePrefix: '' })).rejects.toThrow(TypeError);
  });
});

describe('createCasbinAuthorizer: request fields', () => {
  const cases: Array<{
    name: string;
    field: NonNullable<CasbinAuthorizerOptions['request']>[number];
    expected: string;
    request?: Partial<AccessRequest>;
    claims?: Record<string, unknown>;
  }> = [
    { name: 'claim with a dotted path', field: 'claim:org.tenant', expected: 'acme', claims: { org: { tenant: 'acme' } } },
    { name: 'number claim', field: 'claim:level', expected: '3', claims: { level: 3 } },
    { name: 'boolean claim', field: 'claim:email_verified', expected: 'true', claims: { email_verified: true } },
    { name: 'missing claim is empty', field: 'claim:org.tenant', expected: '', claims: {} },
    { name: 'array claim is empty', field: 'claim:org', expected: '', claims: { org: ['acme'] } },
    { name: 'header (name in any case)', field: 'header:X-Env', expected: 'prod', request: { headers: headerMap([['x-env', 'prod']]) } },
    { name: 'missing header is empty', field: 'header:x-env', expected: '', request: { headers: headerMap([]) } },
    { name: 'repeated header values joined', field: 'header:x-env', expected: 'a, b', request: { headers: headerMap([['x-env', ['a', 'b']]]) } },
    { name: 'host', field: 'host', expected: 'orders.example.com' },
    { name: 'peer', field: 'peer', expected: 'spiffe://cluster.local/ns/shop/sa/web', request: { peer: 'spiffe://cluster.local/ns/shop/sa/web' } },
    { name: 'path', field: 'path', expected: '/orders/1', request: { path: '/orders/1' } },
    { name: 'method', field: 'method', expected: 'DELETE', request: { method: 'DELETE' } },
  ];
  it.each(cases)('$name', async ({ field, expected, request: overrides = {}, claims = {} }) => {
    // CSV quoting keeps values with commas or spaces in one field.
    const policy = `p, user:alice, "${expected}"\np, user:alice, "__other__"\n`;
    const authz = await authorizer(FIELD_MODEL, policy, { request: ['subject', field] });
    const result = authz.authorize(request(overrides), user('alice', [], claims));
    expect(result.allowed).toBe(true);
    expect(result.policy).toEqual(['user:alice', expected]);

    const mismatch = await authorizer(FIELD_MODEL, 'p, user:alice, "__other__"\n', { request: ['subject', field] });
    expect(mismatch.authorize(request(overrides), user('alice', [], claims)).allowed).toBe(false);
  });

  it('a model without role_definition works and sees the prefixed subject', async () => {
    const authz = await authorizer(FIELD_MODEL, 'p, user:alice, /x\n', { request: ['subject', 'path'] });
    expect(authz.authorize(request({ path: '/x' }), user('alice', ['admin'])).allowed).toBe(true);
    expect(authz.authorize(request({ path: '/x' }), user('bob', ['admin'])).allowed).toBe(false);
  });
});

describe('createCasbinAuthorizer: loading', () => {
  async function loadError(promise: Promise<unknown>): Promise<PolicyLoadError> {
    const err: unknown = await promise.then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(PolicyLoadError);
    return err as PolicyLoadError;
  }

  it('arity mismatch between the model r and `request` is a model error naming authz.request', async () => {
    const err = await loadError(authorizer(RBAC_MODEL, RBAC_POLICY, { request: ['subject', 'path'] }));
    expect(err.file).toBe('model');
    expect(err.configKey).toBe('authz.request');
    expect(err.message).toContain('3');
    expect(err.message).toContain('2');
  });

  it('arity mismatch the other way', async () => {
    const err = await loadError(authorizer(FIELD_MODEL, '', { request: ['subject', 'path', 'method'] }));
    expect(err.file).toBe('model');
  });

  it('an unreadable policy is a policy error', async () => {
    const err = await loadError(createCasbinAuthorizer({ modelPath: await write(RBAC_MODEL), policyPath: join(dir, 'no-such-policy.csv') }));
    expect(err.file).toBe('policy');
    expect(err.configKey).toBe('authz.policy');
    expect(err.cause).toBeInstanceOf(Error);
  });

  it('a policy that is a directory is a policy error', async () => {
    const err = await loadError(createCasbinAuthorizer({ modelPath: await write(RBAC_MODEL), policyPath: dir }));
    expect(err.file).toBe('policy');
  });

  it('a model casbin cannot read is a policy error with code POLICY_INVALID and casbin\'s error as cause', async () => {
    const broken = FIELD_MODEL.replace(/\[policy_effect\][^[]*/, '');
    const err = await loadError(authorizer(broken, 'p, alice, x\n'));
    expect(err.code).toBe('POLICY_INVALID');
    expect(err.file).toBe('policy');
    expect(err.configKey).toBe('authz.policy');
    expect(err.cause).toBeInstanceOf(Error);
    expect(err.cause).not.toBeInstanceOf(PolicyLoadError);
    // The message is ours and still carries casbin's words; the cause is casbin's error itself.
    expect(err.message).toBe(`cannot load the Casbin model and policy: ${(err.cause as Error).message}`);
  });

  it('a lint failure has code POLICY_INVALID and no cause (no library error behind it)', async () => {
    const err = await loadError(authorizer(RBAC_MODEL, RBAC_POLICY, { request: ['subject', 'path'] }));
    expect(err.code).toBe('POLICY_INVALID');
    expect(err.cause).toBeUndefined();
  });

  it('an unreadable model keeps the fs error (ENOENT) as cause', async () => {
    const err = await loadError(createCasbinAuthorizer({ modelPath: join(dir, 'no-such-model.conf'), policyPath: await write(RBAC_POLICY) }));
    expect(err.code).toBe('POLICY_INVALID');
    expect((err.cause as NodeJS.ErrnoException).code).toBe('ENOENT');
  });

  it('an unreadable model is a model error', async () => {
    const err = await loadError(createCasbinAuthorizer({ modelPath: join(dir, 'no-such-model.conf'), policyPath: await write(RBAC_POLICY) }));
    expect(err.file).toBe('model');
    expect(err.configKey).toBe('authz.model');
  });

  it('sha256 is 64 hex characters, stable for the same text and changes with the policy', async () => {
    const a = await authorizer(RBAC_MODEL, RBAC_POLICY);
    const b = await authorizer(RBAC_MODEL, RBAC_POLICY);
    const c = await authorizer(RBAC_MODEL, `${RBAC_POLICY}p, role:reader, /reports, GET\n`);
    const d = await authorizer(RBAC_MODEL.replace('keyMatch2', 'keyMatch'), RBAC_POLICY);
    expect(a.sha256).toMatch(/^[0-9a-f]{64}$/);
    expect(b.sha256).toBe(a.sha256);
    expect(c.sha256).not.toBe(a.sha256);
    expect(d.sha256).not.toBe(a.sha256);
  });
});
