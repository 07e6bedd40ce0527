/**
 * Envoy's HTTP ext_authz door: how a check request becomes the original request (pathPrefix stripped,
 * method and headers passed on), and how a Decision is answered (200 with the headers to set and
 * x-envoy-auth-headers-to-remove, or the deny itself). The engine is a fake that records the WireRequest.
 */
import pino from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { createExtAuthzHttpDoor } from '../../../src/frontends/ext-authz-http.js';
import type { FrontDoor } from '../../../src/frontends/front-door.js';
import { allow, deny, fakeEngine, header, problemOf, rawExchange, silentLogger, UUID, type FakeEngine } from './fake-engine.js';

const doors: FrontDoor[] = [];
afterEach(async () => {
  await Promise.all(doors.splice(0).map((d) => d.close()));
});

async function startDoor(engine: FakeEngine, pathPrefix = '/ext-authz'): Promise<string> {
  const door = createExtAuthzHttpDoor({ engine, logger: silentLogger, observe: () => {}, pathPrefix });
  doors.push(door);
  return door.listen('127.0.0.1:0');
}

describe('ext_authz HTTP door: the WireRequest', () => {
  it('strips the pathPrefix and passes method, target with its query, Host, headers and the request id', async () => {
    const engine = fakeEngine((w) => deny(w, 'POLICY_DENIED'));
    const address = await startDoor(engine);
    await rawExchange(address, ['DELETE /ext-authz/orders/42?expand=items&x=%2F HTTP/1.1', 'Host: shop.example', 'X-Request-Id: check-1', 'Authorization: Bearer t', 'X-Multi: a', 'X-Multi: b']);
    expect(engine.calls).toHaveLength(1);
    const wire = engine.calls[0];
    expect(wire).toMatchObject({
      frontDoor: 'extAuthzHttp',
      method: 'DELETE',
      target: '/orders/42?expand=items&x=%2F',
      host: 'shop.example',
      peer: '',
      requestId: 'check-1',
      rewritesPath: false,
      removesHeaders: true,
    });
    expect(wire?.headers['authorization']).toEqual(['Bearer t']);
    expect(wire?.headers['x-multi']).toEqual(['a', 'b']);
  });

  it('passes the original path as is when the prefix is empty, dot segments and all (the engine refuses them)', async () => {
    const engine = fakeEngine((w) => deny(w, 'PATH_NOT_CANONICAL'));
    const address = await startDoor(engine, '');
    await rawExchange(address, ['GET /orders/./42 HTTP/1.1', 'Host: shop.example']);
    expect(engine.calls[0]?.target).toBe('/orders/./42');
  });

  it('takes the prefix alone as the root path', async () => {
    const engine = fakeEngine((w) => deny(w, 'POLICY_DENIED'));
    const address = await startDoor(engine);
    await fetch(`http://${address}/ext-authz`);
    expect(engine.calls[0]?.target).toBe('/');
  });

  it('makes a new request id when the check has none', async () => {
    const engine = fakeEngine((w) => deny(w, 'POLICY_DENIED'));
    const address = await startDoor(engine);
    await fetch(`http://${address}/ext-authz/x`);
    expect(engine.calls[0]?.requestId).toMatch(UUID);
  });

  it('decides a check whatever its body and content type (Envoy may send a broken or partial body)', async () => {
    const engine = fakeEngine((w) => allow(w));
    const address = await startDoor(engine);
    const res = await fetch(`http://${address}/ext-authz/orders`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"truncated' });
    expect(res.status).toBe(200);
    expect(engine.calls[0]?.method).toBe('POST');
  });

  it('answers 400 problem+json without asking the engine when the path does not start with the prefix', async () => {
    const engine = fakeEngine();
    const address = await startDoor(engine);
    const res = await fetch(`http://${address}/orders/42`, { headers: { 'x-request-id': 'np-1' } });
    expect(res.status).toBe(400);
    expect(problemOf(res.status, res.headers.get('content-type'), await res.text())).toMatchObject({ code: 'BAD_REQUEST', requestId: 'np-1' });
    expect(engine.calls).toHaveLength(0);
  });
});

describe('ext_authz HTTP door: rendering the Decision', () => {
  it('answers an allow 200 with the headers to set and x-envoy-auth-headers-to-remove', async () => {
    const engine = fakeEngine((w) => allow(w, { set: { 'x-auth-subject': 'alice', 'x-auth-roles': 'reader' }, remove: ['authorization', 'x-auth-tenant', 'x-auth-scopes'] }));
    const address = await startDoor(engine);
    const res = await fetch(`http://${address}/ext-authz/orders/1`);
    expect(res.status).toBe(200);
    expect(res.headers.get('x-auth-subject')).toBe('alice');
    expect(res.headers.get('x-auth-roles')).toBe('reader');
    expect(res.headers.get('x-envoy-auth-headers-to-remove')).toBe('authorization,x-auth-tenant,x-auth-scopes');
    expect(await res.text()).toBe('');
  });

  it('sends no x-envoy-auth-headers-to-remove when nothing is to be removed', async () => {
    const engine = fakeEngine((w) => allow(w, { set: { 'x-auth-subject': 'alice' }, remove: [] }));
    const address = await startDoor(engine);
    const res = await fetch(`http://${address}/ext-authz/orders/1`);
    expect(res.status).toBe(200);
    expect(res.headers.has('x-envoy-auth-headers-to-remove')).toBe(false);
  });

  it("answers a deny with the decision's answer: status, headers and body", async () => {
    const engine = fakeEngine((w) => deny(w, 'TOKEN_EXPIRED', { 'www-authenticate': 'Bearer realm="authz-sidecar", error="invalid_token"' }));
    const address = await startDoor(engine);
    const res = await fetch(`http://${address}/ext-authz/orders/1`, { headers: { 'x-request-id': 'd-1' } });
    const expected = (await engine.answer(engine.calls[0]!)).answer;
    expect(res.status).toBe(expected.status);
    expect(res.headers.get('www-authenticate')).toBe(expected.headers['www-authenticate']);
    expect(res.headers.get('content-type')?.split(';')[0]).toBe('application/problem+json');
    expect(await res.text()).toBe(expected.body);
    expect(problemOf(res.status, res.headers.get('content-type'), expected.body)).toMatchObject({ code: 'TOKEN_EXPIRED', requestId: 'd-1' });
  });

  it.each(['CREDENTIALS_MISSING', 'POLICY_DENIED', 'INTROSPECTION_UNAVAILABLE', 'PATH_BACKSLASH'] as const)('a %s deny has a body whose status is the HTTP status', async (reason) => {
    const engine = fakeEngine((w) => deny(w, reason));
    const address = await startDoor(engine);
    const res = await fetch(`http://${address}/ext-authz/x`);
    expect(problemOf(res.status, res.headers.get('content-type'), await res.text()).code).toBe(reason);
  });

  it.each([
    ['a declared body over 1 MiB', ['POST /ext-authz/x HTTP/1.1', 'Host: x', 'Content-Length: 2000000'], 413],
    ['CONNECT', ['CONNECT shop.example:443 HTTP/1.1', 'Host: shop.example:443'], 400],
    ['a garbage request line', ['GARBAGE', 'Host: x'], 400],
  ] as const)('refuses %s with a problem whose body status is the HTTP status', async (_name, lines, status) => {
    const engine = fakeEngine();
    const address = await startDoor(engine);
    const answer = await rawExchange(address, lines);
    expect(answer.status).toBe(status);
    problemOf(answer.status, header(answer, 'content-type'), answer.body);
    expect(engine.calls).toHaveLength(0);
  });
});

describe('ext_authz HTTP door: an error once the answer began', () => {
  it('is logged with the request id, and the check gets a 500 problem instead of hanging', async () => {
    const lines: string[] = [];
    const logger = pino({ level: 'error' }, { write: (line: string) => lines.push(line) });
    // A header value node refuses to write (a line break): writeHead throws after the reply was hijacked.
    const engine = fakeEngine((w) => allow(w, { set: { 'x-user': 'a\r\nx-injected: 1' } }));
    const door = createExtAuthzHttpDoor({ engine, logger, observe: () => {}, pathPrefix: '/ext-authz' });
    doors.push(door);
    const address = await door.listen('127.0.0.1:0');
    const answer = await rawExchange(address, ['GET /ext-authz/orders/1 HTTP/1.1', 'Host: shop.example', 'X-Request-Id: broken-1']);
    expect(answer.status).toBe(500);
    expect(problemOf(answer.status, header(answer, 'content-type'), answer.body)).toMatchObject({ status: 500, code: 'INTERNAL', requestId: 'broken-1' });
    expect(answer.headers.map(([n]) => n)).not.toContain('x-injected');
    expect(lines.map((l) => JSON.parse(l) as { msg: string; requestId: string })).toEqual([expect.objectContaining({ msg: 'unexpected error after the answer began', requestId: 'broken-1' })]);
  });
});
