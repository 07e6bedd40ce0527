import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { CompactSign, exportJWK, exportSPKI, generateKeyPair, SignJWT, type CryptoKey, type JWK, type JWTPayload } from 'jose';
import { afterEach, describe, expect, it } from 'vitest';
import { createJwtAuthenticator, type JwtAuthenticatorOptions, type JwtIssuerOptions } from '../../../src/authn/jwt.js';
import { createDiscoveredKeySource } from '../../../src/authn/discovery.js';
import type { ReasonCode } from '../../../src/core/errors.js';
import type { Authenticator, AuthnResult } from '../../../src/core/stages.js';
import { sendJson, startLoopback, until as waitUntil, type Loopback } from './loopback.js';

const ISSUER = 'https://idp.example.com/realms/demo';
const OTHER_ISSUER = 'https://other-idp.example.com';
const UNKNOWN_ISSUER = 'https://unknown.example.com';
const AUDIENCE = 'orders-api';
const NOW = new Date('2030-01-01T00:00:00Z');
const NOW_S = Math.floor(NOW.getTime() / 1000);
const clock = { now: (): Date => NOW };

interface TestKey {
  readonly kid: string;
  readonly alg: string;
  readonly privateKey: CryptoKey;
  readonly publicKey: CryptoKey;
  readonly jwk: JWK;
}

async function testKey(alg: 'RS256' | 'ES256', kid: string): Promise<TestKey> {
  const { publicKey, privateKey } = await generateKeyPair(alg);
  const jwk: JWK = { ...(await exportJWK(publicKey)), kid, alg, use: 'sig' };
  return { kid, alg, privateKey, publicKey, jwk };
}

const RSA = await testKey('RS256', 'rsa-1');
/** Another RSA key published under the same kid: its signatures must not verify. */
const IMPOSTOR = await testKey('RS256', 'rsa-1');
const EC = await testKey('ES256', 'ec-1');
/** Two issuers, each with its own key, both under the kid "shared". */
const KEY_A = await testKey('RS256', 'shared');
const KEY_B = await testKey('RS256', 'shared');
const KEY_A_ONLY = await testKey('RS256', 'a-only');

function baseClaims(overrides: Record<string, unknown> = {}): JWTPayload {
  const claims: Record<string, unknown> = { iss: ISSUER, aud: AUDIENCE, sub: 'alice', iat: NOW_S, exp: NOW_S + 300 };
  for (const [name, value] of Object.entries(overrides)) {
    if (value === undefined) delete claims[name];
    else claims[name] = value;
  }
  return claims;
}

async function sign(key: TestKey, claims: JWTPayload, header: Record<string, unknown> = {}): Promise<string> {
  return new SignJWT(claims).setProtectedHeader({ alg: key.alg, kid: key.kid, ...header }).sign(key.privateKey);
}

function b64url(text: string): string {
  return Buffer.from(text, 'utf8').toString('base64url');
}

const open: Authenticator[] = [];
afterEach(() => {
  for (const a of open.splice(0)) a.close();
});

function authenticator(issuers: readonly JwtIssuerOptions[], options: Parameters<typeof createJwtAuthenticator>[1] = clock): Authenticator {
  const a = createJwtAuthenticator(issuers, options);
  open.push(a);
  return a;
}

function issuer(overrides: Partial<JwtIssuerOptions> = {}): JwtIssuerOptions {
  return { issuer: ISSUER, audiences: [AUDIENCE], keys: { jwks: { keys: [RSA.jwk, EC.jwk] } }, clockSkewSeconds: 30, ...overrides };
}

/** 'ok' = authenticated, 'notMine', or the reason of a failure. */
function verdict(result: AuthnResult): 'ok' | 'notMine' | ReasonCode {
  if (result.kind === 'authenticated') return 'ok';
  if (result.kind === 'notMine') return 'notMine';
  return result.reason;
}

describe('createJwtAuthenticator: claims', () => {
  it('authenticates a valid token with its issuer and null-prototype claims', async () => {
    const a = authenticator([issuer()]);
    const result = await a.authenticate(await sign(RSA, baseClaims({ roles: ['reader'], realm_access: { roles: ['x'] } })));
    expect(result.kind).toBe('authenticated');
    if (result.kind !== 'authenticated') return;
    expect(result.issuer).toBe(ISSUER);
    expect(Object.getPrototypeOf(result.claims)).toBeNull();
    expect(Object.getPrototypeOf(result.claims.realm_access)).toBeNull();
    expect(result.claims).toEqual({ iss: ISSUER, aud: AUDIENCE, sub: 'alice', iat: NOW_S, exp: NOW_S + 300, roles: ['reader'], realm_access: { roles: ['x'] } });
    expect(a.missing()).toEqual([]);
  });

  it('keeps a "__proto__" claim as plain data', async () => {
    const payload = JSON.stringify(baseClaims()).replace(/}$/, ',"__proto__":{"isAdmin":true}}');
    const token = await new CompactSign(new TextEncoder().encode(payload))
      .setProtectedHeader({ alg: 'RS256', kid: RSA.kid })
      .sign(RSA.privateKey);
    const result = await authenticator([issuer()]).authenticate(token);
    expect(result.kind).toBe('authenticated');
    if (result.kind !== 'authenticated') return;
    expect(Object.getPrototypeOf(result.claims)).toBeNull();
    expect(Object.hasOwn(result.claims, '__proto__')).toBe(true);
    expect(result.claims.isAdmin).toBeUndefined();
    expect(Object.hasOwn(Object.prototype, 'isAdmin')).toBe(false);
  });

  const cases: Array<{ name: string; claims: Record<string, unknown>; issuer?: Partial<JwtIssuerOptions>; expected: 'ok' | 'notMine' | ReasonCode }> = [
    { name: 'valid token', claims: {}, expected: 'ok' },
    { name: 'token of an unconfigured issuer is not mine', claims: { iss: UNKNOWN_ISSUER }, expected: 'notMine' },
    { name: 'token without iss is not mine', claims: { iss: undefined }, expected: 'notMine' },
    { name: 'expired beyond the clock skew', claims: { iat: NOW_S - 600, exp: NOW_S - 31 }, expected: 'TOKEN_EXPIRED' },
    { name: 'expired but within the clock skew', claims: { iat: NOW_S - 600, exp: NOW_S - 20 }, expected: 'ok' },
    { name: 'expired with zero skew', claims: { exp: NOW_S - 1 }, issuer: { clockSkewSeconds: 0 }, expected: 'TOKEN_EXPIRED' },
    { name: 'missing exp', claims: { exp: undefined }, expected: 'TOKEN_CLAIMS' },
    { name: 'exp not a number', claims: { exp: 'tomorrow' }, expected: 'TOKEN_CLAIMS' },
    { name: 'wrong audience', claims: { aud: 'billing-api' }, expected: 'TOKEN_AUDIENCE' },
    { name: 'missing audience', claims: { aud: undefined }, expected: 'TOKEN_AUDIENCE' },
    { name: 'aud array containing a configured audience', claims: { aud: ['billing-api', AUDIENCE] }, expected: 'ok' },
    { name: 'aud array without a configured audience', claims: { aud: ['billing-api', 'other'] }, expected: 'TOKEN_AUDIENCE' },
    { name: 'second configured audience', claims: { aud: 'admin-api' }, issuer: { audiences: [AUDIENCE, 'admin-api'] }, expected: 'ok' },
    { name: 'nbf in the future beyond skew', claims: { nbf: NOW_S + 31 }, expected: 'TOKEN_CLAIMS' },
    { name: 'nbf in the future within skew', claims: { nbf: NOW_S + 20 }, expected: 'ok' },
    { name: 'iat in the future beyond skew', claims: { iat: NOW_S + 31 }, expected: 'TOKEN_CLAIMS' },
    { name: 'iat not a number', claims: { iat: 'yesterday' }, expected: 'TOKEN_CLAIMS' },
    { name: 'iat in the future within skew', claims: { iat: NOW_S + 20 }, expected: 'ok' },
    { name: 'iat in the future beyond skew with maxTokenAge', claims: { iat: NOW_S + 31 }, issuer: { maxTokenAgeSeconds: 600 }, expected: 'TOKEN_CLAIMS' },
    { name: 'maxTokenAgeSeconds exceeded', claims: { iat: NOW_S - 700 }, issuer: { maxTokenAgeSeconds: 600 }, expected: 'TOKEN_EXPIRED' },
    { name: 'maxTokenAgeSeconds exceeded but within skew', claims: { iat: NOW_S - 620 }, issuer: { maxTokenAgeSeconds: 600 }, expected: 'ok' },
    { name: 'maxTokenAgeSeconds set and iat missing', claims: { iat: undefined }, issuer: { maxTokenAgeSeconds: 600 }, expected: 'TOKEN_CLAIMS' },
    { name: 'old token without maxTokenAge', claims: { iat: NOW_S - 86_400 * 365 }, expected: 'ok' },
  ];
  it.each(cases)('$name -> $expected', async ({ claims, issuer: overrides, expected }) => {
    const a = authenticator([issuer(overrides)]);
    expect(verdict(await a.authenticate(await sign(RSA, baseClaims(claims))))).toBe(expected);
  });

  it('uses the injected clock, not the system clock', async () => {
    // Valid at the injected 2030 clock; an hour later on another injected clock it has expired.
    const token = await sign(RSA, baseClaims({ iat: NOW_S - 60, exp: NOW_S + 60 }));
    expect(verdict(await authenticator([issuer()]).authenticate(token))).toBe('ok');
    const later = authenticator([issuer()], { now: () => new Date((NOW_S + 3600) * 1000) });
    expect(verdict(await later.authenticate(token))).toBe('TOKEN_EXPIRED');
  });
});

describe('createJwtAuthenticator: not mine', () => {
  const tokens: Array<[name: string, token: string]> = [
    ['opaque token', 'c2b1f0a8e4d94f4b9b7e3e1d2a6c0f11'],
    ['two segments', 'abc.def'],
    ['four segments', 'a.b.c.d'],
    ['JWE-shaped (five segments)', 'a.b.c.d.e'],
    ['three segments, payload not JSON', `${b64url('{"alg":"RS256"}')}.${b64url('not json')}.sig`],
    ['characters outside base64url', 'a+b.c/d.e='],
  ];
  it.each(tokens)('%s', async (_name, token) => {
    expect(await authenticator([issuer()]).authenticate(token)).toEqual({ kind: 'notMine' });
  });
});

describe('createJwtAuthenticator: signatures and algorithms', () => {
  it('rejects a token signed by another key under the same kid', async () => {
    const result = await authenticator([issuer()]).authenticate(await sign(IMPOSTOR, baseClaims()));
    expect(verdict(result)).toBe('TOKEN_INVALID');
  });

  it('rejects a token whose kid is not in the JWKS', async () => {
    const token = await sign(RSA, baseClaims(), { kid: 'unknown-kid' });
    expect(verdict(await authenticator([issuer()]).authenticate(token))).toBe('TOKEN_INVALID');
  });

  it('rejects a token with a tampered payload', async () => {
    const [h, , s] = (await sign(RSA, baseClaims())).split('.');
    const forged = `${h}.${b64url(JSON.stringify(baseClaims({ sub: 'admin' })))}.${s}`;
    expect(verdict(await authenticator([issuer()]).authenticate(forged))).toBe('TOKEN_INVALID');
  });

  it('rejects an algorithm outside the allow-list even when the key is in the JWKS', async () => {
    const a = authenticator([issuer({ algorithms: ['RS256'] })]);
    expect(verdict(await a.authenticate(await sign(EC, baseClaims())))).toBe('TOKEN_INVALID');
    // Control: the same token passes when ES256 is allowed.
    const b = authenticator([issuer({ algorithms: ['RS256', 'ES256'] })]);
    expect(verdict(await b.authenticate(await sign(EC, baseClaims())))).toBe('ok');
  });

  const unsecured: Array<[name: string, header: Record<string, unknown>, overrides?: Partial<JwtIssuerOptions>]> = [
    ['alg none, default algorithms', { alg: 'none' }],
    ['alg none with typ', { alg: 'none', typ: 'JWT' }],
    ['alg None (other case)', { alg: 'None' }],
    ['alg none with an existing kid', { alg: 'none', kid: RSA.kid }, { algorithms: ['RS256'] }],
  ];
  it.each(unsecured)('rejects an unsecured JWT: %s', async (_name, header, overrides) => {
    const token = `${b64url(JSON.stringify(header))}.${b64url(JSON.stringify(baseClaims()))}.`;
    expect(verdict(await authenticator([issuer(overrides)]).authenticate(token))).toBe('TOKEN_INVALID');
  });

  it.each([
    ['default algorithms', undefined],
    ['RS256 only', ['RS256']],
  ])('rejects HS256 signed with the RSA public key bytes (%s)', async (_name, algorithms) => {
    const secret = new TextEncoder().encode(await exportSPKI(RSA.publicKey));
    const token = await new SignJWT(baseClaims()).setProtectedHeader({ alg: 'HS256', kid: RSA.kid }).sign(secret);
    const a = authenticator([issuer(algorithms === undefined ? {} : { algorithms })]);
    expect(verdict(await a.authenticate(token))).toBe('TOKEN_INVALID');
  });

  it('never uses a key embedded in the token header (jwk)', async () => {
    const attacker = await testKey('RS256', 'attacker');
    const token = await new SignJWT(baseClaims())
      .setProtectedHeader({ alg: 'RS256', jwk: await exportJWK(attacker.publicKey) })
      .sign(attacker.privateKey);
    expect(verdict(await authenticator([issuer({ keys: { jwks: { keys: [RSA.jwk] } } })]).authenticate(token))).toBe('TOKEN_INVALID');
  });
});

describe('createJwtAuthenticator: issuers are isolated', () => {
  const twoIssuers = (): JwtIssuerOptions[] => [
    { issuer: ISSUER, audiences: [AUDIENCE], keys: { jwks: { keys: [KEY_A.jwk, KEY_A_ONLY.jwk] } } },
    { issuer: OTHER_ISSUER, audiences: [AUDIENCE], keys: { jwks: { keys: [KEY_B.jwk] } } },
  ];

  it('verifies each issuer with its own keys', async () => {
    const a = authenticator(twoIssuers());
    const fromA = await a.authenticate(await sign(KEY_A, baseClaims()));
    const fromB = await a.authenticate(await sign(KEY_B, baseClaims({ iss: OTHER_ISSUER })));
    expect(fromA.kind === 'authenticated' && fromA.issuer).toBe(ISSUER);
    expect(fromB.kind === 'authenticated' && fromB.issuer).toBe(OTHER_ISSUER);
  });

  const attacks: Array<[name: string, key: TestKey]> = [
    ["A's key under the kid both issuers use", KEY_A],
    ["A's key under a kid only A publishes", KEY_A_ONLY],
  ];
  it.each(attacks)('a token claiming issuer B signed with %s fails', async (_name, key) => {
    const result = await authenticator(twoIssuers()).authenticate(await sign(key, baseClaims({ iss: OTHER_ISSUER })));
    expect(result.kind).toBe('failed');
    expect(verdict(result)).toBe('TOKEN_INVALID');
  });
});

describe('createJwtAuthenticator: options are checked when built', () => {
  const bad: Array<[name: string, issuers: JwtIssuerOptions[]]> = [
    ['empty audiences', [issuer({ audiences: [] })]],
    ['a secret shorter than 32 bytes', [issuer({ keys: { secret: new Uint8Array(31) }, algorithms: ['HS256'] })]],
    ['HS256 with public keys', [issuer({ algorithms: ['RS256', 'HS256'] })]],
    ['RS256 with a secret', [issuer({ keys: { secret: new Uint8Array(32) }, algorithms: ['RS256'] })]],
    ['algorithm none', [issuer({ algorithms: ['none'] })]],
    ['algorithm HS256', [issuer({ algorithms: ['HS256'] })]],
    ['algorithm none among good ones', [issuer({ algorithms: ['RS256', 'none'] })]],
    ['duplicate issuer', [issuer(), issuer({ audiences: ['other-api'] })]],
  ];
  it.each(bad)('%s -> TypeError', (_name, issuers) => {
    expect(() => authenticator(issuers)).toThrow(TypeError);
  });
});

describe('createJwtAuthenticator: remote JWKS', () => {
  const servers: Server[] = [];
  afterEach(async () => {
    for (const s of servers.splice(0)) {
      s.closeAllConnections();
      await new Promise<void>((resolve) => s.close(() => resolve()));
    }
  });

  async function listen(server: Server): Promise<number> {
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    return (server.address() as AddressInfo).port;
  }

  async function until(condition: () => boolean, what: string): Promise<void> {
    for (let i = 0; i < 250; i++) {
      if (condition()) return;
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    throw new Error(`timed out waiting for ${what}`);
  }

  it('reports the issuer as missing until its keys are fetched, then authenticates', async () => {
    let requests = 0;
    let release: () => void = () => undefined;
    const gate = new Promise<void>((resolve) => (release = resolve));
    const server = createServer((_req, res) => {
      requests++;
      void gate.then(() => {
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ keys: [RSA.jwk] }));
      });
    });
    servers.push(server);
    const port = await listen(server);

    const a = authenticator([{ issuer: ISSUER, audiences: [AUDIENCE], keys: { jwksUri: `http://127.0.0.1:${port}/certs` } }], clock);
    expect(a.missing()).toEqual([`keys of issuer ${ISSUER}`]);
    // The fetch starts at construction, not on the first request.
    await until(() => requests > 0, 'the JWKS request');
    expect(a.missing()).toEqual([`keys of issuer ${ISSUER}`]);

    release();
    await until(() => a.missing().length === 0, 'the keys to be loaded');
    expect(a.missing()).toEqual([]);
    const result = await a.authenticate(await sign(RSA, baseClaims()));
    expect(verdict(result)).toBe('ok');
    expect(requests).toBe(1);
  });

  it('fails KEYS_UNAVAILABLE when the JWKS endpoint cannot be reached', async () => {
    const probe = createServer();
    const port = await listen(probe);
    await new Promise<void>((resolve) => probe.close(() => resolve()));

    const a = authenticator([{ issuer: ISSUER, audiences: [AUDIENCE], keys: { jwksUri: `http://127.0.0.1:${port}/certs` } }], {
      ...clock,
      jwks: { timeoutMs: 2_000 },
    });
    const result = await a.authenticate(await sign(RSA, baseClaims()));
    expect(result.kind).toBe('failed');
    expect(verdict(result)).toBe('KEYS_UNAVAILABLE');
    expect(a.missing()).toEqual([`keys of issuer ${ISSUER}`]);
  });

  it('fails KEYS_UNAVAILABLE when the JWKS endpoint does not answer in time', async () => {
    const server = createServer(() => {
      // Never answers.
    });
    servers.push(server);
    const port = await listen(server);
    const a = authenticator([{ issuer: ISSUER, audiences: [AUDIENCE], keys: { jwksUri: `http://127.0.0.1:${port}/certs` } }], {
      ...clock,
      jwks: { timeoutMs: 200 },
    });
    const result = await a.authenticate(await sign(RSA, baseClaims()));
    expect(verdict(result)).toBe('KEYS_UNAVAILABLE');
    expect(a.missing()).toEqual([`keys of issuer ${ISSUER}`]);
  });

  // DESIGN.md §3: "A needed IdP is unreachable (... no keys ever fetched) -> 503; never allow". An IdP that
  // answers its JWKS URL with an error status or a broken body has given us no keys either.
  const broken: Array<[name: string, status: number, body: string]> = [
    ['HTTP 500', 500, 'internal error'],
    ['HTTP 503', 503, '{"keys":[]}'],
    ['HTTP 302 (jose does not follow redirects)', 302, ''],
    ['HTTP 200 with a body that is not JSON', 200, '<html>maintenance</html>'],
  ];
  it.each(broken)('fails KEYS_UNAVAILABLE (503), not TOKEN_INVALID, when the JWKS endpoint answers %s', async (_name, status, body) => {
    const server = createServer((_req, res) => {
      res.writeHead(status, { 'content-type': 'application/json' });
      res.end(body);
    });
    servers.push(server);
    const port = await listen(server);
    const a = authenticator([{ issuer: ISSUER, audiences: [AUDIENCE], keys: { jwksUri: `http://127.0.0.1:${port}/certs` } }], clock);
    const result = await a.authenticate(await sign(RSA, baseClaims()));
    expect(a.missing()).toEqual([`keys of issuer ${ISSUER}`]);
    expect(verdict(result)).toBe('KEYS_UNAVAILABLE');
  });
});

describe('createJwtAuthenticator: HMAC secrets', () => {
  const SECRET = new TextEncoder().encode('an HMAC secret of well over 32 bytes, for tests');
  const OTHER_SECRET = new TextEncoder().encode('another HMAC secret of over 32 bytes, for tests');

  async function signHmac(alg: string, secret: Uint8Array, claims: JWTPayload = baseClaims()): Promise<string> {
    return new SignJWT(claims).setProtectedHeader({ alg, typ: 'JWT' }).sign(secret);
  }

  function hmacIssuer(algorithms?: string[]): JwtIssuerOptions {
    return { issuer: ISSUER, audiences: [AUDIENCE], keys: { secret: SECRET }, ...(algorithms === undefined ? {} : { algorithms }) };
  }

  const cases: Array<{ name: string; token: () => Promise<string>; algorithms?: string[]; expected: 'ok' | ReasonCode }> = [
    { name: 'HS256 with the default algorithms (HS256)', token: () => signHmac('HS256', SECRET), expected: 'ok' },
    { name: 'HS384 when HS384 is allowed', token: () => signHmac('HS384', SECRET), algorithms: ['HS384'], expected: 'ok' },
    { name: 'HS384 when HS256 and HS384 are allowed', token: () => signHmac('HS384', SECRET), algorithms: ['HS256', 'HS384'], expected: 'ok' },
    { name: 'HS256 when HS256 and HS384 are allowed', token: () => signHmac('HS256', SECRET), algorithms: ['HS256', 'HS384'], expected: 'ok' },
    { name: 'HS384 with the default algorithms (HS256 only)', token: () => signHmac('HS384', SECRET), expected: 'TOKEN_INVALID' },
    { name: 'HS512 when only HS256 is allowed', token: () => signHmac('HS512', SECRET), algorithms: ['HS256'], expected: 'TOKEN_INVALID' },
    { name: 'HS256 signed with another secret', token: () => signHmac('HS256', OTHER_SECRET), expected: 'TOKEN_INVALID' },
    { name: 'RS256 token for the HMAC issuer', token: () => sign(RSA, baseClaims()), expected: 'TOKEN_INVALID' },
    { name: 'RS256 token for an issuer allowing HS256 and HS384', token: () => sign(RSA, baseClaims()), algorithms: ['HS256', 'HS384'], expected: 'TOKEN_INVALID' },
    { name: 'ES256 token for the HMAC issuer', token: () => sign(EC, baseClaims()), expected: 'TOKEN_INVALID' },
    { name: 'alg none', token: async () => `${b64url('{"alg":"none"}')}.${b64url(JSON.stringify(baseClaims()))}.`, expected: 'TOKEN_INVALID' },
    { name: 'HS256, expired', token: () => signHmac('HS256', SECRET, baseClaims({ exp: NOW_S - 60 })), expected: 'TOKEN_EXPIRED' },
    { name: 'HS256, wrong audience', token: () => signHmac('HS256', SECRET, baseClaims({ aud: 'billing-api' })), expected: 'TOKEN_AUDIENCE' },
  ];
  it.each(cases)('$name -> $expected', async ({ token, algorithms, expected }) => {
    const a = authenticator([hmacIssuer(algorithms)]);
    const result = await a.authenticate(await token());
    expect(verdict(result)).toBe(expected);
    if (result.kind === 'authenticated') expect(result.issuer).toBe(ISSUER);
    expect(a.missing()).toEqual([]);
  });
});

describe('createJwtAuthenticator: verified-token cache', () => {
  function cachingAuthenticator(overrides: Partial<JwtIssuerOptions> = {}, cacheSeconds?: number): { a: Authenticator; clock: { s: number }; hits: boolean[] } {
    const clockState = { s: NOW_S };
    const hits: boolean[] = [];
    const a = authenticator([issuer(overrides)], {
      now: () => new Date(clockState.s * 1000),
      events: { cache: (hit) => hits.push(hit) },
      ...(cacheSeconds === undefined ? {} : { cacheSeconds }),
    });
    return { a, clock: clockState, hits };
  }

  it('a second authenticate of the same token is served from the cache, with the same claims', async () => {
    const { a, hits } = cachingAuthenticator();
    const token = await sign(RSA, baseClaims({ roles: ['reader'] }));
    const first = await a.authenticate(token);
    const second = await a.authenticate(token);
    expect(verdict(first)).toBe('ok');
    expect(second).toEqual(first);
    expect(hits).toEqual([false, true]);
    // Another token is its own entry.
    expect(verdict(await a.authenticate(await sign(RSA, baseClaims({ sub: 'bob' }))))).toBe('ok');
    expect(hits).toEqual([false, true, false]);
  });

  it('is never served past exp: after exp (and the skew) the token is TOKEN_EXPIRED, not a cached success', async () => {
    const exp = NOW_S + 60;
    const { a, clock, hits } = cachingAuthenticator();
    const token = await sign(RSA, baseClaims({ exp }));
    expect(verdict(await a.authenticate(token))).toBe('ok');
    clock.s = exp - 1;
    expect(verdict(await a.authenticate(token))).toBe('ok');
    expect(hits).toEqual([false, true]);
    // Past exp the cache no longer answers; within the skew the fresh verification still accepts.
    clock.s = exp + 1;
    expect(verdict(await a.authenticate(token))).toBe('ok');
    expect(hits).toEqual([false, true, false]);
    clock.s = exp + 31;
    expect(verdict(await a.authenticate(token))).toBe('TOKEN_EXPIRED');
    expect(hits).toEqual([false, true, false, false]);
  });

  it('maxTokenAgeSeconds is respected on cache hits', async () => {
    const iat = NOW_S - 500;
    const { a, clock, hits } = cachingAuthenticator({ maxTokenAgeSeconds: 600 });
    const token = await sign(RSA, baseClaims({ iat, exp: NOW_S + 3_600 }));
    expect(verdict(await a.authenticate(token))).toBe('ok');
    clock.s = iat + 599;
    expect(verdict(await a.authenticate(token))).toBe('ok');
    expect(hits).toEqual([false, true]);
    clock.s = iat + 601;
    expect(verdict(await a.authenticate(token))).toBe('ok');
    expect(hits).toEqual([false, true, false]);
    clock.s = iat + 631;
    expect(verdict(await a.authenticate(token))).toBe('TOKEN_EXPIRED');
    expect(hits).toEqual([false, true, false, false]);
  });

  it('failures are not cached', async () => {
    const { a, hits } = cachingAuthenticator();
    const token = await sign(RSA, baseClaims({ aud: 'billing-api' }));
    expect(verdict(await a.authenticate(token))).toBe('TOKEN_AUDIENCE');
    expect(verdict(await a.authenticate(token))).toBe('TOKEN_AUDIENCE');
    expect(hits).toEqual([false, false]);
  });

  it('cacheSeconds 0 turns the cache off', async () => {
    const { a, hits } = cachingAuthenticator({}, 0);
    const token = await sign(RSA, baseClaims());
    expect(verdict(await a.authenticate(token))).toBe('ok');
    expect(verdict(await a.authenticate(token))).toBe('ok');
    expect(hits).toEqual([false, false]);
  });

  it('an entry of one issuer never answers for another issuer', async () => {
    const hits: boolean[] = [];
    const a = authenticator(
      [
        { issuer: ISSUER, audiences: [AUDIENCE], keys: { jwks: { keys: [KEY_A.jwk] } } },
        { issuer: OTHER_ISSUER, audiences: [AUDIENCE], keys: { jwks: { keys: [KEY_B.jwk] } } },
      ],
      { ...clock, events: { cache: (hit) => hits.push(hit) } },
    );
    expect(verdict(await a.authenticate(await sign(KEY_A, baseClaims())))).toBe('ok');
    expect(verdict(await a.authenticate(await sign(KEY_A, baseClaims({ iss: OTHER_ISSUER }))))).toBe('TOKEN_INVALID');
    expect(hits).toEqual([false, false]);
  });
});

describe('createJwtAuthenticator: discovery', () => {
  const loopbacks: Loopback[] = [];
  afterEach(async () => {
    for (const l of loopbacks.splice(0)) await l.close();
  });

  interface Idp {
    readonly origin: string;
    document: ((origin: string) => Record<string, unknown>) | undefined;
    discoveryCalls: number;
    jwksCalls: number;
  }

  async function idp(document: Idp['document']): Promise<Idp> {
    const state = { document, discoveryCalls: 0, jwksCalls: 0 };
    const loopback = await startLoopback((req, res) => {
      if (req.url === '/.well-known/openid-configuration') {
        state.discoveryCalls++;
        if (state.document === undefined) sendJson(res, 404, { error: 'not_found' });
        else sendJson(res, 200, state.document(loopback.origin));
      } else if (req.url === '/certs') {
        state.jwksCalls++;
        sendJson(res, 200, { keys: [RSA.jwk] });
      } else sendJson(res, 404, { error: 'not_found' });
    });
    loopbacks.push(loopback);
    return Object.assign(state, { origin: loopback.origin });
  }

  function discoveryAuthenticator(origin: string): { a: Authenticator; discovered: string[]; fetched: string[] } {
    const discovered: string[] = [];
    const fetched: string[] = [];
    const a = authenticator([{ issuer: origin, audiences: [AUDIENCE], keys: { discovery: true } }], {
      ...clock,
      discoveredKeySource: createDiscoveredKeySource,
      events: { discovered: (_issuer, result) => discovered.push(result), keysFetched: (_issuer, result) => fetched.push(result) },
    });
    return { a, discovered, fetched };
  }

  it('is ready after discovery and the JWKS fetch, then verifies a token of the issuer', async () => {
    const server = await idp((origin) => ({ issuer: origin, jwks_uri: `${origin}/certs` }));
    const { a, discovered, fetched } = discoveryAuthenticator(server.origin);
    expect(a.missing()).toEqual([`keys of issuer ${server.origin}`]);
    await waitUntil(() => a.missing().length === 0, 'discovery and the JWKS fetch');
    expect(discovered).toEqual(['success']);
    expect(fetched).toEqual(['success']);
    const result = await a.authenticate(await sign(RSA, baseClaims({ iss: server.origin })));
    expect(verdict(result)).toBe('ok');
    expect(result.kind === 'authenticated' && result.issuer).toBe(server.origin);
    expect([server.discoveryCalls, server.jwksCalls]).toEqual([1, 1]);
  });

  const neverReady: Array<[name: string, document: Idp['document']]> = [
    ['the document names another issuer', (origin) => ({ issuer: 'https://evil.example.com', jwks_uri: `${origin}/certs` })],
    ['the document names the issuer with another path', (origin) => ({ issuer: `${origin}/realms/other`, jwks_uri: `${origin}/certs` })],
    ['the document has no jwks_uri', (origin) => ({ issuer: origin })],
    ['there is no document (404)', undefined],
  ];
  it.each(neverReady)('%s: never ready, tokens get KEYS_UNAVAILABLE', async (_name, document) => {
    const server = await idp(document);
    const { a, discovered } = discoveryAuthenticator(server.origin);
    await waitUntil(() => discovered.length > 0, 'the discovery attempt');
    expect(discovered[0]).toBe('error');
    expect(a.missing()).toEqual([`keys of issuer ${server.origin}`]);
    expect(verdict(await a.authenticate(await sign(RSA, baseClaims({ iss: server.origin }))))).toBe('KEYS_UNAVAILABLE');
    expect(server.jwksCalls).toBe(0);
  });
});

// Soak findings, through the authenticator and both remote key sources (jwksUri, and discovery wrapping it):
// a token signed with the IdP's new key got 401 while the IdP was down, and tokens verified with a key the
// IdP had since withdrawn kept working from the verified-token cache.
describe.each(['jwksUri', 'discovery'] as const)('createJwtAuthenticator: remote keys through %s', (via) => {
  const loopbacks: Loopback[] = [];
  afterEach(async () => {
    for (const l of loopbacks.splice(0)) await l.close();
  });

  /** An IdP on loopback serving a discovery document and a JWKS the test changes. */
  interface RemoteIdp {
    readonly origin: string;
    keys: JWK[];
    /** Status of the JWKS answer; anything but 200 answers an error body. */
    status: number;
    jwksCalls: number;
  }

  async function remoteIdp(keys: JWK[]): Promise<RemoteIdp> {
    const state = { keys, status: 200, jwksCalls: 0 };
    const loopback = await startLoopback((req, res) => {
      if (req.url === '/.well-known/openid-configuration') sendJson(res, 200, { issuer: loopback.origin, jwks_uri: `${loopback.origin}/certs` });
      else if (req.url === '/certs') {
        state.jwksCalls++;
        if (state.status === 200) sendJson(res, 200, { keys: state.keys });
        else sendJson(res, state.status, { error: 'down' });
      } else sendJson(res, 404, { error: 'not_found' });
    });
    loopbacks.push(loopback);
    return Object.assign(state, { origin: loopback.origin });
  }

  interface Remote {
    readonly a: Authenticator;
    readonly clock: { ms: number };
    /** Cache hit (true) or miss (false) per authenticate that reached a known issuer. */
    readonly hits: boolean[];
    readonly fetched: string[];
    readonly removed: string[];
    /** Signs claims for the remote issuer, valid for an hour of the injected clock. */
    token(key: TestKey, claims?: Record<string, unknown>): Promise<string>;
  }

  /** An authenticator trusting `idp` (and OTHER_ISSUER with KEY_B from a file), loaded. */
  async function remote(idp: RemoteIdp, jwks: JwtAuthenticatorOptions['jwks'] = {}): Promise<Remote> {
    const clockState = { ms: NOW.getTime() };
    const hits: boolean[] = [];
    const fetched: string[] = [];
    const removed: string[] = [];
    const a = authenticator(
      [
        { issuer: idp.origin, audiences: [AUDIENCE], keys: via === 'jwksUri' ? { jwksUri: `${idp.origin}/certs` } : { discovery: true } },
        { issuer: OTHER_ISSUER, audiences: [AUDIENCE], keys: { jwks: { keys: [KEY_B.jwk] } } },
      ],
      {
        now: () => new Date(clockState.ms),
        jwks,
        discoveredKeySource: createDiscoveredKeySource,
        events: {
          cache: (hit) => hits.push(hit),
          keysFetched: (_issuer, result) => fetched.push(result),
          keysRemoved: (issuer, count) => removed.push(`${issuer === idp.origin ? 'idp' : issuer} ${count}`),
        },
      },
    );
    await waitUntil(() => a.missing().length === 0, 'the remote keys');
    expect(fetched).toEqual(['success']);
    return {
      a,
      clock: clockState,
      hits,
      fetched,
      removed,
      token: (key, claims = {}) => sign(key, baseClaims({ iss: idp.origin, exp: NOW_S + 3_600, ...claims })),
    };
  }

  const COOLDOWN_MS = 30_000;

  it('a new kid while the JWKS endpoint fails is KEYS_UNAVAILABLE (503), and is accepted one backoff after it answers again', async () => {
    const idp = await remoteIdp([RSA.jwk]);
    const r = await remote(idp, { backoffMs: 1_000 });
    idp.keys = [RSA.jwk, EC.jwk];
    idp.status = 503;
    r.clock.ms += COOLDOWN_MS + 1;
    const rotated = await r.token(EC);
    expect(verdict(await r.a.authenticate(rotated))).toBe('KEYS_UNAVAILABLE');
    expect(r.fetched).toEqual(['success', 'error']);
    // Known keys keep working during the outage.
    expect(verdict(await r.a.authenticate(await r.token(RSA)))).toBe('ok');

    idp.status = 200;
    // Inside the backoff: not asked again, still 503.
    r.clock.ms += 999;
    expect(verdict(await r.a.authenticate(rotated))).toBe('KEYS_UNAVAILABLE');
    expect(idp.jwksCalls).toBe(2);
    // One backoff (1 s) after the failure, not a cooldown (30 s): the IdP is asked and the new key works.
    r.clock.ms += 1;
    expect(verdict(await r.a.authenticate(rotated))).toBe('ok');
    expect(idp.jwksCalls).toBe(3);
    // The IdP answered and its set lacks this kid: a bad token (401), no fetch inside the cooldown.
    expect(verdict(await r.a.authenticate(await r.token(KEY_A_ONLY)))).toBe('TOKEN_INVALID');
    expect(idp.jwksCalls).toBe(3);
  });

  it('a refetch for a new kid that drops a key: tokens cached with it are verified again and refused; other issuers stay cached', async () => {
    const idp = await remoteIdp([RSA.jwk]);
    const r = await remote(idp);
    const old = await r.token(RSA);
    const other = await sign(KEY_B, baseClaims({ iss: OTHER_ISSUER }));
    for (const t of [old, other, old, other]) expect(verdict(await r.a.authenticate(t))).toBe('ok');
    expect(r.hits).toEqual([false, false, true, true]);

    // Rotation that withdraws the old key; the first token with the new kid fetches the new set.
    idp.keys = [EC.jwk];
    r.clock.ms += COOLDOWN_MS + 1;
    expect(verdict(await r.a.authenticate(await r.token(EC)))).toBe('ok');
    expect(idp.jwksCalls).toBe(2);
    // Reported once (the sidecar logs it), for that issuer and the one key it dropped.
    expect(r.removed).toEqual(['idp 1']);

    r.hits.length = 0;
    expect(verdict(await r.a.authenticate(old))).toBe('TOKEN_INVALID');
    expect(verdict(await r.a.authenticate(old))).toBe('TOKEN_INVALID');
    expect(verdict(await r.a.authenticate(other))).toBe('ok');
    expect(r.hits).toEqual([false, false, true]);
  });

  it('a background refresh that drops a key: tokens cached with it, even one verified as the refresh ran, are refused', async () => {
    const idp = await remoteIdp([RSA.jwk]);
    const r = await remote(idp, { refreshMs: 60_000 });
    const old = await r.token(RSA);
    expect(verdict(await r.a.authenticate(old))).toBe('ok');

    idp.keys = [EC.jwk];
    r.clock.ms += 60_000;
    // This one is verified with the keys we have while the refresh runs in the background.
    const during = await r.token(RSA, { sub: 'bob' });
    expect(verdict(await r.a.authenticate(during))).toBe('ok');
    await waitUntil(() => r.fetched.length === 2, 'the background refresh');
    expect(r.fetched).toEqual(['success', 'success']);

    r.hits.length = 0;
    expect(verdict(await r.a.authenticate(old))).toBe('TOKEN_INVALID');
    expect(verdict(await r.a.authenticate(during))).toBe('TOKEN_INVALID');
    expect(r.hits).toEqual([false, false]);
    expect(verdict(await r.a.authenticate(await r.token(EC)))).toBe('ok');
  });

  it('a key replaced under the same kid: tokens cached with the old material are refused', async () => {
    const idp = await remoteIdp([RSA.jwk]);
    const r = await remote(idp, { refreshMs: 60_000 });
    const old = await r.token(RSA);
    expect(verdict(await r.a.authenticate(old))).toBe('ok');

    idp.keys = [IMPOSTOR.jwk];
    r.clock.ms += 60_000;
    // Served from the keys we have; starts the background refresh.
    expect(verdict(await r.a.authenticate(await r.token(RSA, { sub: 'bob' })))).toBe('ok');
    await waitUntil(() => r.fetched.length === 2, 'the background refresh');
    r.hits.length = 0;
    expect(verdict(await r.a.authenticate(old))).toBe('TOKEN_INVALID');
    expect(r.hits).toEqual([false]);
    expect(verdict(await r.a.authenticate(await r.token(IMPOSTOR)))).toBe('ok');
  });

  it('a rotation that keeps every key keeps the cached tokens', async () => {
    const idp = await remoteIdp([RSA.jwk]);
    const r = await remote(idp);
    const old = await r.token(RSA);
    expect(verdict(await r.a.authenticate(old))).toBe('ok');
    idp.keys = [EC.jwk, RSA.jwk];
    r.clock.ms += COOLDOWN_MS + 1;
    expect(verdict(await r.a.authenticate(await r.token(EC)))).toBe('ok');
    expect(idp.jwksCalls).toBe(2);
    r.hits.length = 0;
    expect(verdict(await r.a.authenticate(old))).toBe('ok');
    expect(r.hits).toEqual([true]);
  });

  it('a failed fetch keeps the cached tokens', async () => {
    const idp = await remoteIdp([RSA.jwk]);
    const r = await remote(idp);
    const old = await r.token(RSA);
    expect(verdict(await r.a.authenticate(old))).toBe('ok');
    idp.status = 500;
    r.clock.ms += COOLDOWN_MS + 1;
    expect(verdict(await r.a.authenticate(await r.token(EC)))).toBe('KEYS_UNAVAILABLE');
    r.hits.length = 0;
    expect(verdict(await r.a.authenticate(old))).toBe('ok');
    expect(r.hits).toEqual([true]);
  });
});

describe('mounted key files replaced while a verification is in flight', () => {
  it('a token verified with the old keys while they were replaced is not cached: the next request is checked against the new keys', async () => {
    const a = createJwtAuthenticator([issuer({ keys: { jwks: { keys: [RSA.jwk] } } })], clock);
    open.push(a);
    const token = await sign(RSA, baseClaims());
    // Started with the old keys (the signature check is asynchronous), finished after the swap.
    const inFlight = a.authenticate(token);
    a.replaceLocalKeys(new Map([[ISSUER, { jwks: { keys: [EC.jwk] } }]]));
    expect(verdict(await inFlight)).toBe('ok');
    expect(verdict(await a.authenticate(token))).toBe('TOKEN_INVALID');
  });
});
