/**
 * The reverse-proxy door's translation: the HTTP request it hands to the engine, and how it renders the
 * Decision (the deny answer as is, or the request forwarded with the decision's changes through a real
 * Forwarder to a tiny local upstream). The engine is a fake that records the WireRequest.
 */
import { createServer, type IncomingHttpHeaders, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { FrontDoor } from '../../../src/frontends/front-door.js';
import { createProxyDoor } from '../../../src/frontends/proxy.js';
import { createForwarder } from '../../../src/upstream/forwarder.js';
import { allow, deny, fakeEngine, header, problemOf, rawExchange, silentLogger, UUID, type FakeEngine } from './fake-engine.js';

interface Seen {
  readonly method: string;
  readonly url: string;
  readonly headers: IncomingHttpHeaders;
}

let upstream: Server;
let upstreamOrigin: string;
const seen: Seen[] = [];

beforeAll(async () => {
  upstream = createServer((req, res) => {
    seen.push({ method: req.method ?? '', url: req.url ?? '', headers: req.headers });
    req.resume();
    req.on('end', () => {
      res.writeHead(201, { 'content-type': 'text/plain', 'x-from-upstream': 'yes' });
      res.end(`upstream saw ${req.url ?? ''}`);
    });
  });
  await new Promise<void>((resolve) => upstream.listen(0, '127.0.0.1', resolve));
  upstreamOrigin = `http://127.0.0.1:${(upstream.address() as AddressInfo).port}`;
});

afterAll(async () => {
  upstream.closeAllConnections();
  await new Promise<void>((resolve) => upstream.close(() => resolve()));
});

const doors: FrontDoor[] = [];
afterEach(async () => {
  seen.length = 0;
  await Promise.all(doors.splice(0).map((d) => d.close()));
});

async function startProxy(engine: FakeEngine, origin = upstreamOrigin, websockets = false): Promise<string> {
  const forwarder = createForwarder({ upstream: { kind: 'tcp', origin }, timeoutMs: 2_000, connections: 4 });
  const door = createProxyDoor({ engine, forwarder, websockets, logger: silentLogger, observe: () => {} });
  doors.push(door);
  return door.listen('127.0.0.1:0');
}

/** A loopback port nobody listens on (bound a moment ago, then closed). */
async function closedPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

describe('proxy door: the WireRequest', () => {
  it('hands the method, the raw target, Host, every header value and the client request id to the engine', async () => {
    const engine = fakeEngine((w) => deny(w, 'POLICY_DENIED'));
    const address = await startProxy(engine);
    await rawExchange(address, ['POST /orders/./42/../43?b=2&a=1 HTTP/1.1', 'Host: shop.example', 'X-Request-Id: req-42', 'X-Multi: one', 'X-Multi: two', 'Content-Length: 0']);
    expect(engine.calls).toHaveLength(1);
    const wire = engine.calls[0];
    expect(wire).toMatchObject({
      frontDoor: 'proxy',
      method: 'POST',
      target: '/orders/./42/../43?b=2&a=1',
      host: 'shop.example',
      peer: '',
      requestId: 'req-42',
      rewritesPath: true,
      removesHeaders: true,
    });
    expect(wire?.headers['x-multi']).toEqual(['one', 'two']);
    expect(wire?.headers['host']).toEqual(['shop.example']);
  });

  it('passes an absolute-form target as received (the engine reads its authority)', async () => {
    const engine = fakeEngine((w) => deny(w, 'POLICY_DENIED'));
    const address = await startProxy(engine);
    await rawExchange(address, ['GET http://shop.example/orders/1?x=1 HTTP/1.1', 'Host: other.example']);
    expect(engine.calls[0]).toMatchObject({ target: 'http://shop.example/orders/1?x=1', host: 'other.example' });
  });

  it.each([
    ['no x-request-id', []],
    ['an x-request-id that is not a sane token', ['X-Request-Id: has spaces and "quotes"']],
  ])('makes a new request id for %s', async (_name, lines) => {
    const engine = fakeEngine((w) => deny(w, 'POLICY_DENIED'));
    const address = await startProxy(engine);
    const answer = await rawExchange(address, ['GET /x HTTP/1.1', 'Host: shop.example', ...lines]);
    expect(engine.calls[0]?.requestId).toMatch(UUID);
    expect(JSON.parse(answer.body)).toMatchObject({ requestId: engine.calls[0]?.requestId });
  });
});

describe('proxy door: rendering a deny', () => {
  it("answers the decision's status, headers and body exactly, and forwards nothing", async () => {
    const engine = fakeEngine((w) => deny(w, 'CREDENTIALS_MISSING', { 'www-authenticate': 'Bearer realm="authz-sidecar"', 'set-cookie': 'sid=; Max-Age=0' }));
    const address = await startProxy(engine);
    const res = await fetch(`http://${address}/orders/1`, { headers: { 'x-request-id': 'deny-1' } });
    const expected = (await engine.answer(engine.calls[0]!)).answer;
    expect(res.status).toBe(401);
    expect(Object.keys(expected.headers).sort()).toEqual(['content-type', 'set-cookie', 'www-authenticate']);
    expect(res.headers.get('www-authenticate')).toBe(expected.headers['www-authenticate']);
    expect(res.headers.get('set-cookie')).toBe(expected.headers['set-cookie']);
    // fastify adds "; charset=utf-8" to a string body's type; the media type is the decision's.
    expect(res.headers.get('content-type')?.split(';')[0]).toBe(expected.headers['content-type']);
    expect(await res.text()).toBe(expected.body);
    expect(problemOf(res.status, res.headers.get('content-type'), expected.body)).toMatchObject({ code: 'CREDENTIALS_MISSING', requestId: 'deny-1' });
    expect(seen).toHaveLength(0);
  });

  it.each(['POLICY_DENIED', 'KEYS_UNAVAILABLE', 'PATH_NOT_CANONICAL'] as const)('renders a %s deny with a body whose status is the HTTP status', async (reason) => {
    const engine = fakeEngine((w) => deny(w, reason));
    const address = await startProxy(engine);
    const res = await fetch(`http://${address}/x`);
    expect(problemOf(res.status, res.headers.get('content-type'), await res.text()).code).toBe(reason);
    expect(seen).toHaveLength(0);
  });
});

describe('proxy door: rendering an allow', () => {
  it('forwards the canonical path and the upstream query, sets and removes the decided headers, drops hop-by-hop ones', async () => {
    const engine = fakeEngine((w) =>
      allow(
        w,
        { set: { 'x-auth-subject': 'alice', cookie: 'theme=dark' }, remove: ['authorization', 'x-auth-tenant'], query: 'keep=1', removeQuery: ['access_token'] },
        { path: '/orders/43', host: 'shop.example' },
      ),
    );
    const address = await startProxy(engine);
    const answer = await rawExchange(address, [
      'GET /orders/./42/../43?access_token=secret&keep=1 HTTP/1.1',
      'Host: shop.example',
      'X-Request-Id: fwd-1',
      'Authorization: Bearer secret',
      'X-Auth-Tenant: evil',
      'X-Auth-Subject: root',
      'Cookie: session=token; theme=dark',
      'Keep-Alive: timeout=5',
      'Proxy-Connection: keep-alive',
      'TE: trailers',
      'Trailer: x-checksum',
      'Connection: x-hop-one, X-Hop-Two',
      'X-Hop-One: 1',
      'X-Hop-Two: 2',
      'X-Keep: yes',
    ]);
    expect(answer.status).toBe(201);
    expect(answer.body).toBe('upstream saw /orders/43?keep=1');
    expect(header(answer, 'x-from-upstream')).toBe('yes');

    expect(seen).toHaveLength(1);
    const got = seen[0]!;
    expect(got.method).toBe('GET');
    expect(got.url).toBe('/orders/43?keep=1');
    expect(got.headers['x-auth-subject']).toBe('alice');
    expect(got.headers['cookie']).toBe('theme=dark');
    expect(got.headers['x-keep']).toBe('yes');
    expect(got.headers['x-request-id']).toBe('fwd-1');
    expect(got.headers['x-forwarded-host']).toBe('shop.example');
    expect(got.headers['host']).toBe(new URL(upstreamOrigin).host);
    for (const gone of ['authorization', 'x-auth-tenant', 'keep-alive', 'proxy-connection', 'te', 'trailer', 'x-hop-one', 'x-hop-two']) {
      expect(got.headers[gone], gone).toBeUndefined();
    }
    // The client's Connection header is not the upstream connection's.
    expect(got.headers['connection'] ?? 'keep-alive').toMatch(/keep-alive|close/);
    expect(got.headers['connection']).not.toMatch(/x-hop/i);
  });

  it('forwards the canonical path without "?" when the decision keeps no query', async () => {
    const engine = fakeEngine((w) => allow(w, { query: undefined }, { path: '/a/b', host: 'shop.example' }));
    const address = await startProxy(engine);
    const res = await fetch(`http://${address}/a/./b?access_token=x`);
    expect(res.status).toBe(201);
    expect(seen[0]?.url).toBe('/a/b');
  });

  it('sends a new request id upstream when the client sent none, the one the engine got', async () => {
    const engine = fakeEngine((w) => allow(w, {}, { host: 'shop.example' }));
    const address = await startProxy(engine);
    await fetch(`http://${address}/x`);
    expect(seen[0]?.headers['x-request-id']).toMatch(UUID);
    expect(seen[0]?.headers['x-request-id']).toBe(engine.calls[0]?.requestId);
  });

  it('sends the host the decision was made for (an absolute-form authority) as x-forwarded-host', async () => {
    const engine = fakeEngine((w) => allow(w, {}, { path: '/orders/1', host: 'shop.example' }));
    const address = await startProxy(engine);
    await rawExchange(address, ['GET http://shop.example/orders/1 HTTP/1.1', 'Host: other.example']);
    expect(seen[0]?.url).toBe('/orders/1');
    expect(seen[0]?.headers['x-forwarded-host']).toBe('shop.example');
  });

  it('answers 502 problem+json when the application is not reachable', async () => {
    const engine = fakeEngine((w) => allow(w, {}, { host: 'shop.example' }));
    const address = await startProxy(engine, `http://127.0.0.1:${await closedPort()}`);
    const res = await fetch(`http://${address}/x`, { headers: { 'x-request-id': 'down-1' } });
    expect(res.status).toBe(502);
    expect(problemOf(res.status, res.headers.get('content-type'), await res.text())).toMatchObject({ code: 'UPSTREAM_UNAVAILABLE', requestId: 'down-1' });
  });
});

describe("proxy door: the shell's own refusals are problems whose body status is the HTTP status", () => {
  it.each([
    ['CONNECT', ['CONNECT shop.example:443 HTTP/1.1', 'Host: shop.example:443'], 400],
    ['a garbage request line', ['NOT HTTP AT ALL', 'Host: x'], 400],
    ['a header section over 16 KiB', ['GET /x HTTP/1.1', 'Host: x', `X-Big: ${'a'.repeat(17 * 1024)}`], 431],
    ['too many header fields', ['GET /x HTTP/1.1', 'Host: x', ...Array.from({ length: 1000 }, (_, i) => `X-H${i}: ${i}`)], 431],
  ] as const)('%s', async (_name, lines, status) => {
    const engine = fakeEngine();
    const address = await startProxy(engine);
    const answer = await rawExchange(address, lines);
    expect(answer.status).toBe(status);
    problemOf(answer.status, header(answer, 'content-type'), answer.body);
    expect(engine.calls).toHaveLength(0);
    expect(seen).toHaveLength(0);
  });

  it('an upgrade that is not a WebSocket handshake (h2c) is refused before the decision', async () => {
    const engine = fakeEngine();
    const address = await startProxy(engine, upstreamOrigin, true);
    const answer = await rawExchange(address, ['GET /x HTTP/1.1', 'Host: x', 'Connection: Upgrade, HTTP2-Settings', 'Upgrade: h2c', 'HTTP2-Settings: AAMAAABkAAQAAP__'], { close: false });
    expect(answer.status).toBe(400);
    expect(problemOf(answer.status, header(answer, 'content-type'), answer.body).code).toBe('BAD_REQUEST');
    expect(engine.calls).toHaveLength(0);
  });
});

describe('proxy door: fixes from the security review', () => {
  const HANDSHAKE = ['Upgrade: websocket', 'Connection: Upgrade', 'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==', 'Sec-WebSocket-Version: 13'];

  it('a 101 from the app that is not a WebSocket handshake for this key is a 502, never a joined tunnel (WebSocket smuggling)', async () => {
    // An app route that says 101 and keeps parsing HTTP on the same connection.
    const smuggled: string[] = [];
    const sockets: Array<{ destroy(): void }> = [];
    const app = createServer();
    app.on('upgrade', (_req, socket) => {
      sockets.push(socket);
      socket.write('HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n');
      socket.on('data', (d: Buffer) => smuggled.push(d.toString('latin1')));
    });
    await new Promise<void>((resolve) => app.listen(0, '127.0.0.1', resolve));
    try {
      const engine = fakeEngine((w) => allow(w));
      const address = await startProxy(engine, `http://127.0.0.1:${(app.address() as AddressInfo).port}`, true);
      const smuggle = 'DELETE /admin/secret HTTP/1.1\r\nHost: h\r\nX-Auth-Subject: root\r\n\r\n';
      const answer = await rawExchange(address, ['GET /ws/fake101 HTTP/1.1', 'Host: h', ...HANDSHAKE], { close: false, body: smuggle });
      expect(answer.status).toBe(502);
      expect(problemOf(answer.status, header(answer, 'content-type'), answer.body).code).toBe('UPSTREAM_UNAVAILABLE');
      await new Promise((r) => setTimeout(r, 100));
      expect(smuggled.join('')).not.toContain('DELETE /admin/secret');
    } finally {
      // Upgraded sockets are no longer the HTTP server's: closeAllConnections does not reach them.
      for (const socket of sockets) socket.destroy();
      app.closeAllConnections();
      await new Promise<void>((resolve) => app.close(() => resolve()));
    }
  });

  it("the client's own X-Forwarded-Host never reaches the app, even when no host was decided", async () => {
    const engine = fakeEngine((w) => allow(w, {}, { host: '' }));
    const address = await startProxy(engine);
    await rawExchange(address, ['GET /x HTTP/1.0', 'X-Forwarded-Host: admin.internal']);
    expect(seen).toHaveLength(1);
    expect(seen[0]?.headers['x-forwarded-host']).toBeUndefined();
  });
});
