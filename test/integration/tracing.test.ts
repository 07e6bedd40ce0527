/**
 * Tracing (DESIGN.md §9) on real servers: the sidecar in-process with OTEL_TRACES_EXPORTER=otlp, exporting
 * over real OTLP/HTTP protobuf to a real receiver in the test (test/support/otlp-receiver.ts decodes the
 * wire format with the official OpenTelemetry protos), a real upstream, real HTTP and gRPC clients.
 */
import { randomBytes } from 'node:crypto';
import { request as httpRequest } from 'node:http';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { exportJWK, generateKeyPair, SignJWT } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startOtlpReceiver, type OtlpReceiver, type ReceivedSpan } from '../support/otlp-receiver.js';
import { startTestSidecar, type TestSidecar } from '../support/sidecar.js';
import { startRecordingUpstream, type RecordingUpstream } from '../support/upstream.js';

const ISSUER = 'https://idp.trace.test';
const AUDIENCE = 'orders-api';
const OTEL_VARS = ['OTEL_TRACES_EXPORTER', 'OTEL_EXPORTER_OTLP_ENDPOINT', 'OTEL_SERVICE_NAME', 'OTEL_PROPAGATORS'];

let receiver: OtlpReceiver;
let upstream: RecordingUpstream;
let sidecar: TestSidecar;
let dir: string;
let reader: string;
let admin: string;
const saved = new Map<string, string | undefined>();

type GrpcClient = grpc.Client & { Check(req: unknown, metadata: grpc.Metadata, cb: (err: grpc.ServiceError | null, res: { status: { code: number } }) => void): void };

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'authz-tracing-'));
  const { privateKey, publicKey } = await generateKeyPair('RS256', { extractable: true });
  await writeFile(join(dir, 'jwks.json'), JSON.stringify({ keys: [{ ...(await exportJWK(publicKey)), kid: 'k1', alg: 'RS256', use: 'sig' }] }));
  const mint = (sub: string, roles: string[]) =>
    new SignJWT({ roles }).setProtectedHeader({ alg: 'RS256', kid: 'k1' }).setIssuer(ISSUER).setAudience(AUDIENCE).setSubject(sub).setIssuedAt().setExpirationTime('10m').sign(privateKey);
  reader = await mint('alice', ['reader']);
  admin = await mint('bob', ['admin']);
  receiver = await startOtlpReceiver();
  upstream = await startRecordingUpstream();
  for (const name of OTEL_VARS) saved.set(name, process.env[name]);
  process.env['OTEL_TRACES_EXPORTER'] = 'otlp';
  process.env['OTEL_EXPORTER_OTLP_ENDPOINT'] = receiver.url;
  process.env['OTEL_SERVICE_NAME'] = 'orders-sidecar';
  process.env['OTEL_PROPAGATORS'] = 'tracecontext,baggage,b3multi';
  sidecar = await startTestSidecar({
    upstream: { url: upstream.url },
    extAuthz: { grpc: { listen: '127.0.0.1:0' }, http: { listen: '127.0.0.1:0' } },
    authn: { jwt: [{ issuer: ISSUER, audiences: [AUDIENCE], jwksFile: join(dir, 'jwks.json'), algorithms: ['RS256'] }] },
  });
});

afterAll(async () => {
  await sidecar?.close();
  for (const [name, value] of saved) {
    if (value === undefined) delete process.env[name];
    else process.env[name] = value;
  }
  await upstream?.close();
  await receiver?.close();
  await rm(dir, { recursive: true, force: true });
});

const hex = (bytes: number): string => randomBytes(bytes).toString('hex');

/** The spans of one trace, once its SERVER span has arrived. */
async function traceOf(traceId: string, count = 1): Promise<ReceivedSpan[]> {
  const spans = await receiver.waitForSpans((all) => all.filter((s) => s.traceId === traceId && s.kind === 'SERVER').length >= count, 8_000);
  // The stage and CLIENT spans end before the SERVER span: they are in the same or an earlier batch.
  return spans.filter((s) => s.traceId === traceId);
}

describe('tracing', () => {
  it("honours the incoming traceparent, and the app's parent is the sidecar's CLIENT span", async () => {
    const traceId = hex(16);
    const parent = hex(8);
    const res = await fetch(`${sidecar.url}/orders/1`, { headers: { authorization: `Bearer ${reader}`, traceparent: `00-${traceId}-${parent}-01` } });
    expect(res.status).toBe(200);
    const spans = await traceOf(traceId);
    const server = spans.find((s) => s.kind === 'SERVER');
    const client = spans.find((s) => s.kind === 'CLIENT');
    expect(server?.parentSpanId).toBe(parent);
    expect(server?.resource['service.name']).toBe('orders-sidecar');
    expect(client?.parentSpanId).toBe(server?.spanId);
    const seen = upstream.requests.at(-1)?.headers['traceparent'];
    expect(seen).toBe(`00-${traceId}-${client?.spanId}-01`);
    // Stage spans under the SERVER span.
    const stages = spans.filter((s) => s.kind === 'INTERNAL').map((s) => [s.name, s.parentSpanId]);
    expect(stages).toEqual(expect.arrayContaining([['authz-sidecar.authenticate', server?.spanId], ['authz-sidecar.policy', server?.spanId]]));
    expect(server?.attributes).toMatchObject({
      'http.request.method': 'GET',
      'url.path': '/orders/1',
      'http.response.status_code': 200,
      'authz.frontend': 'proxy',
      'authz.decision': 'allow',
      'authz.reason': 'ALLOWED',
      'enduser.id': 'alice',
    });
  });

  it('records 401, 403 and 400 with their reasons, and no token, cookie or claim value in any span', async () => {
    const cases: Array<[RequestInit['headers'], string, number, string, string]> = [
      [{}, '/orders/2', 401, 'unauthenticated', 'CREDENTIALS_MISSING'],
      [{ authorization: `Bearer ${reader}`, cookie: 'theme=dark; secret=hunter2' }, '/orders/2', 403, 'forbidden', 'POLICY_DENIED'],
      [{ authorization: `Bearer ${admin}` }, '/orders/%2e%2e/%2fadmin', 400, 'badRequest', 'PATH_ENCODED_SLASH'],
    ];
    for (const [headers, path, status, decision, reason] of cases) {
      const traceId = hex(16);
      const res = await fetch(`${sidecar.url}${path}`, { method: status === 403 ? 'DELETE' : 'GET', headers: { ...headers, traceparent: `00-${traceId}-${hex(8)}-01` } });
      expect(res.status).toBe(status);
      const server = (await traceOf(traceId)).find((s) => s.kind === 'SERVER');
      expect(server?.attributes).toMatchObject({ 'http.response.status_code': status, 'authz.decision': decision, 'authz.reason': reason });
    }
    const everything = Buffer.concat(receiver.rawBodies()).toString('latin1');
    for (const secret of [reader, admin, reader.split('.')[2] ?? 'x', 'hunter2', 'theme=dark']) expect(everything).not.toContain(secret);
  });

  it("ends a WebSocket's SERVER span at the handshake with its 101", async () => {
    const traceId = hex(16);
    const status = await new Promise<number>((resolve, reject) => {
      const url = new URL(sidecar.url);
      const req = httpRequest({
        host: url.hostname,
        port: url.port,
        path: '/orders/1',
        headers: {
          connection: 'Upgrade',
          upgrade: 'websocket',
          'sec-websocket-version': '13',
          'sec-websocket-key': 'dGhlIHNhbXBsZSBub25jZQ==',
          authorization: `Bearer ${reader}`,
          traceparent: `00-${traceId}-${hex(8)}-01`,
        },
      });
      req.on('upgrade', (res, socket) => {
        resolve(res.statusCode ?? 0);
        // Open a while after the handshake: the span must not wait for the socket to close.
        setTimeout(() => socket.destroy(), 3_000);
      });
      req.on('response', (res) => resolve(res.statusCode ?? 0));
      req.on('error', reject);
      req.end();
    });
    expect(status).toBe(101);
    const server = (await traceOf(traceId)).find((s) => s.kind === 'SERVER');
    expect(server?.attributes['http.response.status_code']).toBe(101);
  });

  it('accepts B3 multi-header propagation', async () => {
    const traceId = hex(16);
    const parent = hex(8);
    const res = await fetch(`${sidecar.url}/public/x`, { headers: { 'x-b3-traceid': traceId, 'x-b3-spanid': parent, 'x-b3-sampled': '1' } });
    expect(res.status).toBe(200);
    const server = (await traceOf(traceId)).find((s) => s.kind === 'SERVER');
    expect(server?.parentSpanId).toBe(parent);
    // The app gets our context in every configured format.
    expect(upstream.requests.at(-1)?.headers['x-b3-traceid']).toBe(traceId);
  });

  it("takes the gRPC ext_authz parent from the call's metadata, not from the CheckRequest's headers", async () => {
    const definitions = protoLoader.loadSync('envoy/service/auth/v3/external_auth.proto', { includeDirs: [join(import.meta.dirname, '../../proto')], keepCase: true, longs: String, enums: String, oneofs: true });
    const Authorization = (grpc.loadPackageDefinition(definitions) as unknown as { envoy: { service: { auth: { v3: { Authorization: new (a: string, c: grpc.ChannelCredentials) => GrpcClient } } } } }).envoy.service.auth.v3.Authorization;
    const client = new Authorization(sidecar.extAuthz.grpc ?? '', grpc.credentials.createInsecure());
    const envoyTrace = hex(16);
    const envoySpan = hex(8);
    const originalTrace = hex(16);
    const metadata = new grpc.Metadata();
    metadata.set('traceparent', `00-${envoyTrace}-${envoySpan}-01`);
    const res = await new Promise<{ status: { code: number } }>((resolve, reject) =>
      client.Check(
        { attributes: { request: { http: { method: 'GET', path: '/orders/1', host: 'shop', headers: { authorization: `Bearer ${reader}`, traceparent: `00-${originalTrace}-${hex(8)}-01` } } } } },
        metadata,
        (err, r) => (err ? reject(err) : resolve(r)),
      ),
    );
    client.close();
    expect(res.status.code).toBe(0);
    const server = (await traceOf(envoyTrace)).find((s) => s.kind === 'SERVER');
    expect(server?.parentSpanId).toBe(envoySpan);
    expect(server?.attributes['authz.frontend']).toBe('extAuthzGrpc');
    expect(receiver.spans().some((s) => s.traceId === originalTrace)).toBe(false);
  });

  it("takes the HTTP ext_authz parent from the check request's own headers (the call), and answers the check", async () => {
    const envoyTrace = hex(16);
    const envoySpan = hex(8);
    const res = await fetch(`http://${sidecar.extAuthz.http ?? ''}/orders/1`, { headers: { authorization: `Bearer ${reader}`, traceparent: `00-${envoyTrace}-${envoySpan}-01` } });
    expect(res.status).toBe(200);
    expect(res.headers.get('x-auth-subject')).toBe('alice');
    const server = (await traceOf(envoyTrace)).find((s) => s.kind === 'SERVER');
    expect(server?.parentSpanId).toBe(envoySpan);
    expect(server?.attributes).toMatchObject({ 'authz.frontend': 'extAuthzHttp', 'authz.decision': 'allow', 'url.path': '/orders/1' });
  });

  it('never fails a request because the collector is down, and counts the spans it could not deliver', async () => {
    receiver.setFailWith(400);
    try {
      for (let i = 0; i < 5; i++) expect((await fetch(`${sidecar.url}/orders/1`, { headers: { authorization: `Bearer ${reader}` } })).status).toBe(200);
      const deadline = Date.now() + 8_000;
      let dropped = 0;
      while (Date.now() < deadline && dropped === 0) {
        await new Promise((r) => setTimeout(r, 250));
        const metrics = await (await fetch(`${sidecar.adminUrl}/metrics`)).text();
        dropped = Number(/^authz_sidecar_spans_dropped_total (\d+)/m.exec(metrics)?.[1] ?? 0);
      }
      expect(dropped).toBeGreaterThan(0);
    } finally {
      receiver.setFailWith();
    }
  });
});
