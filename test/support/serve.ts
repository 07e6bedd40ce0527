/**
 * The real sidecar as a process (bin/authz-sidecar.js, which runs dist/bundle: build first): spawns it,
 * collects its output, waits for the "authz-sidecar listening" log line and parses the bound addresses out
 * of it (so configs can listen on port 0), optionally waits for /readyz, and stops it with a signal,
 * resolving with the exit code. Any process still running when the test worker exits is killed.
 */
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { stringify } from 'yaml';
import { BIN, ROOT } from './cli.js';

/** The message of the log line `startSidecar` writes once every listener is bound. */
export const LISTENING_MESSAGE = 'authz-sidecar listening';

/** The bound addresses (`host:port` or `unix:/path`) as the listening line names them. */
export interface ServeAddresses {
  readonly admin: string;
  readonly proxy?: string;
  readonly http?: string;
  readonly grpc?: string;
  readonly forwardAuth?: string;
  readonly upstream?: string;
}

export interface Exit {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
  /** Date.now() when the process exited. */
  readonly at: number;
}

export interface CliProcess {
  readonly child: ChildProcessWithoutNullStreams;
  /** stdout and stderr, interleaved as they arrived. */
  output(): string;
  stdout(): string;
  stderr(): string;
  /**
   * Resolves once the output (or only stdout) matches `marker`; rejects if the process exits first or after
   * `timeoutMs`.
   */
  waitForOutput(marker: string | RegExp, timeoutMs?: number, from?: 'output' | 'stdout'): Promise<void>;
  /** Resolves when the process has exited (at once if it already has). */
  readonly exit: Promise<Exit>;
  /** Sends a signal without waiting. */
  signal(signal: NodeJS.Signals): void;
  /**
   * Sends `signal` (SIGTERM by default) unless the process already exited, and resolves with its exit code.
   * A process still running after `timeoutMs` is killed with SIGKILL and the promise rejects with its output.
   */
  stop(signal?: NodeJS.Signals, timeoutMs?: number): Promise<number | null>;
}

export interface ServeProcess extends CliProcess {
  readonly addresses: ServeAddresses;
  /** `http://` + the proxy address (undefined without a proxy listener). */
  readonly url: string | undefined;
  readonly adminUrl: string;
  /** The listening log line, parsed. */
  readonly listening: Readonly<Record<string, unknown>>;
  /** Every stdout line that is JSON (pino's log lines), parsed. */
  logLines(): Array<Record<string, unknown>>;
}

const running = new Set<ChildProcessWithoutNullStreams>();
process.once('exit', () => {
  for (const child of running) child.kill('SIGKILL');
});

function tail(text: string): string {
  return text.length > 4_000 ? `...${text.slice(-4_000)}` : text;
}

/** `authz-sidecar ARGS...` (bin/authz-sidecar.js) as a long-running process. */
export function spawnCli(args: readonly string[], options: { env?: NodeJS.ProcessEnv; cwd?: string } = {}): CliProcess {
  const child = spawn(process.execPath, [BIN, ...args], { cwd: options.cwd ?? ROOT, env: { ...process.env, ...options.env } });
  running.add(child);
  let output = '';
  let stdout = '';
  let stderr = '';
  const listeners = new Set<() => void>();
  const changed = (): void => {
    for (const l of listeners) l();
  };
  child.stdout.on('data', (d: Buffer) => {
    stdout += d.toString();
    output += d.toString();
    changed();
  });
  child.stderr.on('data', (d: Buffer) => {
    stderr += d.toString();
    output += d.toString();
    changed();
  });
  let exited: Exit | undefined;
  const exit = new Promise<Exit>((resolve) => {
    // 'close' (not 'exit'): the output is complete then.
    child.once('close', (code, signal) => {
      running.delete(child);
      exited = { code, signal, at: Date.now() };
      changed();
      resolve(exited);
    });
  });

  function waitForOutput(marker: string | RegExp, timeoutMs = 20_000, from: 'output' | 'stdout' = 'output'): Promise<void> {
    const found = (): boolean => {
      const text = from === 'stdout' ? stdout : output;
      return typeof marker === 'string' ? text.includes(marker) : marker.test(text);
    };
    return new Promise((resolve, reject) => {
      const done = (error?: Error): void => {
        clearTimeout(timer);
        listeners.delete(check);
        if (error === undefined) resolve();
        else reject(error);
      };
      const check = (): void => {
        if (found()) done();
        else if (exited !== undefined) done(new Error(`exited with ${exited.code ?? exited.signal} before printing ${String(marker)}; output:\n${tail(output)}`));
      };
      const timer = setTimeout(() => done(new Error(`no ${String(marker)} within ${timeoutMs} ms; output:\n${tail(output)}`)), timeoutMs);
      listeners.add(check);
      check();
    });
  }

  async function stop(signal: NodeJS.Signals = 'SIGTERM', timeoutMs = 20_000): Promise<number | null> {
    if (exited === undefined) child.kill(signal);
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<'late'>((resolve) => (timer = setTimeout(() => resolve('late'), timeoutMs)));
    const result = await Promise.race([exit, late]);
    clearTimeout(timer);
    if (result === 'late') {
      child.kill('SIGKILL');
      await exit;
      throw new Error(`still running ${timeoutMs} ms after ${signal}; output:\n${tail(output)}`);
    }
    return result.code;
  }

  return {
    child,
    output: () => output,
    stdout: () => stdout,
    stderr: () => stderr,
    waitForOutput,
    exit,
    signal: (signal) => void child.kill(signal),
    stop,
  };
}

function parseJsonLines(text: string): Array<Record<string, unknown>> {
  const lines: Array<Record<string, unknown>> = [];
  for (const line of text.split('\n')) {
    if (!line.startsWith('{')) continue;
    try {
      lines.push(JSON.parse(line) as Record<string, unknown>);
    } catch {
      // A line still being written, or not JSON: not a log line.
    }
  }
  return lines;
}

export interface ServeOptions {
  /** The config file (`--config`); omit it to rely on AUTHZ_SIDECAR_CONFIG in `env`. */
  readonly config?: string;
  readonly env?: NodeJS.ProcessEnv;
  /** Also wait until /readyz answers 200 (default true). */
  readonly ready?: boolean;
  /** For the listening line and readiness together; default 20 s. */
  readonly timeoutMs?: number;
}

/**
 * `authz-sidecar serve`, resolved once it logged that it listens (the config's `logging.level` must be
 * `info` or more verbose, else that line never comes) and, unless `ready: false`, /readyz answers 200.
 * On failure the process is killed and the error carries its output.
 */
export async function startServe(options: ServeOptions): Promise<ServeProcess> {
  const timeoutMs = options.timeoutMs ?? 20_000;
  const deadline = Date.now() + timeoutMs;
  const cli = spawnCli(options.config === undefined ? ['serve'] : ['serve', '--config', options.config], options.env === undefined ? {} : { env: options.env });
  try {
    // pino writes the line to stdout (stderr chunks could land inside it in the interleaved output).
    await cli.waitForOutput(new RegExp(`"msg":"${LISTENING_MESSAGE}"[^\\n]*\\n`), timeoutMs, 'stdout');
    const listening = parseJsonLines(cli.stdout()).find((l) => l['msg'] === LISTENING_MESSAGE);
    if (listening === undefined || typeof listening['admin'] !== 'string') throw new Error(`the listening line names no admin address; output:\n${tail(cli.output())}`);
    const pick = (key: string): Record<string, string> => (typeof listening[key] === 'string' ? { [key]: listening[key] } : {});
    const addresses: ServeAddresses = {
      admin: listening['admin'],
      ...pick('proxy'),
      ...pick('http'),
      ...pick('grpc'),
      ...pick('forwardAuth'),
      ...pick('upstream'),
    };
    const adminUrl = `http://${addresses.admin}`;
    if (options.ready !== false) {
      for (;;) {
        const status = await fetch(`${adminUrl}/readyz`).then((r) => r.status, () => 0);
        if (status === 200) break;
        const exited = await Promise.race([cli.exit, new Promise<undefined>((r) => setTimeout(() => r(undefined), 50))]);
        if (exited !== undefined) throw new Error(`exited with ${exited.code ?? exited.signal} before it was ready; output:\n${tail(cli.output())}`);
        if (Date.now() > deadline) throw new Error(`/readyz not 200 within ${timeoutMs} ms (last ${status}); output:\n${tail(cli.output())}`);
      }
    }
    return {
      ...cli,
      addresses,
      url: addresses.proxy === undefined ? undefined : `http://${addresses.proxy}`,
      adminUrl,
      listening,
      logLines: () => parseJsonLines(cli.stdout()),
    };
  } catch (err) {
    if (cli.child.exitCode === null) {
      cli.child.kill('SIGKILL');
      await cli.exit;
    }
    throw err;
  }
}

/** Writes `config` as YAML to DIR/NAME.yaml and returns the path. */
export async function writeConfig(dir: string, name: string, config: Record<string, unknown>): Promise<string> {
  const file = join(dir, `${name}.yaml`);
  await writeFile(file, stringify(config));
  return file;
}

/** `http://` + a listening address of the real process, which must exist. */
export function httpUrl(address: string | undefined): string {
  if (address === undefined) throw new Error('no such listener');
  return `http://${address}`;
}
