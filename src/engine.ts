/**
 * Engine assembly: the decision engine of a validated config (keys, enforcer and caches built at startup,
 * not on the first request), from the same parts for `serve` and the offline CLI. No door, no fastify, no
 * gRPC: `validate` and `policy test` load this and nothing of the serving side.
 */
import type { Logger } from 'pino';
import { createCredentialExtractor } from './authn/credentials.js';
import { createIdentityMapper } from './authn/identity-mapping.js';
import type { JwtAuthenticatorOptions } from './authn/jwt.js';
import { prepareAuthenticators, type AuthnEventSink } from './authn/registry.js';
import { createCasbinAuthorizer, PolicyLoadError, type CasbinAuthorizer, type RequestField } from './authz/casbin-authorizer.js';
import { createReloadableAuthorizer, type ReloadableAuthorizer } from './authz/reloadable-authorizer.js';
import { ConfigError, type ConfigIssue } from './config/load.js';
import type { Config } from './config/schema.js';
import { createDecisionEngine, type DecisionEngine } from './core/decide.js';
import { createIdentityHeaders } from './core/identity-headers.js';
import type { Authenticator, Authorizer, BrowserSessions, CredentialExtractor, IdentityMapper, StageTracer } from './core/stages.js';
import type { SignInEvents } from './signin/browser-sessions.js';
import { prepareSignIn } from './signin/setup.js';

/** What the engine reports while it serves: key fetches, cache use, IdP failures, policy findings. */
export interface EngineEvents extends AuthnEventSink {
  readonly decisionCache?: ((hit: boolean) => void) | undefined;
  readonly signIn?: SignInEvents | undefined;
}

export interface EngineBuildOptions {
  /** The config file, for error messages. */
  readonly file?: string | undefined;
  readonly now?: (() => Date) | undefined;
  /** Remote JWKS timing (tests shorten it). */
  readonly jwks?: JwtAuthenticatorOptions['jwks'] | undefined;
  /** Where policy findings and IdP failures are logged. */
  readonly logger?: Pick<Logger, 'warn'> | undefined;
  readonly events?: EngineEvents | undefined;
  /** Stage spans when tracing is on. */
  readonly stages?: StageTracer | undefined;
}

/** The Casbin authorizer of a config; a load failure becomes an issue naming its key. */
export async function buildAuthorizer(config: Config, issues: ConfigIssue[], onDecisionCache?: (hit: boolean) => void): Promise<CasbinAuthorizer | undefined> {
  try {
    return await createCasbinAuthorizer({
      modelPath: config.authz.model,
      policyPath: config.authz.policy,
      request: config.authz.request as RequestField[],
      subjectPrefix: config.identity.subjectPrefix,
      rolePrefix: config.identity.rolePrefix,
      onDecisionCache,
    });
  } catch (err) {
    if (!(err instanceof PolicyLoadError)) throw err;
    issues.push({ path: err.configKey, message: err.message, cause: err });
    return undefined;
  }
}

/**
 * The decision engine of a config from its parts; the CLI passes its own credentials and authenticator
 * (identities given by test cases instead of tokens).
 */
export function engineFromParts(
  config: Config,
  parts: {
    readonly authorizer: Authorizer;
    readonly authenticators: readonly Authenticator[];
    readonly credentials?: CredentialExtractor;
    readonly sessions?: ((identity: IdentityMapper) => BrowserSessions) | undefined;
    readonly stages?: StageTracer | undefined;
  },
): DecisionEngine {
  const identity = createIdentityMapper(config.identity);
  return createDecisionEngine({
    paths: config.paths,
    credentials: parts.credentials ?? createCredentialExtractor(config.authn.tokenFrom),
    authenticators: parts.authenticators,
    identity,
    sessions: parts.sessions?.(identity),
    stages: parts.stages,
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
  const builders = await prepareAuthenticators(config, issues);
  const signIn = await prepareSignIn(config, issues);
  const decisionCache = options.events?.decisionCache;
  const initial = await buildAuthorizer(config, issues, decisionCache);
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
    const next = await buildAuthorizer(config, reloadIssues, decisionCache);
    if (next === undefined) throw new ConfigError(options.file ?? '<config>', reloadIssues);
    logFindings(next);
    return next;
  });
  const events = options.events ?? {};
  const built = builders.map((build) => build({ now: options.now, jwks: options.jwks, events }));
  const engine = engineFromParts(config, {
    authorizer,
    authenticators: built.map((b) => b.authenticator),
    sessions: signIn === undefined ? undefined : (identity) => signIn({ identity, events: events.signIn, now: options.now }),
    stages: options.stages,
  });
  async function reloadKeyFiles(): Promise<void> {
    for (const b of built) await b.reloadFiles?.();
  }
  return { engine, authorizer, reloadKeyFiles };
}
