/**
 * The admin listener (`admin.listen`, loopback by default): `/healthz` answers while the process runs,
 * `/readyz` only once config, policy, every issuer's keys and every front door are ready (saying what is
 * missing otherwise, and 503 from the moment shutdown begins), `/metrics` in the Prometheus text format.
 * It is a FrontDoor on the same HTTP shell as the doors, so its refusals are problem+json too.
 */
import type { FastifyBaseLogger } from 'fastify';
import type { Readiness } from '../core/decide.js';
import type { FrontDoor } from '../frontends/front-door.js';
import { createHttpShell, sendAnswer } from '../frontends/http-shell.js';
import type { Metrics } from './metrics.js';

export interface AdminOptions {
  readonly readiness: () => Readiness;
  /** SHA-256 of the serving model and policy, shown by /readyz. */
  readonly policySha256?: () => string;
  readonly metrics?: Metrics;
  readonly logger: FastifyBaseLogger;
}

export function createAdminDoor(options: AdminOptions): FrontDoor {
  const shell = createHttpShell({ logger: options.logger });
  const app = shell.app;
  app.get('/healthz', async () => ({ status: 'ok' }));
  app.get('/readyz', async (_request, reply) => {
    const readiness = options.readiness();
    return reply.code(readiness.ready ? 200 : 503).send({
      status: readiness.ready ? 'ready' : 'not ready',
      missing: readiness.missing,
      // The session store: a store that is down leaves the sidecar ready (bearer and anonymous traffic go on).
      ...(readiness.sessionStore === undefined ? {} : { sessionStore: readiness.sessionStore }),
      ...(options.policySha256 ? { policySha256: options.policySha256() } : {}),
    });
  });
  const metrics = options.metrics;
  if (metrics !== undefined) {
    app.get('/metrics', async (_request, reply) => reply.type(metrics.registry.contentType).send(await metrics.registry.metrics()));
  }
  // The admin listener is closed last, after the doors drained, so /readyz answers 503 meanwhile.
  app.addHook('onRequest', async (request, reply) => {
    const early = shell.preflight(request);
    return early === undefined ? undefined : sendAnswer(reply, early);
  });
  return shell.door('admin');
}
