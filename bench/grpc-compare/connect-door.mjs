/**
 * Bench-only prototype (never shipped): the ext_authz gRPC door of src/frontends/ext-authz-grpc.ts on
 * @connectrpc/connect-node (v2) and @bufbuild/protobuf (v2) instead of @grpc/grpc-js and
 * @grpc/proto-loader. Same FrontDoor shape, same engine call, same rendering, same health service, same
 * drain; only the transport and the message runtime differ. It exports `createExtAuthzGrpcDoor` because
 * build.mjs swaps it in for dist/frontends/ext-authz-grpc.js when it bundles the real CLI: the prototype
 * is then `authz-sidecar serve` with this door, the same config loader, engine, admin listener, decision
 * observer and metrics as the real one.
 *
 * Messages: the descriptors of proto/ (the same files the grpc-js door loads) compiled by buf at bench time
 * and embedded in the bundle as a serialized FileDescriptorSet (`grpc-compare:descriptors`), the way
 * protoc-gen-es output embeds them; read once at start with createFileRegistry.
 *
 * Differences from protobufjs that matter for the code: absent strings are '' (not undefined), oneofs are
 * `{ case, value }`, BoolValue fields are plain booleans, enums are numbers, bytes are Uint8Array.
 */
import { Buffer } from 'node:buffer';
import { createServer } from 'node:http2';
import { clearTimeout, setTimeout } from 'node:timers';
import { createFileRegistry, fromBinary } from '@bufbuild/protobuf';
import { FileDescriptorSetSchema } from '@bufbuild/protobuf/wkt';
import { connectNodeAdapter } from '@connectrpc/connect-node';
import descriptorSetBase64 from 'grpc-compare:descriptors';
import { headerMap } from '../../dist/core/access-request.js';
import { problemAnswer } from '../../dist/core/decision.js';
import { listenOn } from '../../dist/frontends/listen.js';
import { requestIdOrNew } from '../../dist/frontends/request-id.js';

/** How often Health/Watch streams look for a change of readiness (as the grpc-js door). */
const HEALTH_WATCH_INTERVAL_MS = 1_000;
/** grpc-js's default maximum received message (4 MiB); connect's default is ~4 GiB. */
const MAX_RECEIVE_BYTES = 4 * 1024 * 1024;

/** gRPC status codes (google.rpc.Code) for each HTTP status of an answer; UNKNOWN (2) for any other (copied from the grpc-js door). */
const GRPC_CODE = { 200: 0, 400: 3, 401: 16, 403: 7, 404: 5, 408: 4, 413: 8, 431: 8, 500: 13, 502: 14, 503: 14, 504: 4 };
const GRPC_UNKNOWN = 2;
/** envoy.config.core.v3.HeaderValueOption.HeaderAppendAction.OVERWRITE_IF_EXISTS_OR_ADD */
const OVERWRITE_IF_EXISTS_OR_ADD = 2;
/** grpc.health.v1.HealthCheckResponse.ServingStatus */
const SERVING = 1;
const NOT_SERVING = 2;

const registry = createFileRegistry(fromBinary(FileDescriptorSetSchema, Buffer.from(descriptorSetBase64, 'base64')));
const AUTHORIZATION = registry.getService('envoy.service.auth.v3.Authorization');
const HEALTH = registry.getService('grpc.health.v1.Health');
if (AUTHORIZATION === undefined || HEALTH === undefined) throw new Error('grpc-compare: the embedded descriptors lack the Authorization or Health service');

function overwrite(key, value) {
  // `append` is a google.protobuf.BoolValue: protobuf-es unboxes wrappers, so false is BoolValue{value: false}.
  return { header: { key, value }, append: false, appendAction: OVERWRITE_IF_EXISTS_OR_ADD };
}

/** Envoy sends headers either as the `headers` map (duplicates joined by ",") or as `header_map`. */
function headersOf(http) {
  const entries = Object.entries(http.headers);
  for (const h of http.headerMap?.headers ?? []) {
    // proto3: an absent key is '' here where protobufjs (defaults: false) gives undefined; '' is skipped alike.
    if (h.key === '') continue;
    const value = h.value !== '' ? h.value : Buffer.from(h.rawValue.buffer, h.rawValue.byteOffset, h.rawValue.byteLength).toString('utf8');
    entries.push([h.key, value]);
  }
  return headerMap(entries);
}

/** The denied CheckResponse of an answer (init shape; connect creates the message). */
function denied(answer, reason) {
  return {
    status: { code: GRPC_CODE[answer.status] ?? GRPC_UNKNOWN, message: reason },
    httpResponse: {
      case: 'deniedResponse',
      value: {
        status: { code: answer.status },
        headers: Object.entries(answer.headers).map(([k, v]) => overwrite(k, v)),
        body: answer.body,
      },
    },
  };
}

function render(decision) {
  if (decision.outcome !== 'allow') return denied(decision.answer, decision.reason);
  const { set, remove, removeQuery } = decision.upstream;
  return {
    status: { code: 0 },
    httpResponse: {
      case: 'okResponse',
      value: {
        headers: Object.entries(set).map(([k, v]) => overwrite(k, v)),
        headersToRemove: [...remove],
        queryParametersToRemove: [...removeQuery],
      },
    },
  };
}

export function createExtAuthzGrpcDoor(options) {
  const { engine, logger } = options;

  async function check(request) {
    const started = process.hrtime.bigint();
    const http = request.attributes?.request?.http;
    if (http === undefined || http.path === '' || http.method === '') {
      return denied(problemAnswer('BAD_REQUEST', 'the check request has no HTTP method and path'), 'BAD_REQUEST');
    }
    const headers = headersOf(http);
    const decision = await engine.decide({
      frontDoor: 'extAuthzGrpc',
      method: http.method,
      target: http.path,
      // '' where the grpc-js door sees undefined: `||` here stands for its `??`.
      host: http.host || (headers[':authority']?.[0] ?? ''),
      headers,
      peer: request.attributes?.source?.principal ?? '',
      requestId: requestIdOrNew(headers['x-request-id']?.[0], http.id),
      rewritesPath: false,
      removesHeaders: true,
    });
    options.observe(decision, started);
    return render(decision);
  }

  let listening = false;
  let draining = false;
  const servingStatus = () => (!draining && engine.readiness().ready ? SERVING : NOT_SERVING);
  /** Wakes the open Health/Watch streams when the drain begins. */
  const drainWaiters = new Set();

  const handler = connectNodeAdapter({
    grpc: true,
    grpcWeb: false,
    connect: false,
    readMaxBytes: MAX_RECEIVE_BYTES,
    // protobufjs drops fields it does not know (most of what Envoy sends); protobuf-es would keep them.
    binaryOptions: { readUnknownFields: false },
    routes(router) {
      router.service(AUTHORIZATION, {
        async check(request) {
          try {
            return await check(request);
          } catch (err) {
            // Never allow on a bug, and never a gRPC error (Envoy's failure_mode_allow could let it through).
            logger.error({ err }, 'unexpected error in a gRPC check');
            return denied(problemAnswer('INTERNAL', 'internal error'), 'INTERNAL');
          }
        },
      });
      router.service(HEALTH, {
        check: () => ({ status: servingStatus() }),
        async *watch(_request, context) {
          let last = servingStatus();
          yield { status: last };
          while (!draining && !context.signal.aborted) {
            let wake;
            const woken = new Promise((resolve) => {
              wake = resolve;
            });
            const timer = setTimeout(wake, HEALTH_WATCH_INTERVAL_MS);
            drainWaiters.add(wake);
            context.signal.addEventListener('abort', wake, { once: true });
            await woken;
            clearTimeout(timer);
            drainWaiters.delete(wake);
            context.signal.removeEventListener('abort', wake);
            if (context.signal.aborted) return;
            const now = servingStatus();
            if (now !== last) yield { status: now };
            last = now;
          }
          // The drain began: the stream learns that this server stops serving, then ends.
          if (last !== NOT_SERVING) yield { status: NOT_SERVING };
        },
      });
    },
  });

  // As grpc-js configures node:http2 for its server: no header block limit, session memory not enforced
  // (node degrades badly at the limit). connect-node leaves the server to the application.
  const server = createServer({ maxSendHeaderBlockLength: Number.MAX_SAFE_INTEGER, maxSessionMemory: Number.MAX_SAFE_INTEGER }, handler);
  const sessions = new Set();
  server.on('session', (session) => {
    sessions.add(session);
    session.once('close', () => sessions.delete(session));
  });

  async function drain(deadline) {
    draining = true;
    for (const wake of drainWaiters) wake();
    drainWaiters.clear();
    if (!listening) return;
    // What grpc-js's tryShutdown does: no new connections, a GOAWAY on each session, in-flight streams
    // finish; at the deadline what is left is destroyed.
    await new Promise((resolve) => {
      // At the deadline the sessions left are destroyed and the drain is over, as grpc-js's forceShutdown.
      const cut = setTimeout(() => {
        for (const session of sessions) session.destroy();
        resolve();
      }, Math.max(0, deadline - Date.now()));
      server.close(() => {
        clearTimeout(cut);
        resolve();
      });
      for (const session of sessions) session.close();
    });
    listening = false;
  }

  return {
    name: 'extAuthzGrpc',
    async listen(address) {
      const bound = await listenOn(
        address,
        (at) =>
          new Promise((resolve, reject) => {
            server.once('error', reject);
            const done = () => {
              server.off('error', reject);
              resolve();
            };
            if ('path' in at) server.listen(at.path, done);
            else server.listen(at.port, at.host, done);
          }),
        () => server.address(),
      );
      listening = true;
      return bound;
    },
    ready: () => listening && !draining,
    drain,
    close: () => drain(Date.now()),
  };
}
