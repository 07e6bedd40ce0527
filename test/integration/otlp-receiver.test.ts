/**
 * The OTLP/HTTP test receiver (test/support/otlp-receiver.ts) against the real exporter: an OpenTelemetry
 * TracerProvider (@opentelemetry/sdk-trace 3.x) with the real OTLPTraceExporter
 * (@opentelemetry/exporter-trace-otlp-proto) posting http/protobuf to it, gzip through the exporter's own
 * environment variables, OTLP/JSON from the real JsonTraceSerializer, and a collector answering 503/400.
 */
import { afterEach, beforeEach, describe, expect, test } from 'vitest';
import { ROOT_CONTEXT, SpanKind, SpanStatusCode, trace } from '@opentelemetry/api';
import { OTLPTraceExporter } from '@opentelemetry/exporter-trace-otlp-proto';
import { JsonTraceSerializer, ProtobufTraceSerializer } from '@opentelemetry/otlp-transformer';
import { resourceFromAttributes } from '@opentelemetry/resources';
import { BatchSpanProcessor, InMemorySpanExporter, SimpleSpanProcessor, TracerProvider } from '@opentelemetry/sdk-trace';
import { startOtlpReceiver, type OtlpReceiver } from '../support/otlp-receiver.js';

let receiver: OtlpReceiver;
const providers: TracerProvider[] = [];

beforeEach(async () => {
  receiver = await startOtlpReceiver();
});

afterEach(async () => {
  receiver.setFailWith();
  await Promise.allSettled(providers.splice(0).map((p) => p.shutdown()));
  await receiver.close();
});

function provider(options: ConstructorParameters<typeof TracerProvider>[0]): TracerProvider {
  const p = new TracerProvider(options);
  providers.push(p);
  return p;
}

const nowNanos = (): bigint => BigInt(Date.now()) * 1_000_000n;

describe('http/protobuf from the real OTLPTraceExporter', () => {
  test('decodes names, kinds, ids, parent, attributes, events, links, status, resource and scope', async () => {
    const exporter = new OTLPTraceExporter({ url: receiver.tracesUrl });
    const tracerProvider = provider({
      resource: resourceFromAttributes({ 'service.name': 'authz-sidecar-test', 'service.version': '0.1.0' }),
      spanProcessors: [new BatchSpanProcessor({ exporter })],
    });
    const tracer = tracerProvider.getTracer('otlp-receiver-test', '1.2.3');
    const before = nowNanos();

    // A span of another trace for the client span to link to.
    const linked = tracer.startSpan('background refresh', { kind: SpanKind.INTERNAL });
    linked.end();

    const server = tracer.startSpan('GET /api/orders', {
      kind: SpanKind.SERVER,
      attributes: {
        'http.request.method': 'GET',
        'url.path': '/api/orders',
        'http.response.status_code': 403,
        'authz.allowed': false,
        'authz.roles': ['reader', 'auditor'],
        'authz.decision_ms': 1.25,
      },
    });
    server.addEvent('authz.decision', { 'authz.rule': 'deny-by-default' });
    server.setStatus({ code: SpanStatusCode.ERROR, message: 'forbidden' });
    const client = tracer.startSpan(
      'POST /token',
      { kind: SpanKind.CLIENT, attributes: { 'server.address': 'idp.example', 'server.port': 443 }, links: [{ context: linked.spanContext(), attributes: { 'link.reason': 'refresh' } }] },
      trace.setSpan(ROOT_CONTEXT, server),
    );
    client.setStatus({ code: SpanStatusCode.OK });
    client.end();
    server.end();
    await tracerProvider.forceFlush();
    const after = nowNanos();

    expect(receiver.requests()).toBe(1); // one batch
    const spans = receiver.spans();
    expect(spans.map((s) => s.name).sort()).toEqual(['GET /api/orders', 'POST /token', 'background refresh']);
    const got = (name: string) => spans.find((s) => s.name === name)!;

    const srv = got('GET /api/orders');
    expect(srv.kind).toBe('SERVER');
    expect(srv.traceId).toBe(server.spanContext().traceId);
    expect(srv.spanId).toBe(server.spanContext().spanId);
    expect(srv.traceId).toMatch(/^[0-9a-f]{32}$/);
    expect(srv.spanId).toMatch(/^[0-9a-f]{16}$/);
    expect(srv.parentSpanId).toBe('');
    expect(srv.attributes).toEqual({
      'http.request.method': 'GET',
      'url.path': '/api/orders',
      'http.response.status_code': 403,
      'authz.allowed': false,
      'authz.roles': ['reader', 'auditor'],
      'authz.decision_ms': 1.25,
    });
    expect(srv.status).toEqual({ code: 'ERROR', message: 'forbidden' });
    expect(srv.events).toHaveLength(1);
    expect(srv.events[0]!.name).toBe('authz.decision');
    expect(srv.events[0]!.attributes).toEqual({ 'authz.rule': 'deny-by-default' });
    expect(srv.links).toEqual([]);
    expect(srv.flags & 0xff).toBe(1); // sampled
    expect(typeof srv.startTimeUnixNano).toBe('bigint');
    expect(srv.startTimeUnixNano).toBeGreaterThanOrEqual(before - 5_000_000_000n);
    expect(srv.endTimeUnixNano).toBeGreaterThanOrEqual(srv.startTimeUnixNano);
    expect(srv.endTimeUnixNano).toBeLessThanOrEqual(after + 5_000_000_000n);
    expect(srv.events[0]!.timeUnixNano).toBeGreaterThanOrEqual(srv.startTimeUnixNano);

    const cli = got('POST /token');
    expect(cli.kind).toBe('CLIENT');
    expect(cli.traceId).toBe(srv.traceId);
    expect(cli.spanId).toBe(client.spanContext().spanId);
    expect(cli.parentSpanId).toBe(srv.spanId);
    expect(cli.attributes).toEqual({ 'server.address': 'idp.example', 'server.port': 443 });
    expect(cli.status).toEqual({ code: 'OK', message: '' });
    expect(cli.links).toEqual([{ traceId: linked.spanContext().traceId, spanId: linked.spanContext().spanId, traceState: '', attributes: { 'link.reason': 'refresh' } }]);
    expect(cli.links[0]!.traceId).not.toBe(cli.traceId);

    const bg = got('background refresh');
    expect(bg.kind).toBe('INTERNAL');
    expect(bg.status.code).toBe('UNSET');

    for (const s of spans) {
      expect(s.resource).toEqual({ 'service.name': 'authz-sidecar-test', 'service.version': '0.1.0' });
      expect(s.scope).toEqual({ name: 'otlp-receiver-test', version: '1.2.3' });
    }
    expect(await receiver.waitForSpans((all) => all.length === 3, 100)).toHaveLength(3);
  });

  test('OTEL_EXPORTER_OTLP_ENDPOINT = receiver.url and OTEL_EXPORTER_OTLP_COMPRESSION=gzip: the exporter posts gzip to /v1/traces', async () => {
    const saved = { endpoint: process.env.OTEL_EXPORTER_OTLP_ENDPOINT, compression: process.env.OTEL_EXPORTER_OTLP_COMPRESSION };
    process.env.OTEL_EXPORTER_OTLP_ENDPOINT = receiver.url;
    process.env.OTEL_EXPORTER_OTLP_COMPRESSION = 'gzip';
    let exporter: OTLPTraceExporter;
    try {
      exporter = new OTLPTraceExporter(); // the exporter reads its environment in its constructor
    } finally {
      for (const [key, value] of [['OTEL_EXPORTER_OTLP_ENDPOINT', saved.endpoint], ['OTEL_EXPORTER_OTLP_COMPRESSION', saved.compression]] as const) {
        if (value === undefined) delete process.env[key];
        else process.env[key] = value;
      }
    }
    const tracerProvider = provider({ resource: resourceFromAttributes({ 'service.name': 'gzip-test' }), spanProcessors: [new SimpleSpanProcessor({ exporter })] });
    tracerProvider.getTracer('gzip').startSpan('check', { kind: SpanKind.SERVER, attributes: { 'enduser.id': 'alice' } }).end();

    const spans = await receiver.waitForSpans((all) => all.length === 1);
    expect(spans[0]).toMatchObject({ name: 'check', kind: 'SERVER', attributes: { 'enduser.id': 'alice' }, resource: { 'service.name': 'gzip-test' } });
    // rawBodies() are the protobuf after gunzip: searchable for what a span carries (and what it must not).
    const raw = Buffer.concat(receiver.rawBodies());
    expect(raw.includes('enduser.id')).toBe(true);
    expect(raw.includes('alice')).toBe(true);
    expect(raw.includes('eyJhbGciOi')).toBe(false);
  });
});

describe('http/json', () => {
  test('the real JsonTraceSerializer output decodes to the same spans as the protobuf serializer output', async () => {
    const memory = new InMemorySpanExporter();
    const tracerProvider = provider({ resource: resourceFromAttributes({ 'service.name': 'json-test' }), spanProcessors: [new SimpleSpanProcessor({ exporter: memory })] });
    const tracer = tracerProvider.getTracer('json', '0.0.1');
    const linked = tracer.startSpan('other');
    linked.end();
    const parent = tracer.startSpan('parent', { kind: SpanKind.SERVER, attributes: { n: 7, big: 2 ** 40, f: 0.5, ok: true, list: [1, 2, 3], s: 'x' } });
    parent.addEvent('evt', { k: 'v' });
    parent.setStatus({ code: SpanStatusCode.ERROR, message: 'boom' });
    const child = tracer.startSpan('child', { kind: SpanKind.PRODUCER, links: [{ context: linked.spanContext() }] }, trace.setSpan(ROOT_CONTEXT, parent));
    child.end();
    parent.end();
    const finished = memory.getFinishedSpans();
    expect(finished).toHaveLength(3);

    const json = JsonTraceSerializer.serializeRequest(finished)!;
    const proto = ProtobufTraceSerializer.serializeRequest(finished)!;
    const post = (body: Uint8Array, type: string) => fetch(receiver.tracesUrl, { method: 'POST', headers: { 'content-type': type }, body });

    const jsonResponse = await post(json, 'application/json');
    expect(jsonResponse.status).toBe(200);
    expect(jsonResponse.headers.get('content-type')).toBe('application/json');
    expect(await jsonResponse.json()).toEqual({});
    const fromJson = receiver.spans();
    expect(fromJson).toHaveLength(3);

    const protoResponse = await post(proto, 'application/x-protobuf');
    expect(protoResponse.status).toBe(200);
    expect(protoResponse.headers.get('content-type')).toBe('application/x-protobuf');
    expect((await protoResponse.arrayBuffer()).byteLength).toBe(0); // an empty ExportTraceServiceResponse
    const fromProto = receiver.spans().slice(3);

    expect(fromJson).toEqual(fromProto);
    const c = fromJson.find((s) => s.name === 'child')!;
    expect(c).toMatchObject({ kind: 'PRODUCER', parentSpanId: parent.spanContext().spanId, links: [{ traceId: linked.spanContext().traceId, spanId: linked.spanContext().spanId }] });
    const p = fromJson.find((s) => s.name === 'parent')!;
    expect(p.attributes).toEqual({ n: 7, big: 2 ** 40, f: 0.5, ok: true, list: [1, 2, 3], s: 'x' });
    expect(p.status).toEqual({ code: 'ERROR', message: 'boom' });
    expect(p.events.map((e) => [e.name, e.attributes])).toEqual([['evt', { k: 'v' }]]);
  });
});

describe('a broken collector', () => {
  test('503: span.end() does not throw; forceFlush rejects after the exporter retried; the batch is dropped; later spans arrive once it heals', async () => {
    receiver.setFailWith(503);
    // timeoutMillis bounds the exporter's retries (1 s, 1.5 s, ... backoff); the default 10 s would retry ~4 times.
    const exporter = new OTLPTraceExporter({ url: receiver.tracesUrl, timeoutMillis: 2000 });
    const tracerProvider = provider({ spanProcessors: [new BatchSpanProcessor({ exporter })] });
    const tracer = tracerProvider.getTracer('broken');

    expect(() => tracer.startSpan('lost', { kind: SpanKind.SERVER }).end()).not.toThrow();
    const flushed = await tracerProvider.forceFlush().then(
      () => undefined,
      (err: unknown) => err,
    );
    // TracerProvider.forceFlush rejects with the array of its processors' errors.
    expect(Array.isArray(flushed)).toBe(true);
    const errors = flushed as Error[];
    expect(errors).toHaveLength(1);
    expect(errors[0]!.name).toBe('OTLPExporterError');
    expect(errors[0]!.message).toBe('Export failed with retryable status');
    expect(receiver.requests()).toBeGreaterThanOrEqual(2); // the first attempt and at least one retry
    expect(receiver.rawBodies().every((b) => b.includes('lost'))).toBe(true);
    expect(receiver.spans()).toEqual([]);

    receiver.setFailWith();
    tracer.startSpan('after', { kind: SpanKind.SERVER }).end();
    await tracerProvider.forceFlush();
    expect(receiver.spans().map((s) => s.name)).toEqual(['after']); // the refused batch is not sent again
  });

  test('400 is not retried: one request, forceFlush rejects with the status and the body', async () => {
    receiver.setFailWith(400);
    const exporter = new OTLPTraceExporter({ url: receiver.tracesUrl });
    const tracerProvider = provider({ spanProcessors: [new SimpleSpanProcessor({ exporter })] });
    tracerProvider.getTracer('broken').startSpan('refused').end();
    const flushed = await tracerProvider.forceFlush().then(
      () => undefined,
      (err: unknown) => err,
    );
    const errors = flushed as (Error & { code?: number; data?: string })[];
    expect(errors).toHaveLength(1);
    expect(errors[0]!.name).toBe('OTLPExporterError');
    expect(errors[0]!.code).toBe(400);
    expect(errors[0]!.data).toContain('refused with 400');
    expect(receiver.requests()).toBe(1);
    expect(receiver.spans()).toEqual([]);
  });

  test('startOtlpReceiver({ failWith }) refuses from the start; the exporter callback reports FAILED', async () => {
    const failing = await startOtlpReceiver({ failWith: 500 });
    try {
      const memory = new InMemorySpanExporter();
      provider({ spanProcessors: [new SimpleSpanProcessor({ exporter: memory })] }).getTracer('t').startSpan('s').end();
      const exporter = new OTLPTraceExporter({ url: failing.tracesUrl });
      const result = await new Promise<{ code: number; error?: Error }>((resolve) => exporter.export(memory.getFinishedSpans(), resolve));
      expect(result.code).toBe(1); // ExportResultCode.FAILED
      expect((result.error as Error & { code?: number }).code).toBe(500);
      expect(failing.requests()).toBe(1);
      await exporter.shutdown();
    } finally {
      await failing.close();
    }
  });
});

describe('the receiver itself', () => {
  test('refuses what is not an OTLP trace export', async () => {
    const post = (path: string, type: string, body: Uint8Array | string) => fetch(`${receiver.url}${path}`, { method: 'POST', headers: { 'content-type': type }, body });
    expect((await post('/v1/traces', 'text/plain', 'hello')).status).toBe(415);
    expect((await post('/v1/traces', 'application/x-protobuf', new Uint8Array([0x0a, 0xff, 0x01]))).status).toBe(400);
    expect((await post('/v1/traces', 'application/json', '{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"not-hex"}]}]}]}')).status).toBe(400);
    expect((await post('/v1/metrics', 'application/x-protobuf', new Uint8Array())).status).toBe(404);
    expect((await fetch(receiver.tracesUrl)).status).toBe(405);
    // An empty request is a valid ExportTraceServiceRequest with no spans.
    expect((await post('/v1/traces', 'application/x-protobuf', new Uint8Array())).status).toBe(200);
    expect(receiver.spans()).toEqual([]);
    expect(receiver.requests()).toBe(4);
  });

  test('waitForSpans rejects after its timeout, telling what did arrive', async () => {
    await expect(receiver.waitForSpans((spans) => spans.some((s) => s.name === 'never'), 200)).rejects.toThrow(/not satisfied after 200 ms; 0 requests, spans: none/);
  });
});
