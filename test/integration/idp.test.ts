/**
 * Tokens from a real identity provider (oidc-provider on loopback) through the running sidecar: discovery,
 * JWT access tokens, opaque tokens through RFC 7662 introspection (basic and post), caches, key rotation,
 * an IdP that stops, hangs or answers garbage, and token sources. The sidecar's clock is injected, so
 * cooldowns and cache periods are crossed without sleeping.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { generateKeyPair, SignJWT } from 'jose';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { ConfigError } from '../../src/config/load.js';
import { startTestProvider, type TestProvider } from '../support/oidc-provider.js';
import { startTestSidecar, waitReady, type TestSidecar } from '../support/sidecar.js';
import { startRecordingUpstream, type RecordingUpstream } from '../support/upstream.js';

const JWT_AUD = 'urn:orders-api';
const OPAQUE_AUD = 'urn:orders-opaque';
const BASIC = { clientId: 'sidecar-basic', clientSecret: 'basic-secret-0123456789abcdef0123', authMethod: 'client_secret_basic' } as const;
const POST = { clientId: 'sidecar-post', clientSecret: 'post-secret-0123456789abcdef01234', authMethod: 'client_secret_post' } as const;

let idp: TestProvider;
let upstream: RecordingUpstream;
let dir: string;
let clockOffsetMs = 0;
const now = (): Date => new Date(Date.now() + clockOffsetMs);

function bearer(token: string): Record<string, string> {
  return { authorization: `Bearer ${token}` };
}

async function secretFile(name: string, value: string): Promise<string> {
  const file = join(dir, name);
  await writeFile(file, `${value}\n`);
  return file;
}

/** A sidecar trusting `idp` through discovery, for JWTs and for opaque tokens. */
async function discoverySidecar(extra: Record<string, unknown> = {}): Promise<TestSidecar> {
  return startTestSidecar(
    {
      upstream: { url: upstream.url },
      authn: {
        jwt: [{ issuer: idp.issuer, discovery: true, audiences: [JWT_AUD] }],
        introspection: [
          {
            issuer: idp.issuer,
            discovery: true,
            clientId: BASIC.clientId,
            clientSecretFile: await secretFile('basic.secret', BASIC.clientSecret),
            authMethod: 'client_secret_basic',
            audiences: [OPAQUE_AUD],
            cacheSeconds: 30,
            timeoutSeconds: 1,
          },
        ],
        ...extra,
      },
    },
    { now },
  );
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'authz-idp-'));
  [idp, upstream] = await Promise.all([
    startTestProvider({
      clients: [
        { clientId: 'reader-app', clientSecret: 'reader-secret-0123456789abcdef', roles: ['reader'] },
        { clientId: 'admin-app', clientSecret: 'admin-secret-0123456789abcdefg', roles: ['admin'] },
      ],
      audiences: [JWT_AUD],
      opaqueAudiences: [OPAQUE_AUD],
      introspectionClients: [BASIC, POST],
      // Tokens must outlive the sidecar clock moving 15 minutes ahead (background JWKS refresh).
      accessTokenTtlSeconds: 3600,
    }),
    startRecordingUpstream(),
  ]);
});

afterAll(async () => {
  await Promise.all([idp?.close(), upstream?.close()]);
  await rm(dir, { recursive: true, force: true });
});

afterEach(async () => {
  clockOffsetMs = 0;
  idp.hang = false;
  idp.jwksOverride = undefined;
  await idp.start();
});

describe('discovery, JWT and opaque tokens', () => {
  let sidecar: TestSidecar;
  beforeAll(async () => {
    sidecar = await discoverySidecar();
    await waitReady(sidecar.adminUrl);
  });
  afterAll(async () => {
    await sidecar.close();
  });

  it('is ready once discovery and the keys are done', async () => {
    const res = await fetch(`${sidecar.adminUrl}/readyz`);
    expect(await res.json()).toMatchObject({ status: 'ready', missing: [] });
  });

  it('accepts a JWT access token with keys found through discovery', async () => {
    const res = await fetch(`${sidecar.url}/orders/1`, { headers: bearer(await idp.getToken('reader-app')) });
    expect(res.status).toBe(200);
    expect(upstream.requests.at(-1)?.headers['x-auth-subject']).toBe('reader-app');
    expect(upstream.requests.at(-1)?.headers['x-auth-issuer']).toBe(idp.issuer);
  });

  it('accepts an opaque token through introspection, and the second request inside cacheSeconds does not call the IdP', async () => {
    const token = await idp.getToken('reader-app', { audience: OPAQUE_AUD });
    expect(token.split('.')).not.toHaveLength(3);
    const before = idp.requests('/token/introspection');
    const first = await fetch(`${sidecar.url}/orders/2`, { headers: bearer(token) });
    expect(first.status).toBe(200);
    expect(upstream.requests.at(-1)?.headers['x-auth-subject']).toBe('reader-app');
    expect(upstream.requests.at(-1)?.headers['x-auth-roles']).toBe('reader');
    expect(idp.requests('/token/introspection')).toBe(before + 1);
    // client_secret_basic: the introspection call carried an Authorization header.
    expect(idp.requestLog.filter((r) => r.path.endsWith('/token/introspection')).at(-1)?.authScheme).toBe('basic');

    const second = await fetch(`${sidecar.url}/orders/2`, { headers: bearer(token) });
    expect(second.status).toBe(200);
    expect(idp.requests('/token/introspection')).toBe(before + 1);

    // Past cacheSeconds (30 s on the sidecar's clock) the IdP is asked again.
    clockOffsetMs = 31_000;
    const third = await fetch(`${sidecar.url}/orders/2`, { headers: bearer(token) });
    expect(third.status).toBe(200);
    expect(idp.requests('/token/introspection')).toBe(before + 2);
  });

  it('evaluates the policy on every request even when the token is cached', async () => {
    const token = await idp.getToken('reader-app', { audience: OPAQUE_AUD });
    expect((await fetch(`${sidecar.url}/orders/3`, { headers: bearer(token) })).status).toBe(200);
    expect((await fetch(`${sidecar.url}/orders/3`, { method: 'DELETE', headers: bearer(token) })).status).toBe(403);
  });

  it('refuses an opaque token that introspects as inactive, and an opaque token for another audience', async () => {
    const unknown = await fetch(`${sidecar.url}/orders/4`, { headers: bearer('AbCdEf0123456789opaque') });
    expect(unknown.status).toBe(401);
    expect(await unknown.json()).toMatchObject({ code: 'TOKEN_INVALID' });
  });

  it('picks up a rotated signing key on the first token with the new kid (one JWKS refetch)', async () => {
    const oldToken = await idp.getToken('reader-app');
    expect((await fetch(`${sidecar.url}/orders/5`, { headers: bearer(oldToken) })).status).toBe(200);
    const oldKid = idp.currentKid;
    await idp.rotateKeys();
    expect(idp.currentKid).not.toBe(oldKid);
    const fetchesBefore = idp.requests('/jwks');
    // Past the 30 s refetch cooldown measured from the startup fetch.
    clockOffsetMs = 31_000;
    const res = await fetch(`${sidecar.url}/orders/5`, { headers: bearer(await idp.getToken('reader-app')) });
    expect(res.status).toBe(200);
    expect(idp.requests('/jwks')).toBe(fetchesBefore + 1);
  });

  it('bounds JWKS refetches when tokens carry many random kids', async () => {
    const { privateKey } = await generateKeyPair('RS256');
    const forged = await Promise.all(
      Array.from({ length: 40 }, (_, i) =>
        new SignJWT({ roles: ['admin'] })
          .setProtectedHeader({ alg: 'RS256', kid: `random-${i}-${Math.random()}` })
          .setIssuer(idp.issuer)
          .setAudience(JWT_AUD)
          .setSubject('mallory')
          .setIssuedAt()
          .setExpirationTime('5m')
          .sign(privateKey),
      ),
    );
    clockOffsetMs = 120_000; // cooldown over: the first misses may refetch once
    const before = idp.requests('/jwks');
    const answers = await Promise.all(forged.map((t) => fetch(`${sidecar.url}/orders/6`, { headers: bearer(t) })));
    expect(answers.map((r) => r.status)).toEqual(forged.map(() => 401));
    // The first misses past the cooldown share exactly one refetch.
    expect(idp.requests('/jwks') - before).toBe(1);
    // And more of them inside the cooldown cause no fetch at all.
    const after = idp.requests('/jwks');
    await Promise.all(forged.slice(0, 10).map((t) => fetch(`${sidecar.url}/orders/6`, { headers: bearer(t) })));
    expect(idp.requests('/jwks')).toBe(after);
  });

  it('keeps serving the last good keys while the JWKS endpoint answers garbage', async () => {
    idp.jwksOverride = '<html>maintenance</html>';
    clockOffsetMs = 15 * 60_000; // past the 10 min background refresh (earlier tests refetched at +2 min)
    const before = idp.requests('/jwks');
    for (let i = 0; i < 3; i++) {
      const res = await fetch(`${sidecar.url}/orders/7`, { headers: bearer(await idp.getToken('reader-app')) });
      expect(res.status).toBe(200);
    }
    // The refresh was attempted (and failed) at most once: a failure waits a backoff (1 s, doubling) before the
    // next try, and these three requests take far less than that.
    await expect.poll(() => idp.requests('/jwks') - before).toBe(1);
  });

  it('keeps accepting known tokens and keys when the IdP stops after startup', async () => {
    const jwt = await idp.getToken('reader-app');
    const unseenJwt = await idp.getToken('admin-app');
    const opaque = await idp.getToken('reader-app', { audience: OPAQUE_AUD });
    expect((await fetch(`${sidecar.url}/orders/8`, { headers: bearer(jwt) })).status).toBe(200);
    expect((await fetch(`${sidecar.url}/orders/8`, { headers: bearer(opaque) })).status).toBe(200);
    await idp.stop();
    expect((await fetch(`${sidecar.url}/orders/8`, { headers: bearer(jwt) })).status).toBe(200);
    // Never seen before, but signed with a key the sidecar already has.
    expect((await fetch(`${sidecar.url}/orders/8`, { headers: bearer(unseenJwt) })).status).toBe(200);
    // The introspection answer is still cached.
    expect((await fetch(`${sidecar.url}/orders/8`, { headers: bearer(opaque) })).status).toBe(200);
    expect((await fetch(`${sidecar.adminUrl}/readyz`)).status).toBe(200);
  });

  it('answers 503 for an opaque token when the introspection endpoint is down', async () => {
    const opaque = await idp.getToken('reader-app', { audience: OPAQUE_AUD });
    await idp.stop();
    const res = await fetch(`${sidecar.url}/orders/9`, { headers: bearer(opaque) });
    expect(res.status).toBe(503);
    expect(await res.json()).toMatchObject({ code: 'INTROSPECTION_UNAVAILABLE', status: 503 });
  });

  it('answers 503 within timeoutSeconds when the introspection endpoint hangs, never 200, never a hang', async () => {
    const opaque = await idp.getToken('reader-app', { audience: OPAQUE_AUD });
    idp.hang = true;
    const started = Date.now();
    const res = await fetch(`${sidecar.url}/orders/10`, { headers: bearer(opaque), signal: AbortSignal.timeout(10_000) });
    expect(res.status).toBe(503);
    expect(Date.now() - started).toBeLessThan(5_000);
    await idp.stop(); // releases the hung connections
  });
});

describe('introspection with client_secret_post and a configured endpoint', () => {
  it('authenticates in the body and accepts the opaque token', async () => {
    const sidecar = await startTestSidecar({
      upstream: { url: upstream.url },
      authn: {
        introspection: [
          {
            issuer: idp.issuer,
            endpoint: idp.introspectionEndpoint,
            clientId: POST.clientId,
            clientSecretFile: await secretFile('post.secret', POST.clientSecret),
            authMethod: 'client_secret_post',
          },
        ],
      },
    });
    try {
      await waitReady(sidecar.adminUrl);
      const res = await fetch(`${sidecar.url}/orders/11`, { headers: bearer(await idp.getToken('admin-app', { audience: OPAQUE_AUD })) });
      expect(res.status).toBe(200);
      expect(upstream.requests.at(-1)?.headers['x-auth-roles']).toBe('admin');
      const call = idp.requestLog.filter((r) => r.path.endsWith('/token/introspection')).at(-1);
      expect(call?.authScheme).toBeUndefined(); // no Authorization header: the credentials were in the body
      // With only introspection configured, JWTs are introspected too; oidc-provider refuses JWT
      // introspection (400), which is an IdP failure for us: 503, never allow.
      const jwt = await fetch(`${sidecar.url}/orders/11`, { headers: bearer(await idp.getToken('reader-app')) });
      expect(jwt.status).toBe(503);
    } finally {
      await sidecar.close();
    }
  });

  it('a wrong client secret never lets a token through', async () => {
    const sidecar = await startTestSidecar({
      upstream: { url: upstream.url },
      authn: {
        introspection: [
          { issuer: idp.issuer, endpoint: idp.introspectionEndpoint, clientId: POST.clientId, clientSecretFile: await secretFile('wrong.secret', 'not-the-secret') },
        ],
      },
    });
    try {
      const res = await fetch(`${sidecar.url}/orders/12`, { headers: bearer(await idp.getToken('admin-app', { audience: OPAQUE_AUD })) });
      expect(res.status).toBe(503);
    } finally {
      await sidecar.close();
    }
  });
});

describe('readiness', () => {
  it('is 503 while discovery cannot reach the issuer, naming what is missing, and requests get 503', async () => {
    await idp.stop();
    const sidecar = await discoverySidecar();
    try {
      const res = await fetch(`${sidecar.adminUrl}/readyz`);
      expect(res.status).toBe(503);
      expect(await res.json()).toMatchObject({
        status: 'not ready',
        missing: [`keys of issuer ${idp.issuer}`, `introspection endpoint of ${idp.issuer}`],
      });
      await idp.start();
      const token = await idp.getToken('reader-app');
      // Discovery is retried every 2 s until it succeeds.
      await waitReady(sidecar.adminUrl, 10_000);
      expect((await fetch(`${sidecar.url}/orders/13`, { headers: bearer(token) })).status).toBe(200);
    } finally {
      await sidecar.close();
    }
  });
});

describe('token sources and HMAC issuers', () => {
  const SECRET = 'a-shared-secret-of-at-least-32-bytes!';
  let sidecar: TestSidecar;
  beforeAll(async () => {
    sidecar = await startTestSidecar({
      upstream: { url: upstream.url },
      authn: {
        jwt: [{ issuer: 'https://hs.example', audiences: [JWT_AUD], secretFile: await secretFile('hs.secret', SECRET), algorithms: ['HS256'] }],
        tokenFrom: [{ header: 'authorization' }, { cookie: 'access_token' }, { query: 'access_token' }],
      },
    });
  });
  afterAll(async () => {
    await sidecar.close();
  });

  async function hsToken(sub: string, roles: string[]): Promise<string> {
    return new SignJWT({ roles })
      .setProtectedHeader({ alg: 'HS256' })
      .setIssuer('https://hs.example')
      .setAudience(JWT_AUD)
      .setSubject(sub)
      .setIssuedAt()
      .setExpirationTime('5m')
      .sign(new TextEncoder().encode(SECRET));
  }

  it('verifies HS256 tokens with the mounted secret', async () => {
    const res = await fetch(`${sidecar.url}/orders/20`, { headers: bearer(await hsToken('hs-user', ['reader'])) });
    expect(res.status).toBe(200);
    expect(upstream.requests.at(-1)?.headers['x-auth-subject']).toBe('hs-user');
  });

  it('takes the token from a cookie and forwards the other cookies without it', async () => {
    const token = await hsToken('cookie-user', ['reader']);
    const res = await fetch(`${sidecar.url}/orders/21`, { headers: { cookie: `theme=dark; access_token=${token}; lang=en` } });
    expect(res.status).toBe(200);
    const seen = upstream.requests.at(-1);
    expect(seen?.headers['x-auth-subject']).toBe('cookie-user');
    expect(seen?.headers['cookie']).toBe('theme=dark; lang=en');
  });

  it('takes the token from the query and forwards the query without it, the rest as received', async () => {
    const token = await hsToken('query-user', ['reader']);
    const res = await fetch(`${sidecar.url}/orders/22?b=2&access_token=${token}&a=%2F`);
    expect(res.status).toBe(200);
    expect(upstream.requests.at(-1)?.url).toBe('/orders/22?b=2&a=%2F');
    expect(upstream.requests.at(-1)?.headers['x-auth-subject']).toBe('query-user');
  });

  it('answers 400 for two different credentials (header and cookie)', async () => {
    const res = await fetch(`${sidecar.url}/orders/23`, {
      headers: { ...bearer(await hsToken('a', ['reader'])), cookie: `access_token=${await hsToken('b', ['admin'])}` },
    });
    expect(res.status).toBe(400);
    expect(await res.json()).toMatchObject({ code: 'CREDENTIALS_CONFLICT' });
  });

  it('refuses a secret shorter than 32 bytes at startup, naming the key', async () => {
    const err = await startTestSidecar({
      upstream: { url: upstream.url },
      authn: { jwt: [{ issuer: 'https://hs.example', audiences: [JWT_AUD], secretFile: await secretFile('short.secret', 'too-short') }] },
    }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ConfigError);
    expect((err as ConfigError).issues).toEqual([{ path: 'authn.jwt[0].secretFile', message: 'the secret must be at least 32 bytes (it has 9)' }]);
  });
});
