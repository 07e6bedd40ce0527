/**
 * The two check doors that answer over HTTP: Envoy's HTTP ext_authz service and forward-auth (nginx
 * auth_request, Traefik ForwardAuth, Caddy forward_auth). Each door only says how to read the original
 * request out of the check request and how to render an allow; the shell routes every path and method
 * here, never reads the body (whatever its content type), and a deny is the decision's own answer
 * (status, WWW-Authenticate, problem body), which the proxy passes on to its client.
 */
import type { FastifyBaseLogger, FastifyReply, FastifyRequest } from 'fastify';
import { headerMapFromRaw, type HeaderMap, type WireRequest } from '../core/access-request.js';
import type { DecisionEngine } from '../core/decide.js';
import { problemAnswer, type UpstreamChanges } from '../core/decision.js';
import type { DecisionObserver, DoorTracing, FrontDoor } from './front-door.js';
import { bodyReader, createHttpShell, sendAnswer } from './http-shell.js';

/** Envoy may send (part of) the body with a check; we never read it, and refuse a declared body past this. */
export const CHECK_BODY_LIMIT = 1024 * 1024;

/**
 * The original request as a door reads it from the check request. `direct`: the request is itself the
 * original one (nginx proxies the sign-in routes to the forward-auth listener), so its answer goes to the
 * browser as it is; otherwise the proxy reads the answer as a check's.
 */
export type OriginalRequest = Pick<WireRequest, 'method' | 'target' | 'host' | 'redirects'> & { readonly direct?: boolean };

export interface CheckDoor {
  readonly name: 'extAuthzHttp' | 'forwardAuth';
  /** False for a door whose proxy cannot be told to remove headers (see WireRequest.removesHeaders). */
  readonly removesHeaders: boolean;
  /** The original request, or why it cannot be read (answered with 400). */
  translate(check: { readonly method: string; readonly url: string; readonly headers: HeaderMap }): OriginalRequest | { readonly error: string };
  /** Headers of the 200 answer on allow; `headers` are the check request's. */
  allowHeaders(changes: UpstreamChanges, headers: HeaderMap): Readonly<Record<string, string>>;
}

export interface HttpCheckDoorOptions {
  readonly engine: DecisionEngine;
  readonly logger: FastifyBaseLogger;
  readonly observe: DecisionObserver;
  readonly tracing?: DoorTracing | undefined;
}

export function createHttpCheckDoor(door: CheckDoor, options: HttpCheckDoorOptions): FrontDoor {
  const { engine } = options;
  const shell = createHttpShell({ logger: options.logger, oneRoute: true });

  async function handle(request: FastifyRequest, reply: FastifyReply): Promise<FastifyReply> {
    const raw = request.raw;
    const headers = headerMapFromRaw(raw.rawHeaders);
    // The original request's id, as the proxy passed it (the shell's request-id rule).
    const requestId = request.id;
    const early = shell.preflight(request);
    if (early !== undefined) return sendAnswer(reply, early);
    if (Number(headers['content-length']?.[0] ?? 0) > CHECK_BODY_LIMIT) {
      // The body stays unread: the connection cannot be reused.
      return sendAnswer(reply, problemAnswer('BODY_TOO_LARGE', 'the check request body is too large', requestId, { connection: 'close' }));
    }
    const started = process.hrtime.bigint();
    const original = door.translate({ method: raw.method ?? 'GET', url: (raw as { originalUrl?: string }).originalUrl ?? raw.url ?? '/', headers });
    if ('error' in original) return sendAnswer(reply, problemAnswer('BAD_REQUEST', original.error, requestId));
    // The parent is the check call's own trace context (Envoy's ext_authz span, the proxy's auth request).
    const server = options.tracing?.startServerSpan(door.name, original.method, raw.headers);
    const deciding = engine.decide({
      ...(server === undefined ? {} : { trace: server.context }),
      method: original.method,
      target: original.target,
      host: original.host,
      ...(original.redirects === undefined ? {} : { redirects: original.redirects }),
      frontDoor: door.name,
      headers,
      peer: '',
      requestId,
      rewritesPath: false,
      removesHeaders: door.removesHeaders,
      // Envoy sends the original body with the check when told to (with_request_body); nginx proxies the
      // sign-in routes with theirs.
      readBody: bodyReader(raw),
    });
    // A decision that throws (a bug) still ends its span.
    const decision = await deciding.catch((err: unknown) => {
      server?.span.end();
      throw err;
    });
    options.observe(decision, started, options.tracing?.logIds(server));
    if (server !== undefined) options.tracing?.recordDecision(server, decision);
    if (decision.outcome === 'allow') {
      const allow = door.allowHeaders(decision.upstream, headers);
      const toClient = decision.answer.headers;
      // A refreshed session's Set-Cookie rides on the 200 (Envoy: allowed_client_headers_on_success; nginx:
      // auth_request_set + add_header).
      return sendAnswer(reply, { status: 200, headers: Object.keys(toClient).length === 0 ? allow : { ...allow, ...toClient }, body: '' });
    }
    if (decision.outcome === 'signIn' && decision.answer.status === 200 && original.direct !== true) {
      // A check answered 200 is an allow: the proxy would pass the request on to the application. A sign-in
      // page (userinfo, the provider chooser) answered as a check goes out as 203, an empty one (the
      // back-channel logout's) as 204, which Envoy relays to the client as the denied response and which
      // browsers, fetch() and providers (Back-Channel Logout 1.0 §2.8) read as a success.
      return sendAnswer(reply, { ...decision.answer, status: decision.answer.body === '' ? 204 : 203 });
    }
    return sendAnswer(reply, decision.answer);
  }

  shell.route(handle);
  return shell.door(door.name);
}
