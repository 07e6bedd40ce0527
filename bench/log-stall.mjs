/**
 * What does a slow reader of stdout do to the sidecar? `serve` logs every decision (`decisions: all`) to a
 * stdout pipe read at LOG_STALL_READ_KIB_S (default 256 KiB/s, a log collector that fell behind) while wrk
 * drives the HTTP check door on another core and this script probes /healthz every 20 ms. Reports /healthz
 * latency (p50, p99, max), the check door's req/s, what reached the reader, the lines dropped, the peak RSS
 * and how long the exit took after SIGTERM (killed after EXIT_WAIT_MS), for this checkout's build ("after":
 * src/admin/log-output.ts, a 4 MiB buffer and a bounded flush at exit) and a baseline build ("before": pino's
 * default destination, asynchronous with no bound), in interleaved rounds of the same run. Writes
 * bench/results/log-stall.md.
 *
 *   git worktree add --detach /tmp/log-baseline <commit before>; ln -s $PWD/node_modules /tmp/log-baseline/
 *   (cd /tmp/log-baseline && npm run build); npm run build
 *   LOG_STALL_BASELINE=/tmp/log-baseline node bench/log-stall.mjs
 *
 * (LOG_STALL_AFTER=/tmp/log-after, a worktree of the commit after built the same way, measures that build
 * instead of this checkout's, which may hold uncommitted work.) Environment: LOG_STALL_BASELINE (default
 * /tmp/log-baseline), LOG_STALL_AFTER (default this checkout), LOG_STALL_ROUNDS (default 3),
 * LOG_STALL_SECONDS of load per round (default 8), LOG_STALL_READ_KIB_S (default 256), LOG_STALL_PATH_BYTES
 * (default 2048). About 80 s with the defaults.
 */
import { spawn } from 'node:child_process';
import { generateKeyPairSync } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { Agent, request } from 'node:http';
import { cpus, loadavg, release, tmpdir, totalmem } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { percentile, wrk } from './lib/load.mjs';
import { describeCheckout, freePort, waitForHttp } from './lib/util.mjs';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
/** The build measured as "after": this checkout unless LOG_STALL_AFTER names another (a clean worktree of a commit). */
const AFTER = resolve(process.env.LOG_STALL_AFTER ?? ROOT);
const BASELINE = resolve(process.env.LOG_STALL_BASELINE ?? '/tmp/log-baseline');
const ROUNDS = Number(process.env.LOG_STALL_ROUNDS ?? 3);
const SECONDS = Number(process.env.LOG_STALL_SECONDS ?? 8);
const READ_BYTES_PER_S = Number(process.env.LOG_STALL_READ_KIB_S ?? 256) * 1024;
/**
 * Checks ask for /public/ + this many bytes, which the decision line carries: 2 KiB makes each line about
 * 2.4 KiB, five times a usual one, so that a few seconds of load stand for a longer stall of a reader.
 */
const PATH_BYTES = Number(process.env.LOG_STALL_PATH_BYTES ?? 2048);
const PATH = `/public/${'p'.repeat(PATH_BYTES)}`;
const PROBE_EVERY_MS = 20;
/** A probe that takes longer counts as this long (and the round goes on). */
const PROBE_TIMEOUT_MS = 10_000;
const CONNECTIONS = 16;
/** After SIGTERM, a process still running this much later is killed (and reported so). */
const EXIT_WAIT_MS = 5_000;
const SERVER_CPU = 0;
const LOAD_CPU = 1;
const OUT = join(ROOT, 'bench/results/log-stall.md');

for (const root of [AFTER, BASELINE]) {
  if (!existsSync(join(root, 'dist/bundle/authz-sidecar.mjs'))) throw new Error(`${root} is not built: npm run build there first`);
}
const log = (...args) => console.error(`[log-stall ${new Date().toISOString().slice(11, 19)}]`, ...args);

const work = mkdtempSync(join(tmpdir(), 'authz-log-stall-'));
const { publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
writeFileSync(join(work, 'jwks.json'), JSON.stringify({ keys: [{ ...publicKey.export({ format: 'jwk' }), kid: 'stall-1', alg: 'ES256', use: 'sig' }] }));

async function writeConfig(name, checkPort, adminPort) {
  const file = join(work, `${name}.yaml`);
  writeFileSync(
    file,
    [
      `extAuthz: { http: { listen: "127.0.0.1:${checkPort}" } }`,
      `admin: { listen: "127.0.0.1:${adminPort}" }`,
      `authn: { jwt: [{ issuer: "https://issuer.stall.test", audiences: ["stall"], jwksFile: "${join(work, 'jwks.json')}" }] }`,
      `authz: { model: "${join(ROOT, 'policies/model.conf')}", policy: "${join(ROOT, 'policies/policy.csv')}" }`,
      'logging: { level: info, decisions: all }',
      '',
    ].join('\n'),
  );
  return file;
}

/** Reads `stream` at READ_BYTES_PER_S: after each chunk, pauses for as long as that chunk "took". */
function slowReader(stream) {
  const seen = { bytes: 0, lines: 0 };
  stream.on('data', (chunk) => {
    seen.bytes += chunk.length;
    for (const b of chunk) if (b === 10) seen.lines++;
    stream.pause();
    setTimeout(() => stream.resume(), (chunk.length / READ_BYTES_PER_S) * 1000);
  });
  return seen;
}

const agent = new Agent({ keepAlive: true, maxSockets: 1 });
function probe(url) {
  return new Promise((done) => {
    const started = performance.now();
    const req = request(url, { agent, timeout: PROBE_TIMEOUT_MS }, (res) => {
      res.resume();
      res.on('end', () => done({ ms: performance.now() - started, ok: res.statusCode === 200 }));
    });
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', () => done({ ms: Math.max(performance.now() - started, PROBE_TIMEOUT_MS), ok: false }));
    req.end();
  });
}

async function metric(adminUrl, name) {
  const text = await (await fetch(`${adminUrl}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith(`${name} `));
  return line === undefined ? undefined : Number(line.slice(line.lastIndexOf(' ') + 1));
}

async function round(variant, root) {
  const [checkPort, adminPort] = [await freePort(), await freePort()];
  const config = await writeConfig(variant, checkPort, adminPort);
  const child = spawn('taskset', ['-c', String(SERVER_CPU), process.execPath, join(root, 'bin/authz-sidecar.js'), 'serve', '--config', config], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const exited = new Promise((r) => child.once('exit', (code, signal) => r(code ?? signal)));
  const seen = slowReader(child.stdout);
  const adminUrl = `http://127.0.0.1:${adminPort}`;
  await waitForHttp(`${adminUrl}/readyz`, child, 30_000);
  const linesBefore = seen.lines;
  const latencies = [];
  let failed = 0;
  let probing = true;
  const prober = (async () => {
    while (probing) {
      const { ms, ok } = await probe(`${adminUrl}/healthz`);
      latencies.push(ms);
      if (!ok) failed++;
      await new Promise((r) => setTimeout(r, PROBE_EVERY_MS));
    }
  })();
  const load = await wrk({ url: `http://127.0.0.1:${checkPort}${PATH}`, cpu: LOAD_CPU, connections: CONNECTIONS, seconds: SECONDS });
  probing = false;
  await prober;
  const dropped = await metric(adminUrl, 'authz_sidecar_log_lines_dropped_total');
  const linesRead = seen.lines - linesBefore;
  // taskset execs node: the child's pid is the sidecar's.
  const peakRssMiB = Number(/VmHWM:\s+(\d+)/.exec(readFileSync(`/proc/${child.pid}/status`, 'utf8'))?.[1]) / 1024;
  child.kill('SIGTERM');
  const stopped = Date.now();
  let timer;
  let code = await Promise.race([exited, new Promise((r) => (timer = setTimeout(() => r('late'), EXIT_WAIT_MS)))]);
  clearTimeout(timer);
  const exitMs = Date.now() - stopped;
  if (code === 'late') {
    child.kill('SIGKILL');
    code = `killed: still running ${EXIT_WAIT_MS / 1000} s after SIGTERM`;
    await exited;
  }
  const sorted = [...latencies].sort((a, b) => a - b);
  return {
    variant,
    probes: sorted.length,
    failed,
    p50: percentile(sorted, 50),
    p99: percentile(sorted, 99),
    max: sorted.at(-1),
    rps: load.rps,
    non2xx: load.non2xx + load.socketErrors,
    linesRead,
    dropped,
    peakRssMiB,
    exitMs,
    code,
    latencies,
  };
}

const results = [];
const started = Date.now();
const loadBefore = loadavg()[0];
try {
  for (let r = 0; r < ROUNDS; r++) {
    const order = r % 2 === 0 ? ['before', 'after'] : ['after', 'before'];
    for (const variant of order) {
      const result = await round(variant, variant === 'before' ? BASELINE : AFTER);
      results.push({ round: r + 1, ...result });
      log(`round ${r + 1} ${variant}: /healthz p50 ${result.p50.toFixed(2)} p99 ${result.p99.toFixed(2)} max ${result.max.toFixed(1)} ms (${result.probes} probes, ${result.failed} failed); ${Math.round(result.rps)} checks/s; ${result.linesRead} lines read, dropped ${result.dropped ?? 'n/a'}; peak RSS ${result.peakRssMiB.toFixed(1)} MiB; exit ${result.code} after ${result.exitMs} ms`);
    }
  }
} finally {
  agent.destroy();
  rmSync(work, { recursive: true, force: true });
}

const f = (n, digits = 2) => (n === undefined ? 'n/a' : n.toFixed(digits));
function pooled(variant) {
  const rows = results.filter((r) => r.variant === variant);
  const all = rows.flatMap((r) => r.latencies).sort((a, b) => a - b);
  const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
  return {
    p50: percentile(all, 50),
    p99: percentile(all, 99),
    max: all.at(-1),
    probes: all.length,
    failed: rows.reduce((a, r) => a + r.failed, 0),
    rps: median(rows.map((r) => r.rps)),
    linesPerS: median(rows.map((r) => r.linesRead / SECONDS)),
    dropped: rows.every((r) => r.dropped === undefined) ? undefined : median(rows.map((r) => r.dropped ?? 0)),
    exitMs: median(rows.map((r) => r.exitMs)),
    killed: rows.filter((r) => typeof r.code === 'string').length,
    rounds: rows.length,
    peakRssMiB: median(rows.map((r) => r.peakRssMiB)),
  };
}
const before = pooled('before');
const after = pooled('after');
const cpu = cpus()[0]?.model.split(' ').slice(0, 2).join(' ') ?? 'unknown';
const md = `# Logging to a slow stdout reader: before and after the bounded log buffer

Run ${new Date(started).toISOString()} with \`${AFTER === ROOT ? '' : `LOG_STALL_AFTER=${AFTER} `}LOG_STALL_BASELINE=${BASELINE} node bench/log-stall.mjs\`: ${ROUNDS} rounds, each
running both builds in turn (which goes first alternates), a new process each time. In each run \`serve\` (HTTP
check door, \`logging.decisions: all\`, pinned to core ${SERVER_CPU}) logs to a stdout pipe that this script reads
at ${READ_BYTES_PER_S / 1024} KiB/s (a log collector that fell behind), while wrk (core ${LOAD_CPU}, ${CONNECTIONS}
connections, ${SECONDS} s) sends anonymous checks of an allowed path of ${PATH_BYTES} bytes (decision lines of about
${PATH_BYTES + 400} bytes) and a probe asks /healthz every ${PROBE_EVERY_MS} ms
(timeout ${PROBE_TIMEOUT_MS / 1000} s).
Machine: ${cpu}, ${cpus().length} cores, ${Math.round(totalmem() / 2 ** 30)} GiB, Linux ${release()}; Node ${process.version}. The machine is shared: 1-minute load average
${loadBefore.toFixed(1)} at the start, ${loadavg()[0].toFixed(1)} at the end (2 means both cores busy with other work).
After: ${describeCheckout(AFTER)} (${AFTER}). Before: ${describeCheckout(BASELINE)} (${BASELINE}).

| build | /healthz p50 ms | p99 ms | max ms | probes (failed) | checks/s | log lines read /s | lines dropped | peak RSS MiB | exit after SIGTERM |
|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|
${[['before: pino default (async, unbounded)', before], ['after: 4 MiB buffer, bounded exit flush', after]]
  .map(([name, b]) => `| ${name} | ${f(b.p50)} | ${f(b.p99)} | ${f(b.max, 1)} | ${b.probes} (${b.failed}) | ${Math.round(b.rps)} | ${Math.round(b.linesPerS)} | ${b.dropped ?? 'n/a'} | ${f(b.peakRssMiB, 1)} | ${b.killed > 0 ? `killed in ${b.killed} of ${b.rounds} rounds (> ${EXIT_WAIT_MS / 1000} s)` : `${b.exitMs} ms`} |`)
  .join('\n')}

/healthz percentiles pool every probe of every round of a build; the other columns are the median round.

| round | build | /healthz p50 ms | p99 ms | max ms | checks/s | lines read | dropped | peak RSS MiB | exit |
|---:|---|---:|---:|---:|---:|---:|---:|---:|---|
${results.map((r) => `| ${r.round} | ${r.variant} | ${f(r.p50)} | ${f(r.p99)} | ${f(r.max, 1)} | ${Math.round(r.rps)} | ${r.linesRead} | ${r.dropped ?? 'n/a'} | ${f(r.peakRssMiB, 1)} | ${typeof r.code === 'string' ? r.code : `code ${r.code} after ${r.exitMs} ms`} |`).join('\n')}
`;
writeFileSync(OUT, md);
log(`wrote ${OUT} in ${Math.round((Date.now() - started) / 1000)} s`);
process.stdout.write(md);
