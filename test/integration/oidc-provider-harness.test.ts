/**
 * Proves the oidc-provider test harness: a real OP on loopback issuing RS256 JWT access tokens via
 * client_credentials, verifiable through its discovery document and JWKS over real HTTP.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createRemoteJWKSet, decodeProtectedHeader, jwtVerify } from 'jose';
import { startTestProvider, type TestProvider } from '../support/oidc-provider.js';

const ORDERS = 'https://orders-api';
const BILLING = 'urn:billing-api';

describe('oidc-provider test harness', () => {
  let op: TestProvider;

  beforeAll(async () => {
    op = await startTestProvider({
      clients: [
        { clientId: 'orders-client', clientSecret: 's3cret: with spaces+symbols', roles: ['orders:read', 'admin'] },
        { clientId: 'no-roles-client', clientSecret: 'other-secret' },
      ],
      audiences: [ORDERS, BILLING],
      accessTokenTtlSeconds: 120,
    });
  });

  afterAll(async () => {
    await op.close();
  });

  it('listens on loopback with the issuer it puts into tokens', () => {
    expect(op.issuer).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
    expect(op.jwksUri).toBe(`${op.issuer}/jwks`);
  });

  it('serves discovery and a public-only JWKS over HTTP', async () => {
    const discovery = (await (await fetch(`${op.issuer}/.well-known/openid-configuration`)).json()) as Record<string, unknown>;
    expect(discovery.issuer).toBe(op.issuer);
    expect(discovery.jwks_uri).toBe(op.jwksUri);
    expect(discovery.grant_types_supported).toContain('client_credentials');
    expect(discovery.token_endpoint_auth_methods_supported).toContain('client_secret_basic');

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
});
