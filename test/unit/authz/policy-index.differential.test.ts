/**
 * Differential test of the policy index (policy-index.ts): for random policies and random requests, the
 * authorizer that lets Casbin evaluate only the lines the index selects answers exactly as Casbin over every
 * line: the same decision, the same explaining line and the same request values (or the same error). So
 * does the authorizer with the decision cache, asked the same request again and again under other token
 * roles, and one whose cache holds two entries (eviction). Where no token roles are in play and the model
 * has no regexMatch (ours is anchored), Casbin itself (its own StringAdapter and role manager) is a further
 * witness, which also covers our fast policy loader.
 *
 * The generators draw paths, subjects and roles from small pools so that lines really match: pattern
 * segments with the characters keyMatch2/3/4 turn into regular expressions (`.`, `a*`, `b?`, `a|b`, `(a|b)`,
 * `:id`, `{id}`), request paths that equal, fill in, cut or extend a policy pattern, role hierarchies deeper
 * than Casbin's 10 levels, cycles that only exist through the token's roles (and real `g` cycles where the
 * lint allows them: domains, `g2`), duplicate lines, comments, quoted fields and CRLF. Each model's run
 * also checks that it was not vacuous (allows, denies, decisions through roles and deep chains, deny lines,
 * answers that change with the token roles); POLICY_INDEX_STATS=1 prints those counts.
 */
import { existsSync, readFileSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { newEnforcer, newModelFromString, StringAdapter, Util, type Enforcer } from 'casbin';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createCasbinAuthorizer, type CasbinAuthorizer, type RequestField } from '../../../src/authz/casbin-authorizer.js';
import { headerMap, type AccessRequest } from '../../../src/core/access-request.js';
import { copyClaims, type Identity } from '../../../src/core/identity.js';

/** Fixed so that a failure is reproducible; fast-check prints the seed and path of a counterexample. */
const SEED = 20_251_109;
const ASKS_PER_POLICY = 50;
const LARGE_POLICY_REQUESTS = 100;

const SHIPPED_MODEL = readFileSync(new URL('../../../policies/model.conf', import.meta.url), 'utf8');

// ---------------------------------------------------------------------------------------------- models

type Style = 'keyMatch' | 'keyMatch2' | 'keyMatch3' | 'keyMatch4' | 'equal' | 'regex' | 'group';
type Roles = 'g' | 'none' | 'domain' | 'group';

interface ModelCase {
  readonly name: string;
  readonly text: string;
  /** How p.obj values are drawn. */
  readonly style: Style;
  /** Which grouping lines the policy has. */
  readonly roles: Roles;
  /** A `p.eft` column last; a `p.priority` column first. */
  readonly eft?: boolean;
  readonly priority?: boolean;
  readonly request?: readonly RequestField[];
  /** What `indexed` must be; undefined where the model's shape leaves it to the implementation. */
  readonly indexed: boolean | undefined;
  readonly runs: number;
  /** Also ask an authorizer whose decision cache holds two entries (eviction under repeated requests). */
  readonly evict?: boolean;
  /** The matcher ignores the lines' subjects: only check that the answers vary, not who got them. */
  readonly subjectsIgnored?: boolean;
}

function model(matcher: string, options: { effect?: string; policy?: string; request?: string; roles?: string[] } = {}): string {
  const roles = options.roles ?? ['g = _, _'];
  return [
    '[request_definition]',
    `r = ${options.request ?? 'sub, obj, act'}`,
    '',
    '[policy_definition]',
    `p = ${options.policy ?? 'sub, obj, act'}`,
    '',
    ...(roles.length > 0 ? ['[role_definition]', ...roles, ''] : []),
    '[policy_effect]',
    `e = ${options.effect ?? 'some(where (p.eft == allow))'}`,
    '',
    '[matchers]',
    `m = ${matcher}`,
    '',
  ].join('\n');
}

const ACT = '(r.act == p.act || p.act == "*")';
const ALLOW_AND_DENY = 'some(where (p.eft == allow)) && !some(where (p.eft == deny))';

const MODELS: ModelCase[] = [
  { name: 'shipped RBAC model (keyMatch2)', text: SHIPPED_MODEL, style: 'keyMatch2', roles: 'g', indexed: true, runs: 100, evict: true },
  { name: 'keyMatch', text: model(`g(r.sub, p.sub) && keyMatch(r.obj, p.obj) && ${ACT}`), style: 'keyMatch', roles: 'g', indexed: true, runs: 30 },
  { name: 'keyMatch3', text: model(`g(r.sub, p.sub) && keyMatch3(r.obj, p.obj) && ${ACT}`), style: 'keyMatch3', roles: 'g', indexed: true, runs: 40 },
  { name: 'keyMatch4', text: model(`g(r.sub, p.sub) && keyMatch4(r.obj, p.obj) && ${ACT}`), style: 'keyMatch4', roles: 'g', indexed: true, runs: 30 },
  { name: 'exact path (r.obj == p.obj)', text: model(`g(r.sub, p.sub) && r.obj == p.obj && ${ACT}`), style: 'equal', roles: 'g', indexed: true, runs: 30 },
  {
    name: 'terms reordered, method equality reversed',
    text: model('keyMatch2(r.obj, p.obj) && p.act == r.act && g(r.sub, p.sub)'),
    style: 'keyMatch2',
    roles: 'g',
    indexed: true,
    runs: 25,
  },
  {
    name: 'allow and deny (p.eft, deny overrides)',
    text: model(`g(r.sub, p.sub) && keyMatch2(r.obj, p.obj) && ${ACT}`, { policy: 'sub, obj, act, eft', effect: ALLOW_AND_DENY }),
    style: 'keyMatch2',
    roles: 'g',
    eft: true,
    indexed: true,
    runs: 60,
    evict: true,
  },
  {
    name: 'deny only (!some deny)',
    text: model(`g(r.sub, p.sub) && keyMatch2(r.obj, p.obj) && ${ACT}`, { policy: 'sub, obj, act, eft', effect: '!some(where (p.eft == deny))' }),
    style: 'keyMatch2',
    roles: 'g',
    eft: true,
    indexed: true,
    runs: 40,
  },
  {
    name: 'priority(p.eft) || deny',
    text: model(`g(r.sub, p.sub) && keyMatch2(r.obj, p.obj) && ${ACT}`, { policy: 'priority, sub, obj, act, eft', effect: 'priority(p.eft) || deny' }),
    style: 'keyMatch2',
    roles: 'g',
    eft: true,
    priority: true,
    indexed: true,
    runs: 60,
    evict: true,
  },
  {
    name: 'subjectPriority(p.eft) || deny (lines sorted by the role hierarchy at load)',
    text: model(`g(r.sub, p.sub) && keyMatch2(r.obj, p.obj) && ${ACT}`, { policy: 'sub, obj, act, eft', effect: 'subjectPriority(p.eft) || deny' }),
    style: 'keyMatch2',
    roles: 'g',
    eft: true,
    indexed: true,
    runs: 30,
  },
  {
    name: 'top-level || (no index)',
    text: model('g(r.sub, p.sub) && keyMatch2(r.obj, p.obj) && r.act == p.act || r.sub == "user:root" && p.act == "*"'),
    style: 'keyMatch2',
    roles: 'g',
    indexed: false,
    runs: 25,
  },
  {
    name: 'matcher without p (no index)',
    text: model('g(r.sub, "role:a") && r.act != "DELETE"'),
    style: 'keyMatch2',
    roles: 'g',
    indexed: false,
    runs: 10,
    subjectsIgnored: true,
  },
  { name: 'anchored regexMatch', text: model(`g(r.sub, p.sub) && regexMatch(r.obj, p.obj) && ${ACT}`), style: 'regex', roles: 'g', indexed: true, runs: 30 },
  {
    name: 'no role_definition (r.sub == p.sub)',
    text: model(`r.sub == p.sub && keyMatch2(r.obj, p.obj) && ${ACT}`, { roles: [] }),
    style: 'keyMatch2',
    roles: 'none',
    indexed: true,
    runs: 30,
  },
  // Shapes the index may or may not read; whatever it does, the answers must be Casbin's.
  {
    name: 'no role_definition, equalities written p == r',
    text: model('keyMatch2(r.obj, p.obj) && p.act == r.act && p.sub == r.sub', { roles: [] }),
    style: 'keyMatch2',
    roles: 'none',
    indexed: undefined,
    runs: 20,
  },
  {
    // No line may match while the matcher is true for a policy of empty values (an empty path): Casbin
    // must still see lines, or it evaluates the matcher once over empty values and allows.
    name: 'no subject term (keyMatch only)',
    text: model('keyMatch(r.obj, p.obj) && p.act != "DELETE"', { roles: [] }),
    style: 'keyMatch',
    roles: 'none',
    indexed: undefined,
    runs: 20,
    subjectsIgnored: true,
  },
  {
    name: 'whole matcher in parentheses',
    text: model(`(g(r.sub, p.sub) && keyMatch2(r.obj, p.obj) && ${ACT})`),
    style: 'keyMatch2',
    roles: 'g',
    indexed: undefined,
    runs: 15,
  },
  {
    name: 'keyMatch2 with its arguments swapped (the request is the pattern)',
    text: model(`g(r.sub, p.sub) && keyMatch2(p.obj, r.obj) && ${ACT}`),
    style: 'keyMatch2',
    roles: 'g',
    indexed: undefined,
    runs: 20,
  },
  {
    name: 'resource groups (g2 on the path, cycles allowed)',
    text: model(`g2(r.obj, p.obj) && g(r.sub, p.sub) && ${ACT}`, { roles: ['g = _, _', 'g2 = _, _'] }),
    style: 'group',
    roles: 'group',
    indexed: undefined,
    runs: 30,
  },
  {
    name: 'domains (g = _, _, _; token roles do not apply)',
    text: model('g(r.sub, p.sub, r.dom) && r.dom == p.dom && keyMatch2(r.obj, p.obj) && r.act == p.act', {
      request: 'sub, dom, obj, act',
      policy: 'sub, dom, obj, act',
      roles: ['g = _, _, _'],
    }),
    style: 'keyMatch2',
    roles: 'domain',
    request: ['subject', 'host', 'path', 'method'],
    indexed: undefined,
    runs: 30,
  },
];

// ------------------------------------------------------------------------------------------ generators

const PATTERN_SEGMENTS: Record<Exclude<Style, 'regex' | 'group'>, readonly string[]> = {
  keyMatch: ['orders', '42', 'a', 'b', 'admin', 'x.y', '*', 'a*', ':id'],
  keyMatch2: ['orders', '42', 'a', 'b', 'admin', 'x.y', ':id', '*', 'a*', 'b?', '(a|b)', 'a|b', 'x:y', '{id}'],
  keyMatch3: ['orders', '42', 'a', 'b', 'admin', 'x.y', '{id}', '*', 'a*', 'b?', '(a|b)', 'a|b', ':id'],
  keyMatch4: ['orders', '42', 'a', 'b', 'admin', 'x.y', '{id}', '*', 'a*', 'b?', 'a|b', ':id'],
  equal: ['orders', '42', 'a', 'b', 'admin', 'x.y', ':id', '*', '{id}'],
};
const WHOLE_PATTERNS = ['*', '/*', '/', '', '/orders*', '/orders/', '/orders/*', '/orders/:id'];
/** Patterns the lint accepts (anchored, no nested or alternated quantifiers). */
const REGEX_PATTERNS = [
  '/orders/[0-9]+', '/orders/.*', '/a|/b', '/x\\.y', '/x.y', '.*', '/orders/42', '/a', '/(a|b)/[^/]+', '/orders/\\d+', '/ab?', '/a*',
  '/[ab]/.*', '/(orders|admin)/.*', '[^/]*', '/admin',
];
const GROUPS = ['group:orders', 'group:admin', 'group:all'];
const GROUP_OBJECTS = [...GROUPS, '/orders/42', '/a', '/nothing'];
const G2_FROM = ['/orders/42', '/orders', '/a', '/b', '/admin', '/x.y', '/', ...GROUPS];
const G2_TO = [...GROUPS, '/a'];

const REQUEST_SEGMENTS = ['orders', '42', 'a', 'b', 'aa', 'admin', 'x.y', 'xzy', 'x:y', ':id', '{id}', '*', '', 'c', '(a|b)', 'a*'];
const SPECIAL_PATHS = ['', '/', '*', '/orders', '/orders/', '/a', '/b'];

const POLICY_ACTIONS = ['GET', 'POST', 'PUT', 'DELETE', '*'];
const REQUEST_METHODS = ['GET', 'POST', 'PUT', 'DELETE', 'HEAD', '*'];
const EFFECTS = ['allow', 'allow', 'deny', 'deny', 'maybe'];
/** Casbin sorts numerically (stable), and equal priorities written differently ('1', '01') keep file order. */
const PRIORITIES = ['0', '1', '1', '2', '10', '01', '-1'];
const DOMAINS = ['t1', 't2'];

/** Token subjects (prefixed `user:` by the authorizer). */
const SUBJECTS = ['alice', 'bob', 'carol', 'anonymous', 'role:a', 'root', 'a'];
/** Token roles (prefixed `role:`): some in `g` lines, some only in `p` lines (ghost, nobody), some nowhere, some that a naive cache key would confuse. */
const TOKEN_ROLES = ['a', 'b', 'c', 'admin', 'ghost', 'r0', 'r2', 'nobody', 'stranger', 'a,role:b', 'a\u0000role:b', 'b"'];
const CHAIN_MAX = 13;
const chainRole = (i: number): string => `role:r${i}`;
const P_SUBJECTS: Record<Roles, readonly string[]> = {
  g: [
    'user:alice', 'user:bob', 'user:carol', 'user:role:a', 'user:a', 'anonymous', 'role:a', 'role:b', 'role:c', 'role:admin', 'role:ghost',
    'role:nobody', chainRole(2), chainRole(9), chainRole(10), chainRole(11), chainRole(12),
  ],
  none: ['user:alice', 'user:bob', 'user:role:a', 'user:a', 'anonymous', 'role:a', 'user:root'],
  domain: ['user:alice', 'user:bob', 'anonymous', 'role:a', 'role:b', 'role:admin'],
  group: ['user:alice', 'user:bob', 'anonymous', 'role:a', 'role:b', 'role:admin', 'role:ghost'],
};
const G_FROM = [
  'user:alice', 'user:bob', 'user:carol', 'user:anonymous', 'user:role:a', 'anonymous', 'role:a', 'role:b', 'role:c', 'role:admin', 'role:ghost',
  chainRole(CHAIN_MAX - 1),
];
/** Roles, the head of the chain, and users and `anonymous` too: a role that inherits a user. */
const G_TO = ['role:a', 'role:b', 'role:c', 'role:admin', 'role:ghost', chainRole(0), 'user:bob', 'anonymous'];
/** With domains, fewer names, so that a link in the request's domain is likely. */
const G_FROM_DOMAIN = ['user:alice', 'user:bob', 'user:carol', 'anonymous', 'role:a', 'role:b'];
const G_TO_DOMAIN = ['role:a', 'role:b', 'role:admin', 'user:bob'];

interface PLine {
  readonly priority: string;
  readonly sub: string;
  readonly dom: string;
  readonly obj: string;
  readonly act: string;
  readonly eft: string;
  readonly quote: boolean;
}
interface GLine {
  readonly from: string;
  readonly to: string;
  readonly dom: string;
  readonly slot: number;
}
interface PolicySpec {
  readonly p: readonly PLine[];
  readonly g: readonly GLine[];
  readonly g2: readonly GLine[];
  readonly chain: number;
  readonly dups: readonly number[];
  readonly comments: boolean;
  readonly crlf: boolean;
  readonly sep: string;
}

function objArb(style: Style): fc.Arbitrary<string> {
  if (style === 'regex') return fc.constantFrom(...REGEX_PATTERNS);
  if (style === 'group') return fc.constantFrom(...GROUP_OBJECTS);
  const segments = PATTERN_SEGMENTS[style];
  return fc.oneof(
    { weight: 6, arbitrary: fc.array(fc.constantFrom(...segments), { maxLength: 3 }).map((parts) => `/${parts.join('/')}`) },
    { weight: 1, arbitrary: fc.constantFrom(...WHOLE_PATTERNS) },
  );
}

function policyArb(mc: ModelCase): fc.Arbitrary<PolicySpec> {
  const pLine: fc.Arbitrary<PLine> = fc.record({
    priority: fc.constantFrom(...PRIORITIES),
    sub: fc.constantFrom(...P_SUBJECTS[mc.roles]),
    dom: fc.constantFrom(...DOMAINS),
    obj: objArb(mc.style),
    act: fc.constantFrom(...POLICY_ACTIONS),
    eft: fc.constantFrom(...EFFECTS),
    quote: fc.nat(4).map((n) => n === 4),
  });
  const gLine = (from: readonly string[], to: readonly string[]): fc.Arbitrary<GLine> =>
    fc.record({ from: fc.constantFrom(...from), to: fc.constantFrom(...to), dom: fc.constantFrom(...DOMAINS), slot: fc.nat(30) });
  const none = fc.constant<GLine[]>([]);
  return fc.record({
    p: fc.array(pLine, { maxLength: 25 }),
    g: mc.roles === 'none' ? none : mc.roles === 'domain' ? fc.array(gLine(G_FROM_DOMAIN, G_TO_DOMAIN), { maxLength: 12 }) : fc.array(gLine(G_FROM, G_TO), { maxLength: 12 }),
    g2: mc.roles === 'group' ? fc.array(gLine(G2_FROM, G2_TO), { maxLength: 10 }) : none,
    chain: mc.roles === 'g' ? fc.integer({ min: 0, max: CHAIN_MAX }) : fc.constant(0),
    dups: fc.array(fc.nat(), { maxLength: 2 }),
    comments: fc.boolean(),
    crlf: fc.boolean(),
    sep: fc.constantFrom(', ', ',', ' ,  '),
  });
}

/** Drops the `g` lines that would close a cycle (the lint refuses those), self-links included. */
function acyclic<T extends { readonly from: string; readonly to: string }>(lines: readonly T[]): T[] {
  const edges = new Map<string, string[]>();
  const reaches = (from: string, to: string): boolean => {
    const seen = new Set([from]);
    const queue = [from];
    for (let i = 0; i < queue.length; i++) {
      const node = queue[i] as string;
      if (node === to) return true;
      for (const next of edges.get(node) ?? []) {
        if (!seen.has(next)) {
          seen.add(next);
          queue.push(next);
        }
      }
    }
    return false;
  };
  const out: T[] = [];
  for (const line of lines) {
    if (reaches(line.to, line.from)) continue;
    edges.set(line.from, [...(edges.get(line.from) ?? []), line.to]);
    out.push(line);
  }
  return out;
}

const KEY_MATCH_FUNCTIONS: Partial<Record<Style, (key: string, pattern: string) => unknown>> = {
  keyMatch: Util.keyMatchFunc,
  keyMatch2: Util.keyMatch2Func,
  keyMatch3: Util.keyMatch3Func,
  keyMatch4: Util.keyMatch4Func,
};

function patternCompiles(style: Style, pattern: string): boolean {
  try {
    KEY_MATCH_FUNCTIONS[style]?.('/', pattern);
    return true;
  } catch {
    return false;
  }
}

interface RenderedPolicy {
  readonly text: string;
  /** Number of `p` lines Casbin holds. */
  readonly pCount: number;
  /** The path patterns of the `p` lines (the index refuses a policy whose patterns do not all compile). */
  readonly patterns: readonly string[];
}

function renderPolicy(mc: ModelCase, spec: PolicySpec): RenderedPolicy {
  const field = (value: string, quote: boolean): string => (quote ? `"${value.replace(/"/g, '""')}"` : value);
  const pText = (line: PLine): string => {
    const fields = [
      ...(mc.priority ? [line.priority] : []),
      line.sub,
      ...(mc.roles === 'domain' ? [line.dom] : []),
      field(line.obj, line.quote),
      line.act,
      ...(mc.eft ? [line.eft] : []),
    ];
    return ['p', ...fields].join(spec.sep);
  };
  const pLines = spec.p.map(pText);
  for (const d of spec.dups) if (spec.p.length > 0) pLines.push(pText(spec.p[d % spec.p.length] as PLine));

  // Grouping lines sit between the p lines (their position must not matter).
  const placed: Array<{ slot: number; text: string }> = [];
  if (mc.roles === 'domain') {
    for (const g of spec.g) placed.push({ slot: g.slot, text: ['g', g.from, g.to, g.dom].join(spec.sep) });
  } else if (mc.roles !== 'none') {
    const chain: GLine[] = Array.from({ length: Math.max(0, spec.chain - 1) }, (_, i) => ({ from: chainRole(i), to: chainRole(i + 1), dom: '', slot: 2 * i }));
    for (const g of acyclic([...chain, ...spec.g])) placed.push({ slot: g.slot, text: ['g', g.from, g.to].join(spec.sep) });
    for (const g of spec.g2) placed.push({ slot: g.slot, text: ['g2', g.from, g.to].join(spec.sep) });
  }
  const lines: string[] = [];
  if (spec.comments) lines.push('# generated, do not edit', '');
  pLines.forEach((text, i) => {
    for (const g of placed) if (g.slot === i) lines.push(g.text);
    lines.push(text);
  });
  for (const g of placed) if (g.slot >= pLines.length) lines.push(g.text);
  if (spec.comments) lines.push('  # trailing comment, with commas', '');
  return { text: lines.join(spec.crlf ? '\r\n' : '\n') + '\n', pCount: pLines.length, patterns: spec.p.map((line) => line.obj) };
}

type PathRecipe =
  | { readonly kind: 'random'; readonly parts: readonly string[]; readonly slash: boolean }
  | { readonly kind: 'derived'; readonly line: number; readonly how: 'verbatim' | 'fill' | 'cut' | 'extend'; readonly variant: number }
  | { readonly kind: 'special'; readonly path: string };

const pathRecipeArb: fc.Arbitrary<PathRecipe> = fc.oneof(
  { weight: 3, arbitrary: fc.record({ kind: fc.constant('random' as const), parts: fc.array(fc.constantFrom(...REQUEST_SEGMENTS), { maxLength: 3 }), slash: fc.boolean() }) },
  {
    weight: 4,
    arbitrary: fc.record({ kind: fc.constant('derived' as const), line: fc.nat(), how: fc.constantFrom('verbatim' as const, 'fill' as const, 'cut' as const, 'extend' as const), variant: fc.nat(5) }),
  },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('special' as const), path: fc.constantFrom(...SPECIAL_PATHS) }) },
);

/** A concrete path a pattern matches (or nearly): wildcards and regex-ish segments filled in. */
function fill(pattern: string, variant: number): string {
  const odd = variant % 2 === 1;
  return pattern
    .replace(/\(?a\|b\)?/g, odd ? 'a' : 'b')
    .replace(/x\.y/g, odd ? 'xzy' : 'x.y')
    .replace(/:id|\{id\}/g, variant % 3 === 0 ? '42' : 'x.y')
    .replace(/a\*/g, odd ? '' : 'aaa')
    .replace(/b\?/g, odd ? '' : 'b')
    .replace(/\*/g, variant % 3 === 1 ? '' : 'a/b');
}

function resolvePath(recipe: PathRecipe, objects: readonly string[]): string {
  switch (recipe.kind) {
    case 'random':
      return `/${recipe.parts.join('/')}${recipe.slash ? '/' : ''}`;
    case 'special':
      return recipe.path;
    case 'derived': {
      const pattern = objects.length === 0 ? '/orders/42' : (objects[recipe.line % objects.length] as string);
      switch (recipe.how) {
        case 'verbatim':
          return pattern;
        case 'fill':
          return fill(pattern, recipe.variant);
        case 'cut': {
          const parts = fill(pattern, recipe.variant).split('/');
          return parts.slice(0, recipe.variant % parts.length).join('/') + (recipe.variant > 2 ? '/' : '');
        }
        case 'extend':
          return `${fill(pattern, recipe.variant)}/${['x', '42', '', 'a'][recipe.variant % 4] as string}`;
      }
    }
  }
}

/** A method or host of its own, or the one of the policy line the path was derived from. */
const FROM_LINE = 'from-line';
interface Target {
  readonly path: PathRecipe;
  readonly method: string;
  readonly host: string;
}

const targetLine = (target: Target): number => (target.path.kind === 'derived' ? target.path.line : 0);

function resolveTarget(target: Target, lines: readonly PLine[]): { path: string; method: string; host: string } {
  const line = lines.length === 0 ? undefined : lines[targetLine(target) % lines.length];
  const method = target.method !== FROM_LINE ? target.method : line === undefined || line.act === '*' ? 'GET' : line.act;
  const host = target.host !== FROM_LINE ? target.host : (line?.dom ?? 't1');
  return { path: resolvePath(target.path, lines.map((l) => l.obj)), method, host };
}
const targetArb: fc.Arbitrary<Target> = fc.record({
  path: pathRecipeArb,
  method: fc.constantFrom(...REQUEST_METHODS, FROM_LINE, FROM_LINE),
  host: fc.constantFrom(...DOMAINS, FROM_LINE),
});

interface Who {
  readonly anonymous: boolean;
  readonly subject: string;
  readonly roles: readonly string[];
}
/**
 * Anyone from the pools, or whoever a policy line names (that user, or someone holding that role in the token):
 * the line the request's path came from, or another one.
 */
interface WhoRecipe {
  readonly line: number | 'target' | undefined;
  readonly anonymous: boolean;
  readonly subject: string;
  readonly roles: readonly string[];
}
const whoArb: fc.Arbitrary<WhoRecipe> = fc.record({
  line: fc.oneof(fc.constant(undefined), fc.constant('target' as const), fc.nat()),
  anonymous: fc.nat(5).map((n) => n === 5),
  subject: fc.constantFrom(...SUBJECTS),
  roles: fc.array(fc.constantFrom(...TOKEN_ROLES), { maxLength: 3 }),
});

function resolveWho(recipe: WhoRecipe, target: Target, subjects: readonly string[]): Who {
  const line = recipe.line === 'target' ? targetLine(target) : recipe.line;
  const named = line === undefined || subjects.length === 0 ? undefined : subjects[line % subjects.length];
  if (named === 'anonymous' || (named === undefined && recipe.anonymous)) return { anonymous: true, subject: 'anonymous', roles: [] };
  if (named?.startsWith('user:')) return { anonymous: false, subject: named.slice('user:'.length), roles: recipe.roles };
  if (named?.startsWith('role:')) return { anonymous: false, subject: recipe.subject, roles: [named.slice('role:'.length), ...recipe.roles] };
  return { anonymous: false, subject: recipe.subject, roles: recipe.roles };
}

/** Few targets and many asks, so the same request comes again under other token roles. */
const asksArb = fc.record({
  targets: fc.array(targetArb, { minLength: 1, maxLength: 8 }),
  asks: fc.array(fc.record({ target: fc.nat(), who: whoArb }), { minLength: ASKS_PER_POLICY, maxLength: ASKS_PER_POLICY }),
});

// ------------------------------------------------------------------------------------------- harness

function identity(who: Who): Identity {
  return who.anonymous
    ? { anonymous: true, subject: who.subject, issuer: undefined, roles: [...who.roles], scopes: [], claims: copyClaims({}) }
    : { anonymous: false, subject: who.subject, issuer: 'https://idp.example.com', roles: [...who.roles], scopes: [], claims: copyClaims({ sub: who.subject }) };
}

function accessRequest(target: { path: string; method: string; host: string }): AccessRequest {
  return { frontDoor: 'proxy', method: target.method, path: target.path, query: undefined, host: target.host, headers: headerMap([]), peer: '', requestId: 'req-1' };
}

type Outcome = { readonly allowed: boolean; readonly policy: string[] | undefined; readonly request: string[] } | { readonly error: string };

function ask(authz: CasbinAuthorizer, request: AccessRequest, who: Who): Outcome {
  try {
    const result = authz.authorize(request, identity(who));
    return { allowed: result.allowed, policy: result.policy === undefined ? undefined : [...result.policy], request: [...result.request] };
  } catch (err) {
    return { error: err instanceof Error ? err.message : String(err) };
  }
}

/** Casbin on its own, for requests without token roles (our role manager then adds nothing). */
function askCasbin(enforcer: Enforcer, rvals: readonly string[]): Outcome {
  try {
    const [allowed, line] = enforcer.enforceExSync(...rvals);
    return { allowed, policy: line.length > 0 ? [...line] : undefined, request: [...rvals] };
  } catch (err) {
    return { error: err instanceof Error ? err.message : String(err) };
  }
}

/** Casbin's own regexMatch is unanchored (ours is not): no witness for those models. */
const casbinWitness = (mc: ModelCase): boolean => mc.style !== 'regex';

/** Outcomes are built field by field in one order, so equal outcomes serialize alike (cheaper than expect per ask). */
const same = (a: Outcome, b: Outcome): boolean => JSON.stringify(a) === JSON.stringify(b);

async function settle<T>(promise: Promise<T>): Promise<{ value: T } | { error: string }> {
  return promise.then(
    (value) => ({ value }),
    (err: unknown) => ({ error: err instanceof Error ? `${err.name}: ${err.message}` : String(err) }),
  );
}

interface Stats {
  policies: number;
  rejected: number;
  asks: number;
  allows: number;
  denies: number;
  errors: number;
  /** Decided by a line for another name than the subject: a role, from `g` lines or the token. */
  inherited: number;
  /** Decided by a chain role 10 or more links from the head of the chain. */
  deep: number;
  /** Decided by a line with eft deny. */
  denyLines: number;
  /** The same request asked again under other token roles got another answer: the cache had something to confuse. */
  roleSensitive: number;
  /** Answers compared with Casbin's own loader and role manager. */
  casbinChecks: number;
}

// Hundreds of small files are written per model: in memory where the platform offers it.
const TMP_ROOT = existsSync('/dev/shm') ? '/dev/shm' : tmpdir();
let dir: string;
let counter = 0;

beforeAll(async () => {
  dir = await mkdtemp(join(TMP_ROOT, 'authz-index-diff-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function file(text: string): Promise<string> {
  const path = join(dir, `f-${counter++}`);
  await writeFile(path, text);
  return path;
}

describe.each(MODELS)('policy index agrees with Casbin: $name', (mc) => {
  it(`same decision, explaining line and errors, indexed, cached or not (${mc.runs} policies x ${ASKS_PER_POLICY} requests)`, async () => {
    const modelPath = await file(mc.text);
    const fields = mc.request !== undefined ? { request: mc.request } : {};
    const stats: Stats = { policies: 0, rejected: 0, asks: 0, allows: 0, denies: 0, errors: 0, inherited: 0, deep: 0, denyLines: 0, roleSensitive: 0, casbinChecks: 0 };
    const subIndex = mc.priority ? 1 : 0;

    await fc.assert(
      fc.asyncProperty(policyArb(mc), asksArb, async (spec, { targets, asks }) => {
        const policy = renderPolicy(mc, spec);
        const policyPath = await file(policy.text);
        const context = (what: string, request?: AccessRequest, who?: Who): string =>
          [
            `model "${mc.name}": ${what}`,
            `policy:\n${policy.text}`,
            request === undefined ? '' : `request: ${JSON.stringify({ path: request.path, method: request.method, host: request.host })}`,
            who === undefined ? '' : `identity: ${JSON.stringify(who)}`,
          ].join('\n');

        const builds = await Promise.all([
          settle(createCasbinAuthorizer({ modelPath, policyPath, ...fields, index: false, decisionCacheEntries: 0 })),
          settle(createCasbinAuthorizer({ modelPath, policyPath, ...fields, index: true, decisionCacheEntries: 0 })),
          settle(createCasbinAuthorizer({ modelPath, policyPath, ...fields, index: true })),
          mc.evict ? settle(createCasbinAuthorizer({ modelPath, policyPath, ...fields, index: true, decisionCacheEntries: 2 })) : undefined,
        ].filter((b) => b !== undefined));
        const plainBuild = builds[0] as (typeof builds)[number];
        if ('error' in plainBuild) {
          stats.rejected++;
          for (const b of builds) expect(b, context('every build refuses the policy alike')).toEqual(plainBuild);
          return;
        }
        const [plain, indexed, cached, tiny] = builds.map((b) => {
          if ('error' in b) expect.fail(context(`plain Casbin loads the policy, another build does not: ${b.error}`));
          return b.value;
        }) as [CasbinAuthorizer, CasbinAuthorizer, CasbinAuthorizer, CasbinAuthorizer | undefined];
        stats.policies++;
        expect(plain.indexed, context('index: false is never indexed')).toBe(false);
        if (mc.indexed !== undefined && policy.pCount > 0) {
          // A pattern Casbin's keyMatch cannot compile (keyMatch3 turns `*` into `^*$`) would make Casbin
          // throw on that line only: the index is off then, so the lines it would leave out still throw.
          const compiles = policy.patterns.every((pattern) => patternCompiles(mc.style, pattern));
          expect(indexed.indexed, context('indexed')).toBe(mc.indexed && compiles);
        }
        expect(cached.indexed).toBe(indexed.indexed);

        // Casbin on its own (not for regexMatch: Casbin's is unanchored, ours is not).
        let casbin: Enforcer | undefined;
        if (casbinWitness(mc)) {
          const built = await settle(newEnforcer(newModelFromString(mc.text), new StringAdapter(policy.text)));
          if ('error' in built) expect.fail(context(`Casbin refuses a policy we load: ${built.error}`));
          casbin = built.value;
        }

        const subjects = spec.p.map((p) => p.sub);
        const seen = new Map<string, string>();
        for (const { target: t, who: recipe } of asks) {
          const target = targets[t % targets.length] as Target;
          const req = accessRequest(resolveTarget(target, spec.p));
          const who = resolveWho(recipe, target, subjects);
          const expected = ask(plain, req, who);
          const check = (actual: Outcome, what: string): void => {
            if (!same(actual, expected)) expect(actual, context(what, req, who)).toEqual(expected);
          };
          check(ask(indexed, req, who), 'indexed vs plain Casbin');
          check(ask(cached, req, who), 'indexed with the decision cache vs plain Casbin');
          if (tiny !== undefined) check(ask(tiny, req, who), 'indexed with a two-entry decision cache vs plain Casbin');
          if (casbin !== undefined && who.roles.length === 0 && 'request' in expected) {
            stats.casbinChecks++;
            check(askCasbin(casbin, expected.request), 'Casbin with its own loader and role manager vs plain');
          }

          stats.asks++;
          if ('error' in expected) stats.errors++;
          else {
            if (expected.allowed) stats.allows++;
            else stats.denies++;
            const sub = expected.policy?.[subIndex];
            if (sub !== undefined && sub !== expected.request[0]) stats.inherited++;
            if (sub !== undefined && /^role:r(9|1\d)$/.test(sub)) stats.deep++;
            if (mc.eft && expected.policy?.at(-1) === 'deny') stats.denyLines++;
          }
          const key = JSON.stringify([req.path, req.method, req.host, who.anonymous, who.subject]);
          const answer = JSON.stringify(expected);
          const before = seen.get(key);
          if (before !== undefined && before !== answer) stats.roleSensitive++;
          seen.set(key, answer);
        }
      }),
      { numRuns: mc.runs, seed: SEED },
    );

    // Not vacuous: the policies load, the answers vary, roles and deep hierarchies decide some of them.
    const summary = JSON.stringify(stats);
    if (process.env.POLICY_INDEX_STATS !== undefined) console.log(`${mc.name}: ${summary}`);
    expect(stats.rejected, summary).toBeLessThanOrEqual(stats.policies / 20);
    expect(stats.allows, summary).toBeGreaterThan(stats.asks / 100);
    expect(stats.denies, summary).toBeGreaterThan(stats.asks / 100);
    expect(stats.errors, summary).toBeLessThan(stats.asks / 20);
    if (mc.roles !== 'none' && !mc.subjectsIgnored) expect(stats.inherited, summary).toBeGreaterThan(0);
    if (mc.roles === 'g' && !mc.subjectsIgnored) {
      expect(stats.roleSensitive, summary).toBeGreaterThan(0);
      expect(stats.deep, summary).toBeGreaterThan(0);
    }
    if (mc.eft) expect(stats.denyLines, summary).toBeGreaterThan(0);
    if (casbinWitness(mc)) expect(stats.casbinChecks, summary).toBeGreaterThan(0);
  });
});

/** mulberry32: a small seeded PRNG, so the large policy and its requests are the same on every run. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4_294_967_296;
  };
}

describe('decision cache and identities', () => {
  it('never answers one identity with the decision of another, whatever the order of the questions', async () => {
    const policyPath = await file(['p, role:b, /x, GET', 'p, user:bob, /mine, GET', 'p, anonymous, /public, GET', 'g, role:a, role:c', ''].join('\n'));
    const modelPath = await file(SHIPPED_MODEL);
    const [plain, cached, tiny] = await Promise.all([
      createCasbinAuthorizer({ modelPath, policyPath, index: false, decisionCacheEntries: 0 }),
      createCasbinAuthorizer({ modelPath, policyPath }),
      createCasbinAuthorizer({ modelPath, policyPath, decisionCacheEntries: 2 }),
    ]);
    // Identities a key made by joining names would confuse: ['a', 'b'] and ['a,role:b'], a role named like
    // a user, the anonymous subject and a user named "anonymous", roles in another order.
    const whos: Who[] = [
      { anonymous: false, subject: 'bob', roles: ['a', 'b'] },
      { anonymous: false, subject: 'bob', roles: ['a,role:b'] },
      { anonymous: false, subject: 'bob', roles: ['a\u0000role:b'] },
      { anonymous: false, subject: 'bob', roles: ['a', 'b,'] },
      { anonymous: false, subject: 'bob', roles: [] },
      { anonymous: false, subject: 'bob', roles: ['b', 'a'] },
      { anonymous: false, subject: 'b', roles: [] },
      { anonymous: false, subject: 'role:b', roles: [] },
      { anonymous: false, subject: 'bob,role:b', roles: [] },
      { anonymous: false, subject: 'alice', roles: ['b'] },
      { anonymous: false, subject: 'alice', roles: [] },
      { anonymous: false, subject: 'anonymous', roles: [] },
      { anonymous: true, subject: 'anonymous', roles: [] },
      { anonymous: true, subject: 'anonymous', roles: ['b'] },
    ];
    const paths = ['/x', '/mine', '/public'];
    const random = prng(42);
    let allows = 0;
    for (let i = 0; i < 600; i++) {
      const who = whos[Math.floor(random() * whos.length)] as Who;
      const req = accessRequest({ path: paths[Math.floor(random() * paths.length)] as string, method: random() < 0.2 ? 'HEAD' : 'GET', host: 'h' });
      const expected = ask(plain, req, who);
      if ('allowed' in expected && expected.allowed) allows++;
      for (const [name, authz] of [['cached', cached], ['two-entry cache', tiny]] as const) {
        const actual = ask(authz, req, who);
        if (!same(actual, expected)) expect(actual, `${name}: ${req.method} ${req.path} as ${JSON.stringify(who)} (question ${i})`).toEqual(expected);
      }
    }
    expect(allows).toBeGreaterThan(50);
    expect(allows).toBeLessThan(550);
  });
});

// ------------------------------------------------------------------------------------- a large policy

describe('policy index on a large policy', () => {
  it('agrees with Casbin on a 10,000-line keyMatch2 policy with role hierarchies', async () => {
    const random = prng(10_000);
    const int = (n: number): number => Math.floor(random() * n);
    const pick = <T>(xs: readonly T[]): T => xs[int(xs.length)] as T;
    const SERVICES = 60;
    const RESOURCES = 30;
    const TEAMS = 400;
    const USERS = 2_000;
    const templates = [
      (s: number, r: number) => `/svc${s}/res${r}/:id`,
      (s: number, r: number) => `/svc${s}/res${r}/*`,
      (s: number, r: number) => `/svc${s}/res${r}`,
      (s: number) => `/svc${s}/*`,
      (s: number, r: number) => `/svc${s}/res${r}/:id/items/:item`,
      (s: number, r: number) => `/svc${s}/res${r}.json`,
      (s: number, r: number) => `/svc${s}/v1.${r}/:id`,
    ];
    const lines: Array<{ sub: string; obj: string; act: string }> = [];
    for (let i = 0; i < 10_000; i++) {
      const x = random();
      const sub = x < 0.85 ? `role:team${int(TEAMS)}` : x < 0.97 ? `user:u${int(USERS)}` : 'anonymous';
      lines.push({ sub, obj: pick(templates)(int(SERVICES), int(RESOURCES)), act: pick(POLICY_ACTIONS) });
    }
    const text: string[] = lines.map((l) => `p, ${l.sub}, ${l.obj}, ${l.act}`);
    for (let u = 0; u < USERS; u++) for (let k = int(3); k > 0; k--) text.push(`g, user:u${u}, role:team${int(TEAMS)}`);
    // Teams inherit from lower-numbered teams only: a hierarchy without cycles, several levels deep.
    for (let k = 0; k < 600; k++) {
      const from = 1 + int(TEAMS - 1);
      text.push(`g, role:team${from}, role:team${int(from)}`);
    }
    const policyPath = await file(`${text.join('\n')}\n`);
    const modelPath = await file(SHIPPED_MODEL);
    const [plain, indexed, cached] = await Promise.all([
      createCasbinAuthorizer({ modelPath, policyPath, index: false, decisionCacheEntries: 0 }),
      createCasbinAuthorizer({ modelPath, policyPath, index: true, decisionCacheEntries: 0 }),
      createCasbinAuthorizer({ modelPath, policyPath, index: true }),
    ]);
    expect(indexed.indexed).toBe(true);

    let allows = 0;
    let denies = 0;
    for (let i = 0; i < LARGE_POLICY_REQUESTS; i++) {
      let who: Who;
      let path: string;
      let method = pick(REQUEST_METHODS);
      const roles = Array.from({ length: int(3) }, () => `team${int(TEAMS + 20)}`);
      if (random() < 0.5) {
        // A request some line is about: its subject (or a holder of its role), its path filled in, its method.
        const line = pick(lines);
        if (line.sub === 'anonymous') who = { anonymous: true, subject: 'anonymous', roles: [] };
        else if (line.sub.startsWith('user:')) who = { anonymous: false, subject: line.sub.slice('user:'.length), roles };
        else who = { anonymous: false, subject: `u${int(USERS + 200)}`, roles: [line.sub.slice('role:'.length), ...roles] };
        path = line.obj.replace(/:id|:item/g, () => pick(['42', 'x.y', 'a'])).replace(/\*/g, () => pick(['', 'a', 'a/b']));
        if (line.act !== '*' && random() < 0.8) method = line.act;
      } else {
        who = random() < 0.1 ? { anonymous: true, subject: 'anonymous', roles: [] } : { anonymous: false, subject: `u${int(USERS + 200)}`, roles };
        path = `/svc${int(SERVICES + 2)}/${pick([`res${int(RESOURCES + 2)}`, `res${int(RESOURCES)}.json`, `v1.${int(RESOURCES)}`, `v1x${int(RESOURCES)}`, ''])}${pick(['', '/42', '/a/b', '/42/items/7', '/'])}`;
      }
      const req = accessRequest({ path, method, host: 'h' });
      const expected = ask(plain, req, who);
      for (const [name, authz] of [['indexed', indexed], ['cached', cached]] as const) {
        const actual = ask(authz, req, who);
        if (!same(actual, expected)) expect(actual, `${name}: request ${JSON.stringify({ path, method })} identity ${JSON.stringify(who)}`).toEqual(expected);
      }
      if ('allowed' in expected && expected.allowed) allows++;
      else denies++;
    }
    expect(allows).toBeGreaterThan(LARGE_POLICY_REQUESTS / 10);
    expect(denies).toBeGreaterThan(LARGE_POLICY_REQUESTS / 10);
  });
});
