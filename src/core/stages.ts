/**
 * The contracts between the pipeline stages of DESIGN.md §1. The core depends on these interfaces only;
 * src/authn and src/authz provide the implementations, so new authenticators (introspection) or front
 * doors plug in without touching the core.
 */
import type { AccessRequest, HeaderMap } from './access-request.js';
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
