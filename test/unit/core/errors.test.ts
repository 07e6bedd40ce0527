/** One error base class with a stable code; every error of ours keeps the library error behind it as `cause`. */
import { describe, expect, it } from 'vitest';
import { KeysUnavailableError } from '../../../src/authn/jwks-source.js';
import { PolicyLoadError } from '../../../src/authz/casbin-authorizer.js';
import { UsageError } from '../../../src/cli/usage-error.js';
import { ConfigError } from '../../../src/config/load.js';
import { AuthzSidecarError, ERROR_CODES, REASONS, SidecarError } from '../../../src/core/errors.js';

const CAUSE = new Error('the library error');

const cases: Array<[name: string, build: (options?: { cause?: unknown }) => SidecarError<string>, code: string, message: string]> = [
  [
    'ConfigError',
    (o) => new ConfigError('/etc/c.yaml', [{ path: 'authz.model', message: 'required', line: 3 }], o),
    'CONFIG_INVALID',
    'invalid config /etc/c.yaml:\n  authz.model: required (line 3)',
  ],
  ['PolicyLoadError', (o) => new PolicyLoadError('policy', 'cannot read p.csv', o), 'POLICY_INVALID', 'cannot read p.csv'],
  ['KeysUnavailableError', (o) => new KeysUnavailableError('no keys could be fetched', o), 'KEYS_UNAVAILABLE', 'no keys could be fetched'],
  ['UsageError', (o) => new UsageError('policy check needs --config FILE', o), 'USAGE', 'policy check needs --config FILE'],
  ['AuthzSidecarError', (o) => new AuthzSidecarError('PATH_BACKSLASH', 'the path contains a backslash', o), 'PATH_BACKSLASH', 'PATH_BACKSLASH: the path contains a backslash'],
];

describe('SidecarError and its subclasses', () => {
  it.each(cases)('%s has its stable code, name, message and is a SidecarError', (name, build, code, message) => {
    const err = build();
    expect(err).toBeInstanceOf(SidecarError);
    expect(err).toBeInstanceOf(Error);
    expect(err.code).toBe(code);
    expect(err.name).toBe(name);
    expect(err.message).toBe(message);
    expect(err.stack).toContain(name);
  });

  it.each(cases)('%s keeps its cause, and has none when not given one', (_name, build) => {
    expect(build({ cause: CAUSE }).cause).toBe(CAUSE);
    const without = build();
    expect(without.cause).toBeUndefined();
    expect('cause' in without).toBe(false);
  });

  it('every code is in a catalogue: ERROR_CODES for load and command errors, REASONS for refusals', () => {
    for (const [, build, code] of cases) {
      expect(code in ERROR_CODES || code in REASONS, code).toBe(true);
      expect(build().code).toBe(code);
    }
    for (const [code, description] of Object.entries(ERROR_CODES)) {
      expect(code).toMatch(/^[A-Z][A-Z_]*[A-Z]$/);
      expect(description).not.toBe('');
    }
  });

  it('a key error carries the same code as the refusal it becomes (503 KEYS_UNAVAILABLE)', () => {
    expect(new KeysUnavailableError('x').code).toBe('KEYS_UNAVAILABLE');
    expect(REASONS.KEYS_UNAVAILABLE.status).toBe(503);
  });

  it('keeps the existing fields of the subclasses', () => {
    const config = new ConfigError('c.yaml', [{ path: '', message: 'YAML: bad' }]);
    expect(config.file).toBe('c.yaml');
    expect(config.issues).toHaveLength(1);
    const policy = new PolicyLoadError('model', 'arity', { configKey: 'authz.request' });
    expect(policy.file).toBe('model');
    expect(policy.configKey).toBe('authz.request');
    expect(new PolicyLoadError('policy', 'x').configKey).toBe('authz.policy');
    const refusal = new AuthzSidecarError('BAD_REQUEST', 'no');
    expect(refusal.detail).toBe('no');
    expect(refusal.status).toBe(400);
  });
});
