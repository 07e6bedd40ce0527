// The soak's app: answers every request with what it received (method, path, the x-auth-* headers and whether
// a Cookie header still names the sidecar's cookie), as JSON. A process of its own, so the soak can kill it.
import { createServer } from 'node:http';

const port = Number(process.argv[2]);
const cookieName = process.argv[3] ?? 'authz';
const server = createServer((req, res) => {
  req.resume();
  req.on('end', () => {
    const identity = {};
    // Every spelling of the identity prefix: x-auth-, x_auth_, X-Auth_ ... (Node lower-cases the names).
    for (const [name, value] of Object.entries(req.headers)) if (/^x[-_]auth[-_]/.test(name)) identity[name] = value;
    const cookie = req.headers.cookie ?? '';
    const leaked = cookie.split(';').some((c) => c.trim().startsWith(`${cookieName}=`) || c.trim().startsWith(`${cookieName}.`));
    const body = JSON.stringify({ method: req.method, path: req.url, identity, sidecarCookie: leaked, authorization: req.headers.authorization !== undefined });
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) }).end(body);
  });
});
server.listen(port, '127.0.0.1', () => process.stdout.write('app listening\n'));
process.on('SIGTERM', () => server.close(() => process.exit(0)));
