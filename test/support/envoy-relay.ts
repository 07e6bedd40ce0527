/**
 * A small Envoy stand-in for the sign-in tests: a node:http reverse proxy on loopback that asks the sidecar's
 * HTTP ext_authz door about every request the way Envoy's HTTP ext_authz filter (`envoy.filters.http.ext_authz`
 * with an `http_service`, Istio's `envoyExtAuthzHttp` extension provider) does, then forwards to the app or
 * answers with the check's denial. Only what sign-in depends on is imitated; each part names the Envoy option
 * (and the Istio field) it stands for:
 *
 * - the check request (`http_service.path_prefix`, Istio `pathPrefix`): the original method, `path_prefix` +
 *   the original path with its raw query, no body unless `with_request_body` says so (Content-Length 0);
 * - `authorization_request.allowed_headers` (Istio `includeRequestHeadersInCheck`): only the listed request
 *   headers go to the check, plus the ones Envoy always sends: Host (`:authority`, the original host),
 *   Authorization and Content-Length. A client's X-Auth-* never reaches the check unless listed;
 * - `with_request_body` (Istio `includeRequestBodyInCheck`: `max_request_bytes` / `maxRequestBytes`,
 *   `allow_partial_message` / `allowPartialMessage`): the body is buffered and sent with the check, with
 *   `x-envoy-auth-partial-body`; a larger body is a 413 to the client unless partial messages are allowed
 *   (then the first `max_request_bytes` go);
 * - the decision: only a check answer of exactly 200 allows (Envoy's HTTP ext_authz: "any other response is a
 *   denial", a 203 or 302 included); the check server unreachable is `status_on_error`, 403 by default;
 * - `authorization_response.allowed_upstream_headers` (Istio `headersToUpstreamOnAllow`): on a 200, the listed
 *   headers of the check's answer are set on the request to the app, replacing the client's;
 *   `x-envoy-auth-headers-to-remove` of the answer (comma-separated names) is always honoured: those headers
 *   are removed from the request to the app;
 * - `authorization_response.allowed_client_headers_on_success` (Istio `headersToDownstreamOnAllow`): on a
 *   200, the listed headers of the check's answer (Set-Cookie of a refreshed session) are added to the app's
 *   answer to the client, every value;
 * - `authorization_response.allowed_client_headers` (Istio `headersToDownstreamOnDeny`): on a denial, the
 *   client gets the check's status and body with the listed headers, every value (Set-Cookie lines), plus
 *   the ones Envoy adds to any such list itself: Location, WWW-Authenticate, Content-Length (an empty list:
 *   every header of the check's answer but Host).
 *
 * Not imitated: path normalization (the tests send canonical paths), retries, timeouts, gRPC, headers_to_add.
 */
import { createServer, request as httpRequest, type IncomingHttpHeaders, type IncomingMessage, type OutgoingHttpHeaders, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';

/** Envoy always sends these with a check (besides `:method` and `:path`). */
const ALWAYS_IN_CHECK = ['host', 'authorization', 'content-length'];
/** Envoy adds these to a non-empty `allowed_client_headers`. */
const ALWAYS_ON_DENY = ['location', 'www-authenticate', 'content-length'];
/** Hop-by-hop headers a proxy never forwards. */
const HOP_BY_HOP = new Set(['connection', 'keep-alive', 'proxy-connection', 'transfer-encoding', 'te', 'trailer', 'upgrade', 'proxy-authorization', 'proxy-authenticate']);

export interface EnvoyRelayOptions {
  /** the ext_authz HTTP service (the sidecar's `extAuthz.http.listen`), `host:port` */
  readonly authzServer: string;
  /** `http_service.path_prefix` (Istio `pathPrefix`; the sidecar's `extAuthz.http.pathPrefix`) */
  readonly pathPrefix: string;
  /** the app, `http://host:port` */
  readonly upstream: string;
  /** `authorization_request.allowed_headers` (Istio `includeRequestHeadersInCheck`) */
  readonly allowedHeaders: readonly string[];
  /** `authorization_response.allowed_upstream_headers` (Istio `headersToUpstreamOnAllow`) */
  readonly allowedUpstreamHeaders: readonly string[];
  /** `authorization_response.allowed_client_headers` (Istio `headersToDownstreamOnDeny`); empty: all */
  readonly allowedClientHeaders: readonly string[];
  /** `authorization_response.allowed_client_headers_on_success` (Istio `headersToDownstreamOnAllow`) */
  readonly allowedClientHeadersOnSuccess: readonly string[];
  /** `with_request_body` (Istio `includeRequestBodyInCheck`); absent: no body in checks */
  readonly withRequestBody?: { readonly maxRequestBytes: number; readonly allowPartialMessage: boolean } | undefined;
  /** the loopback port to listen on (default: any) */
  readonly port?: number;
}

export interface RecordedCheck {
  readonly method: string;
  readonly path: string;
  readonly headers: IncomingHttpHeaders;
  readonly body: string;
  readonly status: number;
}

export interface EnvoyRelay {
  /** http://127.0.0.1:PORT */
  readonly url: string;
  readonly port: number;
  /** every check sent, oldest first, with the status it got */
  readonly checks: RecordedCheck[];
  close(): Promise<void>;
}

/**
 * The relay options from an Istio `envoyExtAuthzHttp` extension provider (deploy/istio/mesh-config.yaml), so
 * a test runs the shipped settings: the mapping is Istio's own (istio/istio pilot/pkg/model/extensionprovider).
 */
export function relayOptionsFromIstio(
  provider: Record<string, unknown>,
  at: { authzServer: string; upstream: string; port?: number },
): EnvoyRelayOptions {
  const list = (key: string): string[] => {
    const value = provider[key];
    if (value === undefined) return [];
    if (!Array.isArray(value) || !value.every((v) => typeof v === 'string')) throw new Error(`envoyExtAuthzHttp.${key} is not a list of header names`);
    return value.map((v) => v.toLowerCase());
  };
  const body = provider['includeRequestBodyInCheck'] as { maxRequestBytes?: unknown; allowPartialMessage?: unknown } | undefined;
  const pathPrefix = provider['pathPrefix'];
  if (typeof pathPrefix !== 'string') throw new Error('envoyExtAuthzHttp.pathPrefix is missing');
  return {
    authzServer: at.authzServer,
    upstream: at.upstream,
    ...(at.port === undefined ? {} : { port: at.port }),
    pathPrefix,
    allowedHeaders: list('includeRequestHeadersInCheck'),
    allowedUpstreamHeaders: list('headersToUpstreamOnAllow'),
    allowedClientHeaders: list('headersToDownstreamOnDeny'),
    allowedClientHeadersOnSuccess: list('headersToDownstreamOnAllow'),
    withRequestBody:
      body === undefined
        ? undefined
        : { maxRequestBytes: typeof body.maxRequestBytes === 'number' ? body.maxRequestBytes : 4096, allowPartialMessage: body.allowPartialMessage === true },
  };
}

function readBody(req: IncomingMessage): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => resolve(Buffer.concat(chunks)));
    req.on('error', reject);
  });
}

/** A header's values as a list (Set-Cookie is the one that comes as an array from node:http). */
function values(headers: IncomingHttpHeaders, name: string): string[] {
  const v = headers[name];
  if (v === undefined) return [];
  return Array.isArray(v) ? v : [v];
}

interface Answer {
  status: number;
  headers: IncomingHttpHeaders;
  body: Buffer;
}

function send(url: URL, method: string, path: string, headers: OutgoingHttpHeaders, body: Buffer): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = httpRequest({ host: url.hostname, port: url.port, method, path, headers, agent: false }, (res) => {
      readBody(res).then((b) => resolve({ status: res.statusCode ?? 502, headers: res.headers, body: b }), reject);
    });
    req.on('error', reject);
    req.end(body);
  });
}

export async function startEnvoyRelay(options: EnvoyRelayOptions): Promise<EnvoyRelay> {
  const authz = new URL(`http://${options.authzServer}`);
  const upstream = new URL(options.upstream);
  const inCheck = new Set([...options.allowedHeaders.map((h) => h.toLowerCase()), ...ALWAYS_IN_CHECK]);
  const toUpstream = options.allowedUpstreamHeaders.map((h) => h.toLowerCase());
  const onSuccess = options.allowedClientHeadersOnSuccess.map((h) => h.toLowerCase());
  const onDeny = options.allowedClientHeaders.length === 0 ? undefined : new Set([...options.allowedClientHeaders.map((h) => h.toLowerCase()), ...ALWAYS_ON_DENY]);
  const checks: RecordedCheck[] = [];

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const method = req.method ?? 'GET';
    const target = req.url ?? '/';
    const body = await readBody(req);

    // with_request_body: buffer up to max_request_bytes; past it a 413, or a partial body when allowed.
    let checkBody: Buffer = Buffer.alloc(0);
    const checkHeaders: OutgoingHttpHeaders = {};
    if (options.withRequestBody !== undefined && body.length > 0) {
      const { maxRequestBytes, allowPartialMessage } = options.withRequestBody;
      if (body.length > maxRequestBytes && !allowPartialMessage) {
        res.writeHead(413, { 'content-type': 'text/plain' }).end('Payload Too Large');
        return;
      }
      checkBody = body.subarray(0, maxRequestBytes);
      checkHeaders['x-envoy-auth-partial-body'] = String(checkBody.length < body.length);
    }
    // allowed_headers (+ Host, Authorization, Content-Length, always).
    for (const [name, value] of Object.entries(req.headers)) {
      if (name === 'content-length' || !inCheck.has(name) || value === undefined) continue;
      checkHeaders[name] = value;
    }
    checkHeaders['content-length'] = String(checkBody.length);

    let check: Answer;
    try {
      check = await send(authz, method, `${options.pathPrefix}${target}`, checkHeaders, checkBody);
    } catch {
      // status_on_error: 403 by default.
      checks.push({ method, path: `${options.pathPrefix}${target}`, headers: checkHeaders as IncomingHttpHeaders, body: checkBody.toString('utf8'), status: 0 });
      res.writeHead(403).end();
      return;
    }
    checks.push({ method, path: `${options.pathPrefix}${target}`, headers: checkHeaders as IncomingHttpHeaders, body: checkBody.toString('utf8'), status: check.status });

    if (check.status !== 200) {
      // A denial: the check's status, body and allowed_client_headers, every value.
      const out: Array<[string, string]> = [];
      for (const name of Object.keys(check.headers)) {
        if (name === 'host' || HOP_BY_HOP.has(name) || (onDeny !== undefined && !onDeny.has(name))) continue;
        for (const v of values(check.headers, name)) out.push([name, v]);
      }
      res.writeHead(check.status, out.flat());
      res.end(check.body);
      return;
    }

    // An allow: the request to the app, with allowed_upstream_headers set and x-envoy-auth-headers-to-remove
    // removed.
    const forward: OutgoingHttpHeaders = {};
    for (const [name, value] of Object.entries(req.headers)) {
      if (HOP_BY_HOP.has(name) || value === undefined) continue;
      forward[name] = value;
    }
    for (const name of toUpstream) {
      const v = check.headers[name];
      if (v !== undefined) forward[name] = v;
    }
    const remove = values(check.headers, 'x-envoy-auth-headers-to-remove')
      .flatMap((v) => v.split(','))
      .map((n) => n.trim().toLowerCase())
      .filter((n) => n !== '');
    for (const name of remove) delete forward[name];
    forward['content-length'] = String(body.length);
    let app: Answer;
    try {
      app = await send(upstream, method, target, forward, body);
    } catch {
      res.writeHead(503, { 'content-type': 'text/plain' }).end('upstream connect error');
      return;
    }
    // allowed_client_headers_on_success: added to the app's answer, every value.
    const out: Array<[string, string]> = [];
    for (const name of Object.keys(app.headers)) {
      if (HOP_BY_HOP.has(name)) continue;
      for (const v of values(app.headers, name)) out.push([name, v]);
    }
    for (const name of onSuccess) for (const v of values(check.headers, name)) out.push([name, v]);
    res.writeHead(app.status, out.flat());
    res.end(app.body);
  }

  const server: Server = createServer((req, res) => {
    handle(req, res).catch((err: unknown) => {
      if (!res.headersSent) res.writeHead(500, { 'content-type': 'text/plain' });
      res.end(`relay error: ${String(err)}`);
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(options.port ?? 0, '127.0.0.1', resolve);
  });
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    port,
    checks,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
