/**
 * Operations on the real process (bin/authz-sidecar.js serve): kubelet-style `..data` swaps of the policy,
 * a broken policy keeping the last good one, SIGHUP, dry-run, metrics, decision logs, and a SIGTERM drain
 * with slow requests in flight.
 */
import { connect } from 'node:net';
import { mkdir, mkdtemp, rename, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { exportJWK, generateKeyPair, SignJWT, type CryptoKey } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { httpUrl, startServe, writeConfig, type ServeProcess } from '../support/serve.js';
import { EXAMPLE_MODEL } from '../support/sidecar.js';
import { startRecordingUpstream, type RecordingUpstream } from '../support/upstream.js';

const ISSUER = 'https://idp.ops.test';
const POLICY_V1 = 'p, role:reader, /orders/:id, GET\n';
const POLICY_V2 = 'p, role:reader, /orders/:id, GET\np, role:reader, /reports/:id, GET\n';

let dir: string;
let upstream: RecordingUpstream;
let privateKey: CryptoKey;
let jwksFile: string;

async function token(roles: string[] = ['reader']): Promise<string> {
  return new SignJWT({ roles }).setProtectedHeader({ alg: 'ES256', kid: 'k1' }).setIssuer(ISSUER).setAudience('api').setSubject('alice').setIssuedAt().setExpirationTime('5m').sign(privateKey);
}

interface Sidecar extends ServeProcess {
  readonly url: string;
}

async function start(name: string, policyFile: string, extra: Record<string, unknown> = {}): Promise<Sidecar> {
  const config = await writeConfig(dir, name, {
    listen: '127.0.0.1:0',
    admin: { listen: '127.0.0.1:0' },
    upstream: { url: upstream.url, timeoutSeconds: 10 },
    authn: { jwt: [{ issuer: ISSUER, audiences: ['api'], jwksFile, algorithms: ['ES256'] }] },
    authz: { model: EXAMPLE_MODEL, policy: policyFile },
    logging: { level: 'info', decisions: 'all' },
    ...extra,
  });
  const sidecar = await startServe({ config });
  return { ...sidecar, url: httpUrl(sidecar.addresses.proxy) };
}

/** Parses the Prometheus text format into {name{labels}: value}. */
async function scrape(admin: string): Promise<Map<string, number>> {
  const text = await (await fetch(`${admin}/metrics`)).text();
  const out = new Map<string, number>();
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*(?:\{[^}]*\})?) (\S+)$/.exec(line);
    if (m?.[1] !== undefined && m[2] !== undefined) out.set(m[1], Number(m[2]));
  }
  return out;
}

async function until(what: string, check: () => Promise<boolean>, timeoutMs = 8_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for: ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** A ConfigMap-style mount: data in a timestamped folder, `..data` pointing at it, the file via `..data`. */
async function kubeletMount(name: string, policy: string): Promise<{ file: string; swap: (next: string) => Promise<void> }> {
  const mount = join(dir, name);
  await mkdir(mount);
  let generation = 0;
  const write = async (text: string): Promise<string> => {
    const folder = `..2026_11_25_${generation++}`;
    await mkdir(join(mount, folder));
    await writeFile(join(mount, folder, 'policy.csv'), text);
    return folder;
  };
  await symlink(await write(policy), join(mount, '..data'));
  await symlink('..data/policy.csv', join(mount, 'policy.csv'));
  return {
    file: join(mount, 'policy.csv'),
    // The kubelet's atomic update: a new folder, a new symlink beside the old, renamed over it.
    swap: async (next) => {
      const folder = await write(next);
      await symlink(folder, join(mount, '..data_tmp'));
      await rename(join(mount, '..data_tmp'), join(mount, '..data'));
    },
  };
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'authz-ops-'));
  const keys = await generateKeyPair('ES256');
  privateKey = keys.privateKey;
  jwksFile = join(dir, 'jwks.json');
  await writeFile(jwksFile, JSON.stringify({ keys: [{ ...(await exportJWK(keys.publicKey)), kid: 'k1', alg: 'ES256', use: 'sig' }] }));
  upstream = await startRecordingUpstream();
});

afterAll(async () => {
  await upstream?.close();
  await rm(dir, { recursive: true, force: true });
});

describe('policy reload', () => {
  it('a kubelet ..data swap takes effect within seconds; a broken policy keeps the old one serving and is counted', async () => {
    const mount = await kubeletMount('configmap', POLICY_V1);
    const sidecar = await start('watch', mount.file);
    try {
      const auth = { authorization: `Bearer ${await token()}` };
      expect((await fetch(`${sidecar.url}/reports/1`, { headers: auth })).status).toBe(403);
      const sha1 = ((await (await fetch(`${sidecar.adminUrl}/readyz`)).json()) as { policySha256: string }).policySha256;

      await mount.swap(POLICY_V2);
      await until('the new policy serves', async () => (await fetch(`${sidecar.url}/reports/1`, { headers: auth })).status === 200);
      const sha2 = ((await (await fetch(`${sidecar.adminUrl}/readyz`)).json()) as { policySha256: string }).policySha256;
      expect(sha2).not.toBe(sha1);
      let metrics = await scrape(sidecar.adminUrl);
      expect(metrics.get(`authz_sidecar_policy_info{sha256="${sha2}"}`)).toBe(1);
      expect(metrics.get(`authz_sidecar_policy_info{sha256="${sha1}"}`)).toBeUndefined();
      expect(metrics.get('authz_sidecar_policy_reloads_total{result="success"}')).toBeGreaterThanOrEqual(1);

      await mount.swap('p, role:reader, /orders/:id\n'); // wrong arity: refused
      await until('the failure is counted', async () => ((await scrape(sidecar.adminUrl)).get('authz_sidecar_policy_reloads_total{result="failure"}') ?? 0) >= 1);
      expect((await fetch(`${sidecar.url}/reports/1`, { headers: auth })).status).toBe(200);
      metrics = await scrape(sidecar.adminUrl);
      expect(metrics.get(`authz_sidecar_policy_info{sha256="${sha2}"}`)).toBe(1);
      expect(sidecar.output()).toMatch(/policy reload failed; the last good policy keeps serving/);
      expect(sidecar.output()).toMatch(/policy\.csv:1: \\"p\\" rules have 3 fields in the model, this one has 2/);
    } finally {
      expect(await sidecar.stop()).toBe(0);
    }
  });

  it('SIGHUP reloads (with watching off)', async () => {
    const policy = join(dir, 'hup.csv');
    await writeFile(policy, POLICY_V1);
    const sidecar = await start('hup', policy, { authz: { model: EXAMPLE_MODEL, policy, watch: false } });
    try {
      const auth = { authorization: `Bearer ${await token()}` };
      expect((await fetch(`${sidecar.url}/reports/2`, { headers: auth })).status).toBe(403);
      await writeFile(policy, POLICY_V2);
      await new Promise((r) => setTimeout(r, 500));
      expect((await fetch(`${sidecar.url}/reports/2`, { headers: auth })).status).toBe(403); // not watching
      sidecar.signal('SIGHUP');
      await until('SIGHUP reload', async () => (await fetch(`${sidecar.url}/reports/2`, { headers: auth })).status === 200);
    } finally {
      expect(await sidecar.stop()).toBe(0);
    }
  });
});

describe('key file reload', () => {
  it('a rotated JWKS file is picked up within seconds; a broken one keeps the old keys and is counted', async () => {
    const keyDir = join(dir, 'keys');
    await mkdir(keyDir);
    const file = join(keyDir, 'jwks.json');
    const jwks = async (publicKey: CryptoKey, kid: string): Promise<string> =>
      JSON.stringify({ keys: [{ ...(await exportJWK(publicKey)), kid, alg: 'ES256', use: 'sig' }] });
    const replace = async (text: string): Promise<void> => {
      await writeFile(`${file}.tmp`, text);
      await rename(`${file}.tmp`, file);
    };
    const old = await generateKeyPair('ES256');
    const next = await generateKeyPair('ES256');
    await replace(await jwks(old.publicKey, 'old'));
    const policy = join(dir, 'keys.csv');
    await writeFile(policy, POLICY_V1);
    const sign = (key: CryptoKey, kid: string): Promise<string> =>
      new SignJWT({ roles: ['reader'] }).setProtectedHeader({ alg: 'ES256', kid }).setIssuer(ISSUER).setAudience('api').setSubject('alice').setIssuedAt().setExpirationTime('5m').sign(key);
    const sidecar = await start('keys', policy, { authn: { jwt: [{ issuer: ISSUER, audiences: ['api'], jwksFile: file, algorithms: ['ES256'] }] } });
    try {
      const withOld = { authorization: `Bearer ${await sign(old.privateKey, 'old')}` };
      const withNew = { authorization: `Bearer ${await sign(next.privateKey, 'new')}` };
      expect((await fetch(`${sidecar.url}/orders/1`, { headers: withOld })).status).toBe(200);
      expect((await fetch(`${sidecar.url}/orders/1`, { headers: withNew })).status).toBe(401);

      await replace(await jwks(next.publicKey, 'new'));
      await until('the new key verifies', async () => (await fetch(`${sidecar.url}/orders/1`, { headers: withNew })).status === 200);
      // The old key is gone, cached verifications with it included.
      expect((await fetch(`${sidecar.url}/orders/1`, { headers: withOld })).status).toBe(401);

      await replace('{"keys": "broken"');
      await until('the failure is counted', async () => ((await scrape(sidecar.adminUrl)).get('authz_sidecar_policy_reloads_total{result="failure"}') ?? 0) >= 1);
      expect((await fetch(`${sidecar.url}/orders/1`, { headers: withNew })).status).toBe(200);
      expect(sidecar.output()).toContain('key file reload failed; the last good keys keep serving');
    } finally {
      expect(await sidecar.stop()).toBe(0);
    }
  });
});

describe('dry-run, metrics and decision logs', () => {
  it('forwards a denied request in dry-run, counts and logs it; authentication failures stay enforced', async () => {
    const policy = join(dir, 'dry.csv');
    await writeFile(policy, POLICY_V1);
    const sidecar = await start('dry', policy, { authz: { model: EXAMPLE_MODEL, policy, mode: 'dryRun' } });
    try {
      const t = await token();
      const before = upstream.requests.length;
      const denied = await fetch(`${sidecar.url}/reports/3`, { headers: { authorization: `Bearer ${t}` } });
      expect(denied.status).toBe(200);
      expect(upstream.requests.length).toBe(before + 1);
      expect(upstream.requests.at(-1)?.headers['x-auth-subject']).toBe('alice');
      expect((await fetch(`${sidecar.url}/reports/3`, { headers: { authorization: 'Bearer not.a.jwt' } })).status).toBe(401);
      expect((await fetch(`${sidecar.url}/orders/3`, { headers: { authorization: `Bearer ${t}` } })).status).toBe(200);

      const metrics = await scrape(sidecar.adminUrl);
      expect(metrics.get('authz_sidecar_requests_total{frontend="proxy",decision="deny",dry_run="true"}')).toBe(1);
      expect(metrics.get('authz_sidecar_requests_total{frontend="proxy",decision="allow",dry_run="false"}')).toBe(1);
      expect(metrics.get('authz_sidecar_requests_total{frontend="proxy",decision="unauthenticated",dry_run="false"}')).toBe(1);
      expect(metrics.get('authz_sidecar_decision_duration_seconds_count{frontend="proxy"}')).toBe(3);
      expect(metrics.get('authz_sidecar_decision_duration_seconds_bucket{le="0.00005",frontend="proxy"}')).toBeDefined();
      expect(metrics.get('authz_sidecar_upstream_duration_seconds_count{status_class="2xx"}')).toBe(2);
      expect(metrics.get('authz_sidecar_cache_misses_total{cache="jwt"}')).toBeGreaterThanOrEqual(1);
      expect(metrics.get('authz_sidecar_cache_hits_total{cache="jwt"}')).toBeGreaterThanOrEqual(1);
      expect(metrics.get('process_resident_memory_bytes')).toBeGreaterThan(0);

      // Every log line is JSON; decision lines carry the fields, never the token.
      const lines = sidecar.output().split('\n').filter((l) => l.trim() !== '');
      const parsed = lines.map((l) => JSON.parse(l) as { decision?: Record<string, unknown> });
      const decisions = parsed.flatMap((p) => (p.decision === undefined ? [] : [p.decision]));
      expect(decisions).toHaveLength(3);
      expect(decisions[0]).toMatchObject({ frontDoor: 'proxy', method: 'GET', path: '/reports/3', subject: 'alice', outcome: 'allow', dryRun: true, dryRunDenied: 'POLICY_DENIED' });
      expect(typeof decisions[0]?.['latencyMs']).toBe('number');
      expect(decisions[2]).toMatchObject({ outcome: 'allow', policy: 'role:reader, /orders/:id, GET' });
      for (const l of lines) {
        expect(l).not.toContain(t);
        expect(l).not.toContain(t.split('.')[2]);
      }
    } finally {
      expect(await sidecar.stop()).toBe(0);
    }
  });
});

describe('shutdown', () => {
  it('during the drain, a new request on a connection busy with an in-flight one gets 503 SHUTTING_DOWN and the connection closes', async () => {
    const policy = join(dir, 'queued.csv');
    await writeFile(policy, 'p, anonymous, /queued/*, GET\n');
    const sidecar = await start('queued', policy, { shutdown: { drainSeconds: 10 } });
    upstream.delayMs = 1_500;
    try {
      const { hostname, port } = new URL(sidecar.url);
      const socket = connect({ host: hostname, port: Number(port) });
      const received: Buffer[] = [];
      socket.on('data', (c: Buffer) => received.push(c));
      const closed = new Promise<void>((r) => socket.once('close', () => r()));
      socket.write('GET /queued/first HTTP/1.1\r\nHost: app\r\n\r\n');
      await until('the first request reaches the upstream', async () => upstream.requests.some((r) => r.url === '/queued/first'));
      sidecar.signal('SIGTERM');
      await until('readiness turns 503', async () => (await fetch(`${sidecar.adminUrl}/readyz`).then((r) => r.status, () => 0)) === 503, 2_000);
      await new Promise((r) => setTimeout(r, 200));
      // The connection is busy (not idle, so the drain does not close it): a second request arrives on it.
      socket.write('GET /queued/second HTTP/1.1\r\nHost: app\r\n\r\n');
      await closed;
      const text = Buffer.concat(received).toString('utf8');
      const statuses = [...text.matchAll(/^HTTP\/1\.1 (\d{3})/gm)].map((m) => Number(m[1]));
      expect(statuses).toEqual([200, 503]);
      const second = text.slice(text.lastIndexOf('HTTP/1.1 503'));
      expect(second.toLowerCase()).toContain('connection: close');
      expect(second).toContain('SHUTTING_DOWN');
      expect(upstream.requests.some((r) => r.url === '/queued/second')).toBe(false);
    } finally {
      upstream.delayMs = 0;
      await sidecar.stop();
    }
  });

  it('SIGTERM with slow requests in flight: all complete, readiness is 503 during the drain, exit 0', async () => {
    const policy = join(dir, 'term.csv');
    await writeFile(policy, 'p, anonymous, /slow/*, GET\n');
    const sidecar = await start('term', policy, { shutdown: { drainSeconds: 10 } });
    upstream.delayMs = 1_500;
    try {
      const inflight = [1, 2, 3].map((i) => fetch(`${sidecar.url}/slow/${i}`).then(async (r) => ({ status: r.status, body: await r.text() })));
      await until('requests reach the upstream', async () => upstream.requests.filter((r) => r.url.startsWith('/slow/')).length === 3);
      sidecar.signal('SIGTERM');
      const termAt = Date.now();
      await until('readiness turns 503', async () => (await fetch(`${sidecar.adminUrl}/readyz`).then((r) => r.status, () => 0)) === 503, 2_000);
      const results = await Promise.all(inflight);
      expect(results.map((r) => r.status)).toEqual([200, 200, 200]);
      const exit = await sidecar.exit;
      expect(exit.code).toBe(0);
      // The drain ended when the requests did, not at drainSeconds.
      expect(exit.at - termAt).toBeLessThan(8_000);
    } finally {
      upstream.delayMs = 0;
      await sidecar.stop();
    }
  });
});
