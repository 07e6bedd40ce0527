/**
 * The side-by-side benchmark (`npm run bench`): every row in one run, on loopback, the server under test
 * pinned to core 0 and the load generator (and the shared upstream) to core 1. Writes
 * bench/results/results.json and results.md with the machine, the versions, each row and the ratios the
 * targets are stated in. Targets are ratios measured in the same run, never absolute times.
 *
 * Environment: BENCH_SECONDS (default 8) per row and round, BENCH_ROUNDS (default 3) rounds of the compared
 * rows, BENCH_ROWS (comma-separated row ids) to run a subset.
 */
import { execFile, spawn } from 'node:child_process';
import { createHash, createPrivateKey, generateKeyPairSync, sign } from 'node:crypto';
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, writeFileSync, createWriteStream } from 'node:fs';
import { cpus, release, tmpdir, totalmem } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { startApache } from './lib/apache.mjs';
import { checkOnce, checkRequestFrame } from './lib/grpc-body.mjs';
import { h2loadGrpc, wrk } from './lib/load.mjs';
import { startNginxProxy, startUpstream, stopChild } from './lib/nginx.mjs';
import { generatePolicy, allowedPath } from './lib/policy-gen.mjs';
import { cpuSeconds, peakRssMiB, stopTree } from './lib/proc.mjs';
import { renderMarkdown, targets } from './lib/report.mjs';
import { selfSignedCert, startJwksHttpsServer } from './lib/tls.mjs';
import { freePort, waitForHttp } from './lib/util.mjs';

const exec = promisify(execFile);
const ROOT = fileURLToPath(new URL('..', import.meta.url));
const SERVER_CPU = 0;
const LOAD_CPU = 1;
const SECONDS = Number(process.env.BENCH_SECONDS ?? 8);
/** Rounds of the compared rows (1-5t), interleaved; each reports its median round. */
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 3);
const MODERATE = 'moderate load (8 connections, 4 ms think time)';
/** Unmeasured load before each row: JIT warm-up, connection pools filled. */
const WARMUP_SECONDS = 2;
const CONNECTIONS = 64;
const ONLY = process.env.BENCH_ROWS?.split(',');
const ISSUER = 'https://issuer.bench.local';
const AUDIENCE = 'bench-api';
/** More distinct tokens than the JWT and decision caches hold (10,000 each): cycling through them misses. */
const COLD_TOKENS = 25_000;

const work = mkdtempSync(join(tmpdir(), 'authz-bench-'));
// Apache's worker runs as www-data and must reach its folder under this one.
chmodSync(work, 0o755);
const log = (...args) => console.error(`[bench ${new Date().toISOString().slice(11, 19)}]`, ...args);

// Keys and tokens: one RS256 key, published as a JWKS (over https for Apache, as a file for the sidecar).
const { privateKey, publicKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const jwks = { keys: [{ ...publicKey.export({ format: 'jwk' }), kid: 'bench-1', alg: 'RS256', use: 'sig' }] };
writeFileSync(join(work, 'jwks.json'), JSON.stringify(jwks));
const signingKey = createPrivateKey(privateKey.export({ format: 'pem', type: 'pkcs8' }));
const b64 = (value) => Buffer.from(typeof value === 'string' ? value : JSON.stringify(value)).toString('base64url');
const header = b64({ alg: 'RS256', typ: 'JWT', kid: 'bench-1' });
function token(sub) {
  const now = Math.floor(Date.now() / 1000);
  const body = b64({ iss: ISSUER, aud: AUDIENCE, sub, roles: ['team0'], iat: now, exp: now + 4 * 3600 });
  return `${header}.${body}.${sign('sha256', Buffer.from(`${header}.${body}`), signingKey).toString('base64url')}`;
}
const TOKEN = token('bench-user');
const POLICY_LINES = 1_000;
const PATH = allowedPath(POLICY_LINES);
writeFileSync(join(work, 'policy.csv'), generatePolicy(POLICY_LINES));

const rows = [];
const extra = {};
const children = new Set();
process.on('exit', () => {
  for (const c of children) c.kill('SIGKILL');
});

function pinned(command, args, options = {}) {
  const out = createWriteStream(join(work, `${args.at(-1)?.toString().replace(/\W+/g, '_').slice(-40) ?? 'proc'}.log`));
  const child = spawn('taskset', ['-c', String(SERVER_CPU), command, ...args], { stdio: ['ignore', 'pipe', 'pipe'], ...options });
  child.stdout.pipe(out);
  child.stderr.pipe(out);
  children.add(child);
  child.once('exit', () => children.delete(child));
  return child;
}

/** Runs the load (after an unmeasured warm-up) and reads the server's CPU around it. */
async function sample(id, pid, load) {
  await load(WARMUP_SECONDS);
  const cpuBefore = cpuSeconds(pid);
  const result = await load(SECONDS);
  const cpu = cpuSeconds(pid) - cpuBefore;
  const failed = result.non2xx + result.socketErrors;
  if (failed > 0) throw new Error(`${id}: ${failed} requests did not succeed: the row does not measure what it claims`);
  return { ...result, cpuSecondsPer10k: result.requests > 0 ? (cpu / result.requests) * 10_000 : undefined };
}

/** A row from one or more samples: the sample with the median req/s, and the peak memory so far. */
function record(id, name, pid, samples, notes = '') {
  const sorted = [...samples].sort((a, b) => a.rps - b.rps);
  const median = sorted[Math.floor((sorted.length - 1) / 2)];
  const row = {
    id,
    name,
    rps: Math.round(median.rps),
    p50Ms: median.p50Ms,
    p99Ms: median.p99Ms,
    cpuSecondsPer10k: median.cpuSecondsPer10k,
    peakRssMiB: Math.round(peakRssMiB(pid) * 10) / 10,
    requests: median.requests,
    failed: 0,
    rounds: samples.length,
    rpsRange: samples.length > 1 ? [Math.round(sorted[0].rps), Math.round(sorted.at(-1).rps)] : undefined,
    notes,
  };
  const range = row.rpsRange ? ` (${row.rpsRange.join('-')} over ${samples.length} rounds)` : '';
  log(`${id} ${name}: ${row.rps} req/s${range}, p50 ${row.p50Ms} ms, p99 ${row.p99Ms} ms, ${row.cpuSecondsPer10k?.toFixed(2)} CPU s/10k, ${row.peakRssMiB} MiB`);
  rows.push(row);
  return row;
}

async function measure(id, name, pid, load, notes = '') {
  return record(id, name, pid, [await sample(id, pid, load)], notes);
}

const want = (id) => ONLY === undefined || ONLY.includes(id);
const http = (port, path = PATH) => `http://127.0.0.1:${port}${path}`;
const bearer = { Authorization: `Bearer ${TOKEN}` };

/** Asserts before a row that the server really checks: the token passes, no token is refused. */
async function expectAuth(url, deniedStatus = 401) {
  const ok = await fetch(url, { headers: bearer });
  const denied = await fetch(url);
  await ok.arrayBuffer();
  await denied.arrayBuffer();
  if (ok.status !== 200 || denied.status !== deniedStatus) {
    throw new Error(`${url}: expected 200 with the token and ${deniedStatus} without, got ${ok.status} and ${denied.status}`);
  }
}

/** A Lua script for wrk: think time per connection (a fixed, moderate load). */
function thinkTimeScript(ms) {
  const file = join(work, `think-${ms}.lua`);
  writeFileSync(file, `function delay()\n  return ${ms}\nend\n`);
  return file;
}

/** A Lua script for wrk cycling through distinct tokens, one per request. */
function coldTokensScript(path) {
  const tokensFile = join(work, 'tokens.txt');
  const started = Date.now();
  const lines = [];
  for (let i = 0; i < COLD_TOKENS; i++) lines.push(token(`cold-user-${i}`));
  writeFileSync(tokensFile, `${lines.join('\n')}\n`);
  log(`signed ${COLD_TOKENS} tokens in ${Date.now() - started} ms`);
  const file = join(work, 'cold.lua');
  writeFileSync(
    file,
    `local tokens = {}
for line in io.lines("${tokensFile}") do tokens[#tokens + 1] = line end
local i = 0
function request()
  i = i % #tokens + 1
  return wrk.format("GET", "${path}", { ["Authorization"] = "Bearer " .. tokens[i] })
end
`,
  );
  return file;
}

/** The NODE_OPTIONS the Kubernetes example runs the sidecar with (row 5t measures them). */
function deployedNodeOptions() {
  const text = readFileSync(join(ROOT, 'deploy/kubernetes/deployment.yaml'), 'utf8');
  const match = /- name: NODE_OPTIONS\s*\n\s*value: (.+)/.exec(text);
  if (!match) throw new Error('deploy/kubernetes/deployment.yaml sets no NODE_OPTIONS');
  return match[1].trim();
}

async function startSidecar({ doors = {}, policy = join(work, 'policy.csv'), upstreamPort, nodeOptions }) {
  const port = await freePort();
  const admin = await freePort();
  const config = {
    listen: `127.0.0.1:${port}`,
    ...(upstreamPort === undefined ? {} : { upstream: { url: `http://127.0.0.1:${upstreamPort}` } }),
    admin: { listen: `127.0.0.1:${admin}` },
    extAuthz: doors,
    authn: { jwt: [{ issuer: ISSUER, audiences: [AUDIENCE], jwksFile: join(work, 'jwks.json'), algorithms: ['RS256'] }] },
    authz: { model: join(ROOT, 'policies/model.conf'), policy, watch: false },
    shutdown: { drainSeconds: 2 },
  };
  const file = join(work, `sidecar-${port}.json`);
  writeFileSync(file, JSON.stringify(config));
  const started = process.hrtime.bigint();
  const env = nodeOptions === undefined ? process.env : { ...process.env, NODE_OPTIONS: nodeOptions };
  const child = pinned('node', [join(ROOT, 'bin/authz-sidecar.js'), 'serve', '--config', file], { env });
  for (;;) {
    if ((await waitForHttp(`http://127.0.0.1:${admin}/readyz`, child)) === 200) break;
    await new Promise((r) => setTimeout(r, 5));
  }
  const readyMs = Number(process.hrtime.bigint() - started) / 1e6;
  return { child, port, pid: child.pid, readyMs, stop: () => stopChild(child) };
}

async function versions() {
  const v = async (cmd, args, re = /([\d.]+)/) => {
    try {
      const { stdout, stderr } = await exec(cmd, args);
      return re.exec(`${stdout}${stderr}`)?.[1] ?? 'unknown';
    } catch (err) {
      return re.exec(`${err.stdout ?? ''}${err.stderr ?? ''}`)?.[1] ?? 'unknown';
    }
  };
  const pkg = (name) => JSON.parse(readFileSync(join(ROOT, 'node_modules', name, 'package.json'), 'utf8')).version;
  return {
    node: process.version,
    nginx: await v('nginx', ['-v'], /nginx\/([\d.]+)/),
    apache: await v('apache2', ['-v'], /Apache\/([\d.]+)/),
    modAuthOpenidc: await v('dpkg-query', ['-W', '-f=${Version}', 'libapache2-mod-auth-openidc'], /(.+)/),
    wrk: await v('wrk', ['-v'], /wrk (\S+)/),
    h2load: await v('h2load', ['--version'], /nghttp2\/([\d.]+)/),
    fastify: pkg('fastify'),
    fastifyHttpProxy: pkg('@fastify/http-proxy'),
    casbin: pkg('casbin'),
    authzSidecar: `${await v('git', ['-C', ROOT, 'rev-parse', '--short', 'HEAD'], /(\w+)/)}${(await v('git', ['-C', ROOT, 'status', '--porcelain', '--untracked-files=no'], /([\s\S]+)/)) === 'unknown' ? '' : ' (with uncommitted changes)'}`,
  };
}

async function main() {
  const machine = { cpu: cpus()[0]?.model ?? 'unknown', cores: cpus().length, memoryGiB: Math.round(totalmem() / 2 ** 30), kernel: release() };
  if (machine.cores < 2) throw new Error('the benchmark pins the server and the load generator to different cores: 2 or more needed');
  log(`work dir ${work}; ${SECONDS} s per row`);

  // The shared upstream, on the load generator's core so the server under test has its core alone.
  const upstreamPort = await freePort();
  const upstream = await startUpstream({ dir: join(work, 'upstream'), port: upstreamPort, cpu: LOAD_CPU });
  const load = (url, options = {}) => (seconds) => wrk({ url, cpu: LOAD_CPU, connections: CONNECTIONS, seconds, ...options });
  const moderate = thinkTimeScript(4);
  const moderateLoad = (url, headers = {}) => (seconds) => wrk({ url, cpu: LOAD_CPU, connections: 8, seconds, headers, script: moderate });

  // The rows the targets compare run interleaved, ROUNDS times, every server up at once (idle ones cost
  // nothing): drift of a shared machine hits every row alike, and each row reports its median round.
  const compared = [];
  const stops = [];
  if (want('1') || want('1m')) {
    const port = await freePort();
    const server = await startUpstream({ dir: join(work, 'upstream-alone'), port, cpu: SERVER_CPU });
    stops.push(() => stopTree(server.pid, server.stop));
    compared.push({ id: '1', name: 'upstream alone (nginx return 200)', pid: server.pid, load: load(http(port)) });
    compared.push({ id: '1m', name: `upstream alone, ${MODERATE}`, pid: server.pid, load: moderateLoad(http(port)) });
  }
  if (want('2')) {
    const port = await freePort();
    const server = await startNginxProxy({ dir: join(work, 'nginx-proxy'), port, upstreamPort, cpu: SERVER_CPU });
    stops.push(() => stopTree(server.pid, server.stop));
    compared.push({ id: '2', name: 'nginx reverse proxy', pid: server.pid, load: load(http(port)) });
  }
  if (want('3') || want('3m')) {
    const port = await freePort();
    const child = pinned('node', [join(ROOT, 'bench/servers/fastify-proxy.mjs'), String(port), `http://127.0.0.1:${upstreamPort}`]);
    await waitForHttp(http(port), child);
    stops.push(() => stopTree(child.pid, () => stopChild(child)));
    compared.push({ id: '3', name: 'bare @fastify/http-proxy (no auth)', pid: child.pid, load: load(http(port)) });
    compared.push({ id: '3m', name: `bare @fastify/http-proxy, ${MODERATE}`, pid: child.pid, load: moderateLoad(http(port)) });
  }
  if (want('4')) {
    const cert = await selfSignedCert(join(work, 'tls'));
    const jwksServer = await startJwksHttpsServer({ jwks, cert: cert.cert, key: cert.key, port: 0 });
    const port = await freePort();
    const apache = await startApache({
      dir: join(work, 'apache'),
      port,
      jwksUrl: jwksServer.url,
      issuer: ISSUER,
      audience: AUDIENCE,
      upstreamUrl: `http://127.0.0.1:${upstreamPort}`,
      cpu: SERVER_CPU,
      caBundlePath: cert.certPath,
    });
    stops.push(async () => {
      await stopTree(apache.pid, apache.stop);
      await jwksServer.close();
    });
    await expectAuth(http(port));
    compared.push({ id: '4', name: 'Apache mod_auth_openidc (RS256 JWT via JWKS, proxy)', pid: apache.pid, load: load(http(port), { headers: bearer }) });
  }
  if (want('5') || want('5m')) {
    const sidecar = await startSidecar({ upstreamPort });
    stops.push(() => stopTree(sidecar.pid, sidecar.stop));
    await expectAuth(http(sidecar.port));
    compared.push({ id: '5', name: `authz-sidecar proxy (${POLICY_LINES}-line policy)`, pid: sidecar.pid, load: load(http(sidecar.port), { headers: bearer }) });
    compared.push({ id: '5m', name: `authz-sidecar proxy, ${MODERATE}`, pid: sidecar.pid, load: moderateLoad(http(sidecar.port), bearer) });
  }
  if (want('5t')) {
    const nodeOptions = deployedNodeOptions();
    const sidecar = await startSidecar({ upstreamPort, nodeOptions });
    stops.push(() => stopTree(sidecar.pid, sidecar.stop));
    await expectAuth(http(sidecar.port));
    compared.push({
      id: '5t',
      name: `authz-sidecar proxy with NODE_OPTIONS="${nodeOptions}" (as deploy/kubernetes runs it)`,
      pid: sidecar.pid,
      load: load(http(sidecar.port), { headers: bearer }),
    });
  }
  const selected = compared.filter((c) => want(c.id));
  const samples = new Map(selected.map((c) => [c.id, []]));
  for (let round = 1; round <= ROUNDS; round++) {
    for (const c of selected) {
      const result = await sample(c.id, c.pid, c.load);
      samples.get(c.id).push(result);
      log(`round ${round}/${ROUNDS} ${c.id}: ${Math.round(result.rps)} req/s, p50 ${result.p50Ms} ms`);
    }
  }
  for (const c of selected) record(c.id, c.name, c.pid, samples.get(c.id));
  for (const stop of stops) await stop();
  if (want('6')) {
    const script = coldTokensScript(PATH);
    const sidecar = await startSidecar({ upstreamPort });
    await measure('6', `authz-sidecar proxy, a distinct token per request (${COLD_TOKENS} tokens cycled: JWT and decision caches cold)`, sidecar.pid, load(http(sidecar.port), { script }));
    await stopTree(sidecar.pid, sidecar.stop);
  }
  if (want('7g')) {
    const grpcPort = await freePort();
    const sidecar = await startSidecar({ doors: { grpc: { listen: `127.0.0.1:${grpcPort}` } } });
    const frame = checkRequestFrame({ method: 'GET', path: PATH, host: 'app.bench.local', headers: { authorization: `Bearer ${TOKEN}` } });
    const denyFrame = checkRequestFrame({ method: 'GET', path: PATH, host: 'app.bench.local', headers: {} });
    const [allowed, denied] = [await checkOnce(`http://127.0.0.1:${grpcPort}`, frame), await checkOnce(`http://127.0.0.1:${grpcPort}`, denyFrame)];
    if (allowed !== 0 || denied !== 16) throw new Error(`gRPC check: expected OK (0) and UNAUTHENTICATED (16), got ${allowed} and ${denied}`);
    await measure('7g', 'ext_authz gRPC door (checks)', sidecar.pid, (seconds) =>
      h2loadGrpc({ url: `http://127.0.0.1:${grpcPort}/envoy.service.auth.v3.Authorization/Check`, cpu: LOAD_CPU, body: frame, seconds }),
    );
    await stopTree(sidecar.pid, sidecar.stop);
  }
  if (want('7h')) {
    const checkPort = await freePort();
    const sidecar = await startSidecar({ doors: { http: { listen: `127.0.0.1:${checkPort}` } } });
    await expectAuth(http(checkPort));
    await measure('7h', 'ext_authz HTTP door (checks)', sidecar.pid, load(http(checkPort), { headers: bearer }));
    await stopTree(sidecar.pid, sidecar.stop);
  }
  await stopTree(upstream.pid, upstream.stop);

  if (want('8')) {
    const { stdout } = await exec('taskset', ['-c', String(SERVER_CPU), 'node', join(ROOT, 'bench/policy-scale.mjs')], { maxBuffer: 16 * 1024 * 1024 });
    extra.policyScale = JSON.parse(stdout);
    for (const scale of extra.policyScale) {
      const policy = join(work, `policy-${scale.lines}.csv`);
      writeFileSync(policy, generatePolicy(scale.lines));
      const ready = [];
      for (let i = 0; i < 3; i++) {
        const sidecar = await startSidecar({ policy, upstreamPort: 9 });
        ready.push(sidecar.readyMs);
        scale.peakRssMiB = Math.round(peakRssMiB(sidecar.pid) * 10) / 10;
        await stopTree(sidecar.pid, sidecar.stop);
      }
      scale.readyMs = Math.round(ready.sort((a, b) => a - b)[1]);
      log(`policy ${scale.lines} lines: ready in ${scale.readyMs} ms, decision p50 ${scale.indexed.p50Ms} ms p99 ${scale.indexed.p99Ms} ms`);
    }
  }

  const result = {
    date: new Date().toISOString(),
    command: 'npm run bench',
    secondsPerRow: SECONDS,
    rounds: ROUNDS,
    connections: CONNECTIONS,
    machine,
    versions: await versions(),
    rows,
    ...extra,
  };
  result.targets = targets(result);
  // A run of some rows only (BENCH_ROWS) never replaces the committed results of a whole run.
  const dir = join(ROOT, 'bench/results');
  const name = ONLY === undefined ? 'results' : 'partial';
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, `${name}.json`), `${JSON.stringify(result, null, 2)}\n`);
  writeFileSync(join(dir, `${name}.md`), renderMarkdown(result));
  log(`wrote bench/results/${name}.json and ${name}.md (policy sha ${createHash('sha256').update(readFileSync(join(work, 'policy.csv'))).digest('hex').slice(0, 12)})`);
  process.stdout.write(renderMarkdown(result));
}

main().then(
  () => process.exit(0),
  (err) => {
    log(err instanceof Error ? (err.stack ?? err.message) : err);
    process.exit(1);
  },
);
