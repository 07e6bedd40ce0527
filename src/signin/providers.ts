/**
 * The OpenID Providers of browser sign-in (`signIn.providers`), as openid-client relying-party
 * configurations: discovered at startup (retried until it succeeds; `/readyz` waits), with ID token
 * signature checks turned on (openid-client leaves them off for TLS-protected token responses by default)
 * and plain http allowed on loopback only. The provider's JWKS (jose, cached) also verifies back-channel
 * logout tokens.
 */
import { createRemoteJWKSet, customFetch, type JWTVerifyGetKey } from 'jose';
import { idpFetch } from '../authn/idp-fetch.js';
import * as client from 'openid-client';
import type { SignInProviderConfig } from '../config/schema.js';
import { isSecureOrLoopback, retryUntilDone } from '../authn/discovery.js';

/** How long one request to a provider (discovery, token, userinfo) may take. */
export const PROVIDER_TIMEOUT_SECONDS = 5;

export interface SignInProvider {
  readonly name: string;
  readonly issuer: string;
  readonly clientId: string;
  readonly scopes: readonly string[];
  readonly userinfo: boolean;
  /** The openid-client configuration; undefined until discovery succeeded. */
  configuration(): client.Configuration | undefined;
  /** The provider's keys (for logout tokens); undefined until discovery succeeded. */
  keys(): JWTVerifyGetKey | undefined;
  /** The ID token signing algorithms the provider announces (RS256 when it says none). */
  algorithms(): readonly string[];
  close(): void;
}

export interface ProviderEvents {
  readonly discoveryFailed?: (provider: string, error: Error) => void;
}

const LOOPBACK = new Set(['127.0.0.1', 'localhost', '[::1]']);

export function createSignInProvider(config: SignInProviderConfig, clientSecret: string | undefined, events: ProviderEvents = {}): SignInProvider {
  let configuration: client.Configuration | undefined;
  let keys: JWTVerifyGetKey | undefined;
  let algorithms: readonly string[] = ['RS256'];
  const issuerUrl = new URL(config.issuer);
  const insecure = issuerUrl.protocol === 'http:' && LOOPBACK.has(issuerUrl.hostname);

  const stop = retryUntilDone(
    async () => {
      const auth = clientSecret === undefined ? client.None() : client.ClientSecretBasic(clientSecret);
      const discovered = await client.discovery(issuerUrl, config.clientId, undefined, auth, {
        [client.customFetch]: idpFetch,
        execute: insecure ? [client.allowInsecureRequests] : [],
        timeout: PROVIDER_TIMEOUT_SECONDS,
      });
      discovered.timeout = PROVIDER_TIMEOUT_SECONDS;
      discovered[client.customFetch] = idpFetch;
      const metadata = discovered.serverMetadata();
      for (const [what, uri] of [
        ['authorization_endpoint', metadata.authorization_endpoint],
        ['token_endpoint', metadata.token_endpoint],
        ['jwks_uri', metadata.jwks_uri],
      ] as const) {
        if (uri === undefined) throw new Error(`the discovery document of ${config.issuer} has no ${what}`);
        if (!isSecureOrLoopback(new URL(uri))) throw new Error(`the ${what} of ${config.issuer} is not https`);
      }
      // The ID token's signature is checked too, not only the TLS of the token response.
      client.enableNonRepudiationChecks(discovered);
      const supported = (metadata.id_token_signing_alg_values_supported ?? []).filter((a) => a !== 'none');
      if (supported.length > 0) algorithms = supported;
      keys = createRemoteJWKSet(new URL(metadata.jwks_uri as string), { timeoutDuration: PROVIDER_TIMEOUT_SECONDS * 1000, [customFetch]: idpFetch });
      configuration = discovered;
    },
    (err) => events.discoveryFailed?.(config.name, err),
  );

  return {
    name: config.name,
    issuer: config.issuer,
    clientId: config.clientId,
    scopes: config.scopes,
    userinfo: config.userinfo,
    configuration: () => configuration,
    keys: () => keys,
    algorithms: () => algorithms,
    close: stop,
  };
}
