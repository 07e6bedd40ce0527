/**
 * The demo's application: answers every request with what it received (method, path, query, and the
 * identity and request-id headers the sidecar set), so a curl shows exactly what reaches the app.
 */
import { createServer, type Server } from 'node:http';

export interface EchoApp {
  close(): Promise<void>;
}

export async function startEchoApp(options: { host: string; port: number }): Promise<EchoApp> {
  const server: Server = createServer((req, res) => {
    const headers = Object.fromEntries(
      Object.entries(req.headers).filter(([name]) => name.startsWith('x-auth-') || name === 'x-request-id' || name === 'authorization'),
    );
    const [path, query] = (req.url ?? '/').split('?', 2);
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(`${JSON.stringify({ app: 'echo', method: req.method, path, query: query ?? null, headers }, null, 2)}\n`);
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(options.port, options.host, resolve);
  });
  return {
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
