/**
 * A sign-in test environment on loopback: a real OpenID Provider (oidc-provider with its login and consent
 * pages), a real recording upstream and the real sidecar (in-process, the real config loader) with `signIn`
 * configured against the provider, plus scripted browsers. The sidecar's port is chosen before it starts,
 * since the callback URL registered at the provider names it.
 */
import { randomBytes } from 'node:crypto';
import { mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ScriptedBrowser, signInAtProvider, type BrowserPage } from './scripted-browser.js';
import { startTestSidecar, waitReady, type TestSidecar } from './sidecar.js';
import { startSignInProvider, type SignInProvider, type SignInProviderOptions } from './signin-provider.js';
import { freePort, startRecordingUpstream, type RecordingUpstream } from './upstream.js';

export const USERS: NonNullable<SignInProviderOptions['users']> = {
  alice: { sub: 'user-alice', email: 'alice@example.test', name: 'Alice Example', roles: ['admin'], groups: ['staff'] },
  rita: { sub: 'user-rita', email: 'rita@example.test', roles: ['reader'] },
  nobody: { sub: 'user-nobody' },
};

export const COOKIE = 'authz';

export interface SignInEnv {
  readonly op: SignInProvider;
  readonly upstream: RecordingUpstream;
  readonly sidecar: TestSidecar;
  /** http://127.0.0.1:PORT of the proxy door (also the callback's origin). */
  readonly origin: string;
  readonly clientId: string;
  /** The cookie secret files, first seals. */
  readonly secretFiles: string[];
  browser(): ScriptedBrowser;
  /** Opens `path` in `browser`, signs in at the provider as `login`, and returns the page it ends on. */
  signIn(browser: ScriptedBrowser, path: string, login?: string): Promise<BrowserPage>;
  close(): Promise<void>;
}

export interface SignInEnvOptions {
  readonly provider?: Omit<SignInProviderOptions, 'clients'>;
  /** Merged over the `signIn` section. */
  readonly signIn?: Record<string, unknown>;
  /** Merged over the whole config. */
  readonly config?: Record<string, unknown>;
  /** The sidecar's port (a restart on the same port). */
  readonly port?: number;
  /** Existing secret files (key rotation tests). */
  readonly secretFiles?: string[];
  readonly publicClient?: boolean;
}

export async function startSignInEnv(options: SignInEnvOptions = {}): Promise<SignInEnv> {
  const port = options.port ?? (await freePort());
  const origin = `http://127.0.0.1:${port}`;
  const clientId = 'orders-web';
  const clientSecret = `secret-${randomBytes(8).toString('hex')}`;
  const op = await startSignInProvider({
    users: USERS,
    ...options.provider,
    clients: [
      {
        clientId,
        ...(options.publicClient === true ? {} : { clientSecret }),
        redirectUris: [`${origin}/.authz/callback`],
        postLogoutRedirectUris: [`${origin}/`, `${origin}/bye`],
        backchannelLogoutUri: `${origin}/.authz/backchannel-logout`,
      },
    ],
  });
  const upstream = await startRecordingUpstream();
  const browsers: ScriptedBrowser[] = [];
  let sidecar: TestSidecar | undefined;
  try {
    const dir = await mkdtemp(join(tmpdir(), 'authz-signin-'));
    const secretFiles = options.secretFiles ?? [join(dir, 'cookie-secret')];
    if (options.secretFiles === undefined) await writeFile(secretFiles[0] as string, randomBytes(48).toString('base64'));
    const clientSecretFile = join(dir, 'client-secret');
    await writeFile(clientSecretFile, `${clientSecret}\n`);
    const { config: extra = {}, signIn: signInExtra = {} } = options;
    sidecar = await startTestSidecar({
      listen: `127.0.0.1:${port}`,
      upstream: { url: upstream.url },
      headers: { claims: { 'x-auth-email': 'email' } },
      ...extra,
      signIn: {
        callbackUrl: `${origin}/.authz/callback`,
        providers: [
          {
            name: 'corp',
            issuer: op.issuer,
            clientId,
            ...(options.publicClient === true ? {} : { clientSecretFile }),
            scopes: ['openid', 'profile', 'email', 'roles'],
          },
        ],
        cookie: { name: COOKIE, secretFiles, secure: false },
        ...signInExtra,
      },
    });
    await waitReady(sidecar.adminUrl);
    const running = sidecar;
    return {
      op,
      upstream,
      sidecar: running,
      origin,
      clientId,
      secretFiles,
      browser() {
        const b = new ScriptedBrowser();
        browsers.push(b);
        return b;
      },
      async signIn(browser, path, login = 'alice') {
        const first = await browser.get(`${origin}${path}`);
        const { page } = await signInAtProvider(browser, first, { login });
        return page;
      },
      async close() {
        await Promise.all(browsers.map((b) => b.close()));
        await running.close();
        await upstream.close();
        await op.close();
      },
    };
  } catch (err) {
    await sidecar?.close();
    await upstream.close();
    await op.close();
    throw err;
  }
}
