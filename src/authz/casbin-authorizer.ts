/**
 * Casbin RBAC (`authz`). The model and policy are read from files and the enforcer is built completely
 * before it serves. Roles from the token act, for that request only, as if the policy held
 * `g, <subjectPrefix><sub>, <rolePrefix><role>` (DESIGN.md §3); policy `g` lines still apply on top, so role
 * inheritance works. Subjects and roles get distinct prefixes because Casbin has one namespace for both: a
 * user named "admin" must never be the role "admin".
 */
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { DefaultRoleManager, Helper, newEnforcer, newModelFromString, StringAdapter, type Enforcer, type Model, type RoleManager } from 'casbin';
import { LRUCache } from 'lru-cache';
import { DEFAULT_DECISION_CACHE_ENTRIES, DEFAULT_REQUEST_FIELDS, DEFAULT_ROLE_PREFIX, DEFAULT_SUBJECT_PREFIX } from '../config/defaults.js';
import type { AccessRequest } from '../core/access-request.js';
import { SidecarError } from '../core/errors.js';
import { claimAt, type Identity } from '../core/identity.js';
import type { Authorizer, AuthzResult } from '../core/stages.js';
import { parsePolicyText, type PolicyLine } from './policy-file.js';
import { buildPolicyIndex, type PolicyIndex } from './policy-index.js';
import { anchoredPattern, lintPolicy, regexPatterns, type Finding } from './policy-lint.js';

export type RequestField = 'subject' | 'path' | 'method' | 'host' | 'peer' | `claim:${string}` | `header:${string}`;

// Defined in config/defaults.ts; re-exported for callers that import them from here.
export { DEFAULT_DECISION_CACHE_ENTRIES, DEFAULT_REQUEST_FIELDS, DEFAULT_ROLE_PREFIX, DEFAULT_SUBJECT_PREFIX } from '../config/defaults.js';
/** Depth of role inheritance followed through `g` lines. */
export const MAX_ROLE_HIERARCHY = 10;
/** Average key budget per decision cache entry: 10,000 entries hold at most about 2.5 MiB of keys. */
const DECISION_CACHE_BYTES_PER_ENTRY = 256;

export interface CasbinAuthorizerOptions {
  readonly modelPath: string;
  readonly policyPath: string;
  /**
   * What fills Casbin's `r`, in order; must have as many fields as the model's request definition.
   * Default DEFAULT_REQUEST_FIELDS (subject, path, method).
   */
  readonly request?: readonly RequestField[];
  /** Default DEFAULT_SUBJECT_PREFIX (`user:`). */
  readonly subjectPrefix?: string;
  /** Default DEFAULT_ROLE_PREFIX (`role:`); must differ from subjectPrefix. */
  readonly rolePrefix?: string;
  /** Evaluate only the lines the policy index selects (default true; false = Casbin over every line). */
  readonly index?: boolean;
  /** Decisions remembered per request values and token roles (default 10,000; 0 = none). */
  readonly decisionCacheEntries?: number;
  /** Told about every decision cache lookup (metrics). */
  readonly onDecisionCache?: (hit: boolean) => void;
}

export interface CasbinAuthorizer extends Authorizer {
  /** SHA-256 over the model and policy text that are serving. */
  readonly sha256: string;
  /** The policy rules with their line numbers (for explanations and coverage). */
  readonly rules: readonly PolicyLine[];
  /** Every lint finding, warnings included (errors other than duplicates refuse the load). */
  readonly findings: readonly Finding[];
  /** Whether the policy index serves this model (else Casbin evaluates every line). */
  readonly indexed: boolean;
}

/** The name our anchored regexMatch is registered under (Casbin will not replace its built-in). */
const ANCHORED_REGEX_MATCH = 'authzSidecarAnchoredRegexMatch';

/**
 * Casbin's regexMatch, anchored, with the policy's patterns compiled at load (the lint already refused
 * the ones that do not compile or can backtrack). A pattern that is not in the policy (a matcher passing
 * request values as patterns) is compiled on first use and remembered, up to a bound.
 */
function anchoredRegexMatch(patterns: Iterable<string>): (key: string, pattern: string) => boolean {
  const compiled = new Map<string, RegExp>();
  for (const p of patterns) compiled.set(p, new RegExp(anchoredPattern(p)));
  const MAX_EXTRA = 1_000;
  const policySize = compiled.size;
  return (key, pattern) => {
    let re = compiled.get(pattern);
    if (re === undefined) {
      re = new RegExp(anchoredPattern(pattern));
      if (compiled.size < policySize + MAX_EXTRA) compiled.set(pattern, re);
    }
    return re.test(key);
  };
}

/**
 * Casbin's StringAdapter, with a fast path for plain lines. Casbin runs a CSV parser (csv-parse) per line,
 * about 25 µs each: 2.5 s for a 100k-line policy. A line of printable ASCII without quotes or parentheses
 * parses to its comma-separated fields, trimmed, so those are split here; every other line (quotes,
 * bracketed values, tabs, non-ASCII) still goes through Casbin's own loader. Tested for identical results.
 */
export class PolicyTextAdapter extends StringAdapter {
  private static readonly PLAIN = /^[\x20\x21\x23-\x27\x2a-\x7e]*$/;

  constructor(private readonly text: string) {
    super(text);
  }

  override async loadPolicy(model: Model): Promise<void> {
    if (!this.text) throw new Error('Invalid policy, policy document cannot be false-y');
    for (const line of this.text.split('\n')) {
      if (line === '') continue;
      if (!PolicyTextAdapter.PLAIN.test(line)) {
        Helper.loadPolicyLine(line, model);
        continue;
      }
      if (line.trimStart().startsWith('#')) continue;
      const fields = line.split(',').map((f) => f.trim());
      const key = fields[0]!;
      model.model.get(key.substring(0, 1))?.get(key)?.policy.push(fields.slice(1));
    }
  }
}

/**
 * A model or policy that cannot be loaded (code POLICY_INVALID), with where the problem is (which file,
 * which config key) so the config error can name it, and casbin's or fs's error as `cause`.
 */
export class PolicyLoadError extends SidecarError<'POLICY_INVALID'> {
  readonly configKey: 'authz.model' | 'authz.policy' | 'authz.request';

  constructor(
    readonly file: 'model' | 'policy',
    message: string,
    options?: { cause?: unknown; configKey?: 'authz.request' },
  ) {
    super('POLICY_INVALID', message, options);
    this.name = 'PolicyLoadError';
    this.configKey = options?.configKey ?? `authz.${file}`;
  }
}

/**
 * Role manager that adds the token's roles as links of the current subject for the duration of one
 * synchronous enforce call. Casbin's synchronous enforcement calls `syncedHasLink` only, and no other
 * request can run in between, so the scope never leaks from one request into another.
 */
class RequestScopedRoleManager implements RoleManager {
  private scope: { subject: string; roles: readonly string[] } | undefined;

  constructor(private readonly inner: DefaultRoleManager) {}

  withScope<T>(subject: string, roles: readonly string[], fn: () => T): T {
    this.scope = { subject, roles };
    try {
      return fn();
    } finally {
      this.scope = undefined;
    }
  }

  syncedHasLink(name1: string, name2: string, ...domain: string[]): boolean {
    const scope = this.scope;
    // Token roles are links without a domain; domain-scoped `g` lines come from the policy only.
    if (scope !== undefined && domain.length === 0 && name1 === scope.subject) {
      if (name1 === name2) return true;
      for (const role of scope.roles) {
        if (role === name2 || this.inner.syncedHasLink(role, name2)) return true;
      }
    }
    return this.inner.syncedHasLink(name1, name2, ...domain);
  }

  hasLink(name1: string, name2: string, ...domain: string[]): Promise<boolean> {
    return Promise.resolve(this.syncedHasLink(name1, name2, ...domain));
  }
  clear(): Promise<void> {
    return this.inner.clear();
  }
  addLink(name1: string, name2: string, ...domain: string[]): Promise<void> {
    return this.inner.addLink(name1, name2, ...domain);
  }
  deleteLink(name1: string, name2: string, ...domain: string[]): Promise<void> {
    return this.inner.deleteLink(name1, name2, ...domain);
  }
  getRoles(name: string, ...domain: string[]): Promise<string[]> {
    return this.inner.getRoles(name, ...domain);
  }
  getUsers(name: string, ...domain: string[]): Promise<string[]> {
    return this.inner.getUsers(name, ...domain);
  }
  printRoles(): Promise<void> {
    return this.inner.printRoles();
  }
  getDomains(name: string): Promise<string[]> {
    return this.inner.getDomains(name);
  }
  getAllDomains(): Promise<string[]> {
    return this.inner.getAllDomains();
  }
}

function requestValue(field: RequestField, request: AccessRequest, identity: Identity, subject: string): string {
  switch (field) {
    case 'subject':
      return subject;
    case 'path':
      return request.path;
    case 'method':
      // HEAD is authorized as GET (DESIGN.md §3): it reads the same resource.
      return request.method === 'HEAD' ? 'GET' : request.method;
    case 'host':
      return request.host;
    case 'peer':
      return request.peer;
  }
  if (field.startsWith('claim:')) {
    const value = claimAt(identity.claims, field.slice('claim:'.length));
    return typeof value === 'string' || typeof value === 'number' || typeof value === 'boolean' ? String(value) : '';
  }
  const values = request.headers[field.slice('header:'.length).toLowerCase()];
  return values === undefined ? '' : values.join(', ');
}

export async function createCasbinAuthorizer(options: CasbinAuthorizerOptions): Promise<CasbinAuthorizer> {
  const fields = [...(options.request ?? DEFAULT_REQUEST_FIELDS)];
  const subjectPrefix = options.subjectPrefix ?? DEFAULT_SUBJECT_PREFIX;
  const rolePrefix = options.rolePrefix ?? DEFAULT_ROLE_PREFIX;
  if (subjectPrefix === rolePrefix) throw new TypeError('subjectPrefix and rolePrefix must differ');

  let modelText: string;
  let policyText: string;
  try {
    modelText = await readFile(options.modelPath, 'utf8');
  } catch (err) {
    throw new PolicyLoadError('model', `cannot read ${options.modelPath}: ${(err as Error).message}`, { cause: err });
  }
  try {
    policyText = await readFile(options.policyPath, 'utf8');
  } catch (err) {
    throw new PolicyLoadError('policy', `cannot read ${options.policyPath}: ${(err as Error).message}`, { cause: err });
  }

  let enforcer: Enforcer;
  let findings: Finding[];
  let index: PolicyIndex | undefined;
  const rules = parsePolicyText(policyText);
  const roleManager = new RequestScopedRoleManager(new DefaultRoleManager(MAX_ROLE_HIERARCHY));
  try {
    const model = newModelFromString(modelText);
    findings = lintPolicy(model, rules);
    const fatal = findings.filter((f) => f.severity === 'error' && f.code !== 'DUPLICATE');
    if (fatal.length > 0) {
      throw new PolicyLoadError('policy', fatal.map((f) => `${options.policyPath}:${f.line ?? 0}: ${f.message}`).join('; '));
    }
    const arity = model.model.get('r')?.get('r')?.tokens.length;
    if (arity !== fields.length) {
      throw new PolicyLoadError(
        'model',
        `the model's request_definition has ${arity ?? 0} fields but authz.request has ${fields.length}`,
        { configKey: 'authz.request' },
      );
    }
    // Casbin's regexMatch is unanchored: "/admin" would match "/x/admin/y". Ours matches the whole value.
    // Casbin keeps its built-in when a function of the same name is added, so the matcher is rewritten to
    // call ours under a name of its own.
    const serving = newModelFromString(modelText.replace(/\bregexMatch\s*\(/g, `${ANCHORED_REGEX_MATCH}(`));
    enforcer = await newEnforcer(serving);
    await enforcer.addFunction(ANCHORED_REGEX_MATCH, anchoredRegexMatch(regexPatterns(model, rules)));
    if (serving.model.get('g')?.get('g') !== undefined) enforcer.setRoleManager(roleManager);
    // Policy lines are loaded through our own reader so that a read error is ours to report, not a crash.
    enforcer.setAdapter(new PolicyTextAdapter(policyText));
    await enforcer.loadPolicy();
    index = options.index === false ? undefined : buildPolicyIndex(enforcer.getModel());
  } catch (err) {
    if (err instanceof PolicyLoadError) throw err;
    throw new PolicyLoadError('policy', `cannot load the Casbin model and policy: ${(err as Error).message}`, { cause: err });
  }

  const sha256 = createHash('sha256').update(modelText).update('\0').update(policyText).digest('hex');

  // The index narrows the lines Casbin walks by swapping the policy it iterates, for one synchronous call.
  const pAssertion = enforcer.getModel().model.get('p')?.get('p');
  const fullPolicy = pAssertion?.policy ?? [];
  function enforce(subject: string, roles: readonly string[], rvals: string[]): [boolean, string[]] {
    return roleManager.withScope(subject, roles, () => {
      if (index === undefined || pAssertion === undefined) return enforcer.enforceExSync(...rvals);
      pAssertion.policy = index.candidates(rvals, { subject, roles });
      try {
        return enforcer.enforceExSync(...rvals);
      } finally {
        pAssertion.policy = fullPolicy;
      }
    });
  }

  // A decision depends on the request values, the subject (token roles attach to it) and the token roles.
  const cacheEntries = options.decisionCacheEntries ?? DEFAULT_DECISION_CACHE_ENTRIES;
  // Keys carry request values (paths up to the header size limit): memory is bounded by size as well.
  const cache =
    cacheEntries > 0
      ? new LRUCache<string, { allowed: boolean; line: string[] }>({
          max: cacheEntries,
          maxSize: cacheEntries * DECISION_CACHE_BYTES_PER_ENTRY,
          sizeCalculation: (_value, key) => key.length + 64,
        })
      : undefined;

  return {
    sha256,
    rules,
    findings,
    indexed: index !== undefined,
    missing: () => [],
    authorize(request: AccessRequest, identity: Identity): AuthzResult {
      const subject = identity.anonymous ? identity.subject : subjectPrefix + identity.subject;
      const roles = identity.roles.map((r) => rolePrefix + r);
      const rvals = fields.map((f) => requestValue(f, request, identity, subject));
      if (cache === undefined) {
        const [allowed, line] = enforce(subject, roles, rvals);
        return { allowed, policy: line.length > 0 ? line : undefined, request: rvals };
      }
      const key = JSON.stringify([subject, roles, rvals]);
      let hit = cache.get(key);
      options.onDecisionCache?.(hit !== undefined);
      if (hit === undefined) {
        const [allowed, line] = enforce(subject, roles, rvals);
        hit = { allowed, line };
        cache.set(key, hit);
      }
      return { allowed: hit.allowed, policy: hit.line.length > 0 ? hit.line : undefined, request: rvals };
    },
  };
}
