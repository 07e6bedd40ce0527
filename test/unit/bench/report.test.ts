/**
 * The benchmark's own arithmetic (bench/lib): reading wrk's report and turning rows into the ratios and
 * verdicts docs/performance.md quotes. The benchmark itself is not run by `npm test` (it takes minutes and needs
 * both cores to itself); these keep its reading and judging honest.
 */
import { describe, expect, it } from 'vitest';
// @ts-expect-error -- plain .mjs without types, run directly by `npm run bench`
import * as loadModule from '../../../bench/lib/load.mjs';
// @ts-expect-error -- plain .mjs without types
import * as reportModule from '../../../bench/lib/report.mjs';

interface Target {
  name: string;
  measured: number | undefined;
  met: boolean | undefined;
}
const { parseWrk, percentile } = loadModule as unknown as {
  parseWrk: (text: string) => Record<string, number | undefined>;
  percentile: (sorted: number[], p: number) => number | undefined;
};
interface BeforeAfter {
  after: string;
  before: string;
  rpsRatio: number | undefined;
  cpuRatio: number | undefined;
  rpsWithin: boolean | undefined;
  cpuWithin: boolean | undefined;
  within: boolean | undefined;
}
const { renderMarkdown, targets, beforeAfter } = reportModule as unknown as {
  renderMarkdown: (result: object) => string;
  targets: (result: object) => Target[];
  beforeAfter: (result: object) => BeforeAfter[];
};

/** wrk 4.1.0 output captured on this project's machine against nginx `return 200`. */
const WRK_OUTPUT = `Running 1s test @ http://127.0.0.1:39911/x
  1 threads and 4 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    82.21us  386.46us   6.33ms   97.96%
    Req/Sec    95.80k    14.35k  104.66k    90.00%
  Latency Distribution
     50%   35.00us
     75%   37.00us
     90%   50.00us
     99%    1.92ms
  94845 requests in 1.00s, 13.48MB read
Requests/sec:  94687.16
Transfer/sec:     13.45MB
`;

describe('parseWrk', () => {
  it('reads requests, req/s and the p50/p99 latencies in milliseconds, whatever unit wrk printed', () => {
    expect(parseWrk(WRK_OUTPUT)).toEqual({ requests: 94845, rps: 94687.16, p50Ms: 0.035, p99Ms: 1.92, non2xx: 0, socketErrors: 0 });
  });

  it('counts failed requests, so that a row measuring errors is refused', () => {
    const failing = WRK_OUTPUT.replace(
      'Requests/sec:',
      '  Socket errors: connect 0, read 3, write 1, timeout 2\n  Non-2xx or 3xx responses: 17\nRequests/sec:',
    );
    expect(parseWrk(failing)).toMatchObject({ non2xx: 17, socketErrors: 6 });
  });

  it('refuses output it cannot read rather than report zeros', () => {
    expect(() => parseWrk('unable to connect to 127.0.0.1:1 Connection refused')).toThrow(/cannot read wrk output/);
  });
});

describe('percentile', () => {
  it('takes the value at the rank, and nothing from an empty sample', () => {
    const sorted = Array.from({ length: 100 }, (_, i) => i + 1);
    expect(percentile(sorted, 50)).toBe(51);
    expect(percentile(sorted, 99)).toBe(100);
    expect(percentile([], 50)).toBeUndefined();
  });
});

describe('targets', () => {
  const row = (id: string, rps: number, p50Ms = 1, peakRssMiB = 100) => ({ id, name: id, rps, p50Ms, p99Ms: 2, cpuSecondsPer10k: 1, peakRssMiB });
  const run = (rows: unknown[], policyScale?: unknown[]) => ({ rows, ...(policyScale ? { policyScale } : {}) });
  const find = (list: Target[], start: string): Target => list.find((t) => t.name.startsWith(start))!;

  it('judges each target as a ratio or limit of rows of the same run', () => {
    const list = targets(
      run(
        [row('1m', 1000, 0.1), row('3', 1000), row('4', 400), row('5', 1300), row('5m', 900, 0.2, 150), row('5t', 1250, 1, 70), row('7g', 16_000), row('7h', 20_000, 1, 90)],
        [
          { lines: 10_000, readyMs: 450, indexed: { p99Ms: 0.01 } },
          { lines: 100_000, readyMs: 900, indexed: { p99Ms: 2 } },
        ],
      ),
    );
    expect(find(list, 'proxy door req/s vs Apache')).toMatchObject({ measured: 3.25, met: true });
    expect(find(list, 'proxy door req/s vs bare')).toMatchObject({ measured: 1.3, met: true });
    expect(find(list, 'added p50 latency over')).toMatchObject({ met: true });
    expect(find(list, 'added p50 latency over').measured).toBeCloseTo(0.1);
    expect(find(list, 'ext_authz gRPC')).toMatchObject({ measured: 16_000, met: true });
    expect(find(list, 'ext_authz HTTP')).toMatchObject({ measured: 20_000, met: false });
    // Rows 5, 6, 7g and 7h are the loaded ones (5m is a light load).
    expect(find(list, 'peak RSS under load, Node defaults')).toMatchObject({ measured: 100, met: false });
    expect(find(list, 'peak RSS under load, proxy door as deployed')).toMatchObject({ measured: 70, met: true });
    expect(find(list, 'ready with a 10k-line')).toMatchObject({ measured: 450, met: true });
    expect(find(list, '100k-line policy')).toMatchObject({ measured: 2, met: false });
  });

  it('says "not measured" for a target whose rows did not run, never "met"', () => {
    const result = { date: 'd', command: 'c', secondsPerRow: 1, rounds: 1, connections: 1, machine: { cpu: 'x', cores: 2, memoryGiB: 1, kernel: 'k' }, versions: {}, ...run([row('5', 1000)]) };
    const list = targets(result);
    expect(find(list, 'proxy door req/s vs Apache')).toMatchObject({ measured: undefined, met: undefined });
    const markdown = renderMarkdown({ ...result, targets: list });
    expect(markdown).toContain('| proxy door req/s vs Apache mod_auth_openidc | ≥ 2.5× | n/a× | not measured |');
    expect(markdown).not.toMatch(/\| yes \|/);
  });
});

describe('beforeAfter', () => {
  const row = (id: string, rps: number, cpuSecondsPer10k: number | undefined, baselineOf?: string) => ({
    id,
    name: `row ${id}`,
    rps,
    p50Ms: 1,
    p99Ms: 2,
    cpuSecondsPer10k,
    peakRssMiB: 100,
    ...(baselineOf ? { baselineOf } : {}),
  });
  const header = { date: 'd', command: 'c', secondsPerRow: 1, rounds: 3, connections: 64, machine: { cpu: 'x', cores: 2, memoryGiB: 1, kernel: 'k' }, versions: {} };

  it('pairs each baseline row with its row: after / before for req/s and CPU per 10k requests', () => {
    const list = beforeAfter({ rows: [row('5', 10_000, 0.7), row('5b', 9_000, 0.8, '5'), row('7h', 12_000, 0.75), row('7hb', 12_000, 0.75, '7h')] });
    expect(list.map((p) => [p.after, p.before])).toEqual([
      ['5', '5b'],
      ['7h', '7hb'],
    ]);
    expect(list[0]!.rpsRatio).toBeCloseTo(10_000 / 9_000);
    expect(list[0]!.cpuRatio).toBeCloseTo(0.875);
    expect(list[0]).toMatchObject({ within: true });
    expect(list[1]).toMatchObject({ rpsRatio: 1, cpuRatio: 1, within: true });
  });

  it('counts exactly 5% worse as within, and anything worse as not, for req/s and for CPU alike', () => {
    const list = beforeAfter({
      rows: [
        row('5', 9_500, 1.05), row('5b', 10_000, 1, '5'), // on both bounds
        row('5t', 9_499, 1), row('5tb', 10_000, 1, '5t'), // req/s just below
        row('7g', 10_000, 1.1865), row('7gb', 10_000, 1.13, '7g'), // CPU 1.05, a hair above after floating-point division
        row('7h', 10_000, 1.051), row('7hb', 10_000, 1, '7h'), // CPU just above
      ],
    });
    expect(list.map((p) => [p.after, p.rpsWithin, p.cpuWithin, p.within])).toEqual([
      ['5', true, true, true],
      ['5t', false, true, false],
      ['7g', true, true, true],
      ['7h', true, false, false],
    ]);
  });

  it('pairs rounds when both rows kept them: the median of each round after / before, with its range', () => {
    // Round 2 ran while the machine was busy for the baseline only; the medians of the rows would call the
    // change 12% faster, the rounds side by side say it is the same.
    const rounds = (list: Array<[number, number]>) => list.map(([rps, cpuSecondsPer10k]) => ({ rps, cpuSecondsPer10k }));
    const list = beforeAfter({
      rows: [
        { ...row('7h', 10_000, 1), roundResults: rounds([[10_000, 1], [11_000, 0.9], [9_000, 1.1]]) },
        { ...row('7hb', 9_000, 1.1, '7h'), roundResults: rounds([[10_100, 0.99], [5_000, 2], [9_000, 1.1]]) },
      ],
    }) as Array<BeforeAfter & { rpsRatioRange?: number[]; cpuRatioRange?: number[]; paired?: boolean }>;
    expect(list[0]!.paired).toBe(true);
    expect(list[0]!.rpsRatio).toBeCloseTo(1);
    expect(list[0]!.cpuRatio).toBeCloseTo(1);
    expect(list[0]!.rpsRatioRange![0]).toBeCloseTo(10_000 / 10_100);
    expect(list[0]!.rpsRatioRange![1]).toBeCloseTo(2.2);
    expect(list[0]!.cpuRatioRange![0]).toBeCloseTo(0.45);
    expect(list[0]!.within).toBe(true);
    // Rounds of different counts cannot be paired: the rows' own figures decide.
    const unpaired = beforeAfter({
      rows: [
        { ...row('5', 9_000, 1), roundResults: rounds([[9_000, 1], [9_000, 1]]) },
        { ...row('5b', 10_000, 1, '5'), roundResults: rounds([[10_000, 1], [10_000, 1], [10_000, 1]]) },
      ],
    }) as Array<BeforeAfter & { paired?: boolean }>;
    expect(unpaired[0]).toMatchObject({ paired: false, rpsRatio: 0.9, within: false });
  });

  it('gives no verdict for a pair missing a number, and no pair for a baseline row whose row did not run', () => {
    const list = beforeAfter({ rows: [row('5', 10_000, undefined), row('5b', 10_000, 1, '5'), row('7hb', 10_000, 1, '7h')] });
    expect(list).toHaveLength(1);
    expect(list[0]).toMatchObject({ after: '5', cpuRatio: undefined, within: undefined });
  });

  it('renders the table with a verdict per pair, and no table for a run without a baseline', () => {
    const result = {
      ...header,
      baseline: { path: '/work/baseline', commit: '7dee40e' },
      rows: [{ ...row('5', 10_000, 0.7), rpsRange: [9_800, 10_100] }, { ...row('5b', 10_000, 0.7, '5'), rpsRange: [9_500, 10_200] }, row('7h', 9_000, 0.8), row('7hb', 10_000, 0.7, '7h')],
    };
    const markdown = renderMarkdown({ ...result, targets: targets(result), beforeAfter: beforeAfter(result) });
    expect(markdown).toContain('## Before / after (baseline 7dee40e)');
    expect(markdown).toContain('| 5 vs 5b: row 5 | 10000 / 10000 | 1.000 | 0.700 / 0.700 | 1.000 | 3% / 7% | within 5% |');
    expect(markdown).toContain('| 7h vs 7hb: row 7h | 9000 / 10000 | 0.900 | 0.800 / 0.700 | 1.143 | n/a / n/a | **no** (req/s −10.0%, CPU +14.3%) |');
    const plain = { ...header, rows: [row('5', 10_000, 0.7)] };
    expect(renderMarkdown({ ...plain, targets: targets(plain) })).not.toContain('Before / after');
  });
});
