/**
 * Bundles the CLI (dist/cli/main.js, built by tsc) into one ES module, dist/bundle/authz-sidecar.mjs, which
 * bin/authz-sidecar.js runs. Node resolves and compiles several hundred files at start otherwise: bundled,
 * `serve` is ready in about 60% of the time (bench/ row 8). The bundle sits two folders below the package
 * root, like dist/<dir>/<file>.js, so the paths the code builds from import.meta.url (proto/, policies/,
 * package.json) resolve the same. gRPC stays external: loaded from node_modules, and only when its door is
 * configured.
 */
import { build } from 'esbuild';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('..', import.meta.url));

await build({
  entryPoints: [`${root}dist/cli/main.js`],
  outfile: `${root}dist/bundle/authz-sidecar.mjs`,
  bundle: true,
  platform: 'node',
  target: 'node20',
  format: 'esm',
  external: ['@grpc/grpc-js', '@grpc/proto-loader'],
  // CommonJS dependencies call require() for Node built-ins; an ES module has no require of its own.
  banner: { js: "import { createRequire as __authzCreateRequire } from 'node:module'; const require = __authzCreateRequire(import.meta.url);" },
  legalComments: 'none',
  logLevel: 'warning',
});
