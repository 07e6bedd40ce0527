/**
 * Fuzzing the config loader (fast-check): random YAML text and random structures with wrong types and
 * huge values. Every outcome is a Config or a ConfigError naming key paths; never another exception.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import { ConfigError, loadConfig, validateConfig } from '../../../src/config/load.js';

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'authz-config-fuzz-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

function onlyConfigErrors(err: unknown): void {
  expect(err).toBeInstanceOf(ConfigError);
  for (const issue of (err as ConfigError).issues) {
    expect(typeof issue.path).toBe('string');
    expect(issue.message.length).toBeGreaterThan(0);
  }
}

const KEYS = ['listen', 'upstream', 'url', 'admin', 'extAuthz', 'authn', 'jwt', 'introspection', 'tokenFrom', 'identity', 'authz', 'headers', 'paths', 'logging', 'issuer', 'audiences', 'jwksUri', 'model', 'policy', 'request', 'timeoutSeconds', '__proto__', 'constructor'];
const leaf = fc.oneof(
  fc.string({ maxLength: 40 }),
  fc.constantFrom('${HOME}', '${UNSET_VAR_XYZ}', '$${x}', 'unix:', 'http://127.0.0.1:1', 'x'.repeat(100_000)),
  fc.integer(),
  fc.double(),
  fc.constantFrom(Number.MAX_SAFE_INTEGER, -1, 1e308, Number.NaN),
  fc.boolean(),
  fc.constant(null),
);
const value = fc.letrec((tie) => ({
  node: fc.oneof({ depthSize: 'small' }, leaf, fc.array(tie('node'), { maxLength: 4 }), fc.dictionary(fc.constantFrom(...KEYS), tie('node'), { maxKeys: 5 })),
})).node;

describe('config loader fuzz', () => {
  it('random structures give a Config or a ConfigError, nothing else', async () => {
    await fc.assert(
      fc.asyncProperty(fc.dictionary(fc.constantFrom(...KEYS), value, { maxKeys: 8 }), async (raw) => {
        try {
          await validateConfig(raw, join(dir, 'fuzz.yaml'), { HOME: '/root' });
        } catch (err) {
          onlyConfigErrors(err);
        }
      }),
      { numRuns: 400 },
    );
  });

  it('random YAML text gives a Config or a ConfigError with lines, nothing else', async () => {
    const file = join(dir, 'fuzz-text.yaml');
    const text = fc.oneof(
      fc.string({ maxLength: 200 }),
      fc.dictionary(fc.constantFrom(...KEYS), value, { maxKeys: 6 }).map((o) => stringify(o)),
      fc.constantFrom('a: &x [*x]', 'a: !!binary xyz', '{', 'a:\n  - b: [', 'a: 1\na: 2', '%YAML 9.9\n---\na: 1', `a: ${'['.repeat(5000)}`),
    );
    await fc.assert(
      fc.asyncProperty(text, async (t) => {
        await writeFile(file, t);
        try {
          await loadConfig(file, {});
        } catch (err) {
          onlyConfigErrors(err);
        }
      }),
      { numRuns: 300 },
    );
  });
});
