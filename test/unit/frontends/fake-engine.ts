/**
 * A fake DecisionEngine for the doors' unit tests: it records every WireRequest a door hands it and
 * answers with a Decision the test builds, so a door's translation (wire in, rendered answer out) is
 * tested without tokens or policies. Also: a silent logger and raw HTTP/1.1 exchanges over a socket.
 */
import type { FastifyBaseLogger } from 'fastify';
import { pino } from 'pino';
import type { AccessRequest, WireRequest } from '../../../src/core/access-request.js';
import type { DecisionEngine, Readiness } from '../../../src/core/decide.js';
import { NO_UPSTREAM_CHANGES, problemAnswer, type Decision, type UpstreamChanges } from '../../../src/core/decision.js';
import { REASONS, type ReasonCode } from '../../../src/core/errors.js';
import type { Identity } from '../../../src/core/identity.js';
import { rawSocketExchange } from '../../support/raw-http.js';

export const silentLogger: FastifyBaseLogger = pino({ level: 'silent' });

export const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

export interface FakeEngine extends DecisionEngine {
  /** Every WireRequest decide() got, in order. */
  readonly calls: WireRequest[];
  /** What the next decide() calls answer (a function of the wire request). */
  answer: (wire: WireRequest) => Decision | Promise<Decision>;
  readinessValue: Readiness;
}

export function fakeEngine(answer: (wire: WireRequest) => Decision | Promise<Decision> = (w) => allow(w)): FakeEngine {
  const engine: FakeEngine = {
    calls: [],
    answer,
    readinessValue: { ready: true, missing: [] },
    async decide(wire) {
      engine.calls.push(wire);
      return engine.answer(wire);
    },
    readiness: () => engine.readinessValue,
    close() {},
  };
  return engine;
}

const ALICE: Identity = { anonymous: false, subject: 'alice', issuer: 'https://idp.example', roles: ['reader'], scopes: [], claims: {} };

/** The AccessRequest a decision is about: the wire request, with a canonical path and host of the test's choice. */
export function accessRequest(wire: WireRequest, overrides: Partial<AccessRequest> = {}): AccessRequest {
  return {
    frontDoor: wire.frontDoor,
    method: wire.method,
    path: wire.target.split('?')[0] ?? '/',
    query: wire.target.includes('?') ? wire.target.slice(wire.target.indexOf('?') + 1) : undefined,
    host: wire.host,
    headers: wire.headers,
    peer: wire.peer,
    requestId: wire.requestId,
    ...overrides,
  };
}

/** An allow for this wire request with these upstream changes. */
export function allow(wire: WireRequest, upstream: Partial<UpstreamChanges> = {}, request: Partial<AccessRequest> = {}): Decision {
  return {
    outcome: 'allow',
    status: 200,
    reason: 'ALLOWED',
    detail: 'allowed',
    request: accessRequest(wire, request),
    identity: ALICE,
    policy: ['p', 'role:reader', '/*', 'GET'],
    policyRequest: ['role:reader', '/x', 'GET'],
    upstream: { ...NO_UPSTREAM_CHANGES, ...upstream },
    answer: { status: 200, headers: {}, body: '' },
    requestId: wire.requestId,
  };
}

/** A deny for this wire request: the reason's problem answer, with extra answer headers. */
export function deny(wire: WireRequest, reason: ReasonCode, headers: Record<string, string> = {}): Decision {
  const status = REASONS[reason].status;
  return {
    outcome: status === 401 ? 'unauthenticated' : status === 403 ? 'forbidden' : status === 400 ? 'badRequest' : 'unavailable',
    status,
    reason,
    detail: `denied for the test (${reason})`,
    request: accessRequest(wire),
    identity: undefined,
    policy: undefined,
    policyRequest: undefined,
    upstream: NO_UPSTREAM_CHANGES,
    answer: problemAnswer(reason, `denied for the test (${reason})`, wire.requestId, headers),
    requestId: wire.requestId,
  };
}

export interface RawAnswer {
  readonly status: number;
  /** Header lines in order, names lower-cased; a repeated header appears twice. */
  readonly headers: ReadonlyArray<readonly [string, string]>;
  readonly body: string;
}

export function header(answer: RawAnswer, name: string): string | undefined {
  return answer.headers.find(([n]) => n === name)?.[1];
}

/**
 * Sends the request line and header lines (no terminating blank line) as raw bytes and reads the
 * answer until the server closes the connection (a `Connection: close` is added unless `close: false`).
 */
export async function rawExchange(address: string, lines: readonly string[], options: { readonly close?: boolean; readonly body?: string } = {}): Promise<RawAnswer> {
  const [host = '', port = ''] = address.split(/:(?=\d+$)/);
  const bytes = `${[...lines, ...(options.close === false ? [] : ['Connection: close']), '', ''].join('\r\n')}${options.body ?? ''}`;
  const text = await rawSocketExchange(host, Number(port), bytes, 4_000);
  const end = text.indexOf('\r\n\r\n');
  const head = end < 0 ? text : text.slice(0, end);
  const [statusLine = '', ...headerLines] = head.split('\r\n');
  const headers: Array<[string, string]> = [];
  for (const line of headerLines) {
    const i = line.indexOf(':');
    if (i > 0) headers.push([line.slice(0, i).toLowerCase(), line.slice(i + 1).trim()]);
  }
  let body = end < 0 ? '' : text.slice(end + 4);
  if (/chunked/i.test(headers.find(([n]) => n === 'transfer-encoding')?.[1] ?? '')) body = unchunk(body);
  return { status: Number(statusLine.split(' ')[1]), headers, body };
}

function unchunk(text: string): string {
  let out = '';
  let rest = text;
  for (;;) {
    const eol = rest.indexOf('\r\n');
    if (eol < 0) return out;
    const size = parseInt(rest.slice(0, eol), 16);
    if (!(size > 0)) return out;
    out += rest.slice(eol + 2, eol + 2 + size);
    rest = rest.slice(eol + 2 + size + 2);
  }
}

/** A problem+json answer whose body's `status` is the answer's own status (the invariant of every door). */
export function problemOf(status: number, contentType: string | null | undefined, body: string): { status: number; code: string; requestId?: string; detail: string } {
  if (!contentType?.startsWith('application/problem+json')) throw new Error(`expected application/problem+json, got ${contentType ?? 'none'} (${status}: ${body})`);
  const parsed = JSON.parse(body) as { status: number; code: string; requestId?: string; detail: string };
  if (parsed.status !== status) throw new Error(`the problem body says ${parsed.status}, the answer is ${status}`);
  return parsed;
}
