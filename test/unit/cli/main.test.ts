/**
 * The CLI's argument handling, in process: exit codes (0 success, 2 bad usage or bad config) and where
 * the usage text goes. No command here reaches a server: every case stops at the arguments or the config.
 */
import { readFileSync } from 'node:fs';
import { afterEach, beforeEach, describe, expect, it, vi, type MockInstance } from 'vitest';
import { main, USAGE } from '../../../src/cli/main.js';

const VERSION = (JSON.parse(readFileSync(new URL('../../../package.json', import.meta.url), 'utf8')) as { version: string }).version;

let stdout: string[];
let stderr: string[];
let spies: MockInstance[];

beforeEach(() => {
  stdout = [];
  stderr = [];
  spies = [
    vi.spyOn(process.stdout, 'write').mockImplementation((chunk: string | Uint8Array) => {
      stdout.push(String(chunk));
      return true;
    }),
    vi.spyOn(console, 'log').mockImplementation((...args: unknown[]) => void stdout.push(`${args.map(String).join(' ')}\n`)),
    vi.spyOn(console, 'error').mockImplementation((...args: unknown[]) => void stderr.push(`${args.map(String).join(' ')}\n`)),
    vi.spyOn(console, 'warn').mockImplementation((...args: unknown[]) => void stderr.push(`${args.map(String).join(' ')}\n`)),
  ];
  // `serve` and `validate` fall back to this variable; the cases below are about it being absent.
  vi.stubEnv('AUTHZ_SIDECAR_CONFIG', '');
});

afterEach(() => {
  for (const spy of spies) spy.mockRestore();
  vi.unstubAllEnvs();
});

const out = (): string => stdout.join('');
const err = (): string => stderr.join('');

describe('main(): usage', () => {
  it.each(['--help', '-h', 'help'])('%s prints the usage on stdout and exits 0', async (flag) => {
    expect(await main([flag])).toBe(0);
    expect(out()).toBe(USAGE);
    expect(err()).toBe('');
  });

  it('no command prints the usage and exits 2', async () => {
    expect(await main([])).toBe(2);
    expect(out()).toBe(USAGE);
  });

  it.each(['--version', 'version'])('%s prints the package version and exits 0', async (flag) => {
    expect(await main([flag])).toBe(0);
    expect(out()).toBe(`${VERSION}\n`);
  });

  it('an unknown command exits 2 with its name and the usage on stderr', async () => {
    expect(await main(['frobnicate'])).toBe(2);
    expect(err()).toContain('unknown command "frobnicate"');
    expect(err()).toContain(USAGE);
    expect(out()).toBe('');
  });
});

describe('main(): bad arguments exit 2 with the usage on stderr', () => {
  it.each<[string, string[], string | RegExp]>([
    ['serve without --config', ['serve'], 'serve needs --config'],
    ['serve with an unknown flag', ['serve', '--config', 'x.yaml', '--bogus'], /unknown option '--bogus'/i],
    ['serve with a stray argument', ['serve', 'extra'], /unexpected argument 'extra'/i],
    ['validate without --config', ['validate'], 'validate needs --config'],
    ['validate with an unknown flag', ['validate', '--bogus'], /unknown option '--bogus'/i],
    ['demo with an unknown flag', ['demo', '--bogus'], /unknown option '--bogus'/i],
    ['policy without a subcommand', ['policy'], 'unknown policy command ""'],
    ['policy with an unknown subcommand', ['policy', 'lint'], 'unknown policy command "lint" (test or check)'],
    ['policy test without files', ['policy', 'test'], 'policy test needs test files or folders'],
    ['policy test with an unknown format', ['policy', 'test', '--format', 'xml', 'cases.yaml'], '--format must be text, json or junit'],
    ['policy check without --config', ['policy', 'check', 'GET', '/x'], 'policy check needs --config'],
    ['policy check with an unknown flag', ['policy', 'check', '--bogus'], /unknown option '--bogus'/i],
  ])('%s', async (_name, argv, message) => {
    expect(await main(argv)).toBe(2);
    if (typeof message === 'string') expect(err()).toContain(message);
    else expect(err()).toMatch(message);
    expect(err()).toContain(USAGE);
  });
});

describe('main(): bad config exits 2 without starting anything', () => {
  it.each([['serve'], ['validate']])('%s --config with a file that does not exist', async (command) => {
    expect(await main([command, '--config', '/nonexistent/authz-sidecar.yaml'])).toBe(2);
    expect(err()).toContain('/nonexistent/authz-sidecar.yaml');
    expect(err()).not.toContain(USAGE);
  });

  it('serve takes AUTHZ_SIDECAR_CONFIG when --config is absent', async () => {
    vi.stubEnv('AUTHZ_SIDECAR_CONFIG', '/nonexistent/from-env.yaml');
    expect(await main(['serve'])).toBe(2);
    expect(err()).toContain('/nonexistent/from-env.yaml');
  });
});
