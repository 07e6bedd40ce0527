/**
 * Opaque access tokens through OAuth 2.0 Token Introspection (RFC 7662) with openid-client. Only
 * `active: true` (a real boolean, checked by openid-client) counts; `exp` and `nbf` are checked with the
 * default clock skew (DEFAULT_CLOCK_SKEW_SECONDS, 30 s), `aud` when `audiences` is set, and `iss` when the
 * answer carries one. It shares nothing with the JWT authenticator but token-shape.ts. Active answers
 * are cached (bounded LRU keyed by endpoint and the token's SHA-256) for `cacheSeconds`, never past the
 * token's `exp`; inactive answers and failures are never cached as a success, and concurrent requests
 * for the same token share one introspection call. An IdP that cannot be reached, or does not answer
 * within `timeoutSeconds`, is a 503: never allow, never a hang.
 */
import { LRUCache } from 'lru-cache';
import * as client from 'openid-client';
import { idpFetch } from './idp-fetch.js';
import { copyClaims, type Claims } from '../core/identity.js';
import type { ReasonCode } from '../core/errors.js';
import type { Authenticator, AuthnResult } from '../core/stages.js';
import {
  DEFAULT_CACHE_ENTRIES,
  DEFAULT_CLOCK_SKEW_SECONDS,
  DEFAULT_INTROSPECTION_AUTH_METHOD,
  DEFAULT_INTROSPECTION_CACHE_SECONDS,
  DEFAULT_INTROSPECTION_TIMEOUT_SECONDS,
} from '../config/defaults.js';
import { clientAuthentication, discover, isSecureOrLoopback, retryUntilDone } from './discovery.js';
import { looksLikeJwt, tokenCacheKey } from './token-shape.js';

// Defined in config/defaults.ts; re-exported for callers that import them from here.
export { DEFAULT_INTROSPECTION_CACHE_SECONDS, DEFAULT_INTROSPECTION_TIMEOUT_SECONDS } from '../config/defaults.js';

export interface IntrospectionEndpointOptions {
  /** The issuer the tokens belong to (the Identity's issuer; the discovery base with `discovery`). */
  readonly issuer: string;
  /** Either the endpoint URL, or discovery from the issuer. */
  readonly endpoint?: string | undefined;
  readonly discovery?: boolean | undefined;
  readonly clientId: string;
  readonly clientSecret: string;
  /** Default DEFAULT_INTROSPECTION_AUTH_METHOD (client_secret_basic). */
  readonly authMethod?: 'client_secret_basic' | 'client_secret_post' | undefined;
  /** When set, the answer's `aud` must contain one of these. */
  readonly audiences?: readonly string[] | undefined;
  /** Default DEFAULT_INTROSPECTION_CACHE_SECONDS (60); never past the token's `exp`. */
  readonly cacheSeconds?: number | undefined;
  /** Default DEFAULT_INTROSPECTION_TIMEOUT_SECONDS (5). */
  readonly timeoutSeconds?: number | undefined;
}

export interface IntrospectionEvents {
  discovered?(issuer: string, result: 'success' | 'error', error?: Error): void;
  introspected?(issuer: string, result: 'active' | 'inactive' | 'error', error?: Error): void;
  cache?(hit: boolean): void;
}

export interface IntrospectionAuthenticatorOptions {
  /** Also introspect tokens that look like JWTs (true when no JWT issuer is configured). */
  readonly acceptJwts: boolean;
  readonly now?: () => Date;
  /** How many active answers are remembered; default DEFAULT_CACHE_ENTRIES (10,000). */
  readonly cacheEntries?: number;
  readonly events?: IntrospectionEvents;
}

interface Endpoint {
  readonly options: IntrospectionEndpointOptions;
  readonly name: string;
  readonly cacheMs: number;
  config: client.Configuration | undefined;
  stop: () => void;
}

type Answer = { kind: 'active'; claims: Claims } | { kind: 'failed'; reason: ReasonCode; detail: string };


function audienceMatches(aud: unknown, audiences: readonly string[]): boolean {
  const values = typeof aud === 'string' ? [aud] : Array.isArray(aud) ? aud : [];
  return values.some((v) => typeof v === 'string' && audiences.includes(v));
}

export function createIntrospectionAuthenticator(
  endpoints: readonly IntrospectionEndpointOptions[],
  options: IntrospectionAuthenticatorOptions,
): Authenticator {
  const now = options.now ?? (() => new Date());
  const events = options.events ?? {};
  const cache = new LRUCache<string, { claims: Claims; validUntilMs: number }>({ max: options.cacheEntries ?? DEFAULT_CACHE_ENTRIES });
  const inflight = new Map<string, Promise<Answer>>();

  const states: Endpoint[] = endpoints.map((o) => {
    if ((o.endpoint === undefined) === (o.discovery !== true)) throw new TypeError(`introspection for ${o.issuer}: exactly one of endpoint, discovery`);
    const timeoutSeconds = o.timeoutSeconds ?? DEFAULT_INTROSPECTION_TIMEOUT_SECONDS;
    const auth = clientAuthentication(o.authMethod ?? DEFAULT_INTROSPECTION_AUTH_METHOD, o.clientSecret);
    const state: Endpoint = {
      options: o,
      name: o.endpoint ?? `${o.issuer} (discovery)`,
      cacheMs: (o.cacheSeconds ?? DEFAULT_INTROSPECTION_CACHE_SECONDS) * 1000,
      config: undefined,
      stop: () => undefined,
    };
    if (o.endpoint !== undefined) {
      const url = new URL(o.endpoint);
      const config = new client.Configuration({ issuer: o.issuer, introspection_endpoint: o.endpoint }, o.clientId, undefined, auth);
      config[client.customFetch] = idpFetch;
      if (url.protocol === 'http:') client.allowInsecureRequests(config);
      config.timeout = timeoutSeconds;
      state.config = config;
    } else {
      state.stop = retryUntilDone(
        async () => {
          const config = await discover(o.issuer, { clientId: o.clientId, clientSecret: o.clientSecret, authMethod: o.authMethod, timeoutSeconds });
          const endpoint = config.serverMetadata().introspection_endpoint;
          if (endpoint === undefined) throw new Error(`the discovery document of ${o.issuer} has no introspection_endpoint`);
          // Loopback issuers may use http; the endpoint they name must still be https or loopback.
          if (!isSecureOrLoopback(new URL(endpoint))) throw new Error(`the introspection_endpoint of ${o.issuer} is not https`);
          state.config = config;
          events.discovered?.(o.issuer, 'success');
        },
        (err) => events.discovered?.(o.issuer, 'error', err),
      );
    }
    return state;
  });

  async function introspect(state: Endpoint, token: string, cacheKey: string): Promise<Answer> {
    const o = state.options;
    const config = state.config;
    if (config === undefined) {
      return { kind: 'failed', reason: 'INTROSPECTION_UNAVAILABLE', detail: 'the token introspection endpoint is not known yet' };
    }
    let answer: client.IntrospectionResponse;
    try {
      answer = await client.tokenIntrospection(config, token);
    } catch (err) {
      events.introspected?.(o.issuer, 'error', err instanceof Error ? err : undefined);
      return { kind: 'failed', reason: 'INTROSPECTION_UNAVAILABLE', detail: 'the token introspection endpoint is unavailable' };
    }
    if (answer.active !== true) {
      events.introspected?.(o.issuer, 'inactive');
      return { kind: 'failed', reason: 'TOKEN_INVALID', detail: 'the token is not active' };
    }
    events.introspected?.(o.issuer, 'active');
    const currentMs = now().getTime();
    const skewMs = DEFAULT_CLOCK_SKEW_SECONDS * 1000;
    if (typeof answer.exp === 'number' && answer.exp * 1000 <= currentMs - skewMs) {
      return { kind: 'failed', reason: 'TOKEN_EXPIRED', detail: 'the token has expired' };
    }
    if (typeof answer.nbf === 'number' && answer.nbf * 1000 > currentMs + skewMs) {
      return { kind: 'failed', reason: 'TOKEN_CLAIMS', detail: 'the token is not valid yet (nbf)' };
    }
    if (o.audiences !== undefined && !audienceMatches(answer.aud, o.audiences)) {
      return { kind: 'failed', reason: 'TOKEN_AUDIENCE', detail: 'the token is not issued for this audience' };
    }
    if (answer.iss !== undefined && answer.iss !== o.issuer) {
      return { kind: 'failed', reason: 'TOKEN_ISSUER', detail: 'the token issuer is not trusted' };
    }
    const claims = copyClaims(answer);
    // The entry ends at cacheSeconds or the token's exp, whichever comes first, on the injected clock too.
    const validUntilMs = Math.min(currentMs + state.cacheMs, typeof answer.exp === 'number' ? answer.exp * 1000 : Infinity);
    const ttl = validUntilMs - currentMs;
    if (ttl > 0) cache.set(cacheKey, { claims, validUntilMs }, { ttl });
    return { kind: 'active', claims };
  }

  /** One endpoint: cache, then one shared in-flight call per token. */
  async function ask(state: Endpoint, token: string, hash: string): Promise<Answer> {
    const cacheKey = `${state.name}\0${hash}`;
    const cached = cache.get(cacheKey);
    if (cached !== undefined && cached.validUntilMs > now().getTime()) {
      events.cache?.(true);
      return { kind: 'active', claims: cached.claims };
    }
    events.cache?.(false);
    let pending = inflight.get(cacheKey);
    if (pending === undefined) {
      pending = introspect(state, token, cacheKey).finally(() => inflight.delete(cacheKey));
      inflight.set(cacheKey, pending);
    }
    return pending;
  }

  async function authenticate(token: string): Promise<AuthnResult> {
    if (!options.acceptJwts && looksLikeJwt(token)) return { kind: 'notMine' };
    const hash = tokenCacheKey(token);
    let failure: Answer | undefined;
    // An opaque token names no issuer: each endpoint is asked in turn until one knows it as active.
    for (const state of states) {
      const answer = await ask(state, token, hash);
      if (answer.kind === 'active') return { kind: 'authenticated', issuer: state.options.issuer, claims: answer.claims };
      // An outage outranks "inactive": the endpoint that could have known the token was not reachable.
      if (failure === undefined || answer.reason === 'INTROSPECTION_UNAVAILABLE') failure = answer;
    }
    if (failure === undefined || failure.kind === 'active') return { kind: 'notMine' };
    return { kind: 'failed', reason: failure.reason, detail: failure.detail };
  }

  return {
    authenticate,
    missing: () => states.filter((s) => s.config === undefined).map((s) => `introspection endpoint of ${s.options.issuer}`),
    close(): void {
      for (const s of states) s.stop();
      cache.clear();
    },
  };
}
