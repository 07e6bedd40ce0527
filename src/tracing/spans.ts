/**
 * The spans of DESIGN.md §9, with the OpenTelemetry API only (the SDK, when tracing is on, is registered
 * behind it by sdk.ts). Doors call these only when tracing is on: with it off, the request path does no
 * tracing work at all.
 *
 * - A SERVER span per request on every door, its parent the context of the call itself: the proxy's
 *   incoming request, the HTTP check request's own headers, the gRPC call's metadata (never the original
 *   request's headers carried inside a CheckRequest: Envoy's ext_authz span is the parent).
 * - Stage spans (authentication, session, policy) as its children, through the engine's StageTracer.
 * - On the proxy door, a CLIENT span for the forwarded request, injected into it (`traceparent`).
 * - Attributes: http.request.method, url.path (canonical), http.response.status_code, authz.frontend,
 *   authz.decision, authz.reason, enduser.id. Never a token, a cookie or another claim value.
 */
import { context, propagation, ROOT_CONTEXT, SpanKind, SpanStatusCode, trace, type Context, type Span, type TextMapGetter } from '@opentelemetry/api';
import type { Decision } from '../core/decision.js';
import type { StageTracer } from '../core/stages.js';

const TRACER = 'authz-sidecar';

type Carrier = Readonly<Record<string, string | readonly string[] | undefined>>;

const getter: TextMapGetter<Carrier> = {
  keys: (carrier) => Object.keys(carrier),
  get(carrier, key) {
    const value = carrier[key.toLowerCase()];
    if (value === undefined) return undefined;
    return typeof value === 'string' ? value : [...value];
  },
};

export interface ServerSpan {
  readonly span: Span;
  readonly context: Context;
}

const KNOWN_METHODS = new Set(['GET', 'HEAD', 'POST', 'PUT', 'DELETE', 'CONNECT', 'OPTIONS', 'TRACE', 'PATCH']);

/** The SERVER span of a request, its parent extracted from the call's own headers or metadata. */
export function startServerSpan(door: string, method: string, carrier: Carrier): ServerSpan {
  const parent = propagation.extract(ROOT_CONTEXT, carrier, getter);
  // A method a client made up (X-Forwarded-Method) names no span: `HTTP` and `_OTHER` (semantic conventions).
  const known = KNOWN_METHODS.has(method);
  const span = trace.getTracer(TRACER).startSpan(
    known ? method : 'HTTP',
    { kind: SpanKind.SERVER, attributes: { 'http.request.method': known ? method : '_OTHER', 'authz.frontend': door } },
    parent,
  );
  return { span, context: trace.setSpan(parent, span) };
}

/** The decision's attributes on the SERVER span (and its status); ends it unless `keepOpen`. */
export function recordDecision(server: ServerSpan, decision: Decision, keepOpen = false): void {
  const { span } = server;
  span.setAttributes({
    'authz.decision': decision.outcome,
    'authz.reason': decision.reason,
    'http.response.status_code': decision.answer.status,
    ...(decision.request === undefined ? {} : { 'url.path': decision.request.path }),
    ...(decision.identity === undefined || decision.identity.anonymous ? {} : { 'enduser.id': decision.identity.subject }),
  });
  if (decision.status >= 500) span.setStatus({ code: SpanStatusCode.ERROR, message: decision.reason });
  if (!keepOpen) span.end();
}

/** The proxy door's CLIENT span for the forwarded request; its context is injected into `headers`. */
export function startClientSpan(server: ServerSpan, method: string, headers: Record<string, string | string[] | undefined>): Span {
  const span = trace.getTracer(TRACER).startSpan(`${method}`, { kind: SpanKind.CLIENT, attributes: { 'http.request.method': method } }, server.context);
  // Our own context replaces whatever trace headers the client sent (the app's parent is this span).
  for (const name of ['traceparent', 'tracestate', 'b3', 'x-b3-traceid', 'x-b3-spanid', 'x-b3-parentspanid', 'x-b3-sampled', 'x-b3-flags']) delete headers[name];
  propagation.inject(trace.setSpan(server.context, span), headers, {
    set(carrier, key, value) {
      carrier[key] = value;
    },
  });
  return span;
}

/** Ends a span with the answer's status code (5xx is an error; 499: the client closed the connection). */
export function endWithStatus(span: Span, status: number): void {
  if (status === 499) {
    span.setAttribute('error.type', 'client_closed');
    span.setStatus({ code: SpanStatusCode.ERROR, message: 'the client closed the connection' });
  } else {
    span.setAttribute('http.response.status_code', status);
    if (status >= 500) span.setStatus({ code: SpanStatusCode.ERROR });
  }
  span.end();
}

/** The ids for the decision log, when the span is recording (sampled). */
export function logIds(server: ServerSpan | undefined): { readonly trace_id: string; readonly span_id: string } | undefined {
  if (server === undefined || !server.span.isRecording()) return undefined;
  const { traceId, spanId } = server.span.spanContext();
  return { trace_id: traceId, span_id: spanId };
}

/** Stage spans for the engine (authentication, session, policy), children of the request's SERVER span. */
export const STAGE_TRACER: StageTracer = {
  async run(name, parent, fn) {
    const span = trace.getTracer(TRACER).startSpan(name, { kind: SpanKind.INTERNAL }, parent as Context);
    try {
      return await context.with(trace.setSpan(parent as Context, span), fn);
    } catch (err) {
      span.setStatus({ code: SpanStatusCode.ERROR });
      throw err;
    } finally {
      span.end();
    }
  },
  runSync(name, parent, fn) {
    const span = trace.getTracer(TRACER).startSpan(name, { kind: SpanKind.INTERNAL }, parent as Context);
    try {
      return fn();
    } finally {
      span.end();
    }
  },
};

/**
 * The fetch of identity provider calls with tracing on: a CLIENT span per call, a child of the stage that
 * made it (carried by the async context), with its context injected into the call. A call made outside a
 * request (a background JWKS refresh, discovery at startup) has no parent and no span.
 */
export async function tracedFetch(input: string | URL | Request, init?: RequestInit): Promise<Response> {
  const parent = context.active();
  if (trace.getSpan(parent) === undefined) return fetch(input, init);
  const url = new URL(input instanceof Request ? input.url : input.toString());
  const method = (init?.method ?? (input instanceof Request ? input.method : 'GET')).toUpperCase();
  const span = trace.getTracer(TRACER).startSpan(method, {
    kind: SpanKind.CLIENT,
    // The server and path only: a query may hold a token (never here, but never risk it).
    attributes: { 'http.request.method': method, 'server.address': url.hostname, 'url.path': url.pathname },
  }, parent);
  const headers = new Headers(init?.headers ?? (input instanceof Request ? input.headers : undefined));
  // Only our trace context goes to the provider: never the client's baggage or tracestate (client-controlled
  // data on our authenticated calls to a third party).
  const own = trace.setSpanContext(ROOT_CONTEXT, { ...span.spanContext(), traceState: undefined });
  propagation.inject(own, headers, {
    set(carrier, key, value) {
      carrier.set(key, value);
    },
  });
  try {
    const response = await fetch(input, { ...init, headers });
    endWithStatus(span, response.status);
    return response;
  } catch (err) {
    span.setStatus({ code: SpanStatusCode.ERROR, message: err instanceof Error ? err.name : 'error' });
    span.end();
    throw err;
  }
}
