/**
 * The redis session store's guarantees on a real redis-server (the module itself, two instances standing
 * for two replicas): an ended session never comes back (not by a refresh in flight, not by a sign-in whose
 * provider session was logged out meanwhile), a ticket opens nothing at a deployment with other cookie
 * secrets, and sign-out takes the session out of its indexes.
 */
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { copyClaims } from '../../src/core/identity.js';
import type { SessionData } from '../../src/signin/cookie-store.js';
import { createRedisBackend } from '../../src/signin/redis-store.js';
import { StoreUnavailableError, type SessionBackend } from '../../src/signin/session-backend.js';
import { startRedis, type TestRedis } from '../support/redis.js';

const SETTINGS = { name: 'authz', secure: false, sameSite: 'lax' as const, domain: '', prefix: '/.authz' };
const SECRET = randomBytes(48);
const NOW = Math.floor(Date.now() / 1000);

let redis: TestRedis;
const backends: SessionBackend[] = [];

function backend(secrets: Uint8Array[] = [SECRET]): SessionBackend {
  const b = createRedisBackend({ url: redis.url, keyPrefix: 't:', settings: SETTINGS, secrets, maxAgeSeconds: 3600, copyClaims });
  backends.push(b);
  return b;
}

async function ready(b: SessionBackend): Promise<SessionBackend> {
  for (let i = 0; !b.up(); i++) {
    if (i > 200) throw new Error('the store did not connect');
    await new Promise((r) => setTimeout(r, 10));
  }
  return b;
}

function session(over: Partial<SessionData> = {}): SessionData {
  return {
    id: randomBytes(16).toString('base64url'),
    provider: 'corp',
    issuer: 'https://idp.example',
    subject: 'alice',
    claims: copyClaims({ sub: 'alice', roles: ['reader'] }),
    accessToken: 'at-1',
    accessTokenExpiresAt: NOW + 30,
    refreshToken: 'rt-1',
    providerSid: 'psid-1',
    startedAtMs: Date.now(),
    expiresAt: NOW + 3600,
    ...over,
  };
}

/** The browser's cookies after a sign-in's Set-Cookie. */
function jar(lines: string[]): Map<string, string | undefined> {
  const [pair = ''] = (lines[0] ?? '').split(';');
  const eq = pair.indexOf('=');
  return new Map([[pair.slice(0, eq), pair.slice(eq + 1)]]);
}

beforeAll(async () => {
  redis = await startRedis();
});
afterAll(async () => {
  await Promise.all(backends.map((b) => b.close()));
  await redis.close();
});

describe('the redis store', () => {
  it('never brings back a session that was signed out while its refresh was in flight', async () => {
    const a = await ready(backend());
    const b = await ready(backend());
    const cookies = jar(await a.start(session(), new Map(), NOW));
    const loaded = await a.load(cookies, NOW);
    if (loaded === undefined || loaded === 'invalid') throw new Error('no session');
    const { refreshed } = await a.refreshOnce(loaded, cookies, NOW, async () => {
      // Meanwhile, replica B signs the session out.
      const onB = await b.load(cookies, NOW);
      if (onB === undefined || onB === 'invalid') throw new Error('B sees no session');
      await b.end(onB);
      return { kind: 'ok', session: { ...loaded, accessToken: 'at-2', refreshToken: 'rt-2' } };
    });
    expect(refreshed.kind).toBe('ended');
    expect(await a.load(cookies, NOW)).toBe('invalid');
    expect(await b.load(cookies, NOW)).toBe('invalid');
  });

  it('refuses a sign-in whose provider session or subject was logged out before its session was written', async () => {
    const a = await ready(backend());
    await a.endProviderSession('corp', 'psid-dead');
    await expect(a.start(session({ providerSid: 'psid-dead' }), new Map(), NOW)).rejects.toThrow(StoreUnavailableError);
    const at = Date.now();
    await a.endSubject('corp', 'bob', at);
    await expect(a.start(session({ subject: 'bob', providerSid: undefined, startedAtMs: at - 1 }), new Map(), NOW)).rejects.toThrow(StoreUnavailableError);
    // A sign-in after the logout is a new session of that user.
    const later = await a.start(session({ subject: 'bob', providerSid: undefined, startedAtMs: at + 1 }), new Map(), NOW);
    expect(await a.load(jar(later), NOW)).toMatchObject({ subject: 'bob' });
  });

  it('opens nothing with a ticket issued by a deployment with other cookie secrets; opens through a rotation', async () => {
    const a = await ready(backend());
    const cookies = jar(await a.start(session(), new Map(), NOW));
    const other = await ready(backend([randomBytes(48)]));
    expect(await other.load(cookies, NOW)).toBe('invalid');
    // The same deployment after a new secret was put first: the old one still opens.
    const rotated = await ready(backend([randomBytes(48), SECRET]));
    expect(await rotated.load(cookies, NOW)).toMatchObject({ subject: 'alice' });
    // The old secret removed: its sessions end.
    expect(await (await ready(backend([randomBytes(48)]))).load(cookies, NOW)).toBe('invalid');
  });

  it('takes a signed-out session out of its indexes, and marks a logout token used only when asked', async () => {
    const a = await ready(backend());
    const cookies = jar(await a.start(session({ subject: 'carol', providerSid: 'psid-carol' }), new Map(), NOW));
    const loaded = await a.load(cookies, NOW);
    if (loaded === undefined || loaded === 'invalid') throw new Error('no session');
    const sets = async (): Promise<string[]> => [...(await redis.dump()).entries()].filter(([k, v]) => /^t:(sid|sub):/.test(k) && v.includes(loaded.id)).map(([k]) => k);
    expect(await sets()).toHaveLength(2);
    await a.end(loaded);
    expect(await sets()).toEqual([]);
    expect(await a.jtiSeen('https://idp.example', 'j1')).toBe(false);
    expect(await a.jtiSeen('https://idp.example', 'j1')).toBe(false);
    await a.markJti('https://idp.example', 'j1');
    expect(await a.jtiSeen('https://idp.example', 'j1')).toBe(true);
  });
});
