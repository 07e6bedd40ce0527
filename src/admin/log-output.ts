/**
 * Where the log lines go: stdout, written asynchronously through a bounded buffer (pino.destination with
 * `sync: false`, which is sonic-boom). A log line never waits for stdout's reader: when a slow log collector
 * or a full pipe holds the writes back, lines wait in memory up to DEFAULT_LOG_BUFFER_BYTES, and lines beyond
 * that are dropped and counted (authz_sidecar_log_lines_dropped_total). pino's default destination is
 * asynchronous too, but unbounded: behind a reader that fell behind, the heap grew with every line (to the
 * memory limit), and at exit pino's synchronous flush retried a full pipe every 100 ms for ever (a reader
 * that never reads held the process until SIGKILL) and skipped the chunk that was being written.
 *
 * At exit, what is buffered is written out within a bound: `end()` on every exit path of `serve` and `demo`
 * (src/cli/main.ts), and a synchronous, bounded flush on any other exit (an uncaught exception).
 */
import { pino, type DestinationStream } from 'pino';

/**
 * At most this much log output (4 MiB) waits in memory for stdout's reader. A decision line is 300 to 500
 * bytes: about 10,000 lines, a few seconds of a collector that stopped reading under load, or minutes at a
 * normal rate, while it costs under 2% of the pod's 224 MiB memory limit (its peak is about 165 MiB,
 * docs/performance.md). A pipe holds only 64 KiB.
 */
export const DEFAULT_LOG_BUFFER_BYTES = 4 * 1024 * 1024;

/**
 * How long writing out the buffered lines may take at exit (2 s, as the tracing exporter's shutdown): enough
 * for 4 MiB to any reader that reads at all; a reader that is stuck for good gets nothing more after it.
 */
export const LOG_EXIT_FLUSH_MS = 2_000;

export interface LogOutput {
  /** pino's destination. */
  readonly stream: DestinationStream;
  /** Lines dropped so far: the buffer was full, the reader is gone (EPIPE) or the output was ended. */
  dropped(): number;
  /** Calls `listener` once per dropped line; returns the function that stops it. */
  onDrop(listener: () => void): () => void;
  /**
   * Writes out what is buffered and closes the output, waiting at most `timeoutMs`; resolves true when
   * everything was written, false when the rest was given up. Lines logged after it are not written. Never
   * rejects; calling it again returns the same promise.
   */
  end(timeoutMs?: number): Promise<boolean>;
}

type SonicBoom = ReturnType<typeof pino.destination>;

export interface LogOutputOptions {
  /** The file descriptor written to; default 1 (stdout). */
  readonly fd?: number;
  /** Default DEFAULT_LOG_BUFFER_BYTES. */
  readonly maxBufferBytes?: number;
}

export function createLogOutput(options: LogOutputOptions = {}): LogOutput {
  const maxBufferBytes = options.maxBufferBytes ?? DEFAULT_LOG_BUFFER_BYTES;
  if (!Number.isInteger(maxBufferBytes) || maxBufferBytes < 64 * 1024) throw new TypeError(`maxBufferBytes must be an integer of at least 65536, got ${maxBufferBytes}`);
  const fd = options.fd ?? stdoutFd();
  // Past this time a write that would block (EAGAIN) gives up instead of retrying: set only by the synchronous
  // flush at exit. Until then an async write that would block is retried every 100 ms by sonic-boom.
  let giveUpAt = Infinity;
  const sonic: SonicBoom = pino.destination({
    dest: fd,
    sync: false,
    maxLength: maxBufferBytes,
    retryEAGAIN: () => Date.now() < giveUpAt,
  });
  let dropped = 0;
  const dropListeners = new Set<() => void>();
  const drop = (): void => {
    dropped++;
    for (const listener of dropListeners) listener();
  };
  sonic.on('drop', drop);
  let failed = false;
  let broken = false;
  sonic.on('error', (err: NodeJS.ErrnoException) => {
    // EPIPE (nobody will ever read): pino's own listener turns the destination into a no-op. Anything else
    // is reported once; the next line tries again. A log line must never throw into a request.
    if (err.code === 'EPIPE') broken = true;
    if (broken || failed) return;
    failed = true;
    console.error(`authz-sidecar: writing logs failed: ${err.message}`);
  });

  let closed = false;
  let ending: Promise<boolean> | undefined;
  const stream: DestinationStream = {
    write(line: string) {
      // After end() sonic-boom is destroyed and would throw: a late line (a request still in flight when a
      // second signal cut the drain short) is dropped instead. After EPIPE nothing is written any more.
      if (closed || broken) drop();
      else sonic.write(line);
    },
  };

  function close(): void {
    if (closed) return;
    closed = true;
    // Destroyed, pino's own exit hook leaves it alone (it would retry a blocked write without end).
    sonic.destroy();
  }

  // Any exit that did not go through end() (an uncaught exception, a process.exit elsewhere): write out what is
  // buffered synchronously, within LOG_EXIT_FLUSH_MS. Runs before pino's own hook (prepended). The chunk being
  // written at that moment is not part of it: in flight on libuv's threads it lands after these lines, waiting
  // to retry after EAGAIN it is lost. The exits of `serve` and `demo` go through end(), which has neither.
  process.prependListener('exit', () => {
    if (closed) return;
    giveUpAt = Date.now() + LOG_EXIT_FLUSH_MS;
    try {
      sonic.flushSync();
    } catch {
      // EAGAIN past the bound: stdout's reader is stuck, the rest is lost. Exiting is what matters now.
    }
    close();
  });

  return {
    stream,
    dropped: () => dropped,
    onDrop(listener) {
      dropListeners.add(listener);
      return () => void dropListeners.delete(listener);
    },
    end(timeoutMs = LOG_EXIT_FLUSH_MS) {
      ending ??= new Promise<boolean>((resolve) => {
        if (closed || broken) {
          close();
          resolve(!broken);
          return;
        }
        const timer = setTimeout(() => {
          // A write still waiting for a stuck reader stops retrying too (its retry timer would hold the process).
          giveUpAt = Date.now();
          close();
          resolve(false);
        }, timeoutMs);
        // sonic-boom writes out what it holds, then emits 'close'. Lines logged meanwhile are written too.
        sonic.once('close', () => {
          clearTimeout(timer);
          closed = true;
          resolve(true);
        });
        sonic.end();
      });
      return ending;
    },
  };
}

/**
 * fd 1, through process.stdout: for a pipe or a socket, Node opens it non-blocking when process.stdout is
 * first used (libuv's uv_pipe_open). Written to as it is inherited (blocking), a write to a full pipe would
 * hold one of libuv's threads until the reader reads, and an exit waits for those threads: no flush at exit
 * could be bounded. Non-blocking, a write that cannot go on returns EAGAIN at once and is retried later.
 */
function stdoutFd(): number {
  return process.stdout.fd;
}

let stdoutLog: LogOutput | undefined;

/** The process's one output to stdout, created on first use. */
export function stdoutLogOutput(): LogOutput {
  stdoutLog ??= createLogOutput();
  return stdoutLog;
}

/** `end()` of stdoutLogOutput() if it was ever created (else there is nothing to write out). */
export function endStdoutLog(timeoutMs?: number): Promise<boolean> {
  return stdoutLog?.end(timeoutMs) ?? Promise.resolve(true);
}
