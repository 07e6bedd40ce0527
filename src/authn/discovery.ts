/**
 * OpenID Connect discovery (`discovery: true`) with openid-client: reads
 * `<issuer>/.well-known/openid-configuration`, whose `issuer` must equal the configured one exactly
 * (OpenID Connect Discovery 1.0 §4.3, checked by openid-client), and yields `jwks_uri` and
 * `introspection_endpoint`. Discovery runs at startup and is retried until it succeeds; readiness waits.
 */
import * as client from 'openid-client';
import { idpFetch } from './idp-fetch.js';
import { DEFAULT_INTROSPECTION_AUTH_METHOD } from '../config/defaults.js';
import { createRemoteKeySource, KeysUnavailableError, type KeySource, type RemoteKeySourceOptions } from './jwks-source.js';

export const DEFAULT_DISCOVERY_TIMEOUT_SECONDS = 5;
/** Retry delay while discovery has not succeeded yet. */
export const DISCOVERY_RETRY_MS = 2_000;

const LOOPBACK = new Set(['127.0.0.1', 'localhost', '[::1]']);

export interface DiscoveryOptions {
  readonly clientId?: string;
  readonly clientSecret?: string;
  readonly authMethod?: 'client_secret_basic' | 'client_secret_post';
  readonly timeoutSeconds?: number;
}

/** Builds the openid-client authentication strategy for an introspecting client. */
export function clientAuthentication(method: 'client_secret_basic' | 'client_secret_post', secret: string): client.ClientAuth {
  return method === 'client_secret_post' ? client.ClientSecretPost(secret) : client.ClientSecretBasic(secret);
}

/** Plain-http IdPs are allowed on loopback only (the config schema enforces the same rule). */
function insecureAllowed(url: URL): boolean {
  return url.protocol === 'http:' && LOOPBACK.has(url.hostname);
}

/** https, or http on loopback: the rule for every URL an IdP hands us. */
export function isSecureOrLoopback(url: URL): boolean {
  return url.protocol === 'https:' || insecureAllowed(url);
}

/** One discovery request; throws when the IdP is unreachable or answers metadata for another issuer. */
export async function discover(issuer: string, options: DiscoveryOptions = {}): Promise<client.Configuration> {
  const url = new URL(issuer);
  const auth = options.clientSecret === undefined ? client.None() : clientAuthentication(options.authMethod ?? DEFAULT_INTROSPECTION_AUTH_METHOD, options.clientSecret);
  const config = await client.discovery(url, options.clientId ?? 'authz-sidecar', undefined, auth, {
    [client.customFetch]: idpFetch,
    execute: insecureAllowed(url) ? [client.allowInsecureRequests] : [],
    timeout: options.timeoutSeconds ?? DEFAULT_DISCOVERY_TIMEOUT_SECONDS,
  });
  config.timeout = options.timeoutSeconds ?? DEFAULT_DISCOVERY_TIMEOUT_SECONDS;
  config[client.customFetch] = idpFetch;
  return config;
}

/**
 * Calls `attempt` until it succeeds, every DISCOVERY_RETRY_MS; `onError` hears each failure. Returns a
 * function that stops the retries.
 */
export function retryUntilDone(attempt: () => Promise<void>, onError: (err: Error) => void): () => void {
  let timer: NodeJS.Timeout | undefined;
  let stopped = false;
  const run = (): void => {
    attempt().catch((err: unknown) => {
      onError(err instanceof Error ? err : new Error(String(err), { cause: err }));
      if (stopped) return;
      timer = setTimeout(run, DISCOVERY_RETRY_MS);
      timer.unref();
    });
  };
  run();
  return () => {
    stopped = true;
    if (timer !== undefined) clearTimeout(timer);
  };
}

/** A remote key source whose JWKS URL comes from discovery. Until discovery succeeds it has no keys. */
export function createDiscoveredKeySource(
  issuer: string,
  options: RemoteKeySourceOptions & { readonly onDiscovery?: (result: 'success' | 'error', error?: Error) => void } = {},
): KeySource {
  let inner: KeySource | undefined;
  /** Why discovery has not succeeded yet, as the cause of KeysUnavailableError. */
  let lastError: Error | undefined;
  let closed = false;
  const stop = retryUntilDone(
    async () => {
      const config = await discover(issuer, { timeoutSeconds: (options.timeoutMs ?? DEFAULT_DISCOVERY_TIMEOUT_SECONDS * 1000) / 1000 });
      const jwksUri = config.serverMetadata().jwks_uri;
      if (jwksUri === undefined) throw new Error(`the discovery document of ${issuer} has no jwks_uri`);
      const url = new URL(jwksUri);
      if (!isSecureOrLoopback(url)) throw new Error(`the jwks_uri of ${issuer} is not https`);
      options.onDiscovery?.('success');
      if (!closed) inner = createRemoteKeySource(url, options);
    },
    (err) => {
      lastError = err;
      options.onDiscovery?.('error', err);
    },
  );
  return {
    getKey: async (header, token) => {
      if (inner === undefined) {
        throw new KeysUnavailableError(`discovery of ${issuer} has not succeeded yet`, lastError === undefined ? undefined : { cause: lastError });
      }
      return inner.getKey(header, token);
    },
    ready: () => inner?.ready() ?? false,
    close(): void {
      closed = true;
      stop();
      inner?.close();
    },
  };
}
