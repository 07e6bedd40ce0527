/**
 * The layout rules of DESIGN.md §1 and §6, checked on the import graph:
 * - src/core (the decision pipeline) imports nothing outside src/core: no transport, no library;
 * - a front door imports no other front door (they share http-shell, http-check-door, front-door,
 *   request-id, listen);
 * - the bundle's entry loads no door, no fastify, no gRPC, no undici statically: `validate` and `policy`
 *   run without them (`serve` and `demo` reach them through dynamic imports).
 */
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { dirname, join, relative, resolve, sep } from 'node:path';
import ts from 'typescript';
import { describe, expect, it } from 'vitest';

const ROOT = resolve(import.meta.dirname, '../..');
const SRC = join(ROOT, 'src');

function tsFiles(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((entry) => {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) return tsFiles(path);
    return entry.name.endsWith('.ts') && !entry.name.endsWith('.d.ts') ? [path] : [];
  });
}

/** Every module specifier of a file: static imports and re-exports (type-only included), `import()` calls. */
function specifiers(file: string): string[] {
  return ts.preProcessFile(readFileSync(file, 'utf8'), true, true).importedFiles.map((f) => f.fileName);
}

/** The source file a relative specifier names (`./x.js` is `./x.ts`); undefined for a package or built-in. */
function resolveRelative(from: string, specifier: string): string | undefined {
  if (!specifier.startsWith('.')) return undefined;
  return resolve(dirname(from), specifier).replace(/\.js$/, '.ts');
}

const rel = (path: string): string => relative(ROOT, path).split(sep).join('/');

describe('architecture', () => {
  it('src/core imports only src/core and node: built-ins that are not a transport', () => {
    const core = join(SRC, 'core');
    const files = tsFiles(core);
    expect(files.length).toBeGreaterThan(5);
    const FORBIDDEN_BUILTINS = new Set(['node:http', 'node:https', 'node:http2', 'node:net', 'node:tls', 'node:dgram']);
    const violations: string[] = [];
    for (const file of files) {
      for (const specifier of specifiers(file)) {
        const target = resolveRelative(file, specifier);
        if (target !== undefined) {
          if (!target.startsWith(core + sep)) violations.push(`${rel(file)} imports ${specifier} (outside src/core)`);
        } else if (!specifier.startsWith('node:')) {
          violations.push(`${rel(file)} imports the package ${specifier}`);
        } else if (FORBIDDEN_BUILTINS.has(specifier)) {
          violations.push(`${rel(file)} imports the transport ${specifier}`);
        }
      }
    }
    expect(violations).toEqual([]);
  });

  it('no module of src/frontends imports a front door other than itself', () => {
    const frontends = join(SRC, 'frontends');
    const DOORS = ['proxy.ts', 'ext-authz-http.ts', 'ext-authz-grpc.ts', 'forward-auth.ts'].map((name) => join(frontends, name));
    for (const door of DOORS) expect(existsSync(door), `${rel(door)} exists`).toBe(true);
    const violations: string[] = [];
    for (const file of tsFiles(frontends)) {
      for (const specifier of specifiers(file)) {
        const target = resolveRelative(file, specifier);
        if (target !== undefined && target !== file && DOORS.includes(target)) violations.push(`${rel(file)} imports the door ${specifier}`);
      }
    }
    expect(violations).toEqual([]);
  });

  it('only src/tracing/sdk.ts imports the OpenTelemetry SDK, and only src/sidecar.ts loads it, by a dynamic import', () => {
    // With tracing off (no OTEL_TRACES_EXPORTER=otlp) nothing beyond @opentelemetry/api is loaded: the SDK,
    // exporter, propagators and resources are reached only through the dynamic import in sidecar.ts, and
    // the doors import the span helpers as types only.
    const violations: string[] = [];
    const sdk = join(SRC, 'tracing/sdk.ts');
    const spans = join(SRC, 'tracing/spans.ts');
    for (const file of tsFiles(SRC)) {
      const text = readFileSync(file, 'utf8');
      for (const specifier of specifiers(file)) {
        if (specifier.startsWith('@opentelemetry/') && specifier !== '@opentelemetry/api' && file !== sdk) violations.push(`${rel(file)} imports ${specifier}`);
        const target = resolveRelative(file, specifier);
        if ((target === sdk || target === spans) && file !== join(SRC, 'sidecar.ts') && !new RegExp(`import type [^;]*'${specifier.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}'`).test(text)) {
          violations.push(`${rel(file)} loads ${specifier}`);
        }
        if ((target === sdk || target === spans) && file === join(SRC, 'sidecar.ts') && !text.includes(`import('${specifier}')`)) violations.push(`sidecar.ts imports ${specifier} statically`);
      }
    }
    expect(violations).toEqual([]);
  });

  it('the bundle entry statically loads no door, no fastify, no gRPC, no undici', () => {
    const metaFile = join(ROOT, 'dist/bundle/meta.json');
    if (!existsSync(metaFile)) {
      throw new Error(`${rel(metaFile)} is missing: run \`npm run build\` first (npm test does it in pretest); scripts/bundle.mjs writes esbuild's metafile there`);
    }
    const meta = JSON.parse(readFileSync(metaFile, 'utf8')) as {
      outputs: Record<string, { entryPoint?: string; inputs: Record<string, unknown>; imports: Array<{ path: string; kind: string; external?: boolean }> }>;
    };
    const ENTRY = 'dist/bundle/authz-sidecar.mjs';
    expect(meta.outputs[ENTRY], `${ENTRY} in ${rel(metaFile)}`).toBeDefined();

    // The chunks loaded with the entry: import statements only (dynamic imports are what `serve` loads).
    const closure = new Set<string>();
    const externals = new Set<string>();
    const pending = [ENTRY];
    while (pending.length > 0) {
      const output = pending.pop()!;
      if (closure.has(output)) continue;
      closure.add(output);
      for (const imported of meta.outputs[output]?.imports ?? []) {
        if (imported.kind !== 'import-statement') continue;
        if (meta.outputs[imported.path] !== undefined) pending.push(imported.path);
        else externals.add(imported.path);
      }
    }
    const inputs = [...closure].flatMap((output) => Object.keys(meta.outputs[output]?.inputs ?? {}));
    expect(inputs.length).toBeGreaterThan(0);

    // tsc compiles src/ to dist/ before esbuild bundles, so the inputs are dist/...; src/... covers a bundle of the sources.
    const FORBIDDEN = [
      'node_modules/fastify/',
      'node_modules/@fastify/',
      'node_modules/@grpc/',
      'node_modules/undici/',
      ...['frontends/', 'upstream/', 'sidecar.'].flatMap((p) => [`src/${p}`, `dist/${p}`]),
    ];
    // A package may also sit deeper (node_modules/.pnpm/fastify@5/node_modules/fastify/).
    const loaded = inputs.filter((input) => FORBIDDEN.some((prefix) => input.startsWith(prefix) || (prefix.startsWith('node_modules/') && input.includes(`/${prefix}`))));
    expect(loaded, 'inputs of the chunks the entry imports statically').toEqual([]);
    // gRPC is external to the bundle: an import statement of it would load it as well.
    expect([...externals].filter((e) => /^(@grpc\/|fastify|undici)/.test(e))).toEqual([]);
  });
});
