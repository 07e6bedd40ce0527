/** The targets of issue 9 as ratios and limits read from one run, and the Markdown report. */

const byId = (result, id) => result.rows.find((r) => r.id === id);
const fmt = (x, digits = 2) => (x === undefined || x === null || Number.isNaN(x) ? 'n/a' : Number(x).toFixed(digits));

/** Each target: what it compares, the measured value and whether it is met (undefined when not measured). */
export function targets(result) {
  const row = (id) => byId(result, id);
  const ratio = (a, b) => (row(a) && row(b) ? row(a).rps / row(b).rps : undefined);
  const scale = (lines) => result.policyScale?.find((s) => s.lines === lines);
  const loaded = ['5', '6', '7g', '7h'].map(row).filter(Boolean);
  const list = [
    { name: 'proxy door req/s vs Apache mod_auth_openidc', measured: ratio('5', '4'), goal: 2.5, unit: 'x', atLeast: true },
    { name: 'proxy door req/s vs bare @fastify/http-proxy', measured: ratio('5', '3'), goal: 1.2, unit: 'x', atLeast: true },
    {
      name: 'added p50 latency over the upstream alone, moderate load',
      measured: row('5m') && row('1m') ? row('5m').p50Ms - row('1m').p50Ms : undefined,
      goal: 0.15,
      unit: 'ms',
      atLeast: false,
    },
    {
      name: 'added p50 latency of a bare @fastify/http-proxy, same load (the Node floor, for reference)',
      measured: row('3m') && row('1m') ? row('3m').p50Ms - row('1m').p50Ms : undefined,
      goal: 0.15,
      unit: 'ms',
      atLeast: false,
      reference: true,
    },
    { name: 'ext_authz gRPC checks/s on one core', measured: row('7g')?.rps, goal: 15_000, unit: '/s', atLeast: true },
    { name: 'ext_authz HTTP checks/s on one core', measured: row('7h')?.rps, goal: 30_000, unit: '/s', atLeast: true },
    { name: 'peak RSS under load, Node defaults (rows 5-7)', measured: loaded.length ? Math.max(...loaded.map((r) => r.peakRssMiB)) : undefined, goal: 80, unit: 'MiB', atLeast: false },
    { name: 'peak RSS under load, proxy door as deployed (row 5t)', measured: row('5t')?.peakRssMiB, goal: 80, unit: 'MiB', atLeast: false },
    { name: 'ready with a 10k-line policy', measured: scale(10_000)?.readyMs, goal: 500, unit: 'ms', atLeast: false },
    { name: '100k-line policy, p99 decision, cache cold', measured: scale(100_000)?.indexed.p99Ms, goal: 1, unit: 'ms', atLeast: false },
  ];
  return list.map((t) => ({ ...t, met: t.measured === undefined ? undefined : t.atLeast ? t.measured >= t.goal : t.measured <= t.goal }));
}

/** The issue's bound for a refactor: req/s and CPU per request each within 5% of before, or better. */
export const BEFORE_AFTER_TOLERANCE = 0.05;
/** Ratios are of rounded numbers: a ratio this close to the bound counts as on it. */
const EPSILON = 1e-9;

/** The median of numbers (the mean of the middle two for an even count); undefined for none. */
function median(values) {
  if (values.length === 0) return undefined;
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

/**
 * Each row run against a baseline build (a row with `baselineOf`, and the row it is the baseline of): req/s
 * after / before and CPU seconds per 10k requests after / before, and whether both are within the tolerance
 * (req/s ratio ≥ 0.95, CPU ratio ≤ 1.05); `within` is undefined when a number is missing.
 *
 * When both rows kept their rounds (`roundResults`, one per round, in order), the ratios are paired: each
 * round's after / before, taken back to back, and the verdict reads the median of those. On a shared
 * machine the load moves over minutes, so two rows measured seconds apart see the same machine far more
 * often than the medians of two rows over a whole run do. `rpsRatioRange` and `cpuRatioRange` give the
 * smallest and largest paired ratio. Otherwise the ratios are of the rows' own (median) figures.
 */
export function beforeAfter(result, tolerance = BEFORE_AFTER_TOLERANCE) {
  const out = [];
  for (const before of result.rows.filter((r) => r.baselineOf !== undefined)) {
    const after = byId(result, before.baselineOf);
    if (!after) continue;
    const ratio = (a, b) => (typeof a === 'number' && typeof b === 'number' && b > 0 ? a / b : undefined);
    const paired = (key) => {
      const a = after.roundResults;
      const b = before.roundResults;
      if (!Array.isArray(a) || !Array.isArray(b) || a.length !== b.length || a.length < 2) return undefined;
      const ratios = a.map((x, i) => ratio(x[key], b[i][key]));
      if (ratios.some((r) => r === undefined)) return undefined;
      return { median: median(ratios), range: [Math.min(...ratios), Math.max(...ratios)] };
    };
    const rpsPaired = paired('rps');
    const cpuPaired = paired('cpuSecondsPer10k');
    const rpsRatio = rpsPaired?.median ?? ratio(after.rps, before.rps);
    const cpuRatio = cpuPaired?.median ?? ratio(after.cpuSecondsPer10k, before.cpuSecondsPer10k);
    // (max - min) / median req/s over the rounds: the machine's noise, to read the verdict against.
    const spread = (r) => (r.rpsRange && r.rps > 0 ? (r.rpsRange[1] - r.rpsRange[0]) / r.rps : undefined);
    const rpsWithin = rpsRatio === undefined ? undefined : rpsRatio >= 1 - tolerance - EPSILON;
    const cpuWithin = cpuRatio === undefined ? undefined : cpuRatio <= 1 + tolerance + EPSILON;
    out.push({
      after: after.id,
      before: before.id,
      name: after.name,
      rpsAfter: after.rps,
      rpsBefore: before.rps,
      rpsRatio,
      rpsRatioRange: rpsPaired?.range,
      cpuAfter: after.cpuSecondsPer10k,
      cpuBefore: before.cpuSecondsPer10k,
      cpuRatio,
      cpuRatioRange: cpuPaired?.range,
      paired: rpsPaired !== undefined && cpuPaired !== undefined,
      rpsWithin,
      cpuWithin,
      within: rpsWithin === undefined || cpuWithin === undefined ? undefined : rpsWithin && cpuWithin,
      spreadAfter: spread(after),
      spreadBefore: spread(before),
    });
  }
  return out;
}

/** The before / after table's lines (none when no row ran against a baseline). */
export function renderBeforeAfter(result, list = result.beforeAfter ?? beforeAfter(result)) {
  if (list.length === 0) return [];
  const pct = (ratio) => `${ratio >= 1 ? '+' : '−'}${Math.abs((ratio - 1) * 100).toFixed(1)}%`;
  const verdict = (p) => {
    if (p.within === undefined) return 'not measured';
    if (p.within) return 'within 5%';
    const why = [];
    if (!p.rpsWithin) why.push(`req/s ${pct(p.rpsRatio)}`);
    if (!p.cpuWithin) why.push(`CPU ${pct(p.cpuRatio)}`);
    return `**no** (${why.join(', ')})`;
  };
  const out = ['', `## Before / after${result.baseline ? ` (baseline ${result.baseline.commit})` : ''}`, ''];
  out.push(
    `Each row next to the same row run by the baseline build (id ending in b), same config and load, interleaved in the same rounds (back to back, the first of the two alternating by round, each a new process every round). Within 5%: req/s after / before ≥ 0.95 and CPU s / 10k after / before ≤ 1.05. The ratios are paired: the median over the rounds of each round's after / before (the two ran seconds apart, on the same machine load), with the smallest and largest round's ratio in brackets; the req/s and CPU columns are each row's median round. Round spread: (max - min) / median req/s of each row over its rounds, the machine's noise.`,
    '',
  );
  const spread = (x) => (x === undefined ? 'n/a' : `${(x * 100).toFixed(0)}%`);
  const withRange = (r, range) => (range === undefined ? fmt(r, 3) : `${fmt(r, 3)} [${fmt(range[0], 2)}-${fmt(range[1], 2)}]`);
  out.push('| row | req/s after / before | ratio | CPU s / 10k after / before | ratio | round spread after / before | verdict |', '|---|---:|---:|---:|---:|---:|---|');
  for (const p of list) {
    out.push(
      `| ${p.after} vs ${p.before}: ${p.name} | ${p.rpsAfter} / ${p.rpsBefore} | ${withRange(p.rpsRatio, p.rpsRatioRange)} | ${fmt(p.cpuAfter, 3)} / ${fmt(p.cpuBefore, 3)} | ${withRange(p.cpuRatio, p.cpuRatioRange)} | ${spread(p.spreadAfter)} / ${spread(p.spreadBefore)} | ${verdict(p)} |`,
    );
  }
  return out;
}

export function renderMarkdown(result) {
  const out = [];
  const v = result.versions;
  out.push(`# authz-sidecar benchmark`, '');
  out.push(`Run ${result.date} with \`${result.command}\`: ${result.secondsPerRow} s per row after a 2 s warm-up, ${result.connections} connections (wrk, one thread) unless the row says otherwise. Rows 1-5t${result.baseline ? ', 7g, 7h and the baseline rows (id ending in b)' : ''} ran interleaved in ${result.rounds} round${result.rounds === 1 ? '' : 's'} and show their median round (req/s range in the last column).`);
  out.push(`Machine: ${result.machine.cpu}, ${result.machine.cores} cores, ${result.machine.memoryGiB} GiB, Linux ${result.machine.kernel}. Server under test pinned to core 0; load generator and the shared upstream (nginx) pinned to core 1; loopback only.`);
  out.push(`Versions: Node ${v.node}, nginx ${v.nginx}, Apache ${v.apache}, mod_auth_openidc ${v.modAuthOpenidc}, wrk ${v.wrk}, h2load ${v.h2load}, fastify ${v.fastify}, @fastify/http-proxy ${v.fastifyHttpProxy}, casbin ${v.casbin}, authz-sidecar ${v.authzSidecar}${v.baseline ? `, baseline authz-sidecar ${v.baseline} (${result.baseline?.path ?? 'another checkout'})` : ''}.`, '');
  const upstream = byId(result, '1');
  out.push('| # | row | req/s | × upstream | p50 ms | p99 ms | CPU s / 10k req | peak RSS MiB | req/s range |', '|---|---|---:|---:|---:|---:|---:|---:|---:|');
  for (const r of result.rows) {
    const range = r.rpsRange ? `${r.rpsRange[0]}-${r.rpsRange[1]}` : '';
    out.push(`| ${r.id} | ${r.name} | ${r.rps} | ${upstream ? fmt(r.rps / upstream.rps) : 'n/a'} | ${fmt(r.p50Ms, 3)} | ${fmt(r.p99Ms, 3)} | ${fmt(r.cpuSecondsPer10k)} | ${fmt(r.peakRssMiB, 1)} | ${range} |`);
  }
  const ratio = (a, b, what) => {
    const [x, y] = [byId(result, a), byId(result, b)];
    if (x && y) out.push(`| ${what} | ${fmt(x.rps / y.rps)} | ${fmt(x.cpuSecondsPer10k / y.cpuSecondsPer10k)} |`);
  };
  out.push(...renderBeforeAfter(result));
  out.push('', '## Ratios between rows', '', '| comparison | req/s ratio | CPU per request ratio |', '|---|---:|---:|');
  ratio('5', '4', 'sidecar proxy (5) / Apache mod_auth_openidc (4)');
  ratio('5', '3', 'sidecar proxy (5) / bare @fastify/http-proxy (3)');
  ratio('5t', '4', 'sidecar proxy as deployed (5t) / Apache mod_auth_openidc (4)');
  ratio('5t', '3', 'sidecar proxy as deployed (5t) / bare @fastify/http-proxy (3)');
  ratio('5', '2', 'sidecar proxy (5) / nginx proxy (2)');
  ratio('5u', '5', 'upstream on a unix socket (5u) / on loopback TCP (5)');
  ratio('5s', '5', 'browser session cookie (5s) / bearer token (5)');
  ratio('5r', '5s', 'session in Redis (5r) / in the cookie (5s)');
  ratio('5o', '5', 'tracing on, 100% sampled (5o) / off (5)');
  ratio('6', '5', 'cold caches (6) / warm (5)');
  ratio('7h', '5', 'ext_authz HTTP (7h) / sidecar proxy (5)');
  ratio('7g', '7h', 'ext_authz gRPC (7g) / ext_authz HTTP (7h)');
  if (result.policyScale) {
    out.push('', '## Policy scale (row 8)', '');
    out.push('Decision latency with the decision cache off (every decision evaluated), random requests (mostly denied), in one process pinned to core 0; ready = process start to `/readyz` 200, median of 3.', '');
    out.push('| policy lines | load ms | ready ms | indexed p50 ms | indexed p99 ms | plain Casbin p50 ms | plain Casbin p99 ms | plain / indexed p99 |', '|---:|---:|---:|---:|---:|---:|---:|---:|');
    for (const s of result.policyScale) {
      out.push(`| ${s.lines} | ${s.loadMs} | ${s.readyMs ?? 'n/a'} | ${fmt(s.indexed.p50Ms, 4)} | ${fmt(s.indexed.p99Ms, 4)} | ${fmt(s.plain.p50Ms, 3)} | ${fmt(s.plain.p99Ms, 3)} | ${fmt(s.plain.p99Ms / s.indexed.p99Ms, 0)} |`);
    }
  }
  out.push('', '## Targets', '', '| target | goal | measured | met |', '|---|---:|---:|---|');
  for (const t of result.targets.filter((x) => !x.reference)) {
    out.push(`| ${t.name} | ${t.atLeast ? '≥' : '≤'} ${t.goal}${t.unit === 'x' ? '×' : ` ${t.unit}`} | ${fmt(t.measured, t.unit === '/s' ? 0 : 2)}${t.unit === 'x' ? '×' : ` ${t.unit}`} | ${t.met === undefined ? 'not measured' : t.met ? 'yes' : '**no**'} |`);
  }
  for (const t of result.targets.filter((x) => x.reference)) {
    out.push('', `Reference: ${t.name}: ${fmt(t.measured, 2)} ms.`);
  }
  return `${out.join('\n')}\n`;
}
