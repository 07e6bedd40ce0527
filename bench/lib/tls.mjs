// TLS helpers for the benchmark: a throwaway self-signed certificate and an
// HTTPS server publishing a JWKS, so gateways that insist on fetching keys
// over https (e.g. mod_auth_openidc) can be benchmarked fully offline.
import { Buffer } from 'node:buffer';
import { execFile } from 'node:child_process';
import { mkdir, readFile } from 'node:fs/promises';
import { createServer } from 'node:https';
import { join } from 'node:path';
import { promisify } from 'node:util';

const execFileAsync = promisify(execFile);

/**
 * Create a self-signed certificate for 127.0.0.1 (CN and IP SAN; clients
 * match the SAN, the CN is for humans) and write cert.pem/key.pem into `dir`.
 */
export async function selfSignedCert(dir) {
  await mkdir(dir, { recursive: true });
  const certPath = join(dir, 'cert.pem');
  const keyPath = join(dir, 'key.pem');
  await execFileAsync('openssl', [
    'req', '-x509',
    '-newkey', 'rsa:2048',
    '-nodes', // unencrypted key: servers load it without a passphrase
    '-sha256',
    '-days', '2',
    '-subj', '/CN=127.0.0.1',
    '-addext', 'subjectAltName=IP:127.0.0.1',
    '-keyout', keyPath,
    '-out', certPath,
  ]);
  const [cert, key] = await Promise.all([readFile(certPath, 'utf8'), readFile(keyPath, 'utf8')]);
  return { certPath, keyPath, cert, key };
}

/**
 * Serve `jwks` at GET /jwks.json over https on 127.0.0.1.
 * port 0 lets the OS pick a free port; the chosen one is returned.
 */
export async function startJwksHttpsServer({ jwks, cert, key, port = 0 }) {
  const body = JSON.stringify(jwks);
  // Counting fetches shows whether the gateway caches the JWKS or refetches it per request.
  let jwksRequests = 0;
  const server = createServer({ cert, key }, (req, res) => {
    const path = (req.url ?? '').split('?')[0];
    if ((req.method === 'GET' || req.method === 'HEAD') && path === '/jwks.json') {
      jwksRequests++;
      res.writeHead(200, {
        'content-type': 'application/json',
        'content-length': Buffer.byteLength(body),
      });
      res.end(req.method === 'HEAD' ? undefined : body);
      return;
    }
    res.writeHead(404, { 'content-type': 'text/plain' });
    res.end('not found\n');
  });

  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, '127.0.0.1', () => {
      server.off('error', reject);
      resolve();
    });
  });

  const actualPort = server.address().port;
  return {
    url: `https://127.0.0.1:${actualPort}/jwks.json`,
    port: actualPort,
    requestCount: () => jwksRequests,
    close: () =>
      new Promise((resolve) => {
        // Keep-alive clients (the gateway under test) would otherwise hold close() open.
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
