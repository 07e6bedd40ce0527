/**
 * Every refusal the HTTP listeners of the real process (bin/authz-sidecar.js serve) can produce, on each of
 * them (proxy, HTTP ext_authz, forward-auth, admin), including those made below our own code (node's HTTP
 * parser, fastify's router, CONNECT, upgrades, the shutdown drain): each is application/problem+json, its
 * status line equals the body's `status`, and no body carries a stack trace. Requests go as raw bytes where
 * an HTTP client could not send them.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import { connect, type AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { rawRequest, rawSocketExchange, type RawResponse } from '../support/raw-http.js';
import { httpUrl, startServe, writeConfig, type ServeProcess } from '../support/serve.js';
import { EXAMPLE_MODEL, EXAMPLE_POLICY } from '../support/sidecar.js';

const ISSUER = 'https://idp.refusals.test';
const KEY = Buffer.from('0123456789abcdef').toString('base64');

type DoorName = 'proxy' | 'extAuthzHttp' | 'forwardAuth' | 'admin';
const DOORS: readonly DoorName[] = ['proxy', 'extAuthzHttp', 'forwardAuth', 'admin'];

let dir: string;
let app: Server;
let idp: Server;
/** Tokens the introspection endpoint was asked about, in order. */
const introspected: string[] = [];
let sidecar: ServeProcess | undefined;
const urls = {} as Record<DoorName, string>;

async function listen(server: Server): Promise<string> {
  await new Promise<void>((done) => server.listen(0, '127.0.0.1', done));
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
}

/**
 * An RFC 7662 introspection endpoint: `slow-*` tokens are answered after 2 s, `down` gets its connection
 * cut, `inactive` is not active, `writer-*` is alice with the writer role, any other alice with the reader
 * role.
 */
function startIntrospection(): Server {
  return createServer((req, res) => {
    let body = '';
    req.on('data', (c: Buffer) => (body += c.toString()));
    req.on('end', () => {
      const token = new URLSearchParams(body).get('token') ?? '';
      introspected.push(token);
      if (token === 'down') {
        req.socket.destroy();
        return;
      }
      const roles = token.startsWith('writer-') ? ['writer'] : ['reader'];
      const answer = token === 'inactive' ? { active: false } : { active: true, sub: 'alice', roles, exp: Math.floor(Date.now() / 1000) + 300 };
      const send = (): void => {
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end(JSON.stringify(answer));
      };
      if (token.startsWith('slow-')) setTimeout(send, 2_000);
      else send();
    });
  });
}

/**
 * The application: a path with `/broken/` cuts the connection (502), one with `/slow/` answers after 3 s
 * (504 with a 1 s upstream timeout), anything else 200; every WebSocket handshake is refused with a 403 (502 to the client).
 */
function startApp(): Server {
  const server = createServer((req, res) => {
    req.resume();
    req.on('end', () => {
      if (req.url?.includes('/broken/') === true) {
        req.socket.destroy();
        return;
      }
      const send = (): void => {
        if (res.destroyed) return;
        res.writeHead(200, { 'content-type': 'text/plain', 'content-length': '2' });
        res.end('ok');
      };
      if (req.url?.includes('/slow/') === true) setTimeout(send, 3_000);
      else send();
    });
  });
  server.on('upgrade', (_req, socket) => socket.end('HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\nconnection: close\r\n\r\n'));
  return server;
}

async function startSidecar(name: string): Promise<ServeProcess> {
  const config = await writeConfig(dir, name, {
    listen: '127.0.0.1:0',
    admin: { listen: '127.0.0.1:0' },
    upstream: { url: `http://127.0.0.1:${(app.address() as AddressInfo).port}`, timeoutSeconds: 1 },
    extAuthz: { http: { listen: '127.0.0.1:0' }, forwardAuth: { listen: '127.0.0.1:0' } },
    authn: {
      introspection: [
        {
          issuer: ISSUER,
          endpoint: `http://127.0.0.1:${(idp.address() as AddressInfo).port}/introspect`,
          clientId: 'sidecar',
          clientSecretFile: './secret',
          cacheSeconds: 0,
          timeoutSeconds: 5,
        },
      ],
    },
    authz: { model: EXAMPLE_MODEL, policy: EXAMPLE_POLICY },
    shutdown: { drainSeconds: 5 },
    logging: { level: 'info', decisions: 'none' },
  });
  return startServe({ config });
}

function urlsOf(s: ServeProcess): Record<DoorName, string> {
  return {
    proxy: httpUrl(s.addresses.proxy),
    extAuthzHttp: httpUrl(s.addresses.http),
    forwardAuth: httpUrl(s.addresses.forwardAuth),
    admin: s.adminUrl,
  };
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'authz-refusals-'));
  await writeFile(join(dir, 'secret'), 'introspection-secret-0123456789');
  app = startApp();
  idp = startIntrospection();
  await listen(app);
  await listen(idp);
  sidecar = await startSidecar('refusals');
  Object.assign(urls, urlsOf(sidecar));
});

afterAll(async () => {
  const code = await sidecar?.stop();
  app?.closeAllConnections();
  idp?.closeAllConnections();
  await Promise.all([app, idp].map((s) => new Promise((done) => (s === undefined ? done(undefined) : s.close(done)))));
  await rm(dir, { recursive: true, force: true });
  if (sidecar !== undefined) expect(code).toBe(0);
});

/** The request line and headers of a plain, allowed request to each door (anonymous GET /public/x; /healthz on admin). */
function base(door: DoorName, method = 'GET', path = '/public/x'): string[] {
  const host = `Host: ${new URL(urls[door]).host}`;
  switch (door) {
    case 'proxy':
    case 'extAuthzHttp':
      return [`${method} ${path} HTTP/1.1`, host];
    case 'forwardAuth':
      return [`${method} / HTTP/1.1`, host, `X-Forwarded-Method: ${method}`, `X-Forwarded-Uri: ${path}`];
    case 'admin':
      return [`${method} ${path === '/public/x' ? '/healthz' : path} HTTP/1.1`, host];
  }
}

/** A refusal as RFC 9457 problem details whose status matches the status line; returns the body. */
function expectProblem(res: RawResponse, status: number, what: string): Record<string, unknown> {
  expect({ what, status: res.status }).toEqual({ what, status });
  expect({ what, type: res.headers['content-type'] }).toEqual({ what, type: expect.stringMatching(/^application\/problem\+json/) as string });
  // The body is exactly as long as declared (a problem written straight to a socket included).
  expect({ what, length: Buffer.byteLength(res.body) }).toEqual({ what, length: Number(res.headers['content-length']) });
  const body = JSON.parse(res.body) as Record<string, unknown>;
  expect({ what, status: body['status'] }).toEqual({ what, status: res.status });
  expect(body).toMatchObject({ type: expect.stringMatching(/^urn:authz-sidecar:problem:[A-Z_]+$/) as string, title: expect.any(String) as string, detail: expect.any(String) as string });
  // No stack trace, no file name, no library error text.
  expect({ what, body: res.body }).not.toEqual({ what, body: expect.stringMatching(/\bat .+:\d+|node:internal|\.[cm]?js\b|\.ts\b|Error:|FST_/) as string });
  return body;
}

/**
 * A request with a body, sent byte for byte (rawRequest appends its Connection header after the lines, which
 * would land in the body): the head, `Connection: close`, then exactly `body`. Read until the server closes.
 */
async function rawWithBody(url: string, head: readonly string[], body: string): Promise<RawResponse> {
  const { hostname, port } = new URL(url);
  const bytes = [...head, `Content-Length: ${Buffer.byteLength(body)}`, 'Connection: close', '', body].join('\r\n');
  const all = responses(await rawSocketExchange(hostname, Number(port), bytes));
  const [first] = all;
  if (first === undefined || all.length !== 1) throw new Error(`expected one answer, got ${all.length}`);
  return first;
}

const manyFields = (n: number): string[] => Array.from({ length: n }, (_, i) => `h${i}: 1`);

describe('refusals made below the doors (parser, router, CONNECT), on every HTTP listener', () => {
  it.each(DOORS)('%s: a header section over 16 KiB is a 431', async (door) => {
    expectProblem(await rawRequest(urls[door], [...base(door), `X-Big: ${'a'.repeat(20_000)}`]), 431, door);
  });

  it.each(DOORS)('%s: 1000 header fields or more (within 16 KiB) are a 431', async (door) => {
    expectProblem(await rawRequest(urls[door], [...base(door), ...manyFields(1_100)]), 431, door);
  });

  it.each(DOORS)('%s: a garbage request line is a 400', async (door) => {
    expectProblem(await rawRequest(urls[door], ['HELLO THERE', 'Host: x']), 400, door);
  });

  it.each(DOORS)('%s: a header name with a space is a 400', async (door) => {
    expectProblem(await rawRequest(urls[door], [...base(door), 'Bad Header: 1']), 400, door);
  });

  it.each(DOORS)('%s: Content-Length with Transfer-Encoding is a 400', async (door) => {
    expectProblem(await rawRequest(urls[door], [...base(door, 'POST'), 'Content-Length: 3', 'Transfer-Encoding: chunked']), 400, door);
  });

  it.each(DOORS)('%s: CONNECT is a 400', async (door) => {
    expectProblem(await rawRequest(urls[door], ['CONNECT 127.0.0.1:22 HTTP/1.1', 'Host: 127.0.0.1:22']), 400, door);
  });

  // DESIGN §3: a target that is neither origin-form nor absolute-form is a 400 on every door (the admin
  // listener has no route for it: 404).
  it.each([
    ['proxy', 400],
    ['extAuthzHttp', 400],
    ['forwardAuth', 400],
    ['admin', 404],
  ] as const)('%s: the asterisk-form target (OPTIONS *) is a %i', async (door, status) => {
    const body = expectProblem(await rawRequest(urls[door], base(door, 'OPTIONS', '*')), status, door);
    if (status === 400) expect(body['code']).toBe('PATH_TARGET_FORM');
  });

  it.each(DOORS)('%s: an authority-form target on GET is a 400', async (door) => {
    expectProblem(await rawRequest(urls[door], ['GET example.com:80 HTTP/1.1', `Host: ${new URL(urls[door]).host}`]), 400, door);
  });

  it('a request that never finishes its headers is a 408 on every listener', async () => {
    // All four at once: each waits out the 10 s headers timeout.
    const trickle = (door: DoorName): Promise<RawResponse> =>
      new Promise((resolve, reject) => {
        const { hostname, port } = new URL(urls[door]);
        const socket = connect({ host: hostname, port: Number(port) });
        const chunks: Buffer[] = [];
        socket.on('connect', () => socket.write(`${base(door).join('\r\n')}\r\n`));
        socket.on('data', (c: Buffer) => chunks.push(c));
        socket.on('error', reject);
        socket.on('close', () => {
          const text = Buffer.concat(chunks).toString('utf8');
          const [head = '', body = ''] = text.split('\r\n\r\n');
          const [statusLine = '', ...lines] = head.split('\r\n');
          const headers = Object.fromEntries(lines.map((l) => [l.slice(0, l.indexOf(':')).toLowerCase(), l.slice(l.indexOf(':') + 1).trim()]));
          resolve({ status: Number(statusLine.split(' ')[1]), headers, body });
        });
      });
    const answers = await Promise.all(DOORS.map(trickle));
    answers.forEach((res, i) => expectProblem(res, 408, DOORS[i] ?? ''));
  }, 20_000);
});

describe('refusals of the doors themselves', () => {
  it('admin: an unknown path is a 404', async () => {
    expectProblem(await rawRequest(urls.admin, ['GET /nope HTTP/1.1', `Host: ${new URL(urls.admin).host}`]), 404, 'admin');
  });

  it('admin: /%zz (a URL the router cannot decode) is a 400', async () => {
    expectProblem(await rawRequest(urls.admin, ['GET /%zz HTTP/1.1', `Host: ${new URL(urls.admin).host}`]), 400, 'admin');
  });

  it('admin: an absolute-form target to an unknown path is a 404, never a 500', async () => {
    expectProblem(await rawRequest(urls.admin, ['GET http://evil.example/nope HTTP/1.1', `Host: ${new URL(urls.admin).host}`]), 404, 'admin');
  });

  it('admin: a POST with a broken JSON body is refused as problem+json, the body never parsed', async () => {
    const res = await rawWithBody(urls.admin, ['POST /readyz HTTP/1.1', `Host: ${new URL(urls.admin).host}`, 'Content-Type: application/json'], '{"broken');
    const body = expectProblem(res, 404, 'admin');
    expect(body['code']).toBe('NOT_FOUND');
  });

  it.each(['proxy', 'extAuthzHttp', 'forwardAuth'] as const)('%s: an invalid percent-encoding in the path is a 400', async (door) => {
    const body = expectProblem(await rawRequest(urls[door], base(door, 'GET', '/%zz')), 400, door);
    expect(body['code']).toBe('PATH_BAD_ENCODING');
  });

  // The proxy decides an absolute-form target on its path; the HTTP ext_authz door reads the path after
  // its prefix, where `http://evil.example/...` is not a canonical path.
  it.each([
    ['proxy', 401],
    ['extAuthzHttp', 400],
  ] as const)('%s: an absolute-form target to a protected path is refused (%i)', async (door, status) => {
    const host = `Host: ${new URL(urls[door]).host}`;
    expectProblem(await rawRequest(urls[door], ['GET http://evil.example/orders/1 HTTP/1.1', host]), status, door);
  });

  it('the check doors decide a POST with a broken JSON body and content-type application/json (never a 400 for the body)', async () => {
    const json = 'Content-Type: application/json';
    const broken = '{"broken';
    // HTTP ext_authz: the original request is a POST /public/x, which anonymous may not do.
    const denied = await rawWithBody(urls.extAuthzHttp, [...base('extAuthzHttp', 'POST'), json], broken);
    expect(expectProblem(denied, 401, 'extAuthzHttp')['code']).toBe('CREDENTIALS_MISSING');
    // A writer may POST /orders: 200, whatever the body.
    const allowed = await rawWithBody(urls.extAuthzHttp, [...base('extAuthzHttp', 'POST', '/orders'), 'Authorization: Bearer writer-1', json], broken);
    expect(allowed.status).toBe(200);
    // forward-auth: the check is a POST, the original request a GET /public/x (allowed) or GET /orders/1 (401).
    const fwdHost = `Host: ${new URL(urls.forwardAuth).host}`;
    const fwdAllowed = await rawWithBody(urls.forwardAuth, ['POST / HTTP/1.1', fwdHost, 'X-Forwarded-Method: GET', 'X-Forwarded-Uri: /public/x', json], broken);
    expect(fwdAllowed.status).toBe(200);
    const fwdDenied = await rawWithBody(urls.forwardAuth, ['POST / HTTP/1.1', fwdHost, 'X-Forwarded-Method: GET', 'X-Forwarded-Uri: /orders/1', json], broken);
    expectProblem(fwdDenied, 401, 'forwardAuth');
    // The proxy: a POST anonymous may not make.
    expectProblem(await rawWithBody(urls.proxy, [...base('proxy', 'POST'), json], broken), 401, 'proxy');
  });

  it.each(['extAuthzHttp', 'forwardAuth'] as const)('%s: a check declaring a body over 1 MiB is a 413', async (door) => {
    const res = await rawRequest(urls[door], [...base(door, 'POST'), 'Content-Type: application/octet-stream', `Content-Length: ${2 * 1024 * 1024}`]);
    expect(expectProblem(res, 413, door)['code']).toBe('BODY_TOO_LARGE');
  });

  it('proxy: a WebSocket upgrade without Sec-WebSocket-Key is a 400', async () => {
    const res = await rawRequest(urls.proxy, ['GET /public/ws HTTP/1.1', `Host: ${new URL(urls.proxy).host}`, 'Upgrade: websocket', 'Connection: Upgrade', 'Sec-WebSocket-Version: 13']);
    expectProblem(res, 400, 'proxy');
  });

  it('proxy: a WebSocket upgrade with a malformed Sec-WebSocket-Key is a 400', async () => {
    const res = await rawRequest(urls.proxy, ['GET /public/ws HTTP/1.1', `Host: ${new URL(urls.proxy).host}`, 'Upgrade: websocket', 'Connection: Upgrade', 'Sec-WebSocket-Key: short', 'Sec-WebSocket-Version: 13']);
    expectProblem(res, 400, 'proxy');
  });

  it('proxy: an h2c upgrade is a 400 (request smuggling past the proxy)', async () => {
    const res = await rawRequest(urls.proxy, ['GET /public/x HTTP/1.1', `Host: ${new URL(urls.proxy).host}`, 'Upgrade: h2c', 'Connection: Upgrade, HTTP2-Settings', 'HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA']);
    expectProblem(res, 400, 'proxy');
  });

  it('proxy: a denied WebSocket upgrade is the decision as problem+json (401)', async () => {
    const res = await rawRequest(urls.proxy, ['GET /orders/1 HTTP/1.1', `Host: ${new URL(urls.proxy).host}`, 'Upgrade: websocket', 'Connection: Upgrade', `Sec-WebSocket-Key: ${KEY}`, 'Sec-WebSocket-Version: 13']);
    expectProblem(res, 401, 'proxy');
  });

  it('proxy: an application that refuses the WebSocket handshake is a 502', async () => {
    const res = await rawRequest(urls.proxy, ['GET /public/ws HTTP/1.1', `Host: ${new URL(urls.proxy).host}`, 'Upgrade: websocket', 'Connection: Upgrade', `Sec-WebSocket-Key: ${KEY}`, 'Sec-WebSocket-Version: 13']);
    expect(expectProblem(res, 502, 'proxy')['code']).toBe('UPSTREAM_UNAVAILABLE');
  });

  it('proxy: an application that cuts the connection is a 502, one that does not answer in time a 504', async () => {
    expect(expectProblem(await rawRequest(urls.proxy, base('proxy', 'GET', '/public/broken/1')), 502, 'proxy')['code']).toBe('UPSTREAM_UNAVAILABLE');
    expect(expectProblem(await rawRequest(urls.proxy, base('proxy', 'GET', '/public/slow/1')), 504, 'proxy')['code']).toBe('UPSTREAM_TIMEOUT');
  });

  it.each(['proxy', 'extAuthzHttp', 'forwardAuth'] as const)('%s: decisions are problem+json too (400 path, 401, 403, 503 introspection down)', async (door) => {
    expect(expectProblem(await rawRequest(urls[door], base(door, 'GET', '/orders/1;x')), 400, door)['code']).toBe('PATH_SEMICOLON');
    expect(expectProblem(await rawRequest(urls[door], base(door, 'GET', '/orders/1')), 401, door)['code']).toBe('CREDENTIALS_MISSING');
    expect(expectProblem(await rawRequest(urls[door], [...base(door, 'GET', '/orders/1'), 'Authorization: Bearer inactive']), 401, door)['code']).toBe('TOKEN_INVALID');
    expect(expectProblem(await rawRequest(urls[door], [...base(door, 'DELETE', '/orders/1'), 'Authorization: Bearer reader-2']), 403, door)['code']).toBe('POLICY_DENIED');
    expect(expectProblem(await rawRequest(urls[door], [...base(door, 'GET', '/orders/1'), 'Authorization: Bearer down']), 503, door)['code']).toBe('INTROSPECTION_UNAVAILABLE');
  });
});

/** Parses every HTTP/1.1 response on a connection (each framed by content-length). */
function responses(text: string): RawResponse[] {
  const out: RawResponse[] = [];
  let rest = text;
  while (rest.startsWith('HTTP/1.1 ')) {
    const at = rest.indexOf('\r\n\r\n');
    if (at < 0) break;
    const [statusLine = '', ...lines] = rest.slice(0, at).split('\r\n');
    const headers = Object.fromEntries(lines.map((l) => [l.slice(0, l.indexOf(':')).toLowerCase(), l.slice(l.indexOf(':') + 1).trim()]));
    const length = Number(headers['content-length'] ?? 0);
    const body = Buffer.from(rest.slice(at + 4)).subarray(0, length).toString('utf8');
    out.push({ status: Number(statusLine.split(' ')[1]), headers, body });
    rest = Buffer.from(rest.slice(at + 4)).subarray(length).toString('utf8');
  }
  return out;
}

describe('the shutdown drain', () => {
  it('a request arriving on a busy connection during the drain is a 503 SHUTTING_DOWN on the proxy and both check doors', async () => {
    const draining = await startSidecar('drain');
    const doorUrls = urlsOf(draining);
    const doors = ['proxy', 'extAuthzHttp', 'forwardAuth'] as const;
    const before = introspected.length;
    try {
      const sockets = doors.map((door) => {
        const { hostname, port } = new URL(doorUrls[door]);
        const socket = connect({ host: hostname, port: Number(port) });
        const chunks: Buffer[] = [];
        socket.on('data', (c: Buffer) => chunks.push(c));
        socket.on('error', () => undefined);
        const closed = new Promise<string>((done) => socket.once('close', () => done(Buffer.concat(chunks).toString('utf8'))));
        const host = `Host: ${new URL(doorUrls[door]).host}`;
        const lines = (token: string): string[] =>
          door === 'forwardAuth'
            ? ['GET / HTTP/1.1', host, 'X-Forwarded-Method: GET', 'X-Forwarded-Uri: /orders/1', `Authorization: Bearer ${token}`]
            : ['GET /orders/1 HTTP/1.1', host, `Authorization: Bearer ${token}`];
        // In flight: its introspection takes 2 s.
        socket.write(`${lines(`slow-${door}`).join('\r\n')}\r\n\r\n`);
        return { door, socket, closed, second: () => socket.write(`${lines(`second-${door}`).join('\r\n')}\r\n\r\n`) };
      });
      const deadline = Date.now() + 5_000;
      while (introspected.slice(before).filter((t) => t.startsWith('slow-')).length < doors.length) {
        if (Date.now() > deadline) throw new Error('the checks did not reach the introspection endpoint');
        await new Promise((r) => setTimeout(r, 20));
      }
      draining.signal('SIGTERM');
      for (;;) {
        const status = await fetch(`${doorUrls.admin}/readyz`).then((r) => r.status, () => 0);
        if (status === 503) break;
        if (Date.now() > deadline) throw new Error('readiness did not turn 503');
        await new Promise((r) => setTimeout(r, 20));
      }
      for (const s of sockets) s.second();
      for (const s of sockets) {
        const answers = responses(await s.closed);
        expect({ door: s.door, statuses: answers.map((a) => a.status) }).toEqual({ door: s.door, statuses: [200, 503] });
        const refusal = answers[1];
        if (refusal === undefined) throw new Error('no second answer');
        expect(expectProblem(refusal, 503, s.door)['code']).toBe('SHUTTING_DOWN');
        expect(refusal.headers['connection']).toBe('close');
      }
      // The second requests were refused before their decision: never introspected.
      expect(introspected.slice(before).filter((t) => t.startsWith('second-'))).toEqual([]);
      expect((await draining.exit).code).toBe(0);
    } finally {
      await draining.stop();
    }
  }, 20_000);
});
