/**
 * What every authenticator needs to know about a bearer token before it verifies anything: whether it has
 * the shape of a JWT, and the key it is cached under. Shared by the JWT and the introspection
 * authenticators, so that neither borrows the other's internals.
 */
import { createHash } from 'node:crypto';

/**
 * The shape of a JWS in compact serialization (RFC 7515 §7.1): three base64url parts. Anything else is not
 * a JWT; a token of this shape may still be an opaque one that happens to look like it.
 */
export const JWS_COMPACT = /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$/;

/** Whether the token has the shape of a compact JWS (nothing is decoded or verified). */
export function looksLikeJwt(token: string): boolean {
  return JWS_COMPACT.test(token);
}

/**
 * The cache key of a token: its SHA-256, base64url. Caches never hold the token itself, so a heap dump or a
 * cache listing does not hand out usable credentials, and a hit is the very token that was verified.
 */
export function tokenCacheKey(token: string): string {
  // createHash, not crypto.hash: the one-shot API needs Node 20.12, and engines says >=20.
  return createHash('sha256').update(token).digest('base64url');
}
