/**
 * Row 3: a bare @fastify/http-proxy in front of the upstream, no authentication, default options: the floor
 * for a Node proxy. Usage: node bench/servers/fastify-proxy.mjs PORT UPSTREAM_URL
 */
import proxy from '@fastify/http-proxy';
import Fastify from 'fastify';

const [port, upstream] = process.argv.slice(2);
const app = Fastify({ logger: false });
await app.register(proxy, { upstream });
await app.listen({ host: '127.0.0.1', port: Number(port) });
process.on('SIGTERM', () => void app.close().then(() => process.exit(0)));
