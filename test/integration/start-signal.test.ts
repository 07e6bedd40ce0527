/**
 * A signal during a slow start ends `serve` at once. In a container Node is PID 1, which ignores a signal it
 * has no handler for: without one, a SIGTERM during a slow start would wait for the SIGKILL at the end of
 * the grace period. Here the JWKS file is a FIFO nobody writes, so the start waits until the test lets it go.
 */
import { execFileSync } from 'node:child_process';
import { closeSync, constants, openSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import { spawnCli } from '../support/serve.js';
import { EXAMPLE_MODEL, EXAMPLE_POLICY } from '../support/sidecar.js';

let dir = '';
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'authz-start-signal-'));
  execFileSync('mkfifo', [join(dir, 'jwks.json')]);
  await writeFile(join(dir, 'model.conf'), EXAMPLE_MODEL);
  await writeFile(join(dir, 'policy.csv'), EXAMPLE_POLICY);
  await writeFile(
    join(dir, 'config.yaml'),
    stringify({
      extAuthz: { http: { listen: '127.0.0.1:0' } },
      admin: { listen: '127.0.0.1:0' },
      authn: { jwt: [{ issuer: 'https://issuer.start.test', audiences: ['start'], jwksFile: './jwks.json' }] },
      authz: { model: './model.conf', policy: './policy.csv' },
    }),
  );
});
afterAll(async () => {
  if (dir !== '') await rm(dir, { recursive: true, force: true });
});

describe('serve, signalled while it starts', () => {
  for (const [signal, code] of [
    ['SIGTERM', 143],
    ['SIGINT', 130],
  ] as const) {
    it(`exits ${code} at once on ${signal}, by its own handler`, async () => {
      const cli = spawnCli(['serve', '--config', join(dir, 'config.yaml')]);
      // Give it time to load and block on the FIFO; it must still be starting (no listening line).
      await new Promise((r) => setTimeout(r, 1_500));
      expect(cli.output()).not.toContain('authz-sidecar listening');
      cli.signal(signal);
      // The read stuck on the FIFO holds one of libuv's threads, which an exit waits for (as it would on a
      // stuck mount): let it go by opening the FIFO's other end and closing it (the read sees an empty file).
      await new Promise((r) => setTimeout(r, 300));
      const released = Date.now();
      closeSync(openSync(join(dir, 'jwks.json'), constants.O_WRONLY | constants.O_NONBLOCK));
      const exit = await cli.exit;
      // Its code, not death by the signal (a handler ran: as PID 1 the default action would be nothing), and
      // not the config error an empty JWKS file would give had the start gone on.
      expect(exit).toMatchObject({ code, signal: null });
      expect(exit.at - released).toBeLessThan(2_000);
    });
  }
});
