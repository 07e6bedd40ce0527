/**
 * Bundles the CLI (dist/cli/main.js, built by tsc) into ES modules, dist/bundle/authz-sidecar.mjs and its chunks, which
 * bin/authz-sidecar.js runs. Node resolves and compiles several hundred files at start otherwise: bundled,
 * `serve` is ready in about 60% of the time (bench/ row 8). The bundle sits two folders below the package
 * root, like dist/<dir>/<file>.js, so the paths the code builds from import.meta.url (proto/, policies/,
 * package.json) resolve the same. gRPC stays external: loaded from node_modules, and only when its door is
 * configured.
 */
import { rmSync, writeFileSync } from 'node:fs';
import { build } from 'esbuild';
import { BUNDLE_OPTIONS, SPLIT_OPTIONS } from './bundle-options.mjs';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('..', import.meta.url));

// Chunk names change with their content: the last build's chunks go first, or they pile up.
rmSync(`${root}dist/bundle`, { recursive: true, force: true });
const result = await build({
  entryPoints: { 'authz-sidecar': `${root}dist/cli/main.js` },
  outdir: `${root}dist/bundle`,
  // Code split at the CLI's dynamic imports: `validate` and `policy` load the entry chunk and the engine,
  // never the serving side (fastify, the doors); the chunks sit beside the entry, at the same depth.
  ...SPLIT_OPTIONS,
  ...BUNDLE_OPTIONS,
});
// The import graph of the chunks, read by a test (the offline commands load no door).
writeFileSync(`${root}dist/bundle/meta.json`, JSON.stringify(result.metafile));
