/**
 * Lazy loading at run time: the real `serve` (bin/authz-sidecar.js, the bundle) runs with
 * test/support/load-recorder.mjs as `--import`, which writes every module URL the process loads to a file.
 * Bundle chunks are mapped to the files and packages they hold with esbuild's metafile
 * (dist/bundle/meta.json); @grpc/grpc-js and its dependencies are loaded from node_modules, external to the
 * bundle. test/unit/architecture.test.ts checks the bundle graph; this checks what a process really loads.
 *
 * - proxy only: the proxy door and the forwarder (undici) load; gRPC, its proto loader and protobufjs, and
 *   the check doors do not;
 * - gRPC ext_authz only: the gRPC door and @grpc/grpc-js (with protobufjs) load; the proxy door, the
 *   forwarder and undici, and the HTTP check doors do not.
 *
 * - Neither (JWT issuers with a jwksFile, no discovery, no introspection) loads openid-client or
 *   oauth4webapi: authn/registry.ts imports discovery and introspection only when configured.
 *
 * Not asserted, because the current code does load it in every config: @opentelemetry/api, required by
 * prom-client's default metrics (the sidecar has no tracing). fastify loads in every config too, as the admin listener's HTTP shell. bench/module-rss.mjs
 * measures what each costs.
 */
import { generateKeyPairSync } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join, relative, resolve, sep } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ROOT } from '../support/cli.js';
import { startServe, writeConfig } from '../support/serve.js';
import { EXAMPLE_MODEL, EXAMPLE_POLICY } from '../support/sidecar.js';

const RECORDER = pathToFileURL(resolve(ROOT, 'test/support/load-recorder.mjs')).href;
const META = resolve(ROOT, 'dist/bundle/meta.json');

let dir: string;
let upstream: Server;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'authz-lazy-'));
  const { publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  await writeFile(join(dir, 'jwks.json'), JSON.stringify({ keys: [{ ...publicKey.export({ format: 'jwk' }), kid: 'lazy-1', alg: 'ES256', use: 'sig' }] }));
  upstream = createServer((_req, res) => res.end('ok'));
  await new Promise<void>((done) => upstream.listen(0, '127.0.0.1', done));
});

afterAll(async () => {
  await new Promise((done) => (upstream === undefined ? done(undefined) : upstream.close(done)));
  await rm(dir, { recursive: true, force: true });
});

const rel = (path: string): string => relative(ROOT, path).split(sep).join('/');

interface Loaded {
  /** Repository-relative files whose code ran: the inputs of the loaded bundle chunks and any file loaded directly. */
  readonly files: Set<string>;
  /** Packages of node_modules with code loaded, bundled or not. */
  readonly packages: Set<string>;
}

function packageOf(path: string): string | undefined {
  return /(?:^|\/)node_modules\/((?:@[^/]+\/)?[^/]+)\//.exec(path)?.[1];
}

/** What the recorder listed, resolved through the bundle's metafile. */
function readRecord(file: string): Loaded {
  const meta = JSON.parse(readFileSync(META, 'utf8')) as { outputs: Record<string, { inputs: Record<string, unknown> }> };
  const files = new Set<string>();
  for (const url of readFileSync(file, 'utf8').split('\n')) {
    if (!url.startsWith('file:')) continue;
    const path = rel(fileURLToPath(url));
    const output = meta.outputs[path];
    if (output === undefined) files.add(path);
    else for (const input of Object.keys(output.inputs)) files.add(input);
  }
  const packages = new Set([...files].map(packageOf).filter((p): p is string => p !== undefined));
  return { files, packages };
}

/** `serve` with `doors`, recorded from start to exit (SIGTERM): what it loaded at rest and while stopping. */
async function recordServe(name: string, doors: Record<string, unknown>): Promise<{ atRest: Loaded; total: Loaded }> {
  const record = join(dir, `${name}.loaded`);
  await writeFile(record, '');
  const config = await writeConfig(dir, name, {
    admin: { listen: '127.0.0.1:0' },
    ...doors,
    authn: { jwt: [{ issuer: 'https://issuer.lazy.test', audiences: ['lazy'], jwksFile: join(dir, 'jwks.json'), algorithms: ['ES256'] }] },
    authz: { model: EXAMPLE_MODEL, policy: EXAMPLE_POLICY, watch: false },
    shutdown: { drainSeconds: 1 },
    logging: { level: 'info', decisions: 'none' },
  });
  const sidecar = await startServe({ config, env: { AUTHZ_LOAD_RECORD: record, NODE_OPTIONS: `${process.env['NODE_OPTIONS'] ?? ''} --import ${RECORDER}`.trim() } });
  const atRest = readRecord(record);
  expect(await sidecar.stop()).toBe(0);
  // On Node 20 the recorder adds the CommonJS modules loaded by require() at exit.
  return { atRest, total: readRecord(record) };
}

const DOOR_FILES = {
  proxy: 'dist/frontends/proxy.js',
  forwarder: 'dist/upstream/forwarder.js',
  grpc: 'dist/frontends/ext-authz-grpc.js',
  http: 'dist/frontends/ext-authz-http.js',
  forwardAuth: 'dist/frontends/forward-auth.js',
};
const GRPC_PACKAGES = ['@grpc/grpc-js', '@grpc/proto-loader', 'protobufjs'];
/** OIDC discovery and introspection only (a jwksFile issuer needs neither). */
const OIDC_PACKAGES = ['openid-client', 'oauth4webapi'];

describe('serve loads only what its config uses', () => {
  it('proxy only: no gRPC, no check door', async () => {
    const { atRest, total } = await recordServe('proxy-only', { listen: '127.0.0.1:0', upstream: { url: `http://127.0.0.1:${(upstream.address() as AddressInfo).port}` } });
    // The recorder sees what was loaded: the proxy door, its forwarder and undici, the admin listener's fastify.
    expect([...atRest.files]).toEqual(expect.arrayContaining([DOOR_FILES.proxy, DOOR_FILES.forwarder]));
    expect([...atRest.packages]).toEqual(expect.arrayContaining(['undici', 'fastify', 'casbin', 'jose']));
    for (const loaded of [atRest, total]) {
      expect(GRPC_PACKAGES.filter((p) => loaded.packages.has(p))).toEqual([]);
      expect([DOOR_FILES.grpc, DOOR_FILES.http, DOOR_FILES.forwardAuth].filter((f) => loaded.files.has(f))).toEqual([]);
      expect(OIDC_PACKAGES.filter((p) => loaded.packages.has(p))).toEqual([]);
    }
  });

  it('gRPC ext_authz only: no proxy door, no forwarder or undici, no HTTP check door', async () => {
    const { atRest, total } = await recordServe('grpc-only', { extAuthz: { grpc: { listen: '127.0.0.1:0' } } });
    expect(atRest.files.has(DOOR_FILES.grpc)).toBe(true);
    expect(atRest.packages.has('@grpc/grpc-js')).toBe(true);
    // protobufjs is loaded by require() inside @grpc/proto-loader: listed at exit on Node 20.
    expect([...total.packages]).toEqual(expect.arrayContaining(GRPC_PACKAGES));
    for (const loaded of [atRest, total]) {
      expect(loaded.packages.has('undici')).toBe(false);
      expect(OIDC_PACKAGES.filter((p) => loaded.packages.has(p))).toEqual([]);
      expect([DOOR_FILES.proxy, DOOR_FILES.forwarder, DOOR_FILES.http, DOOR_FILES.forwardAuth].filter((f) => loaded.files.has(f))).toEqual([]);
    }
  });
});
