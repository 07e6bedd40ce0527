/**
 * The HTTP shell every HTTP listener is built on (the proxy door, the HTTP check doors, the admin
 * listener): one fastify instance each, with the same server limits, the same request-id rule and one
 * problem writer, so every refusal is `application/problem+json` with a status that matches its body,
 * including those made below our own code (a header section over 16 KiB, a garbage request line, a bad URL,
 * CONNECT, a request during shutdown).
 */
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { Duplex } from 'node:stream';
import Fastify, { type FastifyBaseLogger, type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import type { BodyReader } from '../core/access-request.js';
import { problemAnswer, type ClientAnswer } from '../core/decision.js';
import { REASONS, type ReasonCode } from '../core/errors.js';
import type { FrontDoor } from './front-door.js';
import { listenOn } from './listen.js';
import { requestIdOf } from './request-id.js';

/**
 * Slowloris: a client gets this long to send its request headers (node checks every second), then 408.
 * Bodies are streamed to the app and bounded by upstream.timeoutSeconds on that side.
 */
export const HEADERS_TIMEOUT_MS = 10_000;
/**
 * Idle keep-alive connections live 72 s: longer than the usual 60 s of load balancers and ingress proxies,
 * so the client side closes first and never sends onto a connection being closed. Request bodies have no
 * overall time limit (node's default of 300 s would cut long uploads).
 */
export const KEEP_ALIVE_TIMEOUT_MS = 72_000;
/**
 * Node's parser keeps only the first headers (about a thousand fields) and silently drops the rest, so a
 * header past them would be invisible to the decision. A request with this many fields is refused (431).
 */
export const MAX_HEADER_COUNT = 1000;

export interface HttpShellOptions {
  readonly logger: FastifyBaseLogger;
  /**
   * Every request reaches the one route `/`, whatever its target (the doors that decide on any path read
   * the raw target themselves, so no URL the router cannot parse is refused before the decision). Without
   * it, fastify routes by path (the admin listener).
   */
  readonly oneRoute?: boolean;
}

export interface HttpShell {
  readonly app: FastifyInstance;
  /**
   * The refusals made before a door looks at a request: the shutdown has begun (503, connection closed) or
   * the request has more header fields than the parser keeps (431). Undefined when the request may go on.
   */
  preflight(request: FastifyRequest): ClientAnswer | undefined;
  /** A FrontDoor over this shell: listen, readiness, drain within a deadline, close. */
  door(name: string, hooks?: { readonly onDeadline?: () => void }): FrontDoor;
  /**
   * Registers the door's one catch-all route (every method but CONNECT). An error thrown once the reply is
   * hijacked (fastify neither logs it nor answers, having no logger) is logged here, and the client gets a
   * 500 problem if nothing was written yet, else its connection is cut: never a request left hanging.
   */
  route(handler: (request: FastifyRequest, reply: FastifyReply) => Promise<FastifyReply | undefined>): void;
}

/**
 * Writes an answer (a decision's or the sidecar's own) on a node response: status, headers, body, length.
 * Nothing is written once an answer has started (a forwarded response that failed midway is cut instead).
 */
export function writeAnswer(res: ServerResponse, answer: ClientAnswer): void {
  if (res.headersSent || res.writableEnded) return;
  res.writeHead(answer.status, { ...answer.headers, 'content-length': String(Buffer.byteLength(answer.body)) });
  res.end(answer.body);
}

/**
 * Renders an answer on a fastify reply. The reply is hijacked and the answer written as it is: an answer is
 * already complete (status, headers, serialized body), so fastify's serialization and send hooks would only
 * add work on the hot path (about 5% of a check) and a charset the body does not need.
 */
export function sendAnswer(reply: FastifyReply, answer: ClientAnswer): FastifyReply {
  reply.hijack();
  writeAnswer(reply.raw, answer);
  return reply;
}

/** A problem+json refusal of the sidecar's own on a fastify reply. */
export function sendProblem(reply: FastifyReply, code: ReasonCode, detail: string, headers?: Readonly<Record<string, string>>): FastifyReply {
  return sendAnswer(reply, problemAnswer(code, detail, reply.request.id, headers));
}

/**
 * A reader of a request's body as text, for the sign-in route that takes a form (back-channel logout):
 * undefined when the body is larger than the limit or cannot be read. Decisions never read bodies.
 */
export function bodyReader(raw: IncomingMessage): BodyReader {
  let read: Promise<string | undefined> | undefined;
  return (limit) => {
    read ??= new Promise((resolve) => {
      if (Number(raw.headers['content-length'] ?? 0) > limit) {
        resolve(undefined);
        return;
      }
      const chunks: Buffer[] = [];
      let size = 0;
      raw.on('data', (chunk: Buffer) => {
        size += chunk.length;
        if (size > limit) {
          resolve(undefined);
          raw.destroy();
        } else {
          chunks.push(chunk);
        }
      });
      raw.once('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
      raw.once('error', () => resolve(undefined));
      raw.once('close', () => resolve(undefined));
    });
    return read;
  };
}

/** How long a socket we answered on may take to take the answer before it is cut. */
const LAST_ANSWER_MS = 5_000;

/**
 * Ends a socket that node's HTTP server no longer looks after (a client error, CONNECT, an upgrade): the
 * answer is flushed, then the socket is destroyed. `end()` alone leaves it half-open for as long as the
 * client keeps its side open, outside every server timeout and the drain (a slowloris in another form).
 */
export function finishSocket(socket: Duplex, data?: string): void {
  const cut = setTimeout(() => socket.destroy(), LAST_ANSWER_MS);
  cut.unref();
  socket.end(data ?? '', () => {
    clearTimeout(cut);
    socket.destroy();
  });
}

/** A problem+json refusal written straight to a socket that has no HTTP response (a client error, CONNECT). */
export function writeSocketProblem(socket: Duplex, code: ReasonCode, detail: string): void {
  const answer = problemAnswer(code, detail);
  let head = `HTTP/1.1 ${answer.status} ${REASONS[code].title}\r\n`;
  for (const [name, value] of Object.entries(answer.headers)) for (const v of typeof value === 'string' ? [value] : value) head += `${name}: ${v}\r\n`;
  finishSocket(socket, `${head}content-length: ${Buffer.byteLength(answer.body)}\r\nconnection: close\r\n\r\n${answer.body}`);
}

/** What node's HTTP parser refused, as one of our reason codes. */
function clientErrorReason(code: string | undefined): { code: ReasonCode; detail: string } {
  switch (code) {
    case 'HPE_HEADER_OVERFLOW':
      return { code: 'HEADERS_TOO_MANY', detail: 'the request header section is larger than 16 KiB' };
    case 'ERR_HTTP_REQUEST_TIMEOUT':
      return { code: 'REQUEST_TIMEOUT', detail: `the request headers did not arrive within ${HEADERS_TIMEOUT_MS / 1000} s` };
    default:
      return { code: 'BAD_REQUEST', detail: 'the request is not valid HTTP/1.1' };
  }
}

function tooManyHeaders(raw: IncomingMessage): boolean {
  return raw.rawHeaders.length >= MAX_HEADER_COUNT * 2;
}

export function createHttpShell(options: HttpShellOptions): HttpShell {
  let closing = false;
  const app = Fastify({
    // fastify gets no logger: with one, it makes a child logger and hangs two listeners on every response
    // (for its request log, which we turn off anyway), on the hot path of every door. Every log line is our
    // own and carries the request id itself; the error handler below logs what fastify would have.
    logger: false,
    requestIdHeader: false,
    genReqId: requestIdOf,
    // Our own 503 SHUTTING_DOWN (preflight) instead of fastify's JSON.
    return503OnClosing: false,
    serverFactory: (handler) =>
      createServer({ headersTimeout: HEADERS_TIMEOUT_MS, connectionsCheckingInterval: 1_000, keepAliveTimeout: KEEP_ALIVE_TIMEOUT_MS, requestTimeout: 0 }, handler),
    clientErrorHandler(error: NodeJS.ErrnoException, socket: Duplex) {
      // A connection reset or already closed has nobody to answer.
      if (error.code === 'ECONNRESET' || !socket.writable) {
        socket.destroy();
        return;
      }
      const reason = clientErrorReason(error.code);
      writeSocketProblem(socket, reason.code, reason.detail);
    },
    frameworkErrors(error, _request, reply) {
      // A URL the router cannot decode (admin listener; the one-route doors never route by URL).
      options.logger.debug({ code: error.code }, 'request refused by the router');
      void sendProblem(reply, 'BAD_REQUEST', 'the request target cannot be routed');
    },
    ...(options.oneRoute === true ? { rewriteUrl: () => '/' } : {}),
  });

  // No body is parsed by the shell: the proxy streams it to the application, the check doors and the admin
  // listener never read it, whatever its content type (a check must still be decided).
  app.removeAllContentTypeParsers();
  app.addContentTypeParser('*', (_request, _payload, done) => done(null));

  app.setErrorHandler((error: { statusCode?: number; code?: string }, request, reply) => {
    const status = error.statusCode ?? 500;
    if (status === 413) return sendProblem(reply, 'BODY_TOO_LARGE', 'the request body is too large');
    if (status >= 400 && status < 500) return sendProblem(reply, 'BAD_REQUEST', 'the request could not be processed');
    // Never a stack trace to clients; the log has the error (without headers: they may hold tokens).
    options.logger.error({ err: error, requestId: request.id }, 'unexpected error');
    return sendProblem(reply, 'INTERNAL', 'internal error');
  });
  app.setNotFoundHandler((_request, reply) => sendProblem(reply, 'NOT_FOUND', 'no route for this request'));
  // Node hands CONNECT to a 'connect' listener and closes the socket without an answer when there is none.
  app.server.on('connect', (_req: IncomingMessage, socket: Duplex) => writeSocketProblem(socket, 'PATH_TARGET_FORM', 'CONNECT is not accepted'));
  app.addHook('preClose', async () => {
    closing = true;
  });

  return {
    app,
    route(handler) {
      app.route({
        method: app.supportedMethods.filter((m) => m !== 'CONNECT'),
        url: '/',
        async handler(request, reply) {
          try {
            return await handler(request, reply);
          } catch (err) {
            // Before the hijack, fastify's error handler (above) answers and logs.
            if (!reply.sent) throw err;
            options.logger.error({ err, requestId: request.id }, 'unexpected error after the answer began');
            const res = reply.raw;
            if (!res.headersSent && !res.writableEnded) writeAnswer(res, problemAnswer('INTERNAL', 'internal error', request.id, { connection: 'close' }));
            else res.destroy();
            return reply;
          }
        },
      });
    },
    preflight(request) {
      if (closing) {
        // A request on a kept-alive connection during the drain: answered, and the connection closes.
        return problemAnswer('SHUTTING_DOWN', 'the sidecar is shutting down', request.id, { connection: 'close' });
      }
      if (tooManyHeaders(request.raw)) return problemAnswer('HEADERS_TOO_MANY', `more than ${MAX_HEADER_COUNT - 1} header fields`, request.id);
      return undefined;
    },
    door(name, hooks = {}) {
      let listening = false;
      let draining = false;
      async function drain(deadline: number): Promise<void> {
        draining = true;
        // In-flight requests finish; keep-alive connections close as soon as they fall idle (a client
        // holding one open must not stretch the drain); at the deadline the rest are cut.
        const idle = setInterval(() => app.server.closeIdleConnections(), 100);
        const cut = setTimeout(() => {
          app.server.closeAllConnections();
          hooks.onDeadline?.();
        }, Math.max(0, deadline - Date.now()));
        try {
          await app.close();
        } finally {
          clearInterval(idle);
          clearTimeout(cut);
          listening = false;
        }
      }
      return {
        name,
        async listen(address) {
          const bound = await listenOn(address, (at) => app.listen(at).then(() => undefined), () => app.server.address());
          listening = true;
          return bound;
        },
        ready: () => listening && !draining,
        drain,
        close: () => drain(Date.now()),
      };
    },
  };
}
