/**
 * Hop-by-hop headers (RFC 9110 §7.6.1): they describe one connection, not the message, so a proxy never
 * passes them on; nor the headers a `Connection` header names. One list for both directions.
 */
export const HOP_BY_HOP: ReadonlySet<string> = new Set(['connection', 'keep-alive', 'proxy-connection', 'te', 'trailer', 'transfer-encoding', 'upgrade']);

/**
 * Request headers that are not passed on besides the hop-by-hop ones: `Expect` asks the next hop for a
 * 100 Continue that the sidecar's own connection handles (undici refuses to send it), and `Host`, which the
 * forwarder sets for the application's address.
 */
const REQUEST_ONLY: ReadonlySet<string> = new Set(['expect', 'host']);

/** The names a `Connection` header lists (lower-case); empty when there is none. */
export function connectionNamed(connection: string | readonly string[] | undefined): ReadonlySet<string> {
  if (connection === undefined) return EMPTY;
  const named = new Set<string>();
  for (const line of typeof connection === 'string' ? [connection] : connection) {
    for (const name of line.split(',')) named.add(name.trim().toLowerCase());
  }
  return named;
}
const EMPTY: ReadonlySet<string> = new Set();

/** True for a header of the client's request that must not reach the application as received. */
export function isHopByHopRequestHeader(name: string, named: ReadonlySet<string>): boolean {
  return HOP_BY_HOP.has(name) || REQUEST_ONLY.has(name) || named.has(name);
}

/** True for a header of the application's answer that must not reach the client as received. */
export function isHopByHopResponseHeader(name: string, named: ReadonlySet<string>): boolean {
  return HOP_BY_HOP.has(name) || named.has(name);
}
