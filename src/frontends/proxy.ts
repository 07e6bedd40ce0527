/**
 * The reverse-proxy front door (`listen`): translates an HTTP request into a WireRequest, asks the engine,
 * and either answers the deny itself or forwards the request with @fastify/http-proxy. Nothing about tokens
 * or policies lives here.
 *
 * The canonical path is computed before routing (fastify's rewriteUrl) and becomes the request URL, so the
 * router, the policy and the forwarded request all see the same path: a check on the raw URL followed by a
 * proxy that folds `/./admin` later is the bypass this avoids.
 */
import type { IncomingMessage } from 'node:http';
import { connect as netConnect } from 'node:net';
import type { Duplex } from 'node:stream';
import httpProxy from '@fastify/http-proxy';
import type { ClientOptions } from 'ws';
import Fastify, { LogController, type FastifyBaseLogger, type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import { headerMap } from '../core/access-request.js';
import type { CanonicalTarget } from '../core/canonical-path.js';
import type { DecisionEngine } from '../core/decide.js';
import { decisionProblem, type Decision } from '../core/decision.js';
import { PROBLEM_CONTENT_TYPE, problemBody, REASONS, type ReasonCode } from '../core/errors.js';
import type { UpstreamAddress } from '../config/address.js';
import { requestIdOrNew } from './check-answer.js';
import type { DecisionObserver } from './decision-log.js';
import type { Metrics } from '../admin/metrics.js';
import { createForwarder } from './forward.js';

export interface ProxyOptions {
  readonly engine: DecisionEngine;
  readonly upstream: UpstreamAddress;
  readonly timeoutSeconds: number;
  readonly websockets: boolean;
  readonly logger: FastifyBaseLogger;
  readonly observe: DecisionObserver;
  /** Where upstream latency is observed. */
  readonly metrics?: Metrics | undefined;
}

/**
 * Slowloris: a client gets this long to send its request headers (node checks every second), then 408.
 * Bodies are streamed to the app and bounded by upstream.timeoutSeconds on that side.
 */
export const HEADERS_TIMEOUT_MS = 10_000;
export const SERVER_OPTIONS = { headersTimeout: HEADERS_TIMEOUT_MS, connectionsCheckingInterval: 1_000 };
/**
 * Node's parser keeps only the first headers (about a thousand fields) and silently drops the rest, so a
 * header past them would be invisible to the decision. A request with this many fields is refused (431).
 */
export const MAX_HEADER_COUNT = 1000;

export function tooManyHeaders(req: IncomingMessage): boolean {
  return req.rawHeaders.length >= MAX_HEADER_COUNT * 2;
}

/** Upstream keep-alive pool size; one sidecar fronts one local app. */
export const UPSTREAM_CONNECTIONS = 128;
const REQUEST_HOP_BY_HOP = ['keep-alive', 'proxy-connection', 'te', 'trailer', 'upgrade', 'expect'];
/** Hop-by-hop and handshake headers that the WebSocket client sets itself (RFC 9110 §7.6.1, RFC 6455 §4.1). */
const WS_OWN_HEADERS = new Set([
  'host', 'connection', 'upgrade', 'content-length', 'transfer-encoding', 'keep-alive', 'proxy-connection', 'te', 'trailer',
  'sec-websocket-key', 'sec-websocket-version', 'sec-websocket-extensions', 'sec-websocket-protocol', 'sec-websocket-accept',
]);

/** The part of a fastify reply the problem renderer needs (any raw server type). */
interface ProblemReply<R> {
  readonly request: { readonly id: string };
  code(status: number): R;
}
interface ChainReply {
  headers(values: Record<string, string>): ChainReply;
  type(contentType: string): ChainReply;
  send(payload: unknown): unknown;
}

export function sendProblem<R extends ChainReply>(
  reply: ProblemReply<R>,
  code: ReasonCode,
  detail: string,
  headers: Readonly<Record<string, string>> = {},
): unknown {
  return reply
    .code(REASONS[code].status)
    .headers(headers)
    .type(PROBLEM_CONTENT_TYPE)
    .send(problemBody(code, detail, reply.request.id));
}

function sendDecision(reply: FastifyReply, decision: Decision): unknown {
  return reply.code(decision.status).headers(decision.responseHeaders).type(PROBLEM_CONTENT_TYPE).send(decisionProblem(decision));
}

/** The request id is taken from the client when it is a sane token (it goes into logs), else created. */
export function requestIdOf(req: IncomingMessage): string {
  const given = req.headers['x-request-id'];
  return requestIdOrNew(typeof given === 'string' ? given : undefined);
}

/** CONNECT asks for a tunnel, which a sidecar never opens: 400 (the canonical rules refuse authority-form). */
export function refuseConnect(_req: IncomingMessage, socket: Duplex): void {
  const body = JSON.stringify(problemBody('PATH_TARGET_FORM', 'CONNECT is not accepted'));
  socket.end(`HTTP/1.1 400 Bad Request\r\ncontent-type: ${PROBLEM_CONTENT_TYPE}\r\ncontent-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n${body}`);
}

export async function createProxyServer(options: ProxyOptions): Promise<FastifyInstance> {
  const { engine, upstream } = options;
  const canonical = new WeakMap<IncomingMessage, CanonicalTarget>();
  const allowed = new WeakMap<object, Decision>();
  const forwardedAt = new WeakMap<object, bigint>();

  const app = Fastify({
    loggerInstance: options.logger,
    logController: new LogController({ disableRequestLogging: true }),
    requestIdHeader: false,
    genReqId: requestIdOf,
    return503OnClosing: true,
    http: SERVER_OPTIONS,
    rewriteUrl(req): string {
      const target = engine.canonicalize(req.method ?? 'GET', req.url ?? '');
      if (target === undefined) return '/'; // rejected in onRequest with the reason from decide()
      canonical.set(req, target);
      return target.query === undefined ? target.path : `${target.path}?${target.query}`;
    },
  });

  // Node hands CONNECT to a 'connect' listener and closes the socket without an answer when there is none.
  app.server.on('connect', refuseConnect);

  app.setErrorHandler((error: { statusCode?: number; code?: string }, request, reply) => {
    const status = error.statusCode ?? 500;
    if (status >= 400 && status < 500) return sendProblem(reply, 'BAD_REQUEST', 'the request could not be processed');
    // Never a stack trace to clients; the log has the error (without headers: they may hold tokens).
    request.log.error({ err: error, requestId: request.id }, 'unexpected error');
    return sendProblem(reply, 'INTERNAL', 'internal error');
  });
  app.setNotFoundHandler((_request, reply) => sendProblem(reply, 'NOT_FOUND', 'no route for this method'));

  app.addHook('onRequest', async (request, reply) => {
    const raw = request.raw;
    if (tooManyHeaders(raw)) {
      sendProblem(reply, 'HEADERS_TOO_MANY', `more than ${MAX_HEADER_COUNT - 1} header fields`);
      return reply;
    }
    // Spoofed identity headers are removed before anything else, on every route, WebSocket upgrades too.
    for (const name of Object.keys(raw.headers)) {
      if (engine.isClientIdentityHeader(name)) delete raw.headers[name];
    }
    const started = process.hrtime.bigint();
    const decision = await engine.decide({
      frontDoor: 'proxy',
      method: raw.method ?? 'GET',
      target: (raw as IncomingMessage & { originalUrl?: string }).originalUrl ?? raw.url ?? '',
      canonical: canonical.get(raw),
      host: raw.headers.host ?? '',
      headers: headerMap(Object.entries(raw.headersDistinct)),
      peer: '',
      requestId: request.id,
    });
    options.observe(decision, started, request.log);
    if (decision.outcome !== 'allow') {
      sendDecision(reply, decision);
      return reply;
    }
    allowed.set(request, decision);
    forwardedAt.set(request, process.hrtime.bigint());
    return undefined;
  });

  /** Headers for the upstream request, HTTP and WebSocket alike: identity headers from the decision only. */
  function upstreamHeaders(
    request: { readonly id: string; readonly headers: Readonly<Record<string, string | string[] | undefined>> },
    headers: Record<string, string | string[] | undefined>,
  ): Record<string, string | string[] | undefined> {
    // Client identity headers were already removed from the raw request in onRequest. Hop-by-hop headers
    // (RFC 9110 §7.6.1) and Expect describe the client's connection, not the request: the upstream hop has
    // its own (undici refuses to send Expect and Keep-Alive at all).
    for (const name of REQUEST_HOP_BY_HOP) delete headers[name];
    const decision = allowed.get(request);
    engine.scrubHeadersForUpstream(headers);
    if (decision !== undefined) Object.assign(headers, decision.upstreamHeaders);
    headers['x-request-id'] = request.id;
    // The host the decision was made for (an absolute-form target's authority wins over Host).
    const host = decision?.request?.host ?? request.headers.host;
    if (typeof host === 'string' && host !== '') headers['x-forwarded-host'] = host;
    return headers;
  }

  const base = upstream.kind === 'unix' ? `unix+http://${encodeURIComponent(upstream.path)}/` : upstream.origin;
  const timeoutMs = Math.round(options.timeoutSeconds * 1000);
  const forwarder = createForwarder({ upstream, timeoutMs, connections: UPSTREAM_CONNECTIONS });
  app.addHook('onClose', async () => forwarder.close());

  const wsClientOptions = {
    headers: {},
    // ws ignores socketPath in options; a custom connection factory reaches a unix-socket upstream.
    ...(upstream.kind === 'unix' ? { createConnection: () => netConnect(upstream.path) } : {}),
    // @fastify/http-proxy applies replyOptions.rewriteRequestHeaders to HTTP only; WebSocket handshakes
    // get the same treatment here, or they would reach the app without identity headers.
    queryString: (_search: string, _url: string, request: FastifyRequest) => allowed.get(request)?.upstreamQuery ?? '',
    rewriteRequestHeaders: (_headers: Record<string, string>, request: FastifyRequest) => {
      const copied: Record<string, string | string[] | undefined> = {};
      for (const [name, value] of Object.entries(request.headers)) {
        if (!WS_OWN_HEADERS.has(name)) copied[name] = value;
      }
      return upstreamHeaders(request, copied);
    },
  };
  const websocketOptions = {
    websocket: true as const,
    ...(upstream.kind === 'unix' ? { wsUpstream: 'ws://localhost' } : {}),
    // rewriteRequestHeaders is read at run time but missing from the plugin's ClientOptions type.
    wsClientOptions: wsClientOptions as ClientOptions,
  };

  await app.register(httpProxy, {
    upstream: base,
    disableRequestLogging: true,
    httpMethods: app.supportedMethods.filter((m) => m !== 'CONNECT'),
    ...(options.websockets ? websocketOptions : { websocket: false as const }),
    // HTTP is forwarded by our own undici pool (forward.ts); @fastify/http-proxy keeps routing and WebSockets.
    handler(request, reply) {
      const raw = request.raw;
      const url = raw.url ?? '/';
      const query = allowed.get(request)?.upstreamQuery;
      // The canonical path (rewriteUrl), with the query exactly as received minus token parameters.
      const path = `${url.split('?', 1)[0] ?? '/'}${query === undefined || query === '' ? '' : `?${query}`}`;
      const headers: Record<string, string | string[] | undefined> = {};
      const connection = raw.headers.connection;
      const named = new Set((connection ?? '').split(',').map((n) => n.trim().toLowerCase()));
      for (const name of Object.keys(raw.headers)) {
        if (name !== 'connection' && !named.has(name)) headers[name] = raw.headers[name];
      }
      reply.hijack();
      forwarder.forward({ method: raw.method ?? 'GET', path, headers: upstreamHeaders(request, headers), raw }, reply.raw, {
        onResponse(status) {
          const started = forwardedAt.get(request);
          if (started !== undefined && options.metrics !== undefined) {
            const seconds = Number(process.hrtime.bigint() - started) / 1e9;
            options.metrics.upstreamDuration.observe({ status_class: `${Math.floor(status / 100)}xx` }, seconds);
          }
        },
        onFailure(kind, error) {
          request.log.warn({ requestId: request.id, upstreamError: error.message }, 'upstream request failed');
          const code: ReasonCode = kind === 'timeout' ? 'UPSTREAM_TIMEOUT' : 'UPSTREAM_UNAVAILABLE';
          const body = JSON.stringify(problemBody(code, kind === 'timeout' ? 'the application did not answer in time' : 'the application is not reachable', request.id));
          if (!reply.raw.writableEnded) {
            reply.raw.writeHead(REASONS[code].status, { 'content-type': PROBLEM_CONTENT_TYPE, 'content-length': Buffer.byteLength(body) });
            reply.raw.end(body);
          }
        },
      });
    },
  });
  return app;
}
