import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { copyClaims } from '../../../src/core/identity.js';
import { createCookieCodec } from '../../../src/signin/cookie-codec.js';
import {
  createCookieSessionStore,
  createStateCookies,
  isOwnCookie,
  MAX_STATE_COOKIES,
  parseCookies,
  setCookie,
  type CookieSettings,
  type SessionData,
} from '../../../src/signin/cookie-store.js';
import { createRevocations } from '../../../src/signin/revocations.js';

const SETTINGS: CookieSettings = { name: '__Host-authz', secure: true, sameSite: 'lax', domain: '', prefix: '/.authz' };
const NOW = 1_900_000_000;
const codec = createCookieCodec([{ bytes: randomBytes(32), what: 'test' }]);

function session(over: Partial<SessionData> = {}): SessionData {
  return {
    id: 'sess-1',
    provider: 'corp',
    issuer: 'https://idp',
    subject: 'alice',
    claims: copyClaims({ sub: 'alice', roles: ['reader'] }),
    accessToken: 'at',
    accessTokenExpiresAt: NOW + 300,
    refreshToken: 'rt',
    idToken: 'idt',
    providerSid: 'psid',
    startedAtMs: NOW * 1000,
    expiresAt: NOW + 3600,
    ...over,
  };
}

/** The request cookies a browser sends back after these Set-Cookie lines. */
function sentBack(lines: readonly string[]): Map<string, string | undefined> {
  const jar = new Map<string, string | undefined>();
  for (const line of lines) {
    const [pair = ''] = line.split(';');
    const eq = pair.indexOf('=');
    if (/Max-Age=0/.test(line)) jar.delete(pair.slice(0, eq));
    else jar.set(pair.slice(0, eq), pair.slice(eq + 1));
  }
  return jar;
}

describe('cookies of the sidecar', () => {
  it('parses a Cookie header and marks a name sent twice (a tossed cookie) as unusable', () => {
    const cookies = parseCookies(['a=1; __Host-authz=x', 'b=2; __Host-authz=y']);
    expect(cookies.get('a')).toBe('1');
    expect(cookies.get('b')).toBe('2');
    expect(cookies.has('__Host-authz')).toBe(true);
    expect(cookies.get('__Host-authz')).toBeUndefined();
  });

  it('writes Set-Cookie with HttpOnly, Secure, SameSite, Path=/ and Max-Age; a domain only when set', () => {
    expect(setCookie(SETTINGS, 'n', 'v', 60)).toBe('n=v; Path=/; Max-Age=60; HttpOnly; SameSite=Lax; Secure');
    expect(setCookie({ ...SETTINGS, secure: false, sameSite: 'strict', domain: 'example.com' }, 'n', 'v', -5)).toBe('n=v; Path=/; Max-Age=0; HttpOnly; SameSite=Strict; Domain=example.com');
  });

  it('knows its own cookies: the session, its chunks and state cookies, not look-alikes', () => {
    for (const name of ['__Host-authz', '__Host-authz.0', '__Host-authz.7', '__Secure-authz-s-abcdef']) expect(isOwnCookie(SETTINGS, name)).toBe(true);
    for (const name of ['__Host-authzz', '__Host-authz.x', '__Host-authz.10', 'authz', 'session', '__Secure-authz']) expect(isOwnCookie(SETTINGS, name)).toBe(false);
    const plain = { ...SETTINGS, name: 'authz', secure: false };
    expect(isOwnCookie(plain, 'authz-s-abcdef')).toBe(true);
  });
});

describe('the cookie session store', () => {
  const store = createCookieSessionStore(SETTINGS, codec, copyClaims);

  it('stores a session and reads it back, with Max-Age the rest of its lifetime', async () => {
    const lines = await store.save(session(), new Map(), NOW + 600);
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(/^__Host-authz=[\w-]+\.\.[\w-]+\.[\w-]+\.[\w-]+; Path=\/; Max-Age=3000; HttpOnly; SameSite=Lax; Secure$/);
    const loaded = await createCookieSessionStore(SETTINGS, codec, copyClaims).load(sentBack(lines), NOW + 601);
    expect(loaded).toMatchObject({ id: 'sess-1', subject: 'alice', refreshToken: 'rt', providerSid: 'psid', expiresAt: NOW + 3600 });
  });

  it('chunks a large session and clears chunks the previous session had that the new one has not', async () => {
    const big = session({ claims: copyClaims({ sub: 'alice', groups: Array.from({ length: 200 }, (_, i) => `group-with-a-long-name-${i}`) }) });
    const lines = await store.save(big, new Map(), NOW);
    expect(lines.length).toBeGreaterThan(1);
    expect(lines.map((l) => l.split('=')[0])).toEqual(lines.map((_, i) => `__Host-authz.${i}`));
    const jar = sentBack(lines);
    expect(await store.load(jar, NOW)).toMatchObject({ subject: 'alice' });
    const small = await store.save(session(), jar, NOW);
    expect(small[0]).toMatch(/^__Host-authz=/);
    expect(small.slice(1).every((l) => /^__Host-authz\.\d=; .*Max-Age=0/.test(l))).toBe(true);
    expect(small).toHaveLength(1 + lines.length);
  });

  it('drops the raw ID token from a session too large with it, and refuses one too large without', async () => {
    const groups = (n: number) => copyClaims({ sub: 'alice', groups: Array.from({ length: n }, (_, i) => `g-${i}-${'x'.repeat(20)}`) });
    const withToken = session({ idToken: 'h.'.padEnd(6000, 'p'), claims: groups(150) });
    const lines = await store.save(withToken, new Map(), NOW);
    const loaded = await createCookieSessionStore(SETTINGS, codec, copyClaims).load(sentBack(lines), NOW);
    expect(loaded).toMatchObject({ subject: 'alice', idToken: undefined });
    await expect(store.save(session({ claims: groups(1000) }), new Map(), NOW)).rejects.toThrow(RangeError);
  });

  it('treats a tampered, missing-chunk, duplicated, foreign-key or expired cookie as invalid, never throwing', async () => {
    const fresh = createCookieSessionStore(SETTINGS, codec, copyClaims);
    const [line = ''] = await fresh.save(session(), new Map(), NOW);
    const value = line.slice('__Host-authz='.length, line.indexOf(';'));
    const flipped = `${value.slice(0, -3)}${value.at(-3) === 'A' ? 'B' : 'A'}${value.slice(-2)}`;
    expect(await createCookieSessionStore(SETTINGS, codec, copyClaims).load(new Map([['__Host-authz', flipped]]), NOW)).toBe('invalid');
    expect(await fresh.load(new Map([['__Host-authz', 'not-a-jwe']]), NOW)).toBe('invalid');
    expect(await fresh.load(new Map([['__Host-authz', undefined]]), NOW)).toBe('invalid');
    expect(await fresh.load(new Map([['__Host-authz.1', 'x']]), NOW)).toBe('invalid');
    const other = createCookieSessionStore(SETTINGS, createCookieCodec([{ bytes: randomBytes(32), what: 'other' }]), copyClaims);
    expect(await other.load(new Map([['__Host-authz', value]]), NOW)).toBe('invalid');
    expect(await createCookieSessionStore(SETTINGS, codec, copyClaims).load(new Map([['__Host-authz', value]]), NOW + 3601)).toBe('invalid');
    // The remembered copy expires too.
    expect(await fresh.load(new Map([['__Host-authz', value]]), NOW + 3601)).toBe('invalid');
    expect(await fresh.load(new Map([['other', 'x']]), NOW)).toBeUndefined();
    // A whole cookie beside chunks (one tossed in next to the other), or a chunk past the joined ones: no session.
    expect(await fresh.load(new Map([['__Host-authz', value], ['__Host-authz.0', 'x']]), NOW)).toBe('invalid');
    expect(await fresh.load(new Map([['__Host-authz.0', value], ['__Host-authz.2', 'x']]), NOW)).toBe('invalid');
  });

  it('clears every session cookie the request has', () => {
    expect(store.clear(new Map([['__Host-authz.0', 'a'], ['__Host-authz.1', 'b'], ['theme', 'dark']]))).toEqual([
      '__Host-authz.0=; Path=/; Max-Age=0; HttpOnly; SameSite=Lax; Secure',
      '__Host-authz.1=; Path=/; Max-Age=0; HttpOnly; SameSite=Lax; Secure',
    ]);
  });
});

describe('state cookies of pending sign-ins', () => {
  const states = createStateCookies({ ...SETTINGS, sameSite: 'strict' }, codec);
  const pending = (state: string, createdAt = NOW) => ({ state, nonce: 'n', verifier: 'v', provider: 'corp', returnTo: '/x', createdAt });

  it('are Lax and ten minutes whatever the session cookie says, and give back what was stored', async () => {
    const lines = await states.begin(pending('state-0123456789abcdef-rest'), new Map(), NOW);
    expect(lines).toHaveLength(1);
    // Under the prefix only (requests to the app never carry them), so not a __Host- cookie.
    expect(lines[0]).toMatch(/^__Secure-authz-s-state-0123456789=\S+; Path=\/\.authz\/; Max-Age=600; HttpOnly; SameSite=Lax; Secure$/);
    const taken = await states.take('state-0123456789abcdef-rest', sentBack(lines), NOW + 10);
    expect(taken.pending).toMatchObject({ verifier: 'v', returnTo: '/x' });
    expect(taken.clear[0]).toMatch(/Max-Age=0/);
  });

  it('need the whole state, not only the part in the name, and expire', async () => {
    const jar = sentBack(await states.begin(pending('state-0123456789abcdef-rest'), new Map(), NOW));
    expect((await states.take('state-0123456789abcdef-other', jar, NOW)).pending).toBeUndefined();
    expect((await states.take('state-0123456789abcdef-rest', jar, NOW + 601)).pending).toBeUndefined();
    expect(await states.take('nothing', jar, NOW)).toEqual({ pending: undefined, clear: [] });
  });

  it('keep at most five pending sign-ins, dropping the oldest', async () => {
    let jar = new Map<string, string | undefined>();
    for (let i = 0; i < MAX_STATE_COOKIES + 2; i++) {
      const lines = await states.begin(pending(`state-${String(i).padStart(2, '0')}-padding-to-16`, NOW + i), jar, NOW + i);
      const next = sentBack([...[...jar].map(([n, v]) => `${n}=${v ?? ''}`), ...lines]);
      jar = next;
    }
    const names = [...jar.keys()].filter((n) => n.startsWith('__Secure-authz-s-'));
    expect(names).toHaveLength(MAX_STATE_COOKIES);
    expect(names.some((n) => n.includes('state-00'))).toBe(false);
    expect(names.some((n) => n.includes('state-06'))).toBe(true);
  });
});

describe('revocations', () => {
  it('never forget a revocation silently: past the limit, every session started until then is refused', () => {
    let clock = NOW * 1000;
    let overflows = 0;
    const r = createRevocations(3600, { max: 3, now: () => clock, onOverflow: () => overflows++ });
    r.revokeSession('victim');
    clock += 1000;
    for (const id of ['a', 'b', 'c']) r.revokeSession(id);
    expect(overflows).toBe(1);
    expect(r.isRevoked(session({ id: 'victim', startedAtMs: NOW * 1000 }))).toBe(true);
    expect(r.isRevoked(session({ id: 'other', startedAtMs: clock }))).toBe(true);
    expect(r.isRevoked(session({ id: 'later', startedAtMs: clock + 1 }))).toBe(false);
  });

  it('refuse a signed-out session, a provider sid, and a subject up to the logout time', () => {
    const r = createRevocations(3600);
    expect(r.isRevoked(session())).toBe(false);
    r.revokeSession('sess-1');
    expect(r.isRevoked(session())).toBe(true);
    expect(r.isRevoked(session({ id: 'sess-2' }))).toBe(false);
    r.revokeProviderSession('corp', 'psid');
    expect(r.isRevoked(session({ id: 'sess-2' }))).toBe(true);
    expect(r.isRevoked(session({ id: 'sess-3', provider: 'other' }))).toBe(false);
    r.revokeSubject('corp', 'bob', (NOW + 10) * 1000);
    expect(r.isRevoked(session({ id: 's4', providerSid: undefined, subject: 'bob', startedAtMs: (NOW + 10) * 1000 }))).toBe(true);
    // A sign-in after the logout is a new session of that user, even within the same second: not refused.
    expect(r.isRevoked(session({ id: 's5', providerSid: undefined, subject: 'bob', startedAtMs: (NOW + 10) * 1000 + 1 }))).toBe(false);
  });
});
