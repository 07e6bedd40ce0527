/**
 * `npm run soak`: SOAK_SECONDS (default 600) of load and faults, then the report on stdout and in
 * SOAK_OUT (default bench/results/soak.md, with the raw figures beside it as .json). SOAK_RATE sets the
 * offered requests per second (default 300). Exits 1 when the oracle counted a wrong allow, a wrong denial
 * outside a fault window or a failure outside one.
 */
import { execFileSync } from 'node:child_process';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { ROOT } from '../../test/support/cli.js';
import { markdown, memory } from './report.js';
import { runSoak } from './run.js';

const seconds = Number(process.env['SOAK_SECONDS'] ?? 600);
const rate = Number(process.env['SOAK_RATE'] ?? 300);
if (!(seconds >= 30) || !(rate > 0)) {
  process.stderr.write('SOAK_SECONDS must be at least 30 and SOAK_RATE positive\n');
  process.exit(2);
}
const out = process.env['SOAK_OUT'] ?? join(ROOT, 'bench/results/soak.md');

// Stopped early: the 'exit' handlers of the parts kill every process the soak started.
process.once('SIGINT', () => process.exit(130));
process.once('SIGTERM', () => process.exit(143));

// The commit under test is the one checked out when the run starts (src/ and dist/ as built then).
let commit = 'unknown';
try {
  commit = execFileSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: ROOT, encoding: 'utf8' }).trim();
  if (execFileSync('git', ['status', '--porcelain', '--', 'src', 'bench/soak'], { cwd: ROOT, encoding: 'utf8' }).trim() !== '') commit += ' with uncommitted changes';
} catch {
  // not a git checkout
}
const result = await runSoak({ seconds, rate, log: (line) => process.stdout.write(`${line}\n`) });
const report = markdown(result, { commit, node: process.versions.node, rate, date: new Date().toISOString().slice(0, 16).replace('T', ' ') + ' UTC' });
await writeFile(out, report);
await writeFile(out.replace(/\.md$/, '.json'), JSON.stringify({ ...result, memory: memory(result.samples), samples: undefined }, null, 1));
process.stdout.write(`\n${report}\nwritten to ${out}\n`);
const bad = result.wrongAllows + result.wrongDenialsOutsideFaults + result.failuresOutsideFaults + result.wrongStatuses;
process.exit(bad === 0 ? 0 : 1);
