/**
 * Everything the soak runs, all real and all on loopback: an OpenID Provider for API tokens (oidc-provider:
 * JWKS, client credentials, RFC 7662 introspection) and one for browser sign-in (its login pages), a
 * redis-server, the app as a process of its own, and two sidecar replicas (bin/authz-sidecar.js: `npm run
 * build` first) with all four doors, sharing the Redis session store, a policy folder laid out as a mounted
 * ConfigMap, and the same secrets. Ports are fixed at start, so a restarted replica or app comes back where
 * it was.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { ROOT } from '../../test/support/cli.js';
import { startTestProvider, type TestProvider } from '../../test/support/oidc-provider.js';
import { startRedis, type TestRedis } from '../../test/support/redis.js';
import { startServe, writeConfig, type ServeProcess } from '../../test/support/serve.js';
import { USERS } from '../../test/support/signin-env.js';
import { startSignInProvider, type SignInProvider } from '../../test/support/signin-provider.js';
import type { Timeline } from './oracle.js';
import { ConfigMapDir, MODEL, POLICY_VERSIONS } from './policy.js';

export const AUDIENCE = 'soak-api';
export const OPAQUE_AUDIENCE = 'urn:soak-opaque';
export const PREFIX = '/.authz';
export const COOKIE = 'authz';
/** Introspection answers are remembered this long: short, so the introspection endpoint keeps being asked. */
export const INTROSPECTION_CACHE_SECONDS = 10;
/** The sign-in provider's access and ID token lifetime; sessions refresh REFRESH_BEFORE_SECONDS before it ends. */
export const SESSION_TOKEN_SECONDS = 75;
export const REFRESH_BEFORE_SECONDS = 60;
export const M2M_CLIENTS = [
  { clientId: 'm2m-reader', clientSecret: randomBytes(16).toString('hex'), roles: ['reader'] },
  { clientId: 'm2m-writer', clientSecret: randomBytes(16).toString('hex'), roles: ['writer'] },
];

export interface ReplicaPorts {
  readonly proxy: number;
  readonly admin: number;
  readonly http: number;
  readonly grpc: number;
  readonly forward: number;
}

export interface Replica {
  readonly name: string;
  readonly ports: ReplicaPorts;
  process: ServeProcess;
  /** false while it drains, restarts and until it is ready again: the load balancer sends it nothing */
  inRotation: boolean;
  /** incarnations so far (1 = the first start) */
  starts: number;
}

export interface World {
  readonly api: TestProvider;
  readonly op: SignInProvider;
  readonly redis: TestRedis;
  readonly replicas: readonly Replica[];
  readonly policy: ConfigMapDir;
  readonly appPort: number;
  readonly callbackOrigin: string;
  /** the key tokens are signed with at first; a second key is published too, for the first rotation */
  readonly initialKid: string;
  /** pid of the app process (changes when it is restarted) */
  appPid(): number | undefined;
  killApp(): Promise<void>;
  startApp(): Promise<void>;
  restartReplica(replica: Replica): Promise<{ exitCode: number | null }>;
  /** after close(): each replica's exit code after its final SIGTERM, or why it did not stop */
  finalExits(): ReadonlyMap<string, number | null | string>;
  close(): Promise<void>;
}

export interface WorldOptions {
  readonly dir: string;
  readonly timeline: Timeline;
  /** every stdout line of every replica, JSON-parsed (pino) */
  readonly onLog: (replica: Replica, line: Record<string, unknown>) => void;
}

/**
 * A free loopback port below the kernel's ephemeral range (32768-60999 by default): a replica or the app that
 * restarts comes back on its port, which an outgoing connection could otherwise have taken meanwhile.
 */
async function stablePort(): Promise<number> {
  for (let attempt = 0; attempt < 200; attempt++) {
    const port = 20_000 + Math.floor(Math.random() * 12_000);
    const server = createServer();
    const ok = await new Promise<boolean>((resolve) => {
      server.once('error', () => resolve(false));
      server.listen(port, '127.0.0.1', () => resolve(true));
    });
    if (ok) {
      await new Promise<void>((resolve) => server.close(() => resolve()));
      if (!taken.has(port)) {
        taken.add(port);
        return port;
      }
    }
  }
  throw new Error('no free loopback port in 20000-31999');
}
const taken = new Set<number>();

async function ports(): Promise<ReplicaPorts> {
  return { proxy: await stablePort(), admin: await stablePort(), http: await stablePort(), grpc: await stablePort(), forward: await stablePort() };
}

export async function startWorld(options: WorldOptions): Promise<World> {
  const { dir, timeline } = options;
  const cleanups: Array<() => Promise<unknown>> = [];
  const finalExits = new Map<string, number | null | string>();
  const close = async (): Promise<void> => {
    for (const c of cleanups.reverse()) await c().catch(() => undefined);
  };
  try {
    const names = ['A', 'B'];
    const replicaPorts = new Map<string, ReplicaPorts>();
    for (const n of names) replicaPorts.set(n, await ports());
    const callbackOrigin = `http://127.0.0.1:${replicaPorts.get('A')?.proxy ?? 0}`;

    const introspector = { clientId: 'soak-sidecar', clientSecret: randomBytes(16).toString('hex'), authMethod: 'client_secret_basic' as const };
    const api = await startTestProvider({
      clients: M2M_CLIENTS,
      opaqueAudiences: [OPAQUE_AUDIENCE],
      introspectionClients: [introspector],
      accessTokenTtlSeconds: 900,
      onRequest: (r) => {
        const replica = new URLSearchParams(r.query).get('replica');
        if (r.path.endsWith('/jwks') && replica !== null) timeline.jwksFetched(replica, r.at);
      },
    });
    cleanups.push(() => api.close());
    const initialKid = api.currentKid;
    // The first rotation's new key is published before the replicas start (see rotations in run.ts).
    await api.rotateKeys();
    for (const kid of api.publishedKids) timeline.keyPublished(kid);

    const op = await startSignInProvider({
      users: USERS,
      // Sessions refresh every minute or so, across both replicas (one refresh per session: the Redis lock),
      // while the IdP and Redis fail; oidc-provider's refresh tokens are single use for this public client.
      accessTokenTtlSeconds: SESSION_TOKEN_SECONDS,
      clients: [{ clientId: 'orders-web', redirectUris: [`${callbackOrigin}${PREFIX}/callback`], postLogoutRedirectUris: [`${callbackOrigin}/`] }],
    });
    cleanups.push(() => op.close());

    const redis = await startRedis();
    cleanups.push(() => redis.close());

    const files = {
      model: join(dir, 'model.conf'),
      introspectionSecret: join(dir, 'introspection-secret'),
      cookieSecret: join(dir, 'cookie-secret'),
    };
    await writeFile(files.model, MODEL);
    await writeFile(files.introspectionSecret, introspector.clientSecret);
    await writeFile(files.cookieSecret, randomBytes(48).toString('base64'));
    const policy = new ConfigMapDir(join(dir, 'policy'));
    await policy.init((POLICY_VERSIONS[0] as (typeof POLICY_VERSIONS)[number]).csv);

    const appPort = await stablePort();
    let app: ChildProcess | undefined;
    const startApp = async (): Promise<void> => {
      const child = spawn(process.execPath, [join(ROOT, 'bench/soak/app.mjs'), String(appPort), COOKIE], { stdio: ['ignore', 'pipe', 'inherit'] });
      app = child;
      const killOnExit = (): void => void child.kill('SIGKILL');
      process.once('exit', killOnExit);
      child.once('exit', () => process.off('exit', killOnExit));
      await new Promise<void>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error('the soak app did not start')), 10_000);
        child.stdout?.once('data', () => {
          clearTimeout(timer);
          resolve();
        });
        child.once('exit', (code) => {
          clearTimeout(timer);
          reject(new Error(`the soak app exited with ${code}`));
        });
      });
      child.stdout?.resume();
    };
    const killApp = async (): Promise<void> => {
      const child = app;
      app = undefined;
      if (child === undefined || child.exitCode !== null) return;
      await new Promise<void>((resolve) => {
        child.once('exit', () => resolve());
        child.kill('SIGKILL');
      });
    };
    await startApp();
    cleanups.push(killApp);

    const configFor = (name: string): Record<string, unknown> => {
      const p = replicaPorts.get(name) as ReplicaPorts;
      return {
        listen: `127.0.0.1:${p.proxy}`,
        admin: { listen: `127.0.0.1:${p.admin}` },
        upstream: { url: `http://127.0.0.1:${appPort}`, timeoutSeconds: 5 },
        extAuthz: { http: { listen: `127.0.0.1:${p.http}` }, grpc: { listen: `127.0.0.1:${p.grpc}` }, forwardAuth: { listen: `127.0.0.1:${p.forward}` } },
        authn: {
          // The query names the replica, so the oracle knows which replica fetched which key set when.
          jwt: [{ issuer: api.issuer, audiences: [AUDIENCE], jwksUri: `${api.jwksUri}?replica=${name}`, algorithms: ['RS256'] }],
          introspection: [
            {
              issuer: api.issuer,
              endpoint: api.introspectionEndpoint,
              clientId: introspector.clientId,
              clientSecretFile: files.introspectionSecret,
              cacheSeconds: INTROSPECTION_CACHE_SECONDS,
              timeoutSeconds: 2,
            },
          ],
          tokenFrom: [{ header: 'authorization' }],
        },
        identity: { subjectClaim: 'sub', rolesClaims: ['roles'] },
        authz: { model: files.model, policy: policy.policyFile, request: ['subject', 'path', 'method'], watch: true },
        logging: { level: 'info', decisions: 'denied' },
        shutdown: { drainSeconds: 10 },
        signIn: {
          callbackUrl: `${callbackOrigin}${PREFIX}/callback`,
          prefix: PREFIX,
          providers: [{ name: 'corp', issuer: op.issuer, clientId: 'orders-web', scopes: ['openid', 'profile', 'email', 'roles'] }],
          cookie: { name: COOKIE, secretFiles: [files.cookieSecret], secure: false },
          allowedRedirectHosts: names.map((n) => `127.0.0.1:${replicaPorts.get(n)?.proxy ?? 0}`),
          session: { store: 'redis', redis: { url: redis.url }, refreshBeforeSeconds: REFRESH_BEFORE_SECONDS },
        },
      };
    };

    const launch = async (name: string): Promise<ServeProcess> => {
      const file = await writeConfig(dir, `replica-${name}`, configFor(name));
      return startServe({ config: file, timeoutMs: 30_000 });
    };
    const replicas: Replica[] = [];
    const follow = (replica: Replica): void => {
      let rest = '';
      replica.process.child.stdout.on('data', (d: Buffer) => {
        const lines = (rest + d.toString()).split('\n');
        rest = lines.pop() ?? '';
        for (const line of lines) {
          if (!line.startsWith('{')) continue;
          let parsed: Record<string, unknown>;
          try {
            parsed = JSON.parse(line) as Record<string, unknown>;
          } catch {
            continue; // not a log line
          }
          options.onLog(replica, parsed);
        }
      });
    };
    for (const name of names) {
      const startedAt = Date.now();
      const proc = await launch(name);
      const replica: Replica = { name, ports: replicaPorts.get(name) as ReplicaPorts, process: proc, inRotation: true, starts: 1 };
      timeline.policyWritten(name, POLICY_VERSIONS[0] as (typeof POLICY_VERSIONS)[number], startedAt, Date.now());
      follow(replica);
      replicas.push(replica);
    }
    cleanups.push(() =>
      Promise.all(
        replicas.map((r) =>
          r.process.stop('SIGTERM', 30_000).then(
            (code) => void finalExits.set(r.name, code),
            (err: unknown) => void finalExits.set(r.name, `did not stop: ${(err as Error).message.slice(0, 200)}`),
          ),
        ),
      ),
    );

    return {
      api,
      op,
      redis,
      replicas,
      policy,
      appPort,
      callbackOrigin,
      initialKid,
      appPid: () => app?.pid,
      finalExits: () => finalExits,
      killApp,
      startApp,
      async restartReplica(replica) {
        const exitCode = await replica.process.stop('SIGTERM', 30_000);
        replica.process = await launch(replica.name);
        replica.starts++;
        follow(replica);
        return { exitCode };
      },
      close,
    };
  } catch (err) {
    await close();
    throw err;
  }
}
