/**
 * What the comparison (run.mjs) and its test share: the keys, token and policy of bench/run.mjs, the one
 * config both servers run, starting a server and timing its first OK check, and the checks that both
 * answer what the grpc-js door answers.
 */
import { AUDIENCE, benchIssuer, ISSUER } from '../lib/keys.mjs';
import { spawn } from 'node:child_process';
import { createWriteStream, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { checkRequestFrame } from '../lib/grpc-body.mjs';
import { stopChild } from '../lib/nginx.mjs';
import { allowedPath, generatePolicy } from '../lib/policy-gen.mjs';
import { stopTree } from '../lib/proc.mjs';
import { freePort } from '../lib/util.mjs';
import { ROOT } from './build.mjs';
import { officialClient, rawCheck } from './client.mjs';

export { AUDIENCE, ISSUER } from '../lib/keys.mjs';
export const HOST = 'app.bench.local';
/** How long a starting server may take to answer its first OK check. */
const START_TIMEOUT_MS = 30_000;

/**
 * One RS256 key published as a JWKS file, a token of role team0, a generated policy of `policyLines`
 * lines (bench/lib/policy-gen.mjs) and the path it allows; the framed CheckRequests with and without the
 * token (bench/lib/grpc-body.mjs), the first being what h2load sends.
 */
export function makeFixture(work, policyLines = 1_000) {
  const { token: sign } = benchIssuer(work);
  const token = sign();
  writeFileSync(join(work, 'policy.csv'), generatePolicy(policyLines));
  const path = allowedPath(policyLines);
  return {
    work,
    token,
    path,
    allowFrame: checkRequestFrame({ method: 'GET', path, host: HOST, headers: { authorization: `Bearer ${token}` } }),
    denyFrame: checkRequestFrame({ method: 'GET', path, host: HOST, headers: {} }),
  };
}

/** The config both implementations run: only `extAuthz.grpc` (`http` instead for the reference sidecar). */
export async function writeConfig(fixture, door = 'grpc') {
  const port = await freePort();
  const admin = await freePort();
  const config = {
    admin: { listen: `127.0.0.1:${admin}` },
    extAuthz: { [door]: { listen: `127.0.0.1:${port}` } },
    authn: { jwt: [{ issuer: ISSUER, audiences: [AUDIENCE], jwksFile: join(fixture.work, 'jwks.json'), algorithms: ['RS256'] }] },
    authz: { model: join(ROOT, 'policies/model.conf'), policy: join(fixture.work, 'policy.csv'), watch: false },
    shutdown: { drainSeconds: 2 },
  };
  const file = join(fixture.work, `config-${port}.json`);
  writeFileSync(file, JSON.stringify(config));
  return { file, address: `127.0.0.1:${port}`, adminUrl: `http://127.0.0.1:${admin}` };
}

/** google.rpc.Status.code of a framed CheckResponse (field 1, then its field 1); absent is 0 in proto3. */
export function statusCodeOf(framed) {
  const body = framed.subarray(5);
  if (body[0] !== 0x0a) return 0;
  const status = body.subarray(2, 2 + body[1]);
  return status[0] === 0x08 ? status[1] : 0;
}

/** VmRSS of a process, in MiB. */
export function rssMiB(pid) {
  const match = /^VmRSS:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return match ? Number(match[1]) / 1024 : undefined;
}

/** Resolves when the allowed check answers OK; rejects otherwise (not listening yet, or a wrong answer). */
export async function firstCheckOk(config, fixture) {
  const { grpcStatus, body } = await rawCheck(`http://${config.address}`, fixture.allowFrame, 1_000);
  if (grpcStatus !== '0' || statusCodeOf(body) !== 0) throw new Error(`first check answered grpc-status ${grpcStatus}, CheckResponse status ${statusCodeOf(body)}`);
}

/**
 * Starts `node <bin> serve --config <file>`, pinned to `cpu` if given (taskset execs node: the pid is node's), and
 * polls `probe` (by default the allowed check) until it resolves: `startupMs` is spawn to first OK check.
 * `url` is the h2c URL of the Check method, for h2load.
 */
export async function startServer({ bin, config, cpu, fixture, log, probe = () => firstCheckOk(config, fixture) }) {
  const out = createWriteStream(log);
  const started = process.hrtime.bigint();
  const command = [process.execPath, bin, 'serve', '--config', config.file];
  if (cpu !== undefined) command.unshift('taskset', '-c', String(cpu));
  const child = spawn(command[0], command.slice(1), { stdio: ['ignore', 'pipe', 'pipe'] });
  child.stdout.pipe(out);
  child.stderr.pipe(out);
  const stop = () => stopTree(child.pid, () => stopChild(child));
  const deadline = Date.now() + START_TIMEOUT_MS;
  for (;;) {
    if (child.exitCode !== null || child.signalCode !== null) throw new Error(`${bin}: exited (${child.exitCode ?? child.signalCode}) before its first check; see ${log}`);
    try {
      await probe();
      break;
    } catch (err) {
      if (Date.now() > deadline) {
        await stop();
        throw new Error(`${bin}: no OK check within ${START_TIMEOUT_MS} ms (${err.message}); see ${log}`, { cause: err });
      }
      await new Promise((r) => setTimeout(r, 5));
    }
  }
  const startupMs = Number(process.hrtime.bigint() - started) / 1e6;
  return { child, pid: child.pid, startupMs, address: config.address, url: `http://${config.address}/envoy.service.auth.v3.Authorization/Check`, stop };
}

/**
 * Asks `address` an allowed check and a check without a token with the official-proto client, and
 * throws unless they come back OK (0) with ok_response and UNAUTHENTICATED (16) with a 401
 * denied_response. Returns both decoded responses (request ids are fixed, so two servers answer alike).
 */
export async function verifyAnswers(address, fixture) {
  const client = officialClient(address);
  try {
    const http = (headers) => ({ id: 'bench-check-1', method: 'GET', path: fixture.path, host: HOST, scheme: 'http', protocol: 'HTTP/1.1', headers });
    const allowed = await client.check(http({ authorization: `Bearer ${fixture.token}`, 'x-request-id': 'bench-req-1', 'x-auth-subject': 'spoofed' }));
    const denied = await client.check(http({ 'x-request-id': 'bench-req-2' }));
    const problems = [];
    if (allowed.status?.code !== 0 || allowed.http_response !== 'ok_response') problems.push(`allowed check: status ${allowed.status?.code}, ${allowed.http_response}`);
    if (denied.status?.code !== 16 || denied.http_response !== 'denied_response' || denied.denied_response?.status?.code !== 'Unauthorized') {
      problems.push(`check without a token: status ${denied.status?.code}, ${denied.http_response} ${denied.denied_response?.status?.code}`);
    }
    if (problems.length > 0) throw new Error(`${address}: ${problems.join('; ')}`);
    return { allowed, denied };
  } finally {
    client.close();
  }
}
