/**
 * Each heavy module's share of resting RSS: writes bench/results/module-rss.md with, per Node binary
 * (NODE_BIN, comma-separated, as bench/resting-rss.mjs), a table "module | loaded by (configs) | RSS at rest
 * MiB | share of the proxy door's resting RSS", and the resting RSS of `serve` with and without each door.
 *
 * - Every figure is the VmRSS growth of a fresh `node --expose-gc` process that reads VmRSS after forced GCs,
 *   imports modules as the sidecar does, collects again and reads again; median of BENCH_ROUNDS (default 3)
 *   processes. Bundled modules are imported through an esbuild bundle built with scripts/bundle.mjs's
 *   settings from exactly the names src/ imports of them (so tree shaking keeps what the sidecar's bundle
 *   keeps); @grpc/grpc-js and @grpc/proto-loader from node_modules, as the bundle leaves them external.
 * - RSS at rest of a module: the growth of a process importing only this module. The RSS figures do not add
 *   up (V8's committed heap pages and the memory outside its heap grow in steps, shared by everything loaded), so
 *   the V8 heap the module uses (heapUsed growth after GC), which comes closer to adding up, is listed too,
 *   and a last row imports every module in one process.
 * - Node itself: the same process before it imports anything.
 * - Loaded by: `serve` of each configuration runs with test/support/load-recorder.mjs (`--import`), which
 *   lists every module loaded; bundle chunks are mapped to the packages in them with dist/bundle/meta.json.
 * - Share: the row's MiB over the median resting VmRSS of `serve` with the proxy door only (this build,
 *   read BENCH_SETTLE_SECONDS after ready as in bench/resting-rss.mjs).
 */
import { execFile } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { promisify } from 'node:util';
import { build } from 'esbuild';
import { BUNDLE_OPTIONS } from '../scripts/bundle-options.mjs';
import { CONFIGS, ROOT, ROUNDS, SETTLE_SECONDS, createFixtures, log, machine, median, mib, nodeBinaries, restingRss, startServe } from './resting-rss.mjs';
import { describeCheckout } from './lib/util.mjs';

const exec = promisify(execFile);
const require = createRequire(join(ROOT, 'package.json'));
const RECORDER = join(ROOT, 'test/support/load-recorder.mjs');

/** The rows: `packages` are what "loaded by" looks for (the first one decides), `imports` what is imported. */
const MODULES = [
  { label: 'fastify', packages: ['fastify'] },
  { label: 'undici', packages: ['undici'] },
  { label: '@grpc/grpc-js + @grpc/proto-loader + protobufjs', packages: ['@grpc/grpc-js', '@grpc/proto-loader', 'protobufjs'], external: ['@grpc/grpc-js', '@grpc/proto-loader'] },
  {
    label: '... and the door\'s protos loaded (ext_authz v3, health v1)',
    packages: ['@grpc/grpc-js'],
    external: ['@grpc/grpc-js', '@grpc/proto-loader'],
    protos: true,
  },
  { label: 'casbin', packages: ['casbin'] },
  { label: 'jose', packages: ['jose'] },
  { label: 'openid-client (+ oauth4webapi)', packages: ['openid-client', 'oauth4webapi'] },
  { label: 'prom-client (+ @opentelemetry/api)', packages: ['prom-client', '@opentelemetry/api'] },
  {
    label: '... of which @opentelemetry/api (prom-client\'s default metrics require it; the sidecar has no tracing)',
    packages: ['@opentelemetry/api'],
    source: "import * as api from '@opentelemetry/api';\nglobalThis.__keep = api;",
  },
  { label: 'pino', packages: ['pino'] },
  { label: 'lru-cache', packages: ['lru-cache'] },
  { label: 'zod (not in the issue\'s list; config schema)', packages: ['zod'] },
  { label: 'yaml (not in the issue\'s list; config loader)', packages: ['yaml'] },
];

/** Every non-type import of `pkg` in src/ (the demo aside: `serve` never loads it), as import clauses. */
function importClauses(pkg) {
  const files = [];
  const walk = (dir) => {
    for (const e of readdirSync(dir, { withFileTypes: true })) {
      const path = join(dir, e.name);
      if (e.isDirectory()) {
        if (path !== join(ROOT, 'src/demo')) walk(path);
      } else if (e.name.endsWith('.ts') && !e.name.endsWith('.d.ts')) files.push(path);
    }
  };
  walk(join(ROOT, 'src'));
  const clauses = new Set();
  for (const file of files) {
    for (const m of readFileSync(file, 'utf8').matchAll(/^import\s+(?!type\s)([\s\S]*?)\s+from\s+'([^']+)';/gm)) {
      if (m[2] !== pkg) continue;
      // Drop `type X` members; a clause left with nothing is type-only.
      const clause = m[1].replace(/\btype\s+[\w$]+\s*,?/g, '').replace(/,\s*}/, ' }').replace(/\{\s*}/, '').replace(/,\s*$/, '').trim();
      if (clause !== '') clauses.add(clause.replace(/\s+/g, ' '));
    }
  }
  return [...clauses];
}

/** An entry module importing what src/ imports of each package and keeping every binding alive. */
function entrySource(packages) {
  const lines = [];
  const keep = [];
  let n = 0;
  for (const pkg of packages) {
    for (const clause of importClauses(pkg)) {
      // Rename every binding so that clauses of several files do not clash.
      const renamed = clause
        .replace(/\*\s+as\s+([\w$]+)/, () => `* as b${n}_ns`)
        .replace(/^([\w$]+)(?=\s*(,|$))/, () => `b${n}_default`)
        .replace(/\{([^}]*)\}/, (_, members) => `{ ${members.split(',').map((s) => s.trim()).filter(Boolean).map((s, i) => `${s.split(/\s+as\s+/)[0]} as b${n}_${i}`).join(', ')} }`);
      for (const b of renamed.matchAll(/\b(b\d+_[\w$]+)\b/g)) keep.push(b[1]);
      lines.push(`import ${renamed} from '${pkg}';`);
      n++;
    }
    if (n === 0) throw new Error(`src/ imports nothing of ${pkg}`);
  }
  lines.push(`globalThis.__keep = [${keep.join(', ')}];`);
  return lines.join('\n');
}

/** Builds the bundle of `packages` (or of `contents`) with scripts/bundle.mjs's settings; returns its file URL. */
async function bundle(work, name, packages, contents = entrySource(packages)) {
  const outfile = join(work, `${name.replace(/\W+/g, '_')}.mjs`);
  await build({
    stdin: { contents, resolveDir: ROOT, sourcefile: `${name}-entry.mjs`, loader: 'js' },
    outfile,
    ...BUNDLE_OPTIONS,
  });
  return pathToFileURL(outfile).href;
}

/** The probe: VmRSS (and V8's heapUsed) after GC, imports, the same after GC again. argv: JSON list of URLs, the proto folder or ''. */
const PROBE = `import { readFileSync } from 'node:fs';
const rss = () => Number(/^VmRSS:\\s+(\\d+) kB/m.exec(readFileSync('/proc/self/status', 'utf8'))[1]) / 1024;
async function settle() {
  for (let i = 0; i < 3; i++) {
    globalThis.gc();
    await new Promise((r) => setTimeout(r, 100));
  }
}
await settle();
const before = rss();
const heapBefore = process.memoryUsage().heapUsed / 1048576;
const modules = [];
for (const url of JSON.parse(process.argv[2])) modules.push(await import(url));
const protoDir = process.argv[3];
if (protoDir) {
  const grpc = modules.find((m) => typeof m.loadPackageDefinition === 'function');
  const protoLoader = modules.find((m) => typeof m.loadSync === 'function');
  const definitions = protoLoader.loadSync(['envoy/service/auth/v3/external_auth.proto', 'grpc/health/v1/health.proto'], { includeDirs: [protoDir], keepCase: true, longs: String, enums: String, defaults: false, oneofs: true });
  globalThis.__keep = grpc.loadPackageDefinition(definitions);
}
await settle();
process.stdout.write(JSON.stringify({ before, after: rss(), heapBefore, heap: process.memoryUsage().heapUsed / 1048576 - heapBefore, modules: modules.length }));
`;

async function probe(bin, probeFile, urls, protoDir = '') {
  const { stdout } = await exec(bin, ['--expose-gc', probeFile, JSON.stringify(urls), protoDir], { cwd: ROOT });
  return JSON.parse(stdout);
}

/** The packages whose code a `serve` of `doors` loads, from the recorder's list and the bundle's metafile. */
async function loadedPackages({ bin, fixtures, doors, work }) {
  const record = join(work, `loaded-${doors.join('-')}-${Date.now()}.txt`);
  writeFileSync(record, '');
  const serve = await startServe({ bin, root: ROOT, fixtures, doors, env: { AUTHZ_LOAD_RECORD: record }, nodeArgs: ['--import', pathToFileURL(RECORDER).href] });
  await serve.stop();
  const meta = JSON.parse(readFileSync(join(ROOT, 'dist/bundle/meta.json'), 'utf8'));
  const packages = new Set();
  const chunks = new Set();
  const packageOf = (path) => /(?:^|\/)node_modules\/((?:@[^/]+\/)?[^/]+)\//.exec(path)?.[1];
  for (const url of readFileSync(record, 'utf8').split('\n')) {
    if (!url.startsWith('file:')) continue;
    const path = fileURLToPath(url);
    const output = relative(ROOT, path);
    if (meta.outputs[output] !== undefined) {
      chunks.add(output);
      for (const input of Object.keys(meta.outputs[output].inputs)) {
        const pkg = packageOf(input);
        if (pkg !== undefined) packages.add(pkg);
      }
    } else {
      const pkg = packageOf(relative(ROOT, path));
      if (pkg !== undefined) packages.add(pkg);
    }
  }
  return { packages, chunks };
}

async function main() {
  const nodes = nodeBinaries();
  const work = mkdtempSync(join(tmpdir(), 'authz-module-rss-'));
  const probeFile = join(work, 'probe.mjs');
  writeFileSync(probeFile, PROBE);
  const fixtures = await createFixtures();
  const commit = describeCheckout(ROOT);
  try {
    // What each configuration loads (with every Node: the lists should agree).
    const loadedBy = new Map(); // package -> Set of config ids
    const perConfig = {};
    for (const node of nodes) {
      for (const config of CONFIGS) {
        const { packages, chunks } = await loadedPackages({ bin: node.bin, fixtures, doors: config.doors, work });
        perConfig[`${node.version} ${config.id}`] = { packages: [...packages].sort(), chunks: [...chunks].sort() };
        for (const pkg of packages) loadedBy.set(pkg, new Set([...(loadedBy.get(pkg) ?? []), config.id]));
        log(`${node.version} ${config.id} loads ${packages.size} packages: ${[...packages].sort().join(' ')}`);
      }
    }

    // The bundles and URLs each row imports.
    const GRPC = ['@grpc/grpc-js', '@grpc/proto-loader'];
    const grpcUrls = GRPC.map((p) => pathToFileURL(require.resolve(p)).href);
    const direct = (row) => (row.source === undefined ? row.packages.filter((p) => !GRPC.includes(p) && importClauses(p).length > 0) : []);
    for (const row of MODULES) {
      row.urls = [
        ...(row.source !== undefined ? [await bundle(work, row.label, [], row.source)] : []),
        ...(direct(row).length > 0 ? [await bundle(work, row.label, direct(row))] : []),
        ...(row.external === undefined ? [] : grpcUrls),
      ];
    }
    const together = { label: 'all of them together (one process)', urls: [await bundle(work, 'all', [...new Set(MODULES.flatMap(direct))]), ...grpcUrls], protos: true };

    const sections = [];
    for (const node of nodes) {
      const rows = [...MODULES, together];
      const bare = { rss: [], heap: [] };
      const growth = new Map(rows.map((r) => [r, { rss: [], heap: [] }]));
      const serve = new Map(CONFIGS.map((c) => [c.id, []]));
      for (let round = 1; round <= ROUNDS; round++) {
        const b = await probe(node.bin, probeFile, []);
        bare.rss.push(b.before);
        bare.heap.push(b.heapBefore);
        for (const row of rows) {
          const r = await probe(node.bin, probeFile, row.urls, row.protos ? join(ROOT, 'proto') : '');
          growth.get(row).rss.push(r.after - r.before);
          growth.get(row).heap.push(r.heap);
        }
        for (const config of CONFIGS) {
          const r = await restingRss({ bin: node.bin, root: ROOT, fixtures, doors: config.doors });
          serve.get(config.id).push(r.rss);
        }
        log(`${node.version} round ${round}/${ROUNDS}: bare ${mib(bare.rss.at(-1))} MiB, all modules +${mib(growth.get(together).rss.at(-1))} MiB, proxy-only serve ${mib(serve.get('proxy').at(-1))} MiB`);
      }
      const proxyRss = median(serve.get('proxy'));
      const share = (v) => `${((v / proxyRss) * 100).toFixed(1)}%`;
      const range = (values) => (values.length > 1 ? ` (${mib(Math.min(...values))}-${mib(Math.max(...values))})` : '');
      const configsOf = (row) => {
        if (row === together) return '';
        if (row.protos) return 'grpc, all (loaded as the door starts)';
        const ids = loadedBy.get(row.packages[0]);
        if (ids === undefined || ids.size === 0) return 'none';
        return ids.size === CONFIGS.length ? 'every config' : CONFIGS.filter((c) => ids.has(c.id)).map((c) => c.id).join(', ');
      };
      const line = (label, configs, m) => `| ${label} | ${configs} | ${mib(median(m.rss))}${range(m.rss)} | ${share(median(m.rss))} | ${mib(median(m.heap))} |`;
      const lines = [
        `## Node ${node.version}`,
        '',
        `Proxy door's resting RSS (serve, proxy only, median of ${ROUNDS}): ${mib(proxyRss)} MiB.`,
        '',
        '| module | loaded by (configs) | RSS at rest MiB | share of the proxy door\'s resting RSS | V8 heap used MiB |',
        '| --- | --- | ---: | ---: | ---: |',
        line('Node itself (a bare process)', 'every config', bare),
        ...rows.map((row) => line(row.label, configsOf(row), growth.get(row))),
        '',
        `Resting RSS of \`serve\` with and without a door (median of ${ROUNDS}; the HTTP ext_authz door loads no module the other configs lack: fastify serves the admin listener in every config):`,
        '',
        '| configuration | resting RSS MiB | over HTTP ext_authz only |',
        '| --- | ---: | ---: |',
        ...CONFIGS.map((c) => {
          const v = median(serve.get(c.id));
          const d = v - median(serve.get('http'));
          return `| ${c.name} | ${mib(v)}${range(serve.get(c.id))} | ${c.id === 'http' ? '' : `${d >= 0 ? '+' : ''}${mib(d)}`} |`;
        }),
        '',
      ];
      sections.push(lines.join('\n'));
      process.stdout.write(`${lines.join('\n')}\n`);
    }

    const first = nodes[0].version;
    const loadedLines = CONFIGS.map((c) => {
      const entry = perConfig[`${first} ${c.id}`];
      return `- ${c.name}: ${entry.packages.join(', ')}; chunks ${entry.chunks.map((p) => p.replace(/^dist\/bundle\//, '')).join(', ')}`;
    });
    const disagree = CONFIGS.filter((c) => new Set(nodes.map((n) => perConfig[`${n.version} ${c.id}`].packages.join())).size > 1);
    const command = `${['NODE_BIN', 'BENCH_ROUNDS', 'BENCH_SETTLE_SECONDS'].filter((k) => process.env[k]).map((k) => `${k}=${process.env[k]} `).join('')}node bench/module-rss.mjs`;
    const md = [
      '# Resting RSS per module',
      '',
      `${new Date().toISOString()}, \`${command}\`, authz-sidecar ${commit}`,
      '',
      `- machine: ${machine()}`,
      `- Node: ${nodes.map((n) => `${n.version} (${n.bin})`).join(', ')}`,
      `- RSS at rest MiB: the VmRSS growth of a fresh \`node --expose-gc\` process importing the module (read after forced GCs, before and after), ` +
        `median of ${ROUNDS} processes (min-max in brackets). Bundled modules are imported through an esbuild bundle of exactly what src/ imports of them ` +
        "(scripts/bundle.mjs's settings), gRPC from node_modules (external to the bundle, as in the sidecar's). Node itself: the same process before it imports anything.",
      '- The RSS figures do not add up: each includes heap pages V8 commits and memory outside V8\'s heap, which grow in steps ' +
        'and are shared by whatever is loaded (the last row imports them all in one process), and rows overlap where modules share dependencies ' +
        "(fastify brings pino's). V8 heap used (heapUsed growth after GC, median) comes closer to adding up: the module's own objects, bytecode and source.",
      `- Share: of the resting VmRSS of \`serve\` with the proxy door only (this build; ${SETTLE_SECONDS} s at rest after /readyz 200).`,
      '- Loaded by: the packages `serve` loads per configuration, recorded at run time by test/support/load-recorder.mjs ' +
        '(bundle chunks mapped to their inputs with dist/bundle/meta.json).',
      '',
      ...sections,
      `## What each configuration loads (Node ${first}${disagree.length > 0 ? `; other Node versions differ for ${disagree.map((c) => c.id).join(', ')}` : '; the same on every Node measured'})`,
      '',
      ...loadedLines,
      '',
    ].join('\n');
    const out = join(ROOT, 'bench/results/module-rss.md');
    mkdirSync(join(out, '..'), { recursive: true });
    writeFileSync(out, md);
    log(`wrote ${out}`);
  } finally {
    await fixtures.close();
    rmSync(work, { recursive: true, force: true });
  }
}

main().then(
  () => process.exit(0),
  (err) => {
    log(err instanceof Error ? (err.stack ?? err.message) : err);
    process.exit(1);
  },
);
