/**
 * The attack suite's sign-in cases (DESIGN.md §7), through every door: the proxy, HTTP ext_authz, forward-auth
 * (a Traefik/Caddy-style check with X-Forwarded-*) and gRPC ext_authz (a client from the official Envoy
 * protos). A real OpenID Provider with its login pages, the real sidecar, real HTTP and gRPC clients:
 * - return URLs: every open-redirect shape of the oauth2-proxy and mod_auth_openidc advisories is a 400 with
 *   no Location, whichever door asks;
 * - cookie tampering: a session cookie with one character changed is no session anywhere;
 * - state replay: a callback replayed (with or without the captured state cookie) starts no session;
 * - CSRF: an unsafe request with a valid session from another site is refused (403).
 */
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { signInAtProvider } from '../support/scripted-browser.js';
import { COOKIE, startSignInEnv, type SignInEnv } from '../support/signin-env.js';

const DEPS = join(dirname(createRequire(import.meta.url).resolve('@grpc/grpc-js-xds/package.json')), 'deps');
const official = protoLoader.loadSync('envoy/service/auth/v3/external_auth.proto', {
  includeDirs: [join(DEPS, 'envoy-api'), join(DEPS, 'xds'), join(DEPS, 'googleapis'), join(DEPS, 'protoc-gen-validate')],
  keepCase: true,
  longs: String,
  enums: String,
  defaults: true,
  oneofs: true,
});
interface HeaderValueOption {
  header: { key: string; value: string };
}
interface CheckResponse {
  status: { code: number };
  http_response: 'ok_response' | 'denied_response';
  ok_response?: { headers: HeaderValueOption[] };
  denied_response?: { status: { code: string }; headers: HeaderValueOption[]; body: string };
}
type GrpcClient = grpc.Client & { Check(req: unknown, cb: (err: grpc.ServiceError | null, res: CheckResponse) => void): void };
const Authorization = (grpc.loadPackageDefinition(official) as unknown as {
  envoy: { service: { auth: { v3: { Authorization: new (address: string, creds: grpc.ChannelCredentials) => GrpcClient } } } };
}).envoy.service.auth.v3.Authorization;

/** What every door answered, as one shape: status, Location, Set-Cookie, the identity header on allow, code. */
interface Answer {
  readonly status: number;
  readonly location: string | undefined;
  readonly subject: string | undefined;
  readonly code: string | undefined;
}

type Door = (method: string, target: string, headers: Record<string, string>) => Promise<Answer>;

const ALLOWED_STATUS = 200;

let env: SignInEnv;
let grpcClient: GrpcClient;
const doors: Record<string, Door> = {};

function codeOf(body: string): string | undefined {
  try {
    return (JSON.parse(body) as { code?: string }).code;
  } catch {
    return undefined;
  }
}

beforeAll(async () => {
  env = await startSignInEnv({
    config: {
      extAuthz: { http: { listen: '127.0.0.1:0' }, grpc: { listen: '127.0.0.1:0' }, forwardAuth: { listen: '127.0.0.1:0' } },
    },
  });
  const { http, grpc: grpcAddress, forwardAuth } = env.sidecar.extAuthz;
  const host = new URL(env.origin).host;
  grpcClient = new Authorization(grpcAddress ?? '', grpc.credentials.createInsecure());
  // undici's request, not fetch: fetch drops a Host header, and a check door reads the original Host from it.
  const viaFetch = async (url: string, method: string, headers: Record<string, string>): Promise<Answer> => {
    const res = await request(url, { method: method as 'GET', headers });
    const body = await res.body.text();
    const header = (name: string): string | undefined => {
      const value = res.headers[name];
      return Array.isArray(value) ? value[0] : value;
    };
    return { status: res.statusCode, location: header('location'), subject: header('x-auth-subject'), code: codeOf(body) };
  };
  doors['proxy'] = async (method, target, headers) => {
    const before = env.upstream.requests.length;
    const answer = await viaFetch(`${env.origin}${target}`, method, headers);
    const reached = env.upstream.requests.length > before ? env.upstream.requests.at(-1) : undefined;
    return { ...answer, subject: reached?.headers['x-auth-subject'] as string | undefined };
  };
  doors['extAuthzHttp'] = (method, target, headers) => viaFetch(`http://${http ?? ''}${target}`, method, { ...headers, host });
  doors['forwardAuth'] = (method, target, headers) =>
    viaFetch(`http://${forwardAuth ?? ''}/`, 'GET', { ...headers, 'x-forwarded-method': method, 'x-forwarded-uri': target, 'x-forwarded-host': host, 'x-forwarded-proto': 'http' });
  doors['extAuthzGrpc'] = (method, target, headers) =>
    new Promise((resolve, reject) => {
      grpcClient.Check({ attributes: { request: { http: { method, path: target, host, scheme: 'http', protocol: 'HTTP/1.1', headers: { ...headers, ':authority': host } } } } }, (err, res) => {
        if (err) {
          reject(err);
          return;
        }
        const header = (list: HeaderValueOption[] | undefined, key: string): string | undefined => list?.find((h) => h.header.key === key)?.header.value;
        if (res.http_response === 'ok_response') {
          resolve({ status: ALLOWED_STATUS, location: undefined, subject: header(res.ok_response?.headers, 'x-auth-subject'), code: undefined });
          return;
        }
        const denied = res.denied_response;
        resolve({ status: Number(denied?.status.code === undefined ? NaN : httpStatus(denied.status.code)), location: header(denied?.headers, 'location'), subject: undefined, code: codeOf(denied?.body ?? '') });
      });
    });
}, 60_000);

/** Envoy's HttpStatus enum as loaded with `enums: String` (e.g. "BadRequest") back to its number. */
function httpStatus(code: string): number {
  const byName: Record<string, number> = { OK: 200, Found: 302, BadRequest: 400, Unauthorized: 401, Forbidden: 403, NotFound: 404, MethodNotAllowed: 405, ServiceUnavailable: 503, NonAuthoritativeInformation: 203 };
  const n = Number(code);
  return Number.isInteger(n) ? n : (byName[code] ?? NaN);
}

afterAll(async () => {
  grpcClient?.close();
  await env?.close();
});

/** The open-redirect shapes of the advisories, each as a value of rd. */
const EVIL_RETURN_URLS = [
  '//evil.example',
  '///evil.example',
  '/\\evil.example',
  '\\\\evil.example',
  '/%2F/evil.example',
  '/%2f%2fevil.example',
  '/%5Cevil.example',
  '/%09/evil.example',
  '/\t/evil.example',
  '/\n/evil.example',
  ' //evil.example',
  'https://evil.example/',
  'http://evil.example/',
  'https:evil.example',
  'https:/evil.example',
  'javascript:alert(1)',
  'data:text/html,<script>alert(1)</script>',
  'https://127.0.0.1@evil.example/',
  'https://evil.example\\@127.0.0.1/',
  '//evil.example/%2F..',
  '/%E3%80%80/evil.example',
  'evil.example',
];

const DOORS = ['proxy', 'extAuthzHttp', 'forwardAuth', 'extAuthzGrpc'] as const;

describe.each(DOORS)('sign-in attacks through %s', (door) => {
  it.each(EVIL_RETURN_URLS)('refuses the return URL %j at start and sign-out with a 400 and no Location', async (rd) => {
    for (const route of ['/.authz/start', '/.authz/sign-out']) {
      const answer = await (doors[door] as Door)('GET', `${route}?rd=${encodeURIComponent(rd)}`, { accept: 'text/html' });
      expect({ route, status: answer.status, location: answer.location, code: answer.code }).toEqual({ route, status: 400, location: undefined, code: 'SIGNIN_FAILED' });
    }
  });

  it('takes a tampered session cookie for no session (never the user)', async () => {
    const browser = env.browser();
    await env.signIn(browser, '/orders/1', 'alice');
    const value = browser.cookies.get(env.origin, COOKIE) ?? '';
    expect(value.split('.')).toHaveLength(5);
    const good = await (doors[door] as Door)('GET', '/orders/1', { cookie: `${COOKIE}=${value}`, accept: 'application/json' });
    expect(good.status).toBe(200);
    expect(good.subject).toBe('user-alice');
    // One character of the ciphertext, the tag, the IV, the header: each changed.
    const parts = value.split('.');
    for (const index of [0, 2, 3, 4]) {
      const tampered = [...parts];
      const part = tampered[index] ?? '';
      tampered[index] = `${part.slice(0, 5)}${part[5] === 'A' ? 'B' : 'A'}${part.slice(6)}`;
      const answer = await (doors[door] as Door)('GET', '/orders/1', { cookie: `${COOKIE}=${tampered.join('.')}`, accept: 'application/json' });
      expect({ index, status: answer.status, subject: answer.subject }).toEqual({ index, status: 401, subject: undefined });
    }
  });

  it('refuses a replayed callback, with or without the captured state cookie', async () => {
    const browser = env.browser();
    const first = await browser.get(`${env.origin}/orders/1`);
    const { page } = await signInAtProvider(browser, first, { login: 'rita', navigation: { stopBefore: `${env.origin}/.authz/callback` } });
    const callback = page.redirectNotFollowed?.url ?? '';
    expect(callback).toContain('/.authz/callback?');
    const stateCookie = browser.cookies.all().find((c) => c.name.startsWith(`${COOKIE}-s-`));
    expect(stateCookie).toBeDefined();
    // The real callback, once, through the proxy door.
    const done = await browser.get(callback);
    expect(done.status).toBe(200);
    const target = new URL(callback);
    const path = `${target.pathname}${target.search}`;
    const withoutState = await (doors[door] as Door)('GET', path, { accept: 'text/html' });
    expect({ status: withoutState.status, code: withoutState.code, location: withoutState.location }).toEqual({ status: 400, code: 'SIGNIN_FAILED', location: undefined });
    const withState = await (doors[door] as Door)('GET', path, { accept: 'text/html', cookie: `${stateCookie?.name}=${stateCookie?.value}` });
    expect({ status: withState.status, code: withState.code, location: withState.location }).toEqual({ status: 400, code: 'SIGNIN_FAILED', location: undefined });
  });

  it('refuses an unsafe request with a valid session from another site (CSRF)', async () => {
    const browser = env.browser();
    await env.signIn(browser, '/orders/1', 'alice');
    const cookie = `${COOKIE}=${browser.cookies.get(env.origin, COOKIE) ?? ''}`;
    const attempts: Array<Record<string, string>> = [
      { origin: 'https://evil.example' },
      { 'sec-fetch-site': 'cross-site', origin: env.origin },
      { origin: 'null' },
      {},
    ];
    for (const headers of attempts) {
      const answer = await (doors[door] as Door)('POST', '/orders/1', { ...headers, cookie, accept: 'application/json' });
      expect({ headers, status: answer.status, code: answer.code, subject: answer.subject }).toEqual({ headers, status: 403, code: 'CSRF_REJECTED', subject: undefined });
    }
    // The same request from the site itself is decided by the policy (alice is an admin: allowed).
    const own = await (doors[door] as Door)('POST', '/orders/1', { origin: env.origin, 'sec-fetch-site': 'same-origin', cookie, accept: 'application/json' });
    expect(own.status).toBe(200);
    expect(own.subject).toBe('user-alice');
  });
});
