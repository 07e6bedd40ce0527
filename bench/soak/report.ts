/** The soak's figures as a Markdown report (bench/results/soak.md) and a compact summary for the console. */
import type { Sample, SoakResult } from './run.js';

/** Minutes of load before RSS is taken as settled (caches filled, the JIT warm). */
export const WARM_UP_SECONDS = 120;

export interface MemorySummary {
  readonly replica: string;
  readonly rssStart: number;
  readonly rssPeak: number;
  readonly rssEnd: number;
  /** least-squares slope of RSS after warm-up, MiB per hour (NaN for a run too short to tell) */
  readonly rssSlopePerHour: number;
  readonly heapStart: number;
  readonly heapEnd: number;
  readonly loopP99Max: number;
  readonly loopP99Median: number;
  /** the largest single event-loop delay seen */
  readonly loopMax: number;
  readonly healthzP50: number;
  readonly healthzP99: number;
  readonly healthzMax: number;
  readonly fdsStart: number;
  readonly fdsEnd: number;
  readonly fdsMax: number;
  readonly incarnations: number;
}

function slope(points: ReadonlyArray<readonly [number, number]>): number {
  if (points.length < 10) return Number.NaN;
  const n = points.length;
  const mx = points.reduce((a, [x]) => a + x, 0) / n;
  const my = points.reduce((a, [, y]) => a + y, 0) / n;
  let num = 0;
  let den = 0;
  for (const [x, y] of points) {
    num += (x - mx) * (y - my);
    den += (x - mx) ** 2;
  }
  return den === 0 ? 0 : num / den;
}

function quantile(values: number[], q: number): number {
  const sorted = values.filter(Number.isFinite).sort((a, b) => a - b);
  return sorted.length === 0 ? Number.NaN : (sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * q))] as number);
}

/**
 * Per replica, over its LAST incarnation (replica B restarts in the run; A runs throughout, so A's figures
 * cover the whole run).
 */
export function memory(samples: readonly Sample[]): MemorySummary[] {
  const out: MemorySummary[] = [];
  for (const replica of [...new Set(samples.map((s) => s.replica))].sort()) {
    const mine = samples.filter((s) => s.replica === replica);
    const last = Math.max(...mine.map((s) => s.start));
    const run = mine.filter((s) => s.start === last);
    const first = run[0] as Sample;
    const end = run.at(-1) as Sample;
    const settled = run.filter((s) => s.t - first.t >= WARM_UP_SECONDS * 1000);
    out.push({
      replica,
      rssStart: first.rssMiB,
      rssPeak: Math.max(...run.map((s) => s.rssMiB)),
      rssEnd: end.rssMiB,
      rssSlopePerHour: slope(settled.map((s) => [(s.t - first.t) / 3_600_000, s.rssMiB] as const)),
      heapStart: first.heapMiB,
      heapEnd: end.heapMiB,
      loopP99Max: Math.max(...run.map((s) => s.loopP99Ms).filter(Number.isFinite)),
      loopP99Median: quantile(run.map((s) => s.loopP99Ms), 0.5),
      loopMax: Math.max(...run.map((s) => s.loopMaxMs).filter(Number.isFinite)),
      healthzP50: quantile(run.map((s) => s.healthzMs), 0.5),
      healthzP99: quantile(run.map((s) => s.healthzMs), 0.99),
      healthzMax: Math.max(...run.map((s) => s.healthzMs)),
      fdsStart: first.fds,
      fdsEnd: end.fds,
      fdsMax: Math.max(...run.map((s) => s.fds)),
      incarnations: last,
    });
  }
  return out;
}

const f1 = (n: number): string => (Number.isFinite(n) ? n.toFixed(1) : 'n/a');

export function markdown(result: SoakResult, context: { commit: string; node: string; rate: number; date: string }): string {
  const doors = Object.keys(result.byDoor);
  const answers = [...new Set(doors.flatMap((d) => Object.keys(result.byDoor[d] ?? {})))].sort();
  const lines: string[] = [];
  lines.push(`# Soak: ${Math.round(result.seconds / 60)} minutes of mixed load with faults`);
  lines.push('');
  lines.push(`${context.date}, commit ${context.commit}, Node ${context.node}, ${context.rate} req/s offered, \`SOAK_SECONDS=${Math.round(result.seconds)}\` (\`npm run soak\`, bench/soak/). ` +
    'Two replicas sharing Redis, each with the proxy door, both ext_authz doors and forward-auth; a real oidc-provider for API tokens and one for sign-in; a real app process; all on loopback, on the 2-core test machine.');
  lines.push('');
  lines.push('## Verdict');
  lines.push('');
  lines.push('| | count |');
  lines.push('|---|---:|');
  lines.push(`| requests | ${result.requests} |`);
  lines.push(`| wrong allows (an allow the oracle forbids, a wrong or spoofed identity, a wrong path) | ${result.wrongAllows} |`);
  lines.push(`| wrong denials outside fault windows | ${result.wrongDenialsOutsideFaults} |`);
  lines.push(`| wrong denials inside fault windows | ${result.wrongDenialsInFaults} |`);
  lines.push(`| denials with the wrong status (e.g. 403 where only 401 is right) | ${result.wrongStatuses} |`);
  lines.push(`| answers permitted only in a fault window (503, 502/504) | ${result.verdicts.permitted} |`);
  lines.push(`| failures outside fault windows | ${result.failuresOutsideFaults} |`);
  lines.push(`| withdrawn-key requests after the replica had dropped the key: refused (401, or 503 in an IdP outage) / all | ${result.withdrawnRefused} / ${result.withdrawnJudgedStrictly} |`);
  lines.push(`| log lines the replicas dropped | ${result.logLinesDropped} |`);
  lines.push(`| requests not sent (over 400 in flight) | ${result.shed} |`);
  lines.push(`| connections refused by a replica just taken out of rotation, sent to the other one | ${result.refusedRetried} |`);
  lines.push('');
  lines.push('Failures by kind (all, inside and outside fault windows): ' + (Object.keys(result.failures).length === 0 ? 'none.' : Object.entries(result.failures).map(([k, v]) => `${k} ${v}`).join(', ') + '.'));
  lines.push('');
  lines.push('## Requests by door and answer');
  lines.push('');
  lines.push(`| door | ${answers.join(' | ')} | total |`);
  lines.push(`|---|${answers.map(() => '---:').join('|')}|---:|`);
  for (const d of doors) {
    const row = result.byDoor[d] ?? {};
    lines.push(`| ${d} | ${answers.map((a) => row[a] ?? 0).join(' | ')} | ${Object.values(row).reduce((a, b) => a + b, 0)} |`);
  }
  lines.push('');
  lines.push('By kind of request: ' + Object.entries(result.byKind).sort((a, b) => b[1] - a[1]).map(([k, v]) => `${k} ${v}`).join(', ') + '.');
  lines.push('');
  lines.push('## Faults');
  lines.push('');
  lines.push('| fault | times |');
  lines.push('|---|---:|');
  for (const [k, v] of Object.entries(result.faults)) lines.push(`| ${k} | ${v} |`);
  lines.push('');
  lines.push('## Memory, event loop, file descriptors (sampled every second)');
  lines.push('');
  lines.push(`| replica | RSS start / peak / end (MiB) | RSS slope after ${WARM_UP_SECONDS} s (MiB/h) | heap start / end (MiB) | event-loop delay p99 per second, median / max; longest delay (ms) | GET /healthz p50 / p99 / max (ms) | fds start / end / max |`);
  lines.push('|---|---|---:|---|---|---|---|');
  for (const m of memory(result.samples)) {
    const note = m.incarnations > 1 ? ` (its last start of ${m.incarnations})` : '';
    lines.push(`| ${m.replica}${note} | ${f1(m.rssStart)} / ${f1(m.rssPeak)} / ${f1(m.rssEnd)} | ${f1(m.rssSlopePerHour)} | ${f1(m.heapStart)} / ${f1(m.heapEnd)} | ${f1(m.loopP99Median)} / ${f1(m.loopP99Max)}; ${f1(m.loopMax)} | ${f1(m.healthzP50)} / ${f1(m.healthzP99)} / ${f1(m.healthzMax)} | ${m.fdsStart} / ${m.fdsEnd} / ${m.fdsMax} |`);
  }
  lines.push('');
  const longest = [...result.samples].sort((a, b) => b.loopMaxMs - a.loopMaxMs).slice(0, 5);
  const before = (t: number): string => {
    const e = result.events.filter((x) => x.at <= t).at(-1);
    return e === undefined ? 'none yet' : `${e.name} ${Math.round((t - e.at) / 1000)} s before`;
  };
  lines.push('Longest event-loop delays (replica, second of the run, delay, the last fault before it): ' +
    longest.map((s) => `${s.replica} +${Math.round((s.t - result.started) / 1000)} s ${f1(s.loopMaxMs)} ms (${before(s.t)})`).join('; ') + '.');
  lines.push('');
  lines.push('Open file descriptors when idle (before the load, after it and its keep-alive timeouts): ' +
    Object.entries(result.idleFds).map(([r, f]) => `${r} ${f.before} → ${f.after}`).join(', ') + '. Replica B counts from its last start.');
  lines.push('');
  if (result.wrong.length > 0) {
    lines.push('## Wrong answers and failures (first 50)');
    lines.push('');
    lines.push('| +s | verdict | request | door | replica | method path | answer | in a fault window |');
    lines.push('|---:|---|---|---|---|---|---|---|');
    const t0 = Math.min(...result.samples.map((s) => s.t));
    for (const w of result.wrong.slice(0, 50)) {
      lines.push(`| ${Math.round((w.at - t0) / 1000)} | ${w.verdict} | ${w.kind} | ${w.door} | ${w.replica} | ${w.method} \`${w.path}\` | ${String(w.status).replace(/\|/g, '/')} | ${w.inFault ? 'yes' : 'no'} |`);
    }
    lines.push('');
  }
  lines.push('Session refreshes (both replicas): ' + (Object.keys(result.refreshes).length === 0 ? 'none.' : Object.entries(result.refreshes).map(([k, v]) => `${k} ${v}`).join(', ') + '.'));
  lines.push('');
  lines.push('Error log lines of the replicas: ' + (Object.keys(result.errorLogs).length === 0 ? 'none.' : Object.entries(result.errorLogs).map(([k, v]) => `"${k}" ${v}`).join('; ') + '.'));
  lines.push('');
  lines.push('## Findings');
  lines.push('');
  lines.push(result.findings.length === 0 ? 'None.' : result.findings.map((f) => `- ${f}`).join('\n'));
  lines.push('');
  return lines.join('\n');
}
