/**
 * The composition root: builds the decision engine from a validated config (keys, enforcer and caches at
 * startup, not on the first request) and starts the front doors and the admin listener.
 */
import { lstat, readFile, unlink } from 'node:fs/promises';
import type { FastifyBaseLogger, FastifyInstance } from 'fastify';
import { pino } from 'pino';
import { createCredentialExtractor } from './authn/credentials.js';
import { createIdentityMapper } from './authn/identity-mapping.js';
import { createIntrospectionAuthenticator, type IntrospectionEndpointOptions } from './authn/introspection.js';
import {
  checkJwks,
  createJwtAuthenticator,
  MIN_SECRET_BYTES,
  type JwtAuthenticator,
  type JwtAuthenticatorOptions,
  type JwtIssuerOptions,
  type KeyConfig,
} from './authn/jwt.js';
import { createCasbinAuthorizer, PolicyLoadError, type CasbinAuthorizer, type RequestField } from './authz/casbin-authorizer.js';
import { createAdminServer } from './admin/admin-server.js';
import { formatListenAddress, parseListenAddress, parseUpstreamUrl } from './config/address.js';
import { ConfigError, type ConfigIssue } from './config/load.js';
import type { Config } from './config/schema.js';
import { createDecisionEngine, type DecisionEngine } from './core/decide.js';
import type { Authenticator, Authorizer, CredentialExtractor } from './core/stages.js';
import { createIdentityHeaders } from './core/identity-headers.js';
import { createExtAuthzHttpServer } from './frontends/ext-authz-http.js';
import { createForwardAuthServer } from './frontends/forward-auth.js';
import { createProxyServer } from './frontends/proxy.js';
import { createDecisionObserver } from './frontends/decision-log.js';
import { createMetrics, type Metrics } from './admin/metrics.js';
import { createReloadableAuthorizer, type ReloadableAuthorizer, type ReloadResult } from './authz/reloadable-authorizer.js';
import { watchFiles } from './authz/file-watch.js';

export interface EngineBuildOptions {
  /** Where key fetches and cache use are counted. */
  readonly metrics?: Metrics;
  /** The config file, for error messages. */
  readonly file?: string;
  readonly now?: () => Date;
  /** Remote JWKS timing (tests shorten it). */
  readonly jwks?: JwtAuthenticatorOptions['jwks'];
  /** Where key fetches, discovery and introspection failures are reported. */
  readonly logger?: FastifyBaseLogger;
}

/** Reads a mounted secret; surrounding whitespace (the newline `echo` adds) is not part of it. */
async function readSecret(path: string): Promise<Buffer> {
  const raw = await readFile(path);
  return Buffer.from(raw.toString('utf8').trim(), 'utf8');
}

/** The authn sections with their files read and checked; problems become issues naming the key. */
export interface AuthnSetup {
  readonly issuers: readonly JwtIssuerOptions[];
  readonly endpoints: readonly IntrospectionEndpointOptions[];
}

export async function readAuthnSetup(config: Config, issues: ConfigIssue[]): Promise<AuthnSetup> {
  const issuers: JwtIssuerOptions[] = [];
  for (const [i, issuer] of config.authn.jwt.entries()) {
    const path = `authn.jwt[${i}]`;
    let keys: KeyConfig;
    try {
      if (issuer.jwksFile !== undefined) keys = { jwks: checkJwks(JSON.parse(await readFile(issuer.jwksFile, 'utf8'))) };
      else if (issuer.secretFile !== undefined) {
        const secret = await readSecret(issuer.secretFile);
        if (secret.byteLength < MIN_SECRET_BYTES) {
          issues.push({ path: `${path}.secretFile`, message: `the secret must be at least ${MIN_SECRET_BYTES} bytes (it has ${secret.byteLength})` });
          continue;
        }
        keys = { secret: new Uint8Array(secret) };
      } else if (issuer.jwksUri !== undefined) keys = { jwksUri: issuer.jwksUri };
      else keys = { discovery: true };
    } catch (err) {
      issues.push({ path: `${path}.jwksFile`, message: `invalid JWKS file: ${(err as Error).message}` });
      continue;
    }
    issuers.push({
      issuer: issuer.issuer,
      audiences: issuer.audiences,
      keys,
      algorithms: issuer.algorithms,
      clockSkewSeconds: issuer.clockSkewSeconds,
      maxTokenAgeSeconds: issuer.maxTokenAgeSeconds,
    });
  }

  const endpoints: IntrospectionEndpointOptions[] = [];
  for (const [i, entry] of config.authn.introspection.entries()) {
    const secret = (await readSecret(entry.clientSecretFile)).toString('utf8');
    if (secret === '') {
      issues.push({ path: `authn.introspection[${i}].clientSecretFile`, message: 'the client secret file is empty' });
      continue;
    }
    endpoints.push({ ...entry, clientSecret: secret });
  }
  return { issuers, endpoints };
}

/** Starts the authenticators (remote keys and discovery begin loading now). */
function createAuthenticators(setup: AuthnSetup, options: EngineBuildOptions): { authenticators: Authenticator[]; jwt: JwtAuthenticator | undefined } {
  const log = options.logger;
  const now = options.now;
  const authenticators: Authenticator[] = [];
  let jwt: JwtAuthenticator | undefined;
  if (setup.issuers.length > 0) {
    jwt = createJwtAuthenticator(setup.issuers, {
      ...(now ? { now } : {}),
      ...(options.jwks ? { jwks: options.jwks } : {}),
      events: {
        keysFetched: (issuer, result, error) => {
          options.metrics?.jwksFetches.inc({ issuer, result });
          if (result === 'error') log?.warn({ issuer, error: error?.message }, 'JWKS fetch failed; the last good keys keep serving');
        },
        cache: (hit) => (hit ? options.metrics?.cacheHits : options.metrics?.cacheMisses)?.inc({ cache: 'jwt' }),
        discovered: (issuer, result, error) => {
          if (result === 'error') log?.warn({ issuer, error: error?.message }, 'OIDC discovery failed; retrying');
        },
      },
    });
    authenticators.push(jwt);
  }
  if (setup.endpoints.length > 0) {
    authenticators.push(
      createIntrospectionAuthenticator(setup.endpoints, {
        acceptJwts: setup.issuers.length === 0,
        ...(now ? { now } : {}),
        events: {
          discovered: (issuer, result, error) => {
            if (result === 'error') log?.warn({ issuer, error: error?.message }, 'OIDC discovery for introspection failed; retrying');
          },
          introspected: (issuer, result, error) => {
            if (result === 'error') log?.warn({ issuer, error: error?.message }, 'token introspection failed');
          },
          cache: (hit) => (hit ? options.metrics?.cacheHits : options.metrics?.cacheMisses)?.inc({ cache: 'introspection' }),
        },
      }),
    );
  }
  return { authenticators, jwt };
}

/** The Casbin authorizer of a config; a load failure becomes an issue naming its key. */
export async function buildAuthorizer(config: Config, issues: ConfigIssue[], metrics?: Metrics): Promise<CasbinAuthorizer | undefined> {
  try {
    return await createCasbinAuthorizer({
      modelPath: config.authz.model,
      policyPath: config.authz.policy,
      request: config.authz.request as RequestField[],
      subjectPrefix: config.identity.subjectPrefix,
      rolePrefix: config.identity.rolePrefix,
      onDecisionCache: metrics === undefined ? undefined : (hit) => (hit ? metrics.cacheHits : metrics.cacheMisses).inc({ cache: 'decision' }),
    });
  } catch (err) {
    if (!(err instanceof PolicyLoadError)) throw err;
    issues.push({ path: err.configKey, message: err.message });
    return undefined;
  }
}

/**
 * The decision engine of a config, from the same parts for `serve` and the offline CLI; the CLI passes its
 * own credentials and authenticator (identities given by test cases instead of tokens).
 */
export function engineFromParts(
  config: Config,
  parts: { readonly authorizer: Authorizer; readonly authenticators: readonly Authenticator[]; readonly credentials?: CredentialExtractor },
): DecisionEngine {
  return createDecisionEngine({
    paths: config.paths,
    credentials: parts.credentials ?? createCredentialExtractor(config.authn.tokenFrom),
    authenticators: parts.authenticators,
    identity: createIdentityMapper(config.identity),
    authorizer: parts.authorizer,
    identityHeaders: createIdentityHeaders(config.headers),
    forwardToken: config.headers.forwardToken,
    mode: config.authz.mode,
  });
}

/** A built engine with what operations need to reach inside it. */
export interface BuiltEngine {
  readonly engine: DecisionEngine;
  readonly authorizer: ReloadableAuthorizer;
  /** Reads the JWKS and secret files again and swaps the keys; throws (keeping the old keys) on a bad file. */
  readonly reloadKeyFiles: () => Promise<void>;
}

/** Policy lint findings logged one by one at load; the rest are counted in one line. */
const MAX_LOGGED_FINDINGS = 20;

/** Builds the engine; a file that cannot be loaded becomes a ConfigError naming its key. */
export async function buildEngine(config: Config, options: EngineBuildOptions = {}): Promise<BuiltEngine> {
  const issues: ConfigIssue[] = [];
  const setup = await readAuthnSetup(config, issues);
  const initial = await buildAuthorizer(config, issues, options.metrics);
  if (issues.length > 0 || initial === undefined) throw new ConfigError(options.file ?? '<config>', issues);
  const logFindings = (a: CasbinAuthorizer): void => {
    // A large generated policy can have a finding per line: the first few are logged, then a count.
    for (const f of a.findings.slice(0, MAX_LOGGED_FINDINGS)) options.logger?.warn({ line: f.line, code: f.code }, `policy ${config.authz.policy}: ${f.message}`);
    const more = a.findings.length - MAX_LOGGED_FINDINGS;
    if (more > 0) options.logger?.warn({ more }, `policy ${config.authz.policy}: ${more} more findings; \`authz-sidecar validate\` lists them all`);
  };
  logFindings(initial);
  const authorizer = createReloadableAuthorizer(initial, async () => {
    const reloadIssues: ConfigIssue[] = [];
    const next = await buildAuthorizer(config, reloadIssues, options.metrics);
    if (next === undefined) throw new Error(reloadIssues.map((i) => `${i.path}: ${i.message}`).join('; '));
    logFindings(next);
    return next;
  });
  const { authenticators, jwt } = createAuthenticators(setup, options);
  const engine = engineFromParts(config, { authorizer, authenticators });
  async function reloadKeyFiles(): Promise<void> {
    const keyIssues: ConfigIssue[] = [];
    const next = await readAuthnSetup(config, keyIssues);
    if (keyIssues.length > 0) throw new Error(keyIssues.map((i) => `${i.path}: ${i.message}`).join('; '));
    jwt?.replaceLocalKeys(new Map(next.issuers.map((i) => [i.issuer, i.keys])));
  }
  return { engine, authorizer, reloadKeyFiles };
}

export function createLogger(config: Config): FastifyBaseLogger {
  return pino({
    level: config.logging.level,
    base: { service: 'authz-sidecar' },
    // Belt and braces: nothing we log carries these, but a future log line must not leak them either.
    redact: { paths: ['req.headers.authorization', 'req.headers.cookie', '*.token', '*.authorization'], censor: '[redacted]' },
  });
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
  /** Reloads model and policy (SIGHUP, file changes); the last good ones keep serving on failure. */
  reload(): Promise<ReloadResult>;
  /**
   * Graceful stop: readiness turns 503 at once, listeners stop accepting, in-flight requests finish for up
   * to `shutdown.drainSeconds`, then remaining connections are closed.
   */
  close(): Promise<void>;
}

/** What the sidecar starts and drains: a fastify instance or a plain check server. */
type Listener = Pick<FastifyInstance, 'server'> & {
  listen(options: { path: string } | { host: string; port: number }): Promise<unknown>;
  close(): Promise<unknown>;
};

async function listen(app: Listener, address: string): Promise<string> {
  const parsed = parseListenAddress(address);
  if (parsed === undefined) throw new TypeError(`invalid listen address ${address}`);
  if (parsed.kind === 'unix') {
    // A socket file left by a previous run would make listen fail with EADDRINUSE.
    const stat = await lstat(parsed.path).catch(() => undefined);
    if (stat?.isSocket()) await unlink(parsed.path);
    await app.listen({ path: parsed.path });
    return address;
  }
  await app.listen({ host: parsed.host, port: parsed.port });
  const bound = app.server.address();
  const port = typeof bound === 'object' && bound !== null ? bound.port : parsed.port;
  return formatListenAddress({ ...parsed, port });
}

export async function startSidecar(
  config: Config,
  options: EngineBuildOptions & { logger?: FastifyBaseLogger } = {},
): Promise<RunningSidecar> {
  const logger = options.logger ?? createLogger(config);
  const metrics = createMetrics();
  const { engine, authorizer, reloadKeyFiles } = await buildEngine(config, { ...options, logger, metrics });
  metrics.setPolicy(authorizer.current().sha256);
  const observe = createDecisionObserver({ level: config.logging.decisions, metrics });
  let draining = false;

  async function reload(): Promise<ReloadResult> {
    // Key files first: a bad JWKS or secret file keeps the old keys and counts as a failed reload.
    try {
      await reloadKeyFiles();
    } catch (err) {
      metrics.policyReloads.inc({ result: 'failure' });
      logger.error({ error: (err as Error).message }, 'key file reload failed; the last good keys keep serving');
    }
    const result = await authorizer.reload();
    metrics.policyReloads.inc({ result: result.ok ? 'success' : 'failure' });
    if (result.ok) {
      metrics.setPolicy(result.sha256);
      if (result.changed) logger.info({ sha256: result.sha256 }, 'policy reloaded');
    } else {
      logger.error({ error: result.error.message }, 'policy reload failed; the last good policy keeps serving');
    }
    return result;
  }

  // Listeners stop in reverse order of start; the admin listener last, so /readyz answers 503 while draining.
  const stoppers: Array<() => Promise<void>> = [];
  const servers: Listener[] = [];
  let stopWatching = (): void => undefined;
  let startedAdmin: FastifyInstance | undefined;
  let listening = false;
  const stopAll = async (): Promise<void> => {
    stopWatching();
    await Promise.all(stoppers.map((c) => c()));
    engine.close();
  };
  try {
    const admin = createAdminServer({
      readiness: () => {
        const r = engine.readiness();
        if (draining) return { ready: false, missing: ['shutting down', ...r.missing] };
        // The admin listener starts first: not ready until every front door listens too.
        return listening ? r : { ready: false, missing: ['front doors starting', ...r.missing] };
      },
      policySha256: () => authorizer.current().sha256,
      metrics,
      logger,
    });
    startedAdmin = admin;
    const adminAddress = await listen(admin, config.admin.listen);

    const extAuthz: { http?: string; grpc?: string; forwardAuth?: string } = {};
    const doors = config.extAuthz;
    if (doors.http !== undefined) {
      const server = createExtAuthzHttpServer({ engine, logger, observe, pathPrefix: doors.http.pathPrefix });
      extAuthz.http = await listen(server, doors.http.listen);
      servers.push(server);
    }
    if (doors.forwardAuth !== undefined) {
      const server = createForwardAuthServer({ engine, logger, observe });
      extAuthz.forwardAuth = await listen(server, doors.forwardAuth.listen);
      servers.push(server);
    }
    if (doors.grpc !== undefined) {
      // gRPC and its proto loader cost about 20 MiB of memory: loaded only by sidecars that answer gRPC.
      const { createExtAuthzGrpcServer } = await import('./frontends/ext-authz-grpc.js');
      const server = createExtAuthzGrpcServer({ engine, logger, observe });
      extAuthz.grpc = await server.listen(doors.grpc.listen);
      stoppers.push(() => server.close());
    }

    let proxyAddress: string | undefined;
    if (config.upstream !== undefined) {
      const upstream = parseUpstreamUrl(config.upstream.url);
      if (upstream === undefined) throw new TypeError(`invalid upstream url ${config.upstream.url}`);
      const proxy = await createProxyServer({
        engine,
        upstream,
        timeoutSeconds: config.upstream.timeoutSeconds,
        websockets: config.upstream.websockets,
        logger,
        observe,
        metrics,
      });
      proxyAddress = await listen(proxy, config.listen);
      servers.push(proxy);
    }
    stoppers.push(
      ...servers.map((s) => async () => {
        await s.close();
      }),
    );

    if (config.authz.watch) {
      const keyFiles = config.authn.jwt.flatMap((i) => [i.jwksFile, i.secretFile]).filter((f): f is string => f !== undefined);
      stopWatching = watchFiles([config.authz.model, config.authz.policy, ...keyFiles], () => void reload());
    }
    listening = true;
    logger.info({ proxy: proxyAddress, admin: adminAddress, ...extAuthz, upstream: config.upstream?.url }, 'authz-sidecar listening');

    const drainMs = config.shutdown.drainSeconds * 1000;
    return {
      engine,
      proxyAddress,
      adminAddress,
      extAuthz,
      metrics,
      reload,
      async close(): Promise<void> {
        draining = true;
        // In-flight requests finish; keep-alive connections are closed as soon as they fall idle (a client
        // holding one open must not stretch the drain); past the drain time the rest are cut.
        const idle = setInterval(() => {
          for (const s of [...servers, admin]) s.server.closeIdleConnections();
        }, 100);
        const deadline = setTimeout(() => {
          for (const s of servers) s.server.closeAllConnections();
        }, drainMs);
        deadline.unref();
        try {
          await stopAll();
        } finally {
          clearTimeout(deadline);
          await admin.close();
          clearInterval(idle);
        }
      },
    };
  } catch (err) {
    // A listener that failed to start (a port in use) must not leave the others holding the process open.
    await stopAll();
    await startedAdmin?.close();
    throw err;
  }
}
