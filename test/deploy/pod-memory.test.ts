/**
 * Every shipped manifest's memory limit against its door's measured peak (bench/pods.mjs, which runs each
 * manifest's container as its pod runs it: the manifest's limit as a cgroup limit Node reads, the image's
 * entrypoint and Node major, the manifest's env). A limit under 1.25x the measured peak is an OOM kill
 * waiting for a busy hour; a manifest changed after it was measured must be measured again.
 */
import { readdirSync, readFileSync, statSync } from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseAllDocuments } from 'yaml';
import { describe, expect, it } from 'vitest';
// @ts-expect-error -- plain .mjs without types, run directly by `npm run bench:pods`
import * as podsModule from '../../bench/pods.mjs';

interface Manifest {
  id: string;
  files: string[];
  env: Record<string, string>;
  limit: string | undefined;
  limitBytes: number | undefined;
  request: string | undefined;
  config: { listen?: string; extAuthz?: Record<string, unknown> };
}
interface PodRow {
  manifest: string;
  limit: string;
  request: string;
  manifestNodeOptions: string;
  doors: Record<string, { rps: number; cpuSecondsPer10k: number }>;
  peakChargeMiB: number;
  peakMiB: number;
  peakRssMiB: number;
  limitMiB: number;
  within: boolean;
}
const { MANIFESTS, readManifest, quantityBytes, HEADROOM } = podsModule as unknown as {
  MANIFESTS: Array<{ id: string; files: string[] }>;
  readManifest: (m: { id: string; files: string[] }) => Manifest;
  quantityBytes: (q: string) => number;
  HEADROOM: number;
};

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const measured = JSON.parse(readFileSync(path.join(ROOT, 'bench/results/pods.json'), 'utf8')) as { node: string; pods: PodRow[] };

function yamlFiles(dir: string): string[] {
  return readdirSync(dir).flatMap((name) => {
    const full = path.join(dir, name);
    if (statSync(full).isDirectory()) return yamlFiles(full);
    return /\.ya?ml$/.test(name) ? [full] : [];
  });
}

describe('memory quantities', () => {
  it('reads the Kubernetes units', () => {
    expect(quantityBytes('128Mi')).toBe(128 * 2 ** 20);
    expect(quantityBytes('1Gi')).toBe(2 ** 30);
    expect(quantityBytes('200M')).toBe(200e6);
    expect(quantityBytes('1048576')).toBe(2 ** 20);
    expect(() => quantityBytes('lots')).toThrow(/not a memory quantity/);
  });
});

describe('pod memory: every manifest fits its measured peak', () => {
  it('measures every workload in deploy/ that runs an authz-sidecar container', () => {
    const withSidecar = yamlFiles(path.join(ROOT, 'deploy'))
      .filter((file) =>
        parseAllDocuments(readFileSync(file, 'utf8')).some((doc) => {
          const d = doc.toJSON() as { kind?: string; spec?: { template?: { spec?: { containers?: Array<{ name: string }>; initContainers?: Array<{ name: string }> } } } } | null;
          const spec = d?.spec?.template?.spec;
          return [...(spec?.containers ?? []), ...(spec?.initContainers ?? [])].some((c) => c.name === 'authz-sidecar');
        }),
      )
      .map((file) => path.relative(ROOT, file));
    expect(withSidecar.length).toBeGreaterThan(0);
    for (const file of withSidecar) expect(MANIFESTS.flatMap((m) => m.files), `${file} is not in bench/pods.mjs MANIFESTS`).toContain(file);
  });

  for (const entry of MANIFESTS) {
    describe(entry.id, () => {
      const manifest = readManifest(entry);
      const row = measured.pods.find((p) => p.manifest === entry.id);

      it('was measured, with the limit, request and NODE_OPTIONS it has now', () => {
        expect(row, `bench/results/pods.json has no row for ${entry.id}: run npm run bench:pods`).toBeDefined();
        expect(manifest.limit, 'a memory limit').toBeDefined();
        expect(row?.limit).toBe(manifest.limit);
        expect(row?.request).toBe(manifest.request);
        expect(row?.manifestNodeOptions).toBe(manifest.env['NODE_OPTIONS'] ?? '');
      });

      it(`has a limit at least ${HEADROOM}x the measured peak, and a request no higher than the limit`, () => {
        const limitMiB = (manifest.limitBytes ?? 0) / 2 ** 20;
        expect(row?.peakMiB).toBeGreaterThan(0);
        expect(row?.peakMiB).toBeGreaterThanOrEqual(row?.peakChargeMiB ?? Infinity);
        expect(limitMiB, `limit ${manifest.limit} against a peak of ${row?.peakMiB} MiB`).toBeGreaterThanOrEqual(HEADROOM * (row?.peakMiB ?? Infinity));
        expect(quantityBytes(manifest.request ?? '0')).toBeLessThanOrEqual(manifest.limitBytes ?? 0);
      });

      it('loaded every door the manifest configures', () => {
        const doors = [...(manifest.config.listen !== undefined ? ['proxy'] : []), ...Object.keys(manifest.config.extAuthz ?? {})];
        expect(Object.keys(row?.doors ?? {}).sort()).toEqual(doors.sort());
        for (const door of Object.values(row?.doors ?? {})) expect(door.rps).toBeGreaterThan(0);
      });
    });
  }

  it("was measured on the image's Node major", () => {
    const dockerfile = readFileSync(path.join(ROOT, 'Dockerfile'), 'utf8');
    const major = /^FROM node:(\d+)/m.exec(dockerfile)?.[1];
    expect(measured.node).toMatch(new RegExp(`^v${major}\\.`));
  });
});
