/**
 * Tracing's sampler and decision log (DESIGN.md §9), in a process of its own (the OpenTelemetry API keeps
 * one global tracer provider per process): with `parentbased_traceidratio` at 0 nothing of a new trace is
 * exported, but a request whose parent was sampled is; the decision log line of a sampled request carries
 * the exported SERVER span's trace_id and span_id, and an unsampled one carries none.
 */
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { pino } from 'pino';
import { stringify } from 'yaml';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { loadConfig } from '../../src/config/load.js';
import { startSidecar, type RunningSidecar } from '../../src/sidecar.js';
import { startOtlpReceiver, type OtlpReceiver } from '../support/otlp-receiver.js';
import { EXAMPLE_MODEL, EXAMPLE_POLICY } from '../support/sidecar.js';
import { startRecordingUpstream, type RecordingUpstream } from '../support/upstream.js';

let receiver: OtlpReceiver;
let upstream: RecordingUpstream;
let sidecar: RunningSidecar;
let dir: string;
const lines: Array<Record<string, unknown>> = [];

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'authz-sampler-'));
  receiver = await startOtlpReceiver();
  upstream = await startRecordingUpstream();
  const file = join(dir, 'config.yaml');
  await writeFile(
    file,
    stringify({
      listen: '127.0.0.1:0',
      admin: { listen: '127.0.0.1:0' },
      upstream: { url: upstream.url },
      authz: { model: EXAMPLE_MODEL, policy: EXAMPLE_POLICY },
      logging: { level: 'info', decisions: 'all' },
    }),
  );
  const sink = new Writable({
    write(chunk: Buffer, _encoding, done) {
      for (const line of chunk.toString('utf8').split('\n')) if (line.trim() !== '') lines.push(JSON.parse(line) as Record<string, unknown>);
      done();
    },
  });
  const env = { ...process.env, OTEL_TRACES_EXPORTER: 'otlp', OTEL_TRACES_SAMPLER: 'parentbased_traceidratio', OTEL_TRACES_SAMPLER_ARG: '0' };
  // The exporter reads its endpoint from the process environment.
  process.env['OTEL_EXPORTER_OTLP_ENDPOINT'] = receiver.url;
  sidecar = await startSidecar(await loadConfig(file), { file, env, logger: pino({ level: 'info' }, sink) });
});

afterAll(async () => {
  await sidecar?.close();
  delete process.env['OTEL_EXPORTER_OTLP_ENDPOINT'];
  await upstream?.close();
  await receiver?.close();
  await rm(dir, { recursive: true, force: true });
});

const decisionOf = (path: string): Record<string, unknown> | undefined =>
  lines.map((l) => l['decision'] as Record<string, unknown> | undefined).find((d) => d?.['path'] === path);

it('exports nothing of a new trace at ratio 0, but exports a request whose parent was sampled, with its ids in the decision log', async () => {
  const url = `http://${sidecar.proxyAddress ?? ''}`;
  expect((await fetch(`${url}/public/unsampled`)).status).toBe(200);
  const traceId = randomBytes(16).toString('hex');
  const parent = randomBytes(8).toString('hex');
  expect((await fetch(`${url}/public/sampled`, { headers: { traceparent: `00-${traceId}-${parent}-01` } })).status).toBe(200);
  const spans = await receiver.waitForSpans((all) => all.some((s) => s.traceId === traceId && s.kind === 'SERVER'), 8_000);
  const server = spans.find((s) => s.traceId === traceId && s.kind === 'SERVER');
  expect(server?.parentSpanId).toBe(parent);
  // Only the sampled trace was exported.
  expect(new Set(receiver.spans().map((s) => s.traceId))).toEqual(new Set([traceId]));
  expect(decisionOf('/public/sampled')).toMatchObject({ trace_id: traceId, span_id: server?.spanId });
  const unsampled = decisionOf('/public/unsampled');
  expect(unsampled).toBeDefined();
  expect(unsampled?.['trace_id']).toBeUndefined();
});
