/**
 * The checks the comparison asks before it loads anything, as Envoy would ask them: a @grpc/grpc-js client
 * built from Envoy's OFFICIAL protos (shipped by @grpc/grpc-js-xds, as test/integration/ext-authz-grpc.test.ts
 * uses them), not from this repository's proto/ subset; and the raw bytes of one framed call over node:http2,
 * to compare the two servers' answers byte for byte.
 */
import { createRequire } from 'node:module';
import { connect } from 'node:http2';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';

const DEPS = join(dirname(createRequire(import.meta.url).resolve('@grpc/grpc-js-xds/package.json')), 'deps');

let Authorization;
function authorizationClient() {
  if (Authorization === undefined) {
    const definition = protoLoader.loadSync('envoy/service/auth/v3/external_auth.proto', {
      includeDirs: [join(DEPS, 'envoy-api'), join(DEPS, 'xds'), join(DEPS, 'googleapis'), join(DEPS, 'protoc-gen-validate')],
      keepCase: true,
      longs: String,
      enums: String,
      defaults: true,
      oneofs: true,
    });
    Authorization = grpc.loadPackageDefinition(definition).envoy.service.auth.v3.Authorization;
  }
  return Authorization;
}

/**
 * A client of `address` (host:port); `check(http, source)` resolves with the decoded CheckResponse.
 * `channelOptions` go to grpc-js (`grpc.use_local_subchannel_pool: 1` for a connection of its own).
 */
export function officialClient(address, channelOptions = {}) {
  const Client = authorizationClient();
  const client = new Client(address, grpc.credentials.createInsecure(), channelOptions);
  return {
    check: (http, source = {}) =>
      new Promise((resolve, reject) => {
        client.Check({ attributes: { source, request: { http } } }, { deadline: Date.now() + 5_000 }, (err, res) => (err ? reject(err) : resolve(res)));
      }),
    close: () => client.close(),
  };
}

/**
 * One framed request to Authorization/Check over cleartext HTTP/2; resolves with the response body bytes
 * (the framed CheckResponse) and grpc-status, or rejects when the server cannot be reached.
 */
export function rawCheck(url, frame, timeoutMs = 2_000) {
  return new Promise((resolve, reject) => {
    const session = connect(url);
    const timer = setTimeout(() => {
      session.destroy();
      reject(new Error(`${url}: no answer within ${timeoutMs} ms`));
    }, timeoutMs);
    const fail = (err) => {
      clearTimeout(timer);
      session.destroy();
      reject(err);
    };
    session.on('error', fail);
    const stream = session.request({ ':method': 'POST', ':path': '/envoy.service.auth.v3.Authorization/Check', 'content-type': 'application/grpc', te: 'trailers' });
    const chunks = [];
    const done = (trailers) => {
      clearTimeout(timer);
      session.close();
      resolve({ grpcStatus: trailers['grpc-status'], body: Buffer.concat(chunks) });
    };
    stream.on('data', (c) => chunks.push(c));
    // A gRPC error may come trailers-only: grpc-status in the response headers.
    stream.on('response', (headers) => headers['grpc-status'] !== undefined && stream.once('end', () => done(headers)));
    stream.on('trailers', done);
    stream.on('error', fail);
    stream.end(frame);
  });
}

let Health;
/** grpc.health.v1.Health/Check of `address` (the standard definition, in proto/): resolves with the status name. */
export function healthCheck(address) {
  if (Health === undefined) {
    const definition = protoLoader.loadSync('grpc/health/v1/health.proto', {
      includeDirs: [fileURLToPath(new URL('../../proto', import.meta.url))],
      keepCase: true,
      enums: String,
      defaults: true,
    });
    Health = grpc.loadPackageDefinition(definition).grpc.health.v1.Health;
  }
  const client = new Health(address, grpc.credentials.createInsecure());
  return new Promise((resolve, reject) => {
    client.Check({ service: '' }, { deadline: Date.now() + 5_000 }, (err, res) => {
      client.close();
      if (err) reject(err);
      else resolve(res.status);
    });
  });
}
