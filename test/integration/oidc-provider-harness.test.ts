/**
 * Proves the oidc-provider test harness: a real OP on loopback issuing RS256 JWT access tokens via
 * client_credentials, verifiable through its discovery document and JWKS over real HTTP; opaque tokens checked
 * through RFC 7662 introspection; and the test knobs (request counting, key rotation, stop/start, hang, JWKS
 * override).
 */
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { createRemoteJWKSet, decodeProtectedHeader, jwtVerify } from 'jose';
import { startTestProvider, type TestProvider } from '../support/oidc-provider.js';

const ORDERS = 'https://orders-api';
const BILLING = 'urn:billing-api';
const INVENTORY = 'urn:inventory-api'; // opaque tokens
const BASIC_RS = { clientId: 'rs-basic', clientSecret: 'rs basic: secret+1', authMethod: 'client_secret_basic' } as const;
const POST_RS = { clientId: 'rs-post', clientSecret: 'rs post: secret&=2', authMethod: 'client_secret_post' } as const;

/** A JWS in compact serialization: three dot-separated base64url parts. */
const COMPACT_JWS = /^[\w-]+\.[\w-]+\.[\w-]+$/;

type Json = Record<string, unknown>;

function basicAuth(id: string, secret: string): string {
  const enc = (v: string): string => encodeURIComponent(v).replace(/%20/g, '+');
  return `Basic ${Buffer.from(`${enc(id)}:${enc(secret)}`).toString('base64')}`;
}

/** RFC 7662 section 2.1 request, done by hand. */
async function introspect(
  endpoint: string,
  token: string,
  client: { clientId: string; clientSecret: string; authMethod: 'client_secret_basic' | 'client_secret_post' },
): Promise<{ status: number; contentType: string | null; body: Json }> {
  const form = new URLSearchParams({ token });
  const headers: Record<string, string> = {
    'content-type': 'application/x-www-form-urlencoded',
    accept: 'application/json',
  };
  if (client.authMethod === 'client_secret_basic') {
    headers.authorization = basicAuth(client.clientId, client.clientSecret);
  } else {
    form.set('client_id', client.clientId);
    form.set('client_secret', client.clientSecret);
  }
  const res = await fetch(endpoint, { method: 'POST', headers, body: form });
  return { status: res.status, contentType: res.headers.get('content-type'), body: (await res.json()) as Json };
}

async function getJson(url: string): Promise<Json> {
  const res = await fetch(url);
  expect(res.status).toBe(200);
  return (await res.json()) as Json;
}

describe('oidc-provider test harness', () => {
  let op: TestProvider;

  beforeAll(async () => {
    op = await startTestProvider({
      clients: [
        { clientId: 'orders-client', clientSecret: 's3cret: with spaces+symbols', roles: ['orders:read', 'admin'] },
        { clientId: 'no-roles-client', clientSecret: 'other-secret' },
      ],
      audiences: [ORDERS, BILLING],
      opaqueAudiences: [INVENTORY],
      introspectionClients: [BASIC_RS, POST_RS],
      accessTokenTtlSeconds: 120,
    });
  });

  afterAll(async () => {
    await op.close();
  });

  it('listens on loopback with the issuer it puts into tokens', () => {
    expect(op.issuer).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
    expect(op.jwksUri).toBe(`${op.issuer}/jwks`);
    expect(op.discoveryUrl).toBe(`${op.issuer}/.well-known/openid-configuration`);
    expect(op.tokenEndpoint).toBe(`${op.issuer}/token`);
    expect(op.introspectionEndpoint).toBe(`${op.issuer}/token/introspection`);
    expect(op.issuer).toBe(`http://127.0.0.1:${op.port}`);
  });

  it('serves discovery and a public-only JWKS over HTTP', async () => {
    const discovery = (await (await fetch(`${op.issuer}/.well-known/openid-configuration`)).json()) as Record<string, unknown>;
    expect(discovery.issuer).toBe(op.issuer);
    expect(discovery.jwks_uri).toBe(op.jwksUri);
    expect(discovery.grant_types_supported).toContain('client_credentials');
    expect(discovery.token_endpoint_auth_methods_supported).toContain('client_secret_basic');
    expect(discovery.token_endpoint_auth_methods_supported).toContain('client_secret_post');
    expect(discovery.introspection_endpoint).toBe(op.introspectionEndpoint);
    expect(await getJson(op.discoveryUrl)).toEqual(discovery);

    const res = await fetch(op.jwksUri);
    expect(res.status).toBe(200);
    const jwks = (await res.json()) as { keys: Array<Record<string, unknown>> };
    expect(jwks.keys).toHaveLength(1);
    const [key] = jwks.keys;
    expect(key).toMatchObject({ kty: 'RSA', alg: 'RS256', use: 'sig' });
    expect(typeof key?.kid).toBe('string');
    for (const priv of ['d', 'p', 'q', 'dp', 'dq', 'qi']) expect(key).not.toHaveProperty(priv);
  });

  it('issues an RS256 JWT access token that verifies against the remote JWKS', async () => {
    const token = await op.getToken('orders-client');
    const header = decodeProtectedHeader(token);
    expect(header).toMatchObject({ alg: 'RS256', typ: 'at+jwt' });
    expect(typeof header.kid).toBe('string');

    const jwks = createRemoteJWKSet(new URL(op.jwksUri));
    const { payload } = await jwtVerify(token, jwks, { issuer: op.issuer, audience: ORDERS });
    expect(payload.aud).toBe(ORDERS); // first audience is the default resource
    expect(payload.sub).toBe('orders-client');
    expect(payload.client_id).toBe('orders-client');
    expect(payload.roles).toEqual(['orders:read', 'admin']);
    expect(typeof payload.jti).toBe('string');
    expect(typeof payload.iat).toBe('number');
    expect(typeof payload.exp).toBe('number');
    expect((payload.exp ?? 0) - (payload.iat ?? 0)).toBe(120);
    expect(payload.exp).toBeGreaterThan(Math.floor(Date.now() / 1000));
    expect(payload).not.toHaveProperty('scope');
  });

  it('issues a token for a second audience when asked, carrying requested scopes', async () => {
    const token = await op.getToken('orders-client', { audience: BILLING, scope: 'billing:read billing:write' });
    const { payload } = await jwtVerify(token, createRemoteJWKSet(new URL(op.jwksUri)), {
      issuer: op.issuer,
      audience: BILLING,
    });
    expect(payload.aud).toBe(BILLING);
    expect(payload.scope).toBe('billing:read billing:write');
    expect(payload.roles).toEqual(['orders:read', 'admin']);
    await expect(
      jwtVerify(token, createRemoteJWKSet(new URL(op.jwksUri)), { issuer: op.issuer, audience: ORDERS }),
    ).rejects.toThrow();
  });

  it('omits the roles claim for a client registered without roles', async () => {
    const token = await op.getToken('no-roles-client');
    const { payload } = await jwtVerify(token, createRemoteJWKSet(new URL(op.jwksUri)), { issuer: op.issuer, audience: ORDERS });
    expect(payload.sub).toBe('no-roles-client');
    expect(payload).not.toHaveProperty('roles');
  });

  it('rejects a wrong client secret, an unknown client and an unknown audience', async () => {
    const err = await op.getToken('orders-client', { clientSecret: 'wrong' }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(Error);
    expect((err as Error).message).toMatch(/HTTP 401 invalid_client/);
    expect((err as Error).message).not.toContain('s3cret');
    expect((err as Error).message).not.toContain('wrong');

    await expect(op.getToken('nobody', { clientSecret: 'x' })).rejects.toThrow(/HTTP 401 invalid_client/);
    await expect(op.getToken('nobody')).rejects.toThrow(/not registered/);
    await expect(op.getToken('orders-client', { audience: 'https://elsewhere' })).rejects.toThrow(/HTTP 400 invalid_target/);
  });

  it('runs side by side with a second, independent provider (different issuer and keys)', async () => {
    const other = await startTestProvider({ clients: [{ clientId: 'orders-client', clientSecret: 'x', roles: [] }] });
    try {
      expect(other.issuer).not.toBe(op.issuer);
      const token = await other.getToken('orders-client');
      const { payload } = await jwtVerify(token, createRemoteJWKSet(new URL(other.jwksUri)), {
        issuer: other.issuer,
        audience: 'http://orders-api',
      });
      expect(payload.roles).toEqual([]);
      // Not verifiable with the first provider's keys.
      await expect(jwtVerify(token, createRemoteJWKSet(new URL(op.jwksUri)))).rejects.toThrow();
    } finally {
      await other.close();
    }
    await expect(fetch(other.jwksUri)).rejects.toThrow();
    await other.close(); // idempotent
  });

  describe('opaque access tokens and RFC 7662 introspection', () => {
    it('issues an opaque (non-JWT) access token for an opaque audience', async () => {
      const token = await op.getToken('orders-client', { audience: INVENTORY });
      expect(token).not.toMatch(COMPACT_JWS);
      expect(token.split('.')).toHaveLength(1);
      expect(token).toMatch(/^[\w-]{20,}$/);
      expect(() => decodeProtectedHeader(token)).toThrow();
      // JWT audiences are unaffected
      expect(await op.getToken('orders-client', { audience: BILLING })).toMatch(COMPACT_JWS);
    });

    for (const client of [BASIC_RS, POST_RS]) {
      it(`answers active:true with the token's claims to a ${client.authMethod} caller`, async () => {
        const before = Math.floor(Date.now() / 1000);
        const token = await op.getToken('orders-client', { audience: INVENTORY, scope: 'inventory:read' });
        op.resetRequests();
        const { status, contentType, body } = await introspect(op.introspectionEndpoint, token, client);
        expect(status).toBe(200);
        expect(contentType).toMatch(/^application\/json/);
        expect(body).toMatchObject({
          active: true,
          sub: 'orders-client',
          client_id: 'orders-client',
          aud: INVENTORY,
          scope: 'inventory:read',
          iss: op.issuer,
          token_type: 'Bearer',
          roles: ['orders:read', 'admin'],
        });
        expect(typeof body.iat).toBe('number');
        expect(typeof body.exp).toBe('number');
        expect((body.exp as number) - (body.iat as number)).toBe(120);
        expect(body.iat).toBeGreaterThanOrEqual(before - 1);
        // the request went over the wire with the intended client authentication
        expect(op.requestLog).toEqual([
          {
            method: 'POST',
            path: '/token/introspection',
            authScheme: client.authMethod === 'client_secret_basic' ? 'basic' : undefined,
          },
        ]);
      });
    }

    it('omits scope when none was requested and roles for a client without roles', async () => {
      const token = await op.getToken('no-roles-client', { audience: INVENTORY });
      const { body } = await introspect(op.introspectionEndpoint, token, POST_RS);
      expect(body).toMatchObject({ active: true, sub: 'no-roles-client', client_id: 'no-roles-client', aud: INVENTORY });
      expect(body).not.toHaveProperty('scope');
      expect(body).not.toHaveProperty('roles');
    });

    it('answers exactly {active:false} for an unknown token', async () => {
      for (const client of [BASIC_RS, POST_RS]) {
        const { status, body } = await introspect(op.introspectionEndpoint, 'no-such-token-0123456789abcdef', client);
        expect(status).toBe(200);
        expect(body).toEqual({ active: false });
      }
    });

    it('refuses callers with a wrong secret (401 invalid_client) without echoing secrets', async () => {
      const token = await op.getToken('orders-client', { audience: INVENTORY });
      for (const client of [BASIC_RS, POST_RS]) {
        const { status, body } = await introspect(op.introspectionEndpoint, token, { ...client, clientSecret: 'wrong-secret' });
        expect(status).toBe(401);
        expect(body.error).toBe('invalid_client');
        expect(JSON.stringify(body)).not.toContain('wrong-secret');
        expect(JSON.stringify(body)).not.toContain(client.clientSecret);
      }
    });

    it('accepts either secret-based method whichever one the caller registered (oidc-provider v9 behaviour)', async () => {
      const token = await op.getToken('orders-client', { audience: INVENTORY });
      const swapped = [
        { ...BASIC_RS, authMethod: 'client_secret_post' },
        { ...POST_RS, authMethod: 'client_secret_basic' },
      ] as const;
      for (const client of swapped) {
        expect((await introspect(op.introspectionEndpoint, token, client)).body.active).toBe(true);
      }
      // token clients (registered client_secret_basic) may introspect as well
      const asTokenClient = { clientId: 'no-roles-client', clientSecret: 'other-secret', authMethod: 'client_secret_basic' } as const;
      expect((await introspect(op.introspectionEndpoint, token, asTokenClient)).body.active).toBe(true);
    });

    it('does not let an introspection-only client obtain tokens', async () => {
      await expect(op.getToken(BASIC_RS.clientId, { clientSecret: BASIC_RS.clientSecret })).rejects.toThrow(
        /HTTP 400 invalid_request: requested grant type is not allowed for this client/,
      );
    });

    it('rejects introspection of a JWT access token (oidc-provider: 400 unsupported_token_type)', async () => {
      const jwt = await op.getToken('orders-client');
      const { status, body } = await introspect(op.introspectionEndpoint, jwt, BASIC_RS);
      expect(status).toBe(400);
      expect(body.error).toBe('unsupported_token_type');
    });
  });

  describe('test knobs', () => {
    let knobs: TestProvider;

    beforeAll(async () => {
      knobs = await startTestProvider({
        clients: [{ clientId: 'app', clientSecret: 'app-secret', roles: ['reader'] }],
        audiences: [ORDERS],
        opaqueAudiences: [INVENTORY],
        introspectionClients: [BASIC_RS],
      });
    });

    afterAll(async () => {
      await knobs.close();
    });

    it('counts requests per path at the HTTP server', async () => {
      knobs.resetRequests();
      expect(knobs.requests()).toBe(0);
      await getJson(knobs.jwksUri);
      await getJson(`${knobs.jwksUri}?x=1`);
      expect(knobs.requests('/jwks')).toBe(2);
      expect(knobs.requests(knobs.jwksUri)).toBe(2);
      expect(knobs.requests(knobs.introspectionEndpoint)).toBe(0);

      const token = await knobs.getToken('app', { audience: INVENTORY });
      expect(knobs.requests('/token')).toBe(1); // '/token/introspection' does not end with '/token'
      for (let i = 1; i <= 3; i++) {
        await introspect(knobs.introspectionEndpoint, token, BASIC_RS);
        expect(knobs.requests('/token/introspection')).toBe(i);
      }
      await getJson(knobs.discoveryUrl);
      expect(knobs.requests('/.well-known/openid-configuration')).toBe(1);
      expect(knobs.requests()).toBe(7);
      expect(knobs.requestLog.map((r) => `${r.method} ${r.path}`)).toEqual([
        'GET /jwks',
        'GET /jwks',
        'POST /token',
        'POST /token/introspection',
        'POST /token/introspection',
        'POST /token/introspection',
        'GET /.well-known/openid-configuration',
      ]);
      knobs.resetRequests();
      expect(knobs.requests()).toBe(0);
    });

    it('rotates the signing key: new kid in new tokens and in the JWKS, old key kept by default', async () => {
      const jwks = createRemoteJWKSet(new URL(knobs.jwksUri), { cacheMaxAge: 0, cooldownDuration: 0 });
      const oldKid = knobs.currentKid;
      const oldJwt = await knobs.getToken('app');
      const oldOpaque = await knobs.getToken('app', { audience: INVENTORY });
      expect(decodeProtectedHeader(oldJwt).kid).toBe(oldKid);

      await knobs.rotateKeys();
      const newKid = knobs.currentKid;
      expect(newKid).not.toBe(oldKid);
      const newJwt = await knobs.getToken('app');
      expect(decodeProtectedHeader(newJwt)).toMatchObject({ alg: 'RS256', kid: newKid });
      const served = (await getJson(knobs.jwksUri)) as { keys: Array<{ kid: string; alg: string }> };
      expect(served.keys.map((k) => k.kid)).toEqual([newKid, oldKid]);
      for (const key of served.keys) expect(key).not.toHaveProperty('d');
      await expect(jwtVerify(newJwt, jwks, { issuer: knobs.issuer, audience: ORDERS })).resolves.toBeDefined();
      await expect(jwtVerify(oldJwt, jwks, { issuer: knobs.issuer, audience: ORDERS })).resolves.toBeDefined();
      // same storage behind the new provider instance: the earlier opaque token still introspects
      expect((await introspect(knobs.introspectionEndpoint, oldOpaque, BASIC_RS)).body).toMatchObject({
        active: true,
        client_id: 'app',
      });

      await knobs.rotateKeys({ keepOld: false });
      const newestKid = knobs.currentKid;
      expect([oldKid, newKid]).not.toContain(newestKid);
      const only = (await getJson(knobs.jwksUri)) as { keys: Array<{ kid: string }> };
      expect(only.keys.map((k) => k.kid)).toEqual([newestKid]);
      expect(decodeProtectedHeader(await knobs.getToken('app')).kid).toBe(newestKid);
      await expect(jwtVerify(newJwt, createRemoteJWKSet(new URL(knobs.jwksUri)))).rejects.toThrow();
    });

    it('stop() takes the server down and start() brings it back on the same port with its state', async () => {
      const opaque = await knobs.getToken('app', { audience: INVENTORY });
      const port = knobs.port;
      await knobs.stop();
      await expect(fetch(knobs.discoveryUrl)).rejects.toThrow();
      await expect(knobs.getToken('app')).rejects.toThrow();
      await knobs.stop(); // idempotent

      await knobs.start();
      await knobs.start(); // no-op while listening
      expect(knobs.port).toBe(port);
      expect((await getJson(knobs.discoveryUrl)).issuer).toBe(knobs.issuer);
      expect((await introspect(knobs.introspectionEndpoint, opaque, BASIC_RS)).body.active).toBe(true);
    });

    it('hang: accepts requests but never answers, until switched off', async () => {
      knobs.resetRequests();
      knobs.hang = true;
      expect(knobs.hang).toBe(true);
      try {
        const err = await fetch(knobs.jwksUri, { signal: AbortSignal.timeout(300) }).catch((e: unknown) => e);
        expect(err).toBeInstanceOf(DOMException);
        expect((err as DOMException).name).toBe('TimeoutError');
        expect(knobs.requests('/jwks')).toBe(1); // it did arrive
      } finally {
        knobs.hang = false;
      }
      await getJson(knobs.jwksUri);
      expect(knobs.requests('/jwks')).toBe(2);
    });

    it('jwksOverride: the JWKS path serves the given body verbatim', async () => {
      knobs.jwksOverride = '{"keys": "garbage"';
      try {
        const res = await fetch(knobs.jwksUri);
        expect(res.status).toBe(200);
        expect(res.headers.get('content-type')).toBe('application/json');
        expect(await res.text()).toBe('{"keys": "garbage"');
        // other paths are unaffected
        expect((await getJson(knobs.discoveryUrl)).jwks_uri).toBe(knobs.jwksUri);
        expect(await knobs.getToken('app')).toMatch(COMPACT_JWS);
      } finally {
        knobs.jwksOverride = undefined;
      }
      const jwks = (await getJson(knobs.jwksUri)) as { keys: Array<{ kid: string }> };
      expect(jwks.keys.map((k) => k.kid)).toEqual([knobs.currentKid]);
    });

    it('close() also ends hung connections; start() after close() rejects', async () => {
      const other = await startTestProvider();
      other.hang = true;
      const pending = fetch(other.discoveryUrl).catch((e: unknown) => e);
      await vi.waitFor(() => expect(other.requests()).toBe(1));
      await other.close();
      expect(await pending).toBeInstanceOf(TypeError); // connection destroyed: "fetch failed"
      await expect(other.start()).rejects.toThrow(/closed/);
      await expect(other.rotateKeys()).rejects.toThrow(/closed/);
      await other.stop(); // no-op
      await other.close(); // idempotent
    });
  });
});
