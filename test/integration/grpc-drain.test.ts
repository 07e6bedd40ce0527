/**
 * SIGTERM on the real process (bin/authz-sidecar.js serve) with the gRPC ext_authz door busy: a
 * grpc.health.v1.Health/Watch stream open (it never ends by itself) and a Check waiting on a slow
 * introspection endpoint. The drain must answer the Check, end the Watch stream, and exit 0 within
 * `shutdown.drainSeconds` + 1 s; a Check still waiting at the deadline is cut, and the exit is still on time.
 * Clients are built from the official Envoy protos (shipped by @grpc/grpc-js-xds) and the standard health proto.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createServer, type Server, type ServerResponse } from 'node:http';
import { createRequire } from 'node:module';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startServe, writeConfig, type ServeProcess } from '../support/serve.js';
import { EXAMPLE_MODEL, EXAMPLE_POLICY } from '../support/sidecar.js';

const DRAIN_SECONDS = 3;
/** How long the introspection endpoint takes with a `slow-*` token (less than the drain). */
const SLOW_MS = 2_000;
const ISSUER = 'https://idp.grpc-drain.test';
const DEPS = join(dirname(createRequire(import.meta.url).resolve('@grpc/grpc-js-xds/package.json')), 'deps');
const LOAD_OPTIONS = { keepCase: true, longs: String, enums: String, defaults: true, oneofs: true } as const;

interface CheckResponse {
  status: { code: number };
  http_response?: 'ok_response' | 'denied_response';
  ok_response?: unknown;
  denied_response?: unknown;
}
type AuthorizationClient = grpc.Client & {
  Check(req: unknown, cb: (err: grpc.ServiceError | null, res: CheckResponse) => void): grpc.ClientUnaryCall;
};
type HealthClient = grpc.Client & {
  Watch(req: unknown): grpc.ClientReadableStream<{ status: string }>;
};

const official = protoLoader.loadSync('envoy/service/auth/v3/external_auth.proto', {
  includeDirs: ['envoy-api', 'xds', 'googleapis', 'protoc-gen-validate'].map((d) => join(DEPS, d)),
  ...LOAD_OPTIONS,
});
const healthProto = protoLoader.loadSync('grpc/health/v1/health.proto', { includeDirs: [join(import.meta.dirname, '../../proto')], ...LOAD_OPTIONS });
const Authorization = (
  grpc.loadPackageDefinition(official) as unknown as {
    envoy: { service: { auth: { v3: { Authorization: new (address: string, creds: grpc.ChannelCredentials) => AuthorizationClient } } } };
  }
).envoy.service.auth.v3.Authorization;
const Health = (grpc.loadPackageDefinition(healthProto) as unknown as { grpc: { health: { v1: { Health: new (address: string, creds: grpc.ChannelCredentials) => HealthClient } } } })
  .grpc.health.v1.Health;

let dir: string;
let idp: Server;
/** Tokens the introspection endpoint received, and the answers it still holds (`hold-*` tokens). */
const introspected: string[] = [];
const held: ServerResponse[] = [];

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'authz-grpc-drain-'));
  await writeFile(join(dir, 'secret'), 'introspection-secret-0123456789');
  // RFC 7662: `slow-*` tokens are active after SLOW_MS, `hold-*` are never answered, others at once.
  idp = createServer((req, res) => {
    let body = '';
    req.on('data', (c: Buffer) => (body += c.toString()));
    req.on('end', () => {
      const token = new URLSearchParams(body).get('token') ?? '';
      introspected.push(token);
      if (token.startsWith('hold-')) {
        held.push(res);
        return;
      }
      const send = (): void => {
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ active: true, sub: 'alice', roles: ['reader'], exp: Math.floor(Date.now() / 1000) + 300 }));
      };
      if (token.startsWith('slow-')) setTimeout(send, SLOW_MS);
      else send();
    });
  });
  await new Promise<void>((done) => idp.listen(0, '127.0.0.1', done));
});

afterAll(async () => {
  for (const res of held) res.destroy();
  idp?.closeAllConnections();
  await new Promise((done) => (idp === undefined ? done(undefined) : idp.close(done)));
  await rm(dir, { recursive: true, force: true });
});

async function start(name: string): Promise<ServeProcess> {
  const config = await writeConfig(dir, name, {
    admin: { listen: '127.0.0.1:0' },
    extAuthz: { grpc: { listen: '127.0.0.1:0' } },
    authn: {
      introspection: [
        {
          issuer: ISSUER,
          endpoint: `http://127.0.0.1:${(idp.address() as AddressInfo).port}/introspect`,
          clientId: 'sidecar',
          clientSecretFile: './secret',
          cacheSeconds: 0,
          // Longer than the drain: only the drain deadline can end a held check.
          timeoutSeconds: 20,
        },
      ],
    },
    authz: { model: EXAMPLE_MODEL, policy: EXAMPLE_POLICY },
    shutdown: { drainSeconds: DRAIN_SECONDS },
    logging: { level: 'info', decisions: 'none' },
  });
  return startServe({ config });
}

async function until(what: string, check: () => boolean, timeoutMs = 5_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** An open Health/Watch stream and what it reported. */
function watch(address: string): { statuses: string[]; ended: Promise<{ code: number; at: number }>; client: HealthClient } {
  const client = new Health(address, grpc.credentials.createInsecure());
  const statuses: string[] = [];
  const stream = client.Watch({ service: '' });
  stream.on('data', (m: { status: string }) => statuses.push(m.status));
  const ended = new Promise<{ code: number; at: number }>((resolve) => {
    // 'status' comes once the call is over, OK for a stream the server ended, an error code otherwise.
    stream.on('status', (s: grpc.StatusObject) => resolve({ code: s.code, at: Date.now() }));
    stream.on('error', () => undefined);
  });
  return { statuses, ended, client };
}

function check(client: AuthorizationClient, token: string): Promise<{ response?: CheckResponse; error?: grpc.ServiceError; at: number }> {
  return new Promise((resolve) => {
    client.Check(
      { attributes: { request: { http: { method: 'GET', path: '/orders/1', host: 'shop.example', headers: { authorization: `Bearer ${token}` } } } } },
      (error, response) => resolve({ ...(error === null ? { response } : { error }), at: Date.now() }),
    );
  });
}

describe('SIGTERM with the gRPC door busy', () => {
  it('answers the in-flight Check, ends the Watch stream, and exits 0 within drainSeconds + 1 s', async () => {
    const sidecar = await start('answer');
    const address = sidecar.addresses.grpc ?? '';
    const client = new Authorization(address, grpc.credentials.createInsecure());
    const health = watch(address);
    try {
      await until('the Watch stream reports SERVING', () => health.statuses.includes('SERVING'));
      const inflight = check(client, 'slow-1');
      await until('the Check waits on the introspection endpoint', () => introspected.includes('slow-1'));

      const termAt = Date.now();
      sidecar.signal('SIGTERM');

      const answered = await inflight;
      expect(answered.error).toBeUndefined();
      // The decision itself: alice (reader) may GET /orders/1.
      expect(answered.response?.status.code).toBe(0);
      expect(answered.response?.http_response).toBe('ok_response');
      // It waited out the introspection, the drain did not cut it.
      expect(answered.at - termAt).toBeGreaterThanOrEqual(SLOW_MS - 500);

      // The Watch stream ended cleanly (OK, not cut), the last word being NOT_SERVING.
      const ended = await health.ended;
      expect(ended.code).toBe(grpc.status.OK);
      expect(health.statuses[0]).toBe('SERVING');
      expect(health.statuses.at(-1)).toBe('NOT_SERVING');
      expect(ended.at - termAt).toBeLessThan((DRAIN_SECONDS + 1) * 1000);

      const exit = await sidecar.exit;
      expect(exit.code).toBe(0);
      expect(exit.at - termAt).toBeLessThanOrEqual((DRAIN_SECONDS + 1) * 1000);
    } finally {
      client.close();
      health.client.close();
      await sidecar.stop();
    }
  }, 20_000);

  it('cuts a Check still waiting at the deadline and still exits 0 within drainSeconds + 1 s', async () => {
    const sidecar = await start('cut');
    const address = sidecar.addresses.grpc ?? '';
    const client = new Authorization(address, grpc.credentials.createInsecure());
    const health = watch(address);
    try {
      await until('the Watch stream reports SERVING', () => health.statuses.includes('SERVING'));
      const inflight = check(client, 'hold-1');
      await until('the Check waits on the introspection endpoint', () => introspected.includes('hold-1'));

      const termAt = Date.now();
      sidecar.signal('SIGTERM');

      const ended = await health.ended;
      expect(ended.code).toBe(grpc.status.OK);
      expect(health.statuses.at(-1)).toBe('NOT_SERVING');

      // Never an allow: the call is cut at the deadline (the server cancels it).
      const cut = await inflight;
      expect(cut.response).toBeUndefined();
      expect(cut.error?.code).toBe(grpc.status.CANCELLED);
      expect(cut.at - termAt).toBeGreaterThanOrEqual(DRAIN_SECONDS * 1000 - 500);
      expect(cut.at - termAt).toBeLessThanOrEqual((DRAIN_SECONDS + 1) * 1000);

      // The process is gone by drainSeconds + 1 s (waiting any longer only makes a failure slower to show).
      const late = termAt + (DRAIN_SECONDS + 2) * 1000 - Date.now();
      const exit = await Promise.race([sidecar.exit, new Promise<undefined>((r) => setTimeout(() => r(undefined), late))]);
      expect(exit, `still running ${DRAIN_SECONDS + 2} s after SIGTERM`).toBeDefined();
      expect(exit?.code).toBe(0);
      expect((exit?.at ?? Infinity) - termAt).toBeLessThanOrEqual((DRAIN_SECONDS + 1) * 1000);
    } finally {
      client.close();
      health.client.close();
      await sidecar.stop('SIGKILL');
    }
  }, 25_000);
});
