/**
 * Forward-auth (`extAuthz.forwardAuth`): nginx `auth_request`, Traefik `ForwardAuth`, Caddy `forward_auth`.
 * The original request comes from `X-Forwarded-Method`, `X-Forwarded-Uri`, `X-Forwarded-Host` (Traefik,
 * Caddy) or `X-Original-Method`, `X-Original-URI` (nginx). These headers are trusted only here: bind this
 * listener to loopback or a pod-internal address, where only the proxy can reach it. The answer is 200 with
 * the identity headers for the proxy to copy upstream, or 401/403 (nginx turns any other status into 500).
 */
import type { FastifyInstance } from 'fastify';
import type { HeaderMap } from '../core/access-request.js';
import { createHttpCheckServer, type HttpCheckServerOptions } from './http-check-server.js';

function first(headers: HeaderMap, ...names: string[]): string | undefined {
  for (const name of names) {
    const value = headers[name];
    if (value !== undefined) return value.length === 1 ? value[0] : undefined;
  }
  return undefined;
}

export function createForwardAuthServer(options: HttpCheckServerOptions): FastifyInstance {
  return createHttpCheckServer(
    {
      frontDoor: 'forwardAuth',
      translate({ method, headers }) {
        const target = first(headers, 'x-forwarded-uri', 'x-original-uri');
        if (target === undefined) return { error: 'forward-auth needs exactly one X-Forwarded-Uri or X-Original-URI header' };
        return {
          method: first(headers, 'x-forwarded-method', 'x-original-method') ?? method,
          target,
          host: first(headers, 'x-forwarded-host', 'host') ?? '',
          peer: '',
        };
      },
      allowHeaders: (changes) => ({ ...changes.set }),
    },
    options,
  );
}
