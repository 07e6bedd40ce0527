// eslint-disable-next-line @typescript-eslint/triple-slash-reference -- see oidc-provider.d.ts for why
/// <reference path="./oidc-provider.d.ts" />
/**
 * A REAL OpenID Provider (`oidc-provider` v9) on loopback for browser sign-in tests: the authorization code flow
 * with PKCE, driven through oidc-provider's own development login and consent pages (see scripted-browser.ts).
 *
 * - dev interactions: the login page accepts any login name and any password; the login name is looked up in
 *   `users` (unknown names are accepted too, as a user with only `sub` = the login name). The account id (and so
 *   `sub`) is the user's `sub` when configured, else the login name;
 * - ID tokens carry the user's `email` (+ `email_verified`), `name`, `roles` and `groups` when the matching scopes
 *   were requested and granted (`conformIdTokenClaims: false`): `email` -> email, email_verified; `profile` ->
 *   name; `roles` (a custom scope) -> roles, groups;
 * - clients: authorization_code + refresh_token, response_types ['code'], PKCE (S256) required for every client;
 *   confidential (client_secret_basic registered; oidc-provider also accepts client_secret_post from such a
 *   client) or public (no secret: token_endpoint_auth_method none);
 * - a refresh token on every code grant (no `offline_access`, no prompt=consent needed). Such refresh tokens are
 *   bound to the provider's session unless `refreshTokensOutliveSession` (oidc-provider's `expiresWithSession`):
 *   after a logout at the provider (or endSessions()) they are refused with invalid_grant. Rotation is
 *   oidc-provider's default: refresh tokens of PUBLIC clients rotate on every use; those of confidential clients
 *   are only replaced once 70% of their lifetime has passed (until then the same value comes back). Presenting an
 *   already rotated (consumed) refresh token again revokes the whole grant (reuse detection);
 * - RP-initiated logout (end_session_endpoint, same markup as oidc-provider's default logout page) and back-channel
 *   logout (`backchannel_logout_supported`, `backchannel_logout_session_supported`); a client with a
 *   `backchannelLogoutUri` gets `sid` in its ID tokens (backchannel_logout_session_required, default true).
 *   oidc-provider's SSRF guard refuses to deliver logout tokens to loopback addresses, so this harness gives it a
 *   fetch that drops that guard for loopback targets only (anything else is refused outright);
 * - RFC 9207: the authorization response always carries `iss` (discovery says
 *   `authorization_response_iss_parameter_supported: true`);
 * - test knobs working at the node:http level or on the in-memory storage: request counting, stop/start on the
 *   same port, grant revocation, ending every provider session, a `sub` override for refreshes, and logout
 *   tokens signed with the provider's own key (or a foreign one) for negative tests.
 *
 * oidc-provider's console notices are kept quiet the same way as in ./oidc-provider.ts: by configuration (own
 * adapter, keys, cookie keys, TTLs, error/logout pages) and by filtering the notices printed while the module
 * loads and while a Provider is constructed (among them the "devInteractions is enabled" warning: enabling them
 * is the point here).
 */
import { randomBytes, randomUUID } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { importJWK, SignJWT } from 'jose';
import { closeServer, createAdapterFactory, generateSigningKey, listen, loadOidcProvider, quietly, type SigningKey, type StoredPayload } from './oidc-provider-common.js';

export interface SignInUser {
  /** the account id and `sub` claim; default: the login name */
  sub?: string;
  email?: string;
  /** `email_verified` next to `email`; default true */
  emailVerified?: boolean;
  name?: string;
  roles?: string[];
  groups?: string[];
}

export interface SignInClient {
  clientId: string;
  /** omitted: a public client (token_endpoint_auth_method none) */
  clientSecret?: string;
  redirectUris: string[];
  postLogoutRedirectUris?: string[];
  /** where oidc-provider POSTs logout tokens after a logout at the provider (loopback only) */
  backchannelLogoutUri?: string;
  /** `sid` in the client's ID tokens and logout tokens; default true (only meaningful with backchannelLogoutUri) */
  backchannelLogoutSessionRequired?: boolean;
}

export interface SignInProviderOptions {
  /** login name -> account; any other login name signs in as a user with `sub` = login name and no claims */
  users?: Record<string, SignInUser>;
  clients: SignInClient[];
  /** access token TTL in seconds (default 300) */
  accessTokenTtlSeconds?: number;
  /** ID token TTL in seconds (default: accessTokenTtlSeconds) */
  idTokenTtlSeconds?: number;
  /** refresh token TTL in seconds (default 86,400) */
  refreshTokenTtlSeconds?: number;
  /** provider session and grant TTL in seconds (default 86,400) */
  sessionTtlSeconds?: number;
  /** refresh tokens stay valid after the provider session ends (default false: they die with it) */
  refreshTokensOutliveSession?: boolean;
  /** false: no refresh tokens at all (the code grant answers without one); default true */
  refreshTokens?: boolean;
  /** false: no RP-initiated logout (discovery has no end_session_endpoint); default true */
  endSession?: boolean;
}

/** One request as seen by the node:http server; no header values. */
export interface SignInRecordedRequest {
  method: string;
  /** URL path without the query string */
  path: string;
}

/** One back-channel logout delivery oidc-provider attempted (from its backchannel.success/error events). */
export interface BackchannelDelivery {
  clientId: string;
  /** the logout token's `sub` (the session's account id) */
  sub: string;
  /** the logout token's `sid` (sent only when the client requires it) */
  sid: string | undefined;
  ok: boolean;
  /** why the delivery failed, when it did */
  error?: string;
}

export interface SignLogoutTokenOptions {
  /** true (default): the provider's current signing key; false: an unrelated RS256 key generated per provider */
  withProviderKey?: boolean;
  /**
   * protected header `kid`; default: the provider's current kid, also with the foreign key (so a verifier gets to
   * the signature check instead of failing the key lookup); null: no kid
   */
  kid?: string | null;
  /** protected header `typ`; default 'logout+jwt' (OpenID Back-Channel Logout 1.0 section 2.4); null: no typ */
  typ?: string | null;
}

export interface SignInProvider {
  /** `http://127.0.0.1:PORT`: the `iss` of everything the provider issues */
  readonly issuer: string;
  /** stays the same across stop()/start() */
  readonly port: number;
  /** `${issuer}/.well-known/openid-configuration` */
  readonly discoveryUrl: string;
  readonly authorizationEndpoint: string;
  readonly tokenEndpoint: string;
  readonly jwksUri: string;
  readonly endSessionEndpoint: string;
  /** `kid` of the key ID tokens (and signLogoutToken's default) are signed with */
  readonly currentKid: string;
  /**
   * How many requests reached the HTTP server whose path ends with `pathSuffix` (an absolute URL is reduced to its
   * path); all requests when omitted. Counted on arrival.
   */
  requests(pathSuffix?: string): number;
  /** every request since start (or the last resetRequests()), oldest first */
  readonly requestLog: readonly SignInRecordedRequest[];
  resetRequests(): void;
  /** back-channel logout deliveries, oldest first */
  readonly backchannelLogouts: readonly BackchannelDelivery[];
  /** messages of errors oidc-provider reported (server_error and the like), oldest first; for diagnostics */
  readonly serverErrors: readonly string[];
  /**
   * Revokes every grant: its authorization codes, access and refresh tokens are gone, so the next refresh_token
   * grant gets `invalid_grant`. Provider sessions stay (a new sign-in skips the login page but asks for consent
   * again). Returns how many grants were revoked.
   */
  revokeAll(): Promise<number>;
  /** revokeAll() for the grants of one account (`sub`, i.e. the user's sub or login name); returns the count */
  revokeGrantsOf(sub: string): Promise<number>;
  /** Ends every provider session (the next sign-in shows the login page); grants and tokens stay. Returns the count. */
  endSessions(): Promise<number>;
  /**
   * While set, refresh_token grants answer with an ID token (and access token) whose `sub` is this value instead
   * of the signed-in account's; the other claims stay the original user's. Code grants are not affected.
   */
  subOverride: string | undefined;
  /** A valid logout token claims set for `clientId` (iss, aud, iat, exp = iat + 120, jti, events, sub/sid as given). */
  logoutTokenClaims(claims: { clientId: string; sub?: string; sid?: string }): Record<string, unknown>;
  /**
   * Signs exactly `claims` (keys whose value is undefined are dropped, so variants can leave out a claim) as an RS256
   * JWS; see SignLogoutTokenOptions for key and header. Builds invalid logout tokens as easily as valid ones.
   */
  signLogoutToken(claims: Record<string, unknown>, options?: SignLogoutTokenOptions): Promise<string>;
  /** Outage: closes the listener and destroys every open connection; state (sessions, tokens, keys) is kept. */
  stop(): Promise<void>;
  /** Listens again on the SAME port after stop(); no-op while listening; rejects after close(). */
  start(): Promise<void>;
  /** Closes the listener and every open connection. Idempotent. */
  close(): Promise<void>;
}

const BACKCHANNEL_LOGOUT_EVENT = 'http://schemas.openid.net/event/backchannel-logout';

/* ---- the parts of oidc-provider this file touches (the shared oidc-provider.d.ts is deliberately narrow) ---- */

interface OidcAccount {
  accountId: string;
  claims(use: string, scope: string): Record<string, unknown>;
}

/** The token / code a findAccount call is made for (undefined for the session's account at the authorization endpoint). */
interface AccountSource {
  kind?: string;
}

interface OidcClient {
  clientId: string;
  grantTypeAllowed(type: string): boolean;
}

interface KoaContext {
  type: string;
  body: unknown;
  status: number;
  host: string;
  oidc?: { client?: { clientId: string; clientName?: string } };
}

interface InteractionResult {
  login?: { accountId: string };
  [key: string]: unknown;
}

interface SignInOidcProvider {
  silent: boolean;
  callback(): (req: IncomingMessage, res: ServerResponse) => Promise<void>;
  urlFor(name: string): string;
  on(event: string, listener: (...args: unknown[]) => void): unknown;
  interactionFinished(req: IncomingMessage, res: ServerResponse, result: InteractionResult, options?: object): Promise<void>;
}

type ProviderConstructor = new (issuer: string, configuration: object) => SignInOidcProvider;



export async function startSignInProvider(options: SignInProviderOptions): Promise<SignInProvider> {
  const ttl = {
    access: options.accessTokenTtlSeconds ?? 300,
    id: options.idTokenTtlSeconds ?? options.accessTokenTtlSeconds ?? 300,
    refresh: options.refreshTokenTtlSeconds ?? 86_400,
    session: options.sessionTtlSeconds ?? 86_400,
  };
  for (const [what, value] of Object.entries(ttl)) {
    if (!Number.isSafeInteger(value) || value <= 0) throw new Error(`startSignInProvider: the ${what} TTL must be a positive integer`);
  }
  const clients = options.clients;
  if (clients.length === 0) throw new Error('startSignInProvider: at least one client is required');
  const clientIds = clients.map((c) => c.clientId);
  const duplicate = clientIds.find((id, i) => clientIds.indexOf(id) !== i);
  if (duplicate !== undefined) throw new Error(`startSignInProvider: client id ${JSON.stringify(duplicate)} is registered twice`);
  for (const c of clients) {
    for (const uri of [...c.redirectUris, ...(c.postLogoutRedirectUris ?? []), ...(c.backchannelLogoutUri === undefined ? [] : [c.backchannelLogoutUri])]) {
      const url = URL.parse(uri);
      if (url === null || !isLoopbackHostname(url.hostname)) {
        throw new Error(`startSignInProvider: ${JSON.stringify(uri)} of client ${JSON.stringify(c.clientId)} is not a loopback URL`);
      }
    }
  }

  // Users by login name and by account id (= sub).
  const subByLogin = new Map<string, string>();
  const userBySub = new Map<string, SignInUser>();
  for (const [login, user] of Object.entries(options.users ?? {})) {
    const sub = user.sub ?? login;
    if (userBySub.has(sub)) throw new Error(`startSignInProvider: two users have sub ${JSON.stringify(sub)}`);
    subByLogin.set(login, sub);
    userBySub.set(sub, user);
  }

  const { Provider: ProviderClass } = await loadOidcProvider();
  const Provider = ProviderClass as unknown as ProviderConstructor;

  let requestLog: SignInRecordedRequest[] = [];
  let listener: (req: IncomingMessage, res: ServerResponse) => void = (_req, res) => {
    res.writeHead(503, { 'content-type': 'text/plain' }).end('provider starting');
  };
  const server: Server = createServer((req, res) => {
    requestLog.push({ method: req.method ?? 'GET', path: (req.url ?? '/').split('?', 1)[0] ?? '/' });
    listener(req, res);
  });
  await listen(server, 0);
  const { port } = server.address() as AddressInfo;
  const issuer = `http://127.0.0.1:${port}`;

  const store = new Map<string, { payload: StoredPayload; expiresAt: number }>();
  const signingKey = await generateSigningKey();
  let foreignKey: Promise<SigningKey> | undefined;
  let subOverride: string | undefined;
  const backchannelLogouts: BackchannelDelivery[] = [];
  const serverErrors: string[] = [];

  const configuration = {
    adapter: createAdapterFactory(store),
    jwks: { keys: [{ ...signingKey }] },
    cookies: { keys: [randomBytes(32).toString('base64url')] },
    clients: clients.map((c) => ({
      client_id: c.clientId,
      ...(c.clientSecret === undefined
        ? { token_endpoint_auth_method: 'none' }
        : { client_secret: c.clientSecret, token_endpoint_auth_method: 'client_secret_basic' }),
      application_type: 'web',
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
      redirect_uris: [...c.redirectUris],
      ...(c.postLogoutRedirectUris && { post_logout_redirect_uris: [...c.postLogoutRedirectUris] }),
      ...(c.backchannelLogoutUri !== undefined && {
        backchannel_logout_uri: c.backchannelLogoutUri,
        backchannel_logout_session_required: c.backchannelLogoutSessionRequired ?? true,
      }),
    })),
    responseTypes: ['code'],
    scopes: ['openid', 'offline_access', 'profile', 'email', 'roles'],
    claims: {
      openid: ['sub'],
      email: ['email', 'email_verified'],
      profile: ['name'],
      roles: ['roles', 'groups'],
    },
    conformIdTokenClaims: false,
    findAccount: (_ctx: unknown, id: string, source?: AccountSource): OidcAccount => {
      const user = userBySub.get(id);
      const accountId = source?.kind === 'RefreshToken' && subOverride !== undefined ? subOverride : id;
      return {
        accountId,
        claims: () => ({
          sub: accountId,
          ...(user?.email !== undefined && { email: user.email, email_verified: user.emailVerified ?? true }),
          ...(user?.name !== undefined && { name: user.name }),
          ...(user?.roles && { roles: [...user.roles] }),
          ...(user?.groups && { groups: [...user.groups] }),
        }),
      };
    },
    pkce: { required: () => true },
    issueRefreshToken: (_ctx: unknown, client: OidcClient) => options.refreshTokens !== false && client.grantTypeAllowed('refresh_token'),
    expiresWithSession: () => options.refreshTokensOutliveSession !== true,
    ttl: {
      AccessToken: ttl.access,
      IdToken: ttl.id,
      AuthorizationCode: 60,
      RefreshToken: ttl.refresh,
      Grant: Math.max(ttl.session, ttl.refresh),
      Session: ttl.session,
      Interaction: 600,
    },
    features: {
      devInteractions: { enabled: true },
      rpInitiatedLogout: { enabled: options.endSession !== false, logoutSource, postLogoutSuccessSource },
      backchannelLogout: { enabled: true },
    },
    // oidc-provider's fetch for outgoing requests (back-channel logout here). Its SSRF guard (the dispatcher it
    // passes) destroys sockets to special-use addresses such as 127.0.0.1; tests only ever talk to loopback.
    fetch: (url: string | URL, init: RequestInit & { dispatcher?: unknown }): Promise<Response> => {
      const target = new URL(url);
      if (!isLoopbackHostname(target.hostname)) {
        return Promise.reject(new Error(`the sign-in test provider only calls loopback addresses, not ${target.host}`));
      }
      const { dispatcher: _ssrfGuard, ...rest } = init;
      return fetch(target, rest);
    },
    clientBasedCORS: () => false,
    renderError: (ctx: KoaContext, out: Record<string, unknown>) => {
      ctx.type = 'html';
      const rows = Object.entries(out)
        .map(([key, value]) => `<li><strong>${htmlEscape(key)}</strong>: ${htmlEscape(String(value))}</li>`)
        .join('');
      ctx.body = `<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>oops! something went wrong</title></head><body><h1>oops! something went wrong</h1><ul>${rows}</ul></body></html>`;
    },
  };

  let provider: SignInOidcProvider;
  try {
    provider = quietly(() => new Provider(issuer, configuration));
  } catch (err) {
    server.close();
    throw err;
  }
  provider.silent = true;
  provider.on('server_error', (_ctx, err) => serverErrors.push(errorMessage(err)));
  provider.on('error', (err) => serverErrors.push(errorMessage(err)));
  provider.on('backchannel.success', (_ctx, client, accountId, sid) => {
    backchannelLogouts.push({ clientId: (client as OidcClient).clientId, sub: String(accountId), sid: sid as string | undefined, ok: true });
  });
  provider.on('backchannel.error', (_ctx, err, client, accountId, sid) => {
    backchannelLogouts.push({
      clientId: (client as OidcClient).clientId,
      sub: String(accountId),
      sid: sid as string | undefined,
      ok: false,
      error: errorMessage(err),
    });
  });
  // The dev login page makes the login name the session's account id; map it to the user's sub (the account id
  // everything else uses). An own property shadowing the prototype method the dev interactions call.
  const finishInteraction = provider.interactionFinished.bind(provider);
  provider.interactionFinished = (req, res, result, finishOptions) => {
    const login = result.login;
    const mapped = login === undefined ? result : { ...result, login: { ...login, accountId: subByLogin.get(login.accountId) ?? login.accountId } };
    return finishInteraction(req, res, mapped, finishOptions);
  };
  const koaHandler = provider.callback();
  listener = (req, res) => {
    void koaHandler(req, res);
  };

  const revokeGrants = (matches: (grant: StoredPayload) => boolean): number => {
    const grantIds = new Set<string>();
    for (const [key, entry] of store) {
      if (key.startsWith('Grant:') && matches(entry.payload)) grantIds.add(key.slice('Grant:'.length));
    }
    for (const [key, entry] of [...store]) {
      const grantId = entry.payload.grantId;
      if ((typeof grantId === 'string' && grantIds.has(grantId)) || (key.startsWith('Grant:') && grantIds.has(key.slice('Grant:'.length)))) {
        store.delete(key);
      }
    }
    return grantIds.size;
  };

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
    port,
    discoveryUrl: `${issuer}/.well-known/openid-configuration`,
    authorizationEndpoint: provider.urlFor('authorization'),
    tokenEndpoint: provider.urlFor('token'),
    jwksUri: provider.urlFor('jwks'),
    endSessionEndpoint: options.endSession === false ? '' : provider.urlFor('end_session'),
    currentKid: signingKey.kid,
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
    backchannelLogouts,
    serverErrors,
    get subOverride() {
      return subOverride;
    },
    set subOverride(value: string | undefined) {
      subOverride = value;
    },
    revokeAll() {
      return Promise.resolve(revokeGrants(() => true));
    },
    revokeGrantsOf(sub) {
      return Promise.resolve(revokeGrants((grant) => grant.accountId === sub));
    },
    endSessions() {
      let count = 0;
      for (const key of [...store.keys()]) {
        if (key.startsWith('Session:')) {
          store.delete(key);
          count += 1;
        }
      }
      return Promise.resolve(count);
    },
    logoutTokenClaims({ clientId, sub, sid }) {
      const iat = Math.floor(Date.now() / 1000);
      return {
        iss: issuer,
        aud: clientId,
        iat,
        exp: iat + 120,
        jti: randomUUID(),
        events: { [BACKCHANNEL_LOGOUT_EVENT]: {} },
        ...(sub !== undefined && { sub }),
        ...(sid !== undefined && { sid }),
      };
    },
    async signLogoutToken(claims, signOptions = {}) {
      const jwk = signOptions.withProviderKey === false ? await (foreignKey ??= generateSigningKey()) : signingKey;
      const key = await importJWK(jwk, 'RS256');
      const kid = signOptions.kid === undefined ? signingKey.kid : signOptions.kid;
      const typ = signOptions.typ === undefined ? 'logout+jwt' : signOptions.typ;
      const payload = Object.fromEntries(Object.entries(claims).filter(([, value]) => value !== undefined));
      return new SignJWT(payload)
        .setProtectedHeader({ alg: 'RS256', ...(kid !== null && { kid }), ...(typ !== null && { typ }) })
        .sign(key);
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
    close() {
      closed ??= serially(async () => {
        if (state === 'listening') await closeServer(server);
        state = 'closed';
      });
      return closed;
    },
  };
}

/* ---- pages (same markup as oidc-provider's defaults, which print a "you SHOULD change it" notice when used) ---- */

function logoutSource(ctx: KoaContext, form: string): void {
  ctx.type = 'html';
  ctx.body = `<!DOCTYPE html>
<html>
<head><meta charset="utf-8"><title>Logout Request</title></head>
<body>
  <div class="container">
    <h1>Do you want to sign-out from ${htmlEscape(ctx.host)}?</h1>
    ${form}
    <button autofocus type="submit" form="op.logoutForm" value="yes" name="logout">Yes, sign me out</button>
    <button type="submit" form="op.logoutForm">No, stay signed in</button>
  </div>
</body>
</html>`;
}

function postLogoutSuccessSource(ctx: KoaContext): void {
  const display = ctx.oidc?.client?.clientName ?? ctx.oidc?.client?.clientId;
  ctx.type = 'html';
  ctx.body = `<!DOCTYPE html>
<html>
<head><meta charset="utf-8"><title>Sign-out Success</title></head>
<body><div class="container"><h1>Sign-out Success</h1><p>Your sign-out ${display === undefined ? '' : `with ${htmlEscape(display)} `}was successful.</p></div></body>
</html>`;
}

function htmlEscape(value: string): string {
  return value.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

/* ---- helpers ---- */

function isLoopbackHostname(hostname: string): boolean {
  return hostname === 'localhost' || hostname === '[::1]' || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(hostname);
}

function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
