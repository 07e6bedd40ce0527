/**
 * The demo's OpenID Provider for browser sign-in: a real `oidc-provider` (a devDependency: the demo runs from
 * a source checkout after `npm install`) with its development login and consent pages, which accept any
 * password. The login name picks the user. In-memory, keys generated at start, loopback only. Never for
 * production.
 */
import { randomBytes } from 'node:crypto';
import { createServer, type Server } from 'node:http';
import { exportJWK, generateKeyPair } from 'jose';

export interface DemoUser {
  readonly roles: readonly string[];
  readonly email: string;
  readonly name: string;
}

export interface DevProvider {
  readonly issuer: string;
  close(): Promise<void>;
}

export interface DevProviderOptions {
  /** `http://127.0.0.1:PORT`: where it listens and what it puts in `iss`. */
  readonly issuer: string;
  readonly clientId: string;
  readonly clientSecret: string;
  /** The sidecar's callback URL and where sign-out may come back to. */
  readonly redirectUri: string;
  readonly postLogoutRedirectUri: string;
  readonly users: Readonly<Record<string, DemoUser>>;
}

interface ProviderLike {
  callback(): (req: unknown, res: unknown) => Promise<void>;
}

/** Runs `fn` with oidc-provider's "development only" notices filtered out of the console. */
async function quietly<T>(fn: () => Promise<T> | T): Promise<T> {
  const { warn, info } = console;
  const notice = (args: unknown[]): boolean => typeof args[0] === 'string' && /oidc-provider (WARNING|NOTICE)/.test(args[0]);
  console.warn = (...args: unknown[]) => void (notice(args) ? undefined : warn(...args));
  console.info = (...args: unknown[]) => void (notice(args) ? undefined : info(...args));
  try {
    return await fn();
  } finally {
    console.warn = warn;
    console.info = info;
  }
}

export async function startDevProvider(options: DevProviderOptions): Promise<DevProvider> {
  let Provider: new (issuer: string, configuration: object) => ProviderLike;
  try {
    // Named by a variable: neither tsc nor the bundler resolves it, so only the demo ever loads it.
    const moduleName = 'oidc-provider';
    ({ default: Provider } = (await quietly(() => import(moduleName))) as { default: typeof Provider });
  } catch (err) {
    throw new Error('the sign-in demo needs oidc-provider, a devDependency: run `npm install` in the source checkout', { cause: err });
  }
  const url = new URL(options.issuer);
  const { privateKey } = await generateKeyPair('RS256', { extractable: true });
  const jwk = { ...(await exportJWK(privateKey)), kid: randomBytes(8).toString('hex'), alg: 'RS256', use: 'sig' };
  const provider = await quietly(
    () =>
      new Provider(options.issuer, {
        jwks: { keys: [jwk] },
        cookies: { keys: [randomBytes(32).toString('base64url')] },
        clients: [
          {
            client_id: options.clientId,
            client_secret: options.clientSecret,
            grant_types: ['authorization_code', 'refresh_token'],
            response_types: ['code'],
            redirect_uris: [options.redirectUri],
            post_logout_redirect_uris: [options.postLogoutRedirectUri],
          },
        ],
        scopes: ['openid', 'offline_access', 'profile', 'email', 'roles'],
        claims: { openid: ['sub'], email: ['email', 'email_verified'], profile: ['name'], roles: ['roles'] },
        conformIdTokenClaims: false,
        findAccount: (_ctx: unknown, id: string) => {
          const user = options.users[id];
          return {
            accountId: id,
            claims: () => ({
              sub: id,
              ...(user === undefined ? {} : { email: user.email, email_verified: true, name: user.name, roles: [...user.roles] }),
            }),
          };
        },
        pkce: { required: () => true },
        issueRefreshToken: () => true,
        ttl: { AccessToken: 600, IdToken: 600, AuthorizationCode: 60, RefreshToken: 86_400, Grant: 86_400, Session: 86_400, Interaction: 600 },
        features: { devInteractions: { enabled: true }, rpInitiatedLogout: { enabled: true } },
        clientBasedCORS: () => false,
      }),
  );
  const handler = provider.callback();
  const server: Server = createServer((req, res) => void handler(req, res));
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(Number(url.port), url.hostname, resolve);
  });
  return {
    issuer: options.issuer,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
