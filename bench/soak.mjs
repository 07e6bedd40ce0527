// `npm run soak` (issue #18): bundles the soak (bench/soak/*.ts, which reuses the test suite's real
// servers from test/support/) with esbuild into dist/soak/, two folders below the root like the sources,
// and runs it. SOAK_SECONDS, SOAK_RATE and SOAK_OUT are read by bench/soak/main.ts.
import { build } from 'esbuild';
import { fileURLToPath, pathToFileURL } from 'node:url';

const root = fileURLToPath(new URL('..', import.meta.url));
const outfile = `${root}dist/soak/main.mjs`;
await build({
  entryPoints: [`${root}bench/soak/main.ts`],
  outfile,
  bundle: true,
  platform: 'node',
  format: 'esm',
  target: 'node20',
  packages: 'external',
  logLevel: 'warning',
});
await import(pathToFileURL(outfile).href);
