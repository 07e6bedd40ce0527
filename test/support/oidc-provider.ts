// eslint-disable-next-line @typescript-eslint/triple-slash-reference -- see oidc-provider.d.ts for why
/// <reference path="./oidc-provider.d.ts" />
/**
 * A REAL OpenID Provider (`oidc-provider` v9) on loopback for integration tests.
 *
 * - client_credentials grant with client_secret_basic;
 * - resource indicators (RFC 8707): every configured audience is a resource server that gets JWT access tokens
 *   (`typ: at+jwt`, RS256, key generated per provider), `aud` = the requested `resource` (default: first audience);
 * - `roles` claim from the client's configured roles, `sub` = client id (oidc-provider's own default for
 *   client_credentials JWTs), `client_id`, `iss`, `iat`, `exp`, `jti`, and `scope` when scopes were requested;
 * - in-memory storage private to each provider, so several providers can run side by side in one process
 *   (e.g. a second one as an "unknown issuer").
 *
 * oidc-provider's quick-start warnings are avoided by configuration (own adapter, own keys, no dev interactions,
 * explicit TTLs and resource-server policy); the one printed on import under Node < 22 ("Unsupported runtime")
 * is filtered out while the module loads. Secrets are never logged or put into error messages.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { calculateJwkThumbprint, exportJWK, generateKeyPair } from 'jose';
import type * as OidcProviderModule from 'oidc-provider';
import type { Adapter, Configuration, Provider as OidcProvider } from 'oidc-provider';

export interface TestProviderOptions {
  /** clients to register: id, secret, and the roles claim value to put into access tokens issued to it */
  clients?: Array<{ clientId: string; clientSecret: string; roles?: string[] }>;
  /**
   * resource servers (audiences) that tokens may be requested for; default ['http://orders-api'].
   * oidc-provider requires resource indicators to be absolute URIs (e.g. 'urn:orders-api', 'https://orders-api').
   */
  audiences?: string[];
  /** access token TTL in seconds (default 300) */
  accessTokenTtlSeconds?: number;
}

export interface TestProvider {
  /** e.g. `http://127.0.0.1:PORT` -- exactly the `iss` of issued tokens and of the discovery document. */
  issuer: string;
  /** the provider's jwks_uri */
  jwksUri: string;
  /**
   * client_credentials grant over real HTTP to the token endpoint (client_secret_basic); returns the access token
   * (a JWT). Throws when the provider refuses (the error message carries the HTTP status and the OAuth error).
   * `clientSecret` overrides the registered secret (for negative tests); it is required for unregistered clients.
   */
  getToken(clientId: string, opts?: { audience?: string; scope?: string; clientSecret?: string }): Promise<string>;
  /** Closes the listener and every open (keep-alive) connection. Idempotent. */
  close(): Promise<void>;
}

const DEFAULT_AUDIENCES = ['http://orders-api'];
const DEFAULT_CLIENTS = [{ clientId: 'orders-client', clientSecret: 'orders-client-secret', roles: ['reader'] }];

/** Scopes oidc-provider treats as OpenID Connect scopes; not meaningful for client_credentials resource tokens. */
const OIDC_SCOPES = new Set(['openid', 'offline_access']);

export async function startTestProvider(opts: TestProviderOptions = {}): Promise<TestProvider> {
  const audiences = opts.audiences ?? DEFAULT_AUDIENCES;
  const clients = opts.clients ?? DEFAULT_CLIENTS;
  const ttl = opts.accessTokenTtlSeconds ?? 300;
  if (audiences.length === 0) throw new Error('startTestProvider: at least one audience is required');
  for (const audience of audiences) {
    if (URL.parse(audience) === null || audience.includes('#')) {
      throw new Error(`startTestProvider: audience ${JSON.stringify(audience)} is not an absolute URI without fragment`);
    }
  }
  if (!Number.isSafeInteger(ttl) || ttl <= 0) throw new Error('startTestProvider: accessTokenTtlSeconds must be a positive integer');
  const defaultAudience = audiences[0] as string;
  const audienceSet = new Set(audiences);
  const rolesByClient = new Map(clients.map((c) => [c.clientId, c.roles]));
  const secretByClient = new Map(clients.map((c) => [c.clientId, c.clientSecret]));

  const { Provider, errors } = await loadOidcProvider();

  // Bind first: the issuer must contain the final port before the Provider is constructed.
  let listener: (req: IncomingMessage, res: ServerResponse) => void = (_req, res) => {
    res.writeHead(503, { 'content-type': 'text/plain' }).end('provider starting');
  };
  const server: Server = createServer((req, res) => listener(req, res));
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      server.off('error', reject);
      resolve();
    });
  });
  const { port } = server.address() as AddressInfo;
  const issuer = `http://127.0.0.1:${port}`;

  const { privateKey } = await generateKeyPair('RS256', { extractable: true });
  const jwk = await exportJWK(privateKey);
  const signingKey = { ...jwk, kid: await calculateJwkThumbprint(jwk), alg: 'RS256', use: 'sig' };

  const configuration: Configuration = {
    adapter: createAdapterFactory(),
    jwks: { keys: [signingKey] },
    clients: clients.map((c) => ({
      client_id: c.clientId,
      client_secret: c.clientSecret,
      grant_types: ['client_credentials'],
      response_types: [],
      redirect_uris: [],
      token_endpoint_auth_method: 'client_secret_basic',
    })),
    ttl: { ClientCredentials: ttl, AccessToken: ttl },
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      resourceIndicators: {
        enabled: true,
        // Called with oneOf=undefined for client_credentials without `resource`: use the first audience.
        defaultResource: (_ctx, _client, oneOf) => oneOf ?? defaultAudience,
        useGrantedResource: () => false,
        getResourceServerInfo: (ctx, resourceIndicator) => {
          if (!audienceSet.has(resourceIndicator)) {
            throw new errors.InvalidTarget('unknown resource server');
          }
          // Accept whatever (non-OIDC) scopes were requested; oidc-provider filters requested scopes against this.
          const scope = [...ctx.oidc.requestParamScopes].filter((s) => s !== '' && !OIDC_SCOPES.has(s)).join(' ');
          return {
            scope,
            audience: resourceIndicator,
            accessTokenFormat: 'jwt',
            accessTokenTTL: ttl,
            jwt: { sign: { alg: 'RS256' } },
          };
        },
      },
    },
    extraTokenClaims: (_ctx, token) => {
      const roles = token.clientId === undefined ? undefined : rolesByClient.get(token.clientId);
      return roles === undefined ? undefined : { roles: [...roles] };
    },
    // Defaults print "you SHOULD change it" notices; these are the test-appropriate answers.
    clientBasedCORS: () => false,
    renderError: (ctx, out) => {
      ctx.type = 'application/json';
      ctx.body = out;
    },
  };

  let provider: OidcProvider;
  try {
    provider = quietly(() => new Provider(issuer, configuration));
  } catch (err) {
    server.close();
    throw err;
  }
  // Keep Koa/oidc-provider from printing; remember the last internal error for getToken's message.
  provider.silent = true;
  const serverErrors: string[] = [];
  const remember = (_ctx: unknown, err: unknown): void => {
    serverErrors.push(err instanceof Error ? err.message : 'non-Error thrown');
  };
  provider.on('server_error', remember);
  provider.on('error', (err: unknown) => remember(undefined, err));

  const koaHandler = provider.callback();
  listener = (req, res) => {
    void koaHandler(req, res);
  };

  const tokenEndpoint = provider.urlFor('token');
  const jwksUri = provider.urlFor('jwks');

  let closed: Promise<void> | undefined;

  return {
    issuer,
    jwksUri,
    async getToken(clientId, tokenOpts = {}) {
      const secret = tokenOpts.clientSecret ?? secretByClient.get(clientId);
      if (secret === undefined) {
        throw new Error(`getToken: client ${JSON.stringify(clientId)} is not registered (pass opts.clientSecret to try anyway)`);
      }
      const body = new URLSearchParams({ grant_type: 'client_credentials' });
      if (tokenOpts.audience !== undefined) body.set('resource', tokenOpts.audience);
      if (tokenOpts.scope !== undefined) body.set('scope', tokenOpts.scope);
      serverErrors.length = 0;
      const res = await fetch(tokenEndpoint, {
        method: 'POST',
        headers: {
          authorization: `Basic ${Buffer.from(`${formEncode(clientId)}:${formEncode(secret)}`).toString('base64')}`,
          'content-type': 'application/x-www-form-urlencoded',
          accept: 'application/json',
        },
        body,
      });
      const text = await res.text();
      let json: unknown;
      try {
        json = JSON.parse(text);
      } catch {
        json = undefined;
      }
      if (!res.ok) {
        const err =
          isRecord(json) && typeof json.error === 'string'
            ? `${json.error}${typeof json.error_description === 'string' ? `: ${json.error_description}` : ''}`
            : text.slice(0, 200);
        const serverError = serverErrors.at(-1);
        const detail = serverError === undefined ? '' : ` (provider error: ${serverError})`;
        throw new Error(`token request for client ${JSON.stringify(clientId)} failed: HTTP ${res.status} ${err}${detail}`);
      }
      const token = isRecord(json) ? json.access_token : undefined;
      if (typeof token !== 'string' || token.split('.').length !== 3) {
        throw new Error(`token endpoint answered HTTP ${res.status} without a JWT access_token`);
      }
      return token;
    },
    close() {
      closed ??= new Promise<void>((resolve, reject) => {
        server.close((err) => (err ? reject(err) : resolve()));
        server.closeAllConnections();
      });
      return closed;
    },
  };
}

/** application/x-www-form-urlencoded, as RFC 6749 section 2.3.1 requires for client_secret_basic credentials. */
function formEncode(value: string): string {
  return encodeURIComponent(value).replace(/%20/g, '+');
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/**
 * Private in-memory storage per provider (oidc-provider's built-in MemoryAdapter works too, but using it prints
 * a "development-only in-memory adapter" warning on every construction).
 */
function createAdapterFactory(): (name: string) => Adapter {
  const store = new Map<string, { payload: Record<string, unknown>; expiresAt: number }>();
  const get = (key: string): Record<string, unknown> | undefined => {
    const entry = store.get(key);
    if (entry === undefined) return undefined;
    if (entry.expiresAt <= Date.now()) {
      store.delete(key);
      return undefined;
    }
    return entry.payload;
  };
  return (name) => {
    const key = (id: string): string => `${name}:${id}`;
    const findBy = (field: string, value: string): Record<string, unknown> | undefined => {
      for (const k of store.keys()) {
        if (!k.startsWith(`${name}:`)) continue;
        const payload = get(k);
        if (payload !== undefined && payload[field] === value) return payload;
      }
      return undefined;
    };
    return {
      upsert(id, payload, expiresIn) {
        const expiresAt = typeof expiresIn === 'number' ? Date.now() + expiresIn * 1000 : Number.POSITIVE_INFINITY;
        store.set(key(id), { payload: { ...payload }, expiresAt });
        return Promise.resolve();
      },
      find(id) {
        return Promise.resolve(get(key(id)));
      },
      findByUserCode(userCode) {
        return Promise.resolve(findBy('userCode', userCode));
      },
      findByUid(uid) {
        return Promise.resolve(findBy('uid', uid));
      },
      consume(id) {
        const payload = get(key(id));
        if (payload !== undefined) payload.consumed = Math.floor(Date.now() / 1000);
        return Promise.resolve();
      },
      destroy(id) {
        store.delete(key(id));
        return Promise.resolve();
      },
      revokeByGrantId(grantId) {
        for (const k of [...store.keys()]) {
          if (store.get(k)?.payload.grantId === grantId) store.delete(k);
        }
        return Promise.resolve();
      },
    };
  };
}

let modulePromise: Promise<typeof OidcProviderModule> | undefined;

/** Loads oidc-provider once per process, dropping the "Unsupported runtime" warning it prints on Node < 22. */
function loadOidcProvider(): Promise<typeof OidcProviderModule> {
  modulePromise ??= (async () => {
    const restore = muteProviderNotices();
    try {
      return await import('oidc-provider');
    } finally {
      restore();
    }
  })();
  return modulePromise;
}

function quietly<T>(fn: () => T): T {
  const restore = muteProviderNotices();
  try {
    return fn();
  } finally {
    restore();
  }
}

let muteDepth = 0;
let unmuted: { warn: typeof console.warn; info: typeof console.info } | undefined;

/**
 * Filters console.warn/console.info lines that oidc-provider's `attention` helper prints
 * ("oidc-provider WARNING: ..." / "oidc-provider NOTICE: ...", possibly wrapped in ANSI colours); everything
 * else passes through untouched. Re-entrant; returns the undo function.
 */
function muteProviderNotices(): () => void {
  if (muteDepth++ === 0) {
    const original = { warn: console.warn, info: console.info };
    unmuted = original;
    const isNotice = (args: unknown[]): boolean =>
      typeof args[0] === 'string' && /oidc-provider (?:WARNING|NOTICE): /.test(args[0]);
    console.warn = (...args: unknown[]) => {
      if (!isNotice(args)) original.warn(...args);
    };
    console.info = (...args: unknown[]) => {
      if (!isNotice(args)) original.info(...args);
    };
  }
  let undone = false;
  return () => {
    if (undone) return;
    undone = true;
    if (--muteDepth === 0 && unmuted !== undefined) {
      console.warn = unmuted.warn;
      console.info = unmuted.info;
      unmuted = undefined;
    }
  };
}
