/**
 * CPU time and peak memory of a server's whole process tree (nginx and Apache run workers), read from
 * /proc: utime+stime of every live process under the root, and the sum of their VmHWM (peak resident set).
 */
import { readdirSync, readFileSync } from 'node:fs';

const CLOCK_TICKS = 100; // USER_HZ on Linux

function readStat(pid) {
  try {
    const text = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // The command name (field 2) is in parentheses and may hold spaces: fields count from after it.
    const rest = text.slice(text.lastIndexOf(')') + 2).split(' ');
    return { ppid: Number(rest[1]), cpuTicks: Number(rest[11]) + Number(rest[12]) };
  } catch {
    return undefined; // the process ended
  }
}

/** The pid and every descendant. */
export function processTree(root) {
  const children = new Map();
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    const stat = readStat(entry);
    if (stat === undefined) continue;
    const list = children.get(stat.ppid) ?? [];
    list.push(Number(entry));
    children.set(stat.ppid, list);
  }
  const out = [root];
  for (let i = 0; i < out.length; i++) out.push(...(children.get(out[i]) ?? []));
  return out;
}

/** CPU seconds used so far by the tree. */
export function cpuSeconds(root) {
  let ticks = 0;
  for (const pid of processTree(root)) ticks += readStat(pid)?.cpuTicks ?? 0;
  return ticks / CLOCK_TICKS;
}

/** Peak RSS of the tree in MiB (sum of each process's high-water mark). */
export function peakRssMiB(root) {
  let kib = 0;
  for (const pid of processTree(root)) {
    try {
      const match = /^VmHWM:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
      if (match) kib += Number(match[1]);
    } catch {
      // ended
    }
  }
  return kib / 1024;
}

/**
 * Stops a server and waits until every process of its tree is gone (Apache's workers outlive the parent's
 * exit for a moment), so the next row has the core to itself. Leftovers after 15 s are killed.
 */
export async function stopTree(pid, stop) {
  const pids = processTree(pid);
  await stop();
  const deadline = Date.now() + 15_000;
  for (;;) {
    const alive = pids.filter((p) => readStat(p) !== undefined);
    if (alive.length === 0) return;
    if (Date.now() > deadline) {
      for (const p of alive) {
        try {
          process.kill(p, 'SIGKILL');
        } catch {
          // gone meanwhile
        }
      }
      return;
    }
    await new Promise((r) => setTimeout(r, 50));
  }
}
