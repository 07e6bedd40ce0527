/** The `signIn` section: defaults, every refusal with its key path, and the files `prepareSignIn` checks. */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import { ConfigError, loadConfig, type ConfigIssue } from '../../../src/config/load.js';
import { prepareSignIn } from '../../../src/signin/setup.js';

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'authz-signin-config-'));
  await writeFile(join(dir, 'model.conf'), '[request_definition]\nr = sub, obj, act\n');
  await writeFile(join(dir, 'policy.csv'), '');
  await writeFile(join(dir, 'cookie-secret'), `${'x'.repeat(40)}\n`);
  await writeFile(join(dir, 'short-secret'), `${'x'.repeat(31)}\n`);
  await writeFile(join(dir, 'client-secret'), 'client secret\n');
  await writeFile(join(dir, 'empty'), '\n');
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

const SIGN_IN = {
  callbackUrl: 'https://orders.example.com/.authz/callback',
  providers: [{ name: 'corp', issuer: 'https://idp.example.com/realms/demo', clientId: 'orders-web', clientSecretFile: './client-secret' }],
  cookie: { secretFiles: ['./cookie-secret'] },
};

/** Loads a config with `signIn` (merged over a valid one); the issues, or the loaded config. */
async function load(signIn: Record<string, unknown>, extra: Record<string, unknown> = {}) {
  const file = join(dir, `c-${Math.random().toString(36).slice(2)}.yaml`);
  await writeFile(file, stringify({ upstream: { url: 'http://127.0.0.1:3000' }, authz: { model: './model.conf', policy: './policy.csv' }, ...extra, signIn: { ...SIGN_IN, ...signIn } }));
  try {
    return { config: await loadConfig(file), issues: [] as string[] };
  } catch (err) {
    if (err instanceof ConfigError) return { config: undefined, issues: err.issues.map((i) => `${i.path}: ${i.message}`) };
    throw err;
  }
}

describe('signIn config', () => {
  it('fills the defaults of DESIGN.md §7 and resolves the secret files', async () => {
    const { config, issues } = await load({});
    expect(issues).toEqual([]);
    expect(config?.signIn).toMatchObject({
      prefix: '/.authz',
      cookie: { name: '__Host-authz', secure: true, sameSite: 'lax', domain: '', secretFiles: [join(dir, 'cookie-secret')] },
      session: { store: 'cookie', maxAgeSeconds: 28_800, refreshBeforeSeconds: 60 },
      unauthenticated: 'auto',
      allowedRedirectHosts: [],
      postLogoutRedirect: '/',
    });
    expect(config?.signIn?.providers[0]).toMatchObject({ scopes: ['openid', 'profile', 'email'], userinfo: false, clientSecretFile: join(dir, 'client-secret') });
  });

  it('always sends openid, once', async () => {
    const { config } = await load({ providers: [{ ...SIGN_IN.providers[0], scopes: ['email', 'openid', 'groups'] }] });
    expect(config?.signIn?.providers[0]?.scopes).toEqual(['openid', 'email', 'groups']);
  });

  it.each([
    [{ callbackUrl: 'orders.example.com/cb' }, 'signIn.callbackUrl: must be an absolute URL'],
    [{ callbackUrl: 'http://orders.example.com/.authz/callback' }, 'signIn.callbackUrl: must be an https URL (http only on loopback)'],
    [{ callbackUrl: 'https://orders.example.com/auth/callback' }, 'signIn.callbackUrl: must be the origin followed by /.authz/callback'],
    [{ callbackUrl: 'https://orders.example.com/.authz/callback?x=1' }, 'signIn.callbackUrl: must be the origin followed by /.authz/callback'],
    [{ prefix: '/' }, 'signIn.prefix: must be a path like /.authz'],
    [{ prefix: '/a/../b' }, 'signIn.prefix: must not contain . or .. segments'],
    [{ providers: [] }, 'signIn.providers: at least one provider is required'],
    [{ providers: [{ ...SIGN_IN.providers[0], name: 'Corp IdP' }] }, 'signIn.providers[0].name: must be 1-32 characters'],
    [{ providers: [SIGN_IN.providers[0], SIGN_IN.providers[0]] }, 'signIn.providers[1].name: the provider name corp is used twice'],
    [{ providers: [{ ...SIGN_IN.providers[0], issuer: 'http://idp.example.com' }] }, 'signIn.providers[0].issuer: must be an https URL (http only on loopback)'],
    [{ providers: [{ ...SIGN_IN.providers[0], unknown: 1 }] }, 'signIn.providers[0]'],
    [{ cookie: { secretFiles: [] } }, 'signIn.cookie.secretFiles: at least one secret file is required'],
    [{ cookie: { secretFiles: ['./cookie-secret'], sameSite: 'none' } }, 'signIn.cookie.sameSite: must be lax or strict'],
    [{ cookie: { secretFiles: ['./cookie-secret'], secure: false } }, 'signIn.cookie.secure: may be false only when callbackUrl is http on a loopback host'],
    [{ cookie: { secretFiles: ['./cookie-secret'], domain: 'example.com' } }, 'signIn.cookie.name: a __Host- cookie needs secure: true and no domain'],
    [{ cookie: { secretFiles: ['./cookie-secret'], name: 'a.b' } }, 'signIn.cookie.name: must be a cookie name'],
    [{ callbackUrl: 'http://127.0.0.1:8080/.authz/callback', cookie: { secretFiles: ['./cookie-secret'], name: 'authz' } }, 'signIn.cookie.secure: must be false when callbackUrl is http'],
    [{ cookie: { secretFiles: ['./missing'] } }, 'signIn.cookie.secretFiles[0]: cannot read file'],
    [{ session: { store: 'redis' } }, 'signIn.session.redis: required with store: redis'],
    [{ session: { store: 'cookie', redis: { url: 'redis://127.0.0.1:6379' } } }, 'signIn.session.redis: only with store: redis'],
    [{ session: { store: 'redis', redis: { url: 'http://127.0.0.1:6379' } } }, 'signIn.session.redis.url: must be a redis:// or rediss:// URL'],
    [{ session: { store: 'redis', redis: { url: 'redis://127.0.0.1:6379', passwordFile: './missing' } } }, 'signIn.session.redis.passwordFile: cannot read file'],
    [{ session: { maxAgeSeconds: 10 } }, 'signIn.session.maxAgeSeconds'],
    [{ unauthenticated: 'always' }, 'signIn.unauthenticated'],
    [{ allowedRedirectHosts: ['https://evil.com'] }, 'signIn.allowedRedirectHosts[0]: must be a host'],
    [{ allowedRedirectHosts: ['app.example.com:443'] }, 'signIn.allowedRedirectHosts[0]: must not name the default port'],
    [{ allowedRedirectHosts: ['.example.com:8443'] }, 'signIn.allowedRedirectHosts[0]: must be a host'],
    [{ postLogoutRedirect: '//evil.com' }, 'signIn.postLogoutRedirect: must be a path or an absolute URL on an allowed host'],
    [{ postLogoutRedirect: 'https://evil.com/' }, 'signIn.postLogoutRedirect: must be a path or an absolute URL on an allowed host'],
  ])('refuses %j naming the key', async (signIn, expected) => {
    const { issues } = await load(signIn);
    expect(issues.some((i) => i.startsWith(expected))).toBe(true);
  });

  it('takes an absolute post-logout URL on an allowed host', async () => {
    const { issues } = await load({ postLogoutRedirect: 'https://www.example.com/bye', allowedRedirectHosts: ['.example.com'] });
    expect(issues).toEqual([]);
  });
});

describe('prepareSignIn (validate and serve)', () => {
  it("refuses the demo's public cookie secret unless the callback is on loopback", async () => {
    const demo = join(import.meta.dirname, '../../../policies/demo/cookie-secret');
    const reachable = await prepared({ cookie: { secretFiles: [demo] } });
    expect(reachable.map((i) => i.path)).toEqual(['signIn.cookie.secretFiles[0]']);
    expect(reachable[0]?.message).toMatch(/demo's public cookie secret/);
    expect(await prepared({ callbackUrl: 'http://127.0.0.1:8080/.authz/callback', cookie: { name: 'authz', secure: false, secretFiles: [demo] } })).toEqual([]);
  });

  async function prepared(signIn: Record<string, unknown>, extra: Record<string, unknown> = {}): Promise<ConfigIssue[]> {
    const { config, issues } = await load(signIn, extra);
    expect(issues).toEqual([]);
    const found: ConfigIssue[] = [];
    await prepareSignIn(config as NonNullable<typeof config>, found, { check: true });
    return found;
  }

  it('accepts a secret of 32 bytes or more, a trailing newline not counted', async () => {
    expect(await prepared({})).toEqual([]);
  });

  it('names a short cookie secret, an empty client secret and a cookie name shared with a token cookie', async () => {
    const issues = await prepared(
      { cookie: { secretFiles: ['./cookie-secret', './short-secret'] }, providers: [{ ...SIGN_IN.providers[0], clientSecretFile: './empty' }] },
      { authn: { tokenFrom: [{ cookie: '__Host-authz' }] } },
    );
    expect(issues.map((i) => i.path)).toEqual(['signIn.cookie.secretFiles[1]', 'signIn.providers[0].clientSecretFile', 'signIn.cookie.name']);
    expect(issues[0]?.message).toMatch(/at least 32 bytes, .* has 31/);
  });
});
