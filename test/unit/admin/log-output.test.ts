/**
 * The log output on a file descriptor of a file (test/integration/async-logging.test.ts has the real `serve`
 * behind a pipe that is not read): lines are written in order, end() writes out what is buffered, a line
 * logged after it is dropped and counted instead of throwing, and bad options are refused when it is built.
 */
import { openSync, readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createLogOutput, DEFAULT_LOG_BUFFER_BYTES } from '../../../src/admin/log-output.js';

let dir = '';
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'authz-log-output-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('createLogOutput', () => {
  it('writes lines in order; end() writes out what is buffered; a line after it is dropped, not thrown', async () => {
    const file = join(dir, 'order.log');
    const output = createLogOutput({ fd: openSync(file, 'w') });
    const logger = pino({ base: null, timestamp: false }, output.stream);
    for (let i = 0; i < 2_000; i++) logger.info({ i }, 'line');
    expect(await output.end()).toBe(true);
    expect(() => logger.info('too late')).not.toThrow();
    expect(output.dropped()).toBe(1);
    const lines = readFileSync(file, 'utf8').trimEnd().split('\n').map((l) => JSON.parse(l) as { i: number });
    expect(lines.map((l) => l.i)).toEqual(Array.from({ length: 2_000 }, (_, i) => i));
    expect(await output.end()).toBe(true);
  });

  it('refuses a buffer smaller than 64 KiB or not a whole number of bytes', () => {
    expect(() => createLogOutput({ fd: 1, maxBufferBytes: 1024 })).toThrow(TypeError);
    expect(() => createLogOutput({ fd: 1, maxBufferBytes: 100_000.5 })).toThrow(TypeError);
    expect(DEFAULT_LOG_BUFFER_BYTES).toBe(4 * 1024 * 1024);
  });
});
