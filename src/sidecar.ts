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
import { checkJwks, createJwtAuthenticator, MIN_SECRET_BYTES, type JwtAuthenticatorOptions, type JwtIssuerOptions, type KeyConfig } from './authn/jwt.js';
import { createCasbinAuthorizer, PolicyLoadError, type CasbinAuthorizer, type RequestField } from './authz/casbin-authorizer.js';
import { createAdminServer } from './admin/admin-server.js';
import { formatListenAddress, parseListenAddress, parseUpstreamUrl } from './config/address.js';
import { ConfigError, type ConfigIssue } from './config/load.js';
import type { Config } from './config/schema.js';
import { createDecisionEngine, type DecisionEngine } from './core/decide.js';
import type { Authenticator, Authorizer, CredentialExtractor } from './core/stages.js';
import { createIdentityHeaders } from './core/identity-headers.js';
import { createExtAuthzGrpcServer } from './frontends/ext-authz-grpc.js';
import { createExtAuthzHttpServer } from './frontends/ext-authz-http.js';
import { createForwardAuthServer } from './frontends/forward-auth.js';
import { createProxyServer } from './frontends/proxy.js';

export interface EngineBuildOptions {
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
function createAuthenticators(setup: AuthnSetup, options: EngineBuildOptions): Authenticator[] {
  const log = options.logger;
  const now = options.now;
  const authenticators: Authenticator[] = [];
  if (setup.issuers.length > 0) {
    authenticators.push(
      createJwtAuthenticator(setup.issuers, {
        ...(now ? { now } : {}),
        ...(options.jwks ? { jwks: options.jwks } : {}),
        events: {
          keysFetched: (issuer, result, error) => {
            if (result === 'error') log?.warn({ issuer, error: error?.message }, 'JWKS fetch failed; the last good keys keep serving');
          },
          discovered: (issuer, result, error) => {
            if (result === 'error') log?.warn({ issuer, error: error?.message }, 'OIDC discovery failed; retrying');
          },
        },
      }),
    );
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
        },
      }),
    );
  }
  return authenticators;
}

/** The Casbin authorizer of a config; a load failure becomes an issue naming its key. */
export async function buildAuthorizer(config: Config, issues: ConfigIssue[]): Promise<CasbinAuthorizer | undefined> {
  try {
    return await createCasbinAuthorizer({
      modelPath: config.authz.model,
      policyPath: config.authz.policy,
      request: config.authz.request as RequestField[],
      subjectPrefix: config.identity.subjectPrefix,
      rolePrefix: config.identity.rolePrefix,
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
  });
}

/** Builds the engine; a file that cannot be loaded becomes a ConfigError naming its key. */
export async function buildEngine(config: Config, options: EngineBuildOptions = {}): Promise<DecisionEngine> {
  const issues: ConfigIssue[] = [];
  const setup = await readAuthnSetup(config, issues);
  const authorizer = await buildAuthorizer(config, issues);
  if (issues.length > 0 || authorizer === undefined) throw new ConfigError(options.file ?? '<config>', issues);
  for (const f of authorizer.findings) {
    options.logger?.warn({ line: f.line, code: f.code }, `policy ${config.authz.policy}: ${f.message}`);
  }
  return engineFromParts(config, { authorizer, authenticators: createAuthenticators(setup, options) });
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
  const engine = await buildEngine(config, { ...options, logger });
  const decisionLog = config.logging.decisions;

  const closers: Array<() => Promise<void>> = [];
  const closeAll = async (): Promise<void> => {
    await Promise.all(closers.map((c) => c()));
    engine.close();
  };
  try {
    const admin = createAdminServer({ readiness: () => engine.readiness(), logger });
    const adminAddress = await listen(admin, config.admin.listen);
    closers.push(() => admin.close());

    const extAuthz: { http?: string; grpc?: string; forwardAuth?: string } = {};
    const doors = config.extAuthz;
    if (doors.http !== undefined) {
      const server = createExtAuthzHttpServer({ engine, logger, decisionLog, pathPrefix: doors.http.pathPrefix });
      extAuthz.http = await listen(server, doors.http.listen);
      closers.push(() => server.close());
    }
    if (doors.forwardAuth !== undefined) {
      const server = createForwardAuthServer({ engine, logger, decisionLog });
      extAuthz.forwardAuth = await listen(server, doors.forwardAuth.listen);
      closers.push(() => server.close());
    }
    if (doors.grpc !== undefined) {
      const server = createExtAuthzGrpcServer({ engine, logger, decisionLog });
      extAuthz.grpc = await server.listen(doors.grpc.listen);
      closers.push(() => server.close());
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
        decisionLog,
      });
      proxyAddress = await listen(proxy, config.listen);
      closers.push(() => proxy.close());
    }
    logger.info({ proxy: proxyAddress, admin: adminAddress, ...extAuthz, upstream: config.upstream?.url }, 'authz-sidecar listening');
    return { engine, proxyAddress, adminAddress, extAuthz, close: closeAll };
  } catch (err) {
    await closeAll();
    throw err;
  }
}
