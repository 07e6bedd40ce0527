/**
 * The built CLI as a user runs it (a child process of bin/authz-sidecar.js, built by `npm test`'s
 * pretest): exit codes, a real `serve` process, and the demo whose printed curl commands are run with
 * the real curl binary and must give the statuses they promise.
 */
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { exportJWK, generateKeyPair, SignJWT } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import { runCli, runCommand, type Run } from '../support/cli.js';
import { ScriptedBrowser, signInAtProvider } from '../support/scripted-browser.js';
import { httpUrl, spawnCli, startServe } from '../support/serve.js';
import { EXAMPLE_MODEL, EXAMPLE_POLICY } from '../support/sidecar.js';
import { freePort, startRecordingUpstream, type RecordingUpstream } from '../support/upstream.js';

function run(args: string[], env: NodeJS.ProcessEnv = {}): Promise<Run> {
  return runCli(args, env);
}

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'authz-cli-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('bad usage and bad config exit 2', () => {
  it('names every bad key path', async () => {
    const file = join(dir, 'bad.yaml');
    await writeFile(
      file,
      stringify({
        upstream: { url: 'http://127.0.0.1:3000', timeoutSecond: 5 },
        authn: { jwt: [{ issuer: 'https://idp.example', jwksUri: 'https://idp.example/certs' }] },
        authz: { model: EXAMPLE_MODEL, policy: EXAMPLE_POLICY },
        paths: { semicolons: 'allow' },
      }),
    );
    const r = await run(['serve', '--config', file]);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('upstream.timeoutSecond: unknown key');
    expect(r.stderr).toContain('authn.jwt[0].audiences: required');
    expect(r.stderr).toContain('paths.semicolons: Invalid option');
    expect(r.stdout).toBe('');
  });

  it('exits 2 for a missing config file, a missing --config and an unknown command', async () => {
    expect((await run(['serve', '--config', join(dir, 'nope.yaml')])).code).toBe(2);
    const noConfig = await run(['serve'], { AUTHZ_SIDECAR_CONFIG: '' });
    expect(noConfig.code).toBe(2);
    expect(noConfig.stderr).toContain('serve needs --config FILE');
    expect((await run(['frobnicate'])).code).toBe(2);
    expect((await run(['serve', '--bogus'])).code).toBe(2);
  });

  it('exits 2 when the policy does not fit the model (authz.request arity)', async () => {
    const file = join(dir, 'arity.yaml');
    await writeFile(
      file,
      stringify({
        upstream: { url: 'http://127.0.0.1:3000' },
        authz: { model: EXAMPLE_MODEL, policy: EXAMPLE_POLICY, request: ['subject', 'path'] },
      }),
    );
    const r = await run(['serve', '--config', file]);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('authz.request:');
  });

  it('exits 1 with a message (and does not hang) when a port is already in use', async () => {
    const { createServer } = await import('node:net');
    const blocker = createServer();
    await new Promise<void>((done) => blocker.listen(0, '127.0.0.1', done));
    const port = (blocker.address() as { port: number }).port;
    const file = join(dir, 'busy.yaml');
    await writeFile(file, stringify({ listen: `127.0.0.1:${port}`, admin: { listen: `127.0.0.1:${await freePort()}` }, upstream: { url: 'http://127.0.0.1:3000' }, authz: { model: EXAMPLE_MODEL, policy: EXAMPLE_POLICY }, logging: { level: 'silent' } }));
    try {
      const started = Date.now();
      const r = await run(['serve', '--config', file]);
      expect(r.code).toBe(1);
      expect(r.stderr).toContain('EADDRINUSE');
      expect(Date.now() - started).toBeLessThan(10_000);
    } finally {
      blocker.close();
    }
  });

  it('prints help with exit 0', async () => {
    const r = await run(['--help']);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain('authz-sidecar serve --config FILE');
  });
});

describe('serve, as a process', () => {
  let upstream: RecordingUpstream;
  beforeAll(async () => {
    upstream = await startRecordingUpstream();
  });
  afterAll(async () => {
    await upstream.close();
  });

  it('serves from a JWKS file given through AUTHZ_SIDECAR_CONFIG and ${VAR}, and exits 0 on SIGTERM', async () => {
    const { privateKey, publicKey } = await generateKeyPair('ES256');
    await writeFile(join(dir, 'jwks.json'), JSON.stringify({ keys: [{ ...(await exportJWK(publicKey)), kid: 'k1', alg: 'ES256', use: 'sig' }] }));
    const file = join(dir, 'serve.yaml');
    await writeFile(
      file,
      stringify({
        listen: '127.0.0.1:0',
        admin: { listen: '127.0.0.1:0' },
        upstream: { url: '${APP_URL}' },
        authn: { jwt: [{ issuer: 'https://idp.test', audiences: ['orders-api'], jwksFile: './jwks.json', algorithms: ['ES256'] }] },
        authz: { model: EXAMPLE_MODEL, policy: EXAMPLE_POLICY },
        logging: { level: 'info', decisions: 'all' },
      }),
    );
    // No --config: the file comes from AUTHZ_SIDECAR_CONFIG.
    const sidecar = await startServe({ env: { AUTHZ_SIDECAR_CONFIG: file, APP_URL: upstream.url } });
    try {
      expect(sidecar.addresses.upstream).toBe(upstream.url);
      const token = await new SignJWT({ roles: ['reader'] })
        .setProtectedHeader({ alg: 'ES256', kid: 'k1' })
        .setIssuer('https://idp.test')
        .setAudience('orders-api')
        .setSubject('carol')
        .setIssuedAt()
        .setExpirationTime('5m')
        .sign(privateKey);
      const res = await fetch(`${httpUrl(sidecar.addresses.proxy)}/orders/3`, { headers: { authorization: `Bearer ${token}` } });
      expect(res.status).toBe(200);
      expect(upstream.requests.at(-1)?.headers['x-auth-subject']).toBe('carol');
      // Decision log lines are JSON and never carry the token.
      const logs = sidecar.stdout();
      expect(logs).toContain('"reason":"ALLOWED"');
      expect(logs).not.toContain(token);
      expect(logs).not.toContain(token.split('.')[2]);
    } finally {
      expect(await sidecar.stop('SIGTERM')).toBe(0);
    }
  });
});

describe('demo (what npm start runs)', () => {
  it('prints curl commands that give the statuses they promise', async () => {
    const ports = { proxy: await freePort(), admin: await freePort(), app: await freePort(), idp: await freePort(), op: await freePort() };
    const example = await readFile(resolve(import.meta.dirname, '../../policies/authz-sidecar.yaml'), 'utf8');
    const config = example
      .replaceAll('127.0.0.1:8080', `127.0.0.1:${ports.proxy}`)
      .replaceAll('127.0.0.1:8081', `127.0.0.1:${ports.admin}`)
      .replaceAll('127.0.0.1:3000', `127.0.0.1:${ports.app}`)
      .replaceAll('127.0.0.1:8090', `127.0.0.1:${ports.idp}`)
      .replaceAll('127.0.0.1:8091', `127.0.0.1:${ports.op}`)
      .replaceAll('./demo/', `${resolve(import.meta.dirname, '../../policies/demo')}/`)
      .replace('./model.conf', EXAMPLE_MODEL)
      .replace('./policy.csv', EXAMPLE_POLICY);
    const file = join(dir, 'demo.yaml');
    await writeFile(file, config);

    const demo = spawnCli(['demo', '--config', file]);
    let code: number | null;
    try {
      await demo.waitForOutput('Press Ctrl+C to stop.');
      const text = demo.output();
      const exports = text.split('\n').filter((l) => l.startsWith('export '));
      expect(exports).toHaveLength(2);
      const commands = text
        .split('\n')
        .map((l) => /^\s+(curl .*?)\s+# (\d{3})\b/.exec(l))
        .filter((m): m is RegExpExecArray => m !== null);
      expect(commands.length).toBeGreaterThanOrEqual(6);
      const statuses = new Set<string>();
      for (const [, command = '', expected = ''] of commands) {
        // Run the printed command as printed, with -s -o /dev/null -w to read the status.
        const script = `${exports.join('\n')}\n${command.replace(/^curl -i/, "curl -s -o /dev/null -w '%{http_code}'")}`;
        const r = await runCommand('bash', ['-c', script]);
        expect({ command, status: r.stdout }).toEqual({ command, status: expected });
        statuses.add(expected);
      }
      expect([...statuses].sort()).toEqual(['200', '302', '401', '403']);

      // The browser journey the demo promises: open a page, sign in at the dev provider as a printed user.
      const user = /^\s+(\w+)\s+roles: reader$/m.exec(text)?.[1];
      expect(user).toBe('alice');
      const browser = new ScriptedBrowser();
      try {
        const first = await browser.get(`http://127.0.0.1:${ports.proxy}/orders/42`);
        const { page } = await signInAtProvider(browser, first, { login: user ?? '' });
        expect(page.url).toBe(`http://127.0.0.1:${ports.proxy}/orders/42`);
        expect(JSON.parse(page.body)).toMatchObject({ app: 'echo', path: '/orders/42', headers: { 'x-auth-subject': 'alice', 'x-auth-roles': 'reader', 'x-auth-email': 'alice@example.test' } });
      } finally {
        await browser.close();
      }
    } finally {
      code = await demo.stop('SIGINT');
    }
    expect(code).toBe(0);
  });
});
