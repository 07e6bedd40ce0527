/**
 * Starts the real sidecar in-process on loopback port 0 from a config written to a temp folder and loaded
 * through the real loader, so integration tests exercise config, engine, proxy and admin together.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { stringify } from 'yaml';
import { loadConfig } from '../../src/config/load.js';
import type { EngineBuildOptions } from '../../src/engine.js';
import { startSidecar, type RunningSidecar } from '../../src/sidecar.js';

export const EXAMPLE_MODEL = resolve(import.meta.dirname, '../../policies/model.conf');
export const EXAMPLE_POLICY = resolve(import.meta.dirname, '../../policies/policy.csv');

export interface TestSidecar {
  /** http://127.0.0.1:PORT of the proxy listener */
  readonly url: string;
  readonly adminUrl: string;
  /** Addresses (`host:port`) of the configured check doors. */
  readonly extAuthz: RunningSidecar['extAuthz'];
  readonly running: RunningSidecar;
  readonly dir: string;
  close(): Promise<void>;
}

/** Writes `config` (a plain object; model/policy default to the example files) and starts the sidecar. */
export async function startTestSidecar(config: Record<string, unknown>, options: Pick<EngineBuildOptions, 'now' | 'jwks'> = {}): Promise<TestSidecar> {
  const dir = await mkdtemp(join(tmpdir(), 'authz-sidecar-test-'));
  const full = {
    listen: '127.0.0.1:0',
    admin: { listen: '127.0.0.1:0' },
    logging: { level: 'silent', decisions: 'none' },
    ...config,
    authz: { model: EXAMPLE_MODEL, policy: EXAMPLE_POLICY, ...(config['authz'] as object | undefined) },
  };
  const file = join(dir, 'authz-sidecar.yaml');
  await writeFile(file, stringify(full));
  const running = await startSidecar(await loadConfig(file), { file, ...options });
  return {
    url: `http://${running.proxyAddress ?? 'no-proxy-listener.invalid'}`,
    adminUrl: `http://${running.adminAddress}`,
    extAuthz: running.extAuthz,
    running,
    dir,
    async close() {
      await running.close();
      await rm(dir, { recursive: true, force: true });
    },
  };
}

/** Polls /readyz until 200 (the remote JWKS is fetched in the background at start). */
export async function waitReady(adminUrl: string, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const res = await fetch(`${adminUrl}/readyz`);
    if (res.status === 200) return;
    if (Date.now() > deadline) throw new Error(`not ready: ${await res.text()}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}
