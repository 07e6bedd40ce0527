/**
 * The client that talks to the application: one undici Pool of keep-alive connections to the application, with the
 * response written straight to the client's socket as it arrives. @fastify/reply-from does the same job
 * through two stream layers (a Readable for the upstream body, then fastify's send of that stream); on one
 * core that plumbing cost more than the whole authorization decision. Backpressure is kept (the upstream
 * read pauses while the client's socket is full), a client that goes away aborts the upstream request, and
 * nothing is retried (a request may not be idempotent). WebSocket upgrades use the same pool: undici
 * opens the upgraded connection and the two sockets are joined byte for byte (the frames are the client's
 * and the application's business, as through nginx).
 */
import { createHash } from 'node:crypto';
import type { IncomingMessage, OutgoingHttpHeaders, ServerResponse } from 'node:http';
import type { Duplex } from 'node:stream';
import { Pool, type Dispatcher } from 'undici';
import type { UpstreamAddress } from '../config/address.js';
import { connectionNamed, isHopByHopResponseHeader } from './hop-by-hop.js';

export type ForwardFailure = 'timeout' | 'unavailable';

export interface ForwardRequest {
  readonly method: string;
  /** Path and query, as sent to the application. */
  readonly path: string;
  readonly headers: Record<string, string | string[] | undefined>;
  /** The client's request, read as the body when the request has one. */
  readonly raw: IncomingMessage;
  /** Headers added to the application's answer (a refreshed session's Set-Cookie); values are appended. */
  readonly addToResponse?: Readonly<Record<string, string | readonly string[]>> | undefined;
}

export interface ForwardCallbacks {
  /** The application answered with headers (for the upstream latency metric). */
  onResponse?(status: number): void;
  /** Nothing was sent to the client yet: answer the failure (502/504). */
  onFailure(kind: ForwardFailure, error: Error): void;
  /** The client went away before the application's answer was through (nothing more to answer). */
  onAbandoned?(): void;
}

export interface UpgradeRequest {
  /** Path and query, as sent to the application. */
  readonly path: string;
  /** The handshake headers to send (no Connection, Upgrade or Host: the forwarder sets those). */
  readonly headers: Record<string, string | string[] | undefined>;
  /** The client's socket, taken over from the HTTP server, and what it sent past the request head. */
  readonly socket: Duplex;
  readonly head: Buffer;
  /** Headers added to the 101 (a refreshed session's Set-Cookie). */
  readonly addToResponse?: Readonly<Record<string, string | readonly string[]>> | undefined;
}

export interface Forwarder {
  forward(request: ForwardRequest, res: ServerResponse, callbacks: ForwardCallbacks): void;
  /**
   * A WebSocket handshake with the application; on its 101 the answer goes to the client and the sockets
   * are joined until either side closes. `onFailure` is called when the application could not be reached
   * or did not switch protocols (nothing has been written to the client then).
   */
  upgrade(request: UpgradeRequest, callbacks: ForwardCallbacks): void;
  close(): Promise<void>;
}

export interface ForwarderOptions {
  readonly upstream: UpstreamAddress;
  readonly timeoutMs: number;
  readonly connections: number;
}

function hasBody(raw: IncomingMessage): boolean {
  const length = raw.headers['content-length'];
  return raw.headers['transfer-encoding'] !== undefined || (length !== undefined && length !== '0');
}

function isTimeout(error: Error & { code?: string }): boolean {
  return error.code === 'UND_ERR_HEADERS_TIMEOUT' || error.code === 'UND_ERR_BODY_TIMEOUT' || error.code === 'UND_ERR_CONNECT_TIMEOUT';
}

/** Response headers as the client gets them: hop-by-hop ones and those the Connection header names removed. */
export function clientResponseHeaders(headers: Record<string, string | string[] | undefined>): OutgoingHttpHeaders {
  const out: OutgoingHttpHeaders = {};
  const named = connectionNamed(headers['connection']);
  for (const name of Object.keys(headers)) {
    if (isHopByHopResponseHeader(name, named)) continue;
    out[name] = headers[name];
  }
  return out;
}

/** The application's answer headers with the sidecar's own appended (its Set-Cookie next to the app's). */
function withAdded(headers: OutgoingHttpHeaders, added: Readonly<Record<string, string | readonly string[]>> | undefined): OutgoingHttpHeaders {
  if (added === undefined) return headers;
  for (const [name, value] of Object.entries(added)) {
    const existing = headers[name];
    const values = typeof value === 'string' ? [value] : [...value];
    headers[name] = existing === undefined ? values : [...(Array.isArray(existing) ? existing : [String(existing)]), ...values];
  }
  return headers;
}

/** RFC 6455 §4.2.2: the GUID the server appends to the client's key for Sec-WebSocket-Accept. */
const WEBSOCKET_GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11';

/** True when a 101 answer completes a WebSocket handshake for `key` (RFC 6455 §4.1, the client's checks). */
export function acceptsWebSocket(headers: Record<string, string | string[] | undefined>, key: string | string[] | undefined): boolean {
  if (typeof key !== 'string') return false;
  const upgrade = headers['upgrade'];
  const accept = headers['sec-websocket-accept'];
  if (typeof upgrade !== 'string' || upgrade.toLowerCase() !== 'websocket' || typeof accept !== 'string') return false;
  return accept === createHash('sha1').update(key + WEBSOCKET_GUID).digest('base64');
}

/** The status line and headers of a 101 answer, as written to the client's socket. */
function switchingProtocols(headers: Record<string, string | string[] | undefined>): string {
  let head = 'HTTP/1.1 101 Switching Protocols\r\n';
  for (const [name, value] of Object.entries(headers)) {
    if (value === undefined) continue;
    for (const v of typeof value === 'string' ? [value] : value) head += `${name}: ${v}\r\n`;
  }
  return `${head}\r\n`;
}

export function createForwarder(options: ForwarderOptions): Forwarder {
  const { upstream } = options;
  const pool =
    upstream.kind === 'unix'
      ? new Pool('http://localhost', { socketPath: upstream.path, connections: options.connections, pipelining: 1, headersTimeout: options.timeoutMs, bodyTimeout: options.timeoutMs })
      : new Pool(upstream.origin, { connections: options.connections, pipelining: 1, headersTimeout: options.timeoutMs, bodyTimeout: options.timeoutMs });
  const host = upstream.kind === 'unix' ? 'localhost' : new URL(upstream.origin).host;

  return {
    forward(request, res, callbacks) {
      const headers = request.headers;
      headers['host'] = host;
      // undici frames the body itself; a client's framing header is not the upstream connection's.
      delete headers['transfer-encoding'];
      const withBody = hasBody(request.raw);
      if (!withBody) delete headers['content-length'];

      let controller: Dispatcher.DispatchController | undefined;
      let done = false;
      // A client that left while the request was being decided: nothing is forwarded ('close' has fired already).
      let clientGone = res.destroyed || res.closed;
      if (clientGone) {
        callbacks.onAbandoned?.();
        return;
      }
      res.once('close', () => {
        // The client went away before the answer was complete: stop the upstream request too (or, while it
        // still waits for a pooled connection, as soon as it starts).
        if (done) return;
        clientGone = true;
        controller?.abort(new Error('the client closed the connection'));
      });

      const handler: Dispatcher.DispatchHandler = {
        onRequestStart(c) {
          controller = c;
          if (clientGone) c.abort(new Error('the client closed the connection'));
        },
        onResponseStart(c, statusCode, responseHeaders) {
          // Informational answers (100 Continue, 102, 103 Early Hints) come before the real one: only the
          // final answer goes to the client.
          if (statusCode < 200) return;
          callbacks.onResponse?.(statusCode);
          res.writeHead(statusCode, withAdded(clientResponseHeaders(responseHeaders), request.addToResponse));
          controller = c;
        },
        onResponseData(c, chunk) {
          if (!res.write(chunk)) {
            // A response destroyed meanwhile never drains: stop the upstream instead of waiting.
            if (res.destroyed) {
              c.abort(new Error('the client closed the connection'));
              return;
            }
            c.pause();
            res.once('drain', () => c.resume());
          }
        },
        onResponseEnd() {
          done = true;
          res.end();
        },
        onResponseError(_c, error) {
          done = true;
          if (clientGone || res.destroyed) {
            callbacks.onAbandoned?.();
            return;
          }
          if (!res.headersSent) {
            callbacks.onFailure(isTimeout(error) ? 'timeout' : 'unavailable', error);
          } else {
            // Headers are out: the only honest signal left is a broken response.
            res.destroy(error);
          }
        },
      };
      pool.dispatch(
        {
          origin: upstream.kind === 'unix' ? 'http://localhost' : upstream.origin,
          method: request.method,
          path: request.path,
          headers: headers as Record<string, string | string[]>,
          body: withBody ? request.raw : null,
        },
        handler,
      );
    },
    upgrade(request, callbacks) {
      const client = request.socket;
      const abort = new AbortController();
      const onClientGone = (): void => abort.abort(new Error('the client closed the connection'));
      client.once('close', onClientGone);
      // A handshake has no body: a client's framing header would make undici wait for one.
      const headers: Record<string, string | string[] | undefined> = { ...request.headers, host };
      delete headers['content-length'];
      pool
        .upgrade({ path: request.path, method: 'GET', headers, protocol: 'websocket', signal: abort.signal })
        .then(
          ({ headers: answered, socket: app }) => {
            client.off('close', onClientGone);
            if (client.destroyed) {
              app.destroy();
              return;
            }
            // Only a real WebSocket handshake for this very key joins the sockets: any other 101 (an app
            // route that says 101 and keeps speaking HTTP) would turn the connection into a tunnel past the
            // decision (WebSocket request smuggling).
            if (!acceptsWebSocket(answered, headers['sec-websocket-key'])) {
              app.destroy();
              callbacks.onFailure('unavailable', new Error('the application answered 101 without a WebSocket handshake for this key'));
              return;
            }
            callbacks.onResponse?.(101);
            // The 101 keeps its Connection and Upgrade; a refreshed session's Set-Cookie is added.
            client.write(switchingProtocols(withAdded({ ...answered }, request.addToResponse) as Record<string, string | string[] | undefined>));
            if (request.head.length > 0) app.write(request.head);
            // Either side closing or failing ends both.
            app.on('error', () => client.destroy());
            client.on('error', () => app.destroy());
            app.on('close', () => client.destroy());
            client.on('close', () => app.destroy());
            app.pipe(client);
            client.pipe(app);
          },
          (error: Error & { code?: string }) => {
            client.off('close', onClientGone);
            if (client.destroyed) return;
            callbacks.onFailure(isTimeout(error) ? 'timeout' : 'unavailable', error);
          },
        );
    },
    close: () => pool.close(),
  };
}
