/**
 * Minimal type declarations for the parts of `oidc-provider` (v9, ships no types) that the integration test
 * harness in ./oidc-provider.ts uses. Deliberately narrow: only what the harness touches, no `any`.
 *
 * Pulled in by a `/// <reference path>` in ./oidc-provider.ts (a `.d.ts` next to a `.ts` of the same basename is
 * skipped by tsconfig `include` globs, so the reference is what makes it part of every compilation).
 */
declare module 'oidc-provider' {
  import type { EventEmitter } from 'node:events';
  import type { IncomingMessage, ServerResponse } from 'node:http';

  /** The `ctx.oidc` context object (only the members the harness reads). */
  export interface OIDCContext {
    /** Request scopes (`scope` parameter split on spaces). */
    readonly requestParamScopes: Set<string>;
  }

  export interface KoaContextWithOIDC {
    oidc: OIDCContext;
    status: number;
    type: string;
    body: unknown;
  }

  export interface ClientMetadata {
    client_id: string;
    client_secret?: string;
    grant_types?: string[];
    response_types?: string[];
    redirect_uris?: string[];
    token_endpoint_auth_method?: 'client_secret_basic' | 'client_secret_post' | 'none';
    scope?: string;
  }

  export interface ResourceServerInfo {
    /** Space-separated scopes this resource server accepts (requested scopes are filtered against it). */
    scope: string;
    /** `aud` of tokens issued for it (defaults to the resource indicator). */
    audience?: string;
    accessTokenTTL?: number;
    accessTokenFormat?: 'opaque' | 'jwt';
    jwt?: { sign?: { alg?: string; kid?: string } };
  }

  /** The access-token-ish model handed to `extraTokenClaims` (AccessToken / ClientCredentials). */
  export interface IssuedToken {
    readonly kind: string;
    readonly clientId?: string;
    readonly accountId?: string;
    readonly scope?: string;
    /** resolved from the resource server's accessTokenFormat (set before extraTokenClaims is called) */
    readonly format?: 'opaque' | 'jwt';
  }

  export interface ErrorOut {
    error: string;
    error_description?: string;
  }

  export interface Adapter {
    upsert(id: string, payload: object, expiresIn?: number): Promise<void>;
    find(id: string): Promise<object | undefined>;
    findByUserCode(userCode: string): Promise<object | undefined>;
    findByUid(uid: string): Promise<object | undefined>;
    consume(id: string): Promise<void>;
    destroy(id: string): Promise<void>;
    revokeByGrantId(grantId: string): Promise<void>;
  }

  export interface JWKSet {
    keys: Array<Record<string, unknown>>;
  }

  export interface Configuration {
    adapter?: (name: string) => Adapter;
    clients?: ClientMetadata[];
    jwks?: JWKSet;
    clientBasedCORS?: (ctx: KoaContextWithOIDC, origin: string, client: unknown) => boolean;
    renderError?: (ctx: KoaContextWithOIDC, out: ErrorOut, error: Error) => void | Promise<void>;
    extraTokenClaims?: (
      ctx: KoaContextWithOIDC,
      token: IssuedToken,
    ) => Record<string, unknown> | undefined | Promise<Record<string, unknown> | undefined>;
    ttl?: Partial<Record<'AccessToken' | 'ClientCredentials', number>>;
    features?: {
      devInteractions?: { enabled: boolean };
      clientCredentials?: { enabled: boolean };
      introspection?: {
        enabled: boolean;
        /** whether the authenticated caller may learn about the token; false answers `{ active: false }` */
        allowedPolicy?: (ctx: KoaContextWithOIDC, client: unknown, token: IssuedToken) => boolean | Promise<boolean>;
      };
      revocation?: { enabled: boolean };
      rpInitiatedLogout?: { enabled: boolean };
      resourceIndicators?: {
        enabled: boolean;
        defaultResource?: (
          ctx: KoaContextWithOIDC,
          client: unknown,
          oneOf?: string[],
        ) => string | string[] | undefined | Promise<string | string[] | undefined>;
        useGrantedResource?: (ctx: KoaContextWithOIDC, model: unknown) => boolean | Promise<boolean>;
        getResourceServerInfo?: (
          ctx: KoaContextWithOIDC,
          resourceIndicator: string,
          client: unknown,
        ) => ResourceServerInfo | Promise<ResourceServerInfo>;
      };
    };
  }

  export class Provider extends EventEmitter {
    constructor(issuer: string, configuration?: Configuration);
    readonly issuer: string;
    /** Koa's request listener. */
    callback(): (req: IncomingMessage, res: ServerResponse) => Promise<void>;
    /** Absolute URL of a named route, e.g. `urlFor('token')`, `urlFor('jwks')`. */
    urlFor(name: string): string;
    /** Koa: do not print unhandled app errors to stderr. */
    silent: boolean;
  }

  export const errors: {
    InvalidTarget: new (description?: string, detail?: string) => Error;
  };

  export default Provider;
}
