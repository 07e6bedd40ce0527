/**
 * The refresh race (issue #16): a browser fires 20 requests at once just when its session's access token is due
 * for a refresh, with a provider that issues rotating, single-use refresh tokens (a PUBLIC client of
 * oidc-provider: each refresh_token grant consumes the refresh token and returns a new one; presenting a
 * consumed one again is "reuse": invalid_grant, and the provider revokes the whole grant, so every token of
 * that sign-in dies). Real servers: a real oidc-provider, real sidecar PROCESSES (bin/authz-sidecar.js), a
 * real redis-server for the redis store. Access tokens live 63 s and sessions refresh 60 s before the end,
 * so a refresh is due 3 s after sign-in (the sidecars run on the real clock).
 *
 * - Cookie store, one replica: the replica shares one refresh among the requests that bring the same old
 *   cookie: one refresh_token grant, all 20 succeed, each answer carries the same new cookie.
 * - Cookie store, two replicas: each replica knows only its own refreshes, so both refresh with the same
 *   refresh token. The provider answers the first and sees the second as reuse: invalid_grant, and it revokes
 *   the grant. The replica that lost ends the session (its requests get 401 and a cleared cookie), and the
 *   winner's new refresh token died with the grant, so its session ends too at its next refresh. The person
 *   is signed out within seconds, whichever cookie the browser keeps. That is why several replicas need the
 *   redis store (DESIGN.md §8).
 * - Redis store, two replicas: a lock in Redis lets one replica refresh while the others wait for its result:
 *   one refresh_token grant, all 20 succeed, no cookie changes; and again at the next refresh (the rotated
 *   refresh token was stored, never sent twice).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startRedis, type TestRedis } from '../support/redis.js';
import { burst, COOKIE, jarSession, metric, sessionCleared, sessionStored, setCookiesOf, startReplicas, tokenRequests, xhr, type Replica, type ReplicaSet } from '../support/replicas.js';

const ACCESS_TTL = 63;
const REFRESH_BEFORE = 60;
/** From sign-in (or a refresh) until the refresh is due, on the sidecars' whole-second clock, with a margin. */
const UNTIL_DUE_MS = (ACCESS_TTL - REFRESH_BEFORE) * 1000 + 200;
const SUBJECT = 'user-alice';

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

function start(store: 'cookie' | { redisUrl: string }, count: number): Promise<ReplicaSet> {
  return startReplicas({
    count,
    store,
    publicClient: true,
    provider: { accessTokenTtlSeconds: ACCESS_TTL },
    session: { maxAgeSeconds: 3600, refreshBeforeSeconds: REFRESH_BEFORE },
  });
}

async function refreshes(replicas: readonly Replica[], result: 'success' | 'ended' | 'failure'): Promise<number[]> {
  return Promise.all(replicas.map(async (r) => (await metric(r, `authz_sidecar_session_refresh_total{provider="corp",result="${result}"}`)) || 0));
}

/** Signs in through the first replica; the Cookie header, once the refresh is due. */
async function signedInAndDue(env: ReplicaSet): Promise<string> {
  const browser = env.browser();
  const landed = await env.signIn(browser, (env.replicas[0] as Replica).origin, '/orders');
  expect(landed.status).toBe(200);
  const cookie = `${COOKIE}=${jarSession(browser) as string}`;
  await sleep(UNTIL_DUE_MS);
  return cookie;
}

describe('the cookie store, one replica', () => {
  let env: ReplicaSet;
  beforeAll(async () => {
    env = await start('cookie', 1);
  }, 60_000);
  afterAll(async () => {
    await env?.close();
  });

  it('one refresh_token grant for 20 concurrent requests; all succeed with the identity and the same new cookie', async () => {
    const [a] = env.replicas as [Replica];
    const cookie = await signedInAndDue(env);
    const tokens = tokenRequests(env.op);
    const seenBefore = env.upstream.requests.length;
    const answers = await burst([a.origin], cookie, 20);
    expect(answers.map((x) => x.status)).toEqual(Array.from({ length: 20 }, () => 200));
    expect(tokenRequests(env.op) - tokens, 'refresh_token grants').toBe(1);
    expect(await refreshes([a], 'success')).toEqual([1]);
    const seen = env.upstream.requests.slice(seenBefore);
    expect(seen).toHaveLength(20);
    expect(seen.every((r) => r.headers['x-auth-subject'] === SUBJECT)).toBe(true);
    const renewed = answers.map((x) => sessionStored(setCookiesOf(x)));
    expect(renewed.every((lines) => lines.length === 1)).toBe(true);
    expect(new Set(renewed.map((lines) => lines[0])).size).toBe(1);
    // The new cookie is not due: it works without another grant.
    const next = `${COOKIE}=${(renewed[0]?.[0] as string).split(';')[0]?.slice(COOKIE.length + 1) as string}`;
    expect(next).not.toBe(cookie);
    expect((await xhr(a.origin, next)).status).toBe(200);
    expect(tokenRequests(env.op) - tokens).toBe(1);
    expect(env.op.serverErrors).toEqual([]);
  });
});

describe('the cookie store, two replicas (why several replicas need Redis)', () => {
  let env: ReplicaSet;
  beforeAll(async () => {
    env = await start('cookie', 2);
  }, 60_000);
  afterAll(async () => {
    await env?.close();
  });

  /**
   * What happens: A and B each refresh once, with the same single-use refresh token (2 grants at the
   * provider). The provider answers the first; the second is reuse: invalid_grant ("refresh token already
   * used"), and oidc-provider revokes the whole grant. The losing replica ends the session: its 10 answers
   * are 401 with the cookie cleared. The winner's 10 answers are 200 with a new cookie, but that cookie's
   * refresh token belonged to the revoked grant: at its next refresh (3 s later) the winner is refused too
   * and ends the session. With the cookie store, replicas cannot share a refresh: use the redis store.
   */
  it('each replica refreshes on its own: the provider refuses the second refresh and revokes the grant, and the session ends on both', async () => {
    const replicas = env.replicas;
    const cookie = await signedInAndDue(env);
    const tokens = tokenRequests(env.op);
    const answers = await burst(replicas.map((r) => r.origin), cookie, 20);
    expect(tokenRequests(env.op) - tokens, 'refresh_token grants: one per replica').toBe(2);
    const byReplica = replicas.map((r) => answers.filter((x) => x.origin === r.origin));
    const outcome = (xs: typeof answers): string => {
      if (xs.every((x) => x.status === 200 && sessionStored(setCookiesOf(x)).length === 1)) return 'refreshed';
      if (xs.every((x) => x.status === 401 && sessionCleared(setCookiesOf(x)).length === 1)) return 'ended';
      return `mixed: ${xs.map((x) => x.status).join(',')}`;
    };
    const outcomes = byReplica.map(outcome);
    expect([...outcomes].sort()).toEqual(['ended', 'refreshed']);
    const winner = replicas[outcomes.indexOf('refreshed')] as Replica;
    const loser = replicas[outcomes.indexOf('ended')] as Replica;
    expect(await refreshes([winner, loser], 'success')).toEqual([1, 0]);
    expect(await refreshes([winner, loser], 'ended')).toEqual([0, 1]);

    // The winner's new cookie works on the winner (its access token is fresh), but the loser refuses it: it
    // ended that session (same session id, refreshed or not).
    const line = sessionStored(setCookiesOf(byReplica[replicas.indexOf(winner)]?.[0] as (typeof answers)[number]))[0] as string;
    const renewed = line.split(';')[0] as string;
    expect((await xhr(winner.origin, renewed)).status).toBe(200);
    expect((await xhr(loser.origin, renewed)).status).toBe(401);
    // And its refresh token died with the grant: at the next refresh the winner ends the session too.
    await sleep(UNTIL_DUE_MS);
    const later = await xhr(winner.origin, renewed);
    expect(later.status).toBe(401);
    expect(sessionCleared(setCookiesOf(later))).toHaveLength(1);
    expect(tokenRequests(env.op) - tokens, 'the winner tried once more').toBe(3);
    expect(await refreshes([winner], 'ended')).toEqual([1]);
  });
});

describe('the redis store, two replicas', () => {
  let redis: TestRedis;
  let env: ReplicaSet;
  beforeAll(async () => {
    redis = await startRedis();
    env = await start({ redisUrl: redis.url }, 2);
  }, 60_000);
  afterAll(async () => {
    await env?.close();
    await redis?.close();
  });

  it('one refresh_token grant for 20 concurrent requests split over A and B, all succeed; and again at the next refresh', async () => {
    const replicas = env.replicas;
    const cookie = await signedInAndDue(env);
    const tokens = tokenRequests(env.op);
    for (const round of [1, 2]) {
      const seenBefore = env.upstream.requests.length;
      const answers = await burst(replicas.map((r) => r.origin), cookie, 20);
      expect(answers.map((x) => x.status), `round ${round}`).toEqual(Array.from({ length: 20 }, () => 200));
      // The ticket never changes.
      expect(answers.flatMap((x) => setCookiesOf(x)), `round ${round}`).toEqual([]);
      expect(tokenRequests(env.op) - tokens, `refresh_token grants after round ${round}`).toBe(round);
      const seen = env.upstream.requests.slice(seenBefore);
      expect(seen).toHaveLength(20);
      expect(seen.every((r) => r.headers['x-auth-subject'] === SUBJECT)).toBe(true);
      const success = await refreshes(replicas, 'success');
      expect(success.reduce((x, y) => x + y, 0), `round ${round}`).toBe(round);
      expect(await refreshes(replicas, 'ended')).toEqual([0, 0]);
      if (round === 1) await sleep(UNTIL_DUE_MS);
    }
    expect(env.op.serverErrors).toEqual([]);
  });
});
