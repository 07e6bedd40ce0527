/**
 * Static checks of a Casbin model and policy, run by `validate` and (errors only) at every load:
 * - every rule has the arity its definition in the model asks for;
 * - no role inheritance cycle (`g, a, b` + `g, b, a`);
 * - no duplicate rule;
 * - `regexMatch` patterns compile and cannot backtrack catastrophically (`^/(a+)+$` takes seconds on a
 *   30-character path), checked with safe-regex2;
 * - keyMatch-family patterns that would also match a path with `..` segments are flagged (warning): safe
 *   behind our canonical path, a bypass wherever the same pattern meets raw paths
 *   (`keyMatch2('/public/../admin', '/public/*')` is true).
 */
import { Util, type Model } from 'casbin';
import safeRegex from 'safe-regex2';
import type { PolicyLine } from './policy-file.js';

export interface Finding {
  readonly severity: 'error' | 'warning';
  readonly code: 'ARITY' | 'ROLE_CYCLE' | 'DUPLICATE' | 'UNSAFE_REGEX' | 'INVALID_REGEX' | 'DOT_SEGMENTS';
  /** 1-based line in the policy file, when the finding is about one line. */
  readonly line?: number;
  readonly message: string;
}

type KeyMatcher = (key1: string, key2: string) => boolean;

const KEY_MATCHERS: Readonly<Record<string, KeyMatcher>> = {
  keyMatch: Util.keyMatchFunc as KeyMatcher,
  keyMatch2: Util.keyMatch2Func as KeyMatcher,
  keyMatch3: Util.keyMatch3Func as KeyMatcher,
  keyMatch4: Util.keyMatch4Func as KeyMatcher,
  keyMatch5: Util.keyMatch5Func as KeyMatcher,
  globMatch: Util.globMatch,
};

/** Columns of `p` that the matcher passes to `fn(r.x, p.y)`, as indexes into the rule's values. */
function columnsUsedBy(model: Model, fn: string): number[] {
  const matcher = model.model.get('m')?.get('m')?.value ?? '';
  const tokens = model.model.get('p')?.get('p')?.tokens ?? [];
  const out = new Set<number>();
  const re = new RegExp(`\\b${fn}\\(\\s*r_\\w+\\s*,\\s*(p_\\w+)\\s*\\)`, 'g');
  for (const m of matcher.matchAll(re)) {
    const index = tokens.indexOf(m[1] ?? '');
    if (index >= 0) out.add(index);
  }
  return [...out];
}

const QUANTIFIED_ALTERNATION = /\((?:\?:)?[^()]*\|[^()]*\)(?:[*+]|\{\d*,\d*\})/;

/** The pattern for regexMatch as we evaluate it: anchored, so `/admin` never matches `/x/admin/y`. */
export function anchoredPattern(pattern: string): string {
  return `^(?:${pattern})$`;
}

/** Every value of the policy that the matcher uses as a regexMatch pattern. */
export function regexPatterns(model: Model, rules: readonly PolicyLine[]): string[] {
  const columns = columnsUsedBy(model, 'regexMatch');
  return rules.flatMap((rule) => (rule.ptype === 'p' ? columns.map((c) => rule.values[c]).filter((v): v is string => v !== undefined) : []));
}

function regexFindings(model: Model, rules: readonly PolicyLine[]): Finding[] {
  const out: Finding[] = [];
  for (const col of columnsUsedBy(model, 'regexMatch')) {
    for (const rule of rules) {
      if (rule.ptype !== 'p') continue;
      const pattern = rule.values[col];
      if (pattern === undefined) continue;
      try {
        new RegExp(anchoredPattern(pattern));
      } catch {
        out.push({ severity: 'error', code: 'INVALID_REGEX', line: rule.line, message: `regexMatch pattern ${JSON.stringify(pattern)} is not a valid regular expression` });
        continue;
      }
      // safe-regex2 catches nested quantifiers; a quantified group with alternatives (`(a|a)*`,
      // `(\w|\d)+`) backtracks exponentially too when the alternatives overlap, so it is refused as well.
      if (!safeRegex(anchoredPattern(pattern)) || QUANTIFIED_ALTERNATION.test(pattern)) {
        out.push({
          severity: 'error',
          code: 'UNSAFE_REGEX',
          line: rule.line,
          message: `regexMatch pattern ${JSON.stringify(pattern)} can backtrack catastrophically (nested quantifiers); rewrite it`,
        });
      }
    }
  }
  return out;
}

function dotSegmentFindings(model: Model, rules: readonly PolicyLine[]): Finding[] {
  const out: Finding[] = [];
  for (const [name, fn] of Object.entries(KEY_MATCHERS)) {
    for (const col of columnsUsedBy(model, name)) {
      for (const rule of rules) {
        const pattern = rule.ptype === 'p' ? rule.values[col] : undefined;
        if (pattern === undefined) continue;
        const literal = pattern.split(/[*:{]/, 1)[0] ?? '';
        const base = literal.endsWith('/') ? literal : literal.slice(0, literal.lastIndexOf('/') + 1);
        const probe = `${base}../authz-sidecar-probe`;
        if (base !== '' && fn(probe, pattern)) {
          out.push({
            severity: 'warning',
            code: 'DOT_SEGMENTS',
            line: rule.line,
            message: `${name} pattern ${JSON.stringify(pattern)} also matches ${JSON.stringify(probe)}: safe behind authz-sidecar's canonical path, a bypass wherever it meets raw paths`,
          });
        }
      }
    }
  }
  return out;
}

function cycleFindings(rules: readonly PolicyLine[]): Finding[] {
  const edges = new Map<string, Array<{ to: string; line: number }>>();
  for (const rule of rules) {
    if (rule.ptype !== 'g' || rule.values.length !== 2) continue;
    const [from = '', to = ''] = rule.values;
    const list = edges.get(from) ?? [];
    list.push({ to, line: rule.line });
    edges.set(from, list);
  }
  const out: Finding[] = [];
  const done = new Set<string>();
  const reported = new Set<string>();
  const visit = (node: string, path: string[], lines: number[]): void => {
    for (const { to, line } of edges.get(node) ?? []) {
      const at = path.indexOf(to);
      if (at >= 0) {
        const cycle = [...path.slice(at), to];
        const key = [...cycle.slice(0, -1)].sort().join('\u0000');
        if (!reported.has(key)) {
          reported.add(key);
          out.push({ severity: 'error', code: 'ROLE_CYCLE', line, message: `role inheritance cycle: ${cycle.join(' -> ')} (lines ${[...lines.slice(at), line].join(', ')})` });
        }
        continue;
      }
      if (done.has(to)) continue;
      visit(to, [...path, to], [...lines, line]);
    }
    done.add(node);
  };
  for (const node of edges.keys()) if (!done.has(node)) visit(node, [node], []);
  return out;
}

export function lintPolicy(model: Model, rules: readonly PolicyLine[]): Finding[] {
  const findings: Finding[] = [];
  const seen = new Map<string, number>();
  for (const rule of rules) {
    const assertion = model.model.get(rule.ptype[0] ?? '')?.get(rule.ptype);
    if (assertion === undefined) {
      findings.push({ severity: 'error', code: 'ARITY', line: rule.line, message: `rule type "${rule.ptype}" is not defined in the model` });
      continue;
    }
    const arity = rule.ptype.startsWith('g') ? (assertion.value.match(/_/g) ?? []).length : assertion.tokens.length;
    if (rule.values.length !== arity) {
      findings.push({ severity: 'error', code: 'ARITY', line: rule.line, message: `"${rule.ptype}" rules have ${arity} fields in the model, this one has ${rule.values.length}` });
    }
    const key = `${rule.ptype}\u0000${rule.values.join('\u0000')}`;
    const first = seen.get(key);
    if (first !== undefined) findings.push({ severity: 'error', code: 'DUPLICATE', line: rule.line, message: `duplicate of line ${first}` });
    else seen.set(key, rule.line);
  }
  return [...findings, ...cycleFindings(rules), ...regexFindings(model, rules), ...dotSegmentFindings(model, rules)];
}
