/**
 * Sockets the sidecar answers outside node's HTTP request cycle (CONNECT, a malformed request, a denied
 * WebSocket upgrade) are destroyed once answered. Ending them only half-closes them: a client that keeps its
 * side open then holds them past every timeout, and SIGTERM's drain never finishes (found by a review).
 * On the real process: such clients are held open on every listener, and SIGTERM still exits 0 in time.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { EXAMPLE_MODEL, EXAMPLE_POLICY } from '../support/sidecar.js';
import { startServe, writeConfig } from '../support/serve.js';
import { startRecordingUpstream, type RecordingUpstream } from '../support/upstream.js';

const DRAIN_SECONDS = 2;
let dir: string;
let upstream: RecordingUpstream;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'authz-half-open-'));
  upstream = await startRecordingUpstream();
});
afterAll(async () => {
  await upstream.close();
  await rm(dir, { recursive: true, force: true });
});

/** Sends `request` and keeps the client's side open (never ends it); resolves with what came back. */
function holdOpen(address: string, request: string): { socket: Socket; answered: Promise<string> } {
  const [host = '', port = ''] = address.split(/:(?=\d+$)/);
  const socket = connect({ host, port: Number(port), allowHalfOpen: true });
  let text = '';
  const answered = new Promise<string>((resolve) => {
    socket.on('data', (d: Buffer) => {
      text += d.toString();
      if (text.includes('\r\n\r\n')) resolve(text);
    });
  });
  socket.on('error', () => undefined);
  socket.write(request);
  return { socket, answered };
}

describe('half-open clients', () => {
  it('answered sockets are destroyed: SIGTERM exits 0 within drainSeconds + 1 s while such clients hold their side open', async () => {
    const config = await writeConfig(dir, 'half-open', {
      listen: '127.0.0.1:0',
      admin: { listen: '127.0.0.1:0' },
      upstream: { url: upstream.url },
      extAuthz: { http: { listen: '127.0.0.1:0' }, forwardAuth: { listen: '127.0.0.1:0' } },
      authz: { model: EXAMPLE_MODEL, policy: EXAMPLE_POLICY },
      shutdown: { drainSeconds: DRAIN_SECONDS },
      logging: { level: 'info', decisions: 'none' },
    });
    const sidecar = await startServe({ config });
    const { addresses } = sidecar;
    const upgrade = 'GET /orders/1 HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n';
    const held = [
      holdOpen(addresses.proxy ?? '', upgrade),
      holdOpen(addresses.admin, 'CONNECT a.example:443 HTTP/1.1\r\nHost: a.example:443\r\n\r\n'),
      holdOpen(addresses.forwardAuth ?? '', 'CONNECT a.example:443 HTTP/1.1\r\nHost: a.example:443\r\n\r\n'),
      holdOpen(addresses.http ?? '', 'GET /x HTTP/1.1\r\nHost: h\r\nBad Header Line\r\n\r\n'),
    ];
    const answers = await Promise.all(held.map((h) => h.answered));
    expect(answers.map((a) => Number(a.split(' ')[1]))).toEqual([401, 400, 400, 400]);
    try {
      const signalled = Date.now();
      const code = await sidecar.stop('SIGTERM', (DRAIN_SECONDS + 5) * 1000);
      expect(code).toBe(0);
      expect((await sidecar.exit).at - signalled).toBeLessThan((DRAIN_SECONDS + 1) * 1000);
    } finally {
      for (const h of held) h.socket.destroy();
    }
  });
});
