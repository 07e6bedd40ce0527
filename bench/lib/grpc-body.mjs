/**
 * The ext_authz CheckRequest the gRPC rows send, encoded by hand (a few protobuf fields), framed as one
 * gRPC message; and a one-off check over node:http2 that the sidecar answers it OK before load starts.
 */
import { connect } from 'node:http2';

function varint(n) {
  const out = [];
  while (n > 0x7f) {
    out.push((n & 0x7f) | 0x80);
    n >>>= 7;
  }
  out.push(n);
  return Buffer.from(out);
}

function field(number, value) {
  const bytes = typeof value === 'string' ? Buffer.from(value, 'utf8') : value;
  return Buffer.concat([varint((number << 3) | 2), varint(bytes.length), bytes]);
}

/** CheckRequest{attributes{request{http{method, headers, path, host}}}} as a framed gRPC message. */
export function checkRequestFrame({ method, path, host, headers }) {
  const headerEntries = Object.entries(headers).map(([k, v]) => field(3, Buffer.concat([field(1, k), field(2, v)])));
  const http = Buffer.concat([field(2, method), ...headerEntries, field(4, path), field(5, host)]);
  const message = field(1, field(4, field(2, http)));
  const frame = Buffer.alloc(5 + message.length);
  frame.writeUInt8(0, 0);
  frame.writeUInt32BE(message.length, 1);
  message.copy(frame, 5);
  return frame;
}

/**
 * Sends one frame to Authorization/Check and returns the CheckResponse's status code (0 = allowed), read
 * from field 1 (google.rpc.Status) field 1 (code); a missing code is 0 in proto3.
 */
export function checkOnce(url, frame) {
  return new Promise((resolve, reject) => {
    const session = connect(url);
    session.on('error', reject);
    const stream = session.request({
      ':method': 'POST',
      ':path': '/envoy.service.auth.v3.Authorization/Check',
      'content-type': 'application/grpc',
      te: 'trailers',
    });
    const chunks = [];
    stream.on('data', (c) => chunks.push(c));
    stream.on('trailers', (trailers) => {
      const body = Buffer.concat(chunks).subarray(5);
      session.close();
      if (trailers['grpc-status'] !== '0') return reject(new Error(`grpc-status ${trailers['grpc-status']}`));
      // CheckResponse.status (field 1, length-delimited) then Status.code (field 1, varint).
      if (body[0] !== 0x0a) return resolve(0);
      const status = body.subarray(2, 2 + body[1]);
      resolve(status[0] === 0x08 ? status[1] : 0);
    });
    stream.on('error', reject);
    stream.end(frame);
  });
}
