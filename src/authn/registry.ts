/**
 * Config to authenticators: one entry per `authn` section. An entry reads the files its config names
 * (problems become issues naming the key that points to the file) and builds its authenticator; adding an
 * authenticator is one module, its schema entry and one entry here. Events (key fetches, cache use,
 * discovery and introspection failures) go to one sink, wired once by the engine assembly.
 */
import { readFile } from 'node:fs/promises';
import type { ConfigIssue } from '../config/load.js';
import type { Config } from '../config/schema.js';
import type { Authenticator } from '../core/stages.js';
import type { IntrospectionEndpointOptions } from './introspection.js';
import { MIN_SECRET_BYTES } from '../config/defaults.js';
import { checkJwks, createJwtAuthenticator, type JwtAuthenticatorOptions, type JwtIssuerOptions, type KeyConfig } from './jwt.js';

/** Where authenticators report what operations want to see; every member optional. */
export interface AuthnEventSink {
  keysFetched?(issuer: string, result: 'success' | 'error', error?: Error): void;
  keysRemoved?(issuer: string, count: number): void;
  cache?(cache: 'jwt' | 'introspection', hit: boolean): void;
  /** Discovery, introspection or another IdP call failed (logged as a warning). */
  idpFailed?(what: string, issuer: string, error: Error | undefined): void;
}

export interface AuthnContext {
  readonly now?: (() => Date) | undefined;
  /** Remote JWKS timing (tests shorten it). */
  readonly jwks?: JwtAuthenticatorOptions['jwks'] | undefined;
  readonly events: AuthnEventSink;
}

/** An authenticator built from config, with the key files it can read again (reload). */
export interface ConfiguredAuthenticator {
  readonly authenticator: Authenticator;
  /** Reads its files again and swaps the keys; throws (keeping the old keys) on a bad file. */
  readonly reloadFiles?: (() => Promise<void>) | undefined;
}

/** Reads a mounted secret; surrounding whitespace (the newline `echo` adds) is not part of it. */
async function readSecret(path: string, key: string, issues: ConfigIssue[]): Promise<Buffer | undefined> {
  try {
    return Buffer.from((await readFile(path)).toString('utf8').trim(), 'utf8');
  } catch (err) {
    issues.push({ path: key, message: `cannot read ${path}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`, cause: err });
    return undefined;
  }
}

/** The JWT issuers of the config with their key files read and checked. */
export async function readJwtIssuers(config: Config, issues: ConfigIssue[]): Promise<JwtIssuerOptions[]> {
  const issuers: JwtIssuerOptions[] = [];
  for (const [i, issuer] of config.authn.jwt.entries()) {
    const path = `authn.jwt[${i}]`;
    let keys: KeyConfig;
    if (issuer.jwksFile !== undefined) {
      let text: string;
      try {
        text = await readFile(issuer.jwksFile, 'utf8');
      } catch (err) {
        issues.push({ path: `${path}.jwksFile`, message: `cannot read ${issuer.jwksFile}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`, cause: err });
        continue;
      }
      try {
        keys = { jwks: checkJwks(JSON.parse(text)) };
      } catch (err) {
        issues.push({ path: `${path}.jwksFile`, message: `invalid JWKS file: ${(err as Error).message}`, cause: err });
        continue;
      }
    } else if (issuer.secretFile !== undefined) {
      const secret = await readSecret(issuer.secretFile, `${path}.secretFile`, issues);
      if (secret === undefined) continue;
      if (secret.byteLength < MIN_SECRET_BYTES) {
        issues.push({ path: `${path}.secretFile`, message: `the secret must be at least ${MIN_SECRET_BYTES} bytes (it has ${secret.byteLength})` });
        continue;
      }
      keys = { secret: new Uint8Array(secret) };
    } else if (issuer.jwksUri !== undefined) keys = { jwksUri: issuer.jwksUri };
    else keys = { discovery: true };
    issuers.push({
      issuer: issuer.issuer,
      audiences: issuer.audiences,
      keys,
      algorithms: issuer.algorithms,
      clockSkewSeconds: issuer.clockSkewSeconds,
      maxTokenAgeSeconds: issuer.maxTokenAgeSeconds,
    });
  }
  return issuers;
}

/** The introspection endpoints of the config with their client secrets read. */
export async function readIntrospectionEndpoints(config: Config, issues: ConfigIssue[]): Promise<IntrospectionEndpointOptions[]> {
  const endpoints: IntrospectionEndpointOptions[] = [];
  for (const [i, entry] of config.authn.introspection.entries()) {
    const key = `authn.introspection[${i}].clientSecretFile`;
    const secret = await readSecret(entry.clientSecretFile, key, issues);
    if (secret === undefined) continue;
    if (secret.byteLength === 0) {
      issues.push({ path: key, message: 'the client secret file is empty' });
      continue;
    }
    endpoints.push({ ...entry, clientSecret: secret.toString('utf8') });
  }
  return endpoints;
}

/** One authenticator kind: reads its section's files, then builds (unless the section is empty). */
interface RegistryEntry {
  /** What `validate` and startup check: the files are read, problems become issues. */
  prepare(config: Config, issues: ConfigIssue[]): Promise<((context: AuthnContext) => ConfiguredAuthenticator) | undefined>;
}

const jwtEntry: RegistryEntry = {
  async prepare(config, issues) {
    const issuers = await readJwtIssuers(config, issues);
    if (issuers.length === 0) return undefined;
    // OIDC discovery (openid-client) is loaded only when an issuer uses it.
    const discovery = issuers.some((i) => 'discovery' in i.keys) ? await import('./discovery.js') : undefined;
    return (context) => {
      const jwt = createJwtAuthenticator(issuers, {
        ...(discovery ? { discoveredKeySource: discovery.createDiscoveredKeySource } : {}),
        ...(context.now ? { now: context.now } : {}),
        ...(context.jwks ? { jwks: context.jwks } : {}),
        events: {
          keysFetched: (issuer, result, error) => context.events.keysFetched?.(issuer, result, error),
          keysRemoved: (issuer, count) => context.events.keysRemoved?.(issuer, count),
          cache: (hit) => context.events.cache?.('jwt', hit),
          discovered: (issuer, result, error) => {
            if (result === 'error') context.events.idpFailed?.('OIDC discovery', issuer, error);
          },
        },
      });
      return {
        authenticator: jwt,
        async reloadFiles() {
          const reloadIssues: ConfigIssue[] = [];
          const next = await readJwtIssuers(config, reloadIssues);
          if (reloadIssues.length > 0) throw new Error(reloadIssues.map((i) => `${i.path}: ${i.message}`).join('; '), { cause: reloadIssues[0]?.cause });
          jwt.replaceLocalKeys(new Map(next.map((i) => [i.issuer, i.keys])));
        },
      };
    };
  },
};

const introspectionEntry: RegistryEntry = {
  async prepare(config, issues) {
    const endpoints = await readIntrospectionEndpoints(config, issues);
    if (endpoints.length === 0) return undefined;
    // Introspection (and openid-client with it) is loaded only when configured.
    const { createIntrospectionAuthenticator } = await import('./introspection.js');
    return (context) => ({
      authenticator: createIntrospectionAuthenticator(endpoints, {
        // With JWT issuers configured, a JWT-shaped token is theirs; otherwise every token is introspected.
        acceptJwts: config.authn.jwt.length === 0,
        ...(context.now ? { now: context.now } : {}),
        events: {
          discovered: (issuer, result, error) => {
            if (result === 'error') context.events.idpFailed?.('OIDC discovery for introspection', issuer, error);
          },
          introspected: (issuer, result, error) => {
            if (result === 'error') context.events.idpFailed?.('token introspection', issuer, error);
          },
          cache: (hit) => context.events.cache?.('introspection', hit),
        },
      }),
    });
  },
};

/** In the order they are asked: the first that does not answer "not mine" decides. */
const REGISTRY: readonly RegistryEntry[] = [jwtEntry, introspectionEntry];

/** Reads every authenticator's files; returns the builders of those configured. Problems become issues. */
export async function prepareAuthenticators(config: Config, issues: ConfigIssue[]): Promise<Array<(context: AuthnContext) => ConfiguredAuthenticator>> {
  const builders: Array<(context: AuthnContext) => ConfiguredAuthenticator> = [];
  for (const entry of REGISTRY) {
    const build = await entry.prepare(config, issues);
    if (build !== undefined) builders.push(build);
  }
  return builders;
}
