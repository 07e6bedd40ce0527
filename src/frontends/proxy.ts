/**
 * The reverse-proxy front door (`listen`): translates an HTTP request into a WireRequest, asks the engine,
 * and renders the Decision: the deny answer, or the request forwarded to the application with the
 * decision's header changes, through the forwarder's undici pool (src/upstream). Nothing about tokens or
 * policies lives here.
 *
 * Plain HTTP and WebSocket upgrades take the same path: fastify's routing, the shell's preflight, one
 * decide(), then either forward() or upgrade(). An upgrade arrives as node's 'upgrade' event; it is handed
 * to fastify's router with a response bound to its socket (as @fastify/websocket does), so a deny is
 * written by the same renderer. The canonical path decided on is exactly the path forwarded: a check on the
 * raw URL followed by a proxy that folds `/./admin` later is the bypass this avoids.
 */
import { ServerResponse, type IncomingMessage } from 'node:http';
import type { Socket } from 'node:net';
import { finished, type Duplex } from 'node:stream';
import type { Span } from '@opentelemetry/api';
import type { FastifyBaseLogger, FastifyReply, FastifyRequest } from 'fastify';
import { headerMapFromRaw } from '../core/access-request.js';
import type { DecisionEngine } from '../core/decide.js';
import { problemAnswer, type ClientAnswer, type Decision } from '../core/decision.js';
import type { ReasonCode } from '../core/errors.js';
import type { ForwardCallbacks, Forwarder } from '../upstream/forwarder.js';
import { connectionNamed, isHopByHopRequestHeader } from '../upstream/hop-by-hop.js';
import type { DecisionObserver, DoorTracing, FrontDoor } from './front-door.js';
import { bodyReader, createHttpShell, finishSocket, sendAnswer, writeAnswer } from './http-shell.js';

export interface ProxyOptions {
  readonly engine: DecisionEngine;
  readonly forwarder: Forwarder;
  readonly websockets: boolean;
  readonly logger: FastifyBaseLogger;
  readonly observe: DecisionObserver;
  /** Called with the application's answer status and the seconds it took (the upstream latency metric). */
  readonly upstreamAnswered?: ((status: number, seconds: number) => void) | undefined;
  readonly tracing?: DoorTracing | undefined;
}

/** The client's socket of an upgrade, with what it sent past the request head. */
interface Upgrade {
  readonly socket: Duplex;
  readonly head: Buffer;
}

/**
 * RFC 6455 §4.2.1: what a WebSocket opening handshake must carry. Anything else that asks to upgrade (h2c
 * included: a known way to smuggle requests past a proxy's checks) is refused before the decision.
 */
/** A decision that throws (a bug) still ends its span. */
async function endOnThrow<T>(server: { readonly span: { end(): void } } | undefined, decision: Promise<T>): Promise<T> {
  try {
    return await decision;
  } catch (err) {
    server?.span.end();
    throw err;
  }
}

function handshakeProblem(raw: IncomingMessage): string | undefined {
  if (raw.method !== 'GET') return 'an upgrade must be a GET request';
  if (raw.headers.upgrade?.toLowerCase() !== 'websocket') return 'only WebSocket upgrades are accepted';
  const key = raw.headersDistinct['sec-websocket-key'];
  if (key?.length !== 1 || !/^[A-Za-z0-9+/]{22}==$/.test(key[0] ?? '')) return 'the WebSocket handshake needs one valid Sec-WebSocket-Key';
  if (raw.headersDistinct['sec-websocket-version']?.length !== 1) return 'the WebSocket handshake needs one Sec-WebSocket-Version';
  return undefined;
}

/**
 * The headers the application gets: the client's, less hop-by-hop ones (RFC 9110 §7.6.1) and those the
 * decision removes, plus the decision's (identity headers), the request id and the host decided for.
 */
function upstreamHeaders(raw: IncomingMessage, decision: Decision): Record<string, string | string[] | undefined> {
  const { set, remove } = decision.upstream;
  const named = connectionNamed(raw.headers.connection);
  const headers: Record<string, string | string[] | undefined> = {};
  for (const name of Object.keys(raw.headers)) {
    if (isHopByHopRequestHeader(name, named) || remove.includes(name)) continue;
    headers[name] = raw.headers[name];
  }
  Object.assign(headers, set);
  headers['x-request-id'] = decision.requestId;
  // The host the decision was made for (an absolute-form target's authority wins over Host).
  // The client's own X-Forwarded-Host never reaches the app.
  const host = decision.request?.host;
  if (host !== undefined && host !== '') headers['x-forwarded-host'] = host;
  else delete headers['x-forwarded-host'];
  return headers;
}

export function createProxyDoor(options: ProxyOptions): FrontDoor {
  const { engine, forwarder, logger, tracing } = options;
  const upgrades = new WeakMap<IncomingMessage, Upgrade>();
  /** Upgrade sockets (deciding, joined, or answering), cut at the drain deadline: node's server no longer tracks them. */
  const taken = new Set<Duplex>();
  const shell = createHttpShell({ logger, oneRoute: true });
  const app = shell.app;

  if (options.websockets) {
    app.server.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) => {
      upgrades.set(req, { socket, head });
      // The socket has left node's HTTP server: ours to cut at the drain deadline, from now on.
      taken.add(socket);
      socket.once('close', () => taken.delete(socket));
      const res = new ServerResponse(req);
      res.assignSocket(socket as Socket);
      // An answer written here (a deny, a 502) is the last on this socket.
      res.shouldKeepAlive = false;
      res.once('finish', () => finishSocket(socket));
      app.routing(req, res);
    });
  }

  /** The failure callbacks of a forwarded request or upgrade: 502/504 while nothing was sent yet. */
  function callbacks(decision: Decision, answer: (a: ClientAnswer) => void, span?: Span, answered?: (status: number) => void): ForwardCallbacks {
    const forwardedAt = process.hrtime.bigint();
    return {
      onResponse(status) {
        options.upstreamAnswered?.(status, Number(process.hrtime.bigint() - forwardedAt) / 1e9);
        if (span !== undefined) tracing?.endWithStatus(span, status);
        answered?.(status);
      },
      onAbandoned() {
        // The client left: the forwarded request's span ends as an error (499, the usual "client closed").
        if (span !== undefined) tracing?.endWithStatus(span, 499);
      },
      onFailure(kind, error) {
        if (span !== undefined) tracing?.endWithStatus(span, kind === 'timeout' ? 504 : 502);
        answered?.(kind === 'timeout' ? 504 : 502);
        logger.warn({ requestId: decision.requestId, upstreamError: error.message }, 'upstream request failed');
        const code: ReasonCode = kind === 'timeout' ? 'UPSTREAM_TIMEOUT' : 'UPSTREAM_UNAVAILABLE';
        // A session refreshed for this request still reaches the browser: its old cookie's refresh token
        // may be spent already.
        answer(problemAnswer(code, kind === 'timeout' ? 'the application did not answer in time' : 'the application is not reachable', decision.requestId, decision.answer.headers));
      },
    };
  }

  async function handle(request: FastifyRequest, reply: FastifyReply): Promise<FastifyReply | undefined> {
    const raw = request.raw;
    const upgrade = upgrades.get(raw);
    const early = shell.preflight(request);
    if (early !== undefined) return sendAnswer(reply, early);
    if (upgrade !== undefined) {
      const problem = handshakeProblem(raw);
      if (problem !== undefined) return sendAnswer(reply, problemAnswer('BAD_REQUEST', problem, request.id));
    }
    const started = process.hrtime.bigint();
    // The SERVER span, its parent the incoming request's trace context (only with tracing on).
    const server = tracing?.startServerSpan('proxy', raw.method ?? 'GET', raw.headers);
    const decision = await endOnThrow(server, engine.decide({
      ...(server === undefined ? {} : { trace: server.context }),
      frontDoor: 'proxy',
      method: raw.method ?? 'GET',
      target: (raw as IncomingMessage & { originalUrl?: string }).originalUrl ?? raw.url ?? '',
      host: raw.headers.host ?? '',
      headers: headerMapFromRaw(raw.rawHeaders),
      peer: '',
      requestId: request.id,
      rewritesPath: true,
      removesHeaders: true,
      readBody: bodyReader(raw),
    }));
    options.observe(decision, started, tracing?.logIds(server));
    const target = decision.request;
    if (decision.outcome !== 'allow' || target === undefined) {
      if (server !== undefined) tracing?.recordDecision(server, decision);
      return sendAnswer(reply, decision.answer);
    }
    let client: Span | undefined;
    let endServer: ((status: number) => void) | undefined;
    if (server !== undefined) {
      tracing?.recordDecision(server, decision, true);
      if (upgrade === undefined) {
        // The SERVER span ends with the answer to the client (499 when the client left first); finished()
        // also fires for a client already gone while the decision was made.
        finished(reply.raw, (err) => tracing?.endWithStatus(server.span, err === undefined || err === null ? reply.raw.statusCode : 499));
      } else {
        // A WebSocket's span ends at the handshake (101, or the failure's status), not when the socket closes;
        // a socket closed before the handshake answered ends it as the client's leaving (499).
        let ended = false;
        endServer = (status) => {
          if (ended) return;
          ended = true;
          tracing?.endWithStatus(server.span, status);
        };
        upgrade.socket.once('close', () => endServer?.(499));
      }
    }

    reply.hijack();
    const query = decision.upstream.query;
    // The canonical path, with the query exactly as received minus token parameters.
    const path = query === undefined || query === '' ? target.path : `${target.path}?${query}`;
    const headers = upstreamHeaders(raw, decision);
    // The app's parent span is our CLIENT span: its context goes with the forwarded request.
    if (server !== undefined) client = tracing?.startClientSpan(server, raw.method ?? 'GET', headers);
    const added = decision.answer.headers;
    if (upgrade === undefined) {
      const res = reply.raw;
      forwarder.forward(
        { method: raw.method ?? 'GET', path, headers, raw, ...(Object.keys(added).length === 0 ? {} : { addToResponse: added }) },
        res,
        callbacks(decision, (a) => writeAnswer(res, a), client),
      );
      return undefined;
    }
    // The handshake headers (Sec-WebSocket-*) go as the client sent them; undici sets Connection and Upgrade.
    forwarder.upgrade(
      { path, headers, socket: upgrade.socket, head: upgrade.head, ...(Object.keys(added).length === 0 ? {} : { addToResponse: added }) },
      callbacks(decision, (a) => writeAnswer(reply.raw, a), client, endServer),
    );
    return undefined;
  }

  shell.route(handle);
  app.addHook('onClose', async () => forwarder.close());

  return shell.door('proxy', {
    onDeadline: () => {
      for (const socket of taken) socket.destroy();
    },
  });
}
