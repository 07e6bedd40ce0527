/**
 * Every configuration default, defined once (DESIGN.md §2). The schema fills them into a parsed config;
 * the library modules (JWT, introspection, credentials, identity mapping, Casbin) fall back to the same
 * constants when an option is left out, so a default can never differ between `serve` and a direct caller.
 *
 * Plain values only: no zod, no library imports (the path defaults are the core's own, which imports nothing),
 * so that any module can depend on this one cheaply.
 * Arrays and objects are frozen; copy them before handing them to code that mutates.
 */
import { DEFAULT_PATH_OPTIONS } from '../core/canonical-path.js';

// ---- listeners and upstream ----------------------------------------------------------------------------

/** `listen`: the proxy listener. */
export const DEFAULT_LISTEN = '0.0.0.0:8080';
/** `admin.listen`: health, readiness and metrics; loopback, since they are not for the outside world. */
export const DEFAULT_ADMIN_LISTEN = '127.0.0.1:8081';
/** `upstream.timeoutSeconds`: how long the app may take to answer a forwarded request. */
export const DEFAULT_UPSTREAM_TIMEOUT_SECONDS = 30;
/** `upstream.websockets`: WebSocket upgrades are forwarded (after the same authorization). */
export const DEFAULT_UPSTREAM_WEBSOCKETS = true;
/** `extAuthz.http.pathPrefix`: the check door takes the original path as is. */
export const DEFAULT_EXT_AUTHZ_PATH_PREFIX = '';
/** `shutdown.drainSeconds`: how long in-flight requests may finish after SIGTERM before connections are cut. */
export const DEFAULT_DRAIN_SECONDS = 20;

// ---- JWT (RFC 7519, RFC 8725) --------------------------------------------------------------------------

/** The asymmetric JWS algorithms (RFC 7518 §3, RFC 8037) an issuer with public keys may allow. */
export const ASYMMETRIC_ALGORITHMS: readonly string[] = Object.freeze([
  'RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512', 'ES256', 'ES384', 'ES512', 'EdDSA', 'Ed25519',
]);
/** The HMAC algorithms (RFC 7518 §3.2), only with `secretFile` and never mixed with public keys. */
export const HMAC_ALGORITHMS: readonly string[] = Object.freeze(['HS256', 'HS384', 'HS512']);
/** `authn.jwt[].algorithms` for an issuer with public keys (jwksUri, jwksFile or discovery). */
export const DEFAULT_ALGORITHMS: readonly string[] = Object.freeze(['RS256', 'PS256', 'ES256', 'EdDSA']);
/** `authn.jwt[].algorithms` for an issuer with `secretFile`. */
export const DEFAULT_HMAC_ALGORITHMS: readonly string[] = Object.freeze(['HS256']);
/** RFC 7518 §3.2: an HMAC key at least as long as the hash output; we ask for 256 bits for every HS*. */
export const MIN_SECRET_BYTES = 32;
/**
 * `authn.jwt[].clockSkewSeconds`: leeway for `exp`, `nbf` and `iat` between our clock and the issuer's.
 * Introspection answers (`exp`, `nbf`) are checked with the same leeway.
 */
export const DEFAULT_CLOCK_SKEW_SECONDS = 30;
/** `authn.jwt[].maxTokenAgeSeconds`: 0 = no limit on the age of `iat`. */
export const DEFAULT_MAX_TOKEN_AGE_SECONDS = 0;
/** How long a verified JWT is remembered (never past its `exp`). */
export const DEFAULT_JWT_CACHE_SECONDS = 300;
/** How many verified tokens (JWT or introspected) each authenticator remembers. */
export const DEFAULT_CACHE_ENTRIES = 10_000;

// ---- introspection (RFC 7662) --------------------------------------------------------------------------

/** `authn.introspection[].authMethod`: how the sidecar authenticates to the endpoint (RFC 6749 §2.3.1). */
export const DEFAULT_INTROSPECTION_AUTH_METHOD = 'client_secret_basic';
/** `authn.introspection[].cacheSeconds`: how long an active answer is remembered (never past the token's `exp`). */
export const DEFAULT_INTROSPECTION_CACHE_SECONDS = 60;
/** `authn.introspection[].timeoutSeconds`: an endpoint slower than this is unavailable (503), never a hang. */
export const DEFAULT_INTROSPECTION_TIMEOUT_SECONDS = 5;

// ---- where the token comes from ------------------------------------------------------------------------

/** `authn.tokenFrom`: the Authorization header only. Query parameters are off unless listed (URLs get logged). */
export const DEFAULT_TOKEN_SOURCES: readonly { readonly header: string }[] = Object.freeze([Object.freeze({ header: 'authorization' })]);

// ---- identity ------------------------------------------------------------------------------------------

/** `identity.subjectClaim`. */
export const DEFAULT_SUBJECT_CLAIM = 'sub';
/** `identity.rolesClaims`: dotted claim paths (Keycloak's realm roles included). */
export const DEFAULT_ROLES_CLAIMS: readonly string[] = Object.freeze(['roles', 'groups', 'realm_access.roles']);
/** `identity.scopesClaim` (RFC 8693 §4.2: space-separated). */
export const DEFAULT_SCOPES_CLAIM = 'scope';
/** `identity.subjectPrefix`: Casbin sees `user:<sub>`. */
export const DEFAULT_SUBJECT_PREFIX = 'user:';
/** `identity.rolePrefix`: Casbin sees `role:<name>`, so a user can never be named like a role. */
export const DEFAULT_ROLE_PREFIX = 'role:';
/** `identity.anonymousSubject`: the subject of a request without a token. */
export const DEFAULT_ANONYMOUS_SUBJECT = 'anonymous';

// ---- authorization (Casbin) ----------------------------------------------------------------------------

/** `authz.request`: what fills Casbin's `r`, in order. */
export const DEFAULT_REQUEST_FIELDS: readonly ('subject' | 'path' | 'method')[] = Object.freeze(['subject', 'path', 'method']);
/** `authz.mode`: denials are enforced (`dryRun` only logs them). */
export const DEFAULT_AUTHZ_MODE = 'enforce';
/** `authz.watch`: model, policy and key files are reloaded when they change. */
export const DEFAULT_AUTHZ_WATCH = true;
/** Decisions remembered per request values and token roles (0 = none). */
export const DEFAULT_DECISION_CACHE_ENTRIES = 10_000;

// ---- identity headers ----------------------------------------------------------------------------------

/** `headers.prefix`: every incoming header with this prefix (or its `_` spelling) is removed. */
export const DEFAULT_HEADER_PREFIX = 'x-auth-';
/** `headers.subject`. */
export const DEFAULT_SUBJECT_HEADER = 'x-auth-subject';
/** `headers.issuer`. */
export const DEFAULT_ISSUER_HEADER = 'x-auth-issuer';
/** `headers.roles`: comma-separated, without the role prefix. */
export const DEFAULT_ROLES_HEADER = 'x-auth-roles';
/** `headers.scopes`. */
export const DEFAULT_SCOPES_HEADER = 'x-auth-scopes';
/** `headers.forwardToken`: the token is removed from the forwarded request. */
export const DEFAULT_FORWARD_TOKEN = false;

// ---- paths ---------------------------------------------------------------------------------------------

/** `paths.encodedSlashes`: `%2F` and `%5C` are refused (they defeat path-prefix rules). The core's own default. */
export const DEFAULT_ENCODED_SLASHES = DEFAULT_PATH_OPTIONS.encodedSlashes;
/** `paths.semicolons`: `;` path parameters are refused (servers disagree on what they mean). The core's own default. */
export const DEFAULT_SEMICOLONS = DEFAULT_PATH_OPTIONS.semicolons;

// ---- logging -------------------------------------------------------------------------------------------

/** `logging.level`. */
export const DEFAULT_LOG_LEVEL = 'info';
/** `logging.decisions`: one JSON line per denied request. */
export const DEFAULT_DECISION_LOG = 'denied';

// ---- browser sign-in (DESIGN.md §7) --------------------------------------------------------------------

/** `signIn.prefix`: the sidecar's own routes, never forwarded to the application. */
export const DEFAULT_SIGNIN_PREFIX = '/.authz';
/** `signIn.providers[].scopes`: `openid` is always sent. */
export const DEFAULT_SIGNIN_SCOPES: readonly string[] = Object.freeze(['openid', 'profile', 'email']);
/** `signIn.cookie.name`: a `__Host-` cookie is bound to the exact host, https and Path=/. */
export const DEFAULT_SESSION_COOKIE = '__Host-authz';
/** `signIn.cookie.sameSite`. */
export const DEFAULT_COOKIE_SAME_SITE = 'lax';
/** `signIn.session.maxAgeSeconds`: a sign-in lasts a working day at most. */
export const DEFAULT_SESSION_MAX_AGE_SECONDS = 28_800;
/** `signIn.session.refreshBeforeSeconds`. */
export const DEFAULT_REFRESH_BEFORE_SECONDS = 60;
/** `signIn.unauthenticated`: browser navigations are sent to sign in, everything else gets the 401. */
export const DEFAULT_UNAUTHENTICATED = 'auto';
/** `signIn.postLogoutRedirect`. */
export const DEFAULT_POST_LOGOUT_REDIRECT = '/';
/** `signIn.session.redis.keyPrefix`: every key the redis session store writes starts with it. */
export const DEFAULT_REDIS_KEY_PREFIX = 'authz-sidecar:';
