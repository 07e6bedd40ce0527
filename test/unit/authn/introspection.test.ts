import type { IncomingMessage, ServerResponse } from 'node:http';
import { afterEach, describe, expect, it } from 'vitest';
import {
  createIntrospectionAuthenticator,
  type IntrospectionAuthenticatorOptions,
  type IntrospectionEndpointOptions,
  type IntrospectionEvents,
} from '../../../src/authn/introspection.js';
import { REASONS, type ReasonCode } from '../../../src/core/errors.js';
import type { Authenticator, AuthnResult } from '../../../src/core/stages.js';
import { closedPort, gate, readBody, sendJson, startLoopback, until, type Loopback } from './loopback.js';

const ISSUER = 'https://idp.example.com/realms/demo';
const OTHER_ISSUER = 'https://other-idp.example.com';
const AUDIENCE = 'orders-api';
const CLIENT_ID = 'orders-sidecar';
/** Characters that client_secret_basic must form-encode (RFC 6749 §2.3.1) before base64. */
const SECRET = 'se cr:et/+&=%';
const NOW_S = Math.floor(Date.parse('2030-01-01T00:00:00Z') / 1000);
const OPAQUE = 'c2b1f0a8e4d94f4b9b7e3e1d2a6c0f11';
const JWT_SHAPED = 'eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl';

type ClientAuth = { method: 'basic' | 'post' | 'none'; id: string | undefined; secret: string | undefined };

interface SeenRequest {
  readonly contentType: string | undefined;
  readonly token: string | null;
  readonly auth: ClientAuth;
}

// ---------------------------------------------------------------------------------------------------------
// The remote side: an RFC 7662 endpoint (and, when asked, an OpenID discovery document) of the test's own.

interface IdpServer {
  readonly origin: string;
  readonly endpoint: string;
  /** Introspection requests that passed client authentication. */
  calls: number;
  readonly seen: SeenRequest[];
  discoveryCalls: number;
  /** The JSON answer to an authenticated introspection request. */
  answer: (token: string) => unknown;
  /** The status of an authenticated introspection answer; anything but 200 carries an OAuth error body. */
  status: number;
  /** Held introspection answers: no reply until the test says so (never, for a hang). */
  holdIntrospection: Promise<void> | undefined;
  /** Served at /.well-known/openid-configuration; 404 when undefined. */
  discovery: Record<string, unknown> | undefined;
  holdDiscovery: Promise<void> | undefined;
}

function activeAnswer(overrides: Record<string, unknown> = {}): Record<string, unknown> {
  const answer: Record<string, unknown> = {
    active: true,
    sub: 'alice',
    client_id: 'orders-web',
    scope: 'orders:read orders:write',
    iss: ISSUER,
    aud: AUDIENCE,
    iat: NOW_S - 60,
    exp: NOW_S + 3_600,
    realm_access: { roles: ['reader'] },
  };
  for (const [name, value] of Object.entries(overrides)) {
    if (value === undefined) delete answer[name];
    else answer[name] = value;
  }
  return answer;
}

/** application/x-www-form-urlencoded value (RFC 6749 Appendix B): '+' is a space. */
function formDecode(value: string): string {
  return decodeURIComponent(value.replaceAll('+', ' '));
}

function clientAuth(req: IncomingMessage, form: URLSearchParams): ClientAuth {
  const header = req.headers.authorization;
  if (header !== undefined) {
    const match = /^Basic ([A-Za-z0-9+/=]+)$/i.exec(header);
    if (match?.[1] === undefined) return { method: 'basic', id: undefined, secret: undefined };
    const decoded = Buffer.from(match[1], 'base64').toString('utf8');
    const colon = decoded.indexOf(':');
    if (colon === -1) return { method: 'basic', id: undefined, secret: undefined };
    return { method: 'basic', id: formDecode(decoded.slice(0, colon)), secret: formDecode(decoded.slice(colon + 1)) };
  }
  if (form.has('client_secret')) return { method: 'post', id: form.get('client_id') ?? undefined, secret: form.get('client_secret') ?? undefined };
  return { method: 'none', id: form.get('client_id') ?? undefined, secret: undefined };
}

const loopbacks: Loopback[] = [];
const authenticators: Authenticator[] = [];
afterEach(async () => {
  for (const a of authenticators.splice(0)) a.close();
  for (const l of loopbacks.splice(0)) await l.close();
});

async function idpServer(answer: (token: string) => unknown = () => activeAnswer()): Promise<IdpServer> {
  const state = {
    calls: 0,
    seen: [] as SeenRequest[],
    discoveryCalls: 0,
    answer,
    status: 200,
    holdIntrospection: undefined as Promise<void> | undefined,
    discovery: undefined as Record<string, unknown> | undefined,
    holdDiscovery: undefined as Promise<void> | undefined,
  };
  const handle = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    const path = new URL(req.url ?? '/', 'http://x').pathname;
    if (req.method === 'GET' && path === '/.well-known/openid-configuration') {
      state.discoveryCalls++;
      await state.holdDiscovery;
      if (state.discovery === undefined) sendJson(res, 404, { error: 'not_found' });
      else sendJson(res, 200, state.discovery);
      return;
    }
    if (req.method !== 'POST' || path !== '/introspect') {
      sendJson(res, 404, { error: 'not_found' });
      return;
    }
    const form = new URLSearchParams(await readBody(req));
    const auth = clientAuth(req, form);
    state.seen.push({ contentType: req.headers['content-type'], token: form.get('token'), auth });
    if (auth.id !== CLIENT_ID || auth.secret !== SECRET) {
      res.setHeader('www-authenticate', 'Basic realm="idp"');
      sendJson(res, 401, { error: 'invalid_client' });
      return;
    }
    const token = form.get('token');
    if (token === null) {
      sendJson(res, 400, { error: 'invalid_request' });
      return;
    }
    state.calls++;
    await state.holdIntrospection;
    if (state.status === 200) sendJson(res, 200, state.answer(token));
    else sendJson(res, state.status, { error: 'temporarily_unavailable' });
  };
  const loopback = await startLoopback((req, res) => {
    void handle(req, res);
  });
  loopbacks.push(loopback);
  return Object.assign(state, { origin: loopback.origin, endpoint: `${loopback.origin}/introspect` });
}

interface Recorded {
  readonly introspected: Array<{ issuer: string; result: string }>;
  readonly discovered: Array<{ issuer: string; result: string }>;
  readonly cache: boolean[];
}

function authenticator(
  endpoints: readonly IntrospectionEndpointOptions[],
  options: Partial<IntrospectionAuthenticatorOptions> & { clock?: { s: number } } = {},
): { a: Authenticator; events: Recorded; clock: { s: number } } {
  const clock = options.clock ?? { s: NOW_S };
  const events: Recorded = { introspected: [], discovered: [], cache: [] };
  const handlers: IntrospectionEvents = {
    introspected: (issuer, result) => events.introspected.push({ issuer, result }),
    discovered: (issuer, result) => events.discovered.push({ issuer, result }),
    cache: (hit) => events.cache.push(hit),
  };
  const a = createIntrospectionAuthenticator(endpoints, {
    acceptJwts: options.acceptJwts ?? true,
    now: () => new Date(clock.s * 1000),
    events: handlers,
    ...(options.cacheEntries === undefined ? {} : { cacheEntries: options.cacheEntries }),
  });
  authenticators.push(a);
  return { a, events, clock };
}

function endpoint(server: { endpoint: string }, overrides: Partial<IntrospectionEndpointOptions> = {}): IntrospectionEndpointOptions {
  return { issuer: ISSUER, endpoint: server.endpoint, clientId: CLIENT_ID, clientSecret: SECRET, timeoutSeconds: 2, ...overrides };
}

/** 'ok' = authenticated, 'notMine', or the reason of a failure. */
function verdict(result: AuthnResult): 'ok' | 'notMine' | ReasonCode {
  if (result.kind === 'authenticated') return 'ok';
  if (result.kind === 'notMine') return 'notMine';
  return result.reason;
}

describe('createIntrospectionAuthenticator: answers', () => {
  it('an active token is authenticated with the issuer and null-prototype claims', async () => {
    const server = await idpServer();
    const { a, events } = authenticator([endpoint(server)]);
    const result = await a.authenticate(OPAQUE);
    expect(result.kind).toBe('authenticated');
    if (result.kind !== 'authenticated') return;
    expect(result.issuer).toBe(ISSUER);
    expect(Object.getPrototypeOf(result.claims)).toBeNull();
    expect(Object.getPrototypeOf(result.claims.realm_access)).toBeNull();
    expect(result.claims).toEqual(activeAnswer());
    expect(server.calls).toBe(1);
    expect(server.seen[0]?.token).toBe(OPAQUE);
    expect(server.seen[0]?.contentType).toMatch(/^application\/x-www-form-urlencoded/);
    expect(events.introspected).toEqual([{ issuer: ISSUER, result: 'active' }]);
    expect(a.missing()).toEqual([]);
  });

  const cases: Array<{
    name: string;
    answer: unknown;
    options?: Partial<IntrospectionEndpointOptions>;
    expected: 'ok' | ReasonCode;
  }> = [
    { name: 'active: false', answer: { active: false }, expected: 'TOKEN_INVALID' },
    { name: 'active: false with claims', answer: activeAnswer({ active: false }), expected: 'TOKEN_INVALID' },
    { name: 'exp in the past beyond the 30 s skew', answer: activeAnswer({ exp: NOW_S - 31 }), expected: 'TOKEN_EXPIRED' },
    { name: 'exp in the past within the skew', answer: activeAnswer({ exp: NOW_S - 20 }), expected: 'ok' },
    { name: 'no exp', answer: activeAnswer({ exp: undefined }), expected: 'ok' },
    { name: 'nbf in the future beyond the skew', answer: activeAnswer({ nbf: NOW_S + 31 }), expected: 'TOKEN_CLAIMS' },
    { name: 'nbf in the future within the skew', answer: activeAnswer({ nbf: NOW_S + 20 }), expected: 'ok' },
    { name: 'audiences set, aud another audience', answer: activeAnswer({ aud: 'billing-api' }), options: { audiences: [AUDIENCE] }, expected: 'TOKEN_AUDIENCE' },
    { name: 'audiences set, aud missing', answer: activeAnswer({ aud: undefined }), options: { audiences: [AUDIENCE] }, expected: 'TOKEN_AUDIENCE' },
    { name: 'audiences set, aud array without it', answer: activeAnswer({ aud: ['billing-api', 'x'] }), options: { audiences: [AUDIENCE] }, expected: 'TOKEN_AUDIENCE' },
    { name: 'audiences set, aud not a string', answer: activeAnswer({ aud: 42 }), options: { audiences: [AUDIENCE] }, expected: 'TOKEN_AUDIENCE' },
    { name: 'audiences set, aud matches (string)', answer: activeAnswer({ aud: AUDIENCE }), options: { audiences: [AUDIENCE] }, expected: 'ok' },
    { name: 'audiences set, aud matches (array)', answer: activeAnswer({ aud: ['billing-api', AUDIENCE] }), options: { audiences: [AUDIENCE] }, expected: 'ok' },
    { name: 'audiences set, second configured audience', answer: activeAnswer({ aud: 'admin-api' }), options: { audiences: [AUDIENCE, 'admin-api'] }, expected: 'ok' },
    { name: 'audiences not set, any aud', answer: activeAnswer({ aud: 'billing-api' }), expected: 'ok' },
    { name: 'iss of another issuer', answer: activeAnswer({ iss: OTHER_ISSUER }), expected: 'TOKEN_ISSUER' },
    { name: 'iss with a trailing slash is another issuer', answer: activeAnswer({ iss: `${ISSUER}/` }), expected: 'TOKEN_ISSUER' },
    { name: 'no iss', answer: activeAnswer({ iss: undefined }), expected: 'ok' },
  ];
  it.each(cases)('$name -> $expected', async ({ answer, options, expected }) => {
    const server = await idpServer(() => answer);
    const { a } = authenticator([endpoint(server, options)]);
    expect(verdict(await a.authenticate(OPAQUE))).toBe(expected);
    expect(server.calls).toBe(1);
  });

  // RFC 7662 §2.2: active is a boolean. Anything else is not an active token.
  const notBoolean: Array<[name: string, answer: unknown]> = [
    ['active: "true" (a string)', activeAnswer({ active: 'true' })],
    ['active: 1', activeAnswer({ active: 1 })],
    ['no active member', activeAnswer({ active: undefined })],
    ['an array', [activeAnswer()]],
  ];
  it.each(notBoolean)('%s is not authenticated', async (_name, answer) => {
    const server = await idpServer(() => answer);
    const { a } = authenticator([endpoint(server)]);
    const result = await a.authenticate(OPAQUE);
    expect(result.kind).toBe('failed');
  });

  it('never puts the token into a failure detail', async () => {
    const server = await idpServer(() => ({ active: false }));
    const { a } = authenticator([endpoint(server)]);
    const result = await a.authenticate(OPAQUE);
    expect(JSON.stringify(result)).not.toContain(OPAQUE);
  });
});

describe('createIntrospectionAuthenticator: client authentication', () => {
  const methods: Array<{ label: string; authMethod: 'client_secret_basic' | 'client_secret_post' | undefined; seen: 'basic' | 'post' }> = [
    { label: 'the default (client_secret_basic)', authMethod: undefined, seen: 'basic' },
    { label: 'client_secret_basic', authMethod: 'client_secret_basic', seen: 'basic' },
    { label: 'client_secret_post', authMethod: 'client_secret_post', seen: 'post' },
  ];

  it.each(methods)('$label reaches the server as $seen with the right credentials', async ({ authMethod, seen }) => {
    const server = await idpServer();
    const { a } = authenticator([endpoint(server, { authMethod })]);
    expect(verdict(await a.authenticate(OPAQUE))).toBe('ok');
    expect(server.seen).toEqual([{ contentType: expect.stringMatching(/^application\/x-www-form-urlencoded/) as unknown, token: OPAQUE, auth: { method: seen, id: CLIENT_ID, secret: SECRET } }]);
  });

  it.each(methods)('$label with a wrong secret: the server answers 401 -> INTROSPECTION_UNAVAILABLE (503)', async ({ authMethod, seen }) => {
    const server = await idpServer();
    const { a, events } = authenticator([endpoint(server, { authMethod, clientSecret: 'wrong' })]);
    const result = await a.authenticate(OPAQUE);
    expect(verdict(result)).toBe('INTROSPECTION_UNAVAILABLE');
    expect(REASONS.INTROSPECTION_UNAVAILABLE.status).toBe(503);
    expect(server.seen).toHaveLength(1);
    expect(server.seen[0]?.auth).toEqual({ method: seen, id: CLIENT_ID, secret: 'wrong' });
    expect(server.calls).toBe(0);
    expect(events.introspected).toEqual([{ issuer: ISSUER, result: 'error' }]);
    expect(JSON.stringify(result)).not.toContain('wrong');
  });
});

describe('createIntrospectionAuthenticator: caching', () => {
  it('a second call within cacheSeconds makes no server call', async () => {
    const server = await idpServer();
    const { a, events, clock } = authenticator([endpoint(server, { cacheSeconds: 60 })]);
    const first = await a.authenticate(OPAQUE);
    clock.s += 59;
    const second = await a.authenticate(OPAQUE);
    expect(verdict(first)).toBe('ok');
    expect(second).toEqual(first);
    expect(server.calls).toBe(1);
    expect(events.cache).toEqual([false, true]);
  });

  it('past cacheSeconds (injected clock) a new call is made', async () => {
    const server = await idpServer();
    const { a, events, clock } = authenticator([endpoint(server, { cacheSeconds: 60 })]);
    expect(verdict(await a.authenticate(OPAQUE))).toBe('ok');
    clock.s += 61;
    expect(verdict(await a.authenticate(OPAQUE))).toBe('ok');
    expect(server.calls).toBe(2);
    expect(events.cache).toEqual([false, false]);
  });

  it('an answer is never served from the cache past the token exp', async () => {
    const exp = NOW_S + 10;
    const server = await idpServer(() => activeAnswer({ exp }));
    const { a, events, clock } = authenticator([endpoint(server, { cacheSeconds: 60 })]);
    expect(verdict(await a.authenticate(OPAQUE))).toBe('ok');
    clock.s = exp - 1;
    expect(verdict(await a.authenticate(OPAQUE))).toBe('ok');
    expect(server.calls).toBe(1);

    // Past exp: asked again (the IdP still answers active; within the skew that is still accepted).
    clock.s = exp + 1;
    expect(verdict(await a.authenticate(OPAQUE))).toBe('ok');
    expect(server.calls).toBe(2);
    // Past exp and the skew: asked again, and the expired answer fails.
    clock.s = exp + 31;
    expect(verdict(await a.authenticate(OPAQUE))).toBe('TOKEN_EXPIRED');
    expect(server.calls).toBe(3);
    expect(events.cache).toEqual([false, true, false, false]);
  });

  const uncached: Array<[name: string, answer: unknown]> = [
    ['inactive answers', { active: false }],
    ['expired answers', activeAnswer({ exp: NOW_S - 60 })],
    ['answers for another issuer', activeAnswer({ iss: OTHER_ISSUER })],
  ];
  it.each(uncached)('%s are not cached', async (_name, answer) => {
    const server = await idpServer(() => answer);
    const { a } = authenticator([endpoint(server)]);
    const first = await a.authenticate(OPAQUE);
    const second = await a.authenticate(OPAQUE);
    expect(first.kind).toBe('failed');
    expect(second).toEqual(first);
    expect(server.calls).toBe(2);
  });

  it('a failed call is not cached: the token is active once the IdP answers again', async () => {
    const server = await idpServer();
    server.status = 503;
    const { a } = authenticator([endpoint(server)]);
    expect(verdict(await a.authenticate(OPAQUE))).toBe('INTROSPECTION_UNAVAILABLE');
    server.status = 200;
    expect(verdict(await a.authenticate(OPAQUE))).toBe('ok');
    expect(server.calls).toBe(2);
  });

  it('concurrent requests with the same token share one server call', async () => {
    const server = await idpServer();
    const hold = gate();
    server.holdIntrospection = hold.wait;
    const { a } = authenticator([endpoint(server)]);
    const pending = Array.from({ length: 20 }, () => a.authenticate(OPAQUE));
    await until(() => server.calls === 1, 'the introspection call');
    hold.release();
    const results = await Promise.all(pending);
    expect(results.map(verdict)).toEqual(Array<string>(20).fill('ok'));
    expect(server.calls).toBe(1);
    // And the answer is cached for the next one.
    expect(verdict(await a.authenticate(OPAQUE))).toBe('ok');
    expect(server.calls).toBe(1);
  });

  it('concurrent requests with different tokens are asked separately, and cached separately', async () => {
    const server = await idpServer((token) => activeAnswer({ sub: token }));
    const { a } = authenticator([endpoint(server)]);
    const [x, y] = await Promise.all([a.authenticate('token-x'), a.authenticate('token-y')]);
    expect(x.kind === 'authenticated' && x.claims.sub).toBe('token-x');
    expect(y.kind === 'authenticated' && y.claims.sub).toBe('token-y');
    expect(server.calls).toBe(2);
    const again = await a.authenticate('token-y');
    expect(again.kind === 'authenticated' && again.claims.sub).toBe('token-y');
    expect(server.calls).toBe(2);
  });
});

describe('createIntrospectionAuthenticator: an unreachable IdP is a 503, never a hang', () => {
  it('server down -> INTROSPECTION_UNAVAILABLE', async () => {
    const port = await closedPort();
    const { a, events } = authenticator([endpoint({ endpoint: `http://127.0.0.1:${port}/introspect` })]);
    expect(verdict(await a.authenticate(OPAQUE))).toBe('INTROSPECTION_UNAVAILABLE');
    expect(events.introspected).toEqual([{ issuer: ISSUER, result: 'error' }]);
  });

  it('a server that does not answer within timeoutSeconds -> INTROSPECTION_UNAVAILABLE after about the timeout', async () => {
    const server = await idpServer();
    server.holdIntrospection = new Promise<void>(() => undefined);
    const { a } = authenticator([endpoint(server, { timeoutSeconds: 0.3 })]);
    const started = performance.now();
    const result = await a.authenticate(OPAQUE);
    const elapsedMs = performance.now() - started;
    expect(verdict(result)).toBe('INTROSPECTION_UNAVAILABLE');
    expect(server.calls).toBe(1);
    expect(elapsedMs).toBeGreaterThanOrEqual(250);
    expect(elapsedMs).toBeLessThan(3_000);
  });

  it('a server answering something that is not JSON -> INTROSPECTION_UNAVAILABLE', async () => {
    const loopback = await startLoopback((_req, res) => {
      res.writeHead(200, { 'content-type': 'text/html' });
      res.end('<html>maintenance</html>');
    });
    loopbacks.push(loopback);
    const { a } = authenticator([endpoint({ endpoint: `${loopback.origin}/introspect` })]);
    expect(verdict(await a.authenticate(OPAQUE))).toBe('INTROSPECTION_UNAVAILABLE');
  });
});

describe('createIntrospectionAuthenticator: which tokens and which endpoints', () => {
  it('acceptJwts false: a JWT-shaped token is not mine and the IdP is not asked', async () => {
    const server = await idpServer();
    const { a } = authenticator([endpoint(server)], { acceptJwts: false });
    expect(await a.authenticate(JWT_SHAPED)).toEqual({ kind: 'notMine' });
    expect(server.seen).toHaveLength(0);
    // An opaque token still is introspected.
    expect(verdict(await a.authenticate(OPAQUE))).toBe('ok');
    expect(server.calls).toBe(1);
  });

  it('acceptJwts true: a JWT-shaped token is introspected too', async () => {
    const server = await idpServer();
    const { a } = authenticator([endpoint(server)], { acceptJwts: true });
    expect(verdict(await a.authenticate(JWT_SHAPED))).toBe('ok');
    expect(server.seen[0]?.token).toBe(JWT_SHAPED);
  });

  it('two endpoints: the first says inactive, the second active -> authenticated with the second issuer', async () => {
    const first = await idpServer(() => ({ active: false }));
    const second = await idpServer(() => activeAnswer({ iss: OTHER_ISSUER }));
    const { a } = authenticator([endpoint(first), endpoint(second, { issuer: OTHER_ISSUER })]);
    const result = await a.authenticate(OPAQUE);
    expect(result.kind).toBe('authenticated');
    if (result.kind !== 'authenticated') return;
    expect(result.issuer).toBe(OTHER_ISSUER);
    expect(result.claims.iss).toBe(OTHER_ISSUER);
    expect([first.calls, second.calls]).toEqual([1, 1]);
  });

  it('two endpoints: the first active -> the second is not asked', async () => {
    const first = await idpServer();
    const second = await idpServer();
    const { a } = authenticator([endpoint(first), endpoint(second, { issuer: OTHER_ISSUER })]);
    const result = await a.authenticate(OPAQUE);
    expect(result.kind === 'authenticated' && result.issuer).toBe(ISSUER);
    expect([first.calls, second.calls]).toEqual([1, 0]);
  });

  it('two endpoints, both inactive -> TOKEN_INVALID', async () => {
    const first = await idpServer(() => ({ active: false }));
    const second = await idpServer(() => ({ active: false }));
    const { a } = authenticator([endpoint(first), endpoint(second, { issuer: OTHER_ISSUER })]);
    expect(verdict(await a.authenticate(OPAQUE))).toBe('TOKEN_INVALID');
  });

  it('two endpoints: one down, the other inactive -> INTROSPECTION_UNAVAILABLE (the outage outranks inactive)', async () => {
    const port = await closedPort();
    const second = await idpServer(() => ({ active: false }));
    const { a } = authenticator([endpoint({ endpoint: `http://127.0.0.1:${port}/introspect` }), endpoint(second, { issuer: OTHER_ISSUER })]);
    expect(verdict(await a.authenticate(OPAQUE))).toBe('INTROSPECTION_UNAVAILABLE');
    expect(second.calls).toBe(1);
  });

  const badOptions: Array<[name: string, options: Partial<IntrospectionEndpointOptions>]> = [
    ['both endpoint and discovery', { discovery: true }],
    ['neither endpoint nor discovery', { endpoint: undefined }],
  ];
  it.each(badOptions)('%s -> TypeError when built', (_name, options) => {
    expect(() => createIntrospectionAuthenticator([endpoint({ endpoint: 'http://127.0.0.1:1/introspect' }, options)], { acceptJwts: true })).toThrow(TypeError);
  });
});

describe('createIntrospectionAuthenticator: discovery', () => {
  function discoveryEndpoint(server: IdpServer, overrides: Partial<IntrospectionEndpointOptions> = {}): IntrospectionEndpointOptions {
    return { issuer: server.origin, discovery: true, clientId: CLIENT_ID, clientSecret: SECRET, timeoutSeconds: 2, ...overrides };
  }

  it('lists the endpoint as missing until discovered, then introspects at the discovered endpoint', async () => {
    const server = await idpServer(() => activeAnswer({ iss: server.origin }));
    server.discovery = { issuer: server.origin, introspection_endpoint: server.endpoint };
    const hold = gate();
    server.holdDiscovery = hold.wait;
    const { a, events } = authenticator([discoveryEndpoint(server)]);

    await until(() => server.discoveryCalls === 1, 'the discovery request');
    expect(a.missing()).toEqual([`introspection endpoint of ${server.origin}`]);
    expect(verdict(await a.authenticate(OPAQUE))).toBe('INTROSPECTION_UNAVAILABLE');
    expect(server.calls).toBe(0);

    hold.release();
    await until(() => a.missing().length === 0, 'discovery');
    expect(events.discovered).toEqual([{ issuer: server.origin, result: 'success' }]);
    const result = await a.authenticate(OPAQUE);
    expect(result.kind === 'authenticated' && result.issuer).toBe(server.origin);
    expect(server.calls).toBe(1);
    expect(server.seen.at(-1)?.auth).toEqual({ method: 'basic', id: CLIENT_ID, secret: SECRET });
  });

  it('client_secret_post also applies to a discovered endpoint', async () => {
    const server = await idpServer(() => activeAnswer({ iss: server.origin }));
    server.discovery = { issuer: server.origin, introspection_endpoint: server.endpoint };
    const { a } = authenticator([discoveryEndpoint(server, { authMethod: 'client_secret_post' })]);
    await until(() => a.missing().length === 0, 'discovery');
    expect(verdict(await a.authenticate(OPAQUE))).toBe('ok');
    expect(server.seen.at(-1)?.auth).toEqual({ method: 'post', id: CLIENT_ID, secret: SECRET });
  });

  const neverReady: Array<[name: string, document: (server: IdpServer) => Record<string, unknown> | undefined]> = [
    ['a document whose issuer differs from the configured one', (s) => ({ issuer: 'https://evil.example.com', introspection_endpoint: s.endpoint })],
    ['a document whose issuer has another path', (s) => ({ issuer: `${s.origin}/realms/other`, introspection_endpoint: s.endpoint })],
    ['a document without introspection_endpoint', (s) => ({ issuer: s.origin })],
    ['no document (404)', () => undefined],
  ];
  it.each(neverReady)('%s: never ready, tokens get INTROSPECTION_UNAVAILABLE', async (_name, document) => {
    const server = await idpServer(() => activeAnswer({ iss: server.origin }));
    server.discovery = document(server);
    const { a, events } = authenticator([discoveryEndpoint(server)]);
    await until(() => events.discovered.length > 0, 'the discovery attempt');
    expect(events.discovered[0]).toEqual({ issuer: server.origin, result: 'error' });
    expect(a.missing()).toEqual([`introspection endpoint of ${server.origin}`]);
    expect(verdict(await a.authenticate(OPAQUE))).toBe('INTROSPECTION_UNAVAILABLE');
    expect(server.seen).toHaveLength(0);
  });
});
