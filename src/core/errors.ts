/**
 * The catalogue of reason codes. Every decision and every error answer carries one of these stable codes;
 * docs/reason-codes.md lists them all (a unit test keeps the two in step). A code maps to exactly one HTTP status so
 * that every front door renders the same outcome the same way.
 */

export interface ReasonSpec {
  readonly status: number;
  readonly title: string;
  /** RFC 6750 §3.1 error code for the WWW-Authenticate challenge, when the status is 401 or 400 for a token. */
  readonly bearerError?: 'invalid_request' | 'invalid_token';
}

export const REASONS = {
  ALLOWED: { status: 200, title: 'Allowed' },
  POLICY_DENIED: { status: 403, title: 'Forbidden' },
  POLICY_ERROR: { status: 403, title: 'Forbidden' },
  CREDENTIALS_MISSING: { status: 401, title: 'Unauthorized' },
  CREDENTIALS_MALFORMED: { status: 400, title: 'Bad Request', bearerError: 'invalid_request' },
  CREDENTIALS_CONFLICT: { status: 400, title: 'Bad Request', bearerError: 'invalid_request' },
  TOKEN_INVALID: { status: 401, title: 'Unauthorized', bearerError: 'invalid_token' },
  TOKEN_EXPIRED: { status: 401, title: 'Unauthorized', bearerError: 'invalid_token' },
  TOKEN_AUDIENCE: { status: 401, title: 'Unauthorized', bearerError: 'invalid_token' },
  TOKEN_ISSUER: { status: 401, title: 'Unauthorized', bearerError: 'invalid_token' },
  TOKEN_CLAIMS: { status: 401, title: 'Unauthorized', bearerError: 'invalid_token' },
  IDENTITY_UNRENDERABLE: { status: 401, title: 'Unauthorized', bearerError: 'invalid_token' },
  KEYS_UNAVAILABLE: { status: 503, title: 'Service Unavailable' },
  INTROSPECTION_UNAVAILABLE: { status: 503, title: 'Service Unavailable' },
  PATH_TARGET_FORM: { status: 400, title: 'Bad Request' },
  PATH_FRAGMENT: { status: 400, title: 'Bad Request' },
  PATH_CONTROL_CHAR: { status: 400, title: 'Bad Request' },
  PATH_BAD_ENCODING: { status: 400, title: 'Bad Request' },
  PATH_BACKSLASH: { status: 400, title: 'Bad Request' },
  PATH_ENCODED_SLASH: { status: 400, title: 'Bad Request' },
  PATH_SEMICOLON: { status: 400, title: 'Bad Request' },
  PATH_NOT_CANONICAL: { status: 400, title: 'Bad Request' },
  UPSTREAM_UNAVAILABLE: { status: 502, title: 'Bad Gateway' },
  UPSTREAM_TIMEOUT: { status: 504, title: 'Gateway Timeout' },
  BAD_REQUEST: { status: 400, title: 'Bad Request' },
  HEADERS_TOO_MANY: { status: 431, title: 'Request Header Fields Too Large' },
  BODY_TOO_LARGE: { status: 413, title: 'Content Too Large' },
  REQUEST_TIMEOUT: { status: 408, title: 'Request Timeout' },
  NOT_FOUND: { status: 404, title: 'Not Found' },
  INTERNAL: { status: 500, title: 'Internal Server Error' },
  SHUTTING_DOWN: { status: 503, title: 'Service Unavailable' },
  SIGNIN_REDIRECT: { status: 302, title: 'Found' },
  SIGNIN_PAGE: { status: 200, title: 'OK' },
  SIGNIN_FAILED: { status: 400, title: 'Bad Request' },
  SIGNIN_UNAVAILABLE: { status: 503, title: 'Service Unavailable' },
  SESSION_UNAVAILABLE: { status: 503, title: 'Service Unavailable' },
  CSRF_REJECTED: { status: 403, title: 'Forbidden' },
  METHOD_NOT_ALLOWED: { status: 405, title: 'Method Not Allowed' },
} as const satisfies Record<string, ReasonSpec>;

export type ReasonCode = keyof typeof REASONS;

/** RFC 9457 problem details. `type` is a URN built from the reason code so clients can switch on it. */
export interface ProblemBody {
  readonly type: string;
  readonly title: string;
  readonly status: number;
  readonly detail: string;
  readonly code: ReasonCode;
  readonly requestId?: string;
}

export const PROBLEM_CONTENT_TYPE = 'application/problem+json';

export function problemBody(code: ReasonCode, detail: string, requestId?: string): ProblemBody {
  const spec: ReasonSpec = REASONS[code];
  return {
    type: `urn:authz-sidecar:problem:${code}`,
    title: spec.title,
    status: spec.status,
    detail,
    code,
    ...(requestId === undefined ? {} : { requestId }),
  };
}

/**
 * Codes of the errors that stop a start, a reload or a command (as jose's `JOSEError.code` and fastify's
 * `FST_ERR_*`), beside the reason codes above that refusals carry. Each names what went wrong.
 */
export const ERROR_CODES = {
  /** The config file cannot be read, is not YAML, or fails the schema (ConfigError). */
  CONFIG_INVALID: 'the configuration is invalid',
  /** The Casbin model or policy cannot be read or loaded, or fails the lint (PolicyLoadError). */
  POLICY_INVALID: 'the model or policy cannot be loaded',
  /** No key set of an issuer could be fetched yet (KeysUnavailableError); a 503, never an allow. */
  KEYS_UNAVAILABLE: 'the keys of the token issuer are unavailable',
  /** The command line is wrong (UsageError); the CLI prints its usage and exits 2. */
  USAGE: 'bad command-line usage',
} as const;

export type ErrorCode = keyof typeof ERROR_CODES;

/**
 * The base of every error of ours: a stable `code` to switch on, a message for people, and the library
 * error behind it as `cause` (jose, openid-client, casbin, yaml, fs), so that nothing is lost in the
 * wrapping. Messages never hold a token, a secret or a claim set.
 */
export class SidecarError<C extends string = ErrorCode | ReasonCode> extends Error {
  readonly code: C;

  constructor(code: C, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'SidecarError';
    this.code = code;
  }
}

/**
 * A run-time failure with a stable code (bad input, an unreachable IdP). Caller mistakes at build time are
 * TypeErrors instead. `detail` is safe to show to a client: never a token, a secret or claims.
 */
export class AuthzSidecarError extends SidecarError<ReasonCode> {
  readonly detail: string;

  constructor(code: ReasonCode, detail: string, options?: { cause?: unknown }) {
    super(code, `${code}: ${detail}`, options);
    this.name = 'AuthzSidecarError';
    this.detail = detail;
  }

  get status(): number {
    return REASONS[this.code].status;
  }
}
