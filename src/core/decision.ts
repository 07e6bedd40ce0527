/**
 * Decision: the outcome of `decide()`, independent of any transport. Each front door renders it: the proxy
 * as a forwarded request or an error answer, ext_authz as a CheckResponse, and so on.
 */
import type { AccessRequest } from './access-request.js';
import { problemBody, REASONS, type ProblemBody, type ReasonCode } from './errors.js';
import type { Identity } from './identity.js';

export type Outcome = 'allow' | 'unauthenticated' | 'forbidden' | 'unavailable' | 'badRequest';

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
  /** Headers for the client answer (WWW-Authenticate on 401). */
  readonly responseHeaders: Readonly<Record<string, string>>;
  /** Identity headers to set on the forwarded request (allow only). */
  readonly upstreamHeaders: Readonly<Record<string, string>>;
  /** The query to forward on allow: as received, less token parameters unless forwardToken. */
  readonly upstreamQuery: string | undefined;
  /** In dry-run mode: the policy denied this request (this reason), but it is let through. */
  readonly dryRunDenied?: ReasonCode | undefined;
  readonly requestId: string;
}

export function outcomeOf(reason: ReasonCode): Outcome {
  const status: number = REASONS[reason].status;
  switch (status) {
    case 200:
      return 'allow';
    case 401:
      return 'unauthenticated';
    case 403:
      return 'forbidden';
    case 400:
      return 'badRequest';
    default:
      return 'unavailable';
  }
}

/** The RFC 9457 body every front door sends with a deny. */
export function decisionProblem(decision: Decision): ProblemBody {
  return problemBody(decision.reason, decision.detail, decision.requestId);
}
