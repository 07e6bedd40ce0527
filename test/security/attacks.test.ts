/**
 * The attack suite: the real sidecar process (bin/authz-sidecar.js serve) on loopback, attacked from
 * outside with raw bytes over a socket wherever an HTTP client would normalize the request. Each case names
 * the attack and its source; the rule for path cases is "either 400, or the decision was made on the
 * canonical path and the upstream saw exactly that path". The path and header tables run through two
 * transports, plain HTTP and WebSocket upgrades, with the same answers (101 where HTTP gets 200).
 */
import { createHmac, KeyObject as NodeKeyObject, sign as nodeSign } from 'node:crypto';
import { createServer } from 'node:http';
import { connect, type AddressInfo } from 'node:net';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { CompactSign, exportJWK, exportSPKI, generateKeyPair, SignJWT, type JWK, type KeyObject } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { rawRequest, type RawResponse } from '../support/raw-http.js';
import { httpUrl, startServe, writeConfig, type ServeProcess } from '../support/serve.js';
import { EXAMPLE_MODEL, EXAMPLE_POLICY } from '../support/sidecar.js';
import { startRecordingUpstream, type Recorded, type RecordingUpstream } from '../support/upstream.js';

const ISSUER = 'https://idp.test';
const AUD = 'orders-api';

let dir: string;
let upstream: RecordingUpstream;
let sidecar: ServeProcess | undefined;
let url: string;
let host: string;
let rsa: { privateKey: KeyObject; publicKey: KeyObject; jwk: JWK };
let ec: { privateKey: KeyObject; jwk: JWK };
let attackerFetches = 0;
let attackerUrl: string;
let checkHttpUrl: string;
let grpcAddress: string;
let forwardUrl: string;
/** A token for alice (role reader), accepted everywhere. */
let validToken: string;
const closeAttacker: Array<() => void> = [];

const b64 = (o: unknown): string => Buffer.from(typeof o === 'string' ? o : JSON.stringify(o)).toString('base64url');
const now = (): number => Math.floor(Date.now() / 1000);
const claims = (over: Record<string, unknown> = {}): Record<string, unknown> => ({ iss: ISSUER, aud: AUD, sub: 'alice', roles: ['reader'], iat: now(), exp: now() + 300, ...over });

async function rs256(payload: Record<string, unknown>, header: Record<string, unknown> = {}): Promise<string> {
  return new CompactSign(Buffer.from(JSON.stringify(payload))).setProtectedHeader({ alg: 'RS256', kid: 'rsa-1', ...header }).sign(rsa.privateKey);
}

/** RS256 over any header, including ones jose refuses to produce (unknown crit, b64: false). */
function rs256Raw(header: Record<string, unknown>, payloadSegment: string, signingPayload = payloadSegment): string {
  const protectedPart = b64(header);
  const key = NodeKeyObject.from(rsa.privateKey as unknown as Parameters<typeof NodeKeyObject.from>[0]);
  const signature = nodeSign('sha256', Buffer.from(`${protectedPart}.${signingPayload}`), key).toString('base64url');
  return `${protectedPart}.${payloadSegment}.${signature}`;
}

function last(): Recorded | undefined {
  return upstream.requests.at(-1);
}

async function send(lines: string[]): Promise<{ status: number; body: string; upstreamCount: number }> {
  const before = upstream.requests.length;
  const res = await rawRequest(url, lines);
  return { status: res.status, body: res.body, upstreamCount: upstream.requests.length - before };
}

async function withToken(token: string, method = 'GET', path = '/orders/1'): Promise<{ status: number; upstreamCount: number }> {
  return send([`${method} ${path} HTTP/1.1`, `Host: ${host}`, `Authorization: Bearer ${token}`]);
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'authz-attacks-'));
  const r = await generateKeyPair('RS256', { extractable: true });
  rsa = { privateKey: r.privateKey, publicKey: r.publicKey, jwk: { ...(await exportJWK(r.publicKey)), kid: 'rsa-1', alg: 'RS256', use: 'sig' } };
  const e = await generateKeyPair('ES256', { extractable: true });
  ec = { privateKey: e.privateKey, jwk: { ...(await exportJWK(e.publicKey)), kid: 'ec-1', alg: 'ES256', use: 'sig' } };
  await writeFile(join(dir, 'jwks.json'), JSON.stringify({ keys: [rsa.jwk, ec.jwk] }));

  // An attacker's key server: any fetch of it means a token header made us reach out.
  const attacker = createServer((_req, res) => {
    attackerFetches++;
    res.end(JSON.stringify({ keys: [] }));
  });
  await new Promise<void>((done) => attacker.listen(0, '127.0.0.1', done));
  attackerUrl = `http://127.0.0.1:${(attacker.address() as AddressInfo).port}`;
  closeAttacker.push(() => attacker.close());

  upstream = await startRecordingUpstream();
  const config = await writeConfig(dir, 'config', {
    listen: '127.0.0.1:0',
    admin: { listen: '127.0.0.1:0' },
    upstream: { url: upstream.url, timeoutSeconds: 5 },
    extAuthz: {
      http: { listen: '127.0.0.1:0', pathPrefix: '/check' },
      forwardAuth: { listen: '127.0.0.1:0' },
      grpc: { listen: '127.0.0.1:0' },
    },
    authn: { jwt: [{ issuer: ISSUER, audiences: [AUD], jwksFile: './jwks.json', algorithms: ['RS256', 'ES256'], clockSkewSeconds: 30 }] },
    authz: { model: EXAMPLE_MODEL, policy: EXAMPLE_POLICY },
    // info: the helper reads the bound addresses from the listening line.
    logging: { level: 'info', decisions: 'none' },
  });
  sidecar = await startServe({ config });
  url = httpUrl(sidecar.addresses.proxy);
  host = new URL(url).host;
  checkHttpUrl = httpUrl(sidecar.addresses.http);
  forwardUrl = httpUrl(sidecar.addresses.forwardAuth);
  grpcAddress = sidecar.addresses.grpc ?? '';
  validToken = await rs256(claims());
});

afterAll(async () => {
  const code = await sidecar?.stop();
  for (const c of closeAttacker) c();
  await upstream?.close();
  await rm(dir, { recursive: true, force: true });
  if (sidecar !== undefined) expect(code).toBe(0);
});

describe('tokens (RFC 8725, OWASP JWT cheat sheet)', () => {
  it('a valid token is accepted (the baseline every attack below is compared with)', async () => {
    expect((await withToken(await rs256(claims()))).status).toBe(200);
    // The hand-made signer used for headers jose refuses to produce makes valid tokens too.
    expect((await withToken(rs256Raw({ alg: 'RS256', kid: 'rsa-1' }, b64(claims())))).status).toBe(200);
  });

  const attacks: Array<[attack: string, source: string, token: () => Promise<string>]> = [
    ['alg "none"', 'RFC 8725 §3.1, CVE-2015-9235', async () => `${b64({ alg: 'none', typ: 'JWT' })}.${b64(claims())}.`],
    ['alg "None"', 'RFC 8725 §3.1', async () => `${b64({ alg: 'None' })}.${b64(claims())}.`],
    ['alg "NONE" with a signature', 'RFC 8725 §3.1', async () => `${b64({ alg: 'NONE' })}.${b64(claims())}.c2ln`],
    ['HS256 signed with the RSA public key as the secret', 'RFC 8725 §2.1, CVE-2016-10555', async () => {
      const pem = await exportSPKI(rsa.publicKey);
      const input = `${b64({ alg: 'HS256', kid: 'rsa-1' })}.${b64(claims())}`;
      return `${input}.${createHmac('sha256', pem).update(input).digest('base64url')}`;
    }],
    ['embedded jwk of the attacker', 'CVE-2018-0114', async () => {
      const k = await generateKeyPair('RS256', { extractable: true });
      return new SignJWT(claims()).setProtectedHeader({ alg: 'RS256', jwk: await exportJWK(k.publicKey) }).sign(k.privateKey);
    }],
    ['jku pointing at the attacker', 'RFC 8725 §3.10', async () => {
      const k = await generateKeyPair('RS256');
      return new SignJWT(claims()).setProtectedHeader({ alg: 'RS256', kid: 'x', jku: `${attackerUrl}/jwks` }).sign(k.privateKey);
    }],
    ['x5u pointing at the attacker', 'RFC 8725 §3.10', async () => {
      const k = await generateKeyPair('RS256');
      return new SignJWT(claims()).setProtectedHeader({ alg: 'RS256', kid: 'x', x5u: `${attackerUrl}/cert` }).sign(k.privateKey);
    }],
    ['x5c with the attacker certificate', 'RFC 8725 §3.10', async () => {
      const k = await generateKeyPair('RS256');
      return new SignJWT(claims()).setProtectedHeader({ alg: 'RS256', x5c: ['MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA'] }).sign(k.privateKey);
    }],
    ['hostile kid (path traversal)', 'OWASP JWT cheat sheet', async () => {
      const k = await generateKeyPair('RS256');
      return new SignJWT(claims()).setProtectedHeader({ alg: 'RS256', kid: '../../../../dev/null' }).sign(k.privateKey);
    }],
    ['hostile kid (SQL)', 'OWASP JWT cheat sheet', async () => {
      const k = await generateKeyPair('RS256');
      return new SignJWT(claims()).setProtectedHeader({ alg: 'RS256', kid: "' OR '1'='1" }).sign(k.privateKey);
    }],
    ['crit with an unknown extension', 'RFC 7515 §4.1.11', async () => rs256Raw({ alg: 'RS256', kid: 'rsa-1', crit: ['x-unknown'], 'x-unknown': 1 }, b64(claims()))],
    ['b64: false', 'RFC 7797 §6', async () => rs256Raw({ alg: 'RS256', kid: 'rsa-1', b64: false, crit: ['b64'] }, b64(claims()), JSON.stringify(claims()))],
    ['no exp', 'RFC 8725 §3.10 (exp required by us)', () => rs256(claims({ exp: undefined }))],
    ['exp far in the past', 'RFC 7519 §4.1.4', () => rs256(claims({ exp: 1_000_000 }))],
    ['nbf in the future', 'RFC 7519 §4.1.5', () => rs256(claims({ nbf: now() + 3600 }))],
    ['iat in the future', 'RFC 7519 §4.1.6 (jose accepts it unless told otherwise)', () => rs256(claims({ iat: now() + 3600 }))],
    ['no sub', 'RFC 9068 §2.2 (sub required)', () => rs256(claims({ sub: undefined }))],
    ['empty sub', 'RFC 9068 §2.2', () => rs256(claims({ sub: '' }))],
    ['sub as an array', 'RFC 7519 §4.1.2 (sub is a string; jose accepts an array)', () => rs256(claims({ sub: ['admin'] }))],
    ['sub as a number', 'RFC 7519 §4.1.2', () => rs256(claims({ sub: 0 }))],
    ['ES256 signature of zeros', 'CVE-2022-21449 (psychic signatures)', async () => `${b64({ alg: 'ES256', kid: 'ec-1' })}.${b64(claims())}.${Buffer.alloc(64).toString('base64url')}`],
    ['a JWE instead of a JWS', 'RFC 7516', async () => `${b64({ alg: 'RSA-OAEP', enc: 'A256GCM' })}.${b64('k')}.${b64('iv')}.${b64('ct')}.${b64('tag')}`],
    ['two segments', 'RFC 7515 §7.1', async () => `${b64({ alg: 'RS256' })}.${b64(claims())}`],
    ['four segments', 'RFC 7515 §7.1', async () => `${await rs256(claims())}.extra`],
    ['padded signature', 'RFC 7515 §2 (base64url without padding)', async () => `${await rs256(claims())}==`],
    ['an ID token used as an access token (aud is the client)', 'RFC 9068 §4', () => rs256(claims({ aud: 'orders-web-client', nonce: 'n', typ: 'ID' }))],
    ['another issuer signing with our key id', 'RFC 8725 §3.8 (validate issuer and keys together)', () => rs256(claims({ iss: 'https://evil.test' }))],
    ['a token for another audience', 'RFC 7519 §4.1.3', () => rs256(claims({ aud: 'billing-api' }))],
  ];
  it.each(attacks)('refuses %s (%s) with 401 and nothing reaches the upstream', async (_attack, _source, make) => {
    const before = attackerFetches;
    const res = await withToken(await make());
    expect(res.status).toBe(401);
    expect(res.upstreamCount).toBe(0);
    // And a public path does not downgrade it to anonymous.
    expect((await withToken(await make(), 'GET', '/public/x')).status).toBe(401);
    expect(attackerFetches).toBe(before);
  });

  it('__proto__ claims grant nothing (prototype pollution)', async () => {
    const token = await rs256({ ...claims({ roles: [] }), ['__proto__']: { roles: ['admin'] }, constructor: { prototype: { roles: ['admin'] } } });
    const res = await withToken(token, 'DELETE', '/orders/1');
    expect(res.status).toBe(403);
  });

  it('an oversized token is refused (431 for the header, never 200 or 500)', async () => {
    const res = await withToken(await rs256(claims({ pad: 'x'.repeat(20_000) })));
    expect(res.status).toBe(431);
  });
});

/**
 * What the client got and what reached the upstream through one transport (plain HTTP, or a WebSocket
 * upgrade), both as raw bytes on a socket.
 */
interface Sent {
  readonly status: number;
  readonly body: string;
  readonly upstreamCount: number;
  /** The request (or handshake) the upstream received for this one, if any. */
  readonly seen: Recorded | undefined;
}

interface Transport {
  readonly name: string;
  /** The status of an allowed request: the application's 200, or its 101 Switching Protocols. */
  readonly allowed: number;
  send(target: string, headers: readonly string[], connection?: readonly string[]): Promise<Sent>;
}

const WEBSOCKET_KEY = Buffer.from('0123456789abcdef').toString('base64');

/**
 * A WebSocket opening handshake (RFC 6455 §4.1) on a raw socket. Resolves with the answer's head as soon as
 * a 101 arrives (the connection would stay open) and closes it; any other answer is read until the server
 * closes the connection (a refused upgrade is the last answer on its socket).
 */
function rawUpgrade(target: string, lines: readonly string[], timeoutMs = 5_000): Promise<RawResponse> {
  const { hostname, port } = new URL(target);
  return new Promise((resolve, reject) => {
    const socket = connect({ host: hostname, port: Number(port) });
    const chunks: Buffer[] = [];
    let settled = false;
    const parse = (): RawResponse => {
      const text = Buffer.concat(chunks).toString('utf8');
      const at = text.indexOf('\r\n\r\n');
      const head = at < 0 ? text : text.slice(0, at);
      const [statusLine = '', ...headerLines] = head.split('\r\n');
      const headers: Record<string, string> = {};
      for (const line of headerLines) {
        const i = line.indexOf(':');
        if (i > 0) headers[line.slice(0, i).toLowerCase()] = line.slice(i + 1).trim();
      }
      return { status: Number(statusLine.split(' ')[1]), headers, body: at < 0 ? '' : text.slice(at + 4) };
    };
    const settle = (error?: Error): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      if (error !== undefined) {
        socket.destroy();
        reject(error);
        return;
      }
      const res = parse();
      socket.destroy();
      resolve(res);
    };
    const timer = setTimeout(() => settle(new Error(`no answer to the upgrade of ${lines[0] ?? ''} within ${timeoutMs} ms`)), timeoutMs);
    socket.on('connect', () => socket.write(`${lines.join('\r\n')}\r\n\r\n`));
    socket.on('data', (c: Buffer) => {
      chunks.push(c);
      const text = Buffer.concat(chunks).toString('latin1');
      if (text.startsWith('HTTP/1.1 101 ') && text.includes('\r\n\r\n')) settle();
    });
    socket.on('error', (err) => settle(err));
    socket.on('close', () => settle());
  });
}

function sentBy(before: number, res: RawResponse, websocket: boolean): Sent {
  const mine = upstream.requests.slice(before);
  return { status: res.status, body: res.body, upstreamCount: mine.length, seen: mine.filter((r) => r.websocket === websocket).at(-1) };
}

const transports: Transport[] = [
  {
    name: 'plain HTTP',
    allowed: 200,
    async send(target, headers, connection) {
      const before = upstream.requests.length;
      const lines = [`GET ${target} HTTP/1.1`, `Host: ${host}`, ...(connection === undefined ? [] : [`Connection: ${['keep-alive', ...connection].join(', ')}`]), ...headers];
      return sentBy(before, await rawRequest(url, lines), false);
    },
  },
  {
    name: 'WebSocket upgrade',
    allowed: 101,
    async send(target, headers, connection) {
      const before = upstream.requests.length;
      const lines = [
        `GET ${target} HTTP/1.1`,
        `Host: ${host}`,
        'Upgrade: websocket',
        `Connection: ${['Upgrade', ...(connection ?? [])].join(', ')}`,
        `Sec-WebSocket-Key: ${WEBSOCKET_KEY}`,
        'Sec-WebSocket-Version: 13',
        ...headers,
      ];
      return sentBy(before, await rawUpgrade(url, lines), true);
    },
  },
];

type PathCase = [attack: string, target: string, status: number, seen?: string];

// [attack, raw target, expected status (200 = allowed), what the upstream must see when it is reached]
const pathCases: PathCase[] = [
  ['dot segments', '/public/../orders/1', 401],
  ['encoded dot segments', '/public/%2e%2e/orders/1', 401],
  ['mixed-case encoded dots', '/public/%2E%2e/orders/1', 401],
  ['single dot', '/public/./x', 200, '/public/x'],
  ['repeated slashes', '//public//x', 200, '/public/x'],
  ['repeated slashes before a protected path', '//orders/1', 401],
  ['encoded slash', '/public%2F..%2Forders/1', 400],
  ['encoded backslash', '/public%5C..%5Corders/1', 400],
  ['raw backslash', '/public\\..\\orders/1', 400],
  ['semicolon parameter', '/orders/1;.js', 400],
  ['Tomcat ..;', '/public/..;/orders/1', 400],
  ['fragment', '/public/x#/../../orders/1', 400],
  ['encoded fragment', '/public/x%23/../../orders/1', 400],
  ['encoded NUL', '/public/%00/../orders/1', 400],
  ['encoded CR LF', '/public/%0d%0aX-Auth-Subject:%20root', 400],
  ['overlong UTF-8 dots', '/public/%c0%ae%c0%ae/orders/1', 400],
  ['invalid UTF-8', '/public/%ff', 400],
  ['double encoding is not decoded twice', '/public/%252e%252e/orders/1', 200, '/public/%252e%252e/orders/1'],
  ['absolute-form target', 'http://evil.example/orders/1', 401],
  ['absolute-form to a public path', 'http://evil.example/public/../public/x', 200, '/public/x'],
  ['path rules never match the query', '/orders/1?/public/x', 401],
  ['a query that looks like traversal is forwarded as received', '/public/x?p=/../orders&q=%2F', 200, '/public/x?p=/../orders&q=%2F'],
];

/** Identity, method-override and URL-rewrite headers as the upstream received them: [name, value]. */
function ownedHeaders(seen: Recorded | undefined): Array<[string, string]> {
  const raw = seen?.rawHeaders ?? [];
  const owned: Array<[string, string]> = [];
  for (let i = 0; i < raw.length; i += 2) if (/^x[-_]auth[-_]|method|original-url|rewrite-url/i.test(raw[i] ?? '')) owned.push([raw[i] ?? '', raw[i + 1] ?? '']);
  return owned.sort(([a], [b]) => a.localeCompare(b));
}

interface HeaderCase {
  readonly attack: string;
  readonly target: string;
  /** Header lines after Host (a thunk: some carry a token made in beforeAll). */
  readonly headers: () => string[];
  /** Tokens added to the transport's own Connection header (keep-alive or Upgrade). */
  readonly connection?: readonly string[];
  /** 200 = allowed (101 through an upgrade). */
  readonly status: number;
  /** When allowed: exactly the owned headers the upstream must see (those the sidecar sets), sorted by name. */
  readonly owned?: Array<[string, string]>;
}

const headerCases: HeaderCase[] = [
  {
    attack: 'identity headers in any case and with _ never reach the upstream (CVE-2017-6413)',
    target: '/public/spoof',
    headers: () => ['X-Auth-Subject: root', 'x_auth_subject: root', 'X-AUTH-ROLES: admin', 'X_Auth-Issuer: evil', 'x_auth_roles: admin'],
    status: 200,
    owned: [],
  },
  {
    attack: 'duplicated identity headers are all removed (Envoy CVE-2021-32777)',
    target: '/public/spoof',
    headers: () => ['X-Auth-Subject: a', 'X-Auth-Subject: b', 'x-auth-subject: c'],
    status: 200,
    owned: [],
  },
  {
    attack: 'identity headers after hundreds of filler headers are removed (Envoy CVE-2021-32777 class)',
    target: '/public/spoof',
    headers: () => [...Array.from({ length: 900 }, (_, i) => `F${i}: ${i}`), 'X-Auth-Subject: root'],
    status: 200,
    owned: [],
  },
  {
    attack: 'method-override and URL-rewrite headers are removed (OWASP WSTG-CONF-06, Symfony CVE-2018-14773)',
    target: '/public/spoof',
    headers: () => ['X-HTTP-Method-Override: DELETE', 'X-Method-Override: DELETE', 'X-HTTP-Method: DELETE', 'X-Original-URL: /orders/1', 'X-Rewrite-URL: /orders/1'],
    status: 200,
    owned: [],
  },
  {
    attack: 'naming the identity header in Connection does not remove the one the sidecar sets (RFC 9110 §7.6.1 hop-by-hop abuse)',
    target: '/orders/2',
    headers: () => [`Authorization: Bearer ${validToken}`],
    connection: ['X-Auth-Subject', 'X-Auth-Roles'],
    status: 200,
    owned: [
      ['x-auth-issuer', ISSUER],
      ['x-auth-roles', 'reader'],
      ['x-auth-subject', 'alice'],
    ],
  },
  {
    attack: 'a spoofed identity header next to a valid token is replaced by the verified one',
    target: '/orders/2',
    headers: () => [`Authorization: Bearer ${validToken}`, 'X-Auth-Subject: root', 'X-Auth-Roles: admin'],
    status: 200,
    owned: [
      ['x-auth-issuer', ISSUER],
      ['x-auth-roles', 'reader'],
      ['x-auth-subject', 'alice'],
    ],
  },
  {
    attack: 'two Authorization headers are a 400 (which one would the app see?)',
    target: '/orders/1',
    headers: () => [`Authorization: Bearer ${validToken}`, `Authorization: Bearer ${validToken}`],
    status: 400,
  },
  {
    attack: 'two Host headers are a 400 (RFC 9112 §3.2: which host was authorized?)',
    target: '/public/x',
    headers: () => ['Host: evil.example'],
    status: 400,
  },
  {
    attack: 'a header section over 16 KiB is a 431',
    target: '/public/x',
    headers: () => [`X-Big: ${'a'.repeat(20_000)}`],
    status: 431,
  },
  {
    attack: '1000 header fields or more (within 16 KiB) are a 431: the parser would drop the rest, a spoofed header with them',
    target: '/public/x',
    headers: () => [...Array.from({ length: 1100 }, (_, i) => `h${i}: 1`), 'X-Auth-Subject: root'],
    status: 431,
  },
];

// One table, every transport: a WebSocket upgrade is decided exactly as the plain request would be.
const byTransport = transports.map((t): [string, Transport] => [t.name, t]);

describe.each(byTransport)('paths through %s (Envoy CVE-2019-9901, CVE-2021-29492; Istio #27409; Oathkeeper GHSA-p224; oauth2-proxy GHSA-7rh7)', (_name, transport) => {
  it.each(pathCases)('%s: %s -> %i', async (_attack, target, status, seen) => {
    const res = await transport.send(target, []);
    expect(res.status).toBe(status === 200 ? transport.allowed : status);
    if (status === 200) {
      expect(res.upstreamCount).toBe(1);
      expect(res.seen?.url).toBe(seen);
    } else {
      expect(res.upstreamCount).toBe(0);
    }
  });
});

describe.each(byTransport)('headers through %s', (_name, transport) => {
  it.each(headerCases.map((c): [string, HeaderCase] => [c.attack, c]))('%s', async (_attack, { target, headers, connection, status, owned }) => {
    const res = await transport.send(target, headers(), connection);
    expect(res.status).toBe(status === 200 ? transport.allowed : status);
    if (status === 200) {
      expect(res.upstreamCount).toBe(1);
      expect(res.seen?.url).toBe(target);
      expect(ownedHeaders(res.seen)).toEqual(owned);
    } else {
      expect(res.upstreamCount).toBe(0);
    }
  });
});

describe('request line and framing', () => {
  it('OPTIONS * is a 400', async () => {
    expect((await send(['OPTIONS * HTTP/1.1', `Host: ${host}`])).status).toBe(400);
  });

  it('a raw CR in the request line is refused by the HTTP parser (400)', async () => {
    expect((await send(['GET /public/a\rX HTTP/1.1', `Host: ${host}`])).status).toBe(400);
  });

  it('Content-Length with Transfer-Encoding (request smuggling, RFC 9112 §6.3) is a 400', async () => {
    const res = await send(['POST /public/x HTTP/1.1', `Host: ${host}`, 'Content-Length: 4', 'Transfer-Encoding: chunked', '', '0', '', 'GET /orders/1 HTTP/1.1', `Host: ${host}`]);
    expect(res.status).toBe(400);
    expect(res.upstreamCount).toBe(0);
  });

  it.each([
    ['two Content-Length headers', ['Content-Length: 4', 'Content-Length: 5']],
    ['an obfuscated Transfer-Encoding', ['Transfer-Encoding: chunked, identity', 'Content-Length: 4']],
    ['Transfer-Encoding with a space before the colon', ['Transfer-Encoding : chunked']],
  ])('request smuggling with %s is a 400 (RFC 9112 §6.3, CVE-2019-18277 class)', async (_name, headers) => {
    const res = await send(['POST /public/x HTTP/1.1', `Host: ${host}`, ...headers, '', '0', '', 'GET /orders/1 HTTP/1.1', `Host: ${host}`]);
    expect(res.status).toBe(400);
    expect(res.upstreamCount).toBe(0);
  });

  it('pipelined requests are each authorized (RFC 9112 §9.3.2)', async () => {
    const before = upstream.requests.length;
    const res = await rawRequest(url, ['GET /public/one HTTP/1.1', `Host: ${host}`, '', `GET /orders/1 HTTP/1.1`, `Host: ${host}`]);
    expect(res.status).toBe(200);
    expect(res.body).toContain('HTTP/1.1 401');
    expect(upstream.requests.length - before).toBe(1);
    expect(last()?.url).toBe('/public/one');
  });

  it('slowloris (CVE-2007-6750 class): a client trickling its headers is cut off after the headers timeout (408)', async () => {
    const started = Date.now();
    const answer = await new Promise<string>((done) => {
      const socket = connect({ host: '127.0.0.1', port: Number(new URL(url).port) });
      let got = '';
      let n = 0;
      socket.on('connect', () => socket.write(`GET /public/x HTTP/1.1\r\nHost: ${host}\r\n`));
      const timer = setInterval(() => socket.write(`X-Slow-${n++}: 1\r\n`), 500);
      socket.on('data', (d: Buffer) => (got += d.toString()));
      socket.on('close', () => {
        clearInterval(timer);
        done(got);
      });
      socket.on('error', () => undefined);
    });
    expect(answer.startsWith('HTTP/1.1 408')).toBe(true);
    expect(Date.now() - started).toBeLessThan(15_000);
  }, 20_000);

  it('1000 header fields or more is a 431, on the proxy and the check doors (the parser would drop the rest)', async () => {
    const many = Array.from({ length: 2100 }, (_, i) => `h${i}: 1`);
    const res = await send(['GET /public/x HTTP/1.1', `Host: ${host}`, ...many, 'X-Auth-Subject: root']);
    expect(res.status).toBe(431);
    expect(res.upstreamCount).toBe(0);
    const fwd = await rawRequest(forwardUrl, ['GET / HTTP/1.1', `Host: ${new URL(forwardUrl).host}`, 'X-Forwarded-Method: GET', 'X-Forwarded-Uri: /public/x', ...many]);
    expect(fwd.status).toBe(431);
    // Within 16 KiB, so the field count (not the parser's size limit) refuses it.
    const few = Array.from({ length: 1100 }, (_, i) => `h${i}: 1`);
    const check = await rawRequest(checkHttpUrl, ['GET /check/public/x HTTP/1.1', `Host: ${new URL(checkHttpUrl).host}`, ...few]);
    expect(check.status).toBe(431);
  });

  it('CONNECT is a 400 on every HTTP door, never a tunnel and never a silent close (RFC 9110 §9.3.6)', async () => {
    for (const target of [url, checkHttpUrl, forwardUrl]) {
      const res = await rawRequest(target, ['CONNECT 127.0.0.1:22 HTTP/1.1', 'Host: 127.0.0.1:22']);
      expect(res.status).toBe(400);
    }
  });

  it('Expect: 100-continue and Keep-Alive on an allowed request are not forwarded (hop-by-hop, RFC 9110 §7.6.1)', async () => {
    const get = await send(['GET /public/x HTTP/1.1', `Host: ${host}`, 'Expect: 100-continue', 'Keep-Alive: timeout=5']);
    // Node answers "100 Continue" first; the final answer follows it and is a 200, not a 502.
    expect(get.status).toBe(100);
    expect(get.body).toMatch(/^HTTP\/1\.1 200 OK/);
    expect(get.upstreamCount).toBe(1);
    expect(last()?.headers['expect']).toBeUndefined();
    expect(last()?.headers['keep-alive']).toBeUndefined();
  });

  it('a 20 KiB path is a 431, never a 500', async () => {
    expect((await send([`GET /public/${'a'.repeat(20_000)} HTTP/1.1`, `Host: ${host}`])).status).toBe(431);
  });
});

describe('the same path attacks through the check doors (HTTP ext_authz, forward-auth)', () => {
  // These doors cannot change the path the application receives: a path the proxy would have normalized is
  // refused (400), a denied one stays denied, and an allow only ever happens for a path that is canonical.
  const expectedFor = (target: string, status: number, seen: string | undefined): number[] => {
    if (status === 400) return [400];
    if (status === 200) return seen === target ? [200] : [400];
    return [400, status];
  };
  const originForm = (): PathCase[] => pathCases.filter(([, target]) => target.startsWith('/'));

  it('HTTP ext_authz: every case answers as the rule says', async () => {
    const checkHost = new URL(checkHttpUrl).host;
    expect(originForm().length).toBeGreaterThan(15);
    for (const [attack, target, status, seen] of originForm()) {
      const res = await rawRequest(checkHttpUrl, [`GET /check${target} HTTP/1.1`, `Host: ${checkHost}`]);
      expect({ attack, status: res.status }).toEqual({ attack, status: expect.toBeOneOf(expectedFor(target, status, seen)) as number });
    }
  });

  it('forward-auth: every case answers as the rule says', async () => {
    const fwdHost = new URL(forwardUrl).host;
    for (const [attack, target, status, seen] of pathCases) {
      if (/[\r\n]/.test(target)) continue;
      const res = await rawRequest(forwardUrl, ['GET / HTTP/1.1', `Host: ${fwdHost}`, 'X-Forwarded-Method: GET', `X-Forwarded-Uri: ${target}`]);
      // Absolute-form URIs are read as such (their path decides); a raw backslash or # in a header is fine
      // for the HTTP parser, so the canonical rules answer.
      expect({ attack, status: res.status }).toEqual({ attack, status: expect.toBeOneOf(expectedFor(target, status, seen)) as number });
    }
  });

  it.each(['X-Auth-Subject: root', 'X_Auth_Roles: admin', 'X-HTTP-Method-Override: DELETE', 'X-Original-URL: /orders/1'])(
    'forward-auth refuses a check carrying %s: its answer cannot make the proxy remove it (CVE-2017-6413)',
    async (header) => {
      const fwdHost = new URL(forwardUrl).host;
      const res = await rawRequest(forwardUrl, ['GET / HTTP/1.1', `Host: ${fwdHost}`, 'X-Forwarded-Method: GET', 'X-Forwarded-Uri: /public/x', header]);
      expect(res.status).toBe(400);
    },
  );

  it('HTTP ext_authz asks Envoy to remove both spellings of every owned header, seen in the check or not', async () => {
    const checkHost = new URL(checkHttpUrl).host;
    const res = await rawRequest(checkHttpUrl, ['GET /check/public/x HTTP/1.1', `Host: ${checkHost}`]);
    expect(res.status).toBe(200);
    const remove = (res.headers['x-envoy-auth-headers-to-remove'] ?? '').split(',');
    for (const h of ['x-auth-subject', 'x_auth_subject', 'x-auth-roles', 'x_auth_roles', 'x-http-method-override', 'x_http_method_override']) expect(remove).toContain(h);
  });
});

describe('the same path and token attacks through gRPC ext_authz (client from the official Envoy protos)', () => {
  type Check = { status: { code: number }; denied_response?: { body: string } };
  let client: grpc.Client & { Check(req: unknown, cb: (e: grpc.ServiceError | null, r: Check) => void): void };
  beforeAll(() => {
    const deps = join(dirname(createRequire(import.meta.url).resolve('@grpc/grpc-js-xds/package.json')), 'deps');
    const definition = protoLoader.loadSync('envoy/service/auth/v3/external_auth.proto', {
      includeDirs: ['envoy-api', 'xds', 'googleapis', 'protoc-gen-validate'].map((d) => join(deps, d)),
      keepCase: true,
      defaults: true,
      oneofs: true,
    });
    const pkg = grpc.loadPackageDefinition(definition) as unknown as {
      envoy: { service: { auth: { v3: { Authorization: new (a: string, c: grpc.ChannelCredentials) => typeof client } } } };
    };
    client = new pkg.envoy.service.auth.v3.Authorization(grpcAddress, grpc.credentials.createInsecure());
  });
  afterAll(() => client?.close());

  const check = (path: string, headers: Record<string, string> = {}, method = 'GET'): Promise<Check> =>
    new Promise((done, fail) => client.Check({ attributes: { request: { http: { method, path, host: 'shop', headers } } } }, (e, r) => (e ? fail(e) : done(r))));
  // google.rpc codes: 0 OK, 3 INVALID_ARGUMENT (400), 7 PERMISSION_DENIED (403), 16 UNAUTHENTICATED (401)
  const grpcCode: Record<number, number> = { 200: 0, 400: 3, 401: 16, 403: 7 };

  it('path cases answer as the rule for check doors says, never a gRPC error', async () => {
    for (const [attack, target, status, seen] of pathCases.filter(([, t]) => t.startsWith('/'))) {
      const expected = status === 400 ? [3] : status === 200 ? (seen === target ? [0] : [3]) : [3, grpcCode[status]];
      const res = await check(target);
      expect({ attack, code: res.status.code }).toEqual({ attack, code: expect.toBeOneOf(expected) as number });
    }
  });

  it('a check without a method is a 400 (code 3), never read as GET', async () => {
    const res = await new Promise<Check>((done, fail) =>
      client.Check({ attributes: { request: { http: { path: '/public/x', host: 'shop', headers: {} } } } }, (e, r) => (e ? fail(e) : done(r))),
    );
    expect(res.status.code).toBe(3);
  });

  it('token attacks are denied with 16 (UNAUTHENTICATED) as a successful RPC', async () => {
    const none = `${b64({ alg: 'none' })}.${b64(claims())}.`;
    const zeroSig = `${b64({ alg: 'ES256', kid: 'ec-1' })}.${b64(claims())}.${Buffer.alloc(64).toString('base64url')}`;
    for (const token of [none, zeroSig, await rs256(claims({ exp: 1 })), await rs256(claims({ aud: 'other' }))]) {
      const res = await check('/orders/1', { authorization: `Bearer ${token}` });
      expect(res.status.code).toBe(16);
    }
    expect((await check('/orders/1', { authorization: `Bearer ${await rs256(claims())}` })).status.code).toBe(0);
  });
});
