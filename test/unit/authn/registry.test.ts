/**
 * The authenticator registry: config to authenticators. Every file an authn entry names is read here, and a
 * problem with one is an issue naming the key that points to it (never another key's message), keeping the
 * fs error as its cause.
 */
import { generateKeyPairSync } from 'node:crypto';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { prepareAuthenticators } from '../../../src/authn/registry.js';
import type { ConfigIssue } from '../../../src/config/load.js';
import { configSchemaChecked, type Config } from '../../../src/config/schema.js';

let dir: string;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'authz-registry-'));
  const { publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  await writeFile(join(dir, 'jwks.json'), JSON.stringify({ keys: [{ ...publicKey.export({ format: 'jwk' }), kid: 'k1' }] }));
  await writeFile(join(dir, 'not-json'), 'nope');
  await writeFile(join(dir, 'secret'), 'x'.repeat(40));
  await writeFile(join(dir, 'short'), 'too short\n');
  await writeFile(join(dir, 'empty'), '\n');
  // A folder passes a readability check but cannot be read as a file (EISDIR).
  await mkdir(join(dir, 'a-folder'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

function config(authn: Record<string, unknown>): Config {
  return configSchemaChecked.parse({ upstream: { url: 'http://127.0.0.1:3000' }, authz: { model: 'm', policy: 'p' }, authn });
}

async function issuesOf(authn: Record<string, unknown>): Promise<{ issues: ConfigIssue[]; built: number }> {
  const issues: ConfigIssue[] = [];
  const builders = await prepareAuthenticators(config(authn), issues);
  return { issues, built: builders.length };
}

const jwt = (keys: Record<string, unknown>): Record<string, unknown> => ({ jwt: [{ issuer: 'https://idp.example.com', audiences: ['api'], ...keys }] });
const introspection = (file: string): Record<string, unknown> => ({
  introspection: [{ issuer: 'https://idp.example.com', endpoint: 'https://idp.example.com/introspect', clientId: 'c', clientSecretFile: file }],
});

describe('prepareAuthenticators', () => {
  it('builds one authenticator per configured section and reports nothing for good files', async () => {
    const { issues, built } = await issuesOf({ ...jwt({ jwksFile: join(dir, 'jwks.json') }), ...introspection(join(dir, 'secret')) });
    expect(issues).toEqual([]);
    expect(built).toBe(2);
  });

  it.each([
    ['an unreadable jwksFile', () => jwt({ jwksFile: join(dir, 'a-folder') }), 'authn.jwt[0].jwksFile', /cannot read .*EISDIR/],
    ['a jwksFile that is not a JWKS', () => jwt({ jwksFile: join(dir, 'not-json') }), 'authn.jwt[0].jwksFile', /invalid JWKS file/],
    ['an unreadable secretFile', () => jwt({ secretFile: join(dir, 'a-folder') }), 'authn.jwt[0].secretFile', /cannot read .*EISDIR/],
    ['a short secret', () => jwt({ secretFile: join(dir, 'short') }), 'authn.jwt[0].secretFile', /at least 32 bytes/],
    ['an unreadable clientSecretFile', () => introspection(join(dir, 'a-folder')), 'authn.introspection[0].clientSecretFile', /cannot read .*EISDIR/],
    ['an empty clientSecretFile', () => introspection(join(dir, 'empty')), 'authn.introspection[0].clientSecretFile', /empty/],
  ] as const)('%s is an issue naming its own key', async (_name, authn, key, message) => {
    const { issues, built } = await issuesOf(authn());
    expect(issues).toHaveLength(1);
    expect(issues[0]?.path).toBe(key);
    expect(issues[0]?.message).toMatch(message);
    expect(built).toBe(0);
  });

  it('keeps the fs error as the cause of an unreadable file', async () => {
    const { issues } = await issuesOf(jwt({ secretFile: join(dir, 'a-folder') }));
    expect((issues[0]?.cause as NodeJS.ErrnoException | undefined)?.code).toBe('EISDIR');
  });
});
