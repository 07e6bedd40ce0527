/**
 * The admin listener (`admin.listen`, loopback by default): `/healthz` answers while the process runs,
 * `/readyz` only once config, policy and every issuer's keys are loaded (saying what is missing otherwise,
 * and 503 from the moment shutdown begins), `/metrics` in the Prometheus text format.
 */
import Fastify, { LogController, type FastifyBaseLogger, type FastifyInstance } from 'fastify';
import type { Readiness } from '../core/decide.js';
import type { Metrics } from './metrics.js';
import { PROBLEM_CONTENT_TYPE, problemBody } from '../core/errors.js';

export interface AdminOptions {
  readonly readiness: () => Readiness;
  /** SHA-256 of the serving model and policy, shown by /readyz. */
  readonly policySha256?: () => string;
  readonly metrics?: Metrics;
  readonly logger: FastifyBaseLogger;
}

export function createAdminServer(options: AdminOptions): FastifyInstance {
  const app = Fastify({ loggerInstance: options.logger, logController: new LogController({ disableRequestLogging: true }) });
  app.get('/healthz', async () => ({ status: 'ok' }));
  app.get('/readyz', async (_request, reply) => {
    const readiness = options.readiness();
    return reply.code(readiness.ready ? 200 : 503).send({
      status: readiness.ready ? 'ready' : 'not ready',
      missing: readiness.missing,
      ...(options.policySha256 ? { policySha256: options.policySha256() } : {}),
    });
  });
  const metrics = options.metrics;
  if (metrics !== undefined) {
    app.get('/metrics', async (_request, reply) => reply.type(metrics.registry.contentType).send(await metrics.registry.metrics()));
  }
  app.setNotFoundHandler((request, reply) =>
    reply.code(404).type(PROBLEM_CONTENT_TYPE).send(problemBody('NOT_FOUND', 'no such admin endpoint', request.id)),
  );
  return app;
}
