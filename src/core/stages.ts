/**
 * The contracts between the pipeline stages of DESIGN.md §1. The core depends on these interfaces only;
 * src/authn and src/authz provide the implementations, so new authenticators (introspection) or front
 * doors plug in without touching the core.
 */
import type { AccessRequest, HeaderMap } from './access-request.js';
import type { AnswerHeaders, ClientAnswer } from './decision.js';
import type { ReasonCode } from './errors.js';
import type { Claims, Identity } from './identity.js';

export type CredentialResult =
  | { readonly kind: 'none' }
  | { readonly kind: 'token'; readonly token: string; readonly source: string }
  | { readonly kind: 'error'; readonly reason: 'CREDENTIALS_MALFORMED' | 'CREDENTIALS_CONFLICT'; readonly detail: string };

/** Headers of a request about to be forwarded (mutable, lower-case names). */
export type ForwardedHeaders = Record<string, string | string[] | undefined>;

export interface CredentialExtractor {
  extract(headers: HeaderMap, query: string | undefined): CredentialResult;
  /** Header names (lower-case) that carry tokens. */
  readonly tokenHeaders: readonly string[];
  /** Removes token headers and token cookies (the Cookie header is rewritten without them) from forwarded headers. */
  scrubHeaders(headers: ForwardedHeaders): void;
  /** The query without token parameters. */
  scrubQuery(query: string | undefined): string | undefined;
}

/**
 * "Not mine" is a value, not an exception (Oathkeeper's ErrAuthenticatorNotResponsible): the next
 * authenticator gets the token. A token an authenticator recognises but rejects is `failed`, never `notMine`.
 */
export type AuthnResult =
  | { readonly kind: 'notMine' }
  | { readonly kind: 'authenticated'; readonly issuer: string; readonly claims: Claims }
  | { readonly kind: 'failed'; readonly reason: ReasonCode; readonly detail: string };

export interface Authenticator {
  authenticate(token: string): Promise<AuthnResult>;
  /** What this authenticator still lacks before it can serve (e.g. "jwks of https://idp"); empty when ready. */
  missing(): readonly string[];
  close(): void;
}

export type IdentityResult =
  | { readonly ok: true; readonly identity: Identity }
  | { readonly ok: false; readonly reason: ReasonCode; readonly detail: string };

export interface IdentityMapper {
  fromClaims(claims: Claims, issuer: string): IdentityResult;
  anonymous(): Identity;
}

export interface AuthzResult {
  readonly allowed: boolean;
  /** The policy line that decided, when one matched. */
  readonly policy: readonly string[] | undefined;
  /** The request tuple the policy was asked about (Casbin's `r`), for explanations. */
  readonly request: readonly string[];
}

export interface Authorizer {
  /** Synchronous on purpose: request-scoped role links rely on no other request interleaving. */
  authorize(request: AccessRequest, identity: Identity): AuthzResult;
  missing(): readonly string[];
}

/** A session's verdict on a request without a bearer token (browser sign-in, DESIGN.md §7). */
export type SessionResult =
  /** No session (none brought, or one that cannot be used); `headers` clear a cookie that failed. */
  | { readonly kind: 'none'; readonly headers: AnswerHeaders }
  | {
      readonly kind: 'session';
      readonly issuer: string;
      /** The session's claims (ID token, userinfo): one object per session value, so its identity is cached with it. */
      readonly claims: Claims;
      /** The access token, forwarded with `headers.forwardToken`. */
      readonly accessToken: string | undefined;
      /** A refreshed session's Set-Cookie, for the client's answer. */
      readonly headers: AnswerHeaders;
    }
  /** A session that cannot be decided on now: the provider is down with its access token expired (503), CSRF (403). */
  | { readonly kind: 'failed'; readonly reason: ReasonCode; readonly detail: string; readonly headers: AnswerHeaders };

/** A sign-in route's answer with the reason code it is counted and logged under. */
export interface RouteAnswer {
  readonly reason: ReasonCode;
  readonly detail: string;
  readonly answer: ClientAnswer;
}

/** Browser sessions as a credential, and the sign-in routes: what the core needs of src/signin. */
export interface BrowserSessions {
  /** Whether a canonical path is one of the sidecar's own sign-in routes (under `signIn.prefix`). */
  isRoute(path: string): boolean;
  route(request: AccessRequest): Promise<RouteAnswer>;
  resolve(request: AccessRequest): Promise<SessionResult>;
  /** The redirect to sign in for a request the policy refuses without credentials, or undefined for the 401. */
  signInRedirect(request: AccessRequest, redirects: boolean): ClientAnswer | undefined;
  /** A Cookie header value without the sidecar's own cookies; undefined when nothing is left. */
  scrubCookie(value: string): string | undefined;
  missing(): readonly string[];
  /** The session store, for /readyz (which stays ready without it: bearer and anonymous traffic go on). */
  status(): { readonly store: 'cookie' | 'redis'; readonly up: boolean };
  /** The session store, for /readyz (which stays ready without it: bearer and anonymous traffic go on). */
  status(): { readonly store: 'cookie' | 'redis'; readonly up: boolean };
  close(): void;
}

/**
 * Spans around the pipeline's stages (tracing, DESIGN.md §9): `parent` is the door's span context, opaque
 * to the core. Absent when tracing is off: the stages then run as they are.
 */
export interface StageTracer {
  run<T>(name: string, parent: unknown, fn: () => Promise<T>): Promise<T>;
  runSync<T>(name: string, parent: unknown, fn: () => T): T;
}
