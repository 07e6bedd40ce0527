/**
 * Sends a request as raw bytes over a TCP socket, for targets and headers that an HTTP client would
 * normalize (dot segments, underscores in names, repeated headers). Reads until the server closes.
 */
import { connect } from 'node:net';

export interface RawResponse {
  readonly status: number;
  readonly headers: Readonly<Record<string, string>>;
  readonly body: string;
}

/**
 * The one raw-socket exchange of the tests: connects to host:port, writes `bytes` exactly as given and
 * resolves with everything the server sent once it closes the connection. Rejects on a socket error, or
 * when the server has not closed within `timeoutMs` (the socket is destroyed then).
 */
export function rawSocketExchange(host: string, port: number, bytes: string, timeoutMs = 5_000): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = connect({ host, port });
    const chunks: Buffer[] = [];
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error(`no answer from ${host}:${port} within ${timeoutMs} ms`));
    }, timeoutMs);
    socket.on('connect', () => socket.write(bytes));
    socket.on('data', (c: Buffer) => chunks.push(c));
    socket.on('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    socket.on('close', () => {
      clearTimeout(timer);
      resolve(Buffer.concat(chunks).toString('utf8'));
    });
  });
}

export async function rawRequest(url: string, lines: readonly string[], timeoutMs = 5_000): Promise<RawResponse> {
  const { hostname, port } = new URL(url);
  const text = await rawSocketExchange(hostname, Number(port), [...lines, 'Connection: close', '', ''].join('\r\n'), timeoutMs);
  const [head = '', ...rest] = text.split('\r\n\r\n');
  const [statusLine = '', ...headerLines] = head.split('\r\n');
  const headers: Record<string, string> = {};
  for (const line of headerLines) {
    const i = line.indexOf(':');
    if (i > 0) headers[line.slice(0, i).toLowerCase()] = line.slice(i + 1).trim();
  }
  return { status: Number(statusLine.split(' ')[1]), headers, body: rest.join('\r\n\r\n') };
}
