/**
 * Tracing across a browser sign-in (DESIGN.md §9): the callback's SERVER span is linked to the start's, so
 * one journey through the provider reads as one story. A real provider with its login pages, the real
 * sidecar with OTEL_TRACES_EXPORTER=otlp, a real OTLP receiver.
 */
import { afterAll, beforeAll, expect, it } from 'vitest';
import { startOtlpReceiver, type OtlpReceiver } from '../support/otlp-receiver.js';
import { startSignInEnv, type SignInEnv } from '../support/signin-env.js';

let receiver: OtlpReceiver;
let env: SignInEnv;
const saved = { exporter: process.env['OTEL_TRACES_EXPORTER'], endpoint: process.env['OTEL_EXPORTER_OTLP_ENDPOINT'] };

beforeAll(async () => {
  receiver = await startOtlpReceiver();
  process.env['OTEL_TRACES_EXPORTER'] = 'otlp';
  process.env['OTEL_EXPORTER_OTLP_ENDPOINT'] = receiver.url;
  env = await startSignInEnv();
});

afterAll(async () => {
  await env?.close();
  for (const [name, value] of [['OTEL_TRACES_EXPORTER', saved.exporter], ['OTEL_EXPORTER_OTLP_ENDPOINT', saved.endpoint]] as const) {
    if (value === undefined) delete process.env[name];
    else process.env[name] = value;
  }
  await receiver?.close();
});

it("links the callback's span to the start's; the code exchange is a CLIENT span of the callback's trace", async () => {
  const browser = env.browser();
  const page = await env.signIn(browser, '/orders/5');
  expect(page.status).toBe(200);
  const spans = await receiver.waitForSpans((all) => all.some((s) => s.kind === 'SERVER' && s.attributes['url.path'] === '/.authz/callback'), 8_000);
  const start = spans.find((s) => s.kind === 'SERVER' && s.attributes['url.path'] === '/.authz/start');
  const callback = spans.find((s) => s.kind === 'SERVER' && s.attributes['url.path'] === '/.authz/callback');
  expect(start).toBeDefined();
  expect(callback?.links).toEqual([expect.objectContaining({ traceId: start?.traceId, spanId: start?.spanId })]);
  expect(callback?.attributes).toMatchObject({ 'authz.decision': 'signIn', 'authz.reason': 'SIGNIN_REDIRECT' });
  // The code exchange is a CLIENT span under the callback's sign-in stage, and the provider got its context.
  const stage = spans.find((s) => s.traceId === callback?.traceId && s.name === 'authz-sidecar.signin');
  expect(stage?.parentSpanId).toBe(callback?.spanId);
  const exchange = spans.find((s) => s.traceId === callback?.traceId && s.kind === 'CLIENT' && s.attributes['url.path'] === '/token');
  expect(exchange?.parentSpanId).toBe(stage?.spanId);
  expect(exchange?.attributes).toMatchObject({ 'http.request.method': 'POST', 'server.address': '127.0.0.1', 'http.response.status_code': 200 });
  // No session cookie, token or claim value in any span.
  const everything = Buffer.concat(receiver.rawBodies()).toString('latin1');
  const session = browser.cookies.all().find((c) => c.name === 'authz')?.value ?? 'missing';
  expect(everything).not.toContain(session.slice(0, 40));
  expect(everything).not.toContain('alice@example.test');
});
