/**
 * `npm run bench:grpc`: the ext_authz gRPC door on @grpc/grpc-js (the real sidecar, bin/authz-sidecar.js)
 * against the same door on @connectrpc/connect-node (the prototype of build.mjs: the real CLI bundle with
 * connect-door.mjs swapped in), same config, same engine, same load. Bench-only: nothing here ships.
 *
 * Each round starts each implementation as a NEW process (one Node process can stay slower than another
 * of the same build for its whole life), pinned to core 1, and loads it with h2load on core 0 (bench/lib/
 * load.mjs h2loadGrpc: 4 connections x 32 streams, the framed CheckRequest of bench/lib/grpc-body.mjs) for
 * a 2 s warm-up and then BENCH_SECONDS; which implementation goes first alternates by round. Per process:
 * time from spawn to the first OK check, resting RSS (VmRSS once it has answered its checks and idled 1 s),
 * checks/s, latency, CPU seconds per 10k checks (/proc/<pid>/stat around the measured load) and peak RSS
 * (VmHWM after the load). A sidecar with only the HTTP check door (no gRPC module at all) is started each
 * round too, for the startup and resting RSS that the gRPC transports add.
 *
 * Before any load, both must answer, to a @grpc/grpc-js client built from Envoy's official protos, an
 * allowed check with OK (0) and ok_response, a check without a token with UNAUTHENTICATED (16) and a 401
 * denied_response, the same decoded CheckResponses, and SERVING on grpc.health.v1.Health.
 *
 * Environment: BENCH_ROUNDS (default 7), BENCH_SECONDS (default 5). Writes bench/results/grpc-compare.md
 * (and prints it). Needs `npm run build` first (dist/), h2load and taskset, and 2 cores; waits while
 * another `bench/run.mjs` is running, since both would share the cores.
 */
import { execFile, execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, release, tmpdir } from 'node:os';
import { join } from 'node:path';
import { isDeepStrictEqual, promisify } from 'node:util';
import { h2loadGrpc } from '../lib/load.mjs';
import { cpuSeconds, peakRssMiB } from '../lib/proc.mjs';
import { describeCheckout } from '../lib/util.mjs';
import { buildPrototype, ROOT } from './build.mjs';
import { healthCheck } from './client.mjs';
import { makeFixture, rssMiB, startServer, verifyAnswers, writeConfig } from './setup.mjs';

const exec = promisify(execFile);
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 7);
const SECONDS = Number(process.env.BENCH_SECONDS ?? 5);
const WARMUP_SECONDS = 2;
/** Settling time before the resting RSS is read. */
const REST_MS = 1_000;
const SERVER_CPU = 1;
const LOAD_CPU = 0;
const POLICY_LINES = 1_000;

const log = (...args) => console.error(`[bench:grpc ${new Date().toISOString().slice(11, 19)}]`, ...args);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** The two implementations; `bin` is filled in once the prototype is built. */
const IMPLEMENTATIONS = [
  { id: 'grpc-js', name: '@grpc/grpc-js + @grpc/proto-loader (the real door)' },
  { id: 'connect', name: '@connectrpc/connect-node + @bufbuild/protobuf (prototype)' },
];

/** Another benchmark on the same two cores would make both wrong: wait for it to end. */
async function waitForOtherBenchmarks() {
  for (;;) {
    let pids;
    try {
      pids = execFileSync('pgrep', ['-f', 'bench/run.mjs'], { encoding: 'utf8' }).trim();
    } catch {
      return; // pgrep exits 1 when nothing matches
    }
    log(`another benchmark is running (pid ${pids.split('\n').join(', ')}); checking again in 60 s`);
    await sleep(60_000);
  }
}

function median(values) {
  const sorted = values.filter((v) => v !== undefined && Number.isFinite(v)).sort((a, b) => a - b);
  if (sorted.length === 0) return undefined;
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

function pkgVersion(name) {
  try {
    return JSON.parse(readFileSync(join(ROOT, 'node_modules', name, 'package.json'), 'utf8')).version;
  } catch {
    return 'missing';
  }
}


/** One process of `impl`: started, checked, rested, warmed up, measured, stopped. */
async function measureOnce(impl, fixture, round) {
  const config = await writeConfig(fixture);
  const server = await startServer({ bin: impl.bin, config, cpu: SERVER_CPU, fixture, log: join(fixture.work, `${impl.id}-round${round}.log`) });
  try {
    await verifyAnswers(server.address, fixture);
    await sleep(REST_MS);
    const restingRssMiB = rssMiB(server.pid);
    const load = (seconds) => h2loadGrpc({ url: server.url, cpu: LOAD_CPU, body: fixture.allowFrame, seconds });
    await load(WARMUP_SECONDS);
    const cpuBefore = cpuSeconds(server.pid);
    const result = await load(SECONDS);
    const cpu = cpuSeconds(server.pid) - cpuBefore;
    if (result.non2xx > 0) throw new Error(`${impl.id} round ${round}: ${result.non2xx} checks failed under load`);
    return {
      startupMs: server.startupMs,
      restingRssMiB,
      rps: result.rps,
      p50Ms: result.p50Ms,
      p99Ms: result.p99Ms,
      requests: result.requests,
      cpuSecondsPer10k: result.requests > 0 ? (cpu / result.requests) * 10_000 : undefined,
      peakRssMiB: peakRssMiB(server.pid),
    };
  } finally {
    await server.stop();
  }
}

/** The reference: a sidecar with only the HTTP check door, no gRPC module loaded; startup to /readyz 200. */
async function measureReference(fixture, round) {
  const config = await writeConfig(fixture, 'http');
  const probe = async () => {
    const res = await fetch(`${config.adminUrl}/readyz`, { signal: AbortSignal.timeout(1_000) });
    await res.arrayBuffer();
    if (res.status !== 200) throw new Error(`readyz ${res.status}`);
  };
  const server = await startServer({ bin: join(ROOT, 'bin/authz-sidecar.js'), config, cpu: SERVER_CPU, fixture, log: join(fixture.work, `reference-round${round}.log`), probe });
  try {
    await sleep(REST_MS);
    return { startupMs: server.startupMs, restingRssMiB: rssMiB(server.pid) };
  } finally {
    await server.stop();
  }
}

/** Both must answer what Envoy expects, and the same thing, before anything is measured. */
async function preflight(fixture) {
  const answers = {};
  for (const impl of IMPLEMENTATIONS) {
    const config = await writeConfig(fixture);
    const server = await startServer({ bin: impl.bin, config, cpu: SERVER_CPU, fixture, log: join(fixture.work, `${impl.id}-preflight.log`) });
    try {
      answers[impl.id] = await verifyAnswers(server.address, fixture);
      const health = await healthCheck(server.address);
      if (health !== 'SERVING') throw new Error(`${impl.id}: grpc.health.v1.Health/Check answered ${health}`);
    } finally {
      await server.stop();
    }
  }
  if (!isDeepStrictEqual(answers['grpc-js'], answers.connect)) {
    throw new Error(`the prototype answers differently from the grpc-js door:\n${JSON.stringify(answers, null, 2)}`);
  }
  log('preflight: both answer OK (0) with ok_response, UNAUTHENTICATED (16) with a 401 denied_response, the same CheckResponses, and SERVING');
}

const fmt = (v, digits = 0) => (v === undefined ? 'n/a' : v.toFixed(digits));

/** Ratios connect / grpc-js, paired by round: median and range; "all rounds" tells whether every round agrees. */
function pairedRatio(rounds, key) {
  const ratios = rounds.map((r) => r.connect[key] / r['grpc-js'][key]).filter((v) => Number.isFinite(v));
  if (ratios.length === 0) return undefined;
  const agree = ratios.every((v) => v < 1) ? 'all < 1' : ratios.every((v) => v > 1) ? 'all > 1' : 'mixed';
  return { median: median(ratios), min: Math.min(...ratios), max: Math.max(...ratios), agree };
}

function renderMarkdown(result) {
  const { rounds } = result;
  const metrics = [
    ['rps', 'checks/s', 0, 'higher is better'],
    ['cpuSecondsPer10k', 'CPU s per 10k checks', 3, 'lower is better'],
    ['peakRssMiB', 'peak RSS under load (MiB)', 1, 'lower is better'],
    ['restingRssMiB', 'resting RSS after start (MiB)', 1, 'lower is better'],
    ['startupMs', 'startup, spawn to first OK check (ms)', 0, 'lower is better'],
    ['p50Ms', 'latency p50 (ms)', 2, 'lower is better'],
    ['p99Ms', 'latency p99 (ms)', 2, 'lower is better'],
  ];
  const lines = [
    '# ext_authz gRPC door: @grpc/grpc-js vs @connectrpc/connect-node',
    '',
    `Run ${result.date} with \`${result.command}\`: ${result.rounds.length} rounds, ${result.seconds} s of load per implementation and round after a ${WARMUP_SECONDS} s warm-up, each implementation a new process every round (which goes first alternates), the server pinned to core ${SERVER_CPU} and h2load (4 connections x 32 streams, one framed CheckRequest with an RS256 token, ${POLICY_LINES}-line policy) to core ${LOAD_CPU}.`,
    '',
    `Machine: ${result.machine.cpu}, ${result.machine.cores} cores, Linux ${result.machine.kernel}. Node ${result.versions.node}; authz-sidecar ${result.versions.authzSidecar}; ${Object.entries(result.versions.packages).map(([k, v]) => `${k} ${v}`).join(', ')}; h2load ${result.versions.h2load}.`,
    '',
    `Both answered a client built from Envoy's official protos alike before any load: OK (0) with ok_response for the token, UNAUTHENTICATED (16) with a 401 denied_response without it, and SERVING on grpc.health.v1.Health. The prototype is the real CLI bundle with the gRPC door swapped (bench/grpc-compare/build.mjs): same config loader, engine, admin listener, decision observer and metrics.`,
    '',
    '## Medians per implementation',
    '',
    `| metric | grpc-js | connect | connect / grpc-js, paired by round: median (range) | rounds |`,
    '| --- | ---: | ---: | --- | --- |',
  ];
  for (const [key, label, digits, better] of metrics) {
    const a = median(rounds.map((r) => r['grpc-js'][key]));
    const b = median(rounds.map((r) => r.connect[key]));
    const ratio = pairedRatio(rounds, key);
    const ratioText = ratio === undefined ? 'n/a' : `${ratio.median.toFixed(3)} (${ratio.min.toFixed(3)}-${ratio.max.toFixed(3)})`;
    lines.push(`| ${label} (${better}) | ${fmt(a, digits)} | ${fmt(b, digits)} | ${ratioText} | ${ratio?.agree ?? 'n/a'} |`);
  }
  const ref = result.reference;
  lines.push(
    '',
    `Reference, the same sidecar with only the HTTP check door (no gRPC module loaded), started each round: startup to /readyz 200 ${fmt(median(ref.map((r) => r.startupMs)))} ms, resting RSS ${fmt(median(ref.map((r) => r.restingRssMiB)), 1)} MiB (medians). What each gRPC door adds at rest: grpc-js ${fmt(median(rounds.map((r) => r['grpc-js'].restingRssMiB)) - median(ref.map((r) => r.restingRssMiB)), 1)} MiB, connect ${fmt(median(rounds.map((r) => r.connect.restingRssMiB)) - median(ref.map((r) => r.restingRssMiB)), 1)} MiB.`,
    '',
    '## Every round',
    '',
    '| round | first | grpc-js checks/s | connect checks/s | grpc-js CPU s/10k | connect CPU s/10k | grpc-js peak MiB | connect peak MiB | grpc-js rest MiB | connect rest MiB | grpc-js start ms | connect start ms |',
    '| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |',
  );
  for (const [i, r] of rounds.entries()) {
    const g = r['grpc-js'];
    const c = r.connect;
    lines.push(
      `| ${i + 1} | ${r.first} | ${fmt(g.rps)} | ${fmt(c.rps)} | ${fmt(g.cpuSecondsPer10k, 3)} | ${fmt(c.cpuSecondsPer10k, 3)} | ${fmt(g.peakRssMiB, 1)} | ${fmt(c.peakRssMiB, 1)} | ${fmt(g.restingRssMiB, 1)} | ${fmt(c.restingRssMiB, 1)} | ${fmt(g.startupMs)} | ${fmt(c.startupMs)} |`,
    );
  }
  lines.push(
    '',
    'Reading: a paired ratio below 1 favours connect for CPU, memory, startup and latency, above 1 for checks/s. "all < 1" / "all > 1" means every round agrees; "mixed" means the rounds disagree and the difference is within the noise of this machine.',
    '',
  );
  return lines.join('\n');
}

async function main() {
  const machine = { cpu: cpus()[0]?.model ?? 'unknown', cores: cpus().length, kernel: release() };
  if (machine.cores < 2) throw new Error('the server and h2load are pinned to different cores: 2 or more needed');
  const prototype = await buildPrototype();
  log(`prototype built in ${prototype.dir} (descriptors ${prototype.descriptorBytes} bytes, door chunk ${prototype.doorChunkBytes} bytes)`);
  const bins = { 'grpc-js': join(ROOT, 'bin/authz-sidecar.js'), connect: prototype.bin };
  for (const impl of IMPLEMENTATIONS) impl.bin = bins[impl.id];
  const work = mkdtempSync(join(tmpdir(), 'grpc-compare-run-'));
  try {
    const fixture = makeFixture(work, POLICY_LINES);
    await waitForOtherBenchmarks();
    await preflight(fixture);
    const rounds = [];
    const reference = [];
    for (let round = 1; round <= ROUNDS; round++) {
      await waitForOtherBenchmarks();
      const order = round % 2 === 1 ? IMPLEMENTATIONS : [...IMPLEMENTATIONS].reverse();
      const results = { first: order[0].id };
      for (const impl of order) {
        results[impl.id] = await measureOnce(impl, fixture, round);
        const r = results[impl.id];
        log(`round ${round}/${ROUNDS} ${impl.id}: ${Math.round(r.rps)} checks/s, ${r.cpuSecondsPer10k?.toFixed(3)} CPU s/10k, p50 ${r.p50Ms} ms, peak ${r.peakRssMiB.toFixed(1)} MiB, rest ${r.restingRssMiB?.toFixed(1)} MiB, first OK check after ${Math.round(r.startupMs)} ms`);
      }
      reference.push(await measureReference(fixture, round));
      rounds.push(results);
    }
    const { stdout: h2loadVersion } = await exec('h2load', ['--version']).catch(() => ({ stdout: '' }));
    const result = {
      date: new Date().toISOString(),
      command: `${['BENCH_ROUNDS', 'BENCH_SECONDS'].filter((k) => process.env[k]).map((k) => `${k}=${process.env[k]} `).join('')}npm run bench:grpc`,
      seconds: SECONDS,
      machine,
      versions: {
        node: process.version,
        authzSidecar: describeCheckout(ROOT),
        h2load: /nghttp2\/([\d.]+)/.exec(h2loadVersion)?.[1] ?? 'unknown',
        packages: Object.fromEntries(
          ['@grpc/grpc-js', '@grpc/proto-loader', 'protobufjs', '@connectrpc/connect', '@connectrpc/connect-node', '@bufbuild/protobuf', '@bufbuild/buf'].map((p) => [p, pkgVersion(p)]),
        ),
      },
      rounds,
      reference,
    };
    const markdown = renderMarkdown(result);
    mkdirSync(join(ROOT, 'bench/results'), { recursive: true });
    writeFileSync(join(ROOT, 'bench/results/grpc-compare.md'), markdown);
    log('wrote bench/results/grpc-compare.md');
    process.stdout.write(markdown);
    rmSync(work, { recursive: true, force: true });
  } catch (err) {
    log(`the servers' logs are kept in ${work}`);
    throw err;
  } finally {
    prototype.cleanup();
  }
}

main().then(
  () => process.exit(0),
  (err) => {
    log(err instanceof Error ? (err.stack ?? err.message) : err);
    process.exit(1);
  },
);
