/**
 * An index in front of Casbin's evaluation. node-casbin evaluates the matcher against every policy line on
 * every request, which costs seconds per decision at 100k lines. The index picks, for one request, a
 * superset of the lines whose matcher can be true, in policy order, and Casbin evaluates only those: the
 * decision and the explaining line are Casbin's own, because every line left out is one whose matcher is
 * false, and Casbin's effects depend only on the matching lines and their order.
 *
 * It reads the matcher's top-level `&&` conjunction and narrows by at most two of its terms:
 * - an exact key: `g(r.x, p.y)` (p.y is r.x or a role reachable from it through `g` lines or the token's
 *   roles) or `r.x == p.y`;
 * - a prefix key: `keyMatch*(r.x, p.y)` (the request value starts with the pattern's literal prefix, the
 *   characters before anything the matcher would treat as a wildcard or regex) or `r.x == p.y`.
 * Every other term is left to Casbin (a `g` with domains is not read, but the model's other terms still
 * narrow). A model whose matcher cannot be read that way (a top-level `||` or `?:`, `eval()`, no reference
 * to p) gets no index and plain Casbin runs.
 */
import { Util, type Model } from 'casbin';

/** Who the request-scoped token roles belong to (see RequestScopedRoleManager). */
export interface RoleScope {
  readonly subject: string;
  readonly roles: readonly string[];
}

export interface PolicyIndex {
  /**
   * The policy lines that can match these request values, in policy order. Never empty: when no line can
   * match, one line that cannot is returned, so that Casbin runs its effect over "nothing matched" exactly
   * as it would over the whole policy (an empty policy takes a different path in Casbin).
   */
  candidates(rvals: readonly string[], scope: RoleScope): string[][];
}

type Term =
  | { readonly kind: 'role'; readonly r: number; readonly p: number }
  | { readonly kind: 'equal'; readonly r: number; readonly p: number }
  | { readonly kind: 'pattern'; readonly r: number; readonly p: number; readonly fn: string };

/** Characters after which a keyMatch/keyMatch2/3/4 pattern is no longer taken literally. */
const PATTERN_SPECIAL = new Set(['*', ':', '{', '}', '\\', '^', '$', '.', '|', '?', '+', '(', ')', '[', ']']);

/** The literal start of a keyMatch* pattern: a request value that matches it starts with this. */
export function literalPrefix(pattern: string): string {
  // `|` anywhere splits the regex keyMatch2/3/4 build into alternatives: no prefix is implied at all.
  if (pattern.includes('|')) return '';
  for (let i = 0; i < pattern.length; i++) {
    const c = pattern[i]!;
    if (!PATTERN_SPECIAL.has(c)) continue;
    // keyMatch2/3/4 turn "/*" into "/.*" first: the slash stays required.
    if (c === '*' && pattern[i - 1] === '/') return pattern.slice(0, i);
    // Otherwise `*`, `?` and `{m,n}` are regex quantifiers: the character before them may be absent.
    if (c === '*' || c === '?' || c === '{') return pattern.slice(0, Math.max(0, i - 1));
    return pattern.slice(0, i);
  }
  return pattern;
}

/** Splits at top-level `&&`; undefined when the expression has a top-level `||`, `?` or `|`. */
export function conjuncts(expression: string): string[] | undefined {
  let text = expression.trim();
  for (;;) {
    const parts: string[] = [];
    let depth = 0;
    let quote = '';
    let start = 0;
    let wrapped = text.startsWith('(');
    for (let i = 0; i < text.length; i++) {
      const c = text[i]!;
      if (quote !== '') {
        if (c === '\\') i++;
        else if (c === quote) quote = '';
        continue;
      }
      if (c === '"' || c === "'" || c === '`') quote = c;
      else if (c === '(' || c === '[') depth++;
      else if (c === ')' || c === ']') {
        depth--;
        if (depth === 0 && i < text.length - 1) wrapped = false;
      } else if (depth === 0) {
        if (c === '|' || c === '?') return undefined;
        if (c === '&' && text[i + 1] === '&') {
          parts.push(text.slice(start, i).trim());
          start = i + 2;
          i++;
        }
      }
    }
    if (depth !== 0 || quote !== '') return undefined;
    parts.push(text.slice(start).trim());
    // "(a && b)" is read as "a && b".
    if (parts.length === 1 && wrapped && text.endsWith(')')) {
      text = text.slice(1, -1).trim();
      continue;
    }
    return parts;
  }
}

const KEY_MATCH = /^keyMatch[234]?$/;
const KEY_MATCH_FUNCTIONS: Readonly<Record<string, (key: string, pattern: string) => unknown>> = {
  keyMatch: Util.keyMatchFunc,
  keyMatch2: Util.keyMatch2Func,
  keyMatch3: Util.keyMatch3Func,
  keyMatch4: Util.keyMatch4Func,
};

function readTerm(text: string, rTokens: readonly string[], pTokens: readonly string[], roleFunctions: ReadonlySet<string>): Term | undefined {
  const call = /^(\w+)\(\s*(\w+)\s*,\s*(\w+)\s*\)$/.exec(text);
  if (call !== null) {
    const [, fn, a, b] = call as unknown as [string, string, string, string];
    const r = rTokens.indexOf(a);
    const p = pTokens.indexOf(b);
    if (r < 0 || p < 0) return undefined;
    if (roleFunctions.has(fn)) return { kind: 'role', r, p };
    if (KEY_MATCH.test(fn)) return { kind: 'pattern', r, p, fn };
    return undefined;
  }
  const eq = /^(\w+)\s*==\s*(\w+)$/.exec(text);
  if (eq === null) return undefined;
  const [, a, b] = eq as unknown as [string, string, string];
  if (rTokens.includes(a) && pTokens.includes(b)) return { kind: 'equal', r: rTokens.indexOf(a), p: pTokens.indexOf(b) };
  if (rTokens.includes(b) && pTokens.includes(a)) return { kind: 'equal', r: rTokens.indexOf(b), p: pTokens.indexOf(a) };
  return undefined;
}

/**
 * Terms the index does not narrow by but that cannot throw on any policy line: comparisons of request and
 * policy values (strings) and literals, role functions (`g`, `g2`, ...), and our anchored regexMatch on a
 * policy pattern (every policy pattern was compiled at load). Anything else (ipMatch, globMatch, keyMatch5,
 * `in`, a request value used as a pattern) may throw for some lines only.
 */
function cannotThrow(text: string, gFunctions: ReadonlySet<string>): boolean {
  if (/\bin\b/.test(text.replace(/"[^"]*"|'[^']*'/g, '""'))) return false;
  for (const call of text.matchAll(/(\w+)\s*\(([^()]*)\)/g)) {
    const [, fn = '', args = ''] = call;
    if (gFunctions.has(fn)) continue;
    if (fn === 'authzSidecarAnchoredRegexMatch' && /^\s*r_\w+\s*,\s*p_\w+\s*$/.test(args)) continue;
    return false;
  }
  return true;
}

interface PrefixBucket {
  /** Distinct prefix lengths, ascending. */
  lengths: number[];
  byPrefix: Map<string, number[]>;
}

/**
 * The index for a loaded model and policy, or undefined when the model's shape does not allow one (plain
 * Casbin then evaluates every line). `roleFunction` is the `g` whose links the scope's token roles extend.
 */
export function buildPolicyIndex(model: Model, roleFunction = 'g'): PolicyIndex | undefined {
  const matcher = model.model.get('m')?.get('m')?.value;
  const rTokens = model.model.get('r')?.get('r')?.tokens;
  const pAssertion = model.model.get('p')?.get('p');
  const policy = pAssertion?.policy;
  if (matcher === undefined || rTokens === undefined || pAssertion === undefined || policy === undefined) return undefined;
  if (policy.length === 0 || !matcher.includes('p_') || /\beval\s*\(/.test(matcher)) return undefined;

  // Only a `g` without domains is read: its links come from the policy's `g` lines and the token's roles.
  const gAssertion = model.model.get('g')?.get(roleFunction);
  const roleFunctions = new Set<string>();
  if (gAssertion !== undefined && gAssertion.value.split(',').length === 2) roleFunctions.add(roleFunction);

  const parts = conjuncts(matcher);
  if (parts === undefined) return undefined;
  const gFunctions = new Set(model.model.get('g')?.keys() ?? []);
  const read = parts.map((text) => ({ text, term: readTerm(text, rTokens, pAssertion.tokens, roleFunctions) }));
  // Casbin throws when a term throws on a line it evaluates (a POLICY_ERROR deny). A line the index
  // leaves out is never evaluated, so every term must be one that cannot throw on any line, else a
  // throwing line left out could let another line allow: no index then, Casbin as it is.
  for (const { text, term } of read) {
    if (term?.kind === 'pattern') {
      const match = KEY_MATCH_FUNCTIONS[term.fn];
      // Generated policies repeat their patterns: each distinct one is compiled once.
      for (const pattern of new Set(policy.map((line) => line[term.p] ?? ''))) {
        try {
          match?.('/', pattern);
        } catch {
          return undefined;
        }
      }
    } else if (term === undefined && !cannotThrow(text, gFunctions)) {
      return undefined;
    }
  }
  const terms = read.map((t) => t.term).filter((t) => t !== undefined);
  const exact = terms.find((t) => t.kind === 'role') ?? terms.find((t) => t.kind === 'equal');
  const prefix = terms.find((t) => t.kind === 'pattern') ?? terms.find((t) => t.kind === 'equal' && t !== exact);
  if (exact === undefined && prefix === undefined) return undefined;

  const buckets = new Map<string, PrefixBucket>();
  for (let i = 0; i < policy.length; i++) {
    const line = policy[i]!;
    const key = exact === undefined ? '' : (line[exact.p] ?? '');
    const value = prefix === undefined ? '' : (line[prefix.p] ?? '');
    const start = prefix === undefined ? '' : prefix.kind === 'pattern' ? literalPrefix(value) : value;
    let bucket = buckets.get(key);
    if (bucket === undefined) {
      bucket = { lengths: [], byPrefix: new Map() };
      buckets.set(key, bucket);
    }
    const lines = bucket.byPrefix.get(start);
    if (lines === undefined) bucket.byPrefix.set(start, [i]);
    else lines.push(i);
  }
  for (const bucket of buckets.values()) {
    bucket.lengths = [...new Set([...bucket.byPrefix.keys()].map((k) => k.length))].sort((a, b) => a - b);
  }

  const links = new Map<string, string[]>();
  if (exact?.kind === 'role') {
    for (const [from, to] of model.model.get('g')?.get(roleFunction)?.policy ?? []) {
      if (from === undefined || to === undefined) continue;
      const out = links.get(from);
      if (out === undefined) links.set(from, [to]);
      else out.push(to);
    }
  }

  /** Every name `g(name, x)` can be true for: the name, and all it reaches (depth unbounded: a superset). */
  function reachable(name: string, scope: RoleScope): Set<string> {
    const seen = new Set<string>([name]);
    const queue = [name];
    if (name === scope.subject) {
      for (const role of scope.roles) {
        if (!seen.has(role)) {
          seen.add(role);
          queue.push(role);
        }
      }
    }
    for (let i = 0; i < queue.length; i++) {
      for (const next of links.get(queue[i]!) ?? []) {
        if (!seen.has(next)) {
          seen.add(next);
          queue.push(next);
        }
      }
    }
    return seen;
  }

  const never = [policy[0]!];
  return {
    candidates(rvals, scope) {
      let keys: Iterable<string>;
      if (exact === undefined) keys = [''];
      else if (exact.kind === 'role') keys = reachable(rvals[exact.r] ?? '', scope);
      else keys = [rvals[exact.r] ?? ''];
      const value = prefix === undefined ? '' : (rvals[prefix.r] ?? '');

      let found: number[] | undefined;
      let merged = false;
      for (const key of keys) {
        const bucket = buckets.get(key);
        if (bucket === undefined) continue;
        for (const length of bucket.lengths) {
          if (length > value.length) break;
          const lines = bucket.byPrefix.get(length === value.length ? value : value.slice(0, length));
          if (lines === undefined) continue;
          if (found === undefined) found = lines;
          else {
            if (!merged) {
              found = [...found];
              merged = true;
            }
            for (const n of lines) found.push(n);
          }
        }
      }
      if (found === undefined) return never;
      // Each line sits in one bucket under one prefix, so there are no duplicates; Casbin needs policy order.
      if (merged) found.sort((a, b) => a - b);
      return found.map((n) => policy[n]!);
    },
  };
}
