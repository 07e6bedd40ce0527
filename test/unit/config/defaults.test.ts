/** Defaults are defined once (config/defaults.ts): the schema fills them and the library modules fall back to them. */
import { readFile } from 'node:fs/promises';
import { resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import * as defaults from '../../../src/config/defaults.js';
import { configSchemaChecked } from '../../../src/config/schema.js';
import { createIdentityMapper } from '../../../src/authn/identity-mapping.js';
import * as jwt from '../../../src/authn/jwt.js';
import * as introspection from '../../../src/authn/introspection.js';
import * as credentials from '../../../src/authn/credentials.js';
import * as casbin from '../../../src/authz/casbin-authorizer.js';

const SRC = resolve(import.meta.dirname, '../../../src');
const source = (path: string): Promise<string> => readFile(resolve(SRC, path), 'utf8');
const imports = (text: string): string[] => [...text.matchAll(/^(?:import|export)[^;]*?from '([^']+)'/gms)].map((m) => m[1] ?? '');

describe('config/defaults.ts', () => {
  const minimal = { upstream: { url: 'http://127.0.0.1:3000' }, authz: { model: 'm.conf', policy: 'p.csv' } };

  it('is what the schema fills in', () => {
    const config = configSchemaChecked.parse({
      ...minimal,
      authn: {
        jwt: [
          { issuer: 'https://a.example', audiences: ['x'], jwksFile: 'j.json' },
          { issuer: 'https://b.example', audiences: ['x'], secretFile: 's' },
        ],
        introspection: [{ issuer: 'https://c.example', endpoint: 'https://c.example/i', clientId: 'c', clientSecretFile: 's' }],
      },
      extAuthz: { http: { listen: '127.0.0.1:9191' } },
    });
    expect(config.listen).toBe(defaults.DEFAULT_LISTEN);
    expect(config.admin.listen).toBe(defaults.DEFAULT_ADMIN_LISTEN);
    expect(config.upstream?.timeoutSeconds).toBe(defaults.DEFAULT_UPSTREAM_TIMEOUT_SECONDS);
    expect(config.upstream?.websockets).toBe(defaults.DEFAULT_UPSTREAM_WEBSOCKETS);
    expect(config.extAuthz.http?.pathPrefix).toBe(defaults.DEFAULT_EXT_AUTHZ_PATH_PREFIX);
    expect(config.shutdown.drainSeconds).toBe(defaults.DEFAULT_DRAIN_SECONDS);
    const [keys, secret] = config.authn.jwt;
    expect(keys?.algorithms).toEqual(defaults.DEFAULT_ALGORITHMS);
    expect(secret?.algorithms).toEqual(defaults.DEFAULT_HMAC_ALGORITHMS);
    expect(keys?.clockSkewSeconds).toBe(defaults.DEFAULT_CLOCK_SKEW_SECONDS);
    expect(keys?.maxTokenAgeSeconds).toBe(defaults.DEFAULT_MAX_TOKEN_AGE_SECONDS);
    const [endpoint] = config.authn.introspection;
    expect(endpoint?.authMethod).toBe(defaults.DEFAULT_INTROSPECTION_AUTH_METHOD);
    expect(endpoint?.cacheSeconds).toBe(defaults.DEFAULT_INTROSPECTION_CACHE_SECONDS);
    expect(endpoint?.timeoutSeconds).toBe(defaults.DEFAULT_INTROSPECTION_TIMEOUT_SECONDS);
    expect(config.authn.tokenFrom).toEqual(defaults.DEFAULT_TOKEN_SOURCES);
    expect(config.identity).toEqual({
      subjectClaim: defaults.DEFAULT_SUBJECT_CLAIM,
      rolesClaims: defaults.DEFAULT_ROLES_CLAIMS,
      scopesClaim: defaults.DEFAULT_SCOPES_CLAIM,
      subjectPrefix: defaults.DEFAULT_SUBJECT_PREFIX,
      rolePrefix: defaults.DEFAULT_ROLE_PREFIX,
      anonymousSubject: defaults.DEFAULT_ANONYMOUS_SUBJECT,
    });
    expect(config.authz).toMatchObject({ request: defaults.DEFAULT_REQUEST_FIELDS, mode: defaults.DEFAULT_AUTHZ_MODE, watch: defaults.DEFAULT_AUTHZ_WATCH });
    expect(config.headers).toEqual({
      prefix: defaults.DEFAULT_HEADER_PREFIX,
      subject: defaults.DEFAULT_SUBJECT_HEADER,
      issuer: defaults.DEFAULT_ISSUER_HEADER,
      roles: defaults.DEFAULT_ROLES_HEADER,
      scopes: defaults.DEFAULT_SCOPES_HEADER,
      claims: {},
      forwardToken: defaults.DEFAULT_FORWARD_TOKEN,
    });
    expect(config.paths).toEqual({ encodedSlashes: defaults.DEFAULT_ENCODED_SLASHES, semicolons: defaults.DEFAULT_SEMICOLONS });
    expect(config.logging).toEqual({ level: defaults.DEFAULT_LOG_LEVEL, decisions: defaults.DEFAULT_DECISION_LOG });
  });

  it('hands the schema copies: a parsed config never shares an array with the constants', () => {
    const a = configSchemaChecked.parse(minimal);
    const b = configSchemaChecked.parse(minimal);
    expect(a.identity.rolesClaims).not.toBe(defaults.DEFAULT_ROLES_CLAIMS);
    expect(a.identity.rolesClaims).not.toBe(b.identity.rolesClaims);
    expect(a.authn.tokenFrom).not.toBe(defaults.DEFAULT_TOKEN_SOURCES);
    expect(a.authn.tokenFrom[0]).not.toBe(defaults.DEFAULT_TOKEN_SOURCES[0]);
    expect(a.authz.request).not.toBe(defaults.DEFAULT_REQUEST_FIELDS);
  });

  it('freezes its arrays and objects', () => {
    for (const [name, value] of Object.entries(defaults)) {
      if (typeof value !== 'object' || value === null) continue;
      expect(Object.isFrozen(value), name).toBe(true);
      for (const item of Object.values(value)) if (typeof item === 'object' && item !== null) expect(Object.isFrozen(item), name).toBe(true);
    }
  });

  it('names every constant in DEFAULT_* style (or as the list or limit it is) with a doc comment', async () => {
    const text = await source('config/defaults.ts');
    const names = Object.keys(defaults);
    expect(names.length).toBeGreaterThan(30);
    for (const name of names) {
      expect(name).toMatch(/^(DEFAULT_|MIN_|MAX_|[A-Z]+_ALGORITHMS$)/);
      expect(text, name).toMatch(new RegExp(`\\*/\\nexport const ${name}\\b`));
    }
  });

  it('imports no library (only the core path defaults it shares), and the schema no longer imports from authn', async () => {
    expect(imports(await source('config/defaults.ts'))).toEqual(['../core/canonical-path.js']);
    expect(imports(await source('config/schema.ts')).filter((p) => p.includes('/authn/'))).toEqual([]);
  });

  it('is what the library modules re-export and fall back to', () => {
    expect(jwt.DEFAULT_ALGORITHMS).toBe(defaults.DEFAULT_ALGORITHMS);
    expect(jwt.ASYMMETRIC_ALGORITHMS).toBe(defaults.ASYMMETRIC_ALGORITHMS);
    expect(jwt.HMAC_ALGORITHMS).toBe(defaults.HMAC_ALGORITHMS);
    expect(jwt.MIN_SECRET_BYTES).toBe(defaults.MIN_SECRET_BYTES);
    expect(jwt.DEFAULT_CLOCK_SKEW_SECONDS).toBe(defaults.DEFAULT_CLOCK_SKEW_SECONDS);
    expect(jwt.DEFAULT_CACHE_ENTRIES).toBe(defaults.DEFAULT_CACHE_ENTRIES);
    expect(introspection.DEFAULT_INTROSPECTION_CACHE_SECONDS).toBe(defaults.DEFAULT_INTROSPECTION_CACHE_SECONDS);
    expect(introspection.DEFAULT_INTROSPECTION_TIMEOUT_SECONDS).toBe(defaults.DEFAULT_INTROSPECTION_TIMEOUT_SECONDS);
    expect(credentials.DEFAULT_TOKEN_SOURCES).toBe(defaults.DEFAULT_TOKEN_SOURCES);
    expect(casbin.DEFAULT_REQUEST_FIELDS).toBe(defaults.DEFAULT_REQUEST_FIELDS);
    expect(casbin.DEFAULT_SUBJECT_PREFIX).toBe(defaults.DEFAULT_SUBJECT_PREFIX);
    expect(casbin.DEFAULT_ROLE_PREFIX).toBe(defaults.DEFAULT_ROLE_PREFIX);
    expect(createIdentityMapper().anonymous().subject).toBe(defaults.DEFAULT_ANONYMOUS_SUBJECT);
  });

  it('library modules hold no copies of their own', async () => {
    for (const file of ['authn/jwt.ts', 'authn/introspection.ts', 'authn/credentials.ts', 'authn/identity-mapping.ts', 'authz/casbin-authorizer.ts']) {
      const text = await source(file);
      expect(text, file).not.toMatch(/^export const DEFAULT_/m);
      // An optional option falls back to a named constant, never to a literal (`?? 30`, `?? 'sub'`, `?? ['sub']`).
      expect(text, file).not.toMatch(/\b(options|o)\.\w+\s*\?\?\s*(['"]|\d|\[(?![A-Z_]))/);
    }
  });
});
