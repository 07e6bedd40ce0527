/**
 * The cookie store's codec: sealed sessions open only with a configured secret, unchanged and before they
 * expire; a new secret put first takes over while old cookies keep working; large values are chunked.
 */
import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { createCookieCodec, isCookieOf, joinFromCookies, MAX_CHUNK_LENGTH, splitIntoCookies } from '../../../src/signin/cookie-codec.js';

const secret = (what: string) => ({ bytes: randomBytes(32), what });
const HOUR = 3600;
const now = () => Math.floor(Date.now() / 1000);

describe('cookie codec', () => {
  it('seals a payload the browser cannot read, and opens it back', async () => {
    const codec = createCookieCodec([secret('current')]);
    const sealed = await codec.seal({ sub: 'alice', provider: 'corp' }, now() + HOUR);
    expect(sealed.split('.')).toHaveLength(5);
    expect(sealed).not.toContain('alice');
    expect(Buffer.from(sealed.split('.')[0] ?? '', 'base64url').toString()).toMatch(/"alg":"dir","enc":"A256GCM"/);
    expect(await codec.open(sealed)).toMatchObject({ sub: 'alice', provider: 'corp' });
  });

  it('refuses a tampered, truncated, foreign or garbage value', async () => {
    const codec = createCookieCodec([secret('current')]);
    const sealed = await codec.seal({ sub: 'alice' }, now() + HOUR);
    const parts = sealed.split('.');
    const flip = (s: string) => `${s.slice(0, 10)}${s[10] === 'A' ? 'B' : 'A'}${s.slice(11)}`;
    for (const i of [0, 2, 3, 4]) {
      const changed = [...parts];
      changed[i] = flip(changed[i] ?? '');
      expect(await codec.open(changed.join('.')), `part ${i} changed`).toBeUndefined();
    }
    expect(await codec.open(sealed.slice(0, -5))).toBeUndefined();
    expect(await codec.open('not-a-jwe')).toBeUndefined();
    expect(await codec.open('')).toBeUndefined();
    const other = createCookieCodec([secret('someone else')]);
    expect(await other.open(sealed)).toBeUndefined();
  });

  it('refuses an expired value', async () => {
    const codec = createCookieCodec([secret('current')]);
    const sealed = await codec.seal({ sub: 'alice' }, now() + 60);
    expect(await codec.open(sealed, new Date(Date.now() + 120_000))).toBeUndefined();
    expect(await codec.open(sealed)).toMatchObject({ sub: 'alice' });
  });

  it('rotates: a new secret put first seals, a cookie of the old one still opens, and not once the old one is gone', async () => {
    const old = secret('old');
    const fresh = secret('new');
    const before = createCookieCodec([old]);
    const oldCookie = await before.seal({ sub: 'alice' }, now() + HOUR);
    const rotated = createCookieCodec([fresh, old]);
    expect(await rotated.open(oldCookie)).toMatchObject({ sub: 'alice' });
    const newCookie = await rotated.seal({ sub: 'bob' }, now() + HOUR);
    expect(await before.open(newCookie)).toBeUndefined();
    expect(await createCookieCodec([fresh]).open(oldCookie)).toBeUndefined();
  });

  it('names the secret that is too short', () => {
    expect(() => createCookieCodec([{ bytes: randomBytes(31), what: 'signIn.cookie.secretFiles[1]' }])).toThrow(/signIn\.cookie\.secretFiles\[1\]: .*at least 32 bytes, it has 31/);
    expect(() => createCookieCodec([])).toThrow(/at least one/);
  });
});

describe('chunks', () => {
  it('keeps a short value in one cookie, and splits a long one into .0, .1, ... that join back', async () => {
    expect(splitIntoCookies('__Host-authz', 'abc')).toEqual([['__Host-authz', 'abc']]);
    const codec = createCookieCodec([secret('current')]);
    const sealed = await codec.seal({ sub: 'alice', claims: { groups: Array.from({ length: 400 }, (_, i) => `group-${i}`) } }, now() + HOUR);
    expect(sealed.length).toBeGreaterThan(MAX_CHUNK_LENGTH);
    const cookies = splitIntoCookies('__Host-authz', sealed);
    expect(cookies.length).toBeGreaterThan(1);
    expect(cookies.map(([n]) => n)).toEqual(cookies.map((_, i) => `__Host-authz.${i}`));
    for (const [, v] of cookies) expect(v.length).toBeLessThanOrEqual(MAX_CHUNK_LENGTH);
    const joined = joinFromCookies('__Host-authz', new Map(cookies));
    expect(joined).toBe(sealed);
    expect(await codec.open(joined ?? '')).toMatchObject({ sub: 'alice' });
    // A missing chunk leaves a value that does not open.
    const partial = new Map(cookies.filter(([n]) => n !== '__Host-authz.1'));
    expect(await codec.open(joinFromCookies('__Host-authz', partial) ?? '')).toBeUndefined();
    expect(joinFromCookies('__Host-authz', new Map())).toBeUndefined();
  });

  it("knows the sidecar's own cookie names, and only those", () => {
    expect(isCookieOf('__Host-authz', '__Host-authz')).toBe(true);
    expect(isCookieOf('__Host-authz', '__Host-authz.3')).toBe(true);
    expect(isCookieOf('__Host-authz', '__Host-authz.x')).toBe(false);
    expect(isCookieOf('__Host-authz', '__Host-authzz')).toBe(false);
    expect(isCookieOf('__Host-authz', 'session')).toBe(false);
  });
});
