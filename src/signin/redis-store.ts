/**
 * The redis session store (DESIGN.md §8, `signIn.session.store: redis`): sessions shared by every replica
 * of a workload, with node-redis (`@redis/client`, the maintained official client; loaded only with this
 * store).
 *
 * - The browser's cookie holds a ticket `<id>.<secret>` (128 and 256 random bits). Redis holds the session
 *   under `<keyPrefix>session:<id>`, sealed (JWE dir/A256GCM) under a key derived from the ticket's secret,
 *   which Redis never sees, with the session's absolute end as its expiry: a copy of Redis opens nothing,
 *   and a cookie is worth nothing once its key is gone.
 * - Sign-out and a refused refresh delete the key; a back-channel logout finds the sessions of a provider
 *   `sid` (or of a `sub`) through index sets named by an HMAC of it, so no subject or sid is in Redis in
 *   clear. A logout token's `jti` is remembered under an HMAC too (SET NX): a replay is refused by every
 *   replica.
 * - One refresh per session across replicas: a lock (SET NX PX with a token, released only by its holder);
 *   the others wait, bounded, for the refreshed session to appear, so a single-use refresh token is never
 *   sent twice. A replica that dies holding the lock loses it when the lock expires.
 * - Redis unreachable: every operation fails fast (no queue while disconnected, a deadline per command) with
 *   StoreUnavailableError, which the caller answers with 503, never an allow; the client reconnects by itself.
 */
import { createHmac, hkdfSync, randomBytes } from 'node:crypto';
import { createClient } from '@redis/client';
import { LRUCache } from 'lru-cache';
import type { Claims } from '../core/identity.js';
import { createCookieCodec } from './cookie-codec.js';
import { fromSealed, setCookie, toSealed, type CookieSettings, type RequestCookies, type SessionData } from './cookie-store.js';
import { LOGOUT_TOKEN_MAX_AGE_SECONDS } from './logout-token.js';
import { StoreUnavailableError, type Refreshed, type SessionBackend } from './session-backend.js';

/** A command that has not answered in this long counts as the store being down. */
export const REDIS_COMMAND_TIMEOUT_MS = 1_000;
/** A refresh lock expires after this long (a replica that died holding it). */
export const REFRESH_LOCK_MS = 10_000;
/** How long a request waits for another replica's refresh before it goes on without (bounded). */
export const REFRESH_WAIT_MS = 5_000;
const REFRESH_POLL_MS = 50;

const TICKET = /^([A-Za-z0-9_-]{22})\.([A-Za-z0-9_-]{43})$/;

export interface RedisStoreOptions {
  readonly url: string;
  readonly password?: string | undefined;
  readonly keyPrefix: string;
  readonly settings: CookieSettings;
  /** The cookie secrets (the first names new index entries; all are looked up, for rotation). */
  readonly secrets: ReadonlyArray<Uint8Array>;
  readonly maxAgeSeconds: number;
  readonly copyClaims: (value: unknown) => Claims;
  readonly onStateChange?: ((up: boolean, error?: Error) => void) | undefined;
}

interface Ticket {
  readonly id: string;
  readonly secret: string;
}

export function createRedisBackend(options: RedisStoreOptions): SessionBackend {
  const { settings, keyPrefix } = options;
  const client = createClient({
    url: options.url,
    ...(options.password === undefined ? {} : { password: options.password }),
    // Disconnected: fail now (503), never queue a request behind a reconnect.
    disableOfflineQueue: true,
    socket: {
      connectTimeout: 2_000,
      reconnectStrategy: (retries: number) => Math.min(100 * 2 ** retries, 2_000),
    },
  });
  let up = false;
  client.on('ready', () => {
    up = true;
    options.onStateChange?.(true);
  });
  client.on('end', () => {
    up = false;
  });
  client.on('error', (err: Error) => {
    if (up) options.onStateChange?.(false, err);
    up = false;
  });
  // Not awaited: a store unreachable at startup is the degraded state, not a crash; it keeps trying.
  client.connect().catch(() => undefined);

  const indexKeys = options.secrets.map((s) => new Uint8Array(hkdfSync('sha256', s, new Uint8Array(0), 'authz-sidecar redis index v1', 32)));
  /** The index key names of a value (HMAC under each cookie secret; the first is written). */
  const named = (kind: string, value: string): string[] => indexKeys.map((k) => `${keyPrefix}${kind}:${createHmac('sha256', k).update(value).digest('base64url')}`);
  const sessionKey = (id: string): string => `${keyPrefix}session:${id}`;
  const lockKey = (id: string): string => `${keyPrefix}lock:${id}`;
  /** Which ticket a loaded or stored session belongs to. */
  const tickets = new WeakMap<SessionData, Ticket>();

  /** Runs a command with a deadline; any failure is the store being unavailable. */
  async function command<T>(what: string, run: () => Promise<T>): Promise<T> {
    if (!client.isReady) throw new StoreUnavailableError(`redis is not connected (${what})`);
    let timer: NodeJS.Timeout | undefined;
    try {
      return await Promise.race([
        run(),
        new Promise<never>((_, reject) => {
          timer = setTimeout(() => reject(new StoreUnavailableError(`redis did not answer ${what} within ${REDIS_COMMAND_TIMEOUT_MS} ms`)), REDIS_COMMAND_TIMEOUT_MS);
        }),
      ]);
    } catch (err) {
      if (err instanceof StoreUnavailableError) throw err;
      throw new StoreUnavailableError(`redis ${what} failed`, { cause: err });
    } finally {
      clearTimeout(timer);
    }
  }

  function codecOf(ticket: Ticket) {
    return createCookieCodec([{ bytes: Buffer.from(ticket.secret, 'base64url'), what: 'the session ticket' }]);
  }

  /**
   * Sessions opened, by the whole ticket, with the sealed value they came from: Redis is asked on every
   * request (a session deleted by another replica must be refused at once), but a value seen before is not
   * decrypted again. Keyed by id and secret, so a ticket with a wrong secret never finds another's session.
   */
  const opened = new LRUCache<string, { readonly sealed: string; readonly session: SessionData }>({
    maxSize: 4 * 1024 * 1024,
    sizeCalculation: (v, key) => key.length + v.sealed.length + 512,
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
    opened.set(cacheKey, { sealed, session });
    return session;
  }

  async function write(session: SessionData, ticket: Ticket): Promise<void> {
    const sealed = await codecOf(ticket).seal(toSealed(session) as unknown as Record<string, unknown>, session.expiresAt);
    const ttlMs = options.maxAgeSeconds * 1000;
    await command('SET', async () => {
      const multi = client.multi().set(sessionKey(ticket.id), sealed, { PXAT: session.expiresAt * 1000 });
      const [sidKey] = session.providerSid === undefined ? [] : named('sid', `${session.provider}\n${session.providerSid}`);
      if (sidKey !== undefined) multi.sAdd(sidKey, ticket.id).pExpire(sidKey, ttlMs);
      const [subKey] = named('sub', `${session.provider}\n${session.subject}`);
      if (subKey !== undefined) multi.sAdd(subKey, ticket.id).pExpire(subKey, ttlMs);
      await multi.exec();
    });
    tickets.set(session, ticket);
  }

  /** Deletes the sessions of an index set (every secret's name for it), and the sets. */
  async function endIndexed(kind: 'sid' | 'sub', value: string): Promise<void> {
    const keys = named(kind, value);
    await command('DEL', async () => {
      for (const key of keys) {
        const ids = await client.sMembers(key);
        if (ids.length > 0) await client.del(ids.map(sessionKey));
        await client.del(key);
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
      await write(session, ticket);
      const lines = [setCookie(settings, settings.name, `${ticket.id}.${ticket.secret}`, session.expiresAt - now)];
      // Chunks of a cookie-store session this browser may still hold.
      for (const name of cookies.keys()) if (name.startsWith(`${settings.name}.`)) lines.push(setCookie(settings, name, '', 0));
      return lines;
    },
    clear(cookies) {
      return [...cookies.keys()].filter((n) => n === settings.name || n.startsWith(`${settings.name}.`)).map((n) => setCookie(settings, n, '', 0));
    },
    // Ended sessions are deleted, not remembered.
    isEnded: () => false,
    async end(session) {
      await command('DEL', () => client.del(sessionKey(session.id)));
    },
    endProviderSession: (provider, sid) => endIndexed('sid', `${provider}\n${sid}`),
    endSubject: (provider, subject) => endIndexed('sub', `${provider}\n${subject}`),
    async firstUse(issuer, jti) {
      const [key] = named('jti', `${issuer}\n${jti}`);
      const set = await command('SET NX', () => client.set(key as string, '1', { NX: true, EX: LOGOUT_TOKEN_MAX_AGE_SECONDS * 2 }));
      return set === 'OK';
    },
    async refreshOnce(session, _cookies, now, refresh) {
      const ticket = tickets.get(session);
      if (ticket === undefined) throw new TypeError('refreshOnce: a session the redis store did not load');
      const token = randomBytes(16).toString('base64url');
      const locked = await command('SET NX', () => client.set(lockKey(session.id), token, { NX: true, PX: REFRESH_LOCK_MS }));
      if (locked === 'OK') {
        try {
          // Another replica may have refreshed between our read and the lock.
          const latest = await read(ticket, now);
          if (latest === undefined) return { refreshed: { kind: 'ended', why: 'the session was ended meanwhile' }, cookies: [] };
          if (latest.refreshToken !== session.refreshToken || latest.accessToken !== session.accessToken) return { refreshed: { kind: 'ok', session: latest }, cookies: [] };
          const refreshed: Refreshed = await refresh();
          if (refreshed.kind === 'ok') await write(refreshed.session, ticket);
          else if (refreshed.kind === 'ended') await command('DEL', () => client.del(sessionKey(session.id)));
          return { refreshed, cookies: [] };
        } finally {
          // Released only by its holder (a lock that expired meanwhile may be someone else's now).
          await command('unlock', () =>
            client.eval("if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end", { keys: [lockKey(session.id)], arguments: [token] }),
          ).catch(() => undefined);
        }
      }
      // Another replica refreshes: wait for its result (bounded), then use the refreshed tokens.
      const deadline = Date.now() + REFRESH_WAIT_MS;
      while (Date.now() < deadline) {
        await sleep(REFRESH_POLL_MS);
        const latest = await read(ticket, now);
        if (latest === undefined) return { refreshed: { kind: 'ended', why: 'the session was ended during a refresh' }, cookies: [] };
        if (latest.refreshToken !== session.refreshToken || latest.accessToken !== session.accessToken) return { refreshed: { kind: 'ok', session: latest }, cookies: [] };
        const held = await command('EXISTS', () => client.exists(lockKey(session.id)));
        // The holder let go without a new session (the provider was unreachable): this request goes on without.
        if (held === 0) return { refreshed: { kind: 'unreachable' }, cookies: [] };
      }
      return { refreshed: { kind: 'unreachable' }, cookies: [] };
    },
    up: () => up && client.isReady,
    async close() {
      try {
        if (client.isOpen) await client.close();
      } catch {
        client.destroy();
      }
    },
  };
}
