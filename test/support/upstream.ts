/**
 * A real recording upstream for integration tests: an HTTP server on loopback (or a unix socket) that
 * records what reached it and answers 200 with JSON, plus WebSocket echo on any path.
 */
import { createServer, type IncomingHttpHeaders, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { WebSocketServer } from 'ws';

export interface Recorded {
  readonly method: string;
  /** The request target exactly as the upstream received it. */
  readonly url: string;
  readonly headers: IncomingHttpHeaders;
  readonly rawHeaders: readonly string[];
  readonly body: string;
  readonly websocket: boolean;
}

export interface RecordingUpstream {
  /** `http://127.0.0.1:PORT`, or `unix:/path` when started on a socket. */
  readonly url: string;
  readonly requests: Recorded[];
  /** Delay every HTTP answer by this many ms (for timeout tests). */
  delayMs: number;
  close(): Promise<void>;
}

export async function startRecordingUpstream(options: { socketPath?: string } = {}): Promise<RecordingUpstream> {
  const requests: Recorded[] = [];
  const state = { delayMs: 0 };
  const server: Server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      requests.push({
        method: req.method ?? '',
        url: req.url ?? '',
        headers: req.headers,
        rawHeaders: req.rawHeaders,
        body: Buffer.concat(chunks).toString('utf8'),
        websocket: false,
      });
      const answer = (): void => {
        if (res.destroyed) return;
        res.writeHead(200, { 'content-type': 'application/json', 'x-upstream': 'recording' });
        res.end(JSON.stringify({ ok: true, url: req.url }));
      };
      if (state.delayMs > 0) setTimeout(answer, state.delayMs);
      else answer();
    });
  });
  const wss = new WebSocketServer({ server });
  wss.on('connection', (socket, req) => {
    requests.push({
      method: req.method ?? '',
      url: req.url ?? '',
      headers: req.headers,
      rawHeaders: req.rawHeaders,
      body: '',
      websocket: true,
    });
    socket.on('message', (data: Buffer, binary) => socket.send(binary ? data : `echo:${data.toString('utf8')}`));
  });

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    if (options.socketPath !== undefined) server.listen(options.socketPath, resolve);
    else server.listen(0, '127.0.0.1', resolve);
  });
  const url = options.socketPath !== undefined ? `unix:${options.socketPath}` : `http://127.0.0.1:${(server.address() as AddressInfo).port}`;

  return {
    url,
    requests,
    get delayMs() {
      return state.delayMs;
    },
    set delayMs(v: number) {
      state.delayMs = v;
    },
    close: () =>
      new Promise<void>((resolve) => {
        for (const client of wss.clients) client.terminate();
        wss.close();
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

/** A loopback port that was free a moment ago (listen on 0, close). */
export async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}
