/**
 * Envoy/Istio HTTP ext_authz (`extAuthz.http`, Istio `envoyExtAuthzHttp`). Envoy sends the original method,
 * `pathPrefix` + the original path with its query, and the original headers it is told to include. We
 * answer 200 with the identity headers (Istio `headersToUpstreamOnAllow`) and
 * `x-envoy-auth-headers-to-remove` for the token and spoofed identity headers, or the deny itself
 * (status, WWW-Authenticate, problem body), which Envoy passes to the client.
 */
import { createHttpCheckServer, type CheckServer, type HttpCheckServerOptions } from './http-check-server.js';

export function createExtAuthzHttpServer(options: HttpCheckServerOptions & { readonly pathPrefix: string }): CheckServer {
  const prefix = options.pathPrefix;
  return createHttpCheckServer(
    {
      frontDoor: 'extAuthzHttp',
      translate({ method, url, headers }) {
        if (!url.startsWith(prefix)) return { error: `the check path does not start with the configured pathPrefix` };
        const target = url.slice(prefix.length);
        return { method, target: target.startsWith('/') ? target : `/${target}`, host: headers['host']?.[0] ?? '', peer: '' };
      },
      allowHeaders(changes) {
        const headers: Record<string, string> = { ...changes.set };
        if (changes.remove.length > 0) headers['x-envoy-auth-headers-to-remove'] = changes.remove.join(',');
        return headers;
      },
    },
    options,
  );
}
