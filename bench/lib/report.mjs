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

export function renderMarkdown(result) {
  const out = [];
  const v = result.versions;
  out.push(`# authz-sidecar benchmark`, '');
  out.push(`Run ${result.date} with \`${result.command}\`: ${result.secondsPerRow} s per row after a 2 s warm-up, ${result.connections} connections (wrk, one thread) unless the row says otherwise. Rows 1-5t ran interleaved in ${result.rounds} rounds and show their median round (req/s range in the last column).`);
  out.push(`Machine: ${result.machine.cpu}, ${result.machine.cores} cores, ${result.machine.memoryGiB} GiB, Linux ${result.machine.kernel}. Server under test pinned to core 0; load generator and the shared upstream (nginx) pinned to core 1; loopback only.`);
  out.push(`Versions: Node ${v.node}, nginx ${v.nginx}, Apache ${v.apache}, mod_auth_openidc ${v.modAuthOpenidc}, wrk ${v.wrk}, h2load ${v.h2load}, fastify ${v.fastify}, @fastify/http-proxy ${v.fastifyHttpProxy}, casbin ${v.casbin}, authz-sidecar ${v.authzSidecar}.`, '');
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
  out.push('', '## Ratios between rows', '', '| comparison | req/s ratio | CPU per request ratio |', '|---|---:|---:|');
  ratio('5', '4', 'sidecar proxy (5) / Apache mod_auth_openidc (4)');
  ratio('5', '3', 'sidecar proxy (5) / bare @fastify/http-proxy (3)');
  ratio('5t', '4', 'sidecar proxy as deployed (5t) / Apache mod_auth_openidc (4)');
  ratio('5t', '3', 'sidecar proxy as deployed (5t) / bare @fastify/http-proxy (3)');
  ratio('5', '2', 'sidecar proxy (5) / nginx proxy (2)');
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
