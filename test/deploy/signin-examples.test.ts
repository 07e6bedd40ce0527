/**
 * The sign-in wiring of the proxy examples agrees: deploy/traefik/dynamic.yaml (which no test runs: there is
 * no Traefik here) against deploy/nginx/nginx.conf and deploy/caddy/Caddyfile (which
 * test/integration/signin-doors.test.ts and signin-chromium.test.ts run with a real nginx and Caddy): the same
 * forward-auth listener, app, sign-in prefix, session cookie name and identity headers, all of them the
 * sidecar's defaults; and the Istio ext_authz providers carry what sign-in needs.
 */
import { readFileSync } from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { DEFAULT_ISSUER_HEADER, DEFAULT_ROLES_HEADER, DEFAULT_SCOPES_HEADER, DEFAULT_SESSION_COOKIE, DEFAULT_SIGNIN_PREFIX, DEFAULT_SUBJECT_HEADER } from '../../src/config/defaults.js';
import { LOGOUT_BODY_LIMIT } from '../../src/signin/browser-sessions.js';
import { MAX_CHUNKS } from '../../src/signin/cookie-codec.js';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const read = (file: string): string => readFileSync(path.join(ROOT, file), 'utf8');
const IDENTITY = [DEFAULT_SUBJECT_HEADER, DEFAULT_ISSUER_HEADER, DEFAULT_ROLES_HEADER, DEFAULT_SCOPES_HEADER];
const lower = (names: readonly string[]): string[] => names.map((n) => n.toLowerCase()).sort();

type Obj = Record<string, unknown>;
function obj(v: unknown, what: string): Obj {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new Error(`${what}: expected an object, got ${JSON.stringify(v)}`);
  return v as Obj;
}
function list(v: unknown, what: string): string[] {
  if (!Array.isArray(v) || !v.every((x) => typeof x === 'string')) throw new Error(`${what}: expected a list of strings, got ${JSON.stringify(v)}`);
  return v;
}
function one(text: string, re: RegExp, what: string): string {
  const all = [...text.matchAll(new RegExp(re.source, `${re.flags.replace('g', '')}g`))].map((m) => m[1] ?? '');
  if (all.length === 0) throw new Error(`${what}: not found (${re.source})`);
  return all[0] as string;
}
function all(text: string, re: RegExp): string[] {
  return [...text.matchAll(new RegExp(re.source, `${re.flags.replace('g', '')}g`))].map((m) => m[1] ?? '');
}
/** Comment lines out: what the proxy runs. */
const code = (text: string): string => text.replace(/^\s*#.*$/gm, '').replace(/\s#\s.*$/gm, '');

// ---- the three examples, read -----------------------------------------------------------------------------------

const nginx = code(read('deploy/nginx/nginx.conf'));
const caddy = code(read('deploy/caddy/Caddyfile'));
const traefik = obj(obj(parse(read('deploy/traefik/dynamic.yaml')), 'dynamic.yaml').http, 'http');
const routers = obj(traefik.routers, 'routers');
const middlewares = obj(traefik.middlewares, 'middlewares');
const services = obj(traefik.services, 'services');
const forwardAuth = obj(obj(middlewares['authz-sidecar'], 'middleware authz-sidecar').forwardAuth, 'forwardAuth');

function serviceUrls(name: string): string[] {
  const lb = obj(obj(services[name], `service ${name}`).loadBalancer, `service ${name} loadBalancer`);
  return (lb.servers as Array<{ url: string }>).map((s) => s.url);
}
const hostPort = (url: string): string => new URL(url).host;

describe('deploy/traefik/dynamic.yaml', () => {
  it('asks the forward-auth listener that nginx and Caddy ask, and proxies to the same app', () => {
    const nginxForwardAuth = hostPort(one(nginx, /default\s+(http:\/\/[^;\s]+);/, 'nginx forward-auth listener'));
    const nginxApp = hostPort(one(nginx, /location \/ \{[^}]*proxy_pass\s+(http:\/\/[^;\s]+);/s, 'nginx app'));
    const caddyForwardAuth = one(caddy, /forward_auth\s+(\S+)\s*\{/, 'Caddy forward_auth');
    const caddyRoutes = one(caddy, /handle \/\.authz\/\* \{\s*reverse_proxy\s+(\S+)/, 'Caddy sign-in routes');
    const caddyApp = all(caddy, /reverse_proxy\s+(\S+)/).filter((a) => a !== caddyRoutes);
    expect(caddyForwardAuth).toBe(nginxForwardAuth);
    expect(caddyRoutes).toBe(nginxForwardAuth);
    expect(caddyApp).toEqual([nginxApp]);
    expect(hostPort(String(forwardAuth.address))).toBe(nginxForwardAuth);
    expect(serviceUrls('authz-sidecar-signin').map(hostPort)).toEqual([nginxForwardAuth]);
    expect(serviceUrls('orders-app').map(hostPort)).toEqual([nginxApp]);
  });

  it('sends the sign-in prefix to the forward-auth listener as it is, ahead of the app router', () => {
    const signin = obj(routers['orders-signin'], 'router orders-signin');
    const app = obj(routers['orders'], 'router orders');
    expect(String(signin.rule)).toContain(`PathPrefix(\`${DEFAULT_SIGNIN_PREFIX}/\`)`);
    expect(signin.service).toBe('authz-sidecar-signin');
    expect(Number(signin.priority)).toBeGreaterThan(Number(app.priority));
    expect(String(signin.rule).replace(/ && PathPrefix\(`[^`]*`\)/, '')).toBe(String(app.rule));
    // nginx and Caddy route the same prefix to the listener.
    expect(nginx).toContain(`location ${DEFAULT_SIGNIN_PREFIX}/ {`);
    expect(caddy).toContain(`handle ${DEFAULT_SIGNIN_PREFIX}/* {`);
    expect(obj(services['authz-sidecar-signin'], 'service').loadBalancer).toMatchObject({ passHostHeader: true });
  });

  it('checks every other request with forwardAuth, never trusting a client X-Forwarded-*', () => {
    const app = obj(routers['orders'], 'router orders');
    expect(list(app.middlewares, 'orders middlewares')).toEqual(['authz-no-client-headers', 'authz-sidecar']);
    expect(list(obj(routers['orders-signin'], 'router').middlewares, 'orders-signin middlewares')).toEqual(['authz-no-client-headers']);
    expect(forwardAuth.trustForwardHeader).toBe(false);
  });

  it('copies the identity headers nginx and Caddy copy, and keeps the Location of the answer', () => {
    const headers = list(forwardAuth.authResponseHeaders, 'authResponseHeaders');
    // The identity, and the Cookie header the sidecar's 200 always carries (its own cookies taken out).
    expect(lower(headers)).toEqual(lower([...IDENTITY, 'cookie']));
    expect(nginx).toMatch(/auth_request_set\s+\$authz_cookie\s+\$upstream_http_cookie;/);
    expect(nginx).toMatch(/proxy_set_header\s+Cookie\s+\$authz_cookie;/);
    expect(forwardAuth.preserveLocationHeader).toBe(true);
    const nginxCopied = all(nginx, /auth_request_set\s+\$\w+\s+\$upstream_http_(x_auth_\w+);/).map((v) => v.replace(/_/g, '-'));
    expect(lower(nginxCopied)).toEqual(lower(IDENTITY));
    const caddyCopied = one(caddy, /copy_headers\s+([^\n]+)/, 'Caddy copy_headers').trim().split(/\s+/);
    expect(lower(caddyCopied)).toEqual(lower(IDENTITY));
  });

  it('returns a refreshed session cookie (and each chunk of it) to the browser', () => {
    const chunks = Array.from({ length: MAX_CHUNKS }, (_, i) => `${DEFAULT_SESSION_COOKIE}.${i}`);
    const names = list(forwardAuth.addAuthCookiesToResponse, 'addAuthCookiesToResponse');
    // Every cookie the sidecar may set for a session (more chunk names than it uses are harmless).
    expect(names).toEqual(expect.arrayContaining([DEFAULT_SESSION_COOKIE, ...chunks]));
    expect(names.every((n) => n === DEFAULT_SESSION_COOKIE || new RegExp(`^${DEFAULT_SESSION_COOKIE}\\.\\d$`).test(n))).toBe(true);
    expect(nginx).toMatch(/auth_request_set\s+\$authz_set_cookie\s+\$upstream_http_set_cookie;/);
    expect(nginx).toMatch(/add_header\s+Set-Cookie\s+\$authz_set_cookie\s+always;/);
  });

  it('removes the headers only the sidecar or the proxy may set, as nginx blanks them on its check', () => {
    const custom = obj(obj(obj(middlewares['authz-no-client-headers'], 'middleware').headers, 'headers').customRequestHeaders, 'customRequestHeaders');
    expect(Object.values(custom).every((v) => v === '')).toBe(true);
    const nginxCheck = one(nginx, /location = \/_authz \{([^}]*)\}/s, 'nginx /_authz');
    const blanked = all(nginxCheck, /proxy_set_header\s+(\S+)\s+"";/).filter((h) => !/^(x-forwarded-|content-length)/i.test(h));
    // nginx sets X-Original-Method/-URI on its check itself; Traefik has them removed (they would be a second family).
    expect(lower(Object.keys(custom))).toEqual(lower(['X-Original-Method', 'X-Original-URI', ...blanked]));
  });
});

describe('the session cookie name in the proxy examples', () => {
  it("is the sidecar's default, in Caddy's cookie scrubbing and Traefik's cookie list", () => {
    const names = new Set([
      ...all(caddy, /header_up Cookie "[^"]*?([A-Za-z0-9_-]+)\(\?:\\\.\\d\|-s-/),
      ...list(forwardAuth.addAuthCookiesToResponse, 'addAuthCookiesToResponse').map((n) => n.replace(/\.\d$/, '')),
    ]);
    expect([...names]).toEqual([DEFAULT_SESSION_COOKIE]);
  });
});

describe('deploy/istio/mesh-config.yaml: the ext_authz providers for sign-in', () => {
  const mesh = obj(obj(obj(parse(read('deploy/istio/mesh-config.yaml')), 'mesh-config').spec, 'spec').meshConfig, 'meshConfig');
  const providers = (mesh.extensionProviders as Obj[]).map((p) => obj(p, 'provider'));
  const http = obj(providers.find((p) => p.name === 'authz-sidecar-http')?.envoyExtAuthzHttp, 'authz-sidecar-http');
  const grpc = obj(providers.find((p) => p.name === 'authz-sidecar-grpc')?.envoyExtAuthzGrpc, 'authz-sidecar-grpc');

  it('HTTP: sends what tells a navigation from a fetch and a cross-site request, and relays the sign-in answers', () => {
    expect(list(http.includeRequestHeadersInCheck, 'includeRequestHeadersInCheck')).toEqual(
      expect.arrayContaining(['authorization', 'cookie', 'accept', 'sec-fetch-site', 'sec-fetch-mode', 'sec-fetch-dest', 'x-requested-with', 'origin']),
    );
    expect(list(http.headersToDownstreamOnDeny, 'headersToDownstreamOnDeny')).toEqual(expect.arrayContaining(['location', 'set-cookie', 'content-type', 'cache-control', 'www-authenticate']));
    expect(list(http.headersToDownstreamOnAllow, 'headersToDownstreamOnAllow')).toEqual(['set-cookie']);
    expect(lower(list(http.headersToUpstreamOnAllow, 'headersToUpstreamOnAllow'))).toEqual(lower([...IDENTITY, 'cookie']));
  });

  it.each([
    ['HTTP', http],
    ['gRPC', grpc],
  ])('%s: the back-channel logout body goes with the check, up to what the sidecar reads', (_, provider) => {
    expect(provider.includeRequestBodyInCheck).toEqual({ maxRequestBytes: LOGOUT_BODY_LIMIT, allowPartialMessage: true });
  });
});
