/**
 * The offline policy commands as a user runs them: the built CLI in a child process (bin/authz-sidecar.js,
 * built by npm test's pretest). This also runs the example policy's own test cases in policies/tests/.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { XMLParser } from 'fast-xml-parser';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import { runCli, type Run } from '../support/cli.js';
import { RBAC_MODEL } from '../support/models.js';
import { EXAMPLE_MODEL, EXAMPLE_POLICY } from '../support/sidecar.js';

const ROOT = resolve(import.meta.dirname, '../..');
const EXAMPLE_CONFIG = join(ROOT, 'policies/authz-sidecar.yaml');

function cli(...args: string[]): Promise<Run> {
  return runCli(args);
}

let dir: string;
async function file(name: string, text: string): Promise<string> {
  const path = join(dir, name);
  await writeFile(path, text);
  return path;
}

/** A config in the temp folder using the given model and policy text. */
async function configWith(name: string, model: string, policy: string): Promise<string> {
  const modelFile = await file(`${name}.conf`, model);
  const policyFile = await file(`${name}.csv`, policy);
  return file(`${name}.yaml`, stringify({ upstream: { url: 'http://127.0.0.1:3000' }, authz: { model: modelFile, policy: policyFile } }));
}


beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'authz-policy-cli-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('policy test', () => {
  it('passes the example policy suite in policies/tests with exit 0', async () => {
    const r = await cli('policy', 'test', 'policies/tests');
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^PASS {2}policies\/tests\/orders\.yaml > readers can read an order$/m);
    expect(r.stdout.trim().split('\n').at(-1)).toMatch(/^\d+ passed, 0 failed$/);
  });

  it('fails a suite with a wrong expectation with exit 1, expected vs got and the deciding line', async () => {
    const suite = await file(
      'failing.yaml',
      stringify({
        config: EXAMPLE_CONFIG,
        cases: [
          { name: 'readers may read', identity: { subject: 'alice', roles: ['reader'] }, request: { method: 'GET', path: '/orders/1' }, expect: 'allow' },
          { name: 'wrongly expects readers may delete', identity: { subject: 'alice', roles: ['reader'] }, request: { method: 'DELETE', path: '/orders/1' }, expect: 'allow' },
          { name: 'wrongly expects anonymous is forbidden', request: { path: '/public/x' }, expect: 'forbidden' },
        ],
      }),
    );
    const r = await cli('policy', 'test', suite);
    expect(r.code).toBe(1);
    expect(r.stdout).toContain('FAIL  ');
    expect(r.stdout).toContain('expected allow, got forbidden (POLICY_DENIED) on /orders/1');
    expect(r.stdout).toContain('no policy line matched');
    expect(r.stdout).toContain('expected forbidden, got allow (ALLOWED) on /public/x');
    expect(r.stdout).toMatch(/policies\/policy\.csv:\d+: p, anonymous, \/public\/\*, GET/);
    expect(r.stdout.trim().split('\n').at(-1)).toBe('1 passed, 2 failed');
  });

  it('writes JUnit XML that an XML parser reads', async () => {
    const suite = await file(
      'junit.yaml',
      stringify({
        config: EXAMPLE_CONFIG,
        cases: [
          { name: 'ok <&> case', request: { path: '/public/x' }, expect: 'allow' },
          { name: 'bad case', request: { path: '/orders/1' }, expect: 'allow' },
        ],
      }),
    );
    const r = await cli('policy', 'test', '--format', 'junit', suite);
    expect(r.code).toBe(1);
    const xml = new XMLParser({ ignoreAttributes: false, attributeNamePrefix: '' }).parse(r.stdout) as {
      testsuites: { tests: string; failures: string; testsuite: { testcase: Array<{ name: string; failure?: { message: string } }> } };
    };
    expect(xml.testsuites.tests).toBe('2');
    expect(xml.testsuites.failures).toBe('1');
    const cases = xml.testsuites.testsuite.testcase;
    expect(cases.map((c) => c.name)).toEqual(['ok <&> case', 'bad case']);
    expect(cases[1]?.failure?.message).toBe('expected allow, got unauthenticated');
  });

  it('writes JSON with every case', async () => {
    const r = await cli('policy', 'test', '--format', 'json', 'policies/tests');
    expect(r.code).toBe(0);
    const report = JSON.parse(r.stdout) as { passed: number; failed: number; cases: Array<{ name: string; got: string; canonicalPath: string }> };
    expect(report.failed).toBe(0);
    expect(report.passed).toBe(report.cases.length);
    expect(report.cases.find((c) => c.name.startsWith('dot segments'))?.canonicalPath).toBe('/orders/42');
  });

  it('reports coverage naming the policy line no case matched, and --coverage-min fails below it', async () => {
    const config = await configWith('cov', RBAC_MODEL, 'p, role:reader, /books/:id, GET\np, role:admin, /books/*, DELETE\n');
    const suite = await file('cov-cases.yaml', stringify({ cases: [{ name: 'reader reads', identity: { subject: 'a', roles: ['reader'] }, request: { path: '/books/1' }, expect: 'allow' }] }));
    const r = await cli('policy', 'test', '--config', config, '--coverage', suite);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain('coverage: 1/2 policy lines matched (50.0%)');
    expect(r.stdout).toMatch(/not matched by any case: .*cov\.csv:2: p, role:admin, \/books\/\*, DELETE/);
    const strict = await cli('policy', 'test', '--config', config, '--coverage-min', '80', suite);
    expect(strict.code).toBe(1);
    expect(strict.stderr).toContain('coverage 50.0% is below --coverage-min 80%');
  });

  it('names a broken YAML test file with its line, exit 2', async () => {
    const broken = await file('broken.yaml', `config: ${EXAMPLE_CONFIG}\ncases:\n  - name: a\n    request: { path: /x\n    expect: allow\n`);
    const r = await cli('policy', 'test', broken);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain(broken);
    expect(r.stderr).toMatch(/YAML: .*\(line \d+\)/);
  });

  it('names a bad case key with its path and line, exit 2', async () => {
    const bad = await file('bad-key.yaml', `config: ${EXAMPLE_CONFIG}\ncases:\n  - name: a\n    request: { path: /x }\n    expect: allowed\n`);
    const r = await cli('policy', 'test', bad);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/cases\[0\]\.expect: .*\(line 5\)/);
  });

  it('exits 2 for bad usage', async () => {
    expect((await cli('policy', 'test', '--format', 'xml', 'policies/tests')).code).toBe(2);
    expect((await cli('policy', 'test', join(dir, 'missing'))).code).toBe(2);
    expect((await cli('policy', 'test')).code).toBe(2);
    const noConfig = await file('no-config.yaml', stringify({ cases: [{ name: 'a', request: { path: '/' }, expect: 'allow' }] }));
    expect((await cli('policy', 'test', noConfig)).code).toBe(2);
  });
});

describe('policy check', () => {
  it('explains an allow: decision, canonical path, request tuple, deciding line; exit 0', async () => {
    const r = await cli('policy', 'check', '--config', EXAMPLE_CONFIG, '--subject', 'alice', '--role', 'reader', 'GET', '/public/../orders/7');
    expect(r.code).toBe(0);
    expect(r.stdout).toContain('decision:  allow (200 ALLOWED)');
    expect(r.stdout).toContain('canonical: /orders/7');
    expect(r.stdout).toContain('request:   [user:alice, /orders/7, GET]');
    expect(r.stdout).toMatch(/policy: {4}policies\/policy\.csv:\d+: p, role:reader, \/orders\/:id, GET/);
  });

  it('explains a deny with no matching line; exit 1', async () => {
    const r = await cli('policy', 'check', '--config', EXAMPLE_CONFIG, '--claims', '{"sub":"carol","roles":["reader"]}', 'DELETE', '/orders/7');
    expect(r.code).toBe(1);
    expect(r.stdout).toContain('decision:  forbidden (403 POLICY_DENIED)');
    expect(r.stdout).toContain('policy:    no policy line matched');
  });

  it('explains anonymous and rejected paths', async () => {
    const anon = await cli('policy', 'check', '--config', EXAMPLE_CONFIG, 'GET', '/orders');
    expect(anon.code).toBe(1);
    expect(anon.stdout).toContain('decision:  unauthenticated (401 CREDENTIALS_MISSING)');
    expect(anon.stdout).toContain('request:   [anonymous, /orders, GET]');
    const rejected = await cli('policy', 'check', '--config', EXAMPLE_CONFIG, 'GET', '/a%2Fb');
    expect(rejected.code).toBe(1);
    expect(rejected.stdout).toContain('decision:  badRequest (400 PATH_ENCODED_SLASH)');
  });

  it('exits 2 for bad usage', async () => {
    expect((await cli('policy', 'check', 'GET', '/x')).code).toBe(2);
    expect((await cli('policy', 'check', '--config', EXAMPLE_CONFIG, '--claims', '[1]', 'GET', '/x')).code).toBe(2);
    expect((await cli('policy', 'check', '--config', EXAMPLE_CONFIG, '--role', 'reader', 'GET', '/x')).code).toBe(2);
  });
});

describe('validate', () => {
  it('accepts the example config, printing the dot-segment warnings; exit 0', async () => {
    const r = await cli('validate', '--config', EXAMPLE_CONFIG);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain('valid (0 errors');
    expect(r.stderr).toMatch(/policies\/policy\.csv:\d+: warning DOT_SEGMENTS: keyMatch2 pattern "\/public\/\*" also matches "\/public\/\.\.\/authz-sidecar-probe"/);
  });

  const REGEX_MODEL = RBAC_MODEL.replace('keyMatch2(r.obj, p.obj)', 'regexMatch(r.obj, p.obj)');
  const findings: Array<[name: string, model: string, policy: string, expected: RegExp]> = [
    ['a rule with the wrong arity', RBAC_MODEL, 'p, role:a, /x\n', /:1: error ARITY: "p" rules have 3 fields in the model, this one has 2/],
    ['a role cycle', RBAC_MODEL, 'p, role:a, /x, GET\ng, role:a, role:b\ng, role:b, role:c\ng, role:c, role:a\n', /error ROLE_CYCLE: role inheritance cycle: role:a -> role:b -> role:c -> role:a/],
    ['a duplicate line', RBAC_MODEL, 'p, role:a, /x, GET\n\np, role:a, /x, GET\n', /:3: error DUPLICATE: duplicate of line 1/],
    ['a regexMatch pattern that backtracks catastrophically', REGEX_MODEL, 'p, role:a, /(a+)+, GET\n', /:1: error UNSAFE_REGEX: regexMatch pattern "\/\(a\+\)\+" can backtrack catastrophically/],
    ['a regexMatch pattern that does not compile', REGEX_MODEL, 'p, role:a, /(x, GET\n', /:1: error INVALID_REGEX/],
  ];
  it.each(findings)('reports %s with its line; exit 2', async (name, model, policy, expected) => {
    const config = await configWith(name.replace(/\W+/g, '-'), model, policy);
    const r = await cli('validate', '--config', config);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(expected);
    expect(r.stdout).toContain('invalid (');
  });

  it('refuses to serve a policy with an unsafe regexMatch pattern (the same check at load)', async () => {
    const config = await configWith('unsafe-serve', REGEX_MODEL, 'p, role:a, /(a+)+, GET\n');
    const r = await cli('serve', '--config', config);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('can backtrack catastrophically');
  });

  it('reports config errors, unreadable files and a model that does not parse; exit 2', async () => {
    const missing = await file('missing-policy.yaml', stringify({ upstream: { url: 'http://127.0.0.1:3000' }, authz: { model: EXAMPLE_MODEL, policy: join(dir, 'nope.csv') } }));
    const r = await cli('validate', '--config', missing);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('authz.policy: cannot read file');
    const badModel = await configWith('bad-model', '[matchers]\nm = \n', 'p, a, b, c\n');
    const m = await cli('validate', '--config', badModel);
    expect(m.code).toBe(2);
    expect(m.stderr).toMatch(/authz\.(model|policy|request): /);
    const arity = await file('arity.yaml', stringify({ upstream: { url: 'http://127.0.0.1:3000' }, authz: { model: EXAMPLE_MODEL, policy: EXAMPLE_POLICY, request: ['subject', 'path'] } }));
    const a = await cli('validate', '--config', arity);
    expect(a.code).toBe(2);
    expect(a.stderr).toContain('authz.request:');
  });
});
