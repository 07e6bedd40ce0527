/**
 * The reverse-proxy front door (`listen`): translates an HTTP request into a WireRequest, asks the engine,
 * and either answers the deny itself or forwards the request. Nothing about tokens or policies lives here.
 * Plain HTTP is served by the door's own request listener and forwarded by forward.ts (an undici pool);
 * WebSocket upgrades go through fastify's routing to @fastify/http-proxy.
 *
 * The canonical path is computed first and is exactly the path decided on and forwarded (for upgrades it
 * becomes the request URL before routing, in fastify's rewriteUrl): a check on the raw URL followed by a
 * proxy that folds `/./admin` later is the bypass this avoids.
 */
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
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
import { denyAnswer, requestIdOrNew, writeAnswer, writeProblem } from './check-answer.js';
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
/**
 * The door's own node:http servers (no longer fastify's) keep fastify's defaults: idle keep-alive
 * connections live 72 s (longer than the usual 60 s of load balancers and ingress proxies, so the client
 * side closes first and never sends onto a connection being closed), and request bodies have no overall
 * time limit (node's default of 300 s would cut long uploads).
 */
export const KEEP_ALIVE_TIMEOUT_MS = 72_000;
export const SERVER_OPTIONS = {
  headersTimeout: HEADERS_TIMEOUT_MS,
  connectionsCheckingInterval: 1_000,
  keepAliveTimeout: KEEP_ALIVE_TIMEOUT_MS,
  requestTimeout: 0,
};
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

  let closing = false;
  const app = Fastify({
    loggerInstance: options.logger,
    logController: new LogController({ disableRequestLogging: true }),
    requestIdHeader: false,
    genReqId: requestIdOf,
    return503OnClosing: true,
    // Plain HTTP requests are served by serveHttp below, without fastify's routing, hooks and reply; fastify
    // (and @fastify/http-proxy) keep WebSocket upgrades, which arrive as 'upgrade' events, not requests.
    serverFactory: () => createServer(SERVER_OPTIONS, (req, res) => serveHttp(req, res)),
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

  app.addHook('preClose', async () => {
    closing = true;
  });

  /**
   * Every request's decision, plain HTTP and WebSocket upgrade alike. Spoofed identity headers are removed
   * from the request first, so nothing after this sees them.
   */
  async function authorize(raw: IncomingMessage, target: string, canonicalTarget: CanonicalTarget | undefined, requestId: string): Promise<Decision> {
    for (const name of Object.keys(raw.headers)) {
      if (engine.isClientIdentityHeader(name)) delete raw.headers[name];
    }
    const started = process.hrtime.bigint();
    const decision = await engine.decide({
      frontDoor: 'proxy',
      method: raw.method ?? 'GET',
      target,
      canonical: canonicalTarget,
      host: raw.headers.host ?? '',
      headers: headerMap(Object.entries(raw.headersDistinct)),
      peer: '',
      requestId,
    });
    options.observe(decision, started, options.logger);
    return decision;
  }

  // WebSocket upgrades: through fastify's routing, so @fastify/http-proxy can take the socket over.
  app.addHook('onRequest', async (request, reply) => {
    const raw = request.raw;
    if (tooManyHeaders(raw)) {
      sendProblem(reply, 'HEADERS_TOO_MANY', `more than ${MAX_HEADER_COUNT - 1} header fields`);
      return reply;
    }
    const target = (raw as IncomingMessage & { originalUrl?: string }).originalUrl ?? raw.url ?? '';
    const decision = await authorize(raw, target, canonical.get(raw), request.id);
    if (decision.outcome !== 'allow') {
      sendDecision(reply, decision);
      return reply;
    }
    allowed.set(request, decision);
    return undefined;
  });

  /** Headers for the upstream request, HTTP and WebSocket alike: identity headers from the decision only. */
  function upstreamHeaders(
    decision: Decision | undefined,
    requestId: string,
    clientHost: string | undefined,
    headers: Record<string, string | string[] | undefined>,
  ): Record<string, string | string[] | undefined> {
    // Client identity headers were already removed from the raw request in authorize(). Hop-by-hop headers
    // (RFC 9110 §7.6.1) and Expect describe the client's connection, not the request: the upstream hop has
    // its own (undici refuses to send Expect and Keep-Alive at all).
    for (const name of REQUEST_HOP_BY_HOP) delete headers[name];
    engine.scrubHeadersForUpstream(headers);
    if (decision !== undefined) Object.assign(headers, decision.upstreamHeaders);
    headers['x-request-id'] = requestId;
    // The host the decision was made for (an absolute-form target's authority wins over Host).
    const host = decision?.request?.host ?? clientHost;
    if (typeof host === 'string' && host !== '') headers['x-forwarded-host'] = host;
    return headers;
  }

  /** Plain HTTP: decide, then answer the deny or forward through our own pool (forward.ts). */
  async function proxyHttp(req: IncomingMessage, res: ServerResponse, requestId: string): Promise<void> {
    if (closing) {
      // As fastify's return503OnClosing: a request on a kept-alive connection during shutdown.
      res.shouldKeepAlive = false;
      return writeProblem(res, 503, 'SHUTTING_DOWN', 'the sidecar is shutting down', requestId);
    }
    if (tooManyHeaders(req)) return writeProblem(res, 431, 'HEADERS_TOO_MANY', `more than ${MAX_HEADER_COUNT - 1} header fields`, requestId);
    const url = req.url ?? '';
    const target = engine.canonicalize(req.method ?? 'GET', url);
    const decision = await authorize(req, url, target, requestId);
    if (decision.outcome !== 'allow' || target === undefined) {
      const deny = denyAnswer(decision);
      return writeAnswer(res, deny.status, deny.headers, deny.body);
    }
    const query = decision.upstreamQuery;
    // The canonical path, with the query exactly as received minus token parameters.
    const path = query === undefined || query === '' ? target.path : `${target.path}?${query}`;
    const headers: Record<string, string | string[] | undefined> = {};
    const connection = req.headers.connection;
    const named = connection === undefined ? undefined : new Set(connection.split(',').map((n) => n.trim().toLowerCase()));
    for (const name of Object.keys(req.headers)) {
      if (name !== 'connection' && named?.has(name) !== true) headers[name] = req.headers[name];
    }
    const forwardedAt = process.hrtime.bigint();
    forwarder.forward({ method: req.method ?? 'GET', path, headers: upstreamHeaders(decision, requestId, req.headers.host, headers), raw: req }, res, {
      onResponse(status) {
        if (options.metrics === undefined) return;
        const seconds = Number(process.hrtime.bigint() - forwardedAt) / 1e9;
        options.metrics.upstreamDuration.observe({ status_class: `${Math.floor(status / 100)}xx` }, seconds);
      },
      onFailure(kind, error) {
        options.logger.warn({ requestId, upstreamError: error.message }, 'upstream request failed');
        const code: ReasonCode = kind === 'timeout' ? 'UPSTREAM_TIMEOUT' : 'UPSTREAM_UNAVAILABLE';
        if (!res.writableEnded) {
          writeProblem(res, REASONS[code].status, code, kind === 'timeout' ? 'the application did not answer in time' : 'the application is not reachable', requestId);
        }
      },
    });
  }

  function serveHttp(req: IncomingMessage, res: ServerResponse): void {
    const requestId = requestIdOf(req);
    proxyHttp(req, res, requestId).catch((err: unknown) => {
      // Never a stack trace to clients; the log has the error (without headers: they may hold tokens).
      options.logger.error({ err, requestId }, 'unexpected error');
      if (!res.headersSent) writeProblem(res, 500, 'INTERNAL', 'internal error', requestId);
      else res.destroy();
    });
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
      return upstreamHeaders(allowed.get(request), request.id, request.headers.host, copied);
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
    // Only WebSocket upgrades reach fastify's routes (plain HTTP is served by serveHttp), and
    // @fastify/http-proxy takes those over before this handler would run; anything else is refused.
    handler(request, reply) {
      return sendProblem(reply, 'NOT_FOUND', 'no route for this request');
    },
  });
  return app;
}
