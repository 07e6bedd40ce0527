/**
 * `authz-sidecar policy test` and `authz-sidecar policy check` (DESIGN.md §5): table cases and one-off
 * questions answered by the same engine `serve` runs, with explanations (the policy line that decided) and
 * coverage of the policy's `p` lines. Exit codes: 0 all pass / allow, 1 a failing case / deny / coverage
 * below --coverage-min, 2 bad usage or bad files.
 */
import type { Stats } from 'node:fs';
import { readdir, stat } from 'node:fs/promises';
import { dirname, extname, relative, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { z } from 'zod';
import { ConfigError, loadConfig, readYamlFile, zodIssues } from '../config/load.js';
import type { Decision } from '../core/decision.js';
import { createPolicyEngine, type GivenIdentity, type PolicyEngine } from './policy-engine.js';
import { UsageError } from './usage-error.js';

const EXPECTATIONS = ['allow', 'forbidden', 'unauthenticated', 'badRequest'] as const;

const caseSchema = z.strictObject({
  name: z.string().min(1),
  request: z.strictObject({
    method: z.string().regex(/^[A-Za-z]+$/, 'must be an HTTP method').default('GET'),
    path: z.string().min(1),
    host: z.string().optional(),
    headers: z.record(z.string(), z.string()).optional(),
    peer: z.string().optional(),
  }),
  identity: z
    .union([
      z.strictObject({ subject: z.string().min(1), roles: z.array(z.string().min(1)).default([]) }),
      z.strictObject({ claims: z.record(z.string(), z.unknown()) }),
    ], { error: 'must be { subject, roles } or { claims }' })
    .optional(),
  expect: z.enum(EXPECTATIONS),
});
const testFileSchema = z.strictObject({ config: z.string().min(1).optional(), cases: z.array(caseSchema).min(1, 'at least one case is required') });


export interface CaseResult {
  readonly file: string;
  readonly name: string;
  readonly expect: string;
  readonly got: string;
  readonly passed: boolean;
  readonly reason: string;
  readonly canonicalPath: string | undefined;
  readonly explanation: string;
}

function explain(engine: PolicyEngine, decision: Decision): string {
  const rule = engine.ruleOf(decision);
  if (rule !== undefined) return `${relative(process.cwd(), engine.policyFile)}:${rule.line}: ${rule.text}`;
  if (decision.policyRequest === undefined) return decision.detail;
  return 'no policy line matched';
}

/** Test files named on the command line: files as given, folders searched for *.yaml / *.yml. */
async function testFiles(paths: readonly string[]): Promise<string[]> {
  const out: string[] = [];
  for (const p of paths) {
    let info: Stats;
    try {
      info = await stat(p);
    } catch (err) {
      throw new UsageError(`no such file or folder: ${p}`, { cause: err });
    }
    if (info.isFile()) out.push(resolve(p));
    else {
      const entries = await readdir(p, { recursive: true, withFileTypes: true });
      for (const e of entries) {
        if (e.isFile() && ['.yaml', '.yml'].includes(extname(e.name))) out.push(resolve(e.parentPath, e.name));
      }
    }
  }
  if (out.length === 0) throw new UsageError(`no test files (*.yaml, *.yml) in ${paths.join(', ')}`);
  return [...new Set(out)].sort();
}

async function readTestFile(file: string): Promise<z.output<typeof testFileSchema>> {
  const { data, lineAt } = await readYamlFile(file, 'test file');
  const parsed = testFileSchema.safeParse(data);
  if (!parsed.success) throw new ConfigError(file, zodIssues(parsed.error, lineAt));
  return parsed.data;
}

function escapeXml(text: string): string {
  return text.replace(/[<>&"']/g, (c) => `&${({ '<': 'lt', '>': 'gt', '&': 'amp', '"': 'quot', "'": 'apos' } as Record<string, string>)[c] ?? ''};`);
}

function junit(results: readonly CaseResult[]): string {
  const files = [...new Set(results.map((r) => r.file))];
  const failures = results.filter((r) => !r.passed).length;
  const suites = files.map((file) => {
    const cases = results.filter((r) => r.file === file);
    const body = cases
      .map((r) => {
        const open = `    <testcase classname="${escapeXml(file)}" name="${escapeXml(r.name)}">`;
        if (r.passed) return `${open}</testcase>`;
        const message = `expected ${r.expect}, got ${r.got}`;
        return `${open}\n      <failure message="${escapeXml(message)}">${escapeXml(`${message} (${r.reason}): ${r.explanation}`)}</failure>\n    </testcase>`;
      })
      .join('\n');
    return `  <testsuite name="${escapeXml(file)}" tests="${cases.length}" failures="${cases.filter((r) => !r.passed).length}">\n${body}\n  </testsuite>`;
  });
  return `<?xml version="1.0" encoding="UTF-8"?>\n<testsuites name="authz-sidecar policy test" tests="${results.length}" failures="${failures}">\n${suites.join('\n')}\n</testsuites>\n`;
}

export async function policyTest(args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: {
      config: { type: 'string', short: 'c' },
      coverage: { type: 'boolean', default: false },
      'coverage-min': { type: 'string' },
      format: { type: 'string', default: 'text' },
    },
  });
  const format = values.format;
  if (format !== 'text' && format !== 'json' && format !== 'junit') throw new UsageError('--format must be text, json or junit');
  const coverageMin = values['coverage-min'] === undefined ? undefined : Number(values['coverage-min']);
  if (coverageMin !== undefined && !(coverageMin >= 0 && coverageMin <= 100)) throw new UsageError('--coverage-min must be a percentage from 0 to 100');
  if (positionals.length === 0) throw new UsageError('policy test needs test files or folders');

  const engines = new Map<string, PolicyEngine>();
  const engineFor = async (configFile: string): Promise<PolicyEngine> => {
    let engine = engines.get(configFile);
    if (engine === undefined) {
      engine = await createPolicyEngine(await loadConfig(configFile), configFile);
      engines.set(configFile, engine);
    }
    return engine;
  };

  const results: CaseResult[] = [];
  for (const file of await testFiles(positionals)) {
    const suite = await readTestFile(file);
    const configFile = suite.config !== undefined ? resolve(dirname(file), suite.config) : values.config;
    if (configFile === undefined) throw new UsageError(`${file} names no config: add "config:" to it or pass --config`);
    const engine = await engineFor(resolve(configFile));
    for (const c of suite.cases) {
      const decision = await engine.decide(c.request, c.identity);
      const got = decision.outcome;
      results.push({
        file: relative(process.cwd(), file),
        name: c.name,
        expect: c.expect,
        got,
        passed: got === c.expect,
        reason: decision.reason,
        canonicalPath: decision.request?.path,
        explanation: explain(engine, decision),
      });
    }
  }

  const passed = results.filter((r) => r.passed).length;
  const failed = results.length - passed;
  const coverage = values.coverage || coverageMin !== undefined ? coverageOf([...engines.values()], results) : undefined;

  if (format === 'json') {
    process.stdout.write(`${JSON.stringify({ passed, failed, cases: results, ...(coverage ? { coverage } : {}) }, null, 2)}\n`);
  } else if (format === 'junit') {
    process.stdout.write(junit(results));
  } else {
    for (const r of results) {
      if (r.passed) process.stdout.write(`PASS  ${r.file} > ${r.name}\n`);
      else process.stdout.write(`FAIL  ${r.file} > ${r.name}\n      expected ${r.expect}, got ${r.got} (${r.reason}) on ${r.canonicalPath ?? '(rejected path)'}\n      ${r.explanation}\n`);
    }
    if (coverage !== undefined) {
      process.stdout.write(`\ncoverage: ${coverage.covered}/${coverage.total} policy lines matched (${coverage.percent.toFixed(1)}%)\n`);
      for (const u of coverage.uncovered) process.stdout.write(`  not matched by any case: ${u.file}:${u.line}: ${u.text}\n`);
    }
    process.stdout.write(`\n${passed} passed, ${failed} failed\n`);
  }
  if (failed > 0) return 1;
  if (coverageMin !== undefined && coverage !== undefined && coverage.percent < coverageMin) {
    console.error(`authz-sidecar: policy coverage ${coverage.percent.toFixed(1)}% is below --coverage-min ${coverageMin}%`);
    return 1;
  }
  return 0;
}

interface Coverage {
  readonly covered: number;
  readonly total: number;
  readonly percent: number;
  readonly uncovered: ReadonlyArray<{ file: string; line: number; text: string }>;
}

/** Which `p` lines of each policy decided at least one case. */
function coverageOf(engines: readonly PolicyEngine[], results: readonly CaseResult[]): Coverage {
  const uncovered: Array<{ file: string; line: number; text: string }> = [];
  let total = 0;
  for (const engine of engines) {
    const file = relative(process.cwd(), engine.policyFile);
    for (const rule of engine.authorizer.rules) {
      if (!rule.ptype.startsWith('p')) continue;
      total++;
      const matched = results.some((r) => r.explanation === `${file}:${rule.line}: ${rule.text}`);
      if (!matched) uncovered.push({ file, line: rule.line, text: rule.text });
    }
  }
  const covered = total - uncovered.length;
  return { covered, total, percent: total === 0 ? 100 : (covered / total) * 100, uncovered };
}

export async function policyCheck(args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: {
      config: { type: 'string', short: 'c' },
      subject: { type: 'string' },
      role: { type: 'string', multiple: true, default: [] },
      claims: { type: 'string' },
    },
  });
  if (values.config === undefined) throw new UsageError('policy check needs --config FILE');
  if (positionals.length !== 2) throw new UsageError('policy check needs METHOD PATH');
  const [method = '', path = ''] = positionals;
  let identity: GivenIdentity | undefined;
  if (values.claims !== undefined) {
    if (values.subject !== undefined || values.role.length > 0) throw new UsageError('--claims cannot be combined with --subject or --role');
    let claims: unknown;
    try {
      claims = JSON.parse(values.claims);
    } catch (err) {
      throw new UsageError('--claims must be a JSON object', { cause: err });
    }
    if (typeof claims !== 'object' || claims === null || Array.isArray(claims)) throw new UsageError('--claims must be a JSON object');
    identity = { claims: claims as Record<string, unknown> };
  } else if (values.subject !== undefined) {
    identity = { subject: values.subject, roles: values.role };
  } else if (values.role.length > 0) {
    throw new UsageError('--role needs --subject');
  }

  const engine = await createPolicyEngine(await loadConfig(values.config), values.config);
  const decision = await engine.decide({ method, path }, identity);
  const lines = [
    `decision:  ${decision.outcome} (${decision.status} ${decision.reason})`,
    `canonical: ${decision.request?.path ?? `(rejected: ${decision.detail})`}`,
    `identity:  ${decision.identity === undefined ? '-' : decision.identity.anonymous ? `anonymous (${decision.identity.subject})` : `${decision.identity.subject} roles [${decision.identity.roles.join(', ')}]`}`,
    `request:   ${decision.policyRequest === undefined ? '-' : `[${decision.policyRequest.join(', ')}]`}`,
    `policy:    ${explain(engine, decision)}`,
  ];
  process.stdout.write(`${lines.join('\n')}\n`);
  return decision.outcome === 'allow' ? 0 : 1;
}

export const POLICY_USAGE = `  authz-sidecar policy test  [--config FILE] [--coverage] [--coverage-min PERCENT] [--format text|json|junit] PATH...
  authz-sidecar policy check --config FILE [--subject S] [--role R]... [--claims JSON] METHOD PATH`;

