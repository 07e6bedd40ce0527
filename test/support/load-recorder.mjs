/**
 * A module-loading recorder for `node --import`: with AUTHZ_LOAD_RECORD=/path/file set, appends the URL of
 * every module the process loads to that file, one per line (nothing happens without it). Used by
 * test/integration/lazy-loading.test.ts and bench/module-rss.mjs to see what `serve` really loads for a config.
 *
 * - Node >= 22.15 / 23.5: module.registerHooks(), in-thread hooks that see `require()` as well as `import`
 *   (so the files @grpc/grpc-js requires, protobufjs among them, are listed as they load).
 * - Node 20: module.register() with this same file as the hooks module (its `load` export runs on the loader
 *   thread); it sees the ES module graph and CommonJS modules reached by `import` (the external
 *   @grpc/grpc-js entry), not the `require()` calls inside them. Those are added at exit from the CommonJS
 *   module cache, so a stopped process's record is complete on both.
 *
 * Bundled dependencies (fastify, undici, ...) appear as the dist/bundle chunks holding them; esbuild's
 * metafile (dist/bundle/meta.json) says which inputs each chunk holds.
 */
import { appendFileSync } from 'node:fs';
import module, { createRequire } from 'node:module';
import process from 'node:process';
import { pathToFileURL } from 'node:url';
import { isMainThread } from 'node:worker_threads';

const VARIABLE = 'AUTHZ_LOAD_RECORD';
let file = process.env[VARIABLE];

function record(url) {
  if (file) appendFileSync(file, `${url}\n`);
}

/** The load hook of module.register() (Node 20); runs on the loader thread. */
export async function initialize(data) {
  file = data?.file ?? file;
}

export async function load(url, context, nextLoad) {
  record(url);
  return nextLoad(url, context);
}

if (isMainThread && file) {
  if (typeof module.registerHooks === 'function') {
    module.registerHooks({
      load(url, context, nextLoad) {
        record(url);
        return nextLoad(url, context);
      },
    });
  } else {
    module.register(import.meta.url, { data: { file } });
  }
  const cache = createRequire(import.meta.url).cache;
  process.once('exit', () => {
    const urls = Object.keys(cache).map((path) => pathToFileURL(path).href);
    if (urls.length > 0) record(urls.join('\n'));
  });
}
