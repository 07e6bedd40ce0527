/**
 * The HTTP server behind the two check doors that answer over HTTP: Envoy's HTTP ext_authz service and
 * forward-auth (nginx auth_request, Traefik ForwardAuth, Caddy forward_auth). Each door only says how to
 * read the original request out of the check request and how to render an allow; the server routes every
 * path and method to it, ignores any body, and answers a deny with status, WWW-Authenticate and the
 * problem body, which the proxy passes on to its client.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { FastifyBaseLogger } from 'fastify';
import { headerMap, type HeaderMap, type WireRequest } from '../core/access-request.js';
import type { DecisionEngine } from '../core/decide.js';
import { denyAnswer, requestIdOrNew, upstreamChanges, writeAnswer, writeProblem, type UpstreamChanges } from './check-answer.js';
import type { DecisionObserver } from './decision-log.js';
import { MAX_HEADER_COUNT, refuseConnect, SERVER_OPTIONS, tooManyHeaders } from './proxy.js';

/** Envoy may send (part of) the body with a check; we never read it, and refuse a declared body past this. */
const CHECK_BODY_LIMIT = 1024 * 1024;

export interface CheckDoor {
  readonly frontDoor: WireRequest['frontDoor'];
  /** The original request, or a reason it cannot be read (answered with 400). */
  translate(raw: { method: string; url: string; headers: HeaderMap }): Omit<WireRequest, 'frontDoor' | 'requestId' | 'headers'> | { error: string };
  /** Headers of the 200 answer on allow. */
  allowHeaders(changes: UpstreamChanges): Record<string, string>;
}

export interface HttpCheckServerOptions {
  readonly engine: DecisionEngine;
  readonly logger: FastifyBaseLogger;
  readonly observe: DecisionObserver;
}

/** A listener the sidecar starts and drains like its fastify ones. */
export interface CheckServer {
  readonly server: Server;
  listen(options: { path: string } | { host: string; port: number }): Promise<void>;
  close(): Promise<void>;
}

/**
 * A plain node:http server: a check has one route, no body to parse and a short answer, and fastify's
 * routing, hooks and reply machinery cost more per check than the decision itself.
 */
export function createHttpCheckServer(door: CheckDoor, options: HttpCheckServerOptions): CheckServer {
  const { engine, logger } = options;

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const headers = headerMap(Object.entries(req.headersDistinct));
    const requestId = requestIdOrNew(headers['x-request-id']?.[0]);
    if (tooManyHeaders(req)) return writeProblem(res, 431, 'HEADERS_TOO_MANY', `more than ${MAX_HEADER_COUNT - 1} header fields`, requestId);
    if (Number(req.headers['content-length'] ?? 0) > CHECK_BODY_LIMIT) {
      res.shouldKeepAlive = false;
      return writeProblem(res, 413, 'BAD_REQUEST', 'the check request body is too large', requestId);
    }
    const started = process.hrtime.bigint();
    const original = door.translate({ method: req.method ?? 'GET', url: req.url ?? '/', headers });
    if ('error' in original) return writeProblem(res, 400, 'BAD_REQUEST', original.error, requestId);
    const decision = await engine.decide({ ...original, frontDoor: door.frontDoor, headers, requestId });
    options.observe(decision, started, logger);
    if (decision.outcome === 'allow') return writeAnswer(res, 200, door.allowHeaders(upstreamChanges(engine, headers, decision)));
    const deny = denyAnswer(decision);
    return writeAnswer(res, deny.status, deny.headers, deny.body);
  }

  const server = createServer(SERVER_OPTIONS, (req, res) => {
    // The body is never read: node discards what is left once the answer is sent.
    handle(req, res).catch((err: unknown) => {
      logger.error({ err, requestId: req.headers['x-request-id'] }, 'unexpected error in a check');
      if (!res.headersSent) writeProblem(res, 500, 'INTERNAL', 'the check request could not be processed', '');
      else res.destroy();
    });
  });
  server.on('connect', refuseConnect);
  // Malformed requests get node's own answers (400, 408, 431) and never reach the handler.

  return {
    server,
    listen: (at) =>
      new Promise((resolve, reject) => {
        server.once('error', reject);
        server.listen('path' in at ? { path: at.path } : { host: at.host, port: at.port }, () => {
          server.off('error', reject);
          resolve();
        });
      }),
    close: () =>
      new Promise((resolve) => {
        if (!server.listening) return resolve();
        server.close(() => resolve());
        server.closeIdleConnections();
      }),
  };
}
