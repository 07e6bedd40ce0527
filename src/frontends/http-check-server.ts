/**
 * The HTTP server behind the two check doors that answer over HTTP: Envoy's HTTP ext_authz service and
 * forward-auth (nginx auth_request, Traefik ForwardAuth, Caddy forward_auth). Each door only says how to
 * read the original request out of the check request and how to render an allow; the server routes every
 * path and method to it, ignores any body, and answers a deny with status, WWW-Authenticate and the
 * problem body, which the proxy passes on to its client.
 */
import type { IncomingMessage } from 'node:http';
import Fastify, { LogController, type FastifyBaseLogger, type FastifyInstance } from 'fastify';
import { headerMap, type HeaderMap, type WireRequest } from '../core/access-request.js';
import type { DecisionEngine } from '../core/decide.js';
import type { Decision } from '../core/decision.js';
import { PROBLEM_CONTENT_TYPE, problemBody } from '../core/errors.js';
import { denyAnswer, requestIdOrNew, upstreamChanges, type UpstreamChanges } from './check-answer.js';
import type { DecisionObserver } from './decision-log.js';
import { MAX_HEADER_COUNT, refuseConnect, SERVER_OPTIONS, tooManyHeaders } from './proxy.js';

/** Envoy may send (part of) the body with a check; we never read it, but bound what we accept. */
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

export function createHttpCheckServer(door: CheckDoor, options: HttpCheckServerOptions): FastifyInstance {
  const { engine } = options;
  const app = Fastify({
    loggerInstance: options.logger,
    logController: new LogController({ disableRequestLogging: true }),
    bodyLimit: CHECK_BODY_LIMIT,
    http: SERVER_OPTIONS,
    // Every check request is handled by the one route; the original target is read from req.originalUrl.
    rewriteUrl: () => '/',
    genReqId: (req: IncomingMessage) => requestIdOrNew(req.headersDistinct['x-request-id']?.[0]),
  });
  app.server.on('connect', refuseConnect);
  app.removeAllContentTypeParsers();
  app.addContentTypeParser('*', { parseAs: 'buffer' }, (_req, _body, done) => done(null, undefined));

  app.setErrorHandler((error: { statusCode?: number }, request, reply) => {
    const status = error.statusCode !== undefined && error.statusCode >= 400 && error.statusCode < 500 ? error.statusCode : 500;
    if (status === 500) request.log.error({ err: error, requestId: request.id }, 'unexpected error in a check');
    return reply
      .code(status)
      .type(PROBLEM_CONTENT_TYPE)
      .send(problemBody(status === 500 ? 'INTERNAL' : 'BAD_REQUEST', 'the check request could not be processed', request.id));
  });

  app.route({
    method: app.supportedMethods,
    url: '/',
    handler: async (request, reply) => {
      const raw = request.raw as IncomingMessage & { originalUrl?: string };
      if (tooManyHeaders(raw)) {
        return reply.code(431).type(PROBLEM_CONTENT_TYPE).send(problemBody('HEADERS_TOO_MANY', `more than ${MAX_HEADER_COUNT - 1} header fields`, request.id));
      }
      const headers = headerMap(Object.entries(raw.headersDistinct));
      const started = process.hrtime.bigint();
      const original = door.translate({ method: raw.method ?? 'GET', url: raw.originalUrl ?? raw.url ?? '/', headers });
      if ('error' in original) {
        return reply.code(400).type(PROBLEM_CONTENT_TYPE).send(problemBody('BAD_REQUEST', original.error, request.id));
      }
      const decision: Decision = await engine.decide({ ...original, frontDoor: door.frontDoor, headers, requestId: request.id });
      options.observe(decision, started, request.log);
      if (decision.outcome === 'allow') {
        return reply.code(200).headers(door.allowHeaders(upstreamChanges(engine, headers, decision))).send();
      }
      const deny = denyAnswer(decision);
      return reply.code(deny.status).headers(deny.headers).send(deny.body);
    },
  });
  return app;
}
