/**
 * Envoy/Istio HTTP ext_authz (`extAuthz.http`, Istio `envoyExtAuthzHttp`). Envoy sends the original method,
 * `pathPrefix` + the original path with its query, and the original headers it is told to include. We
 * answer 200 with the identity headers (Istio `headersToUpstreamOnAllow`) and
 * `x-envoy-auth-headers-to-remove` for the token and spoofed identity headers, or the deny itself
 * (status, WWW-Authenticate, problem body), which Envoy passes to the client.
 */
import type { FrontDoor } from './front-door.js';
import { createHttpCheckDoor, type HttpCheckDoorOptions } from './http-check-door.js';

export function createExtAuthzHttpDoor(options: HttpCheckDoorOptions & { readonly pathPrefix: string }): FrontDoor {
  const prefix = options.pathPrefix;
  const rendered = new WeakMap<readonly string[], { readonly set: object; readonly headers: Readonly<Record<string, string>> }>();
  return createHttpCheckDoor(
    {
      name: 'extAuthzHttp',
      removesHeaders: true,
      translate({ method, url, headers }) {
        if (!url.startsWith(prefix)) return { error: `the check path does not start with the configured pathPrefix` };
        // Envoy sends pathPrefix + the original origin-form target. What follows the prefix is never turned
        // into a path: `*` (OPTIONS *) goes to the canonical path rules as it is (400), and anything else not
        // starting with `/` (`/checkpublic/x` under `/check`, an absolute-form check URL) is refused here.
        const target = url.slice(prefix.length);
        if (target === '') return { method, target: '/', host: headers['host']?.[0] ?? '' };
        if (!target.startsWith('/') && target !== '*') return { error: 'the check path is not pathPrefix followed by the original path' };
        return { method, target, host: headers['host']?.[0] ?? '' };
      },
      allowHeaders(changes) {
        // The engine hands out the same `set` and `remove` for every request of an identity: their
        // rendering is kept with them.
        const known = rendered.get(changes.remove);
        if (known?.set === changes.set) return known.headers;
        const headers: Record<string, string> = { ...changes.set };
        if (changes.remove.length > 0) headers['x-envoy-auth-headers-to-remove'] = changes.remove.join(',');
        rendered.set(changes.remove, { set: changes.set, headers: Object.freeze(headers) });
        return headers;
      },
    },
    options,
  );
}
