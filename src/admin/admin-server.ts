/**
 * The admin listener (`admin.listen`, loopback by default): `/healthz` answers while the process runs,
 * `/readyz` only once config, policy and every issuer's keys are loaded, saying what is missing otherwise.
 */
import Fastify, { LogController, type FastifyBaseLogger, type FastifyInstance } from 'fastify';
import type { Readiness } from '../core/decide.js';
import { PROBLEM_CONTENT_TYPE, problemBody } from '../core/errors.js';

export interface AdminOptions {
  readonly readiness: () => Readiness;
  readonly logger: FastifyBaseLogger;
}

export function createAdminServer(options: AdminOptions): FastifyInstance {
  const app = Fastify({ loggerInstance: options.logger, logController: new LogController({ disableRequestLogging: true }) });
  app.get('/healthz', async () => ({ status: 'ok' }));
  app.get('/readyz', async (_request, reply) => {
    const readiness = options.readiness();
    return reply.code(readiness.ready ? 200 : 503).send({ status: readiness.ready ? 'ready' : 'not ready', missing: readiness.missing });
  });
  app.setNotFoundHandler((request, reply) =>
    reply.code(404).type(PROBLEM_CONTENT_TYPE).send(problemBody('NOT_FOUND', 'no such admin endpoint', request.id)),
  );
  return app;
}
