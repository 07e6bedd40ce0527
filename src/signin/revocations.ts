/**
 * Sessions refused from now on, kept in memory (the cookie store: one replica; the redis store of §8 keeps
 * them for every replica). A session cookie is a bearer credential the browser may still hold after
 * sign-out, or a copy may be replayed: so sign-out revokes the session's id, and a back-channel logout
 * revokes by the provider's `sid`, or every session of a `sub` at that provider that started before it.
 * Entries live as long as a session can (`maxAgeSeconds`), then go.
 */
import { LRUCache } from 'lru-cache';
import type { SessionData } from './cookie-store.js';

/** More revocations than this (within maxAgeSeconds) push out the oldest: bounded memory. */
export const MAX_REVOCATIONS = 100_000;

export interface Revocations {
  /** Sign-out: this session id. */
  revokeSession(id: string): void;
  /** Back-channel logout: the provider's session `sid`. */
  revokeProviderSession(provider: string, sid: string): void;
  /** Back-channel logout by `sub`: every session of that subject at that provider started until `atMs`. */
  revokeSubject(provider: string, subject: string, atMs: number): void;
  isRevoked(session: SessionData): boolean;
}

export function createRevocations(maxAgeSeconds: number, options: { readonly max?: number; readonly now?: () => number; readonly onOverflow?: () => void } = {}): Revocations {
  const now = options.now ?? Date.now;
  /**
   * Sessions started up to this time are refused. A revocation is never forgotten while its session may
   * live: when more revocations come than fit, the oldest is pushed out and every session started until
   * now is refused instead (fail closed: everyone signs in again).
   */
  let floorMs = 0;
  const cache = new LRUCache<string, number>({
    max: options.max ?? MAX_REVOCATIONS,
    ttl: maxAgeSeconds * 1000,
    ttlAutopurge: false,
    dispose: (_value, _key, reason) => {
      if (reason !== 'evict') return;
      floorMs = now();
      options.onOverflow?.();
    },
  });
  return {
    revokeSession: (id) => void cache.set(`s\n${id}`, 0),
    revokeProviderSession: (provider, sid) => void cache.set(`p\n${provider}\n${sid}`, 0),
    revokeSubject: (provider, subject, atMs) => void cache.set(`u\n${provider}\n${subject}`, atMs),
    isRevoked(session) {
      if (session.startedAtMs <= floorMs) return true;
      if (cache.has(`s\n${session.id}`)) return true;
      if (session.providerSid !== undefined && cache.has(`p\n${session.provider}\n${session.providerSid}`)) return true;
      const at = cache.get(`u\n${session.provider}\n${session.subject}`);
      return at !== undefined && session.startedAtMs <= at;
    },
  };
}
