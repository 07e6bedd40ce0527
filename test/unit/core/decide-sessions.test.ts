/**
 * decide() with browser sessions (DESIGN.md §7) over a stand-in BrowserSessions: the routes answered
 * before anything else, a bearer token winning over a session, the session's claims through the same
 * identity mapping and policy, the redirect to sign in only where the door can relay it, the sidecar's
 * cookies never forwarded, Set-Cookie on the answer, and a failed session never an allow.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createCredentialExtractor } from '../../../src/authn/credentials.js';
import { createIdentityMapper } from '../../../src/authn/identity-mapping.js';
import { createCasbinAuthorizer } from '../../../src/authz/casbin-authorizer.js';
import { headerMap, type AccessRequest, type WireRequest } from '../../../src/core/access-request.js';
import { createDecisionEngine, type DecisionEngine } from '../../../src/core/decide.js';
import { copyClaims } from '../../../src/core/identity.js';
import { createIdentityHeaders } from '../../../src/core/identity-headers.js';
import type { Authenticator, BrowserSessions, SessionResult } from '../../../src/core/stages.js';
import { RBAC_MODEL } from '../../support/models.js';

const POLICY = `
p, anonymous, /public/*, GET
p, role:reader, /orders/:id, GET
p, role:writer, /orders/:id, POST
`;

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'authz-decide-sessions-'));
  await writeFile(join(dir, 'model.conf'), RBAC_MODEL);
  await writeFile(join(dir, 'policy.csv'), POLICY);
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** What the stand-in sessions saw and answer. */
interface Stub {
  result: SessionResult;
  resolved: AccessRequest[];
  routed: AccessRequest[];
  redirectAsked: boolean[];
}

function stubSessions(stub: Stub): BrowserSessions {
  return {
    isRoute: (path) => path === '/.authz' || path.startsWith('/.authz/'),
    route(request) {
      stub.routed.push(request);
      return Promise.resolve({ reason: 'SIGNIN_REDIRECT', detail: 'to the provider', answer: { status: 302, headers: { location: 'https://idp.example/auth', 'set-cookie': ['authz-s-1=x'] }, body: '' } });
    },
    resolve(request) {
      stub.resolved.push(request);
      return Promise.resolve(stub.result);
    },
    signInRedirect(_request, redirects) {
      stub.redirectAsked.push(redirects);
      return redirects ? { status: 302, headers: { location: '/.authz/start?rd=%2Forders%2F1' }, body: '' } : undefined;
    },
    scrubCookie: (value) => value.split('; ').filter((p) => !p.startsWith('authz')).join('; ') || undefined,
    missing: () => [],
    status: () => ({ store: 'cookie', up: true }),
    close: () => undefined,
  };
}

/** An authenticator that knows one token, "good", for a writer. */
const authenticator: Authenticator = {
  authenticate: (token) =>
    Promise.resolve(token === 'good' ? { kind: 'authenticated', issuer: 'https://idp', claims: copyClaims({ sub: 'bearer-user', roles: ['writer'] }) } : { kind: 'failed', reason: 'TOKEN_INVALID', detail: 'bad token' }),
  missing: () => [],
  close: () => undefined,
};

async function engine(stub: Stub, forwardToken = false): Promise<DecisionEngine> {
  return createDecisionEngine({
    paths: { encodedSlashes: 'reject', semicolons: 'reject' },
    credentials: createCredentialExtractor([{ header: 'authorization' }, { cookie: 'token' }]),
    authenticators: [authenticator],
    identity: createIdentityMapper({}),
    authorizer: await createCasbinAuthorizer({ modelPath: join(dir, 'model.conf'), policyPath: join(dir, 'policy.csv') }),
    identityHeaders: createIdentityHeaders({ prefix: 'x-auth-', subject: 'x-auth-subject', issuer: 'x-auth-issuer', roles: 'x-auth-roles', scopes: 'x-auth-scopes', claims: {} }),
    forwardToken,
    sessions: stubSessions(stub),
  });
}

function wire(target: string, headers: Array<[string, string]> = [], method = 'GET', redirects?: boolean): WireRequest {
  return {
    frontDoor: 'proxy',
    method,
    target,
    host: 'orders.example.com',
    headers: headerMap(headers),
    peer: '',
    requestId: 'r1',
    rewritesPath: true,
    removesHeaders: true,
    ...(redirects === undefined ? {} : { redirects }),
  };
}

const reader = (headers: SessionResult['headers'] = {}): SessionResult => ({
  kind: 'session',
  issuer: 'https://idp',
  claims: copyClaims({ sub: 'alice', roles: ['reader'] }),
  accessToken: 'session-access-token',
  headers,
});

function stub(result: SessionResult): Stub {
  return { result, resolved: [], routed: [], redirectAsked: [] };
}

describe('decide with browser sessions', () => {
  it('answers a sign-in route before credentials or policy, whatever the request carries', async () => {
    const s = stub(reader());
    const d = await (await engine(s)).decide(wire('/.authz/start?rd=/x', [['authorization', 'Bearer bad']]));
    expect(d.outcome).toBe('signIn');
    expect(d.status).toBe(302);
    expect(d.answer.headers['set-cookie']).toEqual(['authz-s-1=x']);
    expect(s.routed).toHaveLength(1);
    expect(s.resolved).toHaveLength(0);
  });

  it('decides on the session when no token came: its claims through the identity mapping and policy', async () => {
    const s = stub(reader());
    const d = await (await engine(s)).decide(wire('/orders/1', [['cookie', 'a=1; authz=sealed; b=2']]));
    expect(d.outcome).toBe('allow');
    expect(d.upstream.set['x-auth-subject']).toBe('alice');
    expect(d.upstream.set['x-auth-roles']).toBe('reader');
    // The sidecar's cookie is gone from what the app gets; the others stay.
    expect(d.upstream.set['cookie']).toBe('a=1; b=2');
    expect(d.upstream.set['authorization']).toBeUndefined();
    expect(d.answer.headers).toEqual({});
  });

  it('drops the Cookie header when only the sidecar cookies were in it', async () => {
    const d = await (await engine(stub(reader()))).decide(wire('/orders/1', [['cookie', 'authz.0=x; authz.1=y']]));
    expect(d.outcome).toBe('allow');
    expect(d.upstream.remove).toContain('cookie');
    expect(d.upstream.set['cookie']).toBeUndefined();
  });

  it('strips the sidecar cookies even with forwardToken, and forwards the session access token', async () => {
    const d = await (await engine(stub(reader()), true)).decide(wire('/orders/1', [['cookie', 'authz=sealed; theme=dark']]));
    expect(d.outcome).toBe('allow');
    expect(d.upstream.set['cookie']).toBe('theme=dark');
    expect(d.upstream.set['authorization']).toBe('Bearer session-access-token');
    expect(d.upstream.remove).not.toContain('authorization');
  });

  it('puts a refreshed session cookie on the allow answer', async () => {
    const d = await (await engine(stub(reader({ 'set-cookie': ['authz=new; Path=/'] })))).decide(wire('/orders/1', [['cookie', 'authz=old']]));
    expect(d.outcome).toBe('allow');
    expect(d.answer.headers['set-cookie']).toEqual(['authz=new; Path=/']);
  });

  it('lets a bearer token win: the session is not even looked at', async () => {
    const s = stub(reader());
    const good = await (await engine(s)).decide(wire('/orders/1', [['authorization', 'Bearer good'], ['cookie', 'authz=sealed']], 'POST'));
    expect(good.outcome).toBe('allow');
    expect(good.upstream.set['x-auth-subject']).toBe('bearer-user');
    const bad = await (await engine(s)).decide(wire('/orders/1', [['authorization', 'Bearer bad'], ['cookie', 'authz=sealed']]));
    expect(bad.status).toBe(401);
    expect(bad.reason).toBe('TOKEN_INVALID');
    expect(s.resolved).toHaveLength(0);
  });

  it('refuses what the session holder may not do (403), without a redirect', async () => {
    const s = stub(reader());
    const d = await (await engine(s)).decide(wire('/orders/1', [['cookie', 'authz=sealed']], 'POST'));
    expect(d.status).toBe(403);
    expect(d.reason).toBe('POLICY_DENIED');
    expect(s.redirectAsked).toEqual([]);
  });

  it('sends an unauthenticated request to sign in where the door relays a redirect, else the 401', async () => {
    const clear = { 'set-cookie': ['authz=; Max-Age=0'] };
    const s = stub({ kind: 'none', headers: clear });
    const e = await engine(s);
    const redirected = await e.decide(wire('/orders/1', [['cookie', 'authz=broken']]));
    expect(redirected.outcome).toBe('signIn');
    expect(redirected.reason).toBe('SIGNIN_REDIRECT');
    expect(redirected.status).toBe(302);
    expect(redirected.answer.headers['location']).toBe('/.authz/start?rd=%2Forders%2F1');
    // The broken cookie is cleared on the way.
    expect(redirected.answer.headers['set-cookie']).toEqual(['authz=; Max-Age=0']);
    const nginx = await e.decide(wire('/orders/1', [], 'GET', false));
    expect(nginx.status).toBe(401);
    expect(nginx.reason).toBe('CREDENTIALS_MISSING');
    expect(s.redirectAsked).toEqual([true, false]);
    // Anonymous access the policy allows needs no session.
    expect((await e.decide(wire('/public/x'))).outcome).toBe('allow');
  });

  it('never allows on a failed session: the failure is the answer', async () => {
    const d = await (await engine(stub({ kind: 'failed', reason: 'SESSION_UNAVAILABLE', detail: 'provider down', headers: {} }))).decide(wire('/public/x', [['cookie', 'authz=x']]));
    expect(d.status).toBe(503);
    expect(d.reason).toBe('SESSION_UNAVAILABLE');
    expect(d.outcome).toBe('unavailable');
    const csrf = await (await engine(stub({ kind: 'failed', reason: 'CSRF_REJECTED', detail: 'cross-site', headers: {} }))).decide(wire('/orders/1', [['cookie', 'authz=x']], 'POST'));
    expect(csrf.status).toBe(403);
    expect(csrf.outcome).toBe('forbidden');
  });

  it('refuses a session whose claims have no subject like a token without one', async () => {
    const d = await (await engine(stub({ kind: 'session', issuer: 'https://idp', claims: copyClaims({ roles: ['reader'] }), accessToken: undefined, headers: {} })))
      .decide(wire('/orders/1', [['cookie', 'authz=x']]));
    expect(d.status).toBe(401);
    expect(d.reason).toBe('TOKEN_CLAIMS');
  });
});
