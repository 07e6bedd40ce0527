/**
 * `authz-sidecar validate --config FILE`: everything `serve` checks at startup, without listening or
 * fetching anything: the schema, readable files, JWKS files and secrets, the model, and the policy lint
 * (arity, role cycles, duplicate lines, unsafe regexMatch patterns, keyMatch patterns that would match `..`
 * segments). Exit 0 when there are no errors (warnings are printed), 2 otherwise.
 */
import { readFile } from 'node:fs/promises';
import { relative } from 'node:path';
import { parseArgs } from 'node:util';
import { newModelFromString } from 'casbin';
import { parsePolicyText } from '../authz/policy-file.js';
import { lintPolicy, type Finding } from '../authz/policy-lint.js';
import { loadConfig, type ConfigIssue } from '../config/load.js';
import { prepareAuthenticators } from '../authn/registry.js';
import { buildAuthorizer } from '../engine.js';
import { prepareSignIn } from '../signin/setup.js';
import { UsageError } from './usage-error.js';

export async function validate(args: string[]): Promise<number> {
  const { values } = parseArgs({ args, options: { config: { type: 'string', short: 'c' } } });
  const file = values.config ?? process.env['AUTHZ_SIDECAR_CONFIG'];
  if (file === undefined || file === '') throw new UsageError('validate needs --config FILE');
  const config = await loadConfig(file);

  const issues: ConfigIssue[] = [];
  await prepareAuthenticators(config, issues);
  await prepareSignIn(config, issues, { check: true });
  let findings: Finding[] = [];
  try {
    const model = newModelFromString(await readFile(config.authz.model, 'utf8'));
    findings = lintPolicy(model, parsePolicyText(await readFile(config.authz.policy, 'utf8')));
  } catch (err) {
    issues.push({ path: 'authz.model', message: `the Casbin model does not parse: ${(err as Error).message}` });
  }
  // The load itself (request arity, enforcer construction), unless the lint already said why it fails.
  if (!findings.some((f) => f.severity === 'error')) await buildAuthorizer(config, issues);

  const policy = relative(process.cwd(), config.authz.policy);
  for (const issue of issues) console.error(`${file}: ${issue.path}: ${issue.message}`);
  for (const f of findings) {
    const line = `${policy}:${f.line ?? 0}: ${f.severity} ${f.code}: ${f.message}`;
    if (f.severity === 'error') console.error(line);
    else console.warn(line);
  }
  const errors = issues.length + findings.filter((f) => f.severity === 'error').length;
  const warnings = findings.length - findings.filter((f) => f.severity === 'error').length;
  console.log(`${file}: ${errors === 0 ? 'valid' : 'invalid'} (${errors} errors, ${warnings} warnings)`);
  return errors === 0 ? 0 : 2;
}
