/**
 * The lifecycle of `serve`: builds the engine (engine.ts), starts the configured front doors and the admin
 * listener (each a FrontDoor), reports readiness, reloads policy and key files, and drains every door on
 * SIGTERM within `shutdown.drainSeconds`. Doors are imported only when configured.
 */
import type { FastifyBaseLogger } from 'fastify';
import { pino } from 'pino';
import { createAdminDoor } from './admin/admin-server.js';
import { createDecisionObserver } from './admin/decision-log.js';
import { stdoutLogOutput, type LogOutput } from './admin/log-output.js';
import { createMetrics, type Metrics } from './admin/metrics.js';
import { watchFiles } from './authz/file-watch.js';
import type { ReloadResult } from './authz/reloadable-authorizer.js';
import { parseUpstreamUrl } from './config/address.js';
import type { Config } from './config/schema.js';
import type { DecisionEngine } from './core/decide.js';
import { buildEngine, type EngineBuildOptions } from './engine.js';
import type { DecisionObserver, DoorTracing, FrontDoor } from './frontends/front-door.js';
import { tracingFromEnv } from './tracing/config.js';
import { setIdpFetch } from './authn/idp-fetch.js';

/** Upstream keep-alive pool size; one sidecar fronts one local app. */
export const UPSTREAM_CONNECTIONS = 128;

export { endStdoutLog } from './admin/log-output.js';

/** A JSON logger writing to `output`: by default stdout, asynchronously and bounded (admin/log-output.ts). */
export function createLogger(config: Config, output: LogOutput = stdoutLogOutput()): FastifyBaseLogger {
  return pino(
    {
      level: config.logging.level,
      base: { service: 'authz-sidecar' },
      // Belt and braces: nothing we log carries these, but a future log line must not leak them either.
      redact: { paths: ['req.headers.authorization', 'req.headers.cookie', '*.token', '*.authorization'], censor: '[redacted]' },
    },
    output.stream,
  );
}

export interface RunningSidecar {
  readonly engine: DecisionEngine;
  /**
   * `host:port` (or `unix:/path`) the proxy listens on, with the real port when 0 was asked for; undefined
   * when no upstream is configured (a sidecar that only answers ext_authz or forward-auth).
   */
  readonly proxyAddress: string | undefined;
  readonly adminAddress: string;
  /** Addresses of the ext_authz and forward-auth doors that are configured. */
  readonly extAuthz: { readonly http?: string; readonly grpc?: string; readonly forwardAuth?: string };
  readonly metrics: Metrics;
  /** Reloads key files, model and policy (SIGHUP, file changes); the last good ones keep serving on failure. */
  reload(): Promise<ReloadResult>;
  /**
   * Graceful stop: readiness turns 503 at once, doors stop accepting, in-flight requests finish for up to
   * `shutdown.drainSeconds`, then what is left is cut; the admin listener closes last. Logs
   * `authz-sidecar draining` as it begins and `authz-sidecar stopped` when done.
   */
  close(): Promise<void>;
}

interface DoorContext {
  readonly engine: DecisionEngine;
  readonly logger: FastifyBaseLogger;
  readonly observe: DecisionObserver;
  readonly metrics: Metrics;
  readonly tracing: DoorTracing | undefined;
}

/** The configured front doors with their addresses, each module loaded only when its door is configured. */
async function createDoors(config: Config, context: DoorContext): Promise<Array<{ door: FrontDoor; address: string }>> {
  const doors: Array<{ door: FrontDoor; address: string }> = [];
  const { http, grpc, forwardAuth } = config.extAuthz;
  if (http !== undefined) {
    const { createExtAuthzHttpDoor } = await import('./frontends/ext-authz-http.js');
    doors.push({ door: createExtAuthzHttpDoor({ ...context, pathPrefix: http.pathPrefix }), address: http.listen });
  }
  if (forwardAuth !== undefined) {
    const { createForwardAuthDoor } = await import('./frontends/forward-auth.js');
    doors.push({ door: createForwardAuthDoor({ ...context, signInPrefix: config.signIn?.prefix }), address: forwardAuth.listen });
  }
  if (grpc !== undefined) {
    // gRPC and its proto loader cost about 20 MiB of memory: loaded only by sidecars that answer gRPC.
    const { createExtAuthzGrpcDoor } = await import('./frontends/ext-authz-grpc.js');
    doors.push({ door: createExtAuthzGrpcDoor(context), address: grpc.listen });
  }
  if (config.upstream !== undefined) {
    const upstream = parseUpstreamUrl(config.upstream.url);
    if (upstream === undefined) throw new TypeError(`invalid upstream url ${config.upstream.url}`);
    const [{ createProxyDoor }, { createForwarder }] = await Promise.all([import('./frontends/proxy.js'), import('./upstream/forwarder.js')]);
    const forwarder = createForwarder({ upstream, timeoutMs: Math.round(config.upstream.timeoutSeconds * 1000), connections: UPSTREAM_CONNECTIONS });
    const door = createProxyDoor({
      ...context,
      forwarder,
      websockets: config.upstream.websockets,
      upstreamAnswered: (status, seconds) => context.metrics.upstreamDuration.observe({ status_class: `${Math.floor(status / 100)}xx` }, seconds),
    });
    doors.push({ door, address: config.listen });
  }
  return doors;
}

export async function startSidecar(
  config: Config,
  options: Omit<EngineBuildOptions, 'events' | 'stages'> & { logger?: FastifyBaseLogger; env?: NodeJS.ProcessEnv } = {},
): Promise<RunningSidecar> {
  const metrics = createMetrics();
  const output = options.logger === undefined ? stdoutLogOutput() : undefined;
  const logger = options.logger ?? createLogger(config, output);
  const stopCountingDrops = output?.onDrop(() => metrics.logLinesDropped.inc()) ?? ((): void => undefined);
  // Tracing (DESIGN.md §9): the SDK and the span helpers load only with OTEL_TRACES_EXPORTER=otlp.
  const tracingConfig = tracingFromEnv(options.env ?? process.env);
  let tracing: DoorTracing | undefined;
  let stopTracing = async (): Promise<void> => undefined;
  if (tracingConfig !== undefined) {
    const [sdk, spans] = await Promise.all([import('./tracing/sdk.js'), import('./tracing/spans.js')]);
    const running = sdk.startTracing(tracingConfig, { onDropped: (count) => metrics.spansDropped.inc(count) });
    stopTracing = async () => {
      setIdpFetch(undefined);
      await running.shutdown();
    };
    tracing = spans;
    setIdpFetch(spans.tracedFetch);
    logger.info({ sampler: tracingConfig.sampler.kind, propagators: tracingConfig.propagators }, 'tracing on (OTLP)');
  }
  const { engine, authorizer, reloadKeyFiles } = await buildEngine(config, {
    ...options,
    stages: tracing?.STAGE_TRACER,
    logger,
    events: {
      keysFetched(issuer, result, error) {
        metrics.jwksFetches.inc({ issuer, result });
        if (result === 'error') logger.warn({ issuer, error: error?.message }, 'JWKS fetch failed; the last good keys keep serving');
      },
      keysRemoved: (issuer, removed) => logger.info({ issuer, removed }, 'JWKS keys removed by the issuer; its cached tokens are verified again'),
      cache: (cache, hit) => (hit ? metrics.cacheHits : metrics.cacheMisses).inc({ cache }),
      decisionCache: (hit) => (hit ? metrics.cacheHits : metrics.cacheMisses).inc({ cache: 'decision' }),
      idpFailed: (what, issuer, error) => logger.warn({ issuer, error: error?.message }, `${what} failed; retrying`),
      signIn: {
        signIn: (provider, result) => metrics.signIns.inc({ provider, result }),
        refresh: (provider, result) => metrics.sessionRefreshes.inc({ provider, result }),
        logout: (kind) => metrics.logouts.inc({ kind }),
        providerFailed: (provider, what, error) => logger.warn({ provider, error: error.message }, `sign-in provider ${what} failed`),
        storeState: (up, error) =>
          up ? logger.info('the redis session store is connected') : logger.error({ error: error?.message }, 'the redis session store is unreachable: requests that need a session get 503 until it is back'),
        revocationsOverflow: () => logger.error('more session revocations than memory holds: every session started until now is refused, and everyone signs in again'),
      },
    },
  });
  metrics.setPolicy(authorizer.current().sha256);
  if (config.signIn !== undefined) {
    metrics.watchSessionStore(() => engine.readiness().sessionStore ?? { store: 'cookie', up: true });
  }
  if (config.signIn?.session.store === 'cookie') {
    // Sign-out and back-channel logout are remembered by this process only.
    logger.warn(
      'signIn uses the cookie store: a signed-out or back-channel-logged-out session is refused by this replica only (and not after a restart); with several replicas, keep access tokens short so that refreshes end such sessions everywhere',
    );
  }
  const observe = createDecisionObserver({ level: config.logging.decisions, logger, metrics });

  async function reload(): Promise<ReloadResult> {
    // Key files first: a bad JWKS or secret file keeps the old keys and counts as a failed reload.
    try {
      await reloadKeyFiles();
    } catch (err) {
      metrics.policyReloads.inc({ result: 'failure' });
      logger.error({ err }, 'key file reload failed; the last good keys keep serving');
    }
    const result = await authorizer.reload();
    metrics.policyReloads.inc({ result: result.ok ? 'success' : 'failure' });
    if (result.ok) {
      metrics.setPolicy(result.sha256);
      if (result.changed) logger.info({ sha256: result.sha256 }, 'policy reloaded');
    } else {
      logger.error({ err: result.error }, 'policy reload failed; the last good policy keeps serving');
    }
    return result;
  }

  let draining = false;
  let started = false;
  let doors: Array<{ door: FrontDoor; address: string }> = [];
  const admin = createAdminDoor({
    readiness: () => {
      const r = engine.readiness();
      const store = r.sessionStore === undefined ? {} : { sessionStore: r.sessionStore };
      if (draining) return { ready: false, missing: ['shutting down', ...r.missing], ...store };
      // The admin listener starts first: not ready until every front door listens too.
      const waiting = started ? doors.filter((d) => !d.door.ready()).map((d) => `front door ${d.door.name}`) : ['front doors starting'];
      const missing = [...waiting, ...r.missing];
      return { ready: missing.length === 0, missing, ...store };
    },
    policySha256: () => authorizer.current().sha256,
    metrics,
    logger,
  });

  let stopWatching = (): void => undefined;
  /** Drains every door (the admin listener last, so /readyz answers 503 meanwhile), then stops the engine. */
  async function stop(deadline: number): Promise<void> {
    draining = true;
    stopWatching();
    await Promise.all(doors.map((d) => d.door.drain(deadline)));
    engine.close();
    await admin.close();
    stopCountingDrops();
    await stopTracing();
  }

  try {
    const adminAddress = await admin.listen(config.admin.listen);
    doors = await createDoors(config, { engine, logger, observe, metrics, tracing });
    const addresses: Record<string, string> = {};
    for (const { door, address } of doors) addresses[door.name] = await door.listen(address);
    started = true;
    if (config.authz.watch) {
      const keyFiles = config.authn.jwt.flatMap((i) => [i.jwksFile, i.secretFile]).filter((f): f is string => f !== undefined);
      stopWatching = watchFiles([config.authz.model, config.authz.policy, ...keyFiles], () => void reload());
    }
    const extAuthz = {
      ...(addresses['extAuthzHttp'] === undefined ? {} : { http: addresses['extAuthzHttp'] }),
      ...(addresses['extAuthzGrpc'] === undefined ? {} : { grpc: addresses['extAuthzGrpc'] }),
      ...(addresses['forwardAuth'] === undefined ? {} : { forwardAuth: addresses['forwardAuth'] }),
    };
    const proxyAddress = addresses['proxy'];
    logger.info({ proxy: proxyAddress, admin: adminAddress, ...extAuthz, upstream: config.upstream?.url }, 'authz-sidecar listening');
    return {
      engine,
      proxyAddress,
      adminAddress,
      extAuthz,
      metrics,
      reload,
      async close() {
        logger.info({ drainSeconds: config.shutdown.drainSeconds }, 'authz-sidecar draining');
        await stop(Date.now() + config.shutdown.drainSeconds * 1000);
        logger.info('authz-sidecar stopped');
      },
    };
  } catch (err) {
    // A listener that failed to start (a port in use) must not leave the others holding the process open.
    await stop(Date.now());
    throw err;
  }
}
