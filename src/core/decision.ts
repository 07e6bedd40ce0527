/**
 * Decision: the outcome of `decide()`, independent of any transport, and complete: what to change on the
 * forwarded request and what to answer the client. Each front door only renders it (the proxy as a
 * forwarded request or an error answer, ext_authz as a CheckResponse, forward-auth as 200 or the deny),
 * never calling back into the engine.
 */
import type { AccessRequest } from './access-request.js';
import { PROBLEM_CONTENT_TYPE, problemBody, REASONS, type ReasonCode } from './errors.js';
import type { Identity } from './identity.js';

/** `signIn`: a sign-in route's answer or the redirect to sign in (DESIGN.md §7), rendered like a deny. */
export type Outcome = 'allow' | 'unauthenticated' | 'forbidden' | 'unavailable' | 'badRequest' | 'signIn';

/** Response header values: a list for a header sent several times (Set-Cookie). */
export type AnswerHeaders = Readonly<Record<string, string | readonly string[]>>;

/** What to change on the request the proxy forwards to the application (allow only; empty on a deny). */
export interface UpstreamChanges {
  /** Headers to set, overwriting a client's copy: the identity headers, a rewritten Cookie. */
  readonly set: Readonly<Record<string, string>>;
  /**
   * Headers to remove (lower-case), never one in `set` (Envoy applies removals after additions): every
   * identity and override header the sidecar owns, each client identity header seen, and the token headers
   * unless forwardToken.
   */
  readonly remove: readonly string[];
  /** The query to forward: as received, less token parameters unless forwardToken; undefined when none. */
  readonly query: string | undefined;
  /** Names of the query parameters dropped from `query` (for doors that remove them by name). */
  readonly removeQuery: readonly string[];
}

/**
 * The answer for the client: a deny's status, headers (WWW-Authenticate) and problem body, or a sign-in
 * route's answer. On allow: status 200 and the headers to add to the application's answer (a refreshed
 * session's Set-Cookie), usually none.
 */
export interface ClientAnswer {
  readonly status: number;
  readonly headers: AnswerHeaders;
  /** The RFC 9457 problem+json body of a deny; '' on allow. */
  readonly body: string;
}

export interface Decision {
  readonly outcome: Outcome;
  readonly status: number;
  readonly reason: ReasonCode;
  /** Safe for clients: never a token, a secret or a claim value. */
  readonly detail: string;
  /** The canonical request; undefined when the target itself was rejected. */
  readonly request: AccessRequest | undefined;
  readonly identity: Identity | undefined;
  /** The policy line that decided (`p, role:reader, /orders/:id, GET`), when one matched. */
  readonly policy: readonly string[] | undefined;
  /** The request tuple the policy was asked about (Casbin's `r`), when the policy was asked. */
  readonly policyRequest: readonly string[] | undefined;
  readonly upstream: UpstreamChanges;
  readonly answer: ClientAnswer;
  /** In dry-run mode: the policy denied this request (this reason), but it is let through. */
  readonly dryRunDenied?: ReasonCode | undefined;
  readonly requestId: string;
}

export function outcomeOf(reason: ReasonCode): Outcome {
  if (reason === 'SIGNIN_REDIRECT' || reason === 'SIGNIN_PAGE') return 'signIn';
  const status: number = REASONS[reason].status;
  switch (status) {
    case 200:
      return 'allow';
    case 401:
      return 'unauthenticated';
    case 403:
      return 'forbidden';
    default:
      // Every other 4xx (400, 404, 405, 408, 413, 431) is the request's fault; 5xx is ours or the app's.
      return status >= 400 && status < 500 ? 'badRequest' : 'unavailable';
  }
}

export const NO_UPSTREAM_CHANGES: UpstreamChanges = Object.freeze({ set: Object.freeze({}), remove: Object.freeze([]), query: undefined, removeQuery: Object.freeze([]) });

/**
 * The problem+json answer of a reason code: the one place where a status and a body are put together, so
 * the two always agree. Every refusal of every door (decisions and the sidecar's own) is built here.
 */
export function problemAnswer(code: ReasonCode, detail: string, requestId?: string, headers: AnswerHeaders = {}): ClientAnswer {
  return {
    status: REASONS[code].status,
    headers: { ...headers, 'content-type': PROBLEM_CONTENT_TYPE },
    body: JSON.stringify(problemBody(code, detail, requestId)),
  };
}
