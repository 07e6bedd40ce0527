/**
 * Remote JWKS faults found by a soak run, through the running sidecar and a real identity provider
 * (oidc-provider on loopback), for an issuer with a `jwksUri` and one found through discovery:
 *
 * - a token signed with the IdP's new key while the JWKS endpoint fails is 503 KEYS_UNAVAILABLE (we cannot
 *   tell whether it is valid), not 401; the IdP is asked again one backoff after the failure, not a whole
 *   cooldown later, and a flood of such tokens shares the fetches;
 * - a key the IdP withdraws from its JWKS stops working for tokens the sidecar had verified and cached.
 *
 * The sidecar's clock is injected (it moves with the real clock plus an offset), so cooldowns, backoffs and
 * refresh periods are crossed without sleeping.
 */
import { generateKeyPair, SignJWT } from 'jose';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { startTestProvider, type TestProvider } from '../support/oidc-provider.js';
import { startTestSidecar, waitReady, type TestSidecar } from '../support/sidecar.js';
import { startRecordingUpstream, type RecordingUpstream } from '../support/upstream.js';

const AUDIENCE = 'urn:orders-api';
/** The sidecar's cooldown after a successful fetch (the default). */
const COOLDOWN_MS = 30_000;

let idp: TestProvider;
let upstream: RecordingUpstream;
let clockOffsetMs = 0;
const now = (): Date => new Date(Date.now() + clockOffsetMs);
const sidecars: TestSidecar[] = [];

beforeAll(async () => {
  [idp, upstream] = await Promise.all([
    startTestProvider({
      clients: [{ clientId: 'reader-app', clientSecret: 'reader-secret-0123456789abcdef', roles: ['reader'] }],
      audiences: [AUDIENCE],
      // Tokens must outlive the sidecar clock moving a few minutes ahead.
      accessTokenTtlSeconds: 3600,
    }),
    startRecordingUpstream(),
  ]);
});

afterAll(async () => {
  await Promise.all([idp?.close(), upstream?.close()]);
});

afterEach(async () => {
  for (const s of sidecars.splice(0)) await s.close();
  clockOffsetMs = 0;
  idp.jwksOverride = undefined;
  await idp.start();
});

function bearer(token: string): Record<string, string> {
  return { authorization: `Bearer ${token}` };
}

/** A token of the IdP's issuer and audience signed with a key the IdP never published, under a random kid. */
async function forged(): Promise<string> {
  const { privateKey } = await generateKeyPair('RS256');
  return new SignJWT({ roles: ['reader'] })
    .setProtectedHeader({ alg: 'RS256', kid: `random-${Math.random()}` })
    .setIssuer(idp.issuer)
    .setAudience(AUDIENCE)
    .setSubject('mallory')
    .setIssuedAt()
    .setExpirationTime('1h')
    .sign(privateKey);
}

describe.each(['jwksUri', 'discovery'] as const)('remote keys through %s', (via) => {
  async function sidecar(jwks: Record<string, number> = {}): Promise<TestSidecar> {
    const keys = via === 'jwksUri' ? { jwksUri: idp.jwksUri } : { discovery: true };
    const s = await startTestSidecar({ upstream: { url: upstream.url }, authn: { jwt: [{ issuer: idp.issuer, audiences: [AUDIENCE], ...keys }] } }, { now, jwks });
    sidecars.push(s);
    await waitReady(s.adminUrl);
    return s;
  }

  async function get(s: TestSidecar, token: string): Promise<{ status: number; code: unknown }> {
    const res = await fetch(`${s.url}/orders/1`, { headers: bearer(token) });
    const body = res.status === 200 ? undefined : ((await res.json()) as { code?: unknown });
    return { status: res.status, code: body?.code };
  }

  it('a token signed with the new key while the IdP is down is 503 KEYS_UNAVAILABLE, then 200 as soon as the IdP is back', async () => {
    const s = await sidecar();
    const old = await idp.getToken('reader-app');
    expect(await get(s, old)).toEqual({ status: 200, code: undefined });
    await idp.rotateKeys();
    const rotated = await idp.getToken('reader-app');

    await idp.stop();
    clockOffsetMs = COOLDOWN_MS + 1_000;
    expect(await get(s, rotated)).toEqual({ status: 503, code: 'KEYS_UNAVAILABLE' });
    // The old key keeps working during the outage.
    expect(await get(s, old)).toEqual({ status: 200, code: undefined });

    // Back up: the next request one backoff (1 s by default) later gets through, not a cooldown later.
    await idp.start();
    clockOffsetMs += 1_000;
    expect(await get(s, rotated)).toEqual({ status: 200, code: undefined });
  });

  it('during a JWKS outage new-key and random-kid tokens are 503 and share the fetches; once the IdP answers, random kids are 401', async () => {
    // A long backoff, so "inside the backoff" holds however long the requests take in real time.
    const s = await sidecar({ backoffMs: 10_000 });
    await idp.rotateKeys();
    const rotated = await idp.getToken('reader-app');

    idp.jwksOverride = '<html>maintenance</html>';
    clockOffsetMs = COOLDOWN_MS + 1_000;
    const before = idp.requests('/jwks');
    const flood = await Promise.all([...Array.from({ length: 10 }, () => rotated), ...(await Promise.all(Array.from({ length: 10 }, forged)))].map((t) => get(s, t)));
    expect(flood).toEqual(flood.map(() => ({ status: 503, code: 'KEYS_UNAVAILABLE' })));
    // Concurrent misses share one fetch.
    expect(idp.requests('/jwks') - before).toBe(1);
    // More of them inside the backoff: no fetch at all.
    for (let i = 0; i < 5; i++) expect(await get(s, await forged())).toEqual({ status: 503, code: 'KEYS_UNAVAILABLE' });
    expect(await get(s, rotated)).toEqual({ status: 503, code: 'KEYS_UNAVAILABLE' });
    expect(idp.requests('/jwks') - before).toBe(1);

    // The endpoint recovers; one backoff after the failure (well inside the 30 s cooldown) it is asked again.
    idp.jwksOverride = undefined;
    clockOffsetMs += 10_000;
    expect(await get(s, rotated)).toEqual({ status: 200, code: undefined });
    expect(idp.requests('/jwks') - before).toBe(2);
    // The IdP answered and has no such key: a bad token, and no fetch inside the cooldown.
    expect(await get(s, await forged())).toEqual({ status: 401, code: 'TOKEN_INVALID' });
    expect(idp.requests('/jwks') - before).toBe(2);
  });

  it('a key the IdP withdraws stops working for cached tokens once a refetch for a new kid sees it gone', async () => {
    const s = await sidecar();
    const old = await idp.getToken('reader-app');
    expect(await get(s, old)).toEqual({ status: 200, code: undefined });
    expect(await get(s, old)).toEqual({ status: 200, code: undefined });

    await idp.rotateKeys({ keepOld: false });
    clockOffsetMs = COOLDOWN_MS + 1_000;
    const before = idp.requests('/jwks');
    expect(await get(s, await idp.getToken('reader-app'))).toEqual({ status: 200, code: undefined });
    expect(idp.requests('/jwks') - before).toBe(1);
    // Within the 5 minute cache period, yet verified again against the new set, which lacks its key.
    expect(await get(s, old)).toEqual({ status: 401, code: 'TOKEN_INVALID' });
  });

  it('a key the IdP withdraws stops working for cached tokens once a background refresh sees it gone', async () => {
    const s = await sidecar({ refreshMs: 60_000 });
    const cached = await idp.getToken('reader-app');
    const unseen = await idp.getToken('reader-app');
    expect(await get(s, cached)).toEqual({ status: 200, code: undefined });

    await idp.rotateKeys({ keepOld: false });
    clockOffsetMs = 61_000;
    const before = idp.requests('/jwks');
    // Verified with the keys the sidecar has while the refresh runs in the background.
    expect(await get(s, unseen)).toEqual({ status: 200, code: undefined });
    await expect.poll(() => idp.requests('/jwks') - before).toBe(1);
    await expect.poll(async () => (await get(s, cached)).status).toBe(401);
    expect(await get(s, cached)).toEqual({ status: 401, code: 'TOKEN_INVALID' });
    expect(await get(s, unseen)).toEqual({ status: 401, code: 'TOKEN_INVALID' });
  });
});
