/**
 * The `authz-sidecar` command. Exit codes (DESIGN.md §5): 0 success, 1 a deny or a failing case, 2 bad
 * usage or bad config. Arguments are parsed with node:util parseArgs: the commands are few and flat.
 */
import { parseArgs } from 'node:util';
import { loadConfig } from '../config/load.js';
import { SidecarError } from '../core/errors.js';
import { policyCheck, policyTest, POLICY_USAGE } from './policy.js';
import { validate } from './validate.js';
import { UsageError } from './usage-error.js';
import type { RunningSidecar } from '../sidecar.js';

export const USAGE = `usage:
  authz-sidecar serve --config FILE     run the sidecar (or set AUTHZ_SIDECAR_CONFIG)
  authz-sidecar validate --config FILE  check config, files, model and policy without starting
${POLICY_USAGE}
  authz-sidecar demo [--config FILE]    the sidecar in front of a built-in echo app with a local dev issuer
  authz-sidecar --help | --version

exit codes: 0 success / allow, 1 a failing test case or a deny, 2 bad usage or bad config
`;

export { UsageError } from './usage-error.js';

/**
 * Writes out the log lines still buffered for stdout, within LOG_EXIT_FLUSH_MS (admin/log-output.ts). Set by
 * the commands that serve once they loaded the serving side: before that, nothing was logged.
 */
let endLogs = (): Promise<unknown> => Promise.resolve();
let exiting = false;

/**
 * Exits with `code` once the buffered log lines are written out (bounded); called again meanwhile (a third
 * signal), exits at once.
 */
function exitAfterLogs(code: number): void {
  if (exiting) process.exit(code);
  exiting = true;
  void endLogs().finally(() => process.exit(code));
}

/** Waits for SIGTERM or SIGINT, then closes; a second signal exits at once (after writing out the logs). */
export function closeOnSignal(close: () => Promise<void>): Promise<void> {
  return new Promise((resolve) => {
    let closing = false;
    const onSignal = (signal: NodeJS.Signals): void => {
      if (closing) return exitAfterLogs(signal === 'SIGINT' ? 130 : 143);
      closing = true;
      close().then(resolve, (err: unknown) => {
        console.error(`authz-sidecar: error while shutting down: ${(err as Error).message}`);
        resolve();
      });
    };
    process.on('SIGTERM', onSignal);
    process.on('SIGINT', onSignal);
  });
}

async function serve(args: string[]): Promise<number> {
  const { values } = parseArgs({ args, options: { config: { type: 'string', short: 'c' } }, strict: true });
  const file = values.config ?? process.env['AUTHZ_SIDECAR_CONFIG'];
  if (file === undefined || file === '') throw new UsageError('serve needs --config FILE (or AUTHZ_SIDECAR_CONFIG)');
  // Until it serves, a signal ends the process at once: nothing is in flight to drain. As a container's PID 1,
  // Node ignores a signal it has no handler for, so a SIGTERM during a slow start (a large policy, a slow
  // volume) would otherwise wait for the SIGKILL at the end of the grace period. (A read stuck for good on a
  // dead mount holds one of libuv's threads, which the exit waits for: only that SIGKILL ends it.)
  // What was logged until then is written out first (exitAfterLogs).
  const duringStart = (signal: NodeJS.Signals): void => exitAfterLogs(signal === 'SIGINT' ? 130 : 143);
  process.on('SIGTERM', duringStart);
  process.on('SIGINT', duringStart);
  let running: RunningSidecar;
  try {
    const config = await loadConfig(file);
    // The serving side (fastify, the doors) is loaded only by the commands that serve: `validate` and
    // `policy` never load it.
    const { startSidecar, endStdoutLog } = await import('../sidecar.js');
    endLogs = endStdoutLog;
    running = await startSidecar(config, { file });
  } catch (err) {
    // A start that failed (a port in use) may have logged why before the error ends the process.
    await endLogs();
    throw err;
  } finally {
    process.off('SIGTERM', duringStart);
    process.off('SIGINT', duringStart);
  }
  // SIGHUP reloads model and policy; a broken one is logged and counted, the last good one keeps serving.
  const onHangup = (): void => void running.reload();
  process.on('SIGHUP', onHangup);
  await closeOnSignal(() => running.close());
  process.off('SIGHUP', onHangup);
  // The 'authz-sidecar stopped' line and whatever a slow reader left buffered: bin/ exits right after.
  await endLogs();
  return 0;
}

async function demo(args: string[]): Promise<number> {
  const { values } = parseArgs({ args, options: { config: { type: 'string', short: 'c' } }, strict: true });
  const [{ runDemo }, { endStdoutLog }] = await Promise.all([import('./demo.js'), import('../sidecar.js')]);
  endLogs = endStdoutLog;
  const stop = await runDemo(values.config);
  await closeOnSignal(stop);
  await endLogs();
  return 0;
}

export async function main(argv: readonly string[]): Promise<number> {
  const [command, ...rest] = argv;
  try {
    switch (command) {
      case 'serve':
        return await serve(rest);
      case 'demo':
        return await demo(rest);
      case 'validate':
        return await validate(rest);
      case 'policy': {
        const [sub, ...subArgs] = rest;
        if (sub === 'test') return await policyTest(subArgs);
        if (sub === 'check') return await policyCheck(subArgs);
        throw new UsageError(`unknown policy command "${sub ?? ''}" (test or check)`);
      }
      case '--version':
      case 'version': {
        const { readFile } = await import('node:fs/promises');
        const pkg = JSON.parse(await readFile(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string };
        console.log(pkg.version);
        return 0;
      }
      case undefined:
      case '--help':
      case '-h':
      case 'help':
        process.stdout.write(USAGE);
        return command === undefined ? 2 : 0;
      default:
        throw new UsageError(`unknown command "${command}"`);
    }
  } catch (err) {
    // Bad config (CONFIG_INVALID, POLICY_INVALID) and bad usage exit 2; anything else is 1.
    if (err instanceof SidecarError && (err.code === 'CONFIG_INVALID' || err.code === 'POLICY_INVALID')) {
      console.error(`authz-sidecar: ${err.message}`);
      return 2;
    }
    if ((err instanceof SidecarError && err.code === 'USAGE') || (err as { code?: string }).code?.startsWith('ERR_PARSE_ARGS')) {
      console.error(`authz-sidecar: ${(err as Error).message}\n${USAGE}`);
      return 2;
    }
    console.error(`authz-sidecar: ${(err as Error).message}`);
    return 1;
  }
}
