/**
 * The esbuild settings of the CLI bundle (scripts/bundle.mjs), shared with the benches that bundle code the
 * way the sidecar ships it (bench/grpc-compare/build.mjs, bench/module-rss.mjs), so they measure what ships.
 */
export const BUNDLE_OPTIONS = Object.freeze({
  bundle: true,
  platform: 'node',
  target: 'node20',
  format: 'esm',
  // Loaded from node_modules, and only when the gRPC door is configured.
  // oidc-provider: only the demo's sign-in provider loads it, from a source checkout (a devDependency).
  external: ['@grpc/grpc-js', '@grpc/proto-loader', 'oidc-provider'],
  // CommonJS dependencies call require() for Node built-ins; an ES module has no require of its own.
  banner: { js: "import { createRequire as __authzCreateRequire } from 'node:module'; const require = __authzCreateRequire(import.meta.url);" },
  legalComments: 'none',
  logLevel: 'warning',
});

/** The code-split layout of the bundle: chunks beside the entry, at the same depth. */
export const SPLIT_OPTIONS = Object.freeze({
  outExtension: { '.js': '.mjs' },
  splitting: true,
  chunkNames: '[name]-[hash]',
  metafile: true,
});
