/**
 * Builds the connect-node prototype into a temporary folder (nothing here is committed or shipped):
 *
 * 1. The proto/ files the grpc-js door loads, Authorization and Health with their imports, as a
 *    FileDescriptorSet compiled by buf (descriptors.binpb, committed; see compileDescriptors).
 * 2. esbuild bundles the real CLI (dist/cli/main.js, built by `npm run build`) with the options of
 *    scripts/bundle.mjs, except that dist/frontends/ext-authz-grpc.js is replaced by connect-door.mjs and
 *    the FileDescriptorSet is embedded as a module (`grpc-compare:descriptors`). connect and protobuf-es
 *    are bundled into the door's chunk, as a switch would ship them; grpc-js stays external as in the real
 *    bundle (and is never loaded: its door is not in this bundle).
 * 3. The bundle sits in <tmp>/pkg/dist/bundle beside symlinks to package.json, proto/, policies/ and
 *    node_modules, like the real one two folders below the package root, with a copy of bin/authz-sidecar.js:
 *    `node <tmp>/pkg/bin/authz-sidecar.js serve --config FILE` runs it.
 */
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';
import { BUNDLE_OPTIONS, SPLIT_OPTIONS } from '../../scripts/bundle-options.mjs';

export const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const DOOR = fileURLToPath(new URL('./connect-door.mjs', import.meta.url));

/**
 * The FileDescriptorSet of the proto files the grpc-js door loads, and their imports: descriptors.binpb, compiled once from proto/ by buf
 * (the @bufbuild/buf npm package ships its binary; not a devDependency: it is 93 MiB that every `npm ci`,
 * the image's build stage included, would download for this comparison only). After changing proto/:
 *   npx -y @bufbuild/buf@1.75.0 build proto --path proto/envoy/service/auth/v3/external_auth.proto \
 *     --path proto/grpc/health/v1/health.proto --exclude-source-info -o bench/grpc-compare/descriptors.binpb
 */
export function compileDescriptors() {
  return readFileSync(fileURLToPath(new URL('./descriptors.binpb', import.meta.url)));
}

/** Builds the prototype; returns its folder, its bin script and the bundle's size. */
export async function buildPrototype() {
  if (!existsSync(join(ROOT, 'dist/cli/main.js'))) throw new Error('dist/ is missing: npm run build first');
  const dir = mkdtempSync(join(tmpdir(), 'grpc-compare-'));
  const descriptors = compileDescriptors();
  const pkg = join(dir, 'pkg');
  mkdirSync(join(pkg, 'bin'), { recursive: true });
  for (const name of ['package.json', 'proto', 'policies', 'node_modules']) symlinkSync(join(ROOT, name), join(pkg, name));
  copyFileSync(join(ROOT, 'bin/authz-sidecar.js'), join(pkg, 'bin/authz-sidecar.js'));

  const swapDoor = {
    name: 'grpc-compare-swap',
    setup(b) {
      b.onResolve({ filter: /(^|\/)ext-authz-grpc\.js$/ }, (args) => (args.importer.endsWith(join('dist', 'sidecar.js')) ? { path: DOOR } : undefined));
      b.onResolve({ filter: /^grpc-compare:descriptors$/ }, () => ({ path: 'descriptors', namespace: 'grpc-compare' }));
      b.onLoad({ filter: /.*/, namespace: 'grpc-compare' }, () => ({ contents: `export default ${JSON.stringify(descriptors.toString('base64'))};`, loader: 'js' }));
    },
  };
  const result = await build({
    entryPoints: { 'authz-sidecar': join(ROOT, 'dist/cli/main.js') },
    outdir: join(pkg, 'dist/bundle'),
    ...SPLIT_OPTIONS,
    ...BUNDLE_OPTIONS,
    plugins: [swapDoor],
  });
  const inputs = Object.keys(result.metafile.inputs);
  if (!inputs.some((i) => i.endsWith('connect-door.mjs')) || inputs.some((i) => i.endsWith('ext-authz-grpc.js'))) {
    throw new Error('grpc-compare: the gRPC door was not swapped in the bundle');
  }
  const doorChunk = Object.entries(result.metafile.outputs).find(([, o]) => Object.keys(o.inputs).some((i) => i.endsWith('connect-door.mjs')));
  return {
    dir,
    bin: join(pkg, 'bin/authz-sidecar.js'),
    descriptorBytes: descriptors.length,
    doorChunkBytes: doorChunk?.[1].bytes,
    cleanup: () => rmSync(dir, { recursive: true, force: true }),
  };
}
