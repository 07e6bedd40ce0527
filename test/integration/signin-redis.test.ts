/**
 * Shared sessions in Redis (DESIGN.md §8, issue #16) on real servers: a real redis-server (startRedis, on a
 * loopback port, no persistence), a real oidc-provider and two REAL sidecar processes (replicas A and B: own
 * ports, the same config: cookie secret file, redis, provider, upstream; the callback is A's origin). The
 * scripted browser's cookie jar is keyed by host, not port, so the cookie A sets is sent to B too, as a load
 * balancer would spread one browser's requests over the replicas.
 *
 * What this file shows: a session started through A works on B; the cookie is a ticket `<id>.<secret>` and
 * nothing in Redis is readable (every key and value is read and searched for the user's subject, email,
 * name, roles, the provider's sid, the issuer, and the access, refresh and ID tokens the provider issued);
 * the session key's TTL is maxAgeSeconds; a ticket with a wrong secret is no session; sign-out on one replica
 * and a back-channel logout on the other (by sid, delivered by the provider itself; by sub) are refused by
 * both at once, and a replayed logout token by the other replica; 20 concurrent requests split over A and B
 * when a refresh is due cost exactly one refresh grant (a public client: rotating, single-use refresh
 * tokens; signin-refresh-race.test.ts compares the stores); a password-protected Redis (passwordFile); a
 * Redis outage answers session requests 503 (never an allow, never a redirect), lets bearer and anonymous
 * traffic through, keeps /readyz 200 with the store reported down, and heals by itself (new sign-ins
 * without restarting anything); a Redis that hangs instead of closing is reported down too; a replica
 * started while Redis is down starts, is ready, and recovers.
 *
 * Not waited for: a session key actually expiring (maxAgeSeconds is at least 60 s, too long for this file).
 * The TTL is checked with PTTL, and a key deleted as Redis deletes an expired one is shown to be no session.
 */
import { randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createClient } from '@redis/client';
import { exportJWK, generateKeyPair, SignJWT } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createCookieCodec } from '../../src/signin/cookie-codec.js';
import { startRedis, type TestRedis } from '../support/redis.js';
import {
  burst,
  CLIENT_ID,
  COOKIE,
  jarSession,
  metric,
  PREFIX,
  problemOf,
  readyz,
  sessionCleared,
  sessionStored,
  setCookiesOf,
  send,
  startReplicas,
  tokenRequests,
  until,
  xhr,
  type Replica,
  type ReplicaSet,
} from '../support/replicas.js';
import { confirmLogoutAtProvider, type BrowserPage, type ScriptedBrowser } from '../support/scripted-browser.js';

const KEY_PREFIX = 'authz-sidecar:';
const MAX_AGE = 3600;
const BEARER_ISSUER = 'https://idp.test';
const BEARER_AUDIENCE = 'orders-api';
/** alice of test/support/signin-env.ts USERS. */
const ALICE = { sub: 'user-alice', email: 'alice@example.test', name: 'Alice Example', roles: ['admin'], groups: ['staff'] } as const;

type PrivateKey = Awaited<ReturnType<typeof generateKeyPair>>['privateKey'];

/* ---- helpers ------------------------------------------------------------------------------------------ */

const TICKET = /^([A-Za-z0-9_-]{22})\.([A-Za-z0-9_-]{43})$/;

function ticketOf(browser: ScriptedBrowser): { id: string; secret: string; cookie: string } {
  const value = jarSession(browser);
  const match = TICKET.exec(value ?? '');
  if (match === null) throw new Error(`the session cookie is not a ticket: ${String(value)}`);
  return { id: match[1] as string, secret: match[2] as string, cookie: `${COOKIE}=${value as string}` };
}

const sessionKey = (id: string): string => `${KEY_PREFIX}session:${id}`;

/** A navigation (not following the answer) and what the app saw, if it was reached. */
async function navigate(env: ReplicaSet, browser: ScriptedBrowser, replica: Replica, path = '/orders'): Promise<{ page: BrowserPage; seen: Record<string, string | string[] | undefined> | undefined }> {
  const before = env.upstream.requests.length;
  const page = await browser.get(`${replica.origin}${path}`, { followRedirects: false });
  const seen = env.upstream.requests.length > before ? env.upstream.requests.at(-1)?.headers : undefined;
  return { page, seen };
}

/** A navigation on `replica` sent to sign in: 302 to the start route on the callback's (A's) origin, back to where it was. */
function expectSentToSignIn(env: ReplicaSet, page: BrowserPage, replica: Replica, path = '/orders'): void {
  expect(page.status).toBe(302);
  const a = env.replicas[0] as Replica;
  const location = new URL(String(page.headers.location), page.url);
  expect(`${location.origin}${location.pathname}`).toBe(`${a.origin}${PREFIX}/start`);
  expect(new URL(location.searchParams.get('rd') ?? '', replica.origin).href).toBe(`${replica.origin}${path}`);
}

/** The answer of a request that needs the session while the store is down: 503 SESSION_UNAVAILABLE, nothing else. */
function expectStoreDown(answer: { status: number; headers: Record<string, string | string[] | undefined>; body: string }, what: string): void {
  expect(answer.status, what).toBe(503);
  expect(problemOf(answer).code, what).toBe('SESSION_UNAVAILABLE');
  expect(answer.headers.location, what).toBeUndefined();
}

/** Parts of a compact JWS/JWE, decoded. */
function b64(part: string): Buffer {
  return Buffer.from(part, 'base64url');
}

/**
 * Where the keys and values of `dump` (those under `prefix`) show any of `secrets` or a JWT in clear: in a
 * key, a value, or any part of a stored JWE decoded from base64url. Also checks the shapes: keys are
 * `session:<id>`, `sid:|sub:|jti:<HMAC>` or `lock:<id>`; a session is a JWE (dir, A256GCM) whose only
 * readable part, its protected header, holds alg, enc and kid; index sets hold session ids only.
 */
function leaksIn(dump: ReadonlyMap<string, string>, prefix: string, secrets: Record<string, string>): string[] {
  const jwtLooking = /eyJ[A-Za-z0-9_-]*\.eyJ[A-Za-z0-9_-]*\./;
  const leaks: string[] = [];
  const search = (where: string, text: string): void => {
    for (const [what, value] of Object.entries(secrets)) if (text.includes(value)) leaks.push(`${where} holds the ${what}`);
    if (jwtLooking.test(text)) leaks.push(`${where} holds a JWT`);
  };
  for (const [key, value] of dump) {
    if (!key.startsWith(prefix)) continue;
    const name = key.slice(prefix.length);
    if (!/^(session:[A-Za-z0-9_-]{22}|(sid|sub|jti):[A-Za-z0-9_-]{43}|lock:[A-Za-z0-9_-]{22})$/.test(name)) leaks.push(`unexpected key ${key}`);
    search(`key ${key}`, key);
    search(`the value of ${key}`, value);
    const parts = value.split('.');
    if (name.startsWith('session:')) {
      // A JWE: only its protected header is readable, and it says how, not what.
      if (parts.length !== 5 || parts[1] !== '') leaks.push(`${key} is not a dir JWE`);
      const header = JSON.parse(b64(parts[0] ?? '').toString('utf8')) as Record<string, unknown>;
      if (Object.keys(header).sort().join() !== 'alg,enc,kid' || header['alg'] !== 'dir' || header['enc'] !== 'A256GCM') leaks.push(`${key} has the header ${JSON.stringify(header)}`);
      for (const [i, part] of parts.entries()) {
        search(`part ${i} of ${key}, decoded (utf8)`, b64(part).toString('utf8'));
        search(`part ${i} of ${key}, decoded (latin1)`, b64(part).toString('latin1'));
      }
    } else if (/^(sid|sub):/.test(name)) {
      for (const member of value.split(',')) if (!/^[A-Za-z0-9_-]{22}$/.test(member)) leaks.push(`${key} holds ${member}`);
    }
  }
  return leaks;
}

async function bearer(key: PrivateKey, sub: string): Promise<string> {
  return new SignJWT({ roles: ['reader'] })
    .setProtectedHeader({ alg: 'RS256', kid: 'k1' })
    .setIssuer(BEARER_ISSUER)
    .setAudience(BEARER_AUDIENCE)
    .setSubject(sub)
    .setIssuedAt()
    .setExpirationTime('5m')
    .sign(key);
}

/* ---- the environment ---------------------------------------------------------------------------------- */

let redis: TestRedis;
let env: ReplicaSet;
let a: Replica;
let b: Replica;
let dir: string;
let signingKey: PrivateKey;

beforeAll(async () => {
  redis = await startRedis();
  dir = await mkdtemp(join(tmpdir(), 'authz-signin-redis-'));
  const { privateKey, publicKey } = await generateKeyPair('RS256');
  signingKey = privateKey;
  const jwksFile = join(dir, 'jwks.json');
  await writeFile(jwksFile, JSON.stringify({ keys: [{ ...(await exportJWK(publicKey)), kid: 'k1', alg: 'RS256', use: 'sig' }] }));
  env = await startReplicas({
    store: { redisUrl: redis.url },
    provider: { accessTokenTtlSeconds: 600 },
    session: { maxAgeSeconds: MAX_AGE, refreshBeforeSeconds: 60 },
    config: {
      headers: { forwardToken: true, claims: { 'x-auth-email': 'email', 'x-auth-sid': 'sid', 'x-auth-name': 'name' } },
      authn: { jwt: [{ issuer: BEARER_ISSUER, audiences: [BEARER_AUDIENCE], jwksFile, algorithms: ['RS256'] }] },
    },
  });
  [a, b] = env.replicas as [Replica, Replica];
}, 60_000);

afterAll(async () => {
  await env?.close();
  await redis?.close();
  await rm(dir, { recursive: true, force: true });
});

/* ---- tests -------------------------------------------------------------------------------------------- */

describe('two replicas, one redis store', () => {
  it('a session started through A is used on B: the app sees the identity through B, and B sets no cookie', async () => {
    const browser = env.browser();
    const landed = await env.signIn(browser, a.origin, '/orders/4');
    expect(landed.status).toBe(200);
    expect(landed.url).toBe(`${a.origin}/orders/4`);

    const { page, seen } = await navigate(env, browser, b, '/orders/4');
    expect(page.status).toBe(200);
    expect(seen?.['x-auth-subject']).toBe(ALICE.sub);
    expect(seen?.['x-auth-email']).toBe(ALICE.email);
    expect(seen?.['x-auth-name']).toBe(ALICE.name);
    expect(String(seen?.['authorization'])).toMatch(/^Bearer \S+$/);
    // The sidecar's cookie never reaches the app; the ticket never changes (no Set-Cookie from B).
    expect(String(seen?.['cookie'] ?? '')).not.toMatch(new RegExp(`(^|;\\s*)${COOKIE}=`));
    expect(setCookiesOf(page)).toEqual([]);

    const info = await send(`${b.origin}${PREFIX}/userinfo`, { headers: { cookie: ticketOf(browser).cookie, accept: 'application/json' } });
    expect(info.status).toBe(200);
    const identity = JSON.parse(info.body) as { subject: string; provider: string; issuer: string; roles: string[] };
    expect(identity).toMatchObject({ subject: ALICE.sub, provider: 'corp', issuer: env.op.issuer });
    expect(identity.roles).toContain(ALICE.roles[0]);
    const api = await xhr(b.origin, ticketOf(browser).cookie, '/orders/4');
    expect(api.status).toBe(200);
  });

  it('the cookie is a ticket <22>.<43> (Max-Age maxAgeSeconds); the session key lives maxAgeSeconds, and once it is gone the ticket is no session on either replica', async () => {
    const browser = env.browser();
    const landed = await env.signIn(browser, a.origin, '/orders');
    const hop = landed.hops.find((h) => h.url.startsWith(`${a.origin}${PREFIX}/callback`));
    const [line] = sessionStored(hop?.setCookies ?? []);
    expect(line).toMatch(new RegExp(`^${COOKIE}=[A-Za-z0-9_-]{22}\\.[A-Za-z0-9_-]{43}; `));
    expect(Number(/;\s*Max-Age=(\d+)/i.exec(line as string)?.[1])).toBeGreaterThanOrEqual(MAX_AGE - 2);
    expect(Number(/;\s*Max-Age=(\d+)/i.exec(line as string)?.[1])).toBeLessThanOrEqual(MAX_AGE);
    const { id, cookie } = ticketOf(browser);

    const ttl = await redis.pttl(sessionKey(id));
    expect(ttl).toBeGreaterThanOrEqual((MAX_AGE - 10) * 1000);
    expect(ttl).toBeLessThanOrEqual(MAX_AGE * 1000);
    // The index sets live as long (and no key lives forever).
    for (const key of (await redis.dump()).keys()) expect(await redis.pttl(key), key).toBeGreaterThan(0);

    // The key gone (deleted here the way Redis deletes it at its TTL): no session on A nor on B, the cookie cleared.
    expect((await xhr(b.origin, cookie)).status).toBe(200);
    const client = createClient({ url: redis.url });
    await client.connect();
    try {
      expect(await client.del(sessionKey(id))).toBe(1);
    } finally {
      await client.close();
    }
    for (const replica of [a, b]) {
      const api = await xhr(replica.origin, cookie);
      expect(api.status, replica.name).toBe(401);
      expect(problemOf(api).code).toBe('CREDENTIALS_MISSING');
      expect(sessionCleared(setCookiesOf(api)), replica.name).toHaveLength(1);
    }
    const { page, seen } = await navigate(env, browser, b);
    expectSentToSignIn(env, page, b);
    expect(seen).toBeUndefined();
  });

  it('a ticket with the right id and a wrong secret is no session (cleared), and does not harm the real session', async () => {
    const browser = env.browser();
    await env.signIn(browser, a.origin, '/orders');
    const { id, cookie } = ticketOf(browser);
    const forged = `${COOKIE}=${id}.${randomBytes(32).toString('base64url')}`;
    const before = env.upstream.requests.length;
    for (const replica of [a, b]) {
      const api = await xhr(replica.origin, forged);
      expect(api.status, replica.name).toBe(401);
      expect(problemOf(api).code).toBe('CREDENTIALS_MISSING');
      expect(sessionCleared(setCookiesOf(api))).toHaveLength(1);
      // Not a ticket at all.
      const junk = await xhr(replica.origin, `${COOKIE}=${id}`);
      expect(junk.status, replica.name).toBe(401);
      expect(sessionCleared(setCookiesOf(junk))).toHaveLength(1);
    }
    expect(env.upstream.requests.length).toBe(before);
    expect(await redis.pttl(sessionKey(id))).toBeGreaterThan(0);
    for (const replica of [a, b]) expect((await xhr(replica.origin, cookie)).status, replica.name).toBe(200);
  });

  it('nothing in Redis holds a token, the subject, a claim, the sid or the email in clear (every key and value read)', async () => {
    const browser = env.browser();
    await env.signIn(browser, a.origin, '/orders');
    const { id, secret, cookie } = ticketOf(browser);
    // What the provider issued, as the app gets it through B: the access token (forwardToken) and the sid.
    expect((await xhr(b.origin, cookie)).status).toBe(200);
    const seen = env.upstream.requests.at(-1)?.headers ?? {};
    const accessToken = String(seen['authorization']).replace(/^Bearer /, '');
    const sid = String(seen['x-auth-sid']);
    expect(accessToken.length).toBeGreaterThan(20);
    expect(sid.length).toBeGreaterThan(10);

    const dump = await redis.dump();
    const sealed = dump.get(sessionKey(id));
    expect(sealed, 'the session is stored under its id').toBeDefined();

    // Opened with the ticket's secret (which only the browser has) together with the deployment's cookie
    // secret, the stored session holds the provider's tokens: the ones to look for in clear. Either secret
    // alone (a copy of Redis plus the cookie secret, or a ticket at another deployment) opens nothing.
    const cookieSecret = new Uint8Array(Buffer.from((await readFile(env.secretFile, 'utf8')).replace(/\r?\n$/, '')));
    const opened = await createCookieCodec([{ bytes: Buffer.concat([b64(secret), cookieSecret]), what: 'ticket' }]).open(sealed as string);
    expect(await createCookieCodec([{ bytes: b64(secret), what: 'ticket alone' }]).open(sealed as string)).toBeUndefined();
    expect(opened).toBeDefined();
    const session = opened as Record<string, unknown>;
    expect(session['at']).toBe(accessToken);
    expect(session['sub']).toBe(ALICE.sub);
    expect(session['psid']).toBe(sid);
    const refreshToken = session['rt'] as string;
    const idToken = session['idt'] as string;
    expect(typeof refreshToken).toBe('string');
    expect(idToken.split('.')).toHaveLength(3);
    expect(await createCookieCodec([{ bytes: cookieSecret, what: 'cookie secret' }]).open(sealed as string)).toBeUndefined();

    // The ID token is the one the provider issued: sign-out hints it to the provider's end_session.
    const out = await browser.get(`${b.origin}${PREFIX}/sign-out`, { followRedirects: false });
    expect(out.status).toBe(302);
    expect(new URL(String(out.headers.location)).searchParams.get('id_token_hint')).toBe(idToken);
    const idClaims = JSON.parse(b64(idToken.split('.')[1] as string).toString('utf8')) as Record<string, unknown>;
    expect(idClaims['sid']).toBe(sid);
    expect(idClaims['sub']).toBe(ALICE.sub);

    const secrets: Record<string, string> = {
      subject: ALICE.sub,
      email: ALICE.email,
      name: ALICE.name,
      role: ALICE.roles[0],
      group: ALICE.groups[0],
      sid,
      issuer: env.op.issuer,
      'access token': accessToken,
      'refresh token': refreshToken,
      'ID token': idToken,
      "the ID token's payload": idToken.split('.')[1] as string,
      "the ID token's signature": idToken.split('.')[2] as string,
      'the ticket secret': secret,
    };
    expect(dump.size).toBeGreaterThan(0);
    expect(leaksIn(dump, KEY_PREFIX, secrets)).toEqual([]);
  });

  it('sign-out on B is refused by A at once (navigation sent to sign in, fetch 401); the session key is gone', async () => {
    const browser = env.browser();
    await env.signIn(browser, a.origin, '/orders');
    const { id, cookie } = ticketOf(browser);
    expect((await navigate(env, browser, a)).page.status).toBe(200);
    expect(await redis.pttl(sessionKey(id))).toBeGreaterThan(0);

    const out = await browser.get(`${b.origin}${PREFIX}/sign-out`, { followRedirects: false });
    expect(out.status).toBe(302);
    expect(String(out.headers.location).startsWith(env.op.endSessionEndpoint)).toBe(true);
    expect(sessionCleared(setCookiesOf(out))).toHaveLength(1);
    expect(await redis.pttl(sessionKey(id))).toBe(-2);

    // A copy of the cookie on A, right away.
    const copy = env.browser();
    copy.cookies.store(`${cookie}; Path=/`, a.origin);
    const { page, seen } = await navigate(env, copy, a);
    expectSentToSignIn(env, page, a);
    expect(seen).toBeUndefined();
    expect(sessionCleared(setCookiesOf(page))).toHaveLength(1);
    const api = await xhr(a.origin, cookie);
    expect(api.status).toBe(401);
    expect(String(api.headers['www-authenticate'])).toMatch(/^Bearer /);
  });

  it('a back-channel logout on A (the provider\'s own, after a logout at the provider) is refused by B at once', async () => {
    const browser = env.browser();
    await env.signIn(browser, a.origin, '/orders');
    const { id, cookie } = ticketOf(browser);
    const { page: onB, seen } = await navigate(env, browser, b);
    expect(onB.status).toBe(200);
    const sid = String(seen?.['x-auth-sid']);
    const logoutsBefore = await metric(a, 'authz_sidecar_logout_total{kind="backchannel"}');

    // The person signs out at the provider itself (not through the sidecar): the provider POSTs a logout
    // token to the registered back-channel URI, A's.
    const confirm = await browser.get(env.op.endSessionEndpoint);
    expect(confirm.status).toBe(200);
    await confirmLogoutAtProvider(browser, confirm);
    await until('the provider delivered the logout token', () => Promise.resolve(env.op.backchannelLogouts.some((d) => d.sid === sid)));
    const delivery = env.op.backchannelLogouts.find((d) => d.sid === sid);
    expect(delivery).toMatchObject({ clientId: CLIENT_ID, sub: ALICE.sub, ok: true });
    expect(await metric(a, 'authz_sidecar_logout_total{kind="backchannel"}')).toBe((Number.isNaN(logoutsBefore) ? 0 : logoutsBefore) + 1);

    expect(await redis.pttl(sessionKey(id))).toBe(-2);
    const after = await navigate(env, browser, b);
    expectSentToSignIn(env, after.page, b);
    expect(after.seen).toBeUndefined();
    const api = await xhr(b.origin, cookie);
    expect(api.status).toBe(401);
    expect(problemOf(api).code).toBe('CREDENTIALS_MISSING');
  });

  it('a logout token replayed to B after A accepted it is refused (400); its jti is kept under an HMAC', async () => {
    const browser = env.browser();
    await env.signIn(browser, a.origin, '/orders');
    const { cookie } = ticketOf(browser);
    expect((await xhr(b.origin, cookie)).status).toBe(200);
    const sid = String(env.upstream.requests.at(-1)?.headers['x-auth-sid']);
    const claims = env.op.logoutTokenClaims({ clientId: CLIENT_ID, sid });
    const token = await env.op.signLogoutToken(claims);
    const post = (replica: Replica, logoutToken: string): Promise<Awaited<ReturnType<typeof send>>> =>
      send(`${replica.origin}${PREFIX}/backchannel-logout`, { method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: new URLSearchParams({ logout_token: logoutToken }).toString() });

    expect((await post(a, token)).status).toBe(200);
    const replay = await post(b, token);
    expect(replay.status).toBe(400);
    expect(problemOf(replay).code).toBe('SIGNIN_FAILED');
    expect((await post(a, token)).status).toBe(400);
    // The session ended for both.
    for (const replica of [a, b]) expect((await xhr(replica.origin, cookie)).status, replica.name).toBe(401);
    // B does take a fresh token (another jti): it was the replay it refused.
    expect((await post(b, await env.op.signLogoutToken(env.op.logoutTokenClaims({ clientId: CLIENT_ID, sid })))).status).toBe(200);

    const dump = await redis.dump();
    const jtiKeys = [...dump.keys()].filter((k) => k.startsWith(`${KEY_PREFIX}jti:`));
    expect(jtiKeys.length).toBeGreaterThanOrEqual(2);
    for (const key of jtiKeys) {
      expect(key).not.toContain(String(claims['jti']));
      expect(await redis.pttl(key)).toBeGreaterThan(0);
    }
  });

  it('a back-channel logout by sub on B ends every session of that user on A too, and no one else\'s', async () => {
    const first = env.browser();
    await env.signIn(first, a.origin, '/orders');
    const second = env.browser();
    await env.signIn(second, b.origin, '/orders');
    const other = env.browser();
    await env.signIn(other, a.origin, '/orders', 'rita');
    const cookies = [ticketOf(first).cookie, ticketOf(second).cookie];
    for (const cookie of cookies) expect((await xhr(a.origin, cookie)).status).toBe(200);
    const token = await env.op.signLogoutToken(env.op.logoutTokenClaims({ clientId: CLIENT_ID, sub: ALICE.sub }));
    const res = await send(`${b.origin}${PREFIX}/backchannel-logout`, { method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: new URLSearchParams({ logout_token: token }).toString() });
    expect(res.status).toBe(200);
    for (const cookie of cookies) {
      expect((await xhr(a.origin, cookie)).status).toBe(401);
      expect((await xhr(b.origin, cookie)).status).toBe(401);
    }
    expect(await redis.pttl(sessionKey(ticketOf(first).id))).toBe(-2);
    expect(await redis.pttl(sessionKey(ticketOf(second).id))).toBe(-2);
    const rita = await xhr(a.origin, ticketOf(other).cookie, '/orders/1');
    expect(rita.status).toBe(200);
    expect(env.upstream.requests.at(-1)?.headers['x-auth-subject']).toBe('user-rita');
  });
});

describe('20 concurrent requests split over A and B when a refresh is due (public client: rotating, single-use refresh tokens)', () => {
  let race: ReplicaSet;
  beforeAll(async () => {
    race = await startReplicas({
      store: { redisUrl: redis.url, keyPrefix: 'race:' },
      publicClient: true,
      // The refresh is due 3 s after sign-in (63 - 60), and 2-3 s after each refresh again.
      provider: { accessTokenTtlSeconds: 63 },
      session: { maxAgeSeconds: MAX_AGE, refreshBeforeSeconds: 60 },
    });
  }, 60_000);
  afterAll(async () => {
    await race?.close();
  });

  it('all 20 succeed with the identity, and the provider sees exactly one refresh_token grant', async () => {
    const [ra, rb] = race.replicas as [Replica, Replica];
    const browser = race.browser();
    await race.signIn(browser, ra.origin, '/orders');
    const { id, cookie } = ticketOf(browser);
    const stored = (await redis.dump()).get(`race:session:${id}`);
    expect(stored).toBeDefined();
    const ttlBefore = await redis.pttl(`race:session:${id}`);
    await new Promise((r) => setTimeout(r, 3_200));

    const tokens = tokenRequests(race.op);
    const seenBefore = race.upstream.requests.length;
    const answers = await burst([ra.origin, rb.origin], cookie, 20);
    const statuses = answers.map((x) => `${x.origin === ra.origin ? 'A' : 'B'} ${x.status}`);
    expect(statuses.filter((s) => s.endsWith(' 200'))).toHaveLength(20);
    // The ticket never changes: no Set-Cookie at all.
    expect(answers.flatMap((x) => setCookiesOf(x))).toEqual([]);
    expect(tokenRequests(race.op) - tokens, 'refresh_token grants at the provider').toBe(1);
    const seen = race.upstream.requests.slice(seenBefore);
    expect(seen).toHaveLength(20);
    expect(seen.every((r) => r.headers['x-auth-subject'] === ALICE.sub)).toBe(true);
    const success = (await metric(ra, 'authz_sidecar_session_refresh_total{provider="corp",result="success"}')) || 0;
    const successB = (await metric(rb, 'authz_sidecar_session_refresh_total{provider="corp",result="success"}')) || 0;
    expect(success + successB).toBe(1);
    // The stored session was replaced by the refreshed one (same key, same ticket).
    const refreshed = (await redis.dump()).get(`race:session:${id}`);
    expect(refreshed).toBeDefined();
    expect(refreshed).not.toBe(stored);
    // Its end stays where sign-in put it (maxAgeSeconds is an absolute lifetime: a refresh does not extend it).
    const ttlAfter = await redis.pttl(`race:session:${id}`);
    expect(ttlAfter).toBeLessThanOrEqual(ttlBefore - 3_000);
    expect(ttlAfter).toBeGreaterThan(ttlBefore - 10_000);
    // The refreshed session is sealed like the first: the new tokens are nowhere in clear.
    const { secret } = ticketOf(browser);
    const raceCookieSecret = new Uint8Array(Buffer.from((await readFile(race.secretFile, 'utf8')).replace(/\r?\n$/, '')));
    const session = (await createCookieCodec([{ bytes: Buffer.concat([b64(secret), raceCookieSecret]), what: 'ticket' }]).open(refreshed as string)) as Record<string, unknown>;
    expect(typeof session['rt']).toBe('string');
    const secrets = { subject: ALICE.sub, email: ALICE.email, 'access token': String(session['at']), 'refresh token': String(session['rt']), 'ID token': String(session['idt']) };
    expect(leaksIn(await redis.dump(), 'race:', secrets)).toEqual([]);
    expect(race.op.serverErrors).toEqual([]);
  });
});

describe('a Redis that requires a password (passwordFile)', () => {
  let locked: TestRedis;
  let good: ReplicaSet | undefined;
  let bad: ReplicaSet | undefined;
  afterAll(async () => {
    await good?.close();
    await bad?.close();
    await locked?.close();
  });

  it('signs in with the password from passwordFile; with a wrong password the replica starts, is ready, reports the store down and answers 503', async () => {
    const password = randomBytes(18).toString('base64url');
    locked = await startRedis({ password });
    const goodFile = join(dir, 'redis-password');
    await writeFile(goodFile, `${password}\n`);
    const badFile = join(dir, 'redis-password-wrong');
    await writeFile(badFile, 'not-the-password\n');
    good = await startReplicas({ count: 1, store: { redisUrl: locked.url, passwordFile: goodFile } });
    const [g] = good.replicas as [Replica];
    await until('the store is up', async () => (await readyz(g)).body.sessionStore?.up === true, 5_000);
    const browser = good.browser();
    const landed = await good.signIn(browser, g.origin, '/orders');
    expect(landed.status).toBe(200);
    const { id, cookie } = ticketOf(browser);
    expect(await locked.pttl(sessionKey(id))).toBeGreaterThan(0);
    // The password is in no log line.
    expect(g.process.output()).not.toContain(password);

    bad = await startReplicas({ count: 1, store: { redisUrl: locked.url, passwordFile: badFile } });
    const [w] = bad.replicas as [Replica];
    const ready = await readyz(w);
    expect(ready.status).toBe(200);
    expect(ready.body.sessionStore).toEqual({ store: 'redis', up: false });
    // The ticket (another sidecar's, but the right shape) cannot be looked up: 503, never a redirect.
    expectStoreDown(await xhr(w.origin, cookie), 'wrong password');
    expect(w.process.child.exitCode).toBeNull();
  });
});

describe('Redis outage (runs last: it stops the shared Redis)', () => {
  it('a Redis that hangs (the process frozen, its connection open): session requests 503 within about a second, and /readyz and the metric report the store down', async () => {
    const browser = env.browser();
    await env.signIn(browser, a.origin, '/orders');
    const { cookie } = ticketOf(browser);
    expect((await xhr(b.origin, cookie)).status).toBe(200);
    const info = createClient({ url: redis.url });
    await info.connect();
    const pid = Number(/process_id:(\d+)/.exec(await info.info('server'))?.[1]);
    await info.close();
    expect(pid).toBeGreaterThan(0);
    // The redis-server this file started (startRedis), frozen: it neither answers nor closes the connection.
    process.kill(pid, 'SIGSTOP');
    try {
      for (const replica of [a, b]) {
        const t0 = Date.now();
        expectStoreDown(await xhr(replica.origin, cookie), `${replica.name} while Redis hangs`);
        expect(Date.now() - t0, replica.name).toBeLessThan(3_000);
      }
      // Every session request now waits out the command deadline and gets 503: the store is down as far as
      // anyone can tell, and readiness and the metric must say so (DESIGN.md §8), not only a closed connection.
      // (Fails at the time of writing: redis-store.ts leaves `up` true while its commands time out.)
      const seen: string[] = [];
      for (const replica of [a, b]) {
        await xhr(replica.origin, cookie);
        const ready = await readyz(replica);
        expect(ready.status, replica.name).toBe(200);
        seen.push(`${replica.name}: readyz ${JSON.stringify(ready.body.sessionStore)}, metric ${await metric(replica, 'authz_sidecar_session_store_up{store="redis"}')}`);
      }
      expect(seen).toEqual([`A: readyz {"store":"redis","up":false}, metric 0`, `B: readyz {"store":"redis","up":false}, metric 0`]);
    } finally {
      process.kill(pid, 'SIGCONT');
    }
    // Thawed: the session is still there, on both replicas.
    for (const replica of [a, b]) {
      await until(`${replica.name} serves the session again`, async () => (await xhr(replica.origin, cookie)).status === 200, 8_000);
      await until(`${replica.name} reports the store up`, async () => (await readyz(replica)).body.sessionStore?.up === true, 8_000);
    }
  });

  it('session requests 503 (never 200, never a redirect); bearer and anonymous 200; /readyz 200 reporting the store down; healed without restarts', async () => {
    const browser = env.browser();
    await env.signIn(browser, a.origin, '/orders');
    const { cookie } = ticketOf(browser);
    for (const replica of [a, b]) expect((await xhr(replica.origin, cookie)).status, replica.name).toBe(200);
    for (const replica of [a, b]) expect(await metric(replica, 'authz_sidecar_session_store_up{store="redis"}'), replica.name).toBe(1);
    const token = await bearer(signingKey, 'carol');

    await redis.stop();
    for (const replica of [a, b]) {
      await until(`${replica.name} sees the store down`, async () => (await readyz(replica)).body.sessionStore?.up === false, 5_000);
    }
    const upstreamBefore = env.upstream.requests.length;
    for (const replica of [a, b]) {
      const ready = await readyz(replica);
      expect(ready.status, replica.name).toBe(200);
      expect(ready.body.sessionStore).toEqual({ store: 'redis', up: false });
      expect(await metric(replica, 'authz_sidecar_session_store_up{store="redis"}'), replica.name).toBe(0);

      const nav = await browser.get(`${replica.origin}/orders`, { followRedirects: false });
      expectStoreDown({ status: nav.status, headers: nav.headers, body: nav.body }, `${replica.name} navigation`);
      expect(sessionCleared(setCookiesOf(nav)), `${replica.name}: the cookie is kept for when the store is back`).toEqual([]);
      expectStoreDown(await xhr(replica.origin, cookie), `${replica.name} fetch`);
      expectStoreDown(await send(`${replica.origin}${PREFIX}/userinfo`, { headers: { cookie, accept: 'application/json' } }), `${replica.name} userinfo`);

      // A bearer token alone, and beside the session cookie: decided on the token alone.
      for (const headers of [{ authorization: `Bearer ${token}` }, { authorization: `Bearer ${token}`, cookie }] as Array<Record<string, string>>) {
        const res = await send(`${replica.origin}/orders/1`, { headers: { ...headers, accept: 'application/json' } });
        expect(res.status, `${replica.name} bearer`).toBe(200);
        expect(env.upstream.requests.at(-1)?.headers['x-auth-subject']).toBe('carol');
      }
      const anonymous = await send(`${replica.origin}/public/x`, { headers: { accept: 'text/html' } });
      expect(anonymous.status, `${replica.name} anonymous`).toBe(200);
    }
    expect(env.upstream.requests.length - upstreamBefore).toBe(6);

    // A sign-in cannot finish while the store is down (503 at the callback, no session cookie).
    const newcomer = env.browser();
    const landed = await env.signIn(newcomer, b.origin, '/orders', 'rita');
    expect(landed.url.startsWith(`${a.origin}${PREFIX}/callback`)).toBe(true);
    expect(landed.status).toBe(503);
    expect(problemOf(landed).code).toBe('SIGNIN_UNAVAILABLE');
    expect(jarSession(newcomer)).toBeUndefined();
    // Sign-out cannot end the session in the store: 503 (the browser's cookie goes).
    const out = await send(`${b.origin}${PREFIX}/sign-out`, { headers: { cookie, accept: 'text/html', 'sec-fetch-site': 'same-origin' } });
    expectStoreDown(out, 'sign-out');
    expect(sessionCleared(setCookiesOf(out))).toHaveLength(1);

    // Back (same port, empty): each replica reconnects by itself within a few seconds.
    await redis.start();
    for (const replica of [a, b]) {
      const took = await until(`${replica.name} sees the store up`, async () => (await readyz(replica)).body.sessionStore?.up === true, 8_000);
      expect(took, replica.name).toBeLessThan(8_000);
      expect(await metric(replica, 'authz_sidecar_session_store_up{store="redis"}'), replica.name).toBe(1);
    }
    // The old session was in the Redis that was lost: no session (sent to sign in, cleared), not an error.
    const gone = await navigate(env, browser, b);
    expectSentToSignIn(env, gone.page, b);
    expect(sessionCleared(setCookiesOf(gone.page))).toHaveLength(1);
    // A new sign-in, started on B, comes back to B; the session works on A too.
    const again = await env.signIn(browser, b.origin, '/orders/5');
    expect(again.url).toBe(`${b.origin}/orders/5`);
    expect(again.status).toBe(200);
    expect(env.upstream.requests.at(-1)?.headers['x-auth-subject']).toBe(ALICE.sub);
    const onA = await navigate(env, browser, a, '/orders/5');
    expect(onA.page.status).toBe(200);
    expect(onA.seen?.['x-auth-subject']).toBe(ALICE.sub);
  });

  it('a replica started while Redis is down starts and is ready, answers 503 for session requests, and recovers when Redis comes up', async () => {
    const browser = env.browser();
    await env.signIn(browser, a.origin, '/orders');
    const { cookie } = ticketOf(browser);
    await redis.stop();
    const c = await env.startReplica('C');
    expect(c.process.child.exitCode).toBeNull();
    const ready = await readyz(c);
    expect(ready.status).toBe(200);
    expect(ready.body.sessionStore).toEqual({ store: 'redis', up: false });
    expect(await metric(c, 'authz_sidecar_session_store_up{store="redis"}')).toBe(0);
    expectStoreDown(await xhr(c.origin, cookie), 'C fetch');
    const nav = await browser.get(`${c.origin}/orders`, { followRedirects: false });
    expectStoreDown({ status: nav.status, headers: nav.headers, body: nav.body }, 'C navigation');
    expect((await send(`${c.origin}/public/x`)).status).toBe(200);

    await redis.start();
    for (const replica of env.replicas) {
      await until(`${replica.name} sees the store up`, async () => (await readyz(replica)).body.sessionStore?.up === true, 8_000);
    }
    expect(c.process.child.exitCode).toBeNull();
    // The new (empty) Redis: the old ticket is no session; a new sign-in through A works on C.
    expect((await xhr(c.origin, cookie)).status).toBe(401);
    const fresh = env.browser();
    const landed = await env.signIn(fresh, a.origin, '/orders');
    expect(landed.status).toBe(200);
    const onC = await navigate(env, fresh, c);
    expect(onC.page.status).toBe(200);
    expect(onC.seen?.['x-auth-subject']).toBe(ALICE.sub);
    // Nothing crashed meanwhile.
    for (const replica of env.replicas) expect(replica.process.child.exitCode, replica.name).toBeNull();
  });
});
