/**
 * OpenID Connect Back-Channel Logout 1.0, §2.6: the checks of a `logout_token` before any session ends
 * (DESIGN.md §7, `POST {prefix}/backchannel-logout`). A logout token is a JWT the provider signs; one that
 * passes names the sessions to end by `sid` (that session at this provider) or `sub` (all of that user's).
 *
 * Refused (400, nothing ends): a bad signature or algorithm, another issuer or audience, no `iat`, no `jti`
 * or one already seen (a replay), no back-channel `events` member, neither `sid` nor `sub`, or a `nonce`
 * (which would make it pass for an ID token).
 */
import { errors, jwtVerify, type JWTVerifyGetKey } from 'jose';
import { LRUCache } from 'lru-cache';

export const BACKCHANNEL_LOGOUT_EVENT = 'http://schemas.openid.net/event/backchannel-logout';
/** How long a logout token's `jti` is remembered against replays; older tokens (by `iat`) are refused. */
export const LOGOUT_TOKEN_MAX_AGE_SECONDS = 300;
/** How far the provider's clock may be ahead of (or behind) ours for `iat` and `exp`. */
export const LOGOUT_TOKEN_CLOCK_TOLERANCE_SECONDS = 60;

export interface LogoutTokenCheck {
  readonly issuer: string;
  /** The provider's client id: the token's `aud` must name it. */
  readonly clientId: string;
  readonly keys: JWTVerifyGetKey;
  /** The provider's ID token signing algorithms (never `none`). */
  readonly algorithms: readonly string[];
  /**
   * The replay check by the caller: whether a `jti` was used already. The caller then marks it once the
   * sessions are ended (the result carries the `jti`). Default: this verifier remembers (one process).
   */
  readonly seen?: ((jti: string) => Promise<boolean>) | undefined;
}

export type LogoutTokenResult = { readonly ok: true; readonly jti: string; readonly sid?: string; readonly sub?: string } | { readonly ok: false; readonly reason: string };

export interface LogoutTokenVerifier {
  verify(token: string, check: LogoutTokenCheck): Promise<LogoutTokenResult>;
}

/** One verifier per sidecar: it remembers the `jti` of every token it accepted, per issuer. */
export function createLogoutTokenVerifier(options: { readonly now?: () => Date; readonly maxEntries?: number } = {}): LogoutTokenVerifier {
  const now = options.now ?? (() => new Date());
  const seen = new LRUCache<string, true>({ max: options.maxEntries ?? 10_000, ttl: LOGOUT_TOKEN_MAX_AGE_SECONDS * 2 * 1000, ttlAutopurge: false });
  return {
    async verify(token, check) {
      let payload: Record<string, unknown>;
      try {
        ({ payload } = await jwtVerify(token, check.keys, {
          issuer: check.issuer,
          audience: check.clientId,
          algorithms: check.algorithms.filter((a) => a !== 'none'),
          requiredClaims: ['iat', 'jti'],
          maxTokenAge: LOGOUT_TOKEN_MAX_AGE_SECONDS,
          // The provider's clock may run a little ahead of ours: a logout must not be lost to that.
          clockTolerance: LOGOUT_TOKEN_CLOCK_TOLERANCE_SECONDS,
          currentDate: now(),
        }));
      } catch (err) {
        if (err instanceof errors.JWTClaimValidationFailed) return { ok: false, reason: `the logout token's ${err.claim} claim is not valid` };
        if (err instanceof errors.JWTExpired) return { ok: false, reason: 'the logout token has expired' };
        return { ok: false, reason: 'the logout token is not a JWT signed by the provider' };
      }
      const events = payload['events'];
      if (typeof events !== 'object' || events === null || typeof (events as Record<string, unknown>)[BACKCHANNEL_LOGOUT_EVENT] !== 'object') {
        return { ok: false, reason: 'the logout token has no back-channel logout event' };
      }
      if ('nonce' in payload) return { ok: false, reason: 'a logout token must not carry a nonce' };
      const sid = typeof payload['sid'] === 'string' && payload['sid'] !== '' ? payload['sid'] : undefined;
      const sub = typeof payload['sub'] === 'string' && payload['sub'] !== '' ? payload['sub'] : undefined;
      if (sid === undefined && sub === undefined) return { ok: false, reason: 'the logout token names neither a sid nor a sub' };
      const jti = payload['jti'];
      if (typeof jti !== 'string' || jti === '') return { ok: false, reason: "the logout token's jti claim is not valid" };
      if (check.seen !== undefined) {
        if (await check.seen(jti)) return { ok: false, reason: 'the logout token was already used' };
      } else {
        const key = `${check.issuer}\n${jti}`;
        if (seen.has(key)) return { ok: false, reason: 'the logout token was already used' };
        seen.set(key, true);
      }
      return { ok: true, jti, ...(sid !== undefined ? { sid } : {}), ...(sub !== undefined ? { sub } : {}) };
    },
  };
}
