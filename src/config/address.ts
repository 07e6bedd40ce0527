/**
 * Addresses in the config: listeners (`host:port` or `unix:/path.sock`) and the upstream
 * (`http://host:port` or `unix:/path/app.sock`).
 */

export type ListenAddress = { readonly kind: 'tcp'; readonly host: string; readonly port: number } | { readonly kind: 'unix'; readonly path: string };

export type UpstreamAddress =
  | { readonly kind: 'tcp'; readonly origin: string }
  | { readonly kind: 'unix'; readonly path: string };

const HOST_PORT = /^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):([0-9]{1,5})$/;

export function parseListenAddress(value: string): ListenAddress | undefined {
  if (value.startsWith('unix:')) {
    const path = value.slice('unix:'.length);
    return path === '' ? undefined : { kind: 'unix', path };
  }
  const m = HOST_PORT.exec(value);
  if (!m) return undefined;
  const port = Number(m[2]);
  if (port > 65535) return undefined;
  const host = (m[1] ?? '').replace(/^\[(.*)\]$/, '$1');
  return { kind: 'tcp', host, port };
}

export function parseUpstreamUrl(value: string): UpstreamAddress | undefined {
  if (value.startsWith('unix:')) {
    const path = value.slice('unix:'.length);
    return path === '' ? undefined : { kind: 'unix', path };
  }
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    return undefined;
  }
  // The canonical path is forwarded as is, so the upstream URL carries no path, query or credentials.
  if (url.protocol !== 'http:' || url.username !== '' || url.password !== '' || url.search !== '' || url.hash !== '') return undefined;
  if (url.pathname !== '/' && url.pathname !== '') return undefined;
  return { kind: 'tcp', origin: url.origin };
}

export function formatListenAddress(address: ListenAddress): string {
  if (address.kind === 'unix') return `unix:${address.path}`;
  return address.host.includes(':') ? `[${address.host}]:${address.port}` : `${address.host}:${address.port}`;
}
