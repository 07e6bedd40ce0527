/**
 * A remote JWKS that keeps serving when the IdP blinks and picks up rotated keys (Istio #41588, Envoy
 * #39643). jose's createRemoteJWKSet fails every request once its cache is stale and the endpoint is down;
 * this source keeps the last good key set until a fetch brings a better one:
 *
 * - keys are fetched at start (readiness waits for them) and refreshed in the background every `refreshMs`;
 * - a token with an unknown `kid` triggers a refetch, and concurrent misses share that one fetch. After a
 *   successful fetch the next one waits `cooldownMs`, so a flood of random kids against a healthy IdP costs
 *   one fetch per cooldown. After a failed fetch the next one waits `backoffMs`, doubling per failure up to
 *   `cooldownMs`: a recovered IdP is seen within seconds (Istio #37456: minutes of failures after the IdP
 *   came back), and an outage still costs a bounded number of fetches, never one per request;
 * - a fetch that fails, times out, is too large or answers something that is not a usable JWKS is counted
 *   and ignored: the last good keys keep serving;
 * - an unknown kid while the refetch fails (or waits on backoff after a failure) is KeysUnavailableError
 *   (503), not a bad token (401): the key may be a new one we cannot fetch yet;
 * - a fetched set that no longer holds a key of the previous set is reported (`onKeysRemoved`), so tokens
 *   verified with a withdrawn key are not served from a cache of verifications;
 * - key selection itself is jose's createLocalJWKSet (kid, alg, use, key_ops, exactly one match).
 */
import {
  calculateJwkThumbprint,
  createLocalJWKSet,
  errors,
  type CompactJWSHeaderParameters,
  type FlattenedJWSInput,
  type JSONWebKeySet,
  type JWK,
  type JWTVerifyGetKey,
} from 'jose';
import { SidecarError } from '../core/errors.js';
import { idpFetch } from './idp-fetch.js';

export const DEFAULT_JWKS_TIMEOUT_MS = 5_000;
export const DEFAULT_JWKS_COOLDOWN_MS = 30_000;
/** First retry delay after a failed fetch; doubles per consecutive failure, up to the cooldown. */
export const DEFAULT_JWKS_BACKOFF_MS = 1_000;
export const DEFAULT_JWKS_REFRESH_MS = 600_000;
/** A JWKS is a few KiB; anything this large is not one. */
export const MAX_JWKS_BYTES = 512 * 1024;
/** Retry delay while no key set was ever fetched. */
export const JWKS_INITIAL_RETRY_MS = 2_000;

export type FetchResult = 'success' | 'error';

export interface RemoteKeySourceOptions {
  /** Per fetch; default DEFAULT_JWKS_TIMEOUT_MS (5 s). */
  readonly timeoutMs?: number;
  /** Least time between a successful fetch and an unknown-kid refetch; default DEFAULT_JWKS_COOLDOWN_MS (30 s). */
  readonly cooldownMs?: number;
  /**
   * Wait after a failed fetch before the next one; doubles per consecutive failure up to `cooldownMs`, and
   * starts over after a success. Default DEFAULT_JWKS_BACKOFF_MS (1 s); must be above 0.
   */
  readonly backoffMs?: number;
  /** Background refresh period; default DEFAULT_JWKS_REFRESH_MS (10 min). */
  readonly refreshMs?: number;
  /** Largest JWKS body read; default MAX_JWKS_BYTES (512 KiB). */
  readonly maxBytes?: number;
  readonly now?: () => number;
  /** Called after every fetch, for metrics and logs. */
  readonly onFetch?: (result: FetchResult, error?: Error) => void;
  /**
   * Called after a successful fetch whose set no longer holds keys the previous set held, with their
   * identities (keyIdentity), before any request waiting on that fetch goes on.
   */
  readonly onKeysRemoved?: (removed: readonly string[]) => void;
}

export interface KeySource {
  readonly getKey: JWTVerifyGetKey;
  /** True once a key set is available. */
  ready(): boolean;
  close(): void;
}

/**
 * The key a token needs cannot be had (code KEYS_UNAVAILABLE, the reason code it maps to): no key set was
 * ever fetched, or the token's key is not in the last good set and the refetch failed or waits on backoff
 * after a failure. Verification maps this to 503, never to allow. `cause` is the last fetch or discovery error.
 */
export class KeysUnavailableError extends SidecarError<'KEYS_UNAVAILABLE'> {
  constructor(message: string, options?: { cause?: unknown }) {
    super('KEYS_UNAVAILABLE', message, options);
    this.name = 'KeysUnavailableError';
  }
}

/** Reads a response body up to `maxBytes`, failing beyond it rather than buffering without bound. */
async function readLimited(response: Response, maxBytes: number): Promise<string> {
  const declared = Number(response.headers.get('content-length') ?? '0');
  if (declared > maxBytes) throw new Error(`JWKS response larger than ${maxBytes} bytes`);
  if (response.body === null) return '';
  const reader = (response.body as ReadableStream<Uint8Array>).getReader();
  const chunks: Uint8Array[] = [];
  let size = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    size += value.byteLength;
    if (size > maxBytes) {
      await reader.cancel();
      throw new Error(`JWKS response larger than ${maxBytes} bytes`);
    }
    chunks.push(value);
  }
  return Buffer.concat(chunks).toString('utf8');
}

/** A JWK that can be a public signature key: known `kty`, its public members, no private part. */
function isPublicKey(key: unknown): boolean {
  if (typeof key !== 'object' || key === null) return false;
  const k = key as Record<string, unknown>;
  if (k['d'] !== undefined) return false;
  switch (k['kty']) {
    case 'RSA':
      return typeof k['n'] === 'string' && typeof k['e'] === 'string';
    case 'EC':
      return typeof k['x'] === 'string' && typeof k['y'] === 'string';
    case 'OKP':
      return typeof k['x'] === 'string';
    default:
      return false;
  }
}

/** `value` as JSON with object members in sorted order, so member order does not change it. */
function canonicalJson(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(',')}]`;
  if (typeof value === 'object' && value !== null) {
    const members = Object.keys(value).sort();
    return `{${members.map((m) => `${JSON.stringify(m)}:${canonicalJson((value as Record<string, unknown>)[m])}`).join(',')}}`;
  }
  return JSON.stringify(value) ?? 'null';
}

/**
 * What makes two members of two key sets the same key: the RFC 7638 thumbprint (the key material, however
 * the members are ordered or what else is published with it) together with the members that decide which
 * tokens it verifies (`kid`, `alg`, `use`, `key_ops`). A member that cannot be thumbprinted (not a public
 * key jose knows) is identified by its whole content, in canonical JSON.
 */
export async function keyIdentity(jwk: unknown): Promise<string> {
  if (typeof jwk !== 'object' || jwk === null || Array.isArray(jwk)) return `json:${canonicalJson(jwk)}`;
  const k = jwk as JWK;
  try {
    const thumbprint = await calculateJwkThumbprint(k, 'sha256');
    return `jkt:${thumbprint}:${canonicalJson([k.kid ?? null, k.alg ?? null, k.use ?? null, k.key_ops ?? null])}`;
  } catch {
    return `json:${canonicalJson(jwk)}`;
  }
}

export interface FetchedJwks {
  readonly jwks: JSONWebKeySet;
  /** jose's key selection over `jwks`. */
  readonly keys: JWTVerifyGetKey;
  /** keyIdentity of every member of `jwks`. */
  readonly identities: ReadonlySet<string>;
}

/** Fetches and checks one JWKS document; throws on anything that is not a usable key set. */
export async function fetchJwks(url: URL, timeoutMs: number, maxBytes: number): Promise<FetchedJwks> {
  const response = await idpFetch(url, { signal: AbortSignal.timeout(timeoutMs), redirect: 'error', headers: { accept: 'application/json' } });
  if (response.status !== 200) {
    await response.body?.cancel();
    throw new Error(`JWKS endpoint answered HTTP ${response.status}`);
  }
  const parsed = JSON.parse(await readLimited(response, maxBytes)) as unknown;
  if (typeof parsed !== 'object' || parsed === null || !Array.isArray((parsed as { keys?: unknown }).keys)) {
    throw new Error('JWKS endpoint answered something that is not a JWKS');
  }
  const jwks = parsed as JSONWebKeySet;
  // jose accepts any array of objects; a key set with no usable public key would replace good keys with nothing.
  if (!jwks.keys.some(isPublicKey)) throw new Error('JWKS endpoint answered a key set without usable public keys');
  const keys = createLocalJWKSet(jwks);
  return { jwks, keys, identities: new Set(await Promise.all(jwks.keys.map(keyIdentity))) };
}

export function createRemoteKeySource(url: URL, options: RemoteKeySourceOptions = {}): KeySource {
  const timeoutMs = options.timeoutMs ?? DEFAULT_JWKS_TIMEOUT_MS;
  const cooldownMs = options.cooldownMs ?? DEFAULT_JWKS_COOLDOWN_MS;
  const backoffMs = options.backoffMs ?? DEFAULT_JWKS_BACKOFF_MS;
  const refreshMs = options.refreshMs ?? DEFAULT_JWKS_REFRESH_MS;
  const maxBytes = options.maxBytes ?? MAX_JWKS_BYTES;
  const now = options.now ?? Date.now;
  if (!(timeoutMs > 0 && cooldownMs >= 0 && backoffMs > 0 && refreshMs > 0 && maxBytes > 0)) throw new TypeError('invalid JWKS timing options');

  let local: JWTVerifyGetKey | undefined;
  /** keyIdentity of each key in `local`, to tell which keys a newer set dropped. */
  let identities: ReadonlySet<string> = new Set();
  /** Why the last fetch failed, as the cause of KeysUnavailableError. */
  let lastError: Error | undefined;
  /** Consecutive failed fetches since the last success: 0 means the IdP answered the last fetch. */
  let failures = 0;
  let lastSuccess = -Infinity;
  let lastAttempt = -Infinity;
  let pending: Promise<FetchResult> | undefined;
  let retryTimer: NodeJS.Timeout | undefined;
  let closed = false;

  function refresh(): Promise<FetchResult> {
    pending ??= fetchJwks(url, timeoutMs, maxBytes)
      .then(
        (fetched): FetchResult => {
          const removed = [...identities].filter((id) => !fetched.identities.has(id));
          local = fetched.keys;
          identities = fetched.identities;
          lastError = undefined;
          failures = 0;
          lastSuccess = now();
          // Invalidation first, in the same tick as the swap: a throwing metrics or log callback must not skip it.
          if (removed.length > 0) options.onKeysRemoved?.(removed);
          options.onFetch?.('success');
          return 'success';
        },
        (err: unknown): FetchResult => {
          lastError = err instanceof Error ? err : new Error(String(err), { cause: err });
          failures++;
          options.onFetch?.('error', lastError);
          return 'error';
        },
      )
      .finally(() => {
        lastAttempt = now();
        pending = undefined;
      });
    return pending;
  }

  /**
   * Whether a fetch may start now: none is in flight, and the last one is a cooldown old if it succeeded,
   * or a backoff old if it failed (backoffMs, doubled per further failure, never more than the cooldown).
   */
  function mayFetch(t: number): boolean {
    if (pending !== undefined) return false;
    const wait = failures === 0 ? cooldownMs : Math.min(backoffMs * 2 ** Math.min(failures - 1, 30), cooldownMs);
    return t - lastAttempt >= wait;
  }

  function loadUntilReady(): void {
    void refresh().then(() => {
      if (local !== undefined || closed) return;
      retryTimer = setTimeout(loadUntilReady, JWKS_INITIAL_RETRY_MS);
      retryTimer.unref();
    });
  }
  loadUntilReady();

  function unavailable(): KeysUnavailableError {
    return new KeysUnavailableError(
      `the token's key is not in the last key set fetched from ${url.href}, and fetching it again failed`,
      lastError === undefined ? undefined : { cause: lastError },
    );
  }

  async function getKey(header: CompactJWSHeaderParameters, token: FlattenedJWSInput): Promise<Awaited<ReturnType<JWTVerifyGetKey>>> {
    // Before the first key set arrives, requests share the fetch in flight but never start one: the retry
    // loop fetches, so an IdP down at startup is not hit once per request.
    if (local === undefined && pending !== undefined) await pending;
    const current = local;
    if (current === undefined) throw new KeysUnavailableError(`no keys could be fetched from ${url.href}`, lastError === undefined ? undefined : { cause: lastError });
    // Stale keys are refreshed in the background; this request is served with what we have. After a
    // failed attempt the next one waits its backoff, so an IdP outage does not get one fetch per request.
    const t = now();
    if (t - lastSuccess >= refreshMs && mayFetch(t)) void refresh();
    try {
      return await current(header, token);
    } catch (err) {
      if (!(err instanceof errors.JWKSNoMatchingKey)) throw err;
      // An unknown kid may be a rotated key: refetch, shared by concurrent misses, at most once per cooldown
      // after a success (the IdP said this set is current) and per backoff after a failure.
      if (pending === undefined && !mayFetch(now())) {
        // The last fetch failed: the key may be a new one we cannot see yet. Not a bad token: 503.
        if (failures > 0) throw unavailable();
        throw err;
      }
      if ((await refresh()) === 'error') throw unavailable();
      // The IdP answered: the set it served decides, and a kid it lacks is a bad token (401).
      const latest = local;
      if (latest === undefined || latest === current) throw err;
      return latest(header, token);
    }
  }

  return {
    getKey,
    ready: () => local !== undefined,
    close(): void {
      closed = true;
      if (retryTimer !== undefined) clearTimeout(retryTimer);
    },
  };
}
