/**
 * The soak's short run (issue #18): the same code as `npm run soak` (bench/soak/), for about 60 s at a rate
 * this shared machine keeps up with while another test file runs beside it. Two replicas sharing a real
 * redis-server, all four doors, real oidc-providers and a real app process, while keys rotate, policies are
 * swapped and broken, SIGHUP, the IdP, introspection, the app and Redis go down and come back, one replica
 * restarts under load and a session is signed out. The oracle (bench/soak/oracle.ts) judged every answer.
 * Asserted: no wrong allow, no wrong denial and no failure outside the fault windows, no wrong deny status,
 * no file descriptors left behind; and that the run did what it claims (every door, every fault, every kind
 * of request). No timing is asserted.
 */
import { describe, expect, it } from 'vitest';
import { runSoak, type SoakResult } from '../../bench/soak/run.js';

describe('soak: a minute of mixed load through every door while everything fails', () => {
  let result: SoakResult;

  it('runs the load and the fault schedule', async () => {
    result = await runSoak({ seconds: 60, rate: 200 });
    expect(result.requests).toBeGreaterThan(5_000);
  }, 240_000);

  it('never allowed a request it should not have, never with a wrong identity or path', () => {
    expect(result.wrong.filter((w) => w.verdict.startsWith('wrong allow') || w.verdict === 'wrong identity' || w.verdict === 'wrong path')).toEqual([]);
    expect(result.wrongAllows).toBe(0);
  });

  it('denied nothing it had to allow, in fault windows or out of them, and gave every denial its right status', () => {
    // Fault windows permit 503 (keys, introspection, sessions unavailable) and 502/504 (the app down), never a 400, 401 or 403.
    expect(result.wrong.filter((w) => w.verdict === 'wrong denial' || w.verdict === 'wrong status')).toEqual([]);
    expect(result.wrongDenialsOutsideFaults).toBe(0);
    expect(result.wrongDenialsInFaults).toBe(0);
    expect(result.wrongStatuses).toBe(0);
  });

  it('refused every token of a withdrawn key once the replica had fetched a key set without it', () => {
    // Replica A runs throughout: it had verified and cached these tokens before their key was withdrawn.
    expect(result.withdrawnStrictBy['A'] ?? 0).toBeGreaterThan(0);
    expect(result.withdrawnRefused).toBe(result.withdrawnJudgedStrictly);
  });

  it('failed no request outside the fault windows (no 500, reset, refusal or missing answer)', () => {
    expect(result.wrong.filter((w) => w.verdict === 'failure' && !w.inFault)).toEqual([]);
    expect(result.failuresOutsideFaults).toBe(0);
    expect(result.failures['500'] ?? 0).toBe(0);
  });

  it('left no file descriptors behind once the load and its connections were gone', () => {
    for (const [replica, fds] of Object.entries(result.idleFds)) {
      expect(Number.isFinite(fds.after), replica).toBe(true);
      // The Redis connection, the IdP and app keep-alive pools may differ by a few sockets either way.
      expect(fds.after - fds.before, `replica ${replica}: ${fds.before} -> ${fds.after}`).toBeLessThanOrEqual(4);
    }
  });

  it('went through every door, with every kind of request, and ran every fault', () => {
    for (const door of ['proxy', 'http', 'grpc', 'forward']) {
      const row = result.byDoor[door] ?? {};
      expect(row['200'] ?? 0, door).toBeGreaterThan(0);
      expect((row['401'] ?? 0) + (row['403'] ?? 0), door).toBeGreaterThan(0);
    }
    for (const kind of ['valid token', 'churned token', 'expired token', 'wrong audience', 'unknown key', 'no token', 'spoofed headers', 'odd path', 'opaque token', 'session cookie', 'ended session', 'withdrawn key']) {
      expect(result.byKind[kind] ?? 0, kind).toBeGreaterThan(0);
    }
    for (const fault of [
      'policy replaced (..data swap)',
      'introspection down',
      'SIGHUP',
      'app killed and restarted',
      'broken policy written',
      'Redis restarted',
      'IdP down and up',
      'replica restarted (SIGTERM, drain, start)',
      'sign-out',
      'JWKS rotation (new key, old key removed)',
    ]) {
      expect(result.faults[fault] ?? 0, fault).toBeGreaterThan(0);
    }
    // Faults were felt: answers that are right only inside a window happened.
    expect(result.verdicts.permitted).toBeGreaterThan(0);
    expect(result.findings).toEqual([]);
    expect(result.logLinesDropped).toBe(0);
    // The only errors the replicas logged are the faults' own: the broken policy, Redis down.
    for (const message of Object.keys(result.errorLogs)) expect(message).toMatch(/^(policy reload failed|the redis session store is unreachable)/);
  });
});
