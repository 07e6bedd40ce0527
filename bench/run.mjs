/**
 * The side-by-side benchmark (`npm run bench`): every row in one run, on loopback, the server under test
 * pinned to core 0 and the load generator (and the shared upstream) to core 1. Writes
 * bench/results/results.json and results.md with the machine, the versions, each row and the ratios the
 * targets are stated in. Targets are ratios measured in the same run, never absolute times.
 *
 * Environment: BENCH_SECONDS (default 8) per row and round, BENCH_ROUNDS (default 3) rounds of the compared
 * rows, BENCH_ROWS (comma-separated row ids) to run a subset.
 *
 * Before / after: BENCH_BASELINE=/path/to/another/checkout (built: its bin/authz-sidecar.js) also runs that
 * build's sidecar for rows 5, 5t, 7g and 7h, with the same config and the same load, as rows 5b, 5tb, 7gb
 * and 7hb. Rows 7g and 7h then join the interleaved rounds, each row right next to its baseline row (which of
 * the two goes first alternates by round), and the report adds a before / after table. A baseline row runs
 * when its row does (BENCH_ROWS=5,7h runs 5, 5b, 7h and 7hb). BENCH_SIDECAR_ROOT=/path runs the "after" side
 * from another checkout than this one (default: this checkout), e.g. to try the mechanism on two builds.
 */
import { execFile, execFileSync, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, writeFileSync, createWriteStream } from 'node:fs';
import { cpus, release, tmpdir, totalmem } from 'node:os';
import { join, resolve } from 'node:path';
import { createServer as createHttpServer } from 'node:http';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { startApache } from './lib/apache.mjs';
import { AUDIENCE, benchIssuer, ISSUER } from './lib/keys.mjs';
import { checkOnce, checkRequestFrame } from './lib/grpc-body.mjs';
import { h2loadGrpc, wrk } from './lib/load.mjs';
import { startNginxProxy, startUpstream, stopChild } from './lib/nginx.mjs';
import { generatePolicy, allowedPath } from './lib/policy-gen.mjs';
import { cpuSeconds, peakRssMiB, stopTree } from './lib/proc.mjs';
import { beforeAfter, renderMarkdown, targets } from './lib/report.mjs';
import { selfSignedCert, startJwksHttpsServer } from './lib/tls.mjs';
import { describeCheckout, freePort, waitForHttp } from './lib/util.mjs';

const exec = promisify(execFile);
const ROOT = fileURLToPath(new URL('..', import.meta.url));
/** The checkout whose bin/authz-sidecar.js the sidecar rows run ("after"); the bench, model and results stay ROOT's. */
const SIDECAR_ROOT = resolve(process.env.BENCH_SIDECAR_ROOT || ROOT);
/** Another checkout ("before") whose sidecar runs next to SIDECAR_ROOT's in rows 5, 5t, 7g and 7h, if set. */
const BASELINE = process.env.BENCH_BASELINE ? resolve(process.env.BENCH_BASELINE) : undefined;
for (const root of [SIDECAR_ROOT, BASELINE]) {
  if (root !== undefined && !existsSync(join(root, 'bin/authz-sidecar.js'))) throw new Error(`${root}/bin/authz-sidecar.js is missing: build that checkout first (npm ci && npm run build)`);
}
const BASELINE_SHA = BASELINE === undefined ? undefined : describeCheckout(BASELINE).split(' ')[0];
/** Readiness deadline of a starting sidecar: a bench run never waits forever. */
const READY_TIMEOUT_MS = 30_000;
const SERVER_CPU = 0;
const LOAD_CPU = 1;
const SECONDS = Number(process.env.BENCH_SECONDS ?? 8);
/** Rounds of the compared rows (1-5t, and 7g-7h with BENCH_BASELINE), interleaved; each reports its median round. */
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 3);
const MODERATE = 'moderate load (8 connections, 4 ms think time)';
/** Unmeasured load before each row: JIT warm-up, connection pools filled. */
const WARMUP_SECONDS = 2;
const CONNECTIONS = 64;
const ONLY = process.env.BENCH_ROWS?.split(',');
/** More distinct tokens than the JWT and decision caches hold (10,000 each): cycling through them misses. */
const COLD_TOKENS = 25_000;

const work = mkdtempSync(join(tmpdir(), 'authz-bench-'));
// Apache's worker runs as www-data and must reach its folder under this one.
chmodSync(work, 0o755);
const log = (...args) => console.error(`[bench ${new Date().toISOString().slice(11, 19)}]`, ...args);

// Keys and tokens: one RS256 key, published as a JWKS (over https for Apache, as a file for the sidecar).
const { jwks, token } = benchIssuer(work);
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
function record(id, name, pid, samples, notes = '', baselineOf = undefined) {
  const sorted = [...samples].sort((a, b) => a.rps - b.rps);
  const median = sorted[Math.floor((sorted.length - 1) / 2)];
  const row = {
    id,
    name,
    rps: Math.round(median.rps),
    p50Ms: median.p50Ms,
    p99Ms: median.p99Ms,
    cpuSecondsPer10k: median.cpuSecondsPer10k,
    // A row started afresh every round: the highest peak of its processes.
    peakRssMiB: Math.round((pid === undefined ? Math.max(...samples.map((s) => s.peakRssMiB)) : peakRssMiB(pid)) * 10) / 10,
    requests: median.requests,
    failed: 0,
    rounds: samples.length,
    rpsRange: samples.length > 1 ? [Math.round(sorted[0].rps), Math.round(sorted.at(-1).rps)] : undefined,
    // Every round in order, so that a row and its baseline row can be compared round by round.
    roundResults: samples.length > 1 ? samples.map((s) => ({ rps: Math.round(s.rps), cpuSecondsPer10k: s.cpuSecondsPer10k })) : undefined,
    notes,
    ...(baselineOf === undefined ? {} : { baselineOf }),
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

/**
 * The NODE_OPTIONS the image's entrypoint (bin/entrypoint.sh) gives the sidecar, read by running it with a
 * stand-in `node` that prints them (row 5t measures them). Here, outside a memory-limited cgroup, without the
 * old-space cap it adds under a limit: bench/pods.mjs runs each manifest under its limit.
 */
function deployedNodeOptions() {
  const dir = mkdtempSync(join(work, 'entrypoint-'));
  writeFileSync(join(dir, 'node'), '#!/bin/sh\nprintf "%s" "$NODE_OPTIONS"\n', { mode: 0o755 });
  const env = { ...process.env, PATH: `${dir}:${process.env.PATH}` };
  delete env.NODE_OPTIONS;
  return execFileSync('sh', [join(ROOT, 'bin/entrypoint.sh')], { env }).toString().trim();
}

/** A sidecar of SIDECAR_ROOT's build, or of `root`'s (the baseline): the config is the same but for its ports. */
async function startSidecar({ doors = {}, policy = join(work, 'policy.csv'), upstreamPort, upstreamUrl, nodeOptions, root = SIDECAR_ROOT, signIn, extraEnv = {} }) {
  const port = await freePort();
  const admin = await freePort();
  const config = {
    listen: `127.0.0.1:${port}`,
    ...(upstreamUrl !== undefined ? { upstream: { url: upstreamUrl } } : upstreamPort === undefined ? {} : { upstream: { url: `http://127.0.0.1:${upstreamPort}` } }),
    admin: { listen: `127.0.0.1:${admin}` },
    extAuthz: doors,
    authn: { jwt: [{ issuer: ISSUER, audiences: [AUDIENCE], jwksFile: join(work, 'jwks.json'), algorithms: ['RS256'] }] },
    authz: { model: join(ROOT, 'policies/model.conf'), policy, watch: false },
    shutdown: { drainSeconds: 2 },
    ...(signIn === undefined ? {} : { signIn: signIn(port) }),
  };
  const file = join(work, `sidecar-${port}.json`);
  writeFileSync(file, JSON.stringify(config));
  const started = process.hrtime.bigint();
  const env = { ...process.env, ...extraEnv, ...(nodeOptions === undefined ? {} : { NODE_OPTIONS: nodeOptions }) };
  const child = pinned('node', [join(root, 'bin/authz-sidecar.js'), 'serve', '--config', file], { env });
  const deadline = Date.now() + READY_TIMEOUT_MS;
  for (;;) {
    if ((await waitForHttp(`http://127.0.0.1:${admin}/readyz`, child, READY_TIMEOUT_MS)) === 200) break;
    if (Date.now() > deadline) {
      await stopChild(child);
      throw new Error(`${root}: the sidecar was not ready within ${READY_TIMEOUT_MS} ms`);
    }
    await new Promise((r) => setTimeout(r, 5));
  }
  const readyMs = Number(process.hrtime.bigint() - started) / 1e6;
  return { child, port, pid: child.pid, readyMs, stop: () => stopChild(child) };
}

/** Rows 7g: a sidecar (of `root`'s build) with the ext_authz gRPC door, checked to allow and deny, and its load. */
async function grpcCheckDoor(root) {
  const grpcPort = await freePort();
  const sidecar = await startSidecar({ doors: { grpc: { listen: `127.0.0.1:${grpcPort}` } }, root });
  const frame = checkRequestFrame({ method: 'GET', path: PATH, host: 'app.bench.local', headers: { authorization: `Bearer ${TOKEN}` } });
  const denyFrame = checkRequestFrame({ method: 'GET', path: PATH, host: 'app.bench.local', headers: {} });
  const [allowed, denied] = [await checkOnce(`http://127.0.0.1:${grpcPort}`, frame), await checkOnce(`http://127.0.0.1:${grpcPort}`, denyFrame)];
  if (allowed !== 0 || denied !== 16) throw new Error(`gRPC check: expected OK (0) and UNAUTHENTICATED (16), got ${allowed} and ${denied}`);
  return {
    pid: sidecar.pid,
    load: (seconds) => h2loadGrpc({ url: `http://127.0.0.1:${grpcPort}/envoy.service.auth.v3.Authorization/Check`, cpu: LOAD_CPU, body: frame, seconds }),
    stop: () => stopTree(sidecar.pid, sidecar.stop),
  };
}

/**
 * Row 5s: a request authenticated by a browser session cookie (decrypt + decision + forward) instead of a
 * bearer token. The cookie is sealed with the sidecar's own codec (the checkout's dist/) under the secret
 * the sidecar is given, for the same user and roles as the bearer token; a minimal discovery document on
 * loopback stands in for the provider (the sidecar is ready only once it is discovered; no sign-in happens).
 */
async function sessionCookie(root) {
  const secretFile = join(work, 'cookie-secret');
  writeFileSync(secretFile, 'bench-cookie-secret-0123456789-0123456789-0123456789');
  const { createCookieCodec } = await import(join(root, 'dist/signin/cookie-codec.js'));
  const codec = createCookieCodec([{ bytes: new Uint8Array(readFileSync(secretFile)), what: 'bench' }]);
  const now = Math.floor(Date.now() / 1000);
  const sealed = await codec.seal(
    { v: 1, id: 'bench-session', p: 'bench', iss: providerIssuer, sub: 'bench-user', c: { sub: 'bench-user', roles: ['team0'] }, st: now },
    now + 4 * 3600,
  );
  return { cookie: `authz=${sealed}`, secretFile };
}

/**
 * Row 5r's session: stored in Redis by the checkout's own redis store (dist/), for the same user and roles
 * as the bearer token; its Set-Cookie is the ticket the load sends.
 */
async function redisTicket(root, url) {
  const secretFile = join(work, 'cookie-secret');
  writeFileSync(secretFile, 'bench-cookie-secret-0123456789-0123456789-0123456789');
  const [{ createRedisBackend }, { copyClaims }] = await Promise.all([import(join(root, 'dist/signin/redis-store.js')), import(join(root, 'dist/core/identity.js'))]);
  const backend = createRedisBackend({
    url,
    keyPrefix: 'authz-sidecar:',
    settings: { name: 'authz', secure: false, sameSite: 'lax', domain: '', prefix: '/.authz' },
    secrets: [new Uint8Array(readFileSync(secretFile))],
    maxAgeSeconds: 4 * 3600,
    copyClaims,
  });
  for (let i = 0; !backend.up(); i++) {
    if (i > 200) throw new Error(`row 5r: redis-server at ${url} did not come up`);
    await new Promise((r) => setTimeout(r, 25));
  }
  const now = Math.floor(Date.now() / 1000);
  const [line] = await backend.start(
    { id: 'benchSessionId0123456A', provider: 'bench', issuer: providerIssuer, subject: 'bench-user', claims: copyClaims({ sub: 'bench-user', roles: ['team0'] }), startedAtMs: Date.now(), expiresAt: now + 4 * 3600 },
    new Map(),
    now,
  );
  await backend.close();
  return { cookie: line.split(';')[0], secretFile };
}

let providerIssuer;
/** The stand-in provider of row 5s: a discovery document and an empty JWKS on loopback. */
async function startDiscovery() {
  const port = await freePort();
  providerIssuer = `http://127.0.0.1:${port}`;
  const doc = JSON.stringify({
    issuer: providerIssuer,
    authorization_endpoint: `${providerIssuer}/auth`,
    token_endpoint: `${providerIssuer}/token`,
    jwks_uri: `${providerIssuer}/jwks`,
    response_types_supported: ['code'],
    subject_types_supported: ['public'],
    id_token_signing_alg_values_supported: ['RS256'],
  });
  const server = createHttpServer((req, res) => {
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(req.url === '/jwks' ? '{"keys":[]}' : doc);
  });
  await new Promise((resolve) => server.listen(port, '127.0.0.1', resolve));
  return () => new Promise((resolve) => server.close(resolve));
}

/** Row 7h: a sidecar (of `root`'s build) with the ext_authz HTTP door, checked to allow and deny, and its load. */
async function httpCheckDoor(root) {
  const checkPort = await freePort();
  const sidecar = await startSidecar({ doors: { http: { listen: `127.0.0.1:${checkPort}` } }, root });
  await expectAuth(http(checkPort));
  return {
    pid: sidecar.pid,
    load: (seconds) => wrk({ url: http(checkPort), cpu: LOAD_CPU, connections: CONNECTIONS, seconds, headers: bearer }),
    stop: () => stopTree(sidecar.pid, sidecar.stop),
  };
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
  const pkg = (name) => JSON.parse(readFileSync(join(SIDECAR_ROOT, 'node_modules', name, 'package.json'), 'utf8')).version;
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
    authzSidecar: describeCheckout(SIDECAR_ROOT),
    ...(BASELINE === undefined ? {} : { baseline: describeCheckout(BASELINE) }),
  };
}

async function main() {
  const machine = { cpu: cpus()[0]?.model ?? 'unknown', cores: cpus().length, memoryGiB: Math.round(totalmem() / 2 ** 30), kernel: release() };
  if (machine.cores < 2) throw new Error('the benchmark pins the server and the load generator to different cores: 2 or more needed');
  log(`work dir ${work}; ${SECONDS} s per row`);

  // The shared upstream, on the load generator's core so the server under test has its core alone.
  const upstreamPort = await freePort();
  // Also on a unix socket (row 5u): the same nginx server block, so rows 5 and 5u differ only in the socket.
  const upstreamSocket = join(work, 'upstream.sock');
  const upstream = await startUpstream({ dir: join(work, 'upstream'), port: upstreamPort, cpu: LOAD_CPU, socketPath: upstreamSocket });
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
  // Row `id` of this build, then (with BENCH_BASELINE) the same row of the baseline's build: row `${id}b`.
  // Compared with a baseline, both start afresh for every round (`start`): one Node process can be slower
  // than another of the same build for its whole life (seen here: the same build's gRPC door at 1.27 and at
  // 0.95 CPU s / 10k in one run), so a verdict over one process each would measure that process.
  const sidecarRow = async (id, name, setup) => {
    if (BASELINE === undefined) {
      const row = await setup(SIDECAR_ROOT);
      stops.push(row.stop);
      compared.push({ id, name, pid: row.pid, load: row.load });
      return;
    }
    compared.push({ id, name, start: () => setup(SIDECAR_ROOT) });
    compared.push({ id: `${id}b`, name: `${name} (baseline ${BASELINE_SHA})`, start: () => setup(BASELINE), baselineOf: id });
  };
  const proxyRow = (nodeOptions) => async (root) => {
    const sidecar = await startSidecar({ upstreamPort, nodeOptions, root });
    await expectAuth(http(sidecar.port));
    return { pid: sidecar.pid, load: load(http(sidecar.port), { headers: bearer }), stop: () => stopTree(sidecar.pid, sidecar.stop) };
  };
  if (want('5')) await sidecarRow('5', `authz-sidecar proxy (${POLICY_LINES}-line policy)`, proxyRow(undefined));
  if (want('5s')) {
    // The same request as row 5, authenticated by a session cookie instead of the bearer token.
    if (providerIssuer === undefined) stops.push(await startDiscovery());
    const session = await sessionCookie(SIDECAR_ROOT);
    const sidecar = await startSidecar({
      upstreamPort,
      signIn: (port) => ({
        callbackUrl: `http://127.0.0.1:${port}/.authz/callback`,
        providers: [{ name: 'bench', issuer: providerIssuer, clientId: 'bench' }],
        cookie: { name: 'authz', secretFiles: [session.secretFile], secure: false },
      }),
    });
    stops.push(() => stopTree(sidecar.pid, sidecar.stop));
    const withCookie = await fetch(http(sidecar.port), { headers: { cookie: session.cookie } });
    const without = await fetch(http(sidecar.port), { headers: { accept: 'application/json' } });
    await Promise.all([withCookie.arrayBuffer(), without.arrayBuffer()]);
    if (withCookie.status !== 200 || without.status !== 401) throw new Error(`row 5s: expected 200 with the session cookie and 401 without, got ${withCookie.status} and ${without.status}`);
    compared.push({ id: '5s', name: `authz-sidecar proxy, browser session cookie (${POLICY_LINES}-line policy)`, pid: sidecar.pid, load: load(http(sidecar.port), { headers: { Cookie: session.cookie } }) });
  }
  if (want('5r')) {
    // Row 5s with the redis session store: the cookie is a ticket, the session is read from a real
    // redis-server (pinned to the load core, beside the upstream) on every request.
    if (providerIssuer === undefined) stops.push(await startDiscovery());
    const redisPort = await freePort();
    const redis = spawn('taskset', ['-c', String(LOAD_CPU), 'redis-server', '--bind', '127.0.0.1', '--port', String(redisPort), '--save', '', '--appendonly', 'no'], { stdio: 'ignore' });
    children.add(redis);
    stops.push(() => stopChild(redis));
    const redisUrl = `redis://127.0.0.1:${redisPort}/0`;
    const session = await redisTicket(SIDECAR_ROOT, redisUrl);
    const sidecar = await startSidecar({
      upstreamPort,
      signIn: (port) => ({
        callbackUrl: `http://127.0.0.1:${port}/.authz/callback`,
        providers: [{ name: 'bench', issuer: providerIssuer, clientId: 'bench' }],
        cookie: { name: 'authz', secretFiles: [session.secretFile], secure: false },
        session: { store: 'redis', redis: { url: redisUrl } },
      }),
    });
    stops.push(() => stopTree(sidecar.pid, sidecar.stop));
    const withCookie = await fetch(http(sidecar.port), { headers: { cookie: session.cookie } });
    const without = await fetch(http(sidecar.port), { headers: { accept: 'application/json' } });
    await Promise.all([withCookie.arrayBuffer(), without.arrayBuffer()]);
    if (withCookie.status !== 200 || without.status !== 401) throw new Error(`row 5r: expected 200 with the session ticket and 401 without, got ${withCookie.status} and ${without.status}`);
    compared.push({ id: '5r', name: `authz-sidecar proxy, browser session in Redis (${POLICY_LINES}-line policy)`, pid: sidecar.pid, load: load(http(sidecar.port), { headers: { Cookie: session.cookie } }) });
  }
  if (want('5o')) {
    // Row 5 with tracing on, every request sampled: spans exported over OTLP/HTTP protobuf to a sink on the
    // load core that answers 200 (the export's own cost on the sidecar, without a collector's).
    const sinkPort = await freePort();
    const sink = createHttpServer((req, res) => {
      req.resume();
      req.on('end', () => {
        res.writeHead(200, { 'content-type': 'application/x-protobuf' });
        res.end();
      });
    });
    await new Promise((resolve) => sink.listen(sinkPort, '127.0.0.1', resolve));
    stops.push(() => new Promise((resolve) => sink.close(resolve)));
    const sidecar = await startSidecar({
      upstreamPort,
      extraEnv: { OTEL_TRACES_EXPORTER: 'otlp', OTEL_EXPORTER_OTLP_ENDPOINT: `http://127.0.0.1:${sinkPort}`, OTEL_TRACES_SAMPLER: 'always_on' },
    });
    stops.push(() => stopTree(sidecar.pid, sidecar.stop));
    await expectAuth(http(sidecar.port));
    compared.push({ id: '5o', name: `authz-sidecar proxy, tracing on, 100% sampled (${POLICY_LINES}-line policy)`, pid: sidecar.pid, load: load(http(sidecar.port), { headers: bearer }) });
  }
  if (want('5u')) {
    // The app on a unix socket instead of loopback TCP: what the usual advice for containers of one pod
    // says is much faster (an emptyDir volume shared by the two containers).
    const sidecar = await startSidecar({ upstreamUrl: `unix:${upstreamSocket}` });
    stops.push(() => stopTree(sidecar.pid, sidecar.stop));
    await expectAuth(http(sidecar.port));
    compared.push({ id: '5u', name: `authz-sidecar proxy, upstream on a unix socket (${POLICY_LINES}-line policy)`, pid: sidecar.pid, load: load(http(sidecar.port), { headers: bearer }) });
  }
  if (want('5m')) {
    const sidecar = await startSidecar({ upstreamPort });
    stops.push(() => stopTree(sidecar.pid, sidecar.stop));
    await expectAuth(http(sidecar.port));
    compared.push({ id: '5m', name: `authz-sidecar proxy, ${MODERATE}`, pid: sidecar.pid, load: moderateLoad(http(sidecar.port), bearer) });
  }
  if (want('5t')) {
    const nodeOptions = deployedNodeOptions();
    await sidecarRow('5t', `authz-sidecar proxy with NODE_OPTIONS="${nodeOptions}" (the image's entrypoint, no memory limit)`, proxyRow(nodeOptions));
  }
  // The check doors join the interleaved rounds when compared with a baseline; otherwise they run once, below.
  if (BASELINE !== undefined && want('7g')) await sidecarRow('7g', 'ext_authz gRPC door (checks)', grpcCheckDoor);
  if (BASELINE !== undefined && want('7h')) await sidecarRow('7h', 'ext_authz HTTP door (checks)', httpCheckDoor);
  const selected = compared.filter((c) => want(c.id) || (c.baselineOf !== undefined && want(c.baselineOf)));
  // A row and its baseline row run back to back; which goes first alternates by round, so that neither
  // always gets the core warm from the other.
  const groups = selected.filter((c) => c.baselineOf === undefined).map((c) => [c, ...selected.filter((b) => b.baselineOf === c.id)]);
  const samples = new Map(selected.map((c) => [c.id, []]));
  for (let round = 1; round <= ROUNDS; round++) {
    for (const group of groups) {
      for (const c of round % 2 === 1 ? group : [...group].reverse()) {
        const instance = c.start === undefined ? c : await c.start();
        const result = await sample(c.id, instance.pid, instance.load);
        if (c.start !== undefined) {
          result.peakRssMiB = peakRssMiB(instance.pid);
          await instance.stop();
        }
        samples.get(c.id).push(result);
        log(`round ${round}/${ROUNDS} ${c.id}: ${Math.round(result.rps)} req/s, p50 ${result.p50Ms} ms, ${result.cpuSecondsPer10k?.toFixed(3)} CPU s/10k`);
      }
    }
  }
  for (const c of selected) record(c.id, c.name, c.pid, samples.get(c.id), '', c.baselineOf);
  for (const stop of stops) await stop();
  if (want('6')) {
    const script = coldTokensScript(PATH);
    const sidecar = await startSidecar({ upstreamPort });
    await measure('6', `authz-sidecar proxy, a distinct token per request (${COLD_TOKENS} tokens cycled: JWT and decision caches cold)`, sidecar.pid, load(http(sidecar.port), { script }));
    await stopTree(sidecar.pid, sidecar.stop);
  }
  for (const [id, name, setup] of [
    ['7g', 'ext_authz gRPC door (checks)', grpcCheckDoor],
    ['7h', 'ext_authz HTTP door (checks)', httpCheckDoor],
  ]) {
    if (BASELINE !== undefined || !want(id)) continue; // with a baseline, measured in the rounds above
    const door = await setup(SIDECAR_ROOT);
    await measure(id, name, door.pid, door.load);
    await door.stop();
  }
  await stopTree(upstream.pid, upstream.stop);

  if (want('pods')) {
    // Each shipped manifest as its pod runs it (memory limit, entrypoint, Node major): bench/pods.mjs writes
    // bench/results/pods.md and pods.json, which test/deploy/pod-memory.test.ts holds the manifests to.
    await exec('node', [join(ROOT, 'bench/pods.mjs')], { maxBuffer: 16 * 1024 * 1024, env: { ...process.env, BENCH_SECONDS: String(SECONDS) } });
    log('pods: bench/results/pods.md');
  }
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
    command: `${['BENCH_BASELINE', 'BENCH_SIDECAR_ROOT', 'BENCH_ROWS', 'BENCH_SECONDS', 'BENCH_ROUNDS'].filter((k) => process.env[k]).map((k) => `${k}=${process.env[k]} `).join('')}npm run bench`,
    secondsPerRow: SECONDS,
    rounds: ROUNDS,
    connections: CONNECTIONS,
    machine,
    versions: await versions(),
    ...(BASELINE === undefined ? {} : { baseline: { path: BASELINE, commit: describeCheckout(BASELINE), sidecarRoot: SIDECAR_ROOT } }),
    rows,
    ...extra,
  };
  result.targets = targets(result);
  if (BASELINE !== undefined) result.beforeAfter = beforeAfter(result);
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
