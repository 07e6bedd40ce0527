/**
 * JWT access tokens (RFC 7519, RFC 8725 best practices) verified with jose against each trusted issuer's
 * keys. The unverified `iss` only picks which issuer's keys, algorithms and audiences apply; a key of issuer
 * A can never verify a token claiming issuer B. `exp` is required, `nbf`/`iat` are checked with clock skew
 * (jose alone accepts a future `iat`), `alg` is checked against a per-issuer allow-list that can never hold
 * `none`, and embedded keys (`jwk`, `jku`, `x5u`, `x5c`) are never used: keys come only from configuration.
 */
import { readFile } from 'node:fs/promises';
import { createLocalJWKSet, decodeJwt, errors, jwtVerify, type JSONWebKeySet, type JWTVerifyGetKey } from 'jose';
import { copyClaims } from '../core/identity.js';
import type { ReasonCode } from '../core/errors.js';
import type { Authenticator, AuthnResult } from '../core/stages.js';
import { createRemoteKeySource, KeysUnavailableError, type KeySource, type RemoteKeySourceOptions } from './jwks-source.js';

export const DEFAULT_ALGORITHMS = Object.freeze(['RS256', 'PS256', 'ES256', 'EdDSA']);
export const ASYMMETRIC_ALGORITHMS = Object.freeze([
  'RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512', 'ES256', 'ES384', 'ES512', 'EdDSA', 'Ed25519',
]);
export const DEFAULT_CLOCK_SKEW_SECONDS = 30;

export interface JwtIssuerOptions {
  readonly issuer: string;
  /** The token's `aud` must contain one of these. Required, never empty. */
  readonly audiences: readonly string[];
  readonly jwksUri?: string | undefined;
  /** A JWKS document already read from disk (see loadJwksFile). */
  readonly jwks?: JSONWebKeySet | undefined;
  readonly algorithms?: readonly string[] | undefined;
  readonly clockSkewSeconds?: number | undefined;
  /** 0 = no limit on `iat` age. */
  readonly maxTokenAgeSeconds?: number | undefined;
}

export interface JwtAuthenticatorOptions {
  /** Injected clock for tests; default the system clock. */
  readonly now?: () => Date;
  /** Fetch timeout of remote JWKS (default 5 s). */
  readonly jwksTimeoutMs?: number;
  /** Timing of remote JWKS: cooldown between refetches on an unknown kid, background refresh. */
  readonly jwks?: Omit<RemoteKeySourceOptions, 'now' | 'timeoutMs'>;
}

interface IssuerState {
  readonly issuer: string;
  readonly audiences: string[];
  readonly algorithms: string[];
  readonly clockSkewSeconds: number;
  readonly maxTokenAgeSeconds: number;
  readonly keys: JWTVerifyGetKey;
  readonly remote: KeySource | undefined;
}

const JWS_COMPACT = /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$/;

/** Reads and checks a JWKS file; throws a TypeError naming the problem (the caller names the config key). */
export async function loadJwksFile(path: string): Promise<JSONWebKeySet> {
  const parsed = JSON.parse(await readFile(path, 'utf8')) as unknown;
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

function checkOptions(options: JwtIssuerOptions): void {
  if (options.audiences.length === 0) throw new TypeError(`issuer ${options.issuer}: audiences must not be empty`);
  if ((options.jwksUri === undefined) === (options.jwks === undefined)) {
    throw new TypeError(`issuer ${options.issuer}: exactly one of jwksUri and jwks is needed`);
  }
  for (const alg of options.algorithms ?? DEFAULT_ALGORITHMS) {
    if (!ASYMMETRIC_ALGORITHMS.includes(alg)) throw new TypeError(`issuer ${options.issuer}: algorithm ${alg} is not allowed`);
  }
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

export function createJwtAuthenticator(issuers: readonly JwtIssuerOptions[], options: JwtAuthenticatorOptions = {}): Authenticator {
  const now = options.now ?? (() => new Date());
  const byIssuer = new Map<string, IssuerState>();

  for (const o of issuers) {
    checkOptions(o);
    if (byIssuer.has(o.issuer)) throw new TypeError(`issuer ${o.issuer} is configured twice`);
    const remote =
      o.jwksUri === undefined
        ? undefined
        : createRemoteKeySource(new URL(o.jwksUri), {
            ...options.jwks,
            ...(options.jwksTimeoutMs === undefined ? {} : { timeoutMs: options.jwksTimeoutMs }),
          });
    const keys: JWTVerifyGetKey = remote?.getKey ?? createLocalJWKSet(o.jwks as JSONWebKeySet);
    byIssuer.set(o.issuer, {
      issuer: o.issuer,
      audiences: [...o.audiences],
      algorithms: [...(o.algorithms ?? DEFAULT_ALGORITHMS)],
      clockSkewSeconds: o.clockSkewSeconds ?? DEFAULT_CLOCK_SKEW_SECONDS,
      maxTokenAgeSeconds: o.maxTokenAgeSeconds ?? 0,
      keys,
      remote,
    });
  }

  async function authenticate(token: string): Promise<AuthnResult> {
    if (!JWS_COMPACT.test(token)) return { kind: 'notMine' };
    let iss: unknown;
    try {
      iss = decodeJwt(token).iss;
    } catch {
      return { kind: 'notMine' };
    }
    const state = typeof iss === 'string' ? byIssuer.get(iss) : undefined;
    if (state === undefined) return { kind: 'notMine' };

    const currentDate = now();
    try {
      const { payload } = await jwtVerify(token, state.keys, {
        issuer: state.issuer,
        audience: state.audiences,
        algorithms: state.algorithms,
        clockTolerance: state.clockSkewSeconds,
        requiredClaims: ['exp'],
        currentDate,
        ...(state.maxTokenAgeSeconds > 0 ? { maxTokenAge: state.maxTokenAgeSeconds } : {}),
      });
      // jose checks iat only together with maxTokenAge; a token issued in the future is always refused.
      if (payload.iat !== undefined && payload.iat > currentDate.getTime() / 1000 + state.clockSkewSeconds) {
        return { kind: 'failed', reason: 'TOKEN_CLAIMS', detail: 'the token is issued in the future (iat)' };
      }
      return { kind: 'authenticated', issuer: state.issuer, claims: copyClaims(payload) };
    } catch (err) {
      return { kind: 'failed', ...classify(err) };
    }
  }

  return {
    authenticate,
    missing(): readonly string[] {
      const out: string[] = [];
      for (const state of byIssuer.values()) {
        if (state.remote && !state.remote.ready()) out.push(`keys of issuer ${state.issuer}`);
      }
      return out;
    },
    close(): void {
      for (const state of byIssuer.values()) state.remote?.close();
    },
  };
}
