/**
 * Row 8: decision latency against policy size, with the decision cache off (every decision evaluated),
 * for the indexed authorizer and for plain Casbin over every line. Runs in its own process pinned by
 * bench/run.mjs; prints JSON. Requests are random: any team's role, any service and resource, any method,
 * so most are denied (the worst case for plain Casbin: every line evaluated) and some allowed.
 */
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createCasbinAuthorizer } from '../dist/authz/casbin-authorizer.js';
import { percentile } from './lib/load.mjs';
import { generatePolicy } from './lib/policy-gen.mjs';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const METHODS = ['GET', 'POST', 'PUT', 'DELETE'];
const dir = mkdtempSync(join(tmpdir(), 'authz-scale-'));

let seed = 42;
function random(n) {
  seed = (seed * 1103515245 + 12345) & 0x7fffffff;
  return seed % n;
}

function request(lines, i) {
  const teams = Math.max(1, Math.floor(lines / 100));
  const path = `/api/svc${random(50)}/res${random(7)}/${i}`;
  return [
    { method: METHODS[random(4)], path, host: 'app', peer: '127.0.0.1', headers: {} },
    { anonymous: false, subject: `user-${i}`, issuer: 'bench', roles: [`team${random(teams)}`], scopes: [], claims: {} },
  ];
}

async function latencies(authorizer, lines, count, budgetMs) {
  const times = [];
  let allowed = 0;
  const until = performance.now() + budgetMs;
  for (let i = 0; i < count && performance.now() < until; i++) {
    const [req, identity] = request(lines, i);
    const t = process.hrtime.bigint();
    const result = authorizer.authorize(req, identity);
    times.push(Number(process.hrtime.bigint() - t) / 1e6);
    if (result.allowed) allowed++;
  }
  times.sort((a, b) => a - b);
  const round = (x) => Math.round(x * 10_000) / 10_000;
  return { decisions: times.length, allowed, p50Ms: round(percentile(times, 50)), p99Ms: round(percentile(times, 99)) };
}

const out = [];
for (const lines of [1_000, 10_000, 100_000]) {
  const policyPath = join(dir, `policy-${lines}.csv`);
  writeFileSync(policyPath, generatePolicy(lines));
  const modelPath = join(ROOT, 'policies/model.conf');
  const started = performance.now();
  const indexedAuthorizer = await createCasbinAuthorizer({ modelPath, policyPath, decisionCacheEntries: 0 });
  const loadMs = Math.round(performance.now() - started);
  if (!indexedAuthorizer.indexed) throw new Error('the policy index is not in use for the shipped model');
  const plainAuthorizer = await createCasbinAuthorizer({ modelPath, policyPath, decisionCacheEntries: 0, index: false });
  seed = 42;
  const indexed = await latencies(indexedAuthorizer, lines, 20_000, 10_000);
  seed = 42;
  const plain = await latencies(plainAuthorizer, lines, 20_000, 5_000);
  out.push({ lines, loadMs, indexed, plain });
}
process.stdout.write(`${JSON.stringify(out)}\n`);
