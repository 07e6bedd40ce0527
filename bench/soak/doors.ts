/**
 * The four doors as their callers speak to them: a client of the proxy, Envoy's HTTP and gRPC ext_authz checks,
 * Traefik's ForwardAuth. Each answer is rendered as the oracle compares it (oracle.ts `Answer`).
 */
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { join } from 'node:path';
import { Pool } from 'undici';
import { ROOT } from '../../test/support/cli.js';
import type { Answer, Door } from './oracle.js';
import type { Planned } from './traffic.js';
import { COOKIE, type Replica } from './world.js';

/* ---- doors ---------------------------------------------------------------------------------------------- */

interface GrpcCheckResponse {
  status?: { code?: number };
  ok_response?: { headers?: Array<{ header?: { key?: string; value?: string } }>; headers_to_remove?: string[] };
  denied_response?: { status?: { code?: number } };
}
type CheckClient = grpc.Client & { Check(req: unknown, opts: grpc.CallOptions, cb: (err: grpc.ServiceError | null, res?: GrpcCheckResponse) => void): void };

const definition = protoLoader.loadSync('envoy/service/auth/v3/external_auth.proto', {
  includeDirs: [join(ROOT, 'proto')],
  keepCase: true,
  longs: Number,
  enums: Number,
  defaults: true,
  oneofs: true,
});
const Authorization = (grpc.loadPackageDefinition(definition) as unknown as { envoy: { service: { auth: { v3: { Authorization: new (a: string, c: grpc.ChannelCredentials) => CheckClient } } } } })
  .envoy.service.auth.v3.Authorization;

export const TIMEOUT_MS = 10_000;

function classifyError(err: unknown): Answer {
  const e = err as { code?: string; name?: string; message?: string };
  const code = e.code ?? e.name ?? '';
  const detail = `${code} ${e.message ?? ''}`.trim();
  if (code === 'ECONNREFUSED') return { kind: 'failure', failure: 'refused', detail };
  if (/TIMEOUT|Timeout|AbortError/.test(code)) return { kind: 'failure', failure: 'no answer', detail };
  if (/ECONNRESET|UND_ERR_SOCKET|EPIPE|UND_ERR_CLOSED/.test(code)) return { kind: 'failure', failure: 'reset', detail };
  return { kind: 'failure', failure: 'other', detail };
}

function header(value: string | string[] | undefined): string | undefined {
  return Array.isArray(value) ? value.join(',') : value;
}

/** Headers of the identity prefix in any spelling (`x-auth-`, `x_auth_`, any case), lower-cased. */
function identityOf(headers: ReadonlyArray<readonly [string, string]>): Record<string, string> {
  return Object.fromEntries(headers.filter(([k]) => /^x[-_]auth[-_]/i.test(k)).map(([k, v]) => [k.toLowerCase(), v]));
}

function cookieNames(cookie: string): string[] {
  return cookie.split(';').map((c) => c.trim().split('=', 1)[0] ?? '').filter((n) => n !== '');
}

/**
 * ext_authz: a request that brought the sidecar's cookie must have its Cookie header removed upstream, or
 * replaced by one without that cookie.
 */
function cookieLeaks(plan: Planned, setCookieHeader: string | undefined, removed: readonly string[]): string[] {
  const sent = plan.headers['cookie'];
  if (sent === undefined || !cookieNames(sent).includes(COOKIE)) return [];
  if (removed.includes('cookie')) return [];
  if (setCookieHeader !== undefined && !cookieNames(setCookieHeader).some((n) => n === COOKIE || n.startsWith(`${COOKIE}.`))) return [];
  return ['the sidecar cookie'];
}

/** The gRPC status code each HTTP status of a denial goes with (DESIGN.md section 3). */
const GRPC_CODES: Readonly<Record<number, number>> = { 400: 3, 401: 16, 403: 7, 503: 14 };

export class Doors {
  readonly #pools = new Map<string, Pool>();
  readonly #grpc = new Map<string, CheckClient>();

  #pool(port: number): Pool {
    const key = String(port);
    let pool = this.#pools.get(key);
    if (pool === undefined) {
      pool = new Pool(`http://127.0.0.1:${port}`, { connections: 32, keepAliveTimeout: 4_000, headersTimeout: TIMEOUT_MS, bodyTimeout: TIMEOUT_MS });
      this.#pools.set(key, pool);
    }
    return pool;
  }

  async send(door: Door, replica: Replica, plan: Planned): Promise<Answer> {
    try {
      switch (door) {
        case 'proxy': {
          const res = await this.#pool(replica.ports.proxy).request({ method: plan.target.method, path: plan.target.raw, headers: { accept: 'application/json', ...plan.headers } });
          const text = await res.body.text();
          if (res.statusCode === 200 && res.headers['content-type'] === 'application/json') {
            const app = JSON.parse(text) as { path: string; identity: Record<string, string>; sidecarCookie: boolean; authorization: boolean };
            const leaked = [...(app.sidecarCookie ? ['the sidecar cookie'] : []), ...(app.authorization ? ['the token'] : [])];
            return { kind: 'answer', status: 200, allow: true, identity: app.identity, leaked, upstreamPath: app.path.split('?')[0] };
          }
          return { kind: 'answer', status: res.statusCode, allow: false };
        }
        case 'http': {
          // Envoy's HTTP ext_authz: the original method and path (after an empty pathPrefix), the request's headers.
          const res = await this.#pool(replica.ports.http).request({ method: plan.target.method, path: plan.target.raw, headers: { accept: 'application/json', ...plan.headers } });
          await res.body.dump();
          if (res.statusCode !== 200) return { kind: 'answer', status: res.statusCode, allow: false };
          const removed = (header(res.headers['x-envoy-auth-headers-to-remove']) ?? '').split(',').map((n) => n.trim().toLowerCase()).filter((n) => n !== '');
          const leaked = cookieLeaks(plan, header(res.headers['cookie']), removed);
          return { kind: 'answer', status: 200, allow: true, identity: identityOf(Object.entries(res.headers).map(([k, v]) => [k, header(v) ?? ''])), removed, leaked };
        }
        case 'forward': {
          // Traefik's ForwardAuth: the original request in X-Forwarded-*.
          const res = await this.#pool(replica.ports.forward).request({
            method: 'GET',
            path: '/',
            headers: {
              accept: 'application/json',
              'x-forwarded-method': plan.target.method,
              'x-forwarded-uri': plan.target.raw,
              'x-forwarded-host': 'shop.soak.test',
              'x-forwarded-proto': 'http',
              ...plan.headers,
            },
          });
          await res.body.dump();
          if (res.statusCode !== 200) return { kind: 'answer', status: res.statusCode, allow: false };
          // The Cookie header the proxy is to send on must not carry the sidecar's cookie.
          const cookie = header(res.headers['cookie']) ?? '';
          const leaked = cookieNames(cookie).some((n) => n === COOKIE || n.startsWith(`${COOKIE}.`)) ? ['the sidecar cookie'] : [];
          return { kind: 'answer', status: 200, allow: true, identity: identityOf(Object.entries(res.headers).map(([k, v]) => [k, header(v) ?? ''])), leaked };
        }
        case 'grpc': {
          let client = this.#grpc.get(replica.name);
          if (client === undefined) {
            client = new Authorization(`127.0.0.1:${replica.ports.grpc}`, grpc.credentials.createInsecure());
            this.#grpc.set(replica.name, client);
          }
          const headers = Object.fromEntries(Object.entries({ accept: 'application/json', ...plan.headers }).map(([k, v]) => [k.toLowerCase(), v]));
          const req = { attributes: { request: { http: { method: plan.target.method, path: plan.target.raw, host: 'shop.soak.test', scheme: 'http', protocol: 'HTTP/1.1', headers } } } };
          const res = await new Promise<GrpcCheckResponse>((resolve, reject) => {
            (client).Check(req, { deadline: Date.now() + TIMEOUT_MS }, (err, r) => (err ? reject(err) : resolve(r ?? {})));
          });
          const code = res.status?.code ?? 0;
          // Envoy forwards when the code is 0, whatever else the answer holds.
          if (code === 0) {
            const set = (res.ok_response?.headers ?? []).map((h) => [h.header?.key ?? '', h.header?.value ?? ''] as [string, string]);
            const removed = (res.ok_response?.headers_to_remove ?? []).map((n) => n.toLowerCase());
            const leaked = cookieLeaks(plan, set.find(([k]) => k.toLowerCase() === 'cookie')?.[1], removed);
            return { kind: 'answer', status: 200, allow: true, identity: identityOf(set), removed, leaked };
          }
          const status = res.denied_response?.status?.code ?? 0;
          return { kind: 'answer', status, allow: false, codeMismatch: GRPC_CODES[status] !== undefined && GRPC_CODES[status] !== code };
        }
      }
    } catch (err) {
      const e = err as grpc.ServiceError;
      if (door === 'grpc' && typeof e.code === 'number') {
        if (e.code === grpc.status.DEADLINE_EXCEEDED) return { kind: 'failure', failure: 'no answer', detail: e.details };
        if (e.code === grpc.status.UNAVAILABLE) return { kind: 'failure', failure: /refused/i.test(e.details) ? 'refused' : 'reset', detail: e.details };
        return { kind: 'failure', failure: 'other', detail: `${e.code} ${e.details}` };
      }
      return classifyError(err);
    }
  }

  /** Forgets a replica's connections (it restarted). */
  reset(replica: Replica): void {
    this.#grpc.get(replica.name)?.close();
    this.#grpc.delete(replica.name);
  }

  async close(): Promise<void> {
    for (const c of this.#grpc.values()) c.close();
    this.#grpc.clear();
    const pools = [...this.#pools.values()];
    this.#pools.clear();
    await Promise.all(pools.map((p) => p.destroy()));
  }
}

