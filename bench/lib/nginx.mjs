/**
 * nginx for rows 1 and 2: the upstream every proxy forwards to (`return 200`), and nginx itself as a plain
 * reverse proxy with upstream keep-alive. One worker process, in the foreground, all paths under `dir`.
 */
import { spawn } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { waitForHttp } from './util.mjs';

function config(dir, body) {
  const user = process.getuid?.() === 0 ? 'user root;' : '';
  return `${user}
worker_processes 1;
daemon off;
pid ${join(dir, 'nginx.pid')};
error_log ${join(dir, 'error.log')} warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path ${join(dir, 'body')};
  proxy_temp_path ${join(dir, 'proxy')};
  fastcgi_temp_path ${join(dir, 'fastcgi')};
  uwsgi_temp_path ${join(dir, 'uwsgi')};
  scgi_temp_path ${join(dir, 'scgi')};
  keepalive_requests 1000000;
${body}
}
`;
}

async function start(dir, body, cpu, port) {
  mkdirSync(dir, { recursive: true });
  const file = join(dir, 'nginx.conf');
  writeFileSync(file, config(dir, body));
  const child = spawn('taskset', ['-c', String(cpu), 'nginx', '-c', file, '-p', dir], { stdio: ['ignore', 'ignore', 'inherit'] });
  await waitForHttp(`http://127.0.0.1:${port}/`, child);
  return { pid: child.pid, stop: () => stopChild(child) };
}

export function stopChild(child) {
  return new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) return resolve();
    child.once('exit', () => resolve());
    child.kill('SIGTERM');
  });
}

/** The upstream: 200 with a small body on every path; also on a unix socket when `socketPath` is given. */
export function startUpstream({ dir, port, cpu, socketPath }) {
  const unix = socketPath === undefined ? '' : ` listen unix:${socketPath};`;
  return start(dir, `  server { listen 127.0.0.1:${port};${unix} location / { return 200 'ok'; } }`, cpu, port);
}

/** nginx as a reverse proxy to `upstreamPort`, keeping upstream connections alive. */
export function startNginxProxy({ dir, port, upstreamPort, cpu }) {
  return start(
    dir,
    `  upstream app { server 127.0.0.1:${upstreamPort}; keepalive 64; }
  server {
    listen 127.0.0.1:${port};
    location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }`,
    cpu,
    port,
  );
}
