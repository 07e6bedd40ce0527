/**
 * Load generators, pinned to their own core: wrk for HTTP/1.1 and h2load for gRPC (HTTP/2). Both are C
 * programs, so the generator is never the slower side. Latency percentiles: wrk's --latency distribution,
 * h2load's per-request log.
 */
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);

function toMs(value, unit) {
  const n = Number(value);
  return unit === 'us' ? n / 1000 : unit === 's' ? n * 1000 : unit === 'm' ? n * 60_000 : n;
}

/** Parses wrk's report (with --latency). */
export function parseWrk(text) {
  const rps = /Requests\/sec:\s+([\d.]+)/.exec(text);
  const total = /(\d+) requests in ([\d.]+)(\w+)/.exec(text);
  const pct = (p) => {
    const m = new RegExp(`^\\s+${p}%\\s+([\\d.]+)(us|ms|s|m)\\s*$`, 'm').exec(text);
    return m ? toMs(m[1], m[2]) : undefined;
  };
  const non2xx = /Non-2xx or 3xx responses:\s+(\d+)/.exec(text);
  const errors = /Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/.exec(text);
  if (!rps || !total) throw new Error(`cannot read wrk output:\n${text}`);
  return {
    requests: Number(total[1]),
    rps: Number(rps[1]),
    p50Ms: pct(50),
    p99Ms: pct(99),
    non2xx: non2xx ? Number(non2xx[1]) : 0,
    socketErrors: errors ? errors.slice(1).reduce((a, b) => a + Number(b), 0) : 0,
  };
}

/**
 * wrk against `url`. `headers` are sent on every request; `script` is a Lua file (per-request tokens,
 * think time); `connections` and `seconds` set the load.
 */
export async function wrk({ url, cpu, connections = 64, seconds = 10, headers = {}, script, threads = 1 }) {
  const args = ['-c', String(cpu), 'wrk', '-t', String(threads), '-c', String(connections), '-d', `${seconds}s`, '--latency', '--timeout', '5s'];
  for (const [k, v] of Object.entries(headers)) args.push('-H', `${k}: ${v}`);
  if (script) args.push('-s', script);
  args.push(url);
  const { stdout } = await run('taskset', args, { maxBuffer: 16 * 1024 * 1024 });
  return parseWrk(stdout);
}

/** Percentile (0..100) of sorted numbers. */
export function percentile(sorted, p) {
  if (sorted.length === 0) return undefined;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

/**
 * h2load posting one gRPC message (already framed: 1 byte flag, 4 bytes length, message) to `url` over
 * cleartext HTTP/2 (prior knowledge), `streams` concurrent streams on each of `clients` connections.
 */
export async function h2loadGrpc({ url, cpu, body, seconds = 10, clients = 4, streams = 32 }) {
  const dir = mkdtempSync(join(tmpdir(), 'h2load-'));
  const bodyFile = join(dir, 'body.bin');
  const logFile = join(dir, 'log.tsv');
  writeFileSync(bodyFile, body);
  const args = [
    '-c', String(cpu), 'h2load', '-D', String(seconds), '--warm-up-time', '1', '-c', String(clients), '-m', String(streams),
    '-d', bodyFile, '-H', 'content-type: application/grpc', '-H', 'te: trailers', '--log-file', logFile, url,
  ];
  const { stdout } = await run('taskset', args, { maxBuffer: 16 * 1024 * 1024 });
  const succeeded = /requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed, (\d+) errored/.exec(stdout);
  const rps = /finished in [\d.]+\w+, ([\d.]+) req\/s/.exec(stdout);
  if (!succeeded || !rps) throw new Error(`cannot read h2load output:\n${stdout}`);
  const durations = readFileSync(logFile, 'utf8').trim().split('\n').map((l) => Number(l.split('\t')[2]) / 1000).sort((a, b) => a - b);
  return {
    requests: Number(succeeded[1]),
    rps: Number(rps[1]),
    p50Ms: percentile(durations, 50),
    p99Ms: percentile(durations, 99),
    non2xx: Number(succeeded[2]) + Number(succeeded[3]),
    socketErrors: 0,
  };
}
