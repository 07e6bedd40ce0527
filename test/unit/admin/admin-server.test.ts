/**
 * The admin listener: /healthz, /readyz (200 or 503 with what is missing and the policy's SHA-256),
 * /metrics in the Prometheus text format, and every refusal as problem+json from the shared HTTP shell
 * (never fastify's own JSON error bodies).
 */
import { afterEach, describe, expect, it } from 'vitest';
import { createAdminDoor } from '../../../src/admin/admin-server.js';
import { createMetrics } from '../../../src/admin/metrics.js';
import type { Readiness } from '../../../src/core/decide.js';
import type { FrontDoor } from '../../../src/frontends/front-door.js';
import { header, problemOf, rawExchange, silentLogger } from '../frontends/fake-engine.js';

const doors: FrontDoor[] = [];
afterEach(async () => {
  await Promise.all(doors.splice(0).map((d) => d.close()));
});

async function startAdmin(readiness: Readiness = { ready: true, missing: [] }, withMetrics = false): Promise<string> {
  const door = createAdminDoor({
    readiness: () => readiness,
    policySha256: () => 'ab'.repeat(32),
    ...(withMetrics ? { metrics: createMetrics() } : {}),
    logger: silentLogger,
  });
  doors.push(door);
  return `http://${await door.listen('127.0.0.1:0')}`;
}

describe('admin listener', () => {
  it('answers /healthz 200', async () => {
    const url = await startAdmin({ ready: false, missing: ['policy'] });
    const res = await fetch(`${url}/healthz`);
    expect(res.status).toBe(200);
    expect(await res.json()).toEqual({ status: 'ok' });
  });

  it('answers /readyz 200 when ready, with the policy SHA-256', async () => {
    const url = await startAdmin();
    const res = await fetch(`${url}/readyz`);
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toMatch(/^application\/json/);
    expect(await res.json()).toEqual({ status: 'ready', missing: [], policySha256: 'ab'.repeat(32) });
  });

  it('answers /readyz 503 with what is missing', async () => {
    const missing = ['jwks:https://idp.example', 'door:proxy'];
    const url = await startAdmin({ ready: false, missing });
    const res = await fetch(`${url}/readyz`);
    expect(res.status).toBe(503);
    expect(await res.json()).toEqual({ status: 'not ready', missing, policySha256: 'ab'.repeat(32) });
  });

  it('serves /metrics in the Prometheus text format', async () => {
    const url = await startAdmin(undefined, true);
    const res = await fetch(`${url}/metrics`);
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toMatch(/^text\/plain; version=0\.0\.4/);
    const text = await res.text();
    expect(text).toContain('# TYPE authz_sidecar_requests_total counter');
    expect(text).toContain('authz_sidecar_decision_duration_seconds');
  });

  it('answers 404 problem+json for an unknown path (and /metrics when no metrics are configured)', async () => {
    const url = await startAdmin();
    for (const path of ['/nothing-here', '/metrics']) {
      const res = await fetch(`${url}${path}`, { headers: { 'x-request-id': 'adm-1' } });
      expect(res.status).toBe(404);
      expect(problemOf(res.status, res.headers.get('content-type'), await res.text())).toMatchObject({ code: 'NOT_FOUND', requestId: 'adm-1' });
    }
  });

  it("answers a URL the router cannot decode (/%zz) 400 problem+json, not fastify's FST_ERR_BAD_URL", async () => {
    const url = await startAdmin();
    const answer = await rawExchange(new URL(url).host, ['GET /%zz HTTP/1.1', 'Host: admin']);
    expect(answer.status).toBe(400);
    const problem = problemOf(answer.status, header(answer, 'content-type'), answer.body);
    expect(problem.code).toBe('BAD_REQUEST');
    expect(answer.body).not.toContain('FST_ERR');
  });

  it.each([
    ['broken JSON', 'application/json', '{"unterminated'],
    ['an unknown media type', 'application/x-unheard-of', 'bytes'],
  ])('answers a POST with %s as problem+json, never a FST_ERR_CTP_* body', async (_name, type, body) => {
    const url = await startAdmin();
    for (const path of ['/readyz', '/nothing-here']) {
      const res = await fetch(`${url}${path}`, { method: 'POST', headers: { 'content-type': type }, body });
      const text = await res.text();
      expect(res.status, path).toBe(404);
      expect(problemOf(res.status, res.headers.get('content-type'), text).code).toBe('NOT_FOUND');
      expect(text).not.toContain('FST_ERR');
    }
  });

  it('answers a garbage request line with a 400 problem', async () => {
    const url = await startAdmin();
    const answer = await rawExchange(new URL(url).host, ['NONSENSE', 'Host: admin']);
    expect(answer.status).toBe(400);
    problemOf(answer.status, header(answer, 'content-type'), answer.body);
  });
});
