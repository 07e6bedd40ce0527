/**
 * Binding a listener to a configured address (`host:port` or `unix:/path.sock`), the same for every door.
 */
import { lstat, unlink } from 'node:fs/promises';
import type { AddressInfo } from 'node:net';
import { formatListenAddress, parseListenAddress } from '../config/address.js';

export type ListenTarget = { readonly path: string } | { readonly host: string; readonly port: number };

/**
 * Listens with `bind` at `address` and returns the bound address, with the real port when 0 was asked for.
 * A socket file left by a previous run is removed first (listen would fail with EADDRINUSE).
 */
export async function listenOn(address: string, bind: (at: ListenTarget) => Promise<void>, bound: () => AddressInfo | string | null): Promise<string> {
  const parsed = parseListenAddress(address);
  if (parsed === undefined) throw new TypeError(`invalid listen address ${address}`);
  if (parsed.kind === 'unix') {
    const stat = await lstat(parsed.path).catch(() => undefined);
    if (stat?.isSocket()) await unlink(parsed.path);
    await bind({ path: parsed.path });
    return address;
  }
  await bind({ host: parsed.host, port: parsed.port });
  const info = bound();
  const port = typeof info === 'object' && info !== null ? info.port : parsed.port;
  return formatListenAddress({ ...parsed, port });
}
