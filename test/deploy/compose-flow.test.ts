/**
 * The compose example without Docker: the dev IdP script of deploy/compose/idp (oidc-provider) and the
 * real sidecar with deploy/compose/authz-sidecar.yaml (addresses moved to free loopback ports), asked as
 * docs/deployment.md (Compose) asks: client-credentials tokens for reader and admin, then 200 / 401 / 403.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ROOT } from '../support/cli.js';
import { httpUrl, startServe, type ServeProcess } from '../support/serve.js';
import { freePort, startRecordingUpstream, type RecordingUpstream } from '../support/upstream.js';

let idp: ChildProcess;
let sidecar: ServeProcess | undefined;
let upstream: RecordingUpstream;
let dir: string;
let idpUrl: string;
let url: string;

async function waitFor(what: string, check: () => Promise<boolean>): Promise<void> {
  const deadline = Date.now() + 15_000;
  while (!(await check().catch(() => false))) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

async function token(client: string): Promise<string> {
  const res = await fetch(`${idpUrl}/token`, {
    method: 'POST',
    headers: { authorization: `Basic ${Buffer.from(`${client}:${client}-secret`).toString('base64')}`, 'content-type': 'application/x-www-form-urlencoded' },
    body: 'grant_type=client_credentials',
  });
  expect(res.status).toBe(200);
  return ((await res.json()) as { access_token: string }).access_token;
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'authz-compose-'));
  upstream = await startRecordingUpstream();
  const idpPort = await freePort();
  idpUrl = `http://127.0.0.1:${idpPort}`;
  idp = spawn(process.execPath, [join(ROOT, 'deploy/compose/idp/server.mjs')], {
    env: { ...process.env, ISSUER: idpUrl, PORT: String(idpPort), HOST: '127.0.0.1' },
    stdio: 'ignore',
  });
  await waitFor('the dev IdP', async () => (await fetch(`${idpUrl}/.well-known/openid-configuration`)).status === 200);

  const shipped = await readFile(join(ROOT, 'deploy/compose/authz-sidecar.yaml'), 'utf8');
  const config = shipped
    .replace('listen: 0.0.0.0:8080', 'listen: 127.0.0.1:0')
    .replace('listen: 0.0.0.0:8081', 'listen: 127.0.0.1:0')
    .replace('http://127.0.0.1:3000', upstream.url)
    .replaceAll('http://localhost:8090', idpUrl)
    .replaceAll('./policies/', `${join(ROOT, 'policies')}/`);
  expect(config).not.toBe(shipped);
  await writeFile(join(dir, 'authz-sidecar.yaml'), config);
  // Ready once the keys of the discovered issuer are fetched.
  sidecar = await startServe({ config: join(dir, 'authz-sidecar.yaml') });
  url = httpUrl(sidecar.addresses.proxy);
}, 40_000);

afterAll(async () => {
  const code = await sidecar?.stop();
  if (idp !== undefined && idp.exitCode === null) {
    idp.kill('SIGTERM');
    await new Promise((r) => idp.once('exit', r));
  }
  await upstream?.close();
  await rm(dir, { recursive: true, force: true });
  // SIGTERM ends the sidecar cleanly.
  if (sidecar !== undefined) expect(code).toBe(0);
});

describe('the compose example flow', () => {
  it('anonymous 200 on /public, 401 on /orders', async () => {
    expect((await fetch(`${url}/public/hello`)).status).toBe(200);
    expect((await fetch(`${url}/orders/42`)).status).toBe(401);
  });

  it('reader 200 on GET with identity headers, 403 on DELETE; admin 200 on DELETE', async () => {
    const reader = await token('reader');
    expect((await fetch(`${url}/orders/42`, { headers: { authorization: `Bearer ${reader}` } })).status).toBe(200);
    expect(upstream.requests.at(-1)?.headers['x-auth-subject']).toBe('reader');
    expect(upstream.requests.at(-1)?.headers['x-auth-roles']).toBe('reader');
    expect((await fetch(`${url}/orders/42`, { method: 'DELETE', headers: { authorization: `Bearer ${reader}` } })).status).toBe(403);
    const admin = await token('admin');
    expect((await fetch(`${url}/orders/42`, { method: 'DELETE', headers: { authorization: `Bearer ${admin}` } })).status).toBe(200);
  });
});
