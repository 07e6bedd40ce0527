/**
 * Browser sign-in (DESIGN.md §7): the routes under `signIn.prefix` and the session as the credential of a
 * request without a bearer token. Built on openid-client (authorization code flow with PKCE S256, state and
 * nonce, ID token signature checks, refresh, end_session) and jose (sealed cookies, logout tokens). The
 * core sees only the BrowserSessions interface; a session yields claims that go through the same identity
 * mapping, policy and identity headers as a token's.
 *
 * Fail closed throughout: a cookie that cannot be opened, is expired or revoked is no session (and is
 * cleared); a callback that fails any check starts no session (400); the provider down while a session's
 * access token has expired is a 503, never an allow.
 */
import { trace, TraceFlags, type Context } from '@opentelemetry/api';
import * as client from 'openid-client';
import { decodeJwt } from 'jose';
import type { SignInConfig } from '../config/schema.js';
import type { AccessRequest } from '../core/access-request.js';
import { DEFAULT_REALM } from '../core/decide.js';
import { problemAnswer, type AnswerHeaders, type ClientAnswer } from '../core/decision.js';
import type { ReasonCode } from '../core/errors.js';
import { claimAt, copyClaims, type Claims, type ClaimValue } from '../core/identity.js';
import type { BrowserSessions, IdentityMapper, RouteAnswer, SessionResult } from '../core/stages.js';
import { createCookieCodec } from './cookie-codec.js';
import {
  createCookieSessionStore,
  createStateCookies,
  isOwnCookie,
  MAX_STORED_RETURN_URL,
  parseCookies,
  randomId,
  type CookieSettings,
  type RequestCookies,
  type SessionData,
} from './cookie-store.js';
import { createLogoutTokenVerifier } from './logout-token.js';
import { csrfRefusal, redirectsToSignIn } from './navigation.js';
import { createSignInProvider, type SignInProvider } from './providers.js';
import { checkReturnUrl, type ReturnUrlPolicy } from './return-url.js';
import { createRevocations } from './revocations.js';
import { createCookieBackend, StoreUnavailableError, type Refreshed, type SessionBackend } from './session-backend.js';

/** The largest back-channel logout request body read (a logout token is 1-2 KB). */
export const LOGOUT_BODY_LIMIT = 8 * 1024;
/** Back-channel logout bodies read at once; more are refused (503) rather than buffered. */
export const MAX_LOGOUT_READS = 16;
/** Protocol claims of the ID token not kept in the session (they describe the token, not the person). */
const DROPPED_CLAIMS = new Set(['nonce', 'at_hash', 'c_hash', 's_hash', 'exp', 'iat', 'nbf', 'aud', 'azp', 'auth_time', 'jti']);

export interface SignInEvents {
  readonly signIn?: (provider: string, result: 'success' | 'failure') => void;
  readonly refresh?: (provider: string, result: 'success' | 'failure' | 'ended') => void;
  readonly logout?: (kind: 'user' | 'backchannel') => void;
  readonly providerFailed?: (provider: string, what: string, error: Error) => void;
  /** More revocations than memory holds: every session started until now is refused (all sign in again). */
  readonly revocationsOverflow?: () => void;
  /** The redis store connected (true) or lost (false, with the error). */
  readonly storeState?: (up: boolean, error?: Error) => void;
}

export interface BrowserSessionsOptions {
  readonly config: SignInConfig;
  /** `cookie.secretFiles` contents, in order, with the key path of each for errors. */
  readonly secrets: ReadonlyArray<{ readonly bytes: Uint8Array; readonly what: string }>;
  /** `providers[].clientSecretFile` contents by provider name (absent for public clients). */
  readonly clientSecrets: ReadonlyMap<string, string>;
  /** The identity mapping, for the userinfo route. */
  readonly identity: IdentityMapper;
  /** `headers.claims` (header name -> claim path): what userinfo shows as `claims`. */
  readonly claimHeaders: Readonly<Record<string, string>>;
  readonly events?: SignInEvents | undefined;
  /** The clock, in milliseconds since the epoch (tests move it). */
  readonly now?: (() => number) | undefined;
  /** The session backend (the redis store); default the cookie store. */
  readonly backend?: ((settings: CookieSettings) => SessionBackend) | undefined;
}


const NO_HEADERS: AnswerHeaders = Object.freeze({});
/**
 * On every answer of a sign-in route: never cached, never sniffed into another type, and no Referer from
 * its pages (the callback URL holds the code and state).
 */
const ROUTE_HEADERS = Object.freeze({ 'cache-control': 'no-store', 'x-content-type-options': 'nosniff', 'referrer-policy': 'no-referrer' });
const NONE: SessionResult = Object.freeze({ kind: 'none', headers: NO_HEADERS });

function html(text: string): string {
  return text.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

/** A provider error or message as a client may read it: printable ASCII, bounded. */
function safeText(value: unknown): string {
  return String(value).replace(/[^\x20-\x7e]/g, '').slice(0, 160);
}

/**
 * Whether an openid-client failure is the provider being unreachable or broken (a network error, a
 * timeout, a 5xx or 429, an answer that is not OAuth at all), rather than a refusal (an OAuth error in a
 * 4xx, a failed check of its answer). A refusal ends a refresh; an unreachable provider does not.
 */
function isUnreachable(err: unknown): boolean {
  if (err instanceof client.ResponseBodyError) return err.status >= 500 || err.status === 429;
  if (err instanceof client.AuthorizationResponseError) return false;
  // A 401 with a challenge (invalid_client): the provider refuses us, it is not down.
  if (err instanceof client.WWWAuthenticateChallengeError) return err.status >= 500;
  if (err instanceof client.ClientError) {
    switch (err.code) {
      case 'OAUTH_TIMEOUT':
      case 'OAUTH_ABORT':
      case undefined:
        return true;
      case 'OAUTH_RESPONSE_IS_NOT_CONFORM':
      case 'OAUTH_RESPONSE_IS_NOT_JSON': {
        const status = err.cause instanceof Response ? err.cause.status : 0;
        return !(status >= 400 && status < 500 && status !== 408 && status !== 429);
      }
      default:
        return false;
    }
  }
  // fetch() failures (TypeError: fetch failed) and anything else thrown on the way.
  return true;
}

export function createBrowserSessions(options: BrowserSessionsOptions): BrowserSessions {
  const { config } = options;
  const nowMs = options.now ?? Date.now;
  const now = (): number => Math.floor(nowMs() / 1000);
  const events = options.events ?? {};
  const prefix = config.prefix;
  const callbackUrl = new URL(config.callbackUrl);
  const settings: CookieSettings = { name: config.cookie.name, secure: config.cookie.secure, sameSite: config.cookie.sameSite, domain: config.cookie.domain, prefix };
  const codec = createCookieCodec(options.secrets);
  const states = createStateCookies(settings, codec);
  const backend: SessionBackend =
    options.backend?.(settings) ??
    createCookieBackend(
      createCookieSessionStore(settings, codec, copyClaims),
      createRevocations(config.session.maxAgeSeconds, { now: () => nowMs(), onOverflow: () => events.revocationsOverflow?.() }),
    );
  const logoutTokens = createLogoutTokenVerifier({ now: () => new Date(now() * 1000) });
  const returnPolicy: ReturnUrlPolicy = { callbackHost: callbackUrl.host.toLowerCase(), allowedHosts: config.allowedRedirectHosts, allowHttp: !config.cookie.secure };
  const providers = new Map<string, SignInProvider>(
    config.providers.map((p) => [
      p.name,
      createSignInProvider(p, options.clientSecrets.get(p.name), { discoveryFailed: (name, err) => events.providerFailed?.(name, 'discovery', err) }),
    ]),
  );

  // ---- answers ----------------------------------------------------------------------------------------

  function answer(reason: ReasonCode, detail: string, status: number, headers: AnswerHeaders, body = ''): RouteAnswer {
    return { reason, detail, answer: { status, headers: { ...ROUTE_HEADERS, ...headers }, body } };
  }
  function redirect(location: string, cookies: readonly string[], detail: string): RouteAnswer {
    return answer('SIGNIN_REDIRECT', detail, 302, cookies.length === 0 ? { location } : { location, 'set-cookie': [...cookies] });
  }
  function refuse(reason: ReasonCode, detail: string, requestId: string, cookies: readonly string[] = []): RouteAnswer {
    const a = problemAnswer(reason, detail, requestId, { ...ROUTE_HEADERS, ...(cookies.length === 0 ? {} : { 'set-cookie': [...cookies] }) });
    return { reason, detail, answer: a };
  }
  function page(body: string, contentType: string, detail: string, cookies: readonly string[] = []): RouteAnswer {
    return answer('SIGNIN_PAGE', detail, 200, { 'content-type': contentType, ...(cookies.length === 0 ? {} : { 'set-cookie': [...cookies] }) }, body);
  }

  /** One value of a query parameter: undefined when absent, null when repeated or not decodable. */
  function param(query: string | undefined, name: string): string | undefined | null {
    let params: URLSearchParams;
    try {
      params = new URLSearchParams(query ?? '');
    } catch {
      return null;
    }
    const all = params.getAll(name);
    if (all.length === 0) return undefined;
    return all.length === 1 ? all[0] : null;
  }

  // ---- sessions -----------------------------------------------------------------------------------------

  function claimsOf(idClaims: Record<string, unknown>, extra: Record<string, unknown> | undefined, scope: string | undefined): Claims {
    const merged: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(idClaims)) if (!DROPPED_CLAIMS.has(k)) merged[k] = v;
    if (extra !== undefined) for (const [k, v] of Object.entries(extra)) if (k !== 'sub' && k !== 'iss') merged[k] = v;
    if (merged['scope'] === undefined && scope !== undefined) merged['scope'] = scope;
    return copyClaims(merged);
  }

  async function refresh(session: SessionData, provider: SignInProvider): Promise<Refreshed> {
    const configuration = provider.configuration();
    if (configuration === undefined || session.refreshToken === undefined) return { kind: 'unreachable' };
    try {
      const tokens = await client.refreshTokenGrant(configuration, session.refreshToken);
      const idClaims = tokens.claims();
      if (idClaims !== undefined && (idClaims.iss !== session.issuer || idClaims.sub !== session.subject)) {
        events.refresh?.(provider.name, 'ended');
        return { kind: 'ended', why: 'the refreshed ID token names another issuer or subject' };
      }
      const expiresIn = tokens.expiresIn();
      // A refreshed ID token replaces the claims (a role taken away at the provider goes with the next
      // refresh), with userinfo fetched again when configured; without one they stay.
      let claims = session.claims;
      if (idClaims !== undefined) {
        let extra: Record<string, unknown> | undefined;
        if (provider.userinfo) extra = await client.fetchUserInfo(configuration, tokens.access_token, idClaims.sub);
        claims = claimsOf(idClaims, extra, tokens.scope ?? (typeof session.claims['scope'] === 'string' ? session.claims['scope'] : undefined));
      }
      events.refresh?.(provider.name, 'success');
      return {
        kind: 'ok',
        session: {
          ...session,
          claims,
          accessToken: tokens.access_token,
          accessTokenExpiresAt: expiresIn === undefined ? undefined : now() + expiresIn,
          refreshToken: tokens.refresh_token ?? session.refreshToken,
          idToken: tokens.id_token ?? session.idToken,
        },
      };
    } catch (err) {
      if (isUnreachable(err)) {
        events.refresh?.(provider.name, 'failure');
        events.providerFailed?.(provider.name, 'refresh', err instanceof Error ? err : new Error(String(err)));
        return { kind: 'unreachable' };
      }
      events.refresh?.(provider.name, 'ended');
      return { kind: 'ended', why: 'the provider refused the refresh' };
    }
  }

  function clearing(cookies: RequestCookies): SessionResult {
    const lines = backend.clear(cookies);
    return lines.length === 0 ? NONE : { kind: 'none', headers: { 'set-cookie': lines } };
  }

  /**
   * The request's session, refreshed when due; the Set-Cookie lines of a new cookie go with it. Throws
   * StoreUnavailableError when the session store cannot be reached (the caller answers 503).
   */
  async function current(request: AccessRequest, cookies: RequestCookies): Promise<{ session: SessionData; cookies: string[] } | SessionResult> {
    const t = now();
    const loaded = await backend.load(cookies, t);
    if (loaded === undefined) return NONE;
    if (loaded === 'invalid' || loaded.expiresAt <= t || backend.isEnded(loaded)) return clearing(cookies);
    const provider = providers.get(loaded.provider);
    if (provider === undefined || provider.issuer !== loaded.issuer) return clearing(cookies);
    const expiresAt = loaded.accessTokenExpiresAt;
    if (expiresAt === undefined || expiresAt - t > config.session.refreshBeforeSeconds) return { session: loaded, cookies: [] };
    if (loaded.refreshToken === undefined) {
      // Nothing to refresh with: the session lasts as long as its access token.
      return expiresAt > t ? { session: loaded, cookies: [] } : clearing(cookies);
    }
    const { refreshed, cookies: lines } = await backend.refreshOnce(loaded, cookies, t, () => refresh(loaded, provider));
    if (refreshed.kind === 'ended') return clearing(cookies);
    if (refreshed.kind === 'unreachable') {
      if (expiresAt > t) return { session: loaded, cookies: [] };
      return { kind: 'failed', reason: 'SESSION_UNAVAILABLE', detail: 'the session needs a refresh and the provider cannot be reached', headers: NO_HEADERS };
    }
    return { session: refreshed.session, cookies: lines };
  }

  /** The session store down: a request that needs a session is a 503, never an allow or a redirect loop. */
  const STORE_DOWN: SessionResult & { kind: 'failed' } = Object.freeze({ kind: 'failed', reason: 'SESSION_UNAVAILABLE', detail: 'the session store cannot be reached', headers: NO_HEADERS });

  function requestOrigin(request: AccessRequest): string {
    return `${callbackUrl.protocol}//${request.host}`;
  }

  // ---- routes -------------------------------------------------------------------------------------------

  function chooser(returnTo: string): RouteAnswer {
    const links = [...providers.values()]
      .map((p) => `<li><a href="${html(`${prefix}/start?${new URLSearchParams({ rd: returnTo, provider: p.name }).toString()}`)}">${html(p.name)}</a></li>`)
      .join('\n');
    const body = `<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width"><title>Sign in</title></head>\n<body><h1>Sign in with</h1>\n<ul>\n${links}\n</ul></body></html>\n`;
    return page(body, 'text/html; charset=utf-8', 'the provider chooser');
  }

  async function start(request: AccessRequest): Promise<RouteAnswer> {
    const rdParam = param(request.query, 'rd');
    const providerParam = param(request.query, 'provider');
    if (rdParam === null || providerParam === null) return refuse('SIGNIN_FAILED', 'rd and provider may be given once each', request.requestId);
    const rd = checkReturnUrl(rdParam ?? '/', returnPolicy);
    if (!rd.ok) return refuse('SIGNIN_FAILED', `the return URL is refused: ${rd.reason}`, request.requestId);
    let provider: SignInProvider | undefined;
    if (providerParam !== undefined) {
      provider = providers.get(providerParam);
      if (provider === undefined) return refuse('SIGNIN_FAILED', 'no such provider', request.requestId);
    } else if (providers.size === 1) {
      provider = providers.values().next().value;
    } else {
      return chooser(rd.location);
    }
    const configuration = provider?.configuration();
    if (provider === undefined || configuration === undefined) {
      return refuse('SIGNIN_UNAVAILABLE', 'the provider has not been discovered yet', request.requestId);
    }
    const verifier = client.randomPKCECodeVerifier();
    const state = client.randomState();
    const nonce = client.randomNonce();
    const url = client.buildAuthorizationUrl(configuration, {
      redirect_uri: callbackUrl.href,
      scope: provider.scopes.join(' '),
      state,
      nonce,
      code_challenge: await client.calculatePKCECodeChallenge(verifier),
      code_challenge_method: 'S256',
    });
    const cookies = parseCookies(request.headers['cookie']);
    // A very long return URL is not kept (five pending sign-ins must stay small): the sign-in ends on `/`.
    const returnTo = rd.location.length > MAX_STORED_RETURN_URL ? '/' : rd.location;
    // With tracing on, the start's span is remembered so that the callback's span links to it: one journey.
    const started = request.trace === undefined ? undefined : trace.getSpanContext(request.trace as Context);
    const link = started === undefined ? {} : { traceId: started.traceId, spanId: started.spanId };
    const lines = await states.begin({ state, nonce, verifier, provider: provider.name, returnTo, createdAt: now(), ...link }, cookies, now());
    return redirect(url.href, lines, `sign-in started at ${provider.name}`);
  }

  async function callback(request: AccessRequest): Promise<RouteAnswer> {
    const id = request.requestId;
    const state = param(request.query, 'state');
    if (typeof state !== 'string' || state === '') return refuse('SIGNIN_FAILED', 'the callback has no state', id);
    const cookies = parseCookies(request.headers['cookie']);
    const { pending, clear } = await states.take(state, cookies, now());
    if (pending === undefined) {
      events.signIn?.('unknown', 'failure');
      return refuse('SIGNIN_FAILED', 'no pending sign-in has this state (its cookie is missing, expired or from another browser)', id, clear);
    }
    if (request.trace !== undefined && pending.traceId !== undefined && pending.spanId !== undefined) {
      trace.getSpan(request.trace as Context)?.addLink({ context: { traceId: pending.traceId, spanId: pending.spanId, traceFlags: TraceFlags.SAMPLED } });
    }
    const provider = providers.get(pending.provider);
    const configuration = provider?.configuration();
    if (provider === undefined || configuration === undefined) return refuse('SIGNIN_UNAVAILABLE', 'the provider has not been discovered yet', id, clear);
    const fail = (reason: ReasonCode, detail: string): RouteAnswer => {
      events.signIn?.(provider.name, 'failure');
      return refuse(reason, detail, id, clear);
    };
    const providerError = param(request.query, 'error');
    if (typeof providerError === 'string') return fail('SIGNIN_FAILED', `the provider answered ${safeText(providerError)}`);

    const currentUrl = new URL(callbackUrl.href);
    currentUrl.search = request.query ?? '';
    let tokens: Awaited<ReturnType<typeof client.authorizationCodeGrant>>;
    try {
      tokens = await client.authorizationCodeGrant(configuration, currentUrl, {
        pkceCodeVerifier: pending.verifier,
        expectedState: pending.state,
        expectedNonce: pending.nonce,
        idTokenExpected: true,
      });
    } catch (err) {
      if (isUnreachable(err)) {
        events.providerFailed?.(provider.name, 'code exchange', err instanceof Error ? err : new Error(String(err)));
        return fail('SIGNIN_UNAVAILABLE', 'the provider could not be reached to exchange the code');
      }
      if (err instanceof client.ResponseBodyError) return fail('SIGNIN_FAILED', `the provider refused the code (${safeText(err.error)})`);
      if (err instanceof client.AuthorizationResponseError) return fail('SIGNIN_FAILED', `the provider answered ${safeText(err.error)}`);
      // openid-client's message is generic ("unexpected JWT claim value encountered"); its cause names the
      // check that failed (the nonce, the iss parameter, the ID token's audience...).
      const named = err instanceof client.ClientError && err.cause instanceof Error ? err.cause.message : err instanceof Error ? err.message : String(err);
      return fail('SIGNIN_FAILED', `the provider's answer failed a check: ${safeText(named)}`);
    }
    const idClaims = tokens.claims();
    if (idClaims === undefined) return fail('SIGNIN_FAILED', 'the provider sent no ID token');
    let extra: Record<string, unknown> | undefined;
    if (provider.userinfo) {
      try {
        extra = await client.fetchUserInfo(configuration, tokens.access_token, idClaims.sub);
      } catch (err) {
        if (isUnreachable(err)) return fail('SIGNIN_UNAVAILABLE', 'the provider could not be reached for userinfo');
        return fail('SIGNIN_FAILED', 'the userinfo answer failed a check');
      }
    }
    const t = now();
    const expiresIn = tokens.expiresIn();
    const session: SessionData = {
      // Always a new session: one the browser brought is never reused (session fixation).
      id: randomId(),
      provider: provider.name,
      issuer: idClaims.iss,
      subject: idClaims.sub,
      claims: claimsOf(idClaims, extra, tokens.scope),
      accessToken: tokens.access_token,
      accessTokenExpiresAt: expiresIn === undefined ? undefined : t + expiresIn,
      refreshToken: tokens.refresh_token,
      idToken: tokens.id_token,
      providerSid: typeof idClaims['sid'] === 'string' ? idClaims['sid'] : undefined,
      startedAtMs: nowMs(),
      expiresAt: t + config.session.maxAgeSeconds,
    };
    let lines: string[];
    try {
      lines = [...clear, ...(await backend.start(session, cookies, t))];
    } catch (err) {
      if (err instanceof StoreUnavailableError) return fail('SIGNIN_UNAVAILABLE', 'the session store cannot be reached');
      // A session too large for the cookie chunks (MAX_CHUNKS), even without the raw ID token.
      return fail('SIGNIN_FAILED', `the session cannot be stored: ${safeText(err instanceof Error ? err.message : err)}`);
    }
    events.signIn?.(provider.name, 'success');
    if (config.cookie.sameSite === 'strict') {
      // A SameSite=Strict cookie is not sent on a redirect that began at the provider's site: the browser
      // would come back without its new session. A page that navigates on is same-site.
      const body = `<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><meta http-equiv="refresh" content="0;url=${html(pending.returnTo)}"><title>Signed in</title></head><body><a href="${html(pending.returnTo)}">Continue</a></body></html>\n`;
      return page(body, 'text/html; charset=utf-8', `signed in at ${provider.name}`, lines);
    }
    return redirect(pending.returnTo, lines, `signed in at ${provider.name}`);
  }

  async function signOut(request: AccessRequest): Promise<RouteAnswer> {
    const id = request.requestId;
    const rdParam = param(request.query, 'rd');
    if (rdParam === null) return refuse('SIGNIN_FAILED', 'rd may be given once', id);
    const rd = checkReturnUrl(rdParam ?? config.postLogoutRedirect, returnPolicy);
    if (!rd.ok) return refuse('SIGNIN_FAILED', `the return URL is refused: ${rd.reason}`, id);
    if (request.method === 'POST') {
      const csrf = csrfRefusal(request.method, request.headers, requestOrigin(request), config.allowedRedirectHosts, callbackUrl.protocol);
      if (csrf !== undefined) return refuse('CSRF_REJECTED', csrf, id);
    } else {
      const site = request.headers['sec-fetch-site']?.[0]?.toLowerCase();
      if (site !== undefined && site !== 'same-origin' && site !== 'none') {
        // A GET from another site (a link, an image) does not sign anyone out by itself: the person confirms,
        // with a same-origin POST.
        const action = `${prefix}/sign-out?${new URLSearchParams({ rd: rd.location }).toString()}`;
        const body = `<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>Sign out</title></head><body><form method="post" action="${html(action)}"><button type="submit">Sign out</button></form></body></html>\n`;
        return page(body, 'text/html; charset=utf-8', 'sign-out to confirm');
      }
    }
    const cookies = parseCookies(request.headers['cookie']);
    const lines = backend.clear(cookies);
    let loaded: SessionData | 'invalid' | undefined;
    try {
      loaded = await backend.load(cookies, now());
      if (loaded === undefined || loaded === 'invalid') return redirect(rd.location, lines, 'signed out (there was no session)');
      // The session is refused from now on, even if a copy of the cookie comes back.
      await backend.end(loaded);
    } catch (err) {
      if (!(err instanceof StoreUnavailableError)) throw err;
      // Not ended in the store: the browser's cookie goes, and the person is told it did not work.
      return refuse('SESSION_UNAVAILABLE', 'the session store cannot be reached: the session could not be ended', id, lines);
    }
    events.logout?.('user');
    const configuration = providers.get(loaded.provider)?.configuration();
    if (configuration?.serverMetadata().end_session_endpoint !== undefined) {
      const back = new URL(rd.location, callbackUrl).href;
      const url = client.buildEndSessionUrl(configuration, {
        post_logout_redirect_uri: back,
        ...(loaded.idToken === undefined ? { client_id: configuration.clientMetadata().client_id } : { id_token_hint: loaded.idToken }),
      });
      return redirect(url.href, lines, 'signed out; on to the provider');
    }
    return redirect(rd.location, lines, 'signed out');
  }

  async function userinfo(request: AccessRequest): Promise<RouteAnswer> {
    const cookies = parseCookies(request.headers['cookie']);
    let found: Awaited<ReturnType<typeof current>>;
    try {
      found = await current(request, cookies);
    } catch (err) {
      if (err instanceof StoreUnavailableError) return refuse(STORE_DOWN.reason, STORE_DOWN.detail, request.requestId);
      throw err;
    }
    if (!('session' in found)) {
      if (found.kind === 'failed') return refuse(found.reason, found.detail, request.requestId);
      const clear = found.headers['set-cookie'];
      const answer = refuse('CREDENTIALS_MISSING', 'no session', request.requestId, typeof clear === 'string' ? [clear] : (clear ?? []));
      // RFC 9110 §15.5.2: a 401 names a scheme.
      return { ...answer, answer: { ...answer.answer, headers: { ...answer.answer.headers, 'www-authenticate': `Bearer realm="${DEFAULT_REALM}"` } } };
    }
    const { session } = found;
    const mapped = options.identity.fromClaims(session.claims, session.issuer);
    if (!mapped.ok) return refuse(mapped.reason, mapped.detail, request.requestId);
    const claims: Record<string, ClaimValue> = {};
    for (const path of Object.values(options.claimHeaders)) {
      const value = claimAt(session.claims, path);
      if (value !== undefined) claims[path] = value;
    }
    const body = JSON.stringify({
      subject: mapped.identity.subject,
      issuer: session.issuer,
      provider: session.provider,
      roles: mapped.identity.roles,
      scopes: mapped.identity.scopes,
      claims,
      expiresAt: new Date(session.expiresAt * 1000).toISOString(),
    });
    return page(body, 'application/json', 'the session', found.cookies);
  }

  let logoutReads = 0;
  async function backchannelLogout(request: AccessRequest): Promise<RouteAnswer> {
    const id = request.requestId;
    if (logoutReads >= MAX_LOGOUT_READS) return refuse('SIGNIN_UNAVAILABLE', 'too many back-channel logouts at once', id);
    logoutReads++;
    let body: string | undefined;
    try {
      body = await request.readBody?.(LOGOUT_BODY_LIMIT);
    } finally {
      logoutReads--;
    }
    if (body === undefined) return refuse('SIGNIN_FAILED', 'the logout request has no readable form body', id);
    const token = param(body, 'logout_token');
    if (typeof token !== 'string' || token === '') return refuse('SIGNIN_FAILED', 'the request has no single logout_token', id);
    let issuer: unknown;
    try {
      issuer = decodeJwt(token).iss;
    } catch {
      return refuse('SIGNIN_FAILED', 'the logout token is not a JWT', id);
    }
    const candidates = [...providers.values()].filter((p) => p.issuer === issuer);
    if (candidates.length === 0) return refuse('SIGNIN_FAILED', "the logout token's iss claim is not valid", id);
    let reason = 'the logout token is not valid';
    for (const provider of candidates) {
      const keys = provider.keys();
      if (keys === undefined) return refuse('SIGNIN_UNAVAILABLE', 'the provider has not been discovered yet', id);
      let result: Awaited<ReturnType<typeof logoutTokens.verify>>;
      try {
        result = await logoutTokens.verify(token, {
          issuer: provider.issuer,
          clientId: provider.clientId,
          keys,
          algorithms: provider.algorithms(),
          seen: (jti) => backend.jtiSeen(provider.issuer, jti),
        });
        if (result.ok) {
          if (result.sid !== undefined) await backend.endProviderSession(provider.name, result.sid);
          else if (result.sub !== undefined) await backend.endSubject(provider.name, result.sub, nowMs());
          // Used up only once the sessions are gone: a provider's retry after a failure still works.
          await backend.markJti(provider.issuer, result.jti);
        }
      } catch (err) {
        if (err instanceof StoreUnavailableError) return refuse('SIGNIN_UNAVAILABLE', 'the session store cannot be reached', id);
        throw err;
      }
      if (!result.ok) {
        reason = result.reason;
        continue;
      }
      events.logout?.('backchannel');
      return answer('SIGNIN_PAGE', 'back-channel logout done', 200, {}, '');
    }
    return refuse('SIGNIN_FAILED', reason, id);
  }

  const routes: Record<string, { methods: readonly string[]; handle: (request: AccessRequest) => Promise<RouteAnswer> }> = {
    '/start': { methods: ['GET', 'HEAD'], handle: start },
    '/callback': { methods: ['GET', 'HEAD'], handle: callback },
    '/sign-out': { methods: ['GET', 'POST'], handle: signOut },
    '/userinfo': { methods: ['GET', 'HEAD'], handle: userinfo },
    '/backchannel-logout': { methods: ['POST'], handle: backchannelLogout },
  };

  return {
    isRoute: (path) => path === prefix || path.startsWith(`${prefix}/`),
    async route(request) {
      const route = Object.hasOwn(routes, request.path.slice(prefix.length)) ? routes[request.path.slice(prefix.length)] : undefined;
      if (route === undefined) return refuse('NOT_FOUND', 'no such sign-in route', request.requestId);
      if (!route.methods.includes(request.method)) {
        return refuse('METHOD_NOT_ALLOWED', `${request.path} answers ${route.methods.join(', ')}`, request.requestId);
      }
      return route.handle(request);
    },
    async resolve(request) {
      const cookies = parseCookies(request.headers['cookie']);
      // CSRF before anything else: a cross-site unsafe request never gets to use (or refresh) the session.
      if (cookies.size > 0 && [...cookies.keys()].some((n) => n === settings.name || n.startsWith(`${settings.name}.`))) {
        // A WebSocket handshake is checked like an unsafe request: browsers send its Origin, and SameSite
        // alone does not stop a sibling site (cross-site WebSocket hijacking).
        const method = request.headers['upgrade'] !== undefined ? 'UPGRADE' : request.method;
        const csrf = csrfRefusal(method, request.headers, requestOrigin(request), config.allowedRedirectHosts, callbackUrl.protocol);
        if (csrf !== undefined) return { kind: 'failed', reason: 'CSRF_REJECTED', detail: csrf, headers: NO_HEADERS };
      }
      let found: Awaited<ReturnType<typeof current>>;
      try {
        found = await current(request, cookies);
      } catch (err) {
        if (err instanceof StoreUnavailableError) return STORE_DOWN;
        throw err;
      }
      if (!('session' in found)) return found;
      const { session } = found;
      return {
        kind: 'session',
        issuer: session.issuer,
        claims: session.claims,
        accessToken: session.accessToken,
        headers: found.cookies.length === 0 ? NO_HEADERS : { 'set-cookie': found.cookies },
      };
    },
    signInRedirect(request, redirects) {
      if (!redirects || !redirectsToSignIn(config.unauthenticated, request.method, request.headers)) return undefined;
      const target = request.query === undefined ? request.path : `${request.path}?${request.query}`;
      // The sign-in starts on the callback's origin (its state cookie must be there when the provider sends
      // the browser back), absolute so that a proxy relaying the answer cannot resolve it against itself.
      // From another host, the way back names that host, if it is an allowed one.
      const sameHost = request.host === '' || request.host === callbackUrl.host.toLowerCase();
      const back = sameHost ? target : `${callbackUrl.protocol}//${request.host}${target}`;
      // A return URL the start route would refuse (an encoded space, a host not allowed) becomes the root.
      const rd = checkReturnUrl(back, returnPolicy).ok ? back : '/';
      const answer: ClientAnswer = {
        status: 302,
        headers: { location: `${callbackUrl.origin}${prefix}/start?${new URLSearchParams({ rd }).toString()}`, 'cache-control': 'no-store' },
        body: '',
      };
      return answer;
    },
    scrubCookie(value) {
      const kept = value
        .split(';')
        .map((part) => part.trim())
        .filter((part) => {
          const eq = part.indexOf('=');
          return part !== '' && !(eq > 0 && isOwnCookie(settings, part.slice(0, eq).trim()));
        });
      return kept.length === 0 ? undefined : kept.join('; ');
    },
    missing() {
      return [...providers.values()].filter((p) => p.configuration() === undefined).map((p) => `discovery of sign-in provider ${p.name} (${p.issuer})`);
    },
    status: () => ({ store: backend.kind, up: backend.up() }),
    close() {
      for (const p of providers.values()) p.close();
      void backend.close();
    },
  };
}
