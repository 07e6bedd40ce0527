/**
 * What the check-style doors (ext_authz gRPC and HTTP, forward-auth) tell their proxy about the request it
 * is about to forward: identity headers to set, and headers to remove (the token unless forwardToken, the
 * token cookie, client identity headers the sidecar does not overwrite itself). Envoy applies removals
 * after additions (DESIGN.md §3), so a header the sidecar sets is never in the removal list.
 */
import { randomUUID } from 'node:crypto';
import type { ServerResponse } from 'node:http';
import type { HeaderMap } from '../core/access-request.js';
import type { DecisionEngine } from '../core/decide.js';
import { decisionProblem, type Decision } from '../core/decision.js';
import { PROBLEM_CONTENT_TYPE, problemBody, type ReasonCode } from '../core/errors.js';
import type { ForwardedHeaders } from '../core/stages.js';

/** A request id taken from a client when it is a sane token (it goes into logs), else a new one. */
const REQUEST_ID = /^[A-Za-z0-9._:-]{1,128}$/;

export function requestIdOrNew(given: string | undefined): string {
  return given !== undefined && REQUEST_ID.test(given) ? given : randomUUID();
}

export interface UpstreamChanges {
  /** Headers to set (overwrite) on the forwarded request. */
  readonly set: Readonly<Record<string, string>>;
  /** Headers to remove from the forwarded request. */
  readonly remove: readonly string[];
  /** Query parameters to remove (token parameters), for doors that can. */
  readonly removeQuery: readonly string[];
}

/** The request id of a check: the original request's x-request-id when sane, else a new one. */
export function checkRequestId(headers: HeaderMap, fallback?: string): string {
  return requestIdOrNew(headers['x-request-id']?.[0] ?? fallback);
}

function queryNames(query: string | undefined): string[] {
  if (query === undefined || query === '') return [];
  return query.split('&').map((pair) => {
    const eq = pair.indexOf('=');
    return eq === -1 ? pair : pair.slice(0, eq);
  });
}

export function upstreamChanges(engine: DecisionEngine, headers: HeaderMap, decision: Decision): UpstreamChanges {
  const set: Record<string, string> = { ...decision.upstreamHeaders };
  // Every header the sidecar owns goes, seen in the check or not; plus any other spoofed one that was seen.
  const remove = new Set<string>(engine.identityHeaderNames);
  for (const name of Object.keys(headers)) {
    if (engine.isClientIdentityHeader(name) && !(name in set)) remove.add(name);
  }
  // Let the engine scrub a copy of the headers it may change (token headers, cookies), then express the
  // difference as set/remove.
  const scrubbed: ForwardedHeaders = {};
  const scrubbable = [...engine.tokenHeaders, 'cookie'].filter((name) => headers[name] !== undefined);
  for (const name of scrubbable) scrubbed[name] = name === 'cookie' ? headers[name]!.join('; ') : [...headers[name]!];
  engine.scrubHeadersForUpstream(scrubbed);
  for (const name of scrubbable) {
    const after = scrubbed[name];
    if (after === undefined) remove.add(name);
    else if (name === 'cookie' && after !== headers['cookie']?.join('; ') && typeof after === 'string') set['cookie'] = after;
  }
  const kept = new Set(queryNames(decision.upstreamQuery));
  const removeQuery = [...new Set(queryNames(decision.request?.query))].filter((n) => !kept.has(n));
  return { set, remove: [...remove].filter((n) => !(n in set)), removeQuery };
}

export interface DenyAnswer {
  readonly status: number;
  readonly headers: Readonly<Record<string, string>>;
  readonly body: string;
}

/** The deny answer a proxy passes to its client: status, WWW-Authenticate, problem+json body. */
export function denyAnswer(decision: Decision): DenyAnswer {
  return {
    status: decision.status,
    headers: { ...decision.responseHeaders, 'content-type': PROBLEM_CONTENT_TYPE },
    body: JSON.stringify(decisionProblem(decision)),
  };
}

/** Writes a whole answer on a plain node:http response (the doors that do not answer through fastify). */
export function writeAnswer(res: ServerResponse, status: number, headers: Readonly<Record<string, string>>, body = ''): void {
  res.writeHead(status, { ...headers, 'content-length': String(Buffer.byteLength(body)) });
  res.end(body);
}

/** A problem+json answer of the sidecar's own (not a decision's) on a plain node:http response. */
export function writeProblem(res: ServerResponse, status: number, code: ReasonCode, detail: string, requestId: string): void {
  writeAnswer(res, status, { 'content-type': PROBLEM_CONTENT_TYPE }, JSON.stringify(problemBody(code, detail, requestId)));
}
