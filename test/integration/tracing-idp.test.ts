/**
 * Tracing of identity provider calls (DESIGN.md §9): a JWKS fetch made for a request (a token whose key is
 * not known yet) is a CLIENT span under the request's authentication stage, and the provider receives our
 * own trace context only: never the client's baggage or tracestate. A real JWKS server on loopback, the
 * real sidecar with OTEL_TRACES_EXPORTER=otlp, a real OTLP receiver.
 */
import { randomBytes } from 'node:crypto';
import { createServer, type IncomingHttpHeaders, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { exportJWK, generateKeyPair, SignJWT } from 'jose';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { startOtlpReceiver, type OtlpReceiver } from '../support/otlp-receiver.js';
import { startTestSidecar, waitReady, type TestSidecar } from '../support/sidecar.js';
import { startRecordingUpstream, type RecordingUpstream } from '../support/upstream.js';

const ISSUER = 'https://idp.trace-idp.test';
const AUDIENCE = 'orders-api';

let receiver: OtlpReceiver;
let upstream: RecordingUpstream;
let sidecar: TestSidecar;
let jwksServer: Server;
const jwksRequests: IncomingHttpHeaders[] = [];
let keys: Array<Record<string, unknown>> = [];
const saved = { exporter: process.env['OTEL_TRACES_EXPORTER'], endpoint: process.env['OTEL_EXPORTER_OTLP_ENDPOINT'] };

beforeAll(async () => {
  receiver = await startOtlpReceiver();
  upstream = await startRecordingUpstream();
  jwksServer = createServer((req, res) => {
    jwksRequests.push(req.headers);
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ keys }));
  });
  await new Promise<void>((resolve) => jwksServer.listen(0, '127.0.0.1', resolve));
  const jwksUri = `http://127.0.0.1:${(jwksServer.address() as AddressInfo).port}/jwks`;
  // A key set to start with (the sidecar is ready once it has one).
  const first = await generateKeyPair('RS256', { extractable: true });
  keys = [{ ...(await exportJWK(first.publicKey)), kid: 'first', alg: 'RS256', use: 'sig' }];
  process.env['OTEL_TRACES_EXPORTER'] = 'otlp';
  process.env['OTEL_EXPORTER_OTLP_ENDPOINT'] = receiver.url;
  sidecar = await startTestSidecar({
    upstream: { url: upstream.url },
    authn: { jwt: [{ issuer: ISSUER, audiences: [AUDIENCE], jwksUri, algorithms: ['RS256'] }] },
  }, { jwks: { cooldownMs: 0 } });
  await waitReady(sidecar.adminUrl);
});

afterAll(async () => {
  await sidecar?.close();
  for (const [name, value] of [['OTEL_TRACES_EXPORTER', saved.exporter], ['OTEL_EXPORTER_OTLP_ENDPOINT', saved.endpoint]] as const) {
    if (value === undefined) delete process.env[name];
    else process.env[name] = value;
  }
  await new Promise<void>((resolve) => jwksServer.close(() => resolve()));
  await upstream?.close();
  await receiver?.close();
});

it('traces a JWKS fetch made for a request as a CLIENT span, and sends the provider our trace context only', async () => {
  // A key the sidecar has not seen: verifying the token refetches the JWKS inside the request.
  const { privateKey, publicKey } = await generateKeyPair('RS256', { extractable: true });
  keys = [...keys, { ...(await exportJWK(publicKey)), kid: 'rotated', alg: 'RS256', use: 'sig' }];
  const token = await new SignJWT({ roles: ['reader'] }).setProtectedHeader({ alg: 'RS256', kid: 'rotated' }).setIssuer(ISSUER).setAudience(AUDIENCE).setSubject('alice').setIssuedAt().setExpirationTime('5m').sign(privateKey);
  const traceId = randomBytes(16).toString('hex');
  const fetchesBefore = jwksRequests.length;
  const res = await fetch(`${sidecar.url}/orders/1`, {
    headers: { authorization: `Bearer ${token}`, traceparent: `00-${traceId}-${randomBytes(8).toString('hex')}-01`, tracestate: 'evil=attacker-data', baggage: 'session=secret-cookie-value' },
  });
  expect(res.status).toBe(200);
  expect(jwksRequests.length).toBe(fetchesBefore + 1);
  const seen = jwksRequests.at(-1) ?? {};
  expect(seen['baggage']).toBeUndefined();
  expect(seen['tracestate']).toBeUndefined();
  const spans = await receiver.waitForSpans((all) => all.some((s) => s.traceId === traceId && s.kind === 'SERVER'), 8_000);
  const stage = spans.find((s) => s.traceId === traceId && s.name === 'authz-sidecar.authenticate');
  const jwks = spans.find((s) => s.traceId === traceId && s.kind === 'CLIENT' && s.attributes['url.path'] === '/jwks');
  expect(jwks?.parentSpanId).toBe(stage?.spanId);
  expect(seen['traceparent']).toBe(`00-${traceId}-${jwks?.spanId}-01`);
  expect(jwks?.attributes).toMatchObject({ 'http.request.method': 'GET', 'server.address': '127.0.0.1', 'http.response.status_code': 200 });
});
