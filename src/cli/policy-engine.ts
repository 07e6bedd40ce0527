/**
 * The engine the offline commands (`policy test`, `policy check`) run: the very same decide() pipeline as
 * `serve` (canonical path, identity mapping, anonymous subject, token roles as request-scoped links, the
 * Casbin policy), with one difference: identities are given (`subject` + `roles`, or `claims`) instead of
 * verified from tokens, so no IdP is needed. A given identity travels as a fixture token that only this
 * engine's authenticator knows.
 */
import { randomUUID } from 'node:crypto';
import type { HeaderMap } from '../core/access-request.js';
import type { DecisionEngine } from '../core/decide.js';
import type { Decision } from '../core/decision.js';
import type { Claims } from '../core/identity.js';
import type { Authenticator, CredentialExtractor } from '../core/stages.js';
import type { CasbinAuthorizer } from '../authz/casbin-authorizer.js';
import { ruleKey, type PolicyLine } from '../authz/policy-file.js';
import type { Config } from '../config/schema.js';
import { ConfigError, type ConfigIssue } from '../config/load.js';
import { buildAuthorizer, engineFromParts } from '../engine.js';

export const TEST_ISSUER = 'authz-sidecar-policy-test';

export type GivenIdentity = { readonly subject: string; readonly roles?: readonly string[] } | { readonly claims: Readonly<Record<string, unknown>> };

export interface OfflineRequest {
  readonly method: string;
  readonly path: string;
  readonly host?: string;
  readonly headers?: Readonly<Record<string, string>>;
  readonly peer?: string;
}

export interface PolicyEngine {
  readonly authorizer: CasbinAuthorizer;
  readonly policyFile: string;
  decide(request: OfflineRequest, identity: GivenIdentity | undefined): Promise<Decision>;
  /** The policy rule (with its line) that decided, if any. */
  ruleOf(decision: Decision): PolicyLine | undefined;
}

/** Puts `value` at a dotted claim path, creating the objects on the way. */
function setAt(claims: Record<string, unknown>, dotted: string, value: unknown): void {
  const parts = dotted.split('.');
  let node = claims;
  for (const part of parts.slice(0, -1)) {
    const next = node[part];
    if (typeof next === 'object' && next !== null && !Array.isArray(next)) node = next as Record<string, unknown>;
    else {
      const created: Record<string, unknown> = {};
      node[part] = created;
      node = created;
    }
  }
  node[parts.at(-1) ?? ''] = value;
}

/** `subject` + `roles` become claims at the configured subject and roles claims, so mapping still runs. */
function claimsOf(config: Config, identity: GivenIdentity): Claims {
  if ('claims' in identity) return identity.claims as Claims;
  const claims: Record<string, unknown> = {};
  const subjectClaim = typeof config.identity.subjectClaim === 'string' ? config.identity.subjectClaim : config.identity.subjectClaim[0];
  setAt(claims, subjectClaim ?? 'sub', identity.subject);
  setAt(claims, config.identity.rolesClaims[0] ?? 'roles', [...(identity.roles ?? [])]);
  return claims as Claims;
}

export async function createPolicyEngine(config: Config, file: string): Promise<PolicyEngine> {
  const issues: ConfigIssue[] = [];
  const authorizer = await buildAuthorizer(config, issues);
  if (authorizer === undefined) throw new ConfigError(file, issues);

  const given = new Map<string, Claims>();
  const FIXTURE_HEADER = 'x-authz-sidecar-policy-test-identity';
  const credentials: CredentialExtractor = {
    tokenHeaders: [FIXTURE_HEADER],
    extract(headers: HeaderMap) {
      const token = headers[FIXTURE_HEADER]?.[0];
      return token === undefined ? { kind: 'none' } : { kind: 'token', token, source: 'given identity' };
    },
    scrubHeaders: () => undefined,
    scrubQuery: (query) => query,
  };
  const authenticator: Authenticator = {
    authenticate: async (token) => {
      const claims = given.get(token);
      return claims === undefined ? { kind: 'notMine' } : { kind: 'authenticated', issuer: TEST_ISSUER, claims };
    },
    missing: () => [],
    close: () => undefined,
  };
  const engine: DecisionEngine = engineFromParts(config, { authorizer, authenticators: [authenticator], credentials });
  const rulesByKey = new Map(authorizer.rules.map((r) => [ruleKey(r.ptype, r.values), r]));

  return {
    authorizer,
    policyFile: config.authz.policy,
    async decide(request, identity) {
      const headers: Record<string, string[]> = {};
      for (const [name, value] of Object.entries(request.headers ?? {})) headers[name.toLowerCase()] = [value];
      let token: string | undefined;
      if (identity !== undefined) {
        token = randomUUID();
        given.set(token, claimsOf(config, identity));
        headers[FIXTURE_HEADER] = [token];
      }
      try {
        return await engine.decide({
          frontDoor: 'cli',
          method: request.method.toUpperCase(),
          target: request.path,
          host: request.host ?? 'localhost',
          headers,
          peer: request.peer ?? '',
          requestId: randomUUID(),
          // Decided as the proxy would: the canonical path is what the application would see.
          rewritesPath: true,
          removesHeaders: true,
        });
      } finally {
        if (token !== undefined) given.delete(token);
      }
    },
    ruleOf(decision) {
      // Casbin reports the matched rule's values; the ptype of an explanation is always the policy's `p`.
      return decision.policy === undefined ? undefined : rulesByKey.get(ruleKey('p', decision.policy));
    },
  };
}
