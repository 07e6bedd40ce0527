/**
 * JWT access tokens (RFC 7519, RFC 8725 best practices) verified with jose against each trusted issuer's
 * keys. The unverified `iss` only picks which issuer's keys, algorithms and audiences apply; a key of issuer
 * A can never verify a token claiming issuer B. `exp` is required, `nbf`/`iat` are checked with clock skew
 * (jose alone accepts a future `iat`), `alg` is checked against a per-issuer allow-list that can never hold
 * `none` nor mix HMAC with public keys (the "HS256 signed with the RSA public key" attack), and embedded keys
 * (`jwk`, `jku`, `x5u`, `x5c`) are never used: keys come only from configuration.
 *
 * Verified tokens are cached (bounded LRU keyed by issuer and the token's SHA-256), never past their `exp`;
 * the policy is still evaluated on every request. A key withdrawn from an issuer's remote JWKS is often
 * withdrawn on purpose (compromised, or rotated out): when a fetched set drops a key the previous set held,
 * that issuer's cached verifications are no longer used, and its tokens are verified again against the new set.
 */
import { createLocalJWKSet, decodeJwt, errors, jwtVerify, type JSONWebKeySet, type JWTPayload, type JWTVerifyGetKey } from 'jose';
import { LRUCache } from 'lru-cache';
import { copyClaims } from '../core/identity.js';
import type { ReasonCode } from '../core/errors.js';
import type { Authenticator, AuthnResult } from '../core/stages.js';
import {
  ASYMMETRIC_ALGORITHMS,
  DEFAULT_ALGORITHMS,
  DEFAULT_CACHE_ENTRIES,
  DEFAULT_CLOCK_SKEW_SECONDS,
  DEFAULT_HMAC_ALGORITHMS,
  DEFAULT_JWT_CACHE_SECONDS,
  DEFAULT_MAX_TOKEN_AGE_SECONDS,
  HMAC_ALGORITHMS,
  MIN_SECRET_BYTES,
} from '../config/defaults.js';
import type { createDiscoveredKeySource } from './discovery.js';
import { createRemoteKeySource, KeysUnavailableError, type FetchResult, type KeySource, type RemoteKeySourceOptions } from './jwks-source.js';
import { looksLikeJwt, tokenCacheKey } from './token-shape.js';

// Defined in config/defaults.ts; re-exported for callers that import them from here.
export {
  ASYMMETRIC_ALGORITHMS,
  DEFAULT_ALGORITHMS,
  DEFAULT_CACHE_ENTRIES,
  DEFAULT_CLOCK_SKEW_SECONDS,
  DEFAULT_JWT_CACHE_SECONDS,
  HMAC_ALGORITHMS,
  MIN_SECRET_BYTES,
} from '../config/defaults.js';
export { JWS_COMPACT, tokenCacheKey as sha256 } from './token-shape.js';

/** Where an issuer's keys come from: exactly one. */
export type KeyConfig =
  | { readonly jwksUri: string }
  | { readonly jwks: JSONWebKeySet }
  | { readonly secret: Uint8Array }
  | { readonly discovery: true };

export interface JwtIssuerOptions {
  readonly issuer: string;
  /** The token's `aud` must contain one of these. Required, never empty. */
  readonly audiences: readonly string[];
  readonly keys: KeyConfig;
  /** Default DEFAULT_ALGORITHMS (RS256, PS256, ES256, EdDSA); DEFAULT_HMAC_ALGORITHMS (HS256) for a secret. */
  readonly algorithms?: readonly string[] | undefined;
  /** Default DEFAULT_CLOCK_SKEW_SECONDS (30). */
  readonly clockSkewSeconds?: number | undefined;
  /** 0 = no limit on `iat` age (the default, DEFAULT_MAX_TOKEN_AGE_SECONDS). */
  readonly maxTokenAgeSeconds?: number | undefined;
}

/** What happens to remote keys, for logs and metrics. */
export interface KeyEvents {
  keysFetched?(issuer: string, result: FetchResult, error?: Error): void;
  /** A fetched key set no longer holds `count` keys of the previous one: that issuer's cached tokens are verified again. */
  keysRemoved?(issuer: string, count: number): void;
  discovered?(issuer: string, result: FetchResult, error?: Error): void;
  cache?(hit: boolean): void;
}

export interface JwtAuthenticatorOptions {
  /** Injected clock for tests; default the system clock. */
  readonly now?: () => Date;
  /** Remote JWKS timing: fetch timeout, refetch cooldown on an unknown kid, backoff after a failed fetch, background refresh. */
  readonly jwks?: Omit<RemoteKeySourceOptions, 'now' | 'onFetch' | 'onKeysRemoved'>;
  /** How long a verified token is remembered, never past its exp; default DEFAULT_JWT_CACHE_SECONDS (300). */
  readonly cacheSeconds?: number;
  /** How many verified tokens are remembered; default DEFAULT_CACHE_ENTRIES (10,000). */
  readonly cacheEntries?: number;
  readonly events?: KeyEvents;
  /**
   * The key source of an issuer with `discovery: true` (discovery.ts, which loads openid-client). Passed in
   * by whoever configures such an issuer, so a config without discovery never loads openid-client.
   */
  readonly discoveredKeySource?: typeof createDiscoveredKeySource;
}

interface IssuerState {
  readonly issuer: string;
  readonly audiences: string[];
  readonly algorithms: string[];
  readonly clockSkewSeconds: number;
  readonly maxTokenAgeSeconds: number;
  /** Replaced when a mounted JWKS or secret file changes (see replaceLocalKeys). */
  key: JWTVerifyGetKey | Uint8Array;
  readonly remote: KeySource | undefined;
  /**
   * Bumped when a fetched key set drops a key the previous set held: cache entries made under an older
   * generation are not used. Per issuer, so one issuer's rotation does not flush the others' entries.
   */
  keyGeneration: number;
}

const NOT_MINE: AuthnResult = Object.freeze({ kind: 'notMine' });

interface CachedToken {
  /** The authenticated result, shared by every request with this token (frozen). */
  readonly result: AuthnResult;
  /** Epoch ms after which the entry is not used: the token's exp, iat + maxTokenAge, or the cache period. */
  readonly validUntilMs: number;
  /** The issuer whose keys verified the token, and its keyGeneration before the verification began. */
  readonly state: IssuerState;
  readonly keyGeneration: number;
}

/** Checks a JWKS document read from a file; throws a TypeError naming the problem. */
export function checkJwks(parsed: unknown): JSONWebKeySet {
  if (typeof parsed !== 'object' || parsed === null || !Array.isArray((parsed as { keys?: unknown }).keys)) {
    throw new TypeError('not a JWKS document (an object with a "keys" array)');
  }
  const jwks = parsed as JSONWebKeySet;
  if (jwks.keys.some((k) => typeof k.d === 'string' || k.kty === 'oct')) {
    throw new TypeError('the JWKS holds private or symmetric keys; mount only public keys');
  }
  createLocalJWKSet(jwks);
  return jwks;
}

function checkOptions(o: JwtIssuerOptions): string[] {
  if (o.audiences.length === 0) throw new TypeError(`issuer ${o.issuer}: audiences must not be empty`);
  const hmac = 'secret' in o.keys;
  const algorithms = [...(o.algorithms ?? (hmac ? DEFAULT_HMAC_ALGORITHMS : DEFAULT_ALGORITHMS))];
  const allowed = hmac ? HMAC_ALGORITHMS : ASYMMETRIC_ALGORITHMS;
  for (const alg of algorithms) {
    if (!allowed.includes(alg)) throw new TypeError(`issuer ${o.issuer}: algorithm ${alg} is not allowed with ${hmac ? 'a secret' : 'public keys'}`);
  }
  if ('secret' in o.keys && o.keys.secret.byteLength < MIN_SECRET_BYTES) {
    throw new TypeError(`issuer ${o.issuer}: the secret must be at least ${MIN_SECRET_BYTES} bytes`);
  }
  return algorithms;
}

/** Maps jose's errors onto our reason codes, in this one place. Details are fixed strings: no token content. */
function classify(err: unknown): { reason: ReasonCode; detail: string } {
  if (err instanceof errors.JWTExpired) {
    return err.claim === 'iat'
      ? { reason: 'TOKEN_EXPIRED', detail: 'the token is older than the maximum token age' }
      : { reason: 'TOKEN_EXPIRED', detail: 'the token has expired' };
  }
  if (err instanceof errors.JWTClaimValidationFailed) {
    switch (err.claim) {
      case 'aud':
        return { reason: 'TOKEN_AUDIENCE', detail: 'the token is not issued for this audience' };
      case 'iss':
        return { reason: 'TOKEN_ISSUER', detail: 'the token issuer is not trusted' };
      case 'exp':
        return { reason: 'TOKEN_CLAIMS', detail: 'the token has no valid exp claim' };
      case 'nbf':
        return { reason: 'TOKEN_CLAIMS', detail: 'the token is not valid yet (nbf)' };
      case 'iat':
        return { reason: 'TOKEN_CLAIMS', detail: 'the token has an invalid iat claim' };
      default:
        return { reason: 'TOKEN_CLAIMS', detail: 'the token claims are invalid' };
    }
  }
  if (err instanceof errors.JOSEAlgNotAllowed) return { reason: 'TOKEN_INVALID', detail: 'the token algorithm is not allowed' };
  if (err instanceof errors.JWSSignatureVerificationFailed) return { reason: 'TOKEN_INVALID', detail: 'the token signature is invalid' };
  if (err instanceof errors.JWKSNoMatchingKey || err instanceof errors.JWKSMultipleMatchingKeys) {
    return { reason: 'TOKEN_INVALID', detail: 'no single key of the issuer matches the token' };
  }
  if (err instanceof KeysUnavailableError) return { reason: 'KEYS_UNAVAILABLE', detail: 'the keys of the token issuer are unavailable' };
  // Anything else is jose refusing the token itself (malformed, unsupported header, `crit`, `b64`).
  return { reason: 'TOKEN_INVALID', detail: 'the token is malformed or unsupported' };
}

export interface JwtAuthenticator extends Authenticator {
  /**
   * Swaps the keys of issuers configured with a JWKS file or a secret (a mounted Secret was updated).
   * Tokens verified with the old keys are forgotten: a key rotated out stops working at once.
   */
  replaceLocalKeys(keys: ReadonlyMap<string, KeyConfig>): void;
}

export function createJwtAuthenticator(issuers: readonly JwtIssuerOptions[], options: JwtAuthenticatorOptions = {}): JwtAuthenticator {
  const now = options.now ?? (() => new Date());
  const nowMs = (): number => now().getTime();
  const events = options.events ?? {};
  const cacheMs = (options.cacheSeconds ?? DEFAULT_JWT_CACHE_SECONDS) * 1000;
  const cache = new LRUCache<string, CachedToken>({ max: options.cacheEntries ?? DEFAULT_CACHE_ENTRIES });
  const byIssuer = new Map<string, IssuerState>();

  for (const o of issuers) {
    const algorithms = checkOptions(o);
    if (byIssuer.has(o.issuer)) throw new TypeError(`issuer ${o.issuer} is configured twice`);
    const sourceOptions: RemoteKeySourceOptions = {
      ...options.jwks,
      now: nowMs,
      onFetch: (result, error) => events.keysFetched?.(o.issuer, result, error),
      onKeysRemoved: (removed) => {
        const state = byIssuer.get(o.issuer);
        if (state !== undefined) state.keyGeneration++;
        events.keysRemoved?.(o.issuer, removed.length);
      },
    };
    let remote: KeySource | undefined;
    if ('jwksUri' in o.keys) remote = createRemoteKeySource(new URL(o.keys.jwksUri), sourceOptions);
    else if ('discovery' in o.keys) {
      const discovered = options.discoveredKeySource;
      if (discovered === undefined) throw new TypeError(`issuer ${o.issuer}: discovery needs options.discoveredKeySource`);
      remote = discovered(o.issuer, { ...sourceOptions, onDiscovery: (result, error) => events.discovered?.(o.issuer, result, error) });
    }
    const key = remote?.getKey ?? ('secret' in o.keys ? o.keys.secret : 'jwks' in o.keys ? createLocalJWKSet(o.keys.jwks) : undefined);
    if (key === undefined) throw new TypeError(`issuer ${o.issuer}: no key source`);
    byIssuer.set(o.issuer, {
      issuer: o.issuer,
      audiences: [...o.audiences],
      algorithms,
      clockSkewSeconds: o.clockSkewSeconds ?? DEFAULT_CLOCK_SKEW_SECONDS,
      maxTokenAgeSeconds: o.maxTokenAgeSeconds ?? DEFAULT_MAX_TOKEN_AGE_SECONDS,
      key,
      remote,
      keyGeneration: 0,
    });
  }

  async function verify(state: IssuerState, token: string, currentDate: Date): Promise<JWTPayload> {
    const verifyOptions = {
      issuer: state.issuer,
      audience: state.audiences,
      algorithms: state.algorithms,
      clockTolerance: state.clockSkewSeconds,
      requiredClaims: ['exp'],
      currentDate,
      ...(state.maxTokenAgeSeconds > 0 ? { maxTokenAge: state.maxTokenAgeSeconds } : {}),
    };
    const { payload } =
      state.key instanceof Uint8Array ? await jwtVerify(token, state.key, verifyOptions) : await jwtVerify(token, state.key, verifyOptions);
    return payload;
  }

  async function authenticate(token: string): Promise<AuthnResult> {
    const currentDate = now();
    const currentMs = currentDate.getTime();
    // The cache is looked up first: a token seen before is not decoded again. The key is the SHA-256 of
    // the whole token, so a hit is the very token that was verified (its issuer included).
    const cacheKey = tokenCacheKey(token);
    const cached = cache.get(cacheKey);
    if (cached !== undefined && cached.validUntilMs > currentMs) {
      if (cached.keyGeneration === cached.state.keyGeneration) {
        events.cache?.(true);
        return cached.result;
      }
      // The issuer has withdrawn a key since: verify again (the key may be gone).
      cache.delete(cacheKey);
    }

    // Not the shape of a JWT: not mine (an opaque token for introspection, perhaps).
    if (!looksLikeJwt(token)) return NOT_MINE;
    let iss: unknown;
    try {
      iss = decodeJwt(token).iss;
    } catch {
      return NOT_MINE;
    }
    const state = typeof iss === 'string' ? byIssuer.get(iss) : undefined;
    if (state === undefined) return NOT_MINE;
    events.cache?.(false);

    // Read before verifying: keys withdrawn while this verification runs make its entry stale at once.
    const keyGeneration = state.keyGeneration;
    try {
      const payload = await verify(state, token, currentDate);
      // jose checks iat only together with maxTokenAge; a token issued in the future is always refused.
      if (payload.iat !== undefined && payload.iat > currentMs / 1000 + state.clockSkewSeconds) {
        return { kind: 'failed', reason: 'TOKEN_CLAIMS', detail: 'the token is issued in the future (iat)' };
      }
      const result: AuthnResult = Object.freeze({ kind: 'authenticated' as const, issuer: state.issuer, claims: copyClaims(payload) });
      const expMs = (payload.exp ?? 0) * 1000;
      const ageLimitMs = state.maxTokenAgeSeconds > 0 && payload.iat !== undefined ? (payload.iat + state.maxTokenAgeSeconds) * 1000 : Infinity;
      const validUntilMs = Math.min(expMs, ageLimitMs, currentMs + cacheMs);
      const ttl = validUntilMs - currentMs;
      if (ttl > 0) cache.set(cacheKey, { result, validUntilMs, state, keyGeneration }, { ttl });
      return result;
    } catch (err) {
      return { kind: 'failed', ...classify(err) };
    }
  }

  return {
    authenticate,
    replaceLocalKeys(keys: ReadonlyMap<string, KeyConfig>): void {
      for (const [issuer, config] of keys) {
        const state = byIssuer.get(issuer);
        if (state === undefined || state.remote !== undefined) continue;
        if ('secret' in config) state.key = config.secret;
        else if ('jwks' in config) state.key = createLocalJWKSet(config.jwks);
        // A verification that began with the old keys and ends after this must not cache its result.
        state.keyGeneration++;
      }
      cache.clear();
    },
    missing(): readonly string[] {
      const out: string[] = [];
      for (const state of byIssuer.values()) {
        if (state.remote && !state.remote.ready()) out.push(`keys of issuer ${state.issuer}`);
      }
      return out;
    },
    close(): void {
      for (const state of byIssuer.values()) state.remote?.close();
      cache.clear();
    },
  };
}
