/**
 * Envoy/Istio gRPC ext_authz (`extAuthz.grpc`, Istio `envoyExtAuthzGrpc`):
 * `envoy.service.auth.v3.Authorization/Check`, plus `grpc.health.v1.Health` on the same port (SERVING
 * only while ready). The raw `path` (query included, not decoded) goes through the same canonical path
 * rules; `source.principal` (the Istio SPIFFE id) is the `peer` request field.
 *
 * A deny is a successful RPC with `denied_response` (status 16 for 401, 7 for 403, 14 for 503, 3 for 400):
 * a gRPC error would be an ext_authz failure, which Envoy may be configured to let through (failure_mode_allow).
 * Identity headers go in `ok_response.headers` with `append: false` and OVERWRITE_IF_EXISTS_OR_ADD, so they
 * replace a client's copy in every Envoy version; `headers_to_remove` never lists a header we set, since
 * Envoy applies removals after additions.
 */
import { fileURLToPath } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import type { FastifyBaseLogger } from 'fastify';
import { headerMap, type HeaderMap } from '../core/access-request.js';
import type { DecisionEngine } from '../core/decide.js';
import { problemAnswer, type AnswerHeaders, type ClientAnswer, type Decision } from '../core/decision.js';
import type { ReasonCode } from '../core/errors.js';
import type { DecisionObserver, DoorTracing, FrontDoor } from './front-door.js';
import { requestIdOrNew } from './request-id.js';

const PROTO_DIR = fileURLToPath(new URL('../../proto', import.meta.url));
/** How often Health/Watch streams look for a change of readiness. */
const HEALTH_WATCH_INTERVAL_MS = 1_000;

/** gRPC status codes (google.rpc.Code) for each HTTP status of an answer; UNKNOWN (2) for any other. */
const GRPC_CODE: Readonly<Record<number, number>> = { 200: 0, 400: 3, 401: 16, 403: 7, 404: 5, 408: 4, 413: 8, 431: 8, 500: 13, 502: 14, 503: 14, 504: 4 };
const GRPC_UNKNOWN = 2;
const GRPC_PERMISSION_DENIED = 7;

interface HeaderValueOption {
  header: { key: string; value: string };
  append: { value: boolean };
  append_action: 'OVERWRITE_IF_EXISTS_OR_ADD' | 'APPEND_IF_EXISTS_OR_ADD';
}

interface CheckRequest {
  attributes?: {
    source?: { principal?: string };
    request?: {
      http?: {
        id?: string;
        method?: string;
        path?: string;
        host?: string;
        headers?: Record<string, string>;
        body?: string;
        raw_body?: Buffer;
        header_map?: { headers?: Array<{ key?: string; value?: string; raw_value?: Buffer }> };
      };
    };
  };
}

interface CheckResponse {
  status: { code: number; message?: string };
  ok_response?: { headers: HeaderValueOption[]; headers_to_remove: string[]; query_parameters_to_remove: string[]; response_headers_to_add?: HeaderValueOption[] };
  denied_response?: { status: { code: number }; headers: HeaderValueOption[]; body: string };
}

export interface ExtAuthzGrpcOptions {
  readonly engine: DecisionEngine;
  readonly logger: FastifyBaseLogger;
  readonly observe: DecisionObserver;
  readonly tracing?: DoorTracing | undefined;
}

function overwrite(key: string, value: string): HeaderValueOption {
  return { header: { key, value }, append: { value: false }, append_action: 'OVERWRITE_IF_EXISTS_OR_ADD' };
}

/** An answer's headers: one value overwrites; a header with several values (Set-Cookie) is added value by value. */
function answerHeaders(headers: AnswerHeaders): HeaderValueOption[] {
  const out: HeaderValueOption[] = [];
  for (const [key, value] of Object.entries(headers)) {
    if (typeof value === 'string') out.push(overwrite(key, value));
    else for (const v of value) out.push({ header: { key, value: v }, append: { value: true }, append_action: 'APPEND_IF_EXISTS_OR_ADD' });
  }
  return out;
}

/** Envoy sends headers either as the `headers` map (duplicates joined by ",") or as `header_map`. */
function headersOf(http: NonNullable<NonNullable<NonNullable<CheckRequest['attributes']>['request']>['http']>): HeaderMap {
  const entries: Array<[string, string]> = Object.entries(http.headers ?? {});
  for (const h of http.header_map?.headers ?? []) {
    if (h.key === undefined) continue;
    const value = h.value !== undefined && h.value !== '' ? h.value : (h.raw_value?.toString('utf8') ?? '');
    entries.push([h.key, value]);
  }
  return headerMap(entries);
}

/** gRPC metadata as a header carrier (text values only) for trace context extraction. */
function metadataCarrier(metadata: grpc.Metadata): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [key, value] of Object.entries(metadata.getMap())) if (typeof value === 'string') out[key] = value;
  return out;
}

/** The denied CheckResponse of an answer: the one gRPC problem writer, so status and body always agree. */
function denied(answer: ClientAnswer, reason: ReasonCode): CheckResponse {
  // A sign-in route's 200 or 302 is still a denied response (the request never reaches the application).
  const code = answer.status < 400 ? GRPC_PERMISSION_DENIED : (GRPC_CODE[answer.status] ?? GRPC_UNKNOWN);
  return {
    status: { code, message: reason },
    denied_response: {
      status: { code: answer.status },
      headers: answerHeaders(answer.headers),
      body: answer.body,
    },
  };
}

function render(decision: Decision): CheckResponse {
  if (decision.outcome !== 'allow') return denied(decision.answer, decision.reason);
  const { set, remove, removeQuery } = decision.upstream;
  const toClient = decision.answer.headers;
  return {
    status: { code: 0 },
    ok_response: {
      headers: Object.entries(set).map(([k, v]) => overwrite(k, v)),
      headers_to_remove: [...remove],
      query_parameters_to_remove: [...removeQuery],
      // A refreshed session's Set-Cookie, added to the application's answer.
      ...(Object.keys(toClient).length === 0 ? {} : { response_headers_to_add: answerHeaders(toClient) }),
    },
  };
}

export function createExtAuthzGrpcDoor(options: ExtAuthzGrpcOptions): FrontDoor {
  const { engine, logger } = options;
  const definitions = protoLoader.loadSync(['envoy/service/auth/v3/external_auth.proto', 'grpc/health/v1/health.proto'], {
    includeDirs: [PROTO_DIR],
    keepCase: true,
    longs: String,
    enums: String,
    defaults: false,
    oneofs: true,
  });
  const loaded = grpc.loadPackageDefinition(definitions) as unknown as {
    envoy: { service: { auth: { v3: { Authorization: grpc.ServiceClientConstructor } } } };
    grpc: { health: { v1: { Health: grpc.ServiceClientConstructor } } };
  };

  async function check(request: CheckRequest, metadata: grpc.Metadata): Promise<CheckResponse> {
    const started = process.hrtime.bigint();
    const http = request.attributes?.request?.http;
    if (http === undefined || typeof http.path !== 'string' || http.path === '' || typeof http.method !== 'string' || http.method === '') {
      return denied(problemAnswer('BAD_REQUEST', 'the check request has no HTTP method and path'), 'BAD_REQUEST');
    }
    const headers = headersOf(http);
    // The parent is the gRPC call's own metadata (Envoy's ext_authz span), never the original request's
    // headers inside the CheckRequest.
    const server = options.tracing?.startServerSpan('extAuthzGrpc', http.method, metadataCarrier(metadata));
    const deciding = engine.decide({
      ...(server === undefined ? {} : { trace: server.context }),
      frontDoor: 'extAuthzGrpc',
      method: http.method,
      target: http.path,
      host: http.host ?? headers[':authority']?.[0] ?? '',
      headers,
      peer: request.attributes?.source?.principal ?? '',
      // The original request's x-request-id when sane, else Envoy's request id, else a new one.
      requestId: requestIdOrNew(headers['x-request-id']?.[0], http.id),
      rewritesPath: false,
      removesHeaders: true,
      // The original body, when Envoy sends it (with_request_body): read by the back-channel logout route only.
      readBody: (limit) => {
        const body = http.raw_body !== undefined && http.raw_body.length > 0 ? http.raw_body.toString('utf8') : (http.body ?? '');
        return Promise.resolve(Buffer.byteLength(body) > limit ? undefined : body);
      },
    });
    // A decision that throws (a bug) still ends its span.
    const decision = await deciding.catch((err: unknown) => {
      server?.span.end();
      throw err;
    });
    options.observe(decision, started, options.tracing?.logIds(server));
    if (server !== undefined) options.tracing?.recordDecision(server, decision);
    return render(decision);
  }

  const server = new grpc.Server();
  server.addService(loaded.envoy.service.auth.v3.Authorization.service, {
    Check(call: grpc.ServerUnaryCall<CheckRequest, CheckResponse>, callback: grpc.sendUnaryData<CheckResponse>): void {
      check(call.request, call.metadata).then(
        (response) => callback(null, response),
        (err: unknown) => {
          // Never allow on a bug, and never a gRPC error (Envoy's failure_mode_allow could let it through).
          logger.error({ err }, 'unexpected error in a gRPC check');
          callback(null, denied(problemAnswer('INTERNAL', 'internal error'), 'INTERNAL'));
        },
      );
    },
  });

  let listening = false;
  let draining = false;
  const servingStatus = (): 'SERVING' | 'NOT_SERVING' => (!draining && engine.readiness().ready ? 'SERVING' : 'NOT_SERVING');
  /** Open Health/Watch streams: told NOT_SERVING and ended when the drain begins (they never end by themselves). */
  const watchers = new Map<grpc.ServerWritableStream<unknown, { status: string }>, NodeJS.Timeout>();
  server.addService(loaded.grpc.health.v1.Health.service, {
    Check(_call: grpc.ServerUnaryCall<unknown, unknown>, callback: grpc.sendUnaryData<{ status: string }>): void {
      callback(null, { status: servingStatus() });
    },
    Watch(call: grpc.ServerWritableStream<unknown, { status: string }>): void {
      let last = servingStatus();
      call.write({ status: last });
      if (draining) {
        call.end();
        return;
      }
      const timer = setInterval(() => {
        const now = servingStatus();
        if (now !== last) call.write({ status: now });
        last = now;
      }, HEALTH_WATCH_INTERVAL_MS);
      watchers.set(call, timer);
      call.on('cancelled', () => {
        clearInterval(timer);
        watchers.delete(call);
      });
    },
  });

  async function drain(deadline: number): Promise<void> {
    draining = true;
    // Watch streams learn that this server stops serving, then end: grpc-js's tryShutdown waits for every
    // open call, and a Watch stream never ends by itself. In-flight checks finish; at the deadline the rest
    // are cancelled.
    for (const [call, timer] of watchers) {
      clearInterval(timer);
      call.write({ status: 'NOT_SERVING' });
      call.end();
    }
    watchers.clear();
    if (!listening) {
      server.forceShutdown();
      return;
    }
    await new Promise<void>((resolve) => {
      const cut = setTimeout(() => {
        server.forceShutdown();
        resolve();
      }, Math.max(0, deadline - Date.now()));
      server.tryShutdown(() => {
        clearTimeout(cut);
        resolve();
      });
    });
    listening = false;
  }

  return {
    name: 'extAuthzGrpc',
    listen: (address) =>
      new Promise((resolve, reject) => {
        server.bindAsync(address, grpc.ServerCredentials.createInsecure(), (err, port) => {
          if (err) {
            reject(err);
            return;
          }
          listening = true;
          resolve(address.startsWith('unix:') ? address : address.replace(/:\d+$/, `:${port}`));
        });
      }),
    ready: () => listening && !draining,
    drain,
    close: () => drain(Date.now()),
  };
}
