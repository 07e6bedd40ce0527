/**
 * The redis session store (DESIGN.md §8, `signIn.session.store: redis`): sessions shared by every replica
 * of a workload, with node-redis (`@redis/client`, the maintained official client; loaded only with this
 * store). Standalone Redis (or a managed one behind one endpoint): the writes below touch several keys at
 * once, which Redis Cluster cannot do across slots.
 *
 * - The browser's cookie holds a ticket `<id>.<secret>` (128 and 256 random bits). Redis holds the session
 *   under `<keyPrefix>session:<id>`, sealed (JWE dir/A256GCM) under keys derived from the ticket's secret
 *   together with each cookie secret (the first seals, all open): Redis never sees the ticket's secret, so
 *   a copy of Redis opens nothing; another deployment sharing the Redis (other cookie secrets) opens
 *   nothing either; removing a cookie secret ends the sessions sealed under it. The key expires at the
 *   session's absolute end.
 * - Sign-out and a refused refresh delete the key; a back-channel logout finds the sessions of a provider
 *   `sid` (or of a `sub`) through index sets named by an HMAC of it (no subject or sid in clear), deletes
 *   them, and leaves a tombstone for `maxAgeSeconds` so that a session written after it (a sign-in whose
 *   code exchange was in flight, a refresh) is refused. A logout token's `jti` is marked once the sessions
 *   are gone, so a provider's retry after a failure is not taken for a replay.
 * - One refresh per session across replicas: a lock (SET NX PX, 30 s) per session, and in each process one
 *   refresh per session at a time; the others wait, bounded, for the refreshed session to appear. The
 *   refreshed session is written by a script that checks, atomically, that the stored session is still the
 *   one refreshed (not ended, not refreshed elsewhere) and not tombstoned: an ended session never comes back.
 * - Redis unreachable, hanging or refusing commands (READONLY, OOM, NOPERM): every operation fails fast (no
 *   queue while disconnected, a deadline per command) with StoreUnavailableError, which the caller answers
 *   with 503, never an allow; the store counts as down until a command is answered again; the client
 *   reconnects by itself.
 */
import { createHmac, hkdfSync, randomBytes } from 'node:crypto';
import { createClient } from '@redis/client';
import { LRUCache } from 'lru-cache';
import type { Claims } from '../core/identity.js';
import { createCookieCodec, isCookieOf, type CookieCodec } from './cookie-codec.js';
import { fromSealed, setCookie, toSealed, type CookieSettings, type RequestCookies, type SessionData } from './cookie-store.js';
import { LOGOUT_TOKEN_MAX_AGE_SECONDS } from './logout-token.js';
import { StoreUnavailableError, type Refreshed, type SessionBackend } from './session-backend.js';

/** A command that has not answered in this long counts as the store being down. */
export const REDIS_COMMAND_TIMEOUT_MS = 1_000;
/** A refresh lock expires after this long (a replica that died holding it): longer than a slow refresh. */
export const REFRESH_LOCK_MS = 30_000;
/** How long a request waits for another replica's refresh before it goes on without (bounded). */
export const REFRESH_WAIT_MS = 10_000;
const REFRESH_POLL_MS = 100;
/** How often an idle connection is checked. */
const HEALTH_CHECK_MS = 5_000;
/** A connection error is logged at most this often while the store stays down. */
const ERROR_LOG_INTERVAL_MS = 60_000;

const TICKET = /^([A-Za-z0-9_-]{22})\.([A-Za-z0-9_-]{43})$/;

/**
 * Writes a session unless it was ended (tombstones) or changed since it was read (`expected`, '' for a new
 * one). KEYS: session, sid tombstone, sub tombstone, sid index, sub index (the last two may be absent: '').
 * ARGV: expected, sealed, PXAT, id, index TTL ms, startedAtMs.
 */
const WRITE_SCRIPT = `
if KEYS[2] ~= '' and redis.call('exists', KEYS[2]) == 1 then return 0 end
local ended = redis.call('get', KEYS[3])
if ended and tonumber(ended) >= tonumber(ARGV[6]) then return 0 end
local current = redis.call('get', KEYS[1])
if ARGV[1] == '' then
  if current then return 0 end
elseif current ~= ARGV[1] then
  return 0
end
redis.call('set', KEYS[1], ARGV[2], 'PXAT', ARGV[3])
for i = 4, 5 do
  if KEYS[i] ~= '' then
    redis.call('sadd', KEYS[i], ARGV[4])
    redis.call('pexpire', KEYS[i], ARGV[5])
  end
end
return 1`;

/**
 * Ends the sessions of an index set, and leaves a tombstone (unless KEYS[2] is ''). KEYS: index, tombstone.
 * ARGV: session key prefix, tombstone value, TTL ms.
 */
const END_SCRIPT = `
local ids = redis.call('smembers', KEYS[1])
for _, id in ipairs(ids) do redis.call('del', ARGV[1] .. id) end
redis.call('del', KEYS[1])
if KEYS[2] ~= '' then redis.call('set', KEYS[2], ARGV[2], 'PX', ARGV[3]) end
return #ids`;

/** Deletes a lock only when it is still this holder's. */
const UNLOCK_SCRIPT = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end";

export interface RedisStoreOptions {
  readonly url: string;
  readonly password?: string | undefined;
  readonly keyPrefix: string;
  readonly settings: CookieSettings;
  /** The cookie secrets (the first seals and names new index entries; all open and are looked up). */
  readonly secrets: ReadonlyArray<Uint8Array>;
  readonly maxAgeSeconds: number;
  readonly copyClaims: (value: unknown) => Claims;
  readonly onStateChange?: ((up: boolean, error?: Error) => void) | undefined;
}

interface Ticket {
  readonly id: string;
  readonly secret: string;
}

/** The client options of a URL: with a password file, the URL's user name (an ACL user) goes with it. */
function connectionOptions(url: string, password: string | undefined): { url: string; username?: string; password?: string } {
  if (password === undefined) return { url };
  const parsed = new URL(url);
  const username = decodeURIComponent(parsed.username);
  parsed.username = '';
  parsed.password = '';
  return { url: parsed.href, password, ...(username === '' ? {} : { username }) };
}

export function createRedisBackend(options: RedisStoreOptions): SessionBackend {
  const { settings, keyPrefix } = options;
  const client = createClient({
    ...connectionOptions(options.url, options.password),
    // Disconnected: fail now (503), never queue a request behind a reconnect.
    disableOfflineQueue: true,
    socket: {
      connectTimeout: 2_000,
      reconnectStrategy: (retries: number) => Math.min(100 * 2 ** retries, 2_000),
    },
  });
  let connected = false;
  /** Set when a command failed or found no answer in time: down until a command is answered again. */
  let failing = false;
  let loggedErrorAt = 0;
  const down = (err: Error): void => {
    // Logged when the store goes down, and at most once a minute while it stays down (a wrong host or
    // password at startup is said too).
    if ((connected && !failing) || Date.now() - loggedErrorAt > ERROR_LOG_INTERVAL_MS) {
      options.onStateChange?.(false, err);
      loggedErrorAt = Date.now();
    }
  };
  client.on('ready', () => {
    connected = true;
    failing = false;
    options.onStateChange?.(true);
  });
  client.on('end', () => {
    connected = false;
  });
  client.on('error', (err: Error) => {
    down(err);
    connected = false;
  });
  // Not awaited: a store unreachable at startup is the degraded state, not a crash; it keeps trying.
  client.connect().catch(() => undefined);

  const indexKeys = options.secrets.map((s) => new Uint8Array(hkdfSync('sha256', s, new Uint8Array(0), 'authz-sidecar redis index v1', 32)));
  /** The names of a value's index or tombstone key (HMAC under each cookie secret; the first is written). */
  const named = (kind: string, value: string): string[] => indexKeys.map((k) => `${keyPrefix}${kind}:${createHmac('sha256', k).update(value).digest('base64url')}`);
  const first = (names: string[]): string => names[0] as string;
  const sessionKey = (id: string): string => `${keyPrefix}session:${id}`;
  const lockKey = (id: string): string => `${keyPrefix}lock:${id}`;
  const sidOf = (s: SessionData): string | undefined => (s.providerSid === undefined ? undefined : `${s.provider}\n${s.providerSid}`);
  const subOf = (s: SessionData): string => `${s.provider}\n${s.subject}`;
  /** Which ticket a session belongs to, and the stored value it was read from. */
  const tickets = new WeakMap<SessionData, Ticket>();
  const sealedOf = new WeakMap<SessionData, string>();

  /** Runs a command with a deadline; any failure is the store being unavailable. */
  async function command<T>(what: string, run: () => Promise<T>): Promise<T> {
    if (!client.isReady) throw new StoreUnavailableError(`redis is not connected (${what})`);
    let timer: NodeJS.Timeout | undefined;
    try {
      const result = await Promise.race([
        run(),
        new Promise<never>((_, reject) => {
          timer = setTimeout(() => reject(new StoreUnavailableError(`redis did not answer ${what} within ${REDIS_COMMAND_TIMEOUT_MS} ms`)), REDIS_COMMAND_TIMEOUT_MS);
        }),
      ]);
      if (failing) {
        failing = false;
        options.onStateChange?.(true);
      }
      return result;
    } catch (err) {
      // A timeout, or a reply refusing the command (READONLY after a failover, OOM, NOPERM, WRONGTYPE).
      const failure = err instanceof StoreUnavailableError ? err : new StoreUnavailableError(`redis ${what} failed: ${err instanceof Error ? err.message : String(err)}`, { cause: err });
      down(failure);
      failing = true;
      throw failure;
    } finally {
      clearTimeout(timer);
    }
  }

  /** The codec of a ticket: its secret with each cookie secret (the first seals; all open, by kid). */
  function codecOf(ticket: Ticket): CookieCodec {
    const secret = Buffer.from(ticket.secret, 'base64url');
    return createCookieCodec(options.secrets.map((s) => ({ bytes: Buffer.concat([secret, s]), what: 'the session ticket' })));
  }

  /**
   * Sessions opened, by the whole ticket, with the sealed value they came from: Redis is asked on every
   * request (a session deleted by another replica must be refused at once), but a value seen before is not
   * decrypted again. Keyed by id and secret, so a ticket with a wrong secret never finds another's session.
   */
  const opened = new LRUCache<string, { readonly sealed: string; readonly session: SessionData }>({
    maxSize: 4 * 1024 * 1024,
    sizeCalculation: (v, key) => key.length + 2 * v.sealed.length + 512,
  });

  async function read(ticket: Ticket, now: number): Promise<SessionData | undefined> {
    const sealed = await command('GET', () => client.get(sessionKey(ticket.id)));
    const cacheKey = `${ticket.id}.${ticket.secret}`;
    if (sealed === null || typeof sealed !== 'string') {
      opened.delete(cacheKey);
      return undefined;
    }
    const known = opened.get(cacheKey);
    if (known?.sealed === sealed) return known.session.expiresAt > now ? known.session : undefined;
    const payload = await codecOf(ticket).open(sealed, new Date(now * 1000));
    const session = payload === undefined ? undefined : fromSealed({ ...payload, c: options.copyClaims(payload['c']) });
    // A session stored under another id than its key (never written so) is no session.
    if (session === undefined || session.id !== ticket.id) return undefined;
    tickets.set(session, ticket);
    sealedOf.set(session, sealed);
    opened.set(cacheKey, { sealed, session });
    return session;
  }

  /** Writes a session if it was not ended and is still `expected` ('' for a new one); false otherwise. */
  async function write(session: SessionData, ticket: Ticket, expected: string): Promise<boolean> {
    const sealed = await codecOf(ticket).seal(toSealed(session) as unknown as Record<string, unknown>, session.expiresAt);
    const sid = sidOf(session);
    const keys = [
      sessionKey(ticket.id),
      sid === undefined ? '' : first(named('ended-sid', sid)),
      first(named('ended-sub', subOf(session))),
      sid === undefined ? '' : first(named('sid', sid)),
      first(named('sub', subOf(session))),
    ];
    const args = [expected, sealed, String(session.expiresAt * 1000), ticket.id, String(options.maxAgeSeconds * 1000), String(session.startedAtMs)];
    const written = await command('write', () => client.eval(WRITE_SCRIPT, { keys, arguments: args }));
    if (written !== 1) return false;
    tickets.set(session, ticket);
    sealedOf.set(session, sealed);
    return true;
  }

  /** Ends the sessions indexed under a value (every cookie secret's name for it) and tombstones it. */
  async function endIndexed(kind: 'sid' | 'sub', value: string, tombstone: string): Promise<void> {
    const indexes = named(kind, value);
    const [stone] = named(`ended-${kind}`, value);
    await command('end', async () => {
      for (const [i, index] of indexes.entries()) {
        await client.eval(END_SCRIPT, {
          // The tombstone under the name new writes check (the first secret's).
          keys: [index, i === 0 ? (stone as string) : ''],
          arguments: [`${keyPrefix}session:`, tombstone, String(options.maxAgeSeconds * 1000)],
        });
      }
    });
  }

  function ticketOf(cookies: RequestCookies): Ticket | 'invalid' | undefined {
    if (!cookies.has(settings.name)) return undefined;
    const match = TICKET.exec(cookies.get(settings.name) ?? '');
    if (match === null) return 'invalid';
    return { id: match[1] as string, secret: match[2] as string };
  }

  const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
  const changed = (a: SessionData, b: SessionData): boolean => a.refreshToken !== b.refreshToken || a.accessToken !== b.accessToken;
  /** In this process, one refresh per session at a time: the others share its outcome. */
  const inFlight = new Map<string, Promise<{ refreshed: Refreshed; cookies: string[] }>>();

  async function refreshAcrossReplicas(session: SessionData, ticket: Ticket, now: number, refresh: () => Promise<Refreshed>): Promise<Refreshed> {
    const token = randomBytes(16).toString('base64url');
    const locked = await command('SET NX', () => client.set(lockKey(session.id), token, { NX: true, PX: REFRESH_LOCK_MS }));
    if (locked === 'OK') {
      try {
        // Another replica may have refreshed between our read and the lock.
        const latest = await read(ticket, now);
        if (latest === undefined) return { kind: 'ended', why: 'the session was ended meanwhile' };
        if (changed(latest, session)) return { kind: 'ok', session: latest };
        const refreshed = await refresh();
        if (refreshed.kind === 'ended') {
          await command('DEL', () => client.del(sessionKey(session.id)));
          return refreshed;
        }
        if (refreshed.kind !== 'ok') return refreshed;
        if (await write(refreshed.session, ticket, sealedOf.get(latest) ?? '')) return refreshed;
        // Ended (sign-out, back-channel logout) or refreshed elsewhere while the provider answered: what
        // Redis holds now wins; an ended session never comes back.
        const now2 = await read(ticket, now);
        return now2 === undefined ? { kind: 'ended', why: 'the session was ended during its refresh' } : { kind: 'ok', session: now2 };
      } finally {
        // Released only by its holder (a lock that expired meanwhile may be someone else's now).
        await command('unlock', () => client.eval(UNLOCK_SCRIPT, { keys: [lockKey(session.id)], arguments: [token] })).catch(() => undefined);
      }
    }
    // Another replica refreshes: wait for its result (bounded), then use the refreshed tokens.
    const deadline = Date.now() + REFRESH_WAIT_MS;
    while (Date.now() < deadline) {
      await sleep(REFRESH_POLL_MS);
      const latest = await read(ticket, now);
      if (latest === undefined) return { kind: 'ended', why: 'the session was ended during a refresh' };
      if (changed(latest, session)) return { kind: 'ok', session: latest };
      const held = await command('EXISTS', () => client.exists(lockKey(session.id)));
      if (held === 0) {
        // The holder let go: read once more (its write may have landed just before), else it failed.
        const last = await read(ticket, now);
        if (last === undefined) return { kind: 'ended', why: 'the session was ended during a refresh' };
        return changed(last, session) ? { kind: 'ok', session: last } : { kind: 'unreachable' };
      }
    }
    return { kind: 'unreachable' };
  }

  // A PING with the commands' deadline every few seconds: a Redis that hangs counts as down even with no
  // traffic (/readyz, the metric), and the connection stays known alive through proxies and NAT.
  const health = setInterval(() => {
    if (client.isReady) void command('PING', () => client.ping()).catch(() => undefined);
  }, HEALTH_CHECK_MS);
  health.unref();

  return {
    kind: 'redis',
    async load(cookies, now) {
      const ticket = ticketOf(cookies);
      if (ticket === undefined || ticket === 'invalid') return ticket;
      return (await read(ticket, now)) ?? 'invalid';
    },
    async start(session, cookies, now) {
      // A new ticket at every sign-in; the session's id is the ticket's.
      const ticket: Ticket = { id: session.id, secret: randomBytes(32).toString('base64url') };
      if (!/^[A-Za-z0-9_-]{22}$/.test(ticket.id)) throw new TypeError('a session id must be 128 random bits, base64url');
      if (!(await write(session, ticket, ''))) throw new StoreUnavailableError('the new session was refused: its provider session or subject was logged out meanwhile');
      // The session the browser brought, if any, ends: one sign-in, one session.
      const previous = ticketOf(cookies);
      if (previous !== undefined && previous !== 'invalid' && previous.id !== ticket.id) {
        await command('DEL', () => client.del(sessionKey(previous.id))).catch(() => undefined);
      }
      const lines = [setCookie(settings, settings.name, `${ticket.id}.${ticket.secret}`, session.expiresAt - now)];
      // Chunks of a cookie-store session this browser may still hold.
      for (const name of cookies.keys()) if (name !== settings.name && isCookieOf(settings.name, name)) lines.push(setCookie(settings, name, '', 0));
      return lines;
    },
    clear(cookies) {
      return [...cookies.keys()].filter((n) => isCookieOf(settings.name, n)).map((n) => setCookie(settings, n, '', 0));
    },
    // Ended sessions are deleted, not remembered.
    isEnded: () => false,
    async end(session) {
      const sid = sidOf(session);
      await command('DEL', async () => {
        const multi = client.multi().del(sessionKey(session.id)).sRem(first(named('sub', subOf(session))), session.id);
        if (sid !== undefined) multi.sRem(first(named('sid', sid)), session.id);
        await multi.exec();
      });
    },
    endProviderSession: (provider, sid) => endIndexed('sid', `${provider}\n${sid}`, '1'),
    endSubject: (provider, subject, atMs) => endIndexed('sub', `${provider}\n${subject}`, String(atMs)),
    async jtiSeen(issuer, jti) {
      return (await command('EXISTS', () => client.exists(first(named('jti', `${issuer}\n${jti}`))))) === 1;
    },
    async markJti(issuer, jti) {
      await command('SET', () => client.set(first(named('jti', `${issuer}\n${jti}`)), '1', { EX: LOGOUT_TOKEN_MAX_AGE_SECONDS * 2 }));
    },
    async refreshOnce(session, _cookies, now, refresh) {
      const ticket = tickets.get(session);
      if (ticket === undefined) throw new TypeError('refreshOnce: a session the redis store did not load');
      let pending = inFlight.get(session.id);
      if (pending === undefined) {
        pending = refreshAcrossReplicas(session, ticket, now, refresh).then((refreshed) => ({ refreshed, cookies: [] }));
        inFlight.set(session.id, pending);
        const mine = pending;
        // Gone once settled (a rejection is the caller's to handle).
        void mine.finally(() => inFlight.get(session.id) === mine && inFlight.delete(session.id)).catch(() => undefined);
      }
      // The cookie (the ticket) never changes at a refresh: no Set-Cookie.
      return pending;
    },
    up: () => connected && client.isReady && !failing,
    async close() {
      clearInterval(health);
      try {
        if (client.isOpen) await client.close();
      } catch {
        client.destroy();
      }
    },
  };
}
