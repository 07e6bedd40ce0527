// eslint-disable-next-line @typescript-eslint/triple-slash-reference -- see oidc-provider.d.ts for why
/// <reference path="./oidc-provider.d.ts" />
/**
 * A REAL OpenID Provider (`oidc-provider` v9) on loopback for integration tests.
 *
 * - client_credentials grant with client_secret_basic;
 * - resource indicators (RFC 8707): every configured audience is a resource server; it gets JWT access tokens
 *   (`typ: at+jwt`, RS256, key generated per provider) unless listed in `opaqueAudiences`, then opaque ones
 *   (random strings, only meaningful through introspection); `aud` = the requested `resource` (default: first
 *   audience);
 * - `roles` claim from the client's configured roles, `sub` = client id (oidc-provider's own default for
 *   client_credentials JWTs; added as an extra claim for opaque tokens so introspection answers carry it too),
 *   `client_id`, `iss`, `iat`, `exp`, `jti`, and `scope` when scopes were requested;
 * - RFC 7662 introspection at `introspectionEndpoint` (listed in discovery), answering any authenticated client
 *   (`introspectionClients` registers dedicated resource-server clients that cannot obtain tokens);
 * - test knobs working at the node:http level: per-path request counting (and `onRequest`, with the query),
 *   key rotation and removal, stop/start on the same port, hanging, a JWKS body override and an introspection
 *   endpoint that answers 503; `signJwt` signs access tokens of any claims with a published key;
 * - in-memory storage private to each provider, so several providers can run side by side in one process
 *   (e.g. a second one as an "unknown issuer").
 *
 * oidc-provider's quick-start warnings are avoided by configuration (own adapter, own keys, no dev interactions,
 * explicit TTLs, resource-server and introspection policy); the one printed on import under Node < 22
 * ("Unsupported runtime") is filtered out while the module loads. Secrets are never logged or put into error
 * messages, and the request log keeps no header values.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { importJWK, SignJWT } from 'jose';
import type { Configuration, Provider as OidcProvider } from 'oidc-provider';
import { closeServer, createAdapterFactory, generateSigningKey, listen, loadOidcProvider, quietly, type SigningKey } from './oidc-provider-common.js';

export interface TestProviderOptions {
  /** clients to register: id, secret, and the roles claim value to put into access tokens issued to it */
  clients?: Array<{ clientId: string; clientSecret: string; roles?: string[] }>;
  /**
   * resource servers (audiences) that tokens may be requested for; default ['http://orders-api'] (or, when
   * only `opaqueAudiences` is given, just those). oidc-provider requires resource indicators to be absolute URIs
   * (e.g. 'urn:orders-api', 'https://orders-api').
   */
  audiences?: string[];
  /**
   * resource servers whose access tokens are opaque (`accessTokenFormat: 'opaque'`) instead of JWTs; added to
   * `audiences` when not already listed there. Such tokens are checked through the introspection endpoint.
   */
  opaqueAudiences?: string[];
  /**
   * confidential clients (typically the resource servers / the sidecar) that may call the introspection endpoint
   * but cannot obtain tokens. `authMethod` becomes their `token_endpoint_auth_method`, which oidc-provider also
   * applies at the introspection endpoint. NOTE: oidc-provider v9 accepts client_secret_basic and
   * client_secret_post interchangeably for a client registered with either, so the registered method does not
   * make the other one fail; use `requestLog[i].authScheme` to see which one a caller actually used.
   * Every token client (`clients`) can introspect as well (client_secret_basic registered).
   */
  introspectionClients?: IntrospectionClient[];
  /** access token TTL in seconds (default 300) */
  accessTokenTtlSeconds?: number;
  /** Called for every request on arrival (before hang / override), with its query string: who fetched what, when. */
  onRequest?: (request: ArrivedRequest) => void;
}

/** A request as `onRequest` sees it: no header values. */
export interface ArrivedRequest {
  readonly method: string;
  readonly path: string;
  /** the raw query string without `?` ('' when none) */
  readonly query: string;
  /** Date.now() on arrival */
  readonly at: number;
}

export interface IntrospectionClient {
  clientId: string;
  clientSecret: string;
  authMethod: 'client_secret_basic' | 'client_secret_post';
}

/** One request as seen by the node:http server (before hang / override / oidc-provider); no header values. */
export interface RecordedRequest {
  method: string;
  /** URL path without the query string, e.g. '/jwks' */
  path: string;
  /** lower-cased scheme of the Authorization header ('basic', 'bearer', ...) or undefined when absent */
  authScheme: string | undefined;
}

export interface TestProvider {
  /** e.g. `http://127.0.0.1:PORT` -- exactly the `iss` of issued tokens and of the discovery document. */
  issuer: string;
  /** the provider's jwks_uri */
  jwksUri: string;
  /** `${issuer}/.well-known/openid-configuration` */
  readonly discoveryUrl: string;
  /** the provider's token_endpoint */
  readonly tokenEndpoint: string;
  /** the provider's introspection_endpoint (RFC 7662), also listed in discovery */
  readonly introspectionEndpoint: string;
  /** the loopback port; stays the same across stop()/start() */
  readonly port: number;
  /** `kid` of the key new JWT access tokens are signed with (changes on rotateKeys()) */
  readonly currentKid: string;
  /**
   * client_credentials grant over real HTTP to the token endpoint (client_secret_basic); returns the access token
   * (a JWT, or an opaque string for an audience in `opaqueAudiences`). Throws when the provider refuses (the error
   * message carries the HTTP status and the OAuth error). `clientSecret` overrides the registered secret (for
   * negative tests); it is required for unregistered clients. Subject to `hang` and stop() like any caller.
   */
  getToken(clientId: string, opts?: { audience?: string; scope?: string; clientSecret?: string }): Promise<string>;
  /**
   * How many requests reached the HTTP server whose path ends with `pathSuffix` (e.g. '/jwks',
   * '/token/introspection'; an absolute URL such as `jwksUri` is reduced to its path); all requests when omitted.
   * Counted on arrival, so hung requests and JWKS-override answers count too.
   */
  requests(pathSuffix?: string): number;
  /** every request since start (or the last resetRequests()), oldest first */
  readonly requestLog: readonly RecordedRequest[];
  /** clears the request log / counters */
  resetRequests(): void;
  /**
   * Generates a new RS256 key with a new `kid`; tokens issued afterwards are signed with it and the JWKS serves it
   * first. `keepOld` (default true) keeps serving the previous keys too, as real IdPs do during a rollover.
   * Implemented by swapping in a new oidc-provider instance (same issuer, clients and storage) behind the same
   * server, so opaque tokens issued before still introspect.
   */
  rotateKeys(opts?: { keepOld?: boolean }): Promise<void>;
  /** Stops publishing the key `kid` (a key withdrawn); the key that signs must stay. Resolves once the JWKS no longer serves it. */
  removeKey(kid: string): Promise<void>;
  /** `kid`s the JWKS serves now, signing key first. */
  readonly publishedKids: readonly string[];
  /**
   * Signs `claims` exactly as given (add `iss` yourself) as an RS256 JWT with the published key `kid` (default: the
   * current one), header `typ: at+jwt`: access tokens of any subject, roles and lifetime, without a token request.
   */
  signJwt(claims: Record<string, unknown>, kid?: string): Promise<string>;
  /** Outage: closes the listener and destroys every open connection; state (tokens, keys, counters) is kept. */
  stop(): Promise<void>;
  /** Listens again on the SAME port after stop(); no-op while listening; rejects after close(). */
  start(): Promise<void>;
  /**
   * While true, every new request is accepted but never answered (its connection is only destroyed by stop() or
   * close()). Use with a client-side timeout, e.g. `fetch(url, { signal: AbortSignal.timeout(300) })`.
   */
  hang: boolean;
  /** While set, requests to the JWKS path answer 200 `application/json` with exactly this body. */
  jwksOverride: string | undefined;
  /** While true, the introspection endpoint answers 503 (the rest of the provider keeps working). */
  introspectionDown: boolean;
  /** Closes the listener and every open (keep-alive) connection. Idempotent. */
  close(): Promise<void>;
}

const DEFAULT_AUDIENCES = ['http://orders-api'];
const DEFAULT_CLIENTS = [{ clientId: 'orders-client', clientSecret: 'orders-client-secret', roles: ['reader'] }];

/** Scopes oidc-provider treats as OpenID Connect scopes; not meaningful for client_credentials resource tokens. */
const OIDC_SCOPES = new Set(['openid', 'offline_access']);


export async function startTestProvider(opts: TestProviderOptions = {}): Promise<TestProvider> {
  const opaqueAudiences = opts.opaqueAudiences ?? [];
  const audiences = [...(opts.audiences ?? (opaqueAudiences.length > 0 ? [] : DEFAULT_AUDIENCES))];
  for (const audience of opaqueAudiences) if (!audiences.includes(audience)) audiences.push(audience);
  const clients = opts.clients ?? DEFAULT_CLIENTS;
  const introspectionClients = opts.introspectionClients ?? [];
  const ttl = opts.accessTokenTtlSeconds ?? 300;
  if (audiences.length === 0) throw new Error('startTestProvider: at least one audience is required');
  for (const audience of audiences) {
    if (URL.parse(audience) === null || audience.includes('#')) {
      throw new Error(`startTestProvider: audience ${JSON.stringify(audience)} is not an absolute URI without fragment`);
    }
  }
  if (!Number.isSafeInteger(ttl) || ttl <= 0) throw new Error('startTestProvider: accessTokenTtlSeconds must be a positive integer');
  const clientIds = [...clients, ...introspectionClients].map((c) => c.clientId);
  const duplicate = clientIds.find((id, i) => clientIds.indexOf(id) !== i);
  if (duplicate !== undefined) throw new Error(`startTestProvider: client id ${JSON.stringify(duplicate)} is registered twice`);
  for (const c of introspectionClients) {
    if (c.authMethod !== 'client_secret_basic' && c.authMethod !== 'client_secret_post') {
      throw new Error(`startTestProvider: unsupported authMethod for introspection client ${JSON.stringify(c.clientId)}`);
    }
  }
  const defaultAudience = audiences[0] as string;
  const audienceSet = new Set(audiences);
  const opaqueSet = new Set(opaqueAudiences);
  const rolesByClient = new Map(clients.map((c) => [c.clientId, c.roles]));
  const secretByClient = new Map(clients.map((c) => [c.clientId, c.clientSecret]));

  const { Provider, errors } = await loadOidcProvider();

  // Request handling, outermost first: record -> hang -> JWKS override -> the current oidc-provider instance.
  let requestLog: RecordedRequest[] = [];
  let hang = false;
  let jwksOverride: string | undefined;
  let jwksPath = '/jwks';
  let introspectionDown = false;
  let introspectionPath = '/token/introspection';
  // Bind first: the issuer must contain the final port before the Provider is constructed.
  let listener: (req: IncomingMessage, res: ServerResponse) => void = (_req, res) => {
    res.writeHead(503, { 'content-type': 'text/plain' }).end('provider starting');
  };
  const server: Server = createServer((req, res) => {
    const path = (req.url ?? '/').split('?', 1)[0] ?? '/';
    if (opts.onRequest !== undefined) {
      const url = req.url ?? '/';
      const q = url.indexOf('?');
      opts.onRequest({ method: req.method ?? 'GET', path, query: q < 0 ? '' : url.slice(q + 1), at: Date.now() });
    }
    const authorization = req.headers.authorization;
    requestLog.push({
      method: req.method ?? 'GET',
      path,
      authScheme: authorization === undefined ? undefined : (authorization.split(' ', 1)[0] ?? '').toLowerCase(),
    });
    if (hang) return; // accepted, never answered; stop()/close() destroy the socket
    if (introspectionDown && path === introspectionPath) {
      res.writeHead(503, { 'content-type': 'text/plain' }).end('introspection unavailable');
      return;
    }
    if (jwksOverride !== undefined && path === jwksPath) {
      res.writeHead(200, { 'content-type': 'application/json', 'cache-control': 'no-store' }).end(jwksOverride);
      return;
    }
    listener(req, res);
  });
  await listen(server, 0);
  const { port } = server.address() as AddressInfo;
  const issuer = `http://127.0.0.1:${port}`;

  const adapter = createAdapterFactory(new Map()); // shared by every provider instance (rotation keeps the tokens)
  let keys: SigningKey[] = [await generateSigningKey()];
  const importedKeys = new Map<string, Awaited<ReturnType<typeof importJWK>>>();

  const buildConfiguration = (signingKid: string): Configuration => ({
    adapter,
    jwks: { keys: keys.map((k) => ({ ...k })) },
    clients: [
      ...clients.map((c) => ({
        client_id: c.clientId,
        client_secret: c.clientSecret,
        grant_types: ['client_credentials'],
        response_types: [],
        redirect_uris: [],
        token_endpoint_auth_method: 'client_secret_basic' as const,
      })),
      ...introspectionClients.map((c) => ({
        client_id: c.clientId,
        client_secret: c.clientSecret,
        grant_types: [],
        response_types: [],
        redirect_uris: [],
        token_endpoint_auth_method: c.authMethod,
      })),
    ],
    ttl: { ClientCredentials: ttl, AccessToken: ttl },
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      // Any authenticated (confidential) client may introspect any token; the default policy prints a notice.
      introspection: { enabled: true, allowedPolicy: () => true },
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
          return opaqueSet.has(resourceIndicator)
            ? { scope, audience: resourceIndicator, accessTokenFormat: 'opaque', accessTokenTTL: ttl }
            : {
                scope,
                audience: resourceIndicator,
                accessTokenFormat: 'jwt',
                accessTokenTTL: ttl,
                jwt: { sign: { alg: 'RS256', kid: signingKid } },
              };
        },
      },
    },
    extraTokenClaims: (_ctx, token) => {
      if (token.clientId === undefined) return undefined;
      const roles = rolesByClient.get(token.clientId);
      // JWTs get `sub` = client_id from oidc-provider itself; introspection of opaque tokens only reports
      // `sub` for tokens with an account, so put it into the stored extra claims (introspection spreads them).
      const sub = token.format === 'opaque' ? { sub: token.clientId } : undefined;
      return roles === undefined && sub === undefined ? undefined : { ...sub, ...(roles && { roles: [...roles] }) };
    },
    // Defaults print "you SHOULD change it" notices; these are the test-appropriate answers.
    clientBasedCORS: () => false,
    renderError: (ctx, out) => {
      ctx.type = 'application/json';
      ctx.body = out;
    },
  });

  // Remember the last internal error for getToken's message (never printed).
  const serverErrors: string[] = [];
  const remember = (_ctx: unknown, err: unknown): void => {
    serverErrors.push(err instanceof Error ? err.message : 'non-Error thrown');
  };

  /** Constructs a provider for the current `keys` (first one signs) and routes the server to it. */
  const activate = (): OidcProvider => {
    const provider = quietly(() => new Provider(issuer, buildConfiguration((keys[0] as SigningKey).kid)));
    provider.silent = true; // keep Koa/oidc-provider from printing
    provider.on('server_error', remember);
    provider.on('error', (err: unknown) => remember(undefined, err));
    const koaHandler = provider.callback();
    listener = (req, res) => {
      void koaHandler(req, res);
    };
    return provider;
  };

  let provider: OidcProvider;
  try {
    provider = activate();
  } catch (err) {
    server.close();
    throw err;
  }

  const tokenEndpoint = provider.urlFor('token');
  const jwksUri = provider.urlFor('jwks');
  const introspectionEndpoint = provider.urlFor('introspection');
  jwksPath = new URL(jwksUri).pathname;
  introspectionPath = new URL(introspectionEndpoint).pathname;

  // Lifecycle operations run one at a time.
  let state: 'listening' | 'stopped' | 'closed' = 'listening';
  let queue: Promise<unknown> = Promise.resolve();
  const serially = <T>(fn: () => Promise<T>): Promise<T> => {
    const result = queue.then(fn);
    queue = result.catch(() => undefined);
    return result;
  };
  let closed: Promise<void> | undefined;

  return {
    issuer,
    jwksUri,
    discoveryUrl: `${issuer}/.well-known/openid-configuration`,
    tokenEndpoint,
    introspectionEndpoint,
    port,
    get currentKid() {
      return (keys[0] as SigningKey).kid;
    },
    get hang() {
      return hang;
    },
    set hang(value: boolean) {
      hang = value;
    },
    get introspectionDown() {
      return introspectionDown;
    },
    set introspectionDown(value: boolean) {
      introspectionDown = value;
    },
    get jwksOverride() {
      return jwksOverride;
    },
    set jwksOverride(value: string | undefined) {
      jwksOverride = value;
    },
    get requestLog() {
      return requestLog;
    },
    requests(pathSuffix) {
      if (pathSuffix === undefined) return requestLog.length;
      const suffix = URL.parse(pathSuffix)?.pathname ?? pathSuffix;
      return requestLog.filter((r) => r.path.endsWith(suffix)).length;
    },
    resetRequests() {
      requestLog = [];
    },
    rotateKeys(rotateOpts = {}) {
      return serially(async () => {
        if (state === 'closed') throw new Error('rotateKeys: the provider is closed');
        const fresh = await generateSigningKey();
        const previous = keys;
        keys = rotateOpts.keepOld === false ? [fresh] : [fresh, ...previous];
        try {
          provider = activate();
        } catch (err) {
          keys = previous;
          throw err;
        }
      });
    },
    removeKey(kid) {
      return serially(async () => {
        if (state === 'closed') throw new Error('removeKey: the provider is closed');
        if ((keys[0] as SigningKey).kid === kid) throw new Error('removeKey: the signing key cannot be removed');
        const previous = keys;
        keys = keys.filter((k) => k.kid !== kid);
        try {
          provider = activate();
        } catch (err) {
          keys = previous;
          throw err;
        }
      });
    },
    get publishedKids() {
      return keys.map((k) => k.kid);
    },
    async signJwt(claims, kid) {
      const key = kid === undefined ? keys[0] : keys.find((k) => k.kid === kid);
      if (key === undefined) throw new Error(`signJwt: no published key ${kid ?? ''}`);
      let privateKey = importedKeys.get(key.kid);
      if (privateKey === undefined) {
        privateKey = await importJWK(key, 'RS256');
        importedKeys.set(key.kid, privateKey);
      }
      return new SignJWT(claims).setProtectedHeader({ alg: 'RS256', typ: 'at+jwt', kid: key.kid }).sign(privateKey);
    },
    stop() {
      return serially(async () => {
        if (state !== 'listening') return;
        await closeServer(server);
        state = 'stopped';
      });
    },
    start() {
      return serially(async () => {
        if (state === 'closed') throw new Error('start: the provider is closed');
        if (state === 'listening') return;
        await listen(server, port);
        state = 'listening';
      });
    },
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
      const opaque = opaqueSet.has(tokenOpts.audience ?? defaultAudience);
      if (typeof token !== 'string' || token === '' || (!opaque && token.split('.').length !== 3)) {
        throw new Error(`token endpoint answered HTTP ${res.status} without a${opaque ? 'n opaque' : ' JWT'} access_token`);
      }
      return token;
    },
    close() {
      closed ??= serially(async () => {
        if (state === 'listening') await closeServer(server);
        state = 'closed';
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
