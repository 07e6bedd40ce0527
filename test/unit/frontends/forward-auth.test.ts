/**
 * The forward-auth door (nginx auth_request, Traefik ForwardAuth, Caddy forward_auth): how the original
 * request is read from exactly one family of headers (X-Forwarded-* or X-Original-*), and how a Decision
 * is answered (200 with the headers to set, or the deny itself). The engine is a fake that records the
 * WireRequest.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { createForwardAuthDoor } from '../../../src/frontends/forward-auth.js';
import type { FrontDoor } from '../../../src/frontends/front-door.js';
import { allow, deny, fakeEngine, header, problemOf, rawExchange, silentLogger, UUID, type FakeEngine } from './fake-engine.js';

const doors: FrontDoor[] = [];
afterEach(async () => {
  await Promise.all(doors.splice(0).map((d) => d.close()));
});

async function startDoor(engine: FakeEngine): Promise<string> {
  const door = createForwardAuthDoor({ engine, logger: silentLogger, observe: () => {} });
  doors.push(door);
  return door.listen('127.0.0.1:0');
}

describe('forward-auth door: the WireRequest', () => {
  it('reads Traefik/Caddy X-Forwarded-Method, -Uri and -Host', async () => {
    const engine = fakeEngine((w) => deny(w, 'POLICY_DENIED'));
    const address = await startDoor(engine);
    await rawExchange(address, [
      'GET /auth HTTP/1.1',
      'Host: sidecar.internal',
      'X-Forwarded-Method: PUT',
      'X-Forwarded-Uri: /orders/42?x=1',
      'X-Forwarded-Host: shop.example',
      'X-Request-Id: fa-1',
      'Authorization: Bearer t',
    ]);
    expect(engine.calls).toHaveLength(1);
    const wire = engine.calls[0];
    expect(wire).toMatchObject({
      frontDoor: 'forwardAuth',
      method: 'PUT',
      target: '/orders/42?x=1',
      host: 'shop.example',
      peer: '',
      requestId: 'fa-1',
      rewritesPath: false,
      removesHeaders: false,
    });
    expect(wire?.headers['authorization']).toEqual(['Bearer t']);
  });

  it('reads nginx X-Original-Method and X-Original-URI, with the host from Host', async () => {
    const engine = fakeEngine((w) => deny(w, 'POLICY_DENIED'));
    const address = await startDoor(engine);
    await rawExchange(address, ['GET /auth HTTP/1.1', 'Host: shop.example', 'X-Original-Method: POST', 'X-Original-URI: /orders?page=2']);
    expect(engine.calls[0]).toMatchObject({ method: 'POST', target: '/orders?page=2', host: 'shop.example', removesHeaders: false, rewritesPath: false });
  });

  it("with nginx's X-Original-* family, a client's X-Forwarded-Host (nginx passes it along) does not pick the host", async () => {
    const engine = fakeEngine((w) => deny(w, 'POLICY_DENIED'));
    const address = await startDoor(engine);
    await rawExchange(address, ['GET /auth HTTP/1.1', 'Host: shop.example', 'X-Original-Method: GET', 'X-Original-URI: /x', 'X-Forwarded-Host: admin.internal']);
    expect(engine.calls[0]).toMatchObject({ host: 'shop.example' });
  });

  it('makes a new request id when the check has none', async () => {
    const engine = fakeEngine((w) => deny(w, 'POLICY_DENIED'));
    const address = await startDoor(engine);
    await fetch(`http://${address}/auth`, { headers: { 'x-forwarded-method': 'GET', 'x-forwarded-uri': '/x' } });
    expect(engine.calls[0]?.requestId).toMatch(UUID);
  });

  it.each([
    ['both header families', ['X-Forwarded-Method: GET', 'X-Forwarded-Uri: /public', 'X-Original-Method: GET', 'X-Original-URI: /admin']],
    ['a repeated X-Forwarded-Uri', ['X-Forwarded-Method: GET', 'X-Forwarded-Uri: /public', 'X-Forwarded-Uri: /admin']],
    ['a repeated X-Original-Method', ['X-Original-Method: GET', 'X-Original-Method: DELETE', 'X-Original-URI: /x']],
    // src/frontends/forward-auth.ts: `single('x-forwarded-host') ?? single('host')` turns the null of a
    // repeated X-Forwarded-Host into a fallback to Host, so the check is decided for the check request's
    // own Host instead of being refused.
    ['a repeated X-Forwarded-Host', ['X-Forwarded-Method: GET', 'X-Forwarded-Uri: /x', 'X-Forwarded-Host: a.example', 'X-Forwarded-Host: b.example']],
    ['a repeated Host (nginx: the original host)', ['X-Original-Method: GET', 'X-Original-URI: /x', 'Host: b.example']],
    ['no original method', ['X-Forwarded-Uri: /x']],
    ['no original URI', ['X-Original-Method: GET']],
    ['neither family', []],
  ])('answers 400 problem+json without asking the engine for %s', async (_name, lines) => {
    const engine = fakeEngine();
    const address = await startDoor(engine);
    const answer = await rawExchange(address, ['GET /auth HTTP/1.1', 'Host: shop.example', 'X-Request-Id: bad-1', ...lines]);
    expect(answer.status).toBe(400);
    expect(problemOf(answer.status, header(answer, 'content-type'), answer.body)).toMatchObject({ code: 'BAD_REQUEST', requestId: 'bad-1' });
    expect(engine.calls).toHaveLength(0);
  });
});

describe('forward-auth door: rendering the Decision', () => {
  it('answers an allow 200 with the headers to set, and no removal header (the proxy cannot be told)', async () => {
    const engine = fakeEngine((w) => allow(w, { set: { 'x-auth-subject': 'alice', 'x-auth-roles': 'reader,writer' }, remove: ['x-auth-tenant'] }));
    const address = await startDoor(engine);
    const res = await fetch(`http://${address}/auth`, { headers: { 'x-forwarded-method': 'GET', 'x-forwarded-uri': '/orders/1' } });
    expect(res.status).toBe(200);
    expect(res.headers.get('x-auth-subject')).toBe('alice');
    expect(res.headers.get('x-auth-roles')).toBe('reader,writer');
    expect(res.headers.has('x-envoy-auth-headers-to-remove')).toBe(false);
    expect(await res.text()).toBe('');
  });

  it("answers a deny with the decision's answer: status, headers and body", async () => {
    const engine = fakeEngine((w) => deny(w, 'CREDENTIALS_MISSING', { 'www-authenticate': 'Bearer realm="authz-sidecar"' }));
    const address = await startDoor(engine);
    const res = await fetch(`http://${address}/auth`, { headers: { 'x-original-method': 'GET', 'x-original-uri': '/orders/1', 'x-request-id': 'd-2' } });
    const expected = (await engine.answer(engine.calls[0]!)).answer;
    expect(res.status).toBe(401);
    expect(res.headers.get('www-authenticate')).toBe('Bearer realm="authz-sidecar"');
    expect(res.headers.get('content-type')?.split(';')[0]).toBe('application/problem+json');
    expect(await res.text()).toBe(expected.body);
    expect(problemOf(res.status, res.headers.get('content-type'), expected.body)).toMatchObject({ code: 'CREDENTIALS_MISSING', requestId: 'd-2' });
  });

  it.each(['POLICY_DENIED', 'KEYS_UNAVAILABLE', 'BAD_REQUEST'] as const)('a %s deny has a body whose status is the HTTP status', async (reason) => {
    const engine = fakeEngine((w) => deny(w, reason));
    const address = await startDoor(engine);
    const res = await fetch(`http://${address}/auth`, { headers: { 'x-forwarded-method': 'GET', 'x-forwarded-uri': '/x' } });
    expect(problemOf(res.status, res.headers.get('content-type'), await res.text()).code).toBe(reason);
  });

  it('refuses a declared body over 1 MiB with 413 problem+json', async () => {
    const engine = fakeEngine();
    const address = await startDoor(engine);
    const answer = await rawExchange(address, ['POST /auth HTTP/1.1', 'Host: x', 'X-Forwarded-Method: GET', 'X-Forwarded-Uri: /x', 'Content-Length: 2000000']);
    expect(answer.status).toBe(413);
    expect(problemOf(answer.status, header(answer, 'content-type'), answer.body).code).toBe('BODY_TOO_LARGE');
    expect(engine.calls).toHaveLength(0);
  });
});
