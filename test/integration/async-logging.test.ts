/**
 * Logging never waits for stdout's reader and never holds more than its buffer (src/admin/log-output.ts).
 * The real `serve` logs every decision (`logging.level: trace`, `decisions: all`) to a stdout pipe this test
 * does not read for a while: requests and /healthz answer, lines beyond the 4 MiB buffer are dropped and
 * counted (pino's default destination kept them all in memory), and once the test reads again what was
 * buffered arrives as whole JSON lines, each decision either written or counted. At SIGTERM the last lines
 * (`authz-sidecar stopped`) are written out before the exit, also to a reader that is behind then (pino's own
 * exit flush lost the chunk being written), and a reader that never reads does not hold the exit (pino's
 * retried for ever).
 */
import { generateKeyPairSync } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startServe, writeConfig, type ServeProcess } from '../support/serve.js';
import { EXAMPLE_MODEL, EXAMPLE_POLICY } from '../support/sidecar.js';
import { startRecordingUpstream, type RecordingUpstream } from '../support/upstream.js';

/** A decision line carries the path: about 3.5 KiB each, so that 3,000 of them are far more than 4 MiB. */
const LONG_PATH = `/public/${'p'.repeat(3_000)}`;
const REQUESTS = 3_000;
const CONCURRENCY = 16;

let dir = '';
let config = '';
/** The same with a proxy door in front of `upstream`, whose answers can be held to keep a drain going. */
let proxyConfig = '';
let upstream: RecordingUpstream | undefined;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'authz-async-logging-'));
  const { publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  await writeFile(join(dir, 'jwks.json'), JSON.stringify({ keys: [{ ...publicKey.export({ format: 'jwk' }), kid: 'log-1', alg: 'ES256', use: 'sig' }] }));
  config = await writeConfig(dir, 'async-logging', {
    extAuthz: { http: { listen: '127.0.0.1:0' } },
    admin: { listen: '127.0.0.1:0' },
    authn: { jwt: [{ issuer: 'https://issuer.logging.test', audiences: ['logging'], jwksFile: join(dir, 'jwks.json') }] },
    authz: { model: EXAMPLE_MODEL, policy: EXAMPLE_POLICY },
    logging: { level: 'trace', decisions: 'all' },
  });
  upstream = await startRecordingUpstream();
  proxyConfig = await writeConfig(dir, 'async-logging-proxy', {
    listen: '127.0.0.1:0',
    upstream: { url: upstream.url },
    admin: { listen: '127.0.0.1:0' },
    authn: { jwt: [{ issuer: 'https://issuer.logging.test', audiences: ['logging'], jwksFile: join(dir, 'jwks.json') }] },
    authz: { model: EXAMPLE_MODEL, policy: EXAMPLE_POLICY },
    logging: { level: 'trace', decisions: 'all' },
  });
});
afterAll(async () => {
  await upstream?.close();
  if (dir !== '') await rm(dir, { recursive: true, force: true });
});

/** `count` anonymous GETs of LONG_PATH (at the HTTP check door unless `base`), CONCURRENCY at a time; their statuses. */
async function drive(sidecar: ServeProcess, count: number, base = `http://${sidecar.addresses.http ?? ''}`): Promise<number[]> {
  const url = `${base}${LONG_PATH}`;
  const statuses: number[] = [];
  let next = 0;
  await Promise.all(
    Array.from({ length: CONCURRENCY }, async () => {
      while (next < count) {
        next++;
        const res = await fetch(url);
        await res.arrayBuffer();
        statuses.push(res.status);
      }
    }),
  );
  return statuses;
}

async function metric(sidecar: ServeProcess, name: string): Promise<number> {
  const text = await (await fetch(`${sidecar.adminUrl}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith(`${name} `) || l.startsWith(`${name}{`));
  return line === undefined ? NaN : Number(line.slice(line.lastIndexOf(' ') + 1));
}

/** Every newline-terminated stdout line, each of which must be a JSON object. */
function jsonLines(stdout: string): Array<Record<string, unknown>> {
  const complete = stdout.slice(0, stdout.lastIndexOf('\n') + 1);
  return complete
    .split('\n')
    .filter((l) => l !== '')
    .map((l) => {
      try {
        return JSON.parse(l) as Record<string, unknown>;
      } catch {
        throw new Error(`not a JSON line: ${l.slice(0, 200)}`);
      }
    });
}

async function until(what: string, check: () => boolean, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`not within ${timeoutMs} ms: ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

describe('decision logs to a stdout nobody reads for a while', () => {
  it('requests and /healthz still answer; the buffered lines arrive whole and the dropped ones are counted', { timeout: 90_000 }, async () => {
    const sidecar = await startServe({ config });
    try {
      const before = jsonLines(sidecar.stdout()).length;
      sidecar.child.stdout.pause();
      // Unread, the pipe is full after a few dozen lines: the rest waits in the buffer or is dropped.
      const statuses = await drive(sidecar, REQUESTS);
      expect(statuses.filter((s) => s === 200)).toHaveLength(REQUESTS);
      expect((await fetch(`${sidecar.adminUrl}/healthz`)).status).toBe(200);
      // About 10 MiB of lines for a 4 MiB buffer and a pipe that holds a few hundred KiB: most were dropped,
      // each counted as it was (the counter is final once the requests are answered).
      const dropped = await metric(sidecar, 'authz_sidecar_log_lines_dropped_total');
      expect(dropped).toBeGreaterThan(0);
      expect(dropped).toBeLessThan(REQUESTS);
      expect(sidecar.stdout().length).toBeLessThan(1024 * 1024);

      sidecar.child.stdout.resume();
      const decisions = (): Array<Record<string, unknown>> => jsonLines(sidecar.stdout()).filter((l) => l['msg'] === 'decision');
      // Every decision is either written or counted as dropped: no line lost without a count, none cut.
      await until(`${REQUESTS - dropped} decision lines`, () => decisions().length >= REQUESTS - dropped);
      const lines = decisions();
      expect(lines).toHaveLength(REQUESTS - dropped);
      for (const line of lines) expect(line).toMatchObject({ decision: { path: LONG_PATH, outcome: 'allow', status: 200 } });
      expect(jsonLines(sidecar.stdout()).length).toBe(before + lines.length);
      // Served on, reading again: lines are written, none dropped.
      expect(await drive(sidecar, 20)).toEqual(Array.from({ length: 20 }, () => 200));
      await until('20 more decision lines', () => decisions().length === lines.length + 20);
      expect(await metric(sidecar, 'authz_sidecar_log_lines_dropped_total')).toBe(dropped);
    } finally {
      sidecar.child.stdout.resume();
      expect(await sidecar.stop('SIGTERM')).toBe(0);
    }
  });
});

describe('the last log lines at exit', () => {
  it('SIGTERM: the draining and stopped lines are written before the exit, the stopped line last', async () => {
    const sidecar = await startServe({ config });
    expect(await drive(sidecar, 5)).toEqual([200, 200, 200, 200, 200]);
    expect(await sidecar.stop('SIGTERM')).toBe(0);
    const lines = jsonLines(sidecar.stdout());
    expect(lines.filter((l) => l['msg'] === 'decision')).toHaveLength(5);
    expect(lines.map((l) => l['msg']).slice(-2)).toEqual(['authz-sidecar draining', 'authz-sidecar stopped']);
  });

  it('SIGTERM with a reader that is behind: what was buffered arrives once it reads, then the process exits 0', { timeout: 60_000 }, async () => {
    const sidecar = await startServe({ config });
    sidecar.child.stdout.pause();
    // About 1.7 MiB of lines: more than the pipe holds, less than the buffer, so none are dropped.
    expect((await drive(sidecar, 500)).every((s) => s === 200)).toBe(true);
    sidecar.signal('SIGTERM');
    // The reader catches up within the 2 s the exit waits for it.
    await new Promise((r) => setTimeout(r, 500));
    sidecar.child.stdout.resume();
    const exit = await sidecar.exit;
    expect(exit).toMatchObject({ code: 0, signal: null });
    const lines = jsonLines(sidecar.stdout());
    expect(lines.filter((l) => l['msg'] === 'decision')).toHaveLength(500);
    expect(lines.at(-1)?.['msg']).toBe('authz-sidecar stopped');
  });

  it('SIGTERM with a reader that never reads: the exit is not held (2 s bound), and what did arrive is whole lines', { timeout: 60_000 }, async () => {
    const sidecar = await startServe({ config });
    sidecar.child.stdout.pause();
    expect((await drive(sidecar, 500)).every((s) => s === 200)).toBe(true);
    // The child's 'exit' (its 'close' waits for stdout to be read to its end).
    const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((r) => sidecar.child.once('exit', (code, signal) => r({ code, signal })));
    sidecar.signal('SIGTERM');
    const exit = await Promise.race([exited, new Promise<undefined>((r) => setTimeout(() => r(undefined), 15_000))]);
    expect(exit, 'exited while stdout was never read').toEqual({ code: 0, signal: null });
    sidecar.child.stdout.resume();
    await until('stdout closed', () => sidecar.child.stdout.readableEnded || sidecar.child.stdout.destroyed);
    const lines = jsonLines(sidecar.stdout());
    expect(lines.length).toBeGreaterThan(0);
    expect(lines.filter((l) => l['msg'] === 'decision').length).toBeLessThan(500);
  });

  it('a second SIGTERM during the drain exits 143 at once, after writing out what was buffered', { timeout: 60_000 }, async () => {
    if (upstream === undefined) throw new Error('no upstream');
    const sidecar = await startServe({ config: proxyConfig });
    try {
      sidecar.child.stdout.pause();
      expect((await drive(sidecar, 300, sidecar.url)).every((s) => s === 200)).toBe(true);
      // One request the application holds: the drain waits for it (up to shutdown.drainSeconds, 20 s).
      upstream.delayMs = 30_000;
      const held = fetch(`${sidecar.url ?? ''}/public/held`).then(
        (r) => r.status,
        () => 'cut',
      );
      await until('the held request reached the application', () => upstream?.requests.at(-1)?.url === '/public/held');
      sidecar.signal('SIGTERM');
      await new Promise((r) => setTimeout(r, 300));
      sidecar.signal('SIGTERM');
      // The reader catches up within the 2 s the exit waits for it.
      await new Promise((r) => setTimeout(r, 300));
      sidecar.child.stdout.resume();
      expect(await sidecar.exit).toMatchObject({ code: 143, signal: null });
      expect(await held).toBe('cut');
      const lines = jsonLines(sidecar.stdout());
      expect(lines.filter((l) => l['msg'] === 'decision' && (l['decision'] as { path?: string }).path === LONG_PATH)).toHaveLength(300);
      expect(lines.at(-1)?.['msg']).toBe('authz-sidecar draining');
    } finally {
      upstream.delayMs = 0;
      sidecar.child.stdout.resume();
      if (sidecar.child.exitCode === null) await sidecar.stop('SIGKILL');
    }
  });
});
