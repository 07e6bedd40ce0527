/**
 * The composition root: builds the decision engine from a validated config (keys, enforcer and caches at
 * startup, not on the first request) and starts the front doors and the admin listener.
 */
import { lstat, unlink } from 'node:fs/promises';
import type { FastifyBaseLogger, FastifyInstance } from 'fastify';
import { pino } from 'pino';
import { createCredentialExtractor } from './authn/credentials.js';
import { createIdentityMapper } from './authn/identity-mapping.js';
import { createJwtAuthenticator, loadJwksFile, type JwtIssuerOptions } from './authn/jwt.js';
import { createCasbinAuthorizer, PolicyLoadError, type RequestField } from './authz/casbin-authorizer.js';
import { createAdminServer } from './admin/admin-server.js';
import { formatListenAddress, parseListenAddress, parseUpstreamUrl } from './config/address.js';
import { ConfigError, type ConfigIssue } from './config/load.js';
import type { Config } from './config/schema.js';
import { createDecisionEngine, type DecisionEngine } from './core/decide.js';
import { createIdentityHeaders } from './core/identity-headers.js';
import { createProxyServer } from './frontends/proxy.js';

export interface EngineBuildOptions {
  /** The config file, for error messages. */
  readonly file?: string;
  readonly now?: () => Date;
}

/** Builds the engine; a file that cannot be loaded becomes a ConfigError naming its key. */
export async function buildEngine(config: Config, options: EngineBuildOptions = {}): Promise<DecisionEngine> {
  const file = options.file ?? '<config>';
  const issues: ConfigIssue[] = [];

  const issuers: JwtIssuerOptions[] = [];
  for (const [i, issuer] of config.authn.jwt.entries()) {
    let jwks;
    if (issuer.jwksFile !== undefined) {
      try {
        jwks = await loadJwksFile(issuer.jwksFile);
      } catch (err) {
        issues.push({ path: `authn.jwt[${i}].jwksFile`, message: `invalid JWKS file: ${(err as Error).message}` });
        continue;
      }
    }
    issuers.push({ ...issuer, jwks });
  }

  let authorizer;
  try {
    authorizer = await createCasbinAuthorizer({
      modelPath: config.authz.model,
      policyPath: config.authz.policy,
      request: config.authz.request as RequestField[],
      subjectPrefix: config.identity.subjectPrefix,
      rolePrefix: config.identity.rolePrefix,
    });
  } catch (err) {
    if (!(err instanceof PolicyLoadError)) throw err;
    issues.push({ path: err.configKey, message: err.message });
  }
  if (issues.length > 0 || authorizer === undefined) throw new ConfigError(file, issues);

  return createDecisionEngine({
    paths: config.paths,
    credentials: createCredentialExtractor(config.authn.tokenFrom),
    authenticators: issuers.length > 0 ? [createJwtAuthenticator(issuers, options.now ? { now: options.now } : {})] : [],
    identity: createIdentityMapper(config.identity),
    authorizer,
    identityHeaders: createIdentityHeaders(config.headers),
    forwardToken: config.headers.forwardToken,
  });
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
  /** `host:port` (or `unix:/path`) the proxy listens on, with the real port when 0 was asked for. */
  readonly proxyAddress: string;
  readonly adminAddress: string;
  close(): Promise<void>;
}

async function listen(app: FastifyInstance, address: string): Promise<string> {
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
  const engine = await buildEngine(config, options);
  const upstream = parseUpstreamUrl(config.upstream.url);
  if (upstream === undefined) throw new TypeError(`invalid upstream url ${config.upstream.url}`);

  const proxy = await createProxyServer({
    engine,
    upstream,
    timeoutSeconds: config.upstream.timeoutSeconds,
    websockets: config.upstream.websockets,
    logger,
    decisionLog: config.logging.decisions,
  });
  const admin = createAdminServer({ readiness: () => engine.readiness(), logger });
  const servers: FastifyInstance[] = [];
  try {
    const adminAddress = await listen(admin, config.admin.listen);
    servers.push(admin);
    const proxyAddress = await listen(proxy, config.listen);
    servers.push(proxy);
    logger.info({ proxy: proxyAddress, admin: adminAddress, upstream: config.upstream.url }, 'authz-sidecar listening');
    return {
      engine,
      proxyAddress,
      adminAddress,
      async close(): Promise<void> {
        await Promise.all(servers.map((s) => s.close()));
        engine.close();
      },
    };
  } catch (err) {
    await Promise.all(servers.map((s) => s.close()));
    engine.close();
    throw err;
  }
}
