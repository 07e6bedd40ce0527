import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { exportJWK, generateKeyPair, SignJWT, type JWK } from 'jose';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { createCredentialExtractor, type TokenSource } from '../../../src/authn/credentials.js';
import { createIdentityMapper } from '../../../src/authn/identity-mapping.js';
import { createJwtAuthenticator } from '../../../src/authn/jwt.js';
import { createCasbinAuthorizer } from '../../../src/authz/casbin-authorizer.js';
import { headerMap, type WireRequest } from '../../../src/core/access-request.js';
import { createDecisionEngine, type DecisionEngine } from '../../../src/core/decide.js';
import type { Decision } from '../../../src/core/decision.js';
import type { ReasonCode } from '../../../src/core/errors.js';
import { createIdentityHeaders } from '../../../src/core/identity-headers.js';
import { RBAC_MODEL } from '../../support/models.js';

const ISSUER = 'https://idp.example.com/realms/demo';
const AUDIENCE = 'orders-api';
const NOW = new Date('2030-01-01T00:00:00Z');
const NOW_S = Math.floor(NOW.getTime() / 1000);


const POLICY = `
p, anonymous, /public/*, GET
p, role:reader, /orders/:id, GET
p, role:admin, /admin/*, *
g, role:admin, role:reader
`;

/** A matcher that calls a function Casbin does not know: evaluating it throws. */
const THROWING_MODEL = RBAC_MODEL.replace('m = g(r.sub, p.sub)', 'm = noSuchFunction(r.obj) && g(r.sub, p.sub)');

const KEY = await generateKeyPair('RS256');
const OTHER_KEY = await generateKeyPair('RS256');
const JWKS = { keys: [{ ...(await exportJWK(KEY.publicKey)), kid: 'k1', alg: 'RS256', use: 'sig' } as JWK] };

async function token(overrides: Record<string, unknown> = {}, signWith = KEY.privateKey, header: Record<string, unknown> = {}): Promise<string> {
  const claims: Record<string, unknown> = { iss: ISSUER, aud: AUDIENCE, sub: 'alice', iat: NOW_S, exp: NOW_S + 300 };
  for (const [name, value] of Object.entries(overrides)) {
    if (value === undefined) delete claims[name];
    else claims[name] = value;
  }
  return new SignJWT(claims).setProtectedHeader({ alg: 'RS256', kid: 'k1', ...header }).sign(signWith);
}

let dir: string;
let files = 0;
const engines: DecisionEngine[] = [];

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'authz-decide-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});
afterEach(() => {
  for (const e of engines.splice(0)) e.close();
});

interface EngineOptions {
  readonly model?: string;
  readonly policy?: string;
  readonly forwardToken?: boolean;
  readonly tokenFrom?: readonly TokenSource[];
  readonly realm?: string;
}

async function engine(options: EngineOptions = {}): Promise<DecisionEngine> {
  const modelPath = join(dir, `model-${files}.conf`);
  const policyPath = join(dir, `policy-${files++}.csv`);
  await writeFile(modelPath, options.model ?? RBAC_MODEL);
  await writeFile(policyPath, options.policy ?? POLICY);
  const e = createDecisionEngine({
    paths: { encodedSlashes: 'reject', semicolons: 'reject' },
    credentials: createCredentialExtractor(options.tokenFrom),
    authenticators: [createJwtAuthenticator([{ issuer: ISSUER, audiences: [AUDIENCE], keys: { jwks: JWKS } }], { now: () => NOW })],
    identity: createIdentityMapper({}),
    authorizer: await createCasbinAuthorizer({ modelPath, policyPath }),
    identityHeaders: createIdentityHeaders({
      prefix: 'x-auth-',
      subject: 'x-auth-subject',
      issuer: 'x-auth-issuer',
      roles: 'x-auth-roles',
      scopes: 'x-auth-scopes',
      claims: { 'x-user-email': 'email' },
    }),
    forwardToken: options.forwardToken ?? false,
    ...(options.realm === undefined ? {} : { realm: options.realm }),
  });
  engines.push(e);
  return e;
}

function wire(target: string, headers: Array<[string, string | string[]]> = [], method = 'GET'): WireRequest {
  return { frontDoor: 'proxy', method, target, host: 'orders.example.com', headers: headerMap(headers), peer: '', requestId: 'req-1', rewritesPath: true, removesHeaders: true };
}

function bearer(t: string): [string, string] {
  return ['authorization', `Bearer ${t}`];
}

describe('decide: allow', () => {
  it('allows a reader and sets identity headers from the token', async () => {
    const e = await engine();
    const d = await e.decide(wire('/orders/42', [bearer(await token({ roles: ['reader'], email: 'alice@example.com', scope: 'openid orders' }))]));
    expect(d.outcome).toBe('allow');
    expect(d.status).toBe(200);
    expect(d.reason).toBe('ALLOWED');
    expect(d.policy).toEqual(['role:reader', '/orders/:id', 'GET']);
    expect(d.answer.headers).toEqual({});
    expect(d.upstream.set).toEqual({
      'x-auth-subject': 'alice',
      'x-auth-issuer': ISSUER,
      'x-auth-roles': 'reader',
      'x-auth-scopes': 'openid,orders',
      'x-user-email': 'alice@example.com',
    });
    expect(d.identity?.subject).toBe('alice');
    expect(d.request?.path).toBe('/orders/42');
    expect(d.requestId).toBe('req-1');
  });

  it('authorizes HEAD as GET and canonicalizes the path first', async () => {
    const e = await engine();
    const d = await e.decide(wire('/public/../orders/./42', [bearer(await token({ roles: ['admin'] }))], 'HEAD'));
    expect(d.outcome).toBe('allow');
    expect(d.request?.path).toBe('/orders/42');
    expect(d.upstream.set['x-auth-roles']).toBe('admin');
  });

  it('allows anonymous where the policy allows it, with no identity headers', async () => {
    const e = await engine();
    const d = await e.decide(wire('/public/logo.png'));
    expect(d.outcome).toBe('allow');
    expect(d.identity?.anonymous).toBe(true);
    expect(d.upstream.set).toEqual({});
  });
});

describe('decide: unauthenticated', () => {
  it('answers 401 with a bare challenge when no token came', async () => {
    const e = await engine();
    const d = await e.decide(wire('/orders/42'));
    expect(d.outcome).toBe('unauthenticated');
    expect(d.status).toBe(401);
    expect(d.reason).toBe('CREDENTIALS_MISSING');
    expect(d.answer.headers).toEqual({ 'www-authenticate': 'Bearer realm="authz-sidecar"', 'content-type': 'application/problem+json' });
    expect(d.answer.status).toBe(401);
    expect(JSON.parse(d.answer.body)).toMatchObject({ status: 401, code: 'CREDENTIALS_MISSING' });
    expect(d.upstream.set).toEqual({});
  });

  it('uses the configured realm, stripped of quotes', async () => {
    const e = await engine({ realm: 'orders "api"' });
    const d = await e.decide(wire('/orders/42'));
    expect(d.answer.headers['www-authenticate']).toBe('Bearer realm="orders api"');
  });

  // Each token is invalid; /public/* is open to anonymous, so a downgrade to anonymous would allow.
  const invalid: Array<[name: string, make: () => Promise<string>, reason: ReasonCode]> = [
    ['expired', () => token({ exp: NOW_S - 3600, iat: NOW_S - 7200 }), 'TOKEN_EXPIRED'],
    ['another audience', () => token({ aud: 'billing-api' }), 'TOKEN_AUDIENCE'],
    ['bad signature', () => token({}, OTHER_KEY.privateKey), 'TOKEN_INVALID'],
    ['unknown issuer', () => token({ iss: 'https://evil.example.com' }), 'TOKEN_ISSUER'],
    ['opaque string no authenticator takes', () => Promise.resolve('opaque-token-123'), 'TOKEN_ISSUER'],
    ['alg none', () => Promise.resolve(`${Buffer.from('{"alg":"none"}').toString('base64url')}.${Buffer.from(JSON.stringify({ iss: ISSUER, aud: AUDIENCE, sub: 'alice', exp: NOW_S + 60 })).toString('base64url')}.`), 'TOKEN_INVALID'],
    ['no subject', () => token({ sub: undefined }), 'TOKEN_CLAIMS'],
    ['numeric subject', () => token({ sub: 42 }), 'TOKEN_CLAIMS'],
  ];
  it.each(invalid)('an invalid token (%s) is a 401 invalid_token, never anonymous', async (_name, make, reason) => {
    const e = await engine();
    const t = await make();
    const d = await e.decide(wire('/public/logo.png', [bearer(t)]));
    expect(d.outcome).toBe('unauthenticated');
    expect(d.status).toBe(401);
    expect(d.reason).toBe(reason);
    const challenge = d.answer.headers['www-authenticate'];
    expect(challenge).toMatch(/^Bearer realm="authz-sidecar", error="invalid_token", error_description="[^"]*"$/);
    expect(challenge).not.toContain(t);
    expect(d.detail).not.toContain(t);
    expect(d.upstream.set).toEqual({});
  });
  it('an allowed identity that cannot be rendered as headers is a 401, not a 500', async () => {
    const e = await engine();
    const d = await e.decide(wire('/orders/42', [bearer(await token({ sub: 'alice\uD800', roles: ['reader'] }))]));
    expect(d.outcome).toBe('unauthenticated');
    expect(d.status).toBe(401);
    expect(d.reason).toBe('IDENTITY_UNRENDERABLE');
    expect(d.answer.headers['www-authenticate']).toContain('error="invalid_token"');
    expect(d.upstream.set).toEqual({});
  });
});

describe('decide: forbidden', () => {
  it('answers 403 when the policy denies an authenticated caller', async () => {
    const e = await engine();
    const d = await e.decide(wire('/admin/users', [bearer(await token({ roles: ['reader'] }))]));
    expect(d.outcome).toBe('forbidden');
    expect(d.status).toBe(403);
    expect(d.reason).toBe('POLICY_DENIED');
    expect(d.answer.headers).toEqual({ 'content-type': 'application/problem+json' });
    expect(JSON.parse(d.answer.body)).toMatchObject({ status: 403, code: 'POLICY_DENIED', requestId: 'req-1' });
    expect(d.upstream.set).toEqual({});
    expect(d.identity?.subject).toBe('alice');
  });

  it('a token subject named like a role gets no role rights', async () => {
    const e = await engine();
    const d = await e.decide(wire('/admin/users', [bearer(await token({ sub: 'role:admin' }))]));
    expect(d.outcome).toBe('forbidden');
  });

  it('a policy that throws while evaluating is POLICY_ERROR 403, never allow', async () => {
    const e = await engine({ model: THROWING_MODEL });
    const withToken = await e.decide(wire('/orders/42', [bearer(await token({ roles: ['reader'] }))]));
    expect(withToken.outcome).toBe('forbidden');
    expect(withToken.status).toBe(403);
    expect(withToken.reason).toBe('POLICY_ERROR');
    expect(withToken.upstream.set).toEqual({});
    const anonymous = await e.decide(wire('/public/logo.png'));
    expect(anonymous.reason).toBe('POLICY_ERROR');
  });
});

describe('decide: bad requests', () => {
  const badPaths: Array<[target: string, reason: ReasonCode]> = [
    ['/orders%2F42', 'PATH_ENCODED_SLASH'],
    ['/orders\\42', 'PATH_BACKSLASH'],
    ['/orders;x=1/42', 'PATH_SEMICOLON'],
    ['/orders/%zz', 'PATH_BAD_ENCODING'],
    ['/orders/%00', 'PATH_CONTROL_CHAR'],
    ['/orders/42#frag', 'PATH_FRAGMENT'],
    ['*', 'PATH_TARGET_FORM'],
  ];
  it.each(badPaths)('%s -> 400 %s with no request', async (target, reason) => {
    const e = await engine();
    const d = await e.decide(wire(target, [bearer(await token({ roles: ['admin'] }))]));
    expect(d.outcome).toBe('badRequest');
    expect(d.status).toBe(400);
    expect(d.reason).toBe(reason);
    expect(d.request).toBeUndefined();
    expect(d.identity).toBeUndefined();
    expect(d.upstream.set).toEqual({});
  });

  it('two Authorization headers -> 400 CREDENTIALS_CONFLICT', async () => {
    const e = await engine();
    const d = await e.decide(wire('/orders/42', [['authorization', [`Bearer ${await token({ roles: ['reader'] })}`, `Bearer ${await token({ sub: 'bob' })}`]]]));
    expect(d.outcome).toBe('badRequest');
    expect(d.status).toBe(400);
    expect(d.reason).toBe('CREDENTIALS_CONFLICT');
    expect(d.request?.path).toBe('/orders/42');
    expect(d.answer.headers['www-authenticate']).toContain('error="invalid_request"');
  });

  it('Authorization plus a custom token header with another token -> 400', async () => {
    const e = await engine({ tokenFrom: [{ header: 'authorization' }, { header: 'x-access-token' }] });
    const d = await e.decide(wire('/orders/42', [bearer(await token({ roles: ['reader'] })), ['x-access-token', await token({ sub: 'bob' })]]));
    expect(d.outcome).toBe('badRequest');
    expect(d.reason).toBe('CREDENTIALS_CONFLICT');
  });

  it('a non-Bearer Authorization header -> 400 CREDENTIALS_MALFORMED, not anonymous', async () => {
    const e = await engine();
    const d = await e.decide(wire('/public/logo.png', [['authorization', 'Basic YWxpY2U6c2VjcmV0']]));
    expect(d.outcome).toBe('badRequest');
    expect(d.reason).toBe('CREDENTIALS_MALFORMED');
  });
});

describe('decide: client identity headers', () => {
  const spoofed: Array<[string, string]> = [
    ['x-auth-subject', 'admin'],
    ['X_Auth_Roles', 'admin'],
    ['X-AUTH-ISSUER', 'https://evil.example.com'],
    ['x-auth-whatever', '1'],
    ['X-User-Email', 'admin@example.com'],
  ];

  function names(d: Decision): string[] {
    return Object.keys(d.request?.headers ?? {}).sort();
  }

  it('removes them from the request before anything else, and renders only the verified identity', async () => {
    const e = await engine();
    const d = await e.decide(wire('/orders/42', [['accept', 'application/json'], ...spoofed, bearer(await token({ roles: ['reader'] }))]));
    expect(d.outcome).toBe('allow');
    expect(names(d)).toEqual(['accept', 'authorization']);
    expect(d.upstream.set).toEqual({ 'x-auth-subject': 'alice', 'x-auth-issuer': ISSUER, 'x-auth-roles': 'reader' });
    // Every spoofed header seen, and every owned one the sidecar does not set, is removed upstream; never
    // one it sets (Envoy applies removals after additions).
    const remove = new Set(d.upstream.remove);
    for (const [name] of spoofed) if (!(name.toLowerCase() in d.upstream.set)) expect(remove.has(name.toLowerCase())).toBe(true);
    for (const name of ['x-auth-scopes', 'x_auth_scopes', 'x-user-email', 'x-http-method-override', 'authorization']) expect(remove.has(name)).toBe(true);
    for (const name of Object.keys(d.upstream.set)) expect(remove.has(name)).toBe(false);
    expect(remove.size).toBe(d.upstream.remove.length);
  });

  it('refuses them with 400 on a door that cannot remove headers upstream (forward-auth)', async () => {
    const e = await engine();
    const d = await e.decide({ ...wire('/public/x', [['X_Auth_Roles', 'admin']]), removesHeaders: false });
    expect(d.outcome).toBe('badRequest');
    expect(d.detail).toContain('x_auth_roles');
    const clean = await e.decide({ ...wire('/public/x', [['accept', '*/*']]), removesHeaders: false });
    expect(clean.outcome).toBe('allow');
  });

  it('removes them on a deny too, and they grant nothing', async () => {
    const e = await engine();
    const d = await e.decide(wire('/admin/users', [['accept', '*/*'], ...spoofed]));
    expect(d.outcome).toBe('unauthenticated');
    expect(names(d)).toEqual(['accept']);
  });

});

describe('decide: engine', () => {
  it.each([
    ['default', {}, ['authorization']],
    ['forwardToken', { forwardToken: true }, []],
    ['custom token header', { tokenFrom: [{ header: 'authorization' }, { header: 'X-Access-Token' }] }, ['authorization', 'x-access-token']],
    ['custom token header with forwardToken', { tokenFrom: [{ header: 'x-access-token' }], forwardToken: true }, []],
  ] as Array<[string, EngineOptions, string[]]>)('the decision removes the token headers upstream: %s', async (_name, options, expected) => {
    const e = await engine(options);
    const t = await token({ roles: ['reader'] });
    const d = await e.decide(wire('/orders/42', [bearer(t), ['x-access-token', `Bearer ${t}`], ['accept', '*/*']]));
    expect(d.outcome).toBe('allow');
    expect(['authorization', 'x-access-token'].filter((h) => d.upstream.remove.includes(h))).toEqual(expected);
    expect(d.upstream.remove).not.toContain('accept');
  });

  it('rewrites the Cookie header without the token cookie, and removes it when nothing else is left', async () => {
    const e = await engine({ tokenFrom: [{ cookie: 'access_token' }] });
    const t = await token({ roles: ['reader'] });
    const d = await e.decide(wire('/orders/42', [['cookie', `theme=dark; access_token=${t}`]]));
    expect(d.outcome).toBe('allow');
    expect(d.upstream.set['cookie']).toBe('theme=dark');
    const only = await e.decide(wire('/orders/42', [['cookie', `access_token=${t}`]]));
    expect(only.upstream.remove).toContain('cookie');
    expect(only.upstream.set['cookie']).toBeUndefined();
  });

  it('the query forwarded loses token parameters unless forwardToken, and names them', async () => {
    const e = await engine({ tokenFrom: [{ query: 'access_token' }] });
    const t = await token({ roles: ['reader'] });
    const d = await e.decide(wire(`/orders/42?a=1&access_token=${t}&b=2`));
    expect(d.outcome).toBe('allow');
    expect(d.upstream.query).toBe('a=1&b=2');
    expect(d.upstream.removeQuery).toEqual(['access_token']);
  });

  it('is ready with local keys and a loaded policy', async () => {
    const e = await engine();
    expect(e.readiness()).toEqual({ ready: true, missing: [] });
  });

  it('a door that cannot rewrite the path refuses one that needs normalizing; the proxy forwards the canonical form', async () => {
    const e = await engine();
    const proxied = await e.decide(wire('/public/./a//b?x'));
    expect(proxied.request?.path).toBe('/public/a/b');
    const checked = await e.decide({ ...wire('/public/./a//b?x'), rewritesPath: false });
    expect(checked.reason).toBe('PATH_NOT_CANONICAL');
  });
});
