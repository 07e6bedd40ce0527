/**
 * Where sessions live and how they end (DESIGN.md §7, §8): the one interface browser sign-in uses, with
 * the cookie store here (the session sealed in the browser's cookie; sign-outs, logouts, logout-token
 * `jti`s and refreshes known to this process) and the redis store in redis-store.ts (a ticket in the
 * cookie; all of that shared by every replica).
 */
import { LRUCache } from 'lru-cache';
import type { RequestCookies, SessionData, SessionStore } from './cookie-store.js';
import { LOGOUT_TOKEN_MAX_AGE_SECONDS } from './logout-token.js';
import type { Revocations } from './revocations.js';

/** A refresh's outcome: the refreshed session, the session ended (refused), or the provider not reachable. */
export type Refreshed = { readonly kind: 'ok'; readonly session: SessionData } | { readonly kind: 'ended'; readonly why: string } | { readonly kind: 'unreachable' };

/** The session store cannot be reached (redis down): a request that needs a session gets 503, never an allow. */
export class StoreUnavailableError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'StoreUnavailableError';
  }
}

export interface SessionBackend {
  readonly kind: 'cookie' | 'redis';
  /** The request's session; `invalid` when a session cookie came but names no usable session (to be cleared). */
  load(cookies: RequestCookies, now: number): Promise<SessionData | 'invalid' | undefined>;
  /** Stores a new session (a sign-in): the Set-Cookie lines that give the browser its cookie. */
  start(session: SessionData, cookies: RequestCookies, now: number): Promise<string[]>;
  /** Set-Cookie lines that clear the request's session cookies. */
  clear(cookies: RequestCookies): string[];
  /** Whether a loaded session was ended (the cookie store's revocations; the redis store deletes instead). */
  isEnded(session: SessionData): boolean;
  /** Sign-out, or a refresh refused: the session is refused from now on. */
  end(session: SessionData): Promise<void>;
  /** Back-channel logout: every session with this provider `sid`, or of this `sub` started until `atMs`. */
  endProviderSession(provider: string, sid: string): Promise<void>;
  endSubject(provider: string, subject: string, atMs: number): Promise<void>;
  /** Whether a logout token's `jti` (per issuer) was used already (a replay). */
  jtiSeen(issuer: string, jti: string): Promise<boolean>;
  /** Marks a `jti` used: after the sessions it names are ended, so a failed attempt can be retried. */
  markJti(issuer: string, jti: string): Promise<void>;
  /**
   * One refresh per session at a time: `refresh` runs once; requests that bring the same session meanwhile
   * get its outcome. The refreshed session is stored; the Set-Cookie lines (the cookie store's new cookie)
   * come with it.
   */
  refreshOnce(session: SessionData, cookies: RequestCookies, now: number, refresh: () => Promise<Refreshed>): Promise<{ readonly refreshed: Refreshed; readonly cookies: string[] }>;
  /** Whether the store answers (always for the cookie store). */
  up(): boolean;
  close(): Promise<void>;
}

/** A refresh's outcome is shared this long by requests that bring the same (old) session. */
const REFRESH_SHARED_MS = 60_000;

/** The cookie store as a backend: everything but the cookie itself is known to this process only. */
export function createCookieBackend(store: SessionStore, revocations: Revocations): SessionBackend {
  const refreshes = new LRUCache<string, Promise<{ refreshed: Refreshed; cookies: string[] }>>({ max: 10_000, ttl: REFRESH_SHARED_MS });
  const seen = new LRUCache<string, true>({ max: 10_000, ttl: LOGOUT_TOKEN_MAX_AGE_SECONDS * 2 * 1000 });
  return {
    kind: 'cookie',
    load: (cookies, now) => store.load(cookies, now),
    start: (session, cookies, now) => store.save(session, cookies, now),
    clear: (cookies) => store.clear(cookies),
    isEnded: (session) => revocations.isRevoked(session),
    end: (session) => Promise.resolve(revocations.revokeSession(session.id)),
    endProviderSession: (provider, sid) => Promise.resolve(revocations.revokeProviderSession(provider, sid)),
    endSubject: (provider, subject, atMs) => Promise.resolve(revocations.revokeSubject(provider, subject, atMs)),
    jtiSeen: (issuer, jti) => Promise.resolve(seen.has(`${issuer}\n${jti}`)),
    markJti: (issuer, jti) => Promise.resolve(void seen.set(`${issuer}\n${jti}`, true)),
    refreshOnce(session, cookies, now, refresh) {
      // Keyed by the session and its refresh token: requests with the old cookie share the outcome.
      const key = `${session.id}\n${session.refreshToken ?? ''}`;
      let pending = refreshes.get(key);
      if (pending === undefined) {
        pending = (async () => {
          const refreshed = await refresh();
          if (refreshed.kind === 'ended') revocations.revokeSession(session.id);
          if (refreshed.kind !== 'ok') return { refreshed, cookies: [] };
          try {
            return { refreshed, cookies: await store.save(refreshed.session, cookies, now) };
          } catch {
            // A refreshed session too large for the cookie chunks: it cannot be kept, so it ends.
            revocations.revokeSession(session.id);
            return { refreshed: { kind: 'ended', why: 'the refreshed session is too large for its cookie' } as Refreshed, cookies: [] };
          }
        })();
        refreshes.set(key, pending);
        // The provider being down is not remembered: the next request tries again.
        const mine = pending;
        void mine.then((r) => {
          if (r.refreshed.kind === 'unreachable' && refreshes.get(key) === mine) refreshes.delete(key);
        });
      }
      return pending;
    },
    up: () => true,
    close: () => Promise.resolve(),
  };
}
