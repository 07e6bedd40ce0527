import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { YAMLParseError } from 'yaml';
import { ConfigError, loadConfig } from '../../../src/config/load.js';

let dir: string;
const BASE = `
upstream:
  url: http://127.0.0.1:3000
authz:
  model: ./model.conf
  policy: ./policy.csv
authn:
  jwt:
    - issuer: https://idp.example.com
      audiences: [orders-api]
      jwksFile: ./jwks.json
`;

async function write(name: string, text: string): Promise<string> {
  const file = join(dir, name);
  await writeFile(file, text);
  return file;
}

async function issuesOf(text: string, env: NodeJS.ProcessEnv = {}): Promise<string[]> {
  const file = await write(`c-${Math.random().toString(36).slice(2)}.yaml`, text);
  try {
    await loadConfig(file, env);
  } catch (err) {
    if (err instanceof ConfigError) return err.issues.map((i) => `${i.path}: ${i.message}`);
    throw err;
  }
  return [];
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'authz-config-'));
  await write('model.conf', '[request_definition]\nr = sub, obj, act\n');
  await write('policy.csv', '');
  await write('jwks.json', '{"keys":[]}');
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('loadConfig', () => {
  it('fills every default of DESIGN.md §2 and resolves relative paths against the config folder', async () => {
    const config = await loadConfig(await write('ok.yaml', BASE), {});
    expect(config.listen).toBe('0.0.0.0:8080');
    expect(config.admin.listen).toBe('127.0.0.1:8081');
    expect(config.upstream).toEqual({ url: 'http://127.0.0.1:3000', timeoutSeconds: 30, websockets: true });
    expect(config.authz.model).toBe(join(dir, 'model.conf'));
    expect(config.authz.policy).toBe(join(dir, 'policy.csv'));
    expect(config.authz.request).toEqual(['subject', 'path', 'method']);
    expect(config.authn.jwt[0]).toMatchObject({
      jwksFile: join(dir, 'jwks.json'),
      algorithms: ['RS256', 'PS256', 'ES256', 'EdDSA'],
      clockSkewSeconds: 30,
      maxTokenAgeSeconds: 0,
    });
    expect(config.authn.tokenFrom).toEqual([{ header: 'authorization' }]);
    expect(config.identity).toEqual({
      subjectClaim: 'sub',
      rolesClaims: ['roles', 'groups', 'realm_access.roles'],
      scopesClaim: 'scope',
      subjectPrefix: 'user:',
      rolePrefix: 'role:',
      anonymousSubject: 'anonymous',
    });
    expect(config.headers).toEqual({
      prefix: 'x-auth-',
      subject: 'x-auth-subject',
      issuer: 'x-auth-issuer',
      roles: 'x-auth-roles',
      scopes: 'x-auth-scopes',
      claims: {},
      forwardToken: false,
    });
    expect(config.paths).toEqual({ encodedSlashes: 'reject', semicolons: 'reject' });
    expect(config.logging).toEqual({ level: 'info', decisions: 'denied' });
    expect(Object.isFrozen(config.authn.jwt[0])).toBe(true);
  });

  it('substitutes ${VAR} from the environment and keeps $${ as a literal', async () => {
    const text = BASE.replace('https://idp.example.com', '${IDP}').replace('[orders-api]', () => '["a-$${NOT}"]');
    const config = await loadConfig(await write('env.yaml', text), { IDP: 'https://idp.test/realms/x' });
    expect(config.authn.jwt[0]?.issuer).toBe('https://idp.test/realms/x');
    expect(config.authn.jwt[0]?.audiences).toEqual(['a-${NOT}']);
  });

  const bad: Array<[name: string, text: string, expected: string[], env?: NodeJS.ProcessEnv]> = [
    ['unset variable', BASE.replace('https://idp.example.com', '${MISSING_VAR}'), ['authn.jwt[0].issuer: environment variable MISSING_VAR is not set']],
    ['unknown top-level key', `${BASE}\nlistn: 1.2.3.4:80\n`, ['listn: unknown key']],
    ['unknown nested key', BASE.replace('audiences:', 'audience: [x]\n      audiences:'), ['authn.jwt[0].audience: unknown key']],
    ['missing audiences', BASE.replace('      audiences: [orders-api]\n', ''), ['authn.jwt[0].audiences: required']],
    ['empty audiences', BASE.replace('[orders-api]', '[]'), ['authn.jwt[0].audiences: at least one audience is required']],
    ['alg none', `${BASE}      algorithms: [RS256, none]\n`, ['authn.jwt[0].algorithms[1]: "none" is never allowed']],
    ['HS256 without secretFile', `${BASE}      algorithms: [HS256]\n`, ['authn.jwt[0].algorithms: HS256 needs secretFile (and never mixes with asymmetric algorithms)']],
    ['HS256 mixed with RS256 on a secret', BASE.replace('jwksFile: ./jwks.json', 'secretFile: ./jwks.json\n      algorithms: [HS256, RS256]'), [
      'authn.jwt[0].algorithms: with secretFile only HS256, HS384, HS512 are allowed',
    ]],
    ['no key source', BASE.replace('      jwksFile: ./jwks.json\n', ''), ['authn.jwt[0]: exactly one of discovery: true, jwksUri, jwksFile, secretFile is required']],
    ['two key sources', BASE.replace('jwksFile: ./jwks.json', 'jwksFile: ./jwks.json\n      discovery: true'), [
      'authn.jwt[0]: exactly one of discovery: true, jwksUri, jwksFile, secretFile is required',
    ]],
    ['introspection without endpoint or discovery', `${BASE}  introspection:\n    - issuer: https://idp.example.com\n      clientId: c\n      clientSecretFile: ./policy.csv\n`, [
      'authn.introspection[0]: exactly one of discovery: true, endpoint is required',
    ]],
    ['introspection auth method', `${BASE}  introspection:\n    - issuer: https://idp.example.com\n      endpoint: https://idp.example.com/introspect\n      clientId: c\n      clientSecretFile: ./policy.csv\n      authMethod: private_key_jwt\n`, [
      'authn.introspection[0].authMethod: Invalid option: expected one of "client_secret_basic"|"client_secret_post"',
    ]],
    ['token source of an unknown kind', `${BASE}  tokenFrom:\n    - form: access_token\n`, [
      'authn.tokenFrom[0]: must be one of { header: NAME }, { cookie: NAME }, { query: NAME }',
    ]],
    ['discovery on a plain-http issuer off loopback', BASE.replace('jwksFile: ./jwks.json', 'discovery: true').replace('https://idp.example.com', 'http://idp.example.com'), [
      'authn.jwt[0].issuer: must be an https URL (http only on loopback) (needed for discovery)',
    ]],
    ['plain http jwksUri off loopback', BASE.replace('jwksFile: ./jwks.json', 'jwksUri: http://idp.example.com/certs'), [
      'authn.jwt[0].jwksUri: must be an https URL (http only on loopback)',
    ]],
    ['missing upstream', BASE.replace('upstream:\n  url: http://127.0.0.1:3000\n', ''), ['upstream: required (unless an extAuthz door is configured)']],
    ['upstream with a path', BASE.replace('http://127.0.0.1:3000', 'http://127.0.0.1:3000/app'), ['upstream.url: must be http://host:port or unix:/path/app.sock']],
    ['bad listen', `${BASE}\nlisten: 8080\n`, ['listen: must be host:port or unix:/path.sock']],
    ['bad enum', `${BASE}\npaths:\n  encodedSlashes: allow\n`, ['paths.encodedSlashes: Invalid option: expected one of "reject"|"decode"']],
    ['bad request field', BASE.replace('  policy: ./policy.csv', '  policy: ./policy.csv\n  request: [subject, url]'), [
      'authz.request[1]: must be subject, path, method, host, peer, claim:<dotted.path> or header:<name>',
    ]],
    ['same prefixes', `${BASE}\nidentity:\n  subjectPrefix: "x:"\n  rolePrefix: "x:"\n`, ['identity.rolePrefix: must differ from subjectPrefix (users and roles share one Casbin namespace)']],
    ['unreadable policy', BASE.replace('./policy.csv', './nope.csv'), [`authz.policy: cannot read file ${'DIR'}/nope.csv`]],
    ['duplicate issuer', `${BASE}    - issuer: https://idp.example.com\n      audiences: [b]\n      jwksFile: ./jwks.json\n`, ['authn.jwt[1].issuer: this issuer is configured twice']],
    ['bad header name', `${BASE}\nheaders:\n  subject: "x auth"\n`, ['headers.subject: must be an HTTP header name']],
  ];
  it.each(bad)('rejects %s, naming the key path', async (_name, text, expected, env) => {
    const issues = await issuesOf(text, env);
    expect(issues).toEqual(expected.map((e) => e.replace('DIR', dir)));
  });

  it('accepts a config without upstream when an extAuthz door is configured (no proxy listener)', async () => {
    const text = BASE.replace('upstream:\n  url: http://127.0.0.1:3000\n', '') + '\nextAuthz:\n  grpc: { listen: 127.0.0.1:9292 }\n';
    const config = await loadConfig(await write('doors.yaml', text), {});
    expect(config.upstream).toBeUndefined();
    expect(config.extAuthz).toEqual({ grpc: { listen: '127.0.0.1:9292' } });
  });

  it('refuses a "__proto__" key as unknown instead of letting it set defaults (prototype pollution)', async () => {
    const issues = await issuesOf(`${BASE}\nheaders:\n  __proto__:\n    forwardToken: true\n`);
    expect(issues).toEqual(['headers.__proto__: unknown key']);
  });

  it('lists every problem at once', async () => {
    const issues = await issuesOf(`${BASE.replace('[orders-api]', '[]')}\nbogus: 1\nlogging:\n  level: loud\n`);
    expect(issues).toHaveLength(3);
  });

  it('reports YAML syntax errors with their line', async () => {
    const file = await write('broken.yaml', 'upstream:\n  url: [unclosed\n');
    const err = await loadConfig(file, {}).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ConfigError);
    expect((err as ConfigError).issues[0]?.message).toMatch(/^YAML: /);
    expect((err as ConfigError).issues[0]?.line).toBeGreaterThan(0);
  });

  it('reports a missing config file', async () => {
    const err = await loadConfig(join(dir, 'absent.yaml'), {}).catch((e: unknown) => e);
    expect((err as ConfigError).issues[0]?.message).toBe('cannot read the config file: ENOENT');
  });

  it('gives the line of a bad key in the message', async () => {
    const file = await write('line.yaml', `${BASE}\nbogus: 1\n`);
    const err = (await loadConfig(file, {}).catch((e: unknown) => e)) as ConfigError;
    expect(err.message).toMatch(/bogus: unknown key \(line \d+\)/);
  });
});

describe('ConfigError: code and cause', () => {
  async function configError(file: string): Promise<ConfigError> {
    const err = await loadConfig(file, {}).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ConfigError);
    expect((err as ConfigError).code).toBe('CONFIG_INVALID');
    return err as ConfigError;
  }

  it('a broken YAML file keeps the YAML parse error as cause', async () => {
    const err = await configError(await write('broken-cause.yaml', 'upstream:\n  url: [unclosed\n'));
    expect(err.cause).toBeInstanceOf(YAMLParseError);
    expect(err.issues[0]?.message).toBe(`YAML: ${(err.cause as Error).message.split('\n')[0]}`);
  });

  it('a YAML file with several syntax errors keeps them all (AggregateError)', async () => {
    const err = await configError(await write('broken-twice.yaml', 'a: 1\na: 2\nb: [x\n'));
    expect(err.issues.length).toBeGreaterThan(1);
    expect(err.cause).toBeInstanceOf(AggregateError);
    const all = (err.cause as AggregateError).errors;
    expect(all).toHaveLength(err.issues.length);
    expect(all.every((e) => e instanceof YAMLParseError)).toBe(true);
  });

  it('a missing config file keeps the fs error as cause', async () => {
    const err = await configError(join(dir, 'absent-cause.yaml'));
    expect((err.cause as NodeJS.ErrnoException).code).toBe('ENOENT');
  });

  it('an unreadable file the config names keeps the fs error as cause', async () => {
    const err = await configError(await write('no-policy.yaml', BASE.replace('./policy.csv', './no-such-policy.csv')));
    expect(err.issues.map((i) => i.path)).toEqual(['authz.policy']);
    expect((err.cause as NodeJS.ErrnoException).code).toBe('ENOENT');
  });

  it('a schema failure has no cause: no library error is behind it', async () => {
    const err = await configError(await write('schema.yaml', `${BASE}\nbogus: 1\n`));
    expect(err.cause).toBeUndefined();
  });
});
