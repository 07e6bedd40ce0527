/**
 * Envoy's gRPC ext_authz door: how a CheckRequest becomes the WireRequest, and how a Decision becomes a
 * CheckResponse (ok_response with overwriting headers and removals, or denied_response carrying the
 * decision's answer with the matching google.rpc code). The client is built from proto/ with
 * @grpc/proto-loader; the engine is a fake that records the WireRequest.
 */
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { afterEach, describe, expect, it } from 'vitest';
import type { WireRequest } from '../../../src/core/access-request.js';
import type { Decision } from '../../../src/core/decision.js';
import type { ReasonCode } from '../../../src/core/errors.js';
import { createExtAuthzGrpcDoor } from '../../../src/frontends/ext-authz-grpc.js';
import type { FrontDoor } from '../../../src/frontends/front-door.js';
import { allow, deny, fakeEngine, silentLogger, UUID, type FakeEngine } from './fake-engine.js';

interface HeaderValueOption {
  header: { key: string; value: string };
  append: { value: boolean } | null;
  append_action: string;
}
interface CheckResponse {
  status: { code: number; message: string };
  http_response: 'ok_response' | 'denied_response';
  ok_response?: { headers: HeaderValueOption[]; headers_to_remove: string[]; query_parameters_to_remove: string[] };
  denied_response?: { status: { code: string }; headers: HeaderValueOption[]; body: string };
}
type Client = grpc.Client & { Check(req: unknown, cb: (err: grpc.ServiceError | null, res: CheckResponse) => void): void };

const PROTO_DIR = join(import.meta.dirname, '../../../proto');
const definitions = protoLoader.loadSync('envoy/service/auth/v3/external_auth.proto', {
  includeDirs: [PROTO_DIR],
  keepCase: true,
  longs: String,
  enums: String,
  defaults: true,
  oneofs: true,
});
const Authorization = (
  grpc.loadPackageDefinition(definitions) as unknown as { envoy: { service: { auth: { v3: { Authorization: new (address: string, creds: grpc.ChannelCredentials) => Client } } } } }
).envoy.service.auth.v3.Authorization;

/** The name of an HTTP status in envoy.type.v3.StatusCode (the client decodes enums as names). */
const statusCodes = (definitions['envoy.type.v3.StatusCode'] as unknown as { type: { value: Array<{ name: string; number: number }> } }).type.value;
function statusName(status: number): string {
  const found = statusCodes.find((v) => v.number === status);
  if (found === undefined) throw new Error(`envoy.type.v3.StatusCode has no ${status}`);
  return found.name;
}

const doors: FrontDoor[] = [];
const clients: Client[] = [];
afterEach(async () => {
  for (const c of clients.splice(0)) c.close();
  await Promise.all(doors.splice(0).map((d) => d.close()));
});

async function startDoor(engine: FakeEngine): Promise<Client> {
  const door = createExtAuthzGrpcDoor({ engine, logger: silentLogger, observe: () => {} });
  doors.push(door);
  const address = await door.listen('127.0.0.1:0');
  const client = new Authorization(address, grpc.credentials.createInsecure());
  clients.push(client);
  return client;
}

function check(client: Client, http: Record<string, unknown>, source: Record<string, unknown> = {}): Promise<CheckResponse> {
  return new Promise((resolve, reject) => {
    client.Check({ attributes: { source, request: { http } } }, (err, res) => (err ? reject(err) : resolve(res)));
  });
}

function options(list: HeaderValueOption[] | undefined): Record<string, string> {
  return Object.fromEntries((list ?? []).map((o) => [o.header.key, o.header.value]));
}

/** A denied response renders the answer: its status, its headers, its body, whose status matches. */
function expectDenied(res: CheckResponse, decision: Decision, grpcCode: number): void {
  expect(res.status.code).toBe(grpcCode);
  expect(res.http_response).toBe('denied_response');
  expect(res.ok_response).toBeUndefined();
  expect(res.denied_response?.status.code).toBe(statusName(decision.answer.status));
  expect(options(res.denied_response?.headers)).toEqual(decision.answer.headers);
  expect(res.denied_response?.body).toBe(decision.answer.body);
  expect((JSON.parse(res.denied_response?.body ?? '{}') as { status: number }).status).toBe(decision.answer.status);
}

describe('ext_authz gRPC door: the WireRequest', () => {
  it('hands path, method, host, both header forms, the source principal and the request id to the engine', async () => {
    const engine = fakeEngine((w) => deny(w, 'POLICY_DENIED'));
    const client = await startDoor(engine);
    await check(
      client,
      {
        id: 'envoy-7',
        method: 'PATCH',
        path: '/orders/./42?expand=items&x=%2F',
        host: 'shop.example',
        headers: { authorization: 'Bearer t', 'x-request-id': 'rid-1', ':authority': 'shop.example' },
        header_map: { headers: [{ key: 'x-from-map', value: 'v' }, { key: 'x-raw', raw_value: Buffer.from('raw-bytes') }] },
      },
      { principal: 'spiffe://cluster.local/ns/shop/sa/frontend' },
    );
    expect(engine.calls).toHaveLength(1);
    const wire = engine.calls[0];
    expect(wire).toMatchObject({
      frontDoor: 'extAuthzGrpc',
      method: 'PATCH',
      target: '/orders/./42?expand=items&x=%2F',
      host: 'shop.example',
      peer: 'spiffe://cluster.local/ns/shop/sa/frontend',
      requestId: 'rid-1',
      rewritesPath: false,
      removesHeaders: true,
    });
    expect(wire?.headers['authorization']).toEqual(['Bearer t']);
    expect(wire?.headers['x-from-map']).toEqual(['v']);
    expect(wire?.headers['x-raw']).toEqual(['raw-bytes']);
  });

  it('takes the host from :authority when the check has no host', async () => {
    const engine = fakeEngine((w) => deny(w, 'POLICY_DENIED'));
    const client = await startDoor(engine);
    await check(client, { method: 'GET', path: '/x', headers: { ':authority': 'shop.example' } });
    expect(engine.calls[0]).toMatchObject({ host: 'shop.example', peer: '' });
  });

  it.each<[string, Record<string, unknown>, RegExp | string]>([
    ["Envoy's request id when the original request has no x-request-id", { id: 'envoy-7' }, 'envoy-7'],
    ['a new one when there is neither', {}, UUID],
    // The door's comment: "The original request's x-request-id when sane, else Envoy's request id, else a new
    // one." src/frontends/ext-authz-grpc.ts passes `headers['x-request-id']?.[0] ?? http.id` to
    // requestIdOrNew, so an insane x-request-id hides Envoy's id and a fresh UUID is used instead.
    ["Envoy's request id when the original x-request-id is not a sane token", { id: 'envoy-7', headers: { 'x-request-id': 'not sane!' } }, 'envoy-7'],
  ])('uses %s', async (_name, http, expected) => {
    const engine = fakeEngine((w) => deny(w, 'POLICY_DENIED'));
    const client = await startDoor(engine);
    await check(client, { method: 'GET', path: '/x', host: 'shop.example', ...http });
    if (typeof expected === 'string') expect(engine.calls[0]?.requestId).toBe(expected);
    else expect(engine.calls[0]?.requestId).toMatch(expected);
  });

  it('denies 400 (code 3) without asking the engine when the check has no method or path', async () => {
    const engine = fakeEngine();
    const client = await startDoor(engine);
    for (const http of [{ method: 'GET' }, { path: '/x' }]) {
      const res = await check(client, http);
      expect(res.status.code).toBe(3);
      expect(res.denied_response?.status.code).toBe(statusName(400));
      expect((JSON.parse(res.denied_response?.body ?? '{}') as { status: number; code: string })).toMatchObject({ status: 400, code: 'BAD_REQUEST' });
    }
    expect(engine.calls).toHaveLength(0);
  });
});

describe('ext_authz gRPC door: rendering the Decision', () => {
  it('renders an allow as ok_response: overwriting headers, headers_to_remove, query_parameters_to_remove', async () => {
    const engine = fakeEngine((w) =>
      allow(w, { set: { 'x-auth-subject': 'alice', 'x-auth-roles': 'reader' }, remove: ['authorization', 'x-auth-tenant'], query: 'keep=1', removeQuery: ['access_token'] }),
    );
    const client = await startDoor(engine);
    const res = await check(client, { method: 'GET', path: '/orders/1?access_token=t&keep=1', host: 'shop.example' });
    expect(res.status.code).toBe(0);
    expect(res.http_response).toBe('ok_response');
    expect(res.denied_response).toBeUndefined();
    const headers = res.ok_response?.headers ?? [];
    expect(options(headers)).toEqual({ 'x-auth-subject': 'alice', 'x-auth-roles': 'reader' });
    for (const option of headers) {
      expect(option.append?.value).toBe(false);
      expect(option.append_action).toBe('OVERWRITE_IF_EXISTS_OR_ADD');
    }
    expect(res.ok_response?.headers_to_remove).toEqual(['authorization', 'x-auth-tenant']);
    expect(res.ok_response?.query_parameters_to_remove).toEqual(['access_token']);
  });

  it.each<[ReasonCode, number]>([
    ['CREDENTIALS_MISSING', 16],
    ['TOKEN_INVALID', 16],
    ['POLICY_DENIED', 7],
    ['KEYS_UNAVAILABLE', 14],
    ['INTROSPECTION_UNAVAILABLE', 14],
    ['PATH_NOT_CANONICAL', 3],
    ['CREDENTIALS_MALFORMED', 3],
  ])('renders a %s deny as denied_response with the answer, status code %i', async (reason, grpcCode) => {
    const decisions: Decision[] = [];
    const engine = fakeEngine((w: WireRequest) => {
      const d = deny(w, reason, reason.startsWith('CREDENTIALS') || reason.startsWith('TOKEN') ? { 'www-authenticate': 'Bearer realm="authz-sidecar"' } : {});
      decisions.push(d);
      return d;
    });
    const client = await startDoor(engine);
    const res = await check(client, { method: 'GET', path: '/orders/1', host: 'shop.example', headers: { 'x-request-id': 'deny-1' } });
    expectDenied(res, decisions[0]!, grpcCode);
    for (const option of res.denied_response?.headers ?? []) expect(option.append_action).toBe('OVERWRITE_IF_EXISTS_OR_ADD');
    expect(JSON.parse(res.denied_response?.body ?? '{}')).toMatchObject({ code: reason, requestId: 'deny-1' });
  });

  it('answers a decide() that throws with a denied 500 INTERNAL (code 13), never an allow nor a gRPC error', async () => {
    const engine = fakeEngine(() => {
      throw new Error('a bug in the engine');
    });
    const client = await startDoor(engine);
    const res = await check(client, { method: 'GET', path: '/orders/1', host: 'shop.example' });
    expect(res.status.code).toBe(13);
    expect(res.http_response).toBe('denied_response');
    expect(res.ok_response).toBeUndefined();
    expect(res.denied_response?.status.code).toBe(statusName(500));
    const body = JSON.parse(res.denied_response?.body ?? '{}') as { status: number; code: string };
    expect(body).toMatchObject({ status: 500, code: 'INTERNAL' });
    expect(options(res.denied_response?.headers)['content-type']).toBe('application/problem+json');
  });

  it('answers a decide() that rejects the same way', async () => {
    const engine = fakeEngine(() => Promise.reject(new Error('a bug in the engine')));
    const client = await startDoor(engine);
    const res = await check(client, { method: 'GET', path: '/orders/1', host: 'shop.example' });
    expect(res.status.code).toBe(13);
    expect(res.denied_response?.status.code).toBe(statusName(500));
    expect((JSON.parse(res.denied_response?.body ?? '{}') as { status: number }).status).toBe(500);
  });
});
