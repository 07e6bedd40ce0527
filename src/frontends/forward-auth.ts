/**
 * Forward-auth (`extAuthz.forwardAuth`): nginx `auth_request`, Traefik `ForwardAuth`, Caddy `forward_auth`.
 * The original request comes from `X-Forwarded-Method`, `X-Forwarded-Uri`, `X-Forwarded-Host` (Traefik,
 * Caddy) or `X-Original-Method`, `X-Original-URI` (nginx). These headers are trusted only here: bind this
 * listener to loopback or a pod-internal address, where only the proxy can reach it. Exactly one family must be
 * present, each header once. The answer is 200 with the identity headers for
 * the proxy to copy upstream, or 401/403 (nginx turns any other status into 500).
 */
import type { HeaderMap } from '../core/access-request.js';
import type { FrontDoor } from './front-door.js';
import { createHttpCheckDoor, type HttpCheckDoorOptions, type OriginalRequest } from './http-check-door.js';

const FORWARDED = ['x-forwarded-method', 'x-forwarded-uri'] as const;
const ORIGINAL = ['x-original-method', 'x-original-uri'] as const;

/**
 * Exactly one family of headers describes the original request. A proxy sets its own family (and must
 * overwrite a client's copy); a request carrying both families, or any of them twice, is ambiguous: a
 * client may have added the other family to get a different request checked (through nginx, a client's
 * own X-Forwarded-Uri would otherwise be read instead of nginx's X-Original-URI). 400, never a guess.
 */
function original(check: { readonly method: string; readonly url: string; readonly headers: HeaderMap }, signInPrefix: string | undefined): OriginalRequest | { error: string } {
  const { headers } = check;
  const present = (names: readonly string[]): boolean => names.some((n) => headers[n] !== undefined);
  const hasForwarded = present(FORWARDED);
  const hasOriginal = present(ORIGINAL);
  if (hasForwarded && hasOriginal) return { error: 'forward-auth got both X-Forwarded-* and X-Original-* headers' };
  if (!hasForwarded && !hasOriginal && signInPrefix !== undefined && isUnder(check.url, signInPrefix)) {
    // A sign-in route proxied here as it is (nginx `location /.authz/`): the request is the original.
    const host = headers['host'];
    if (host !== undefined && host.length !== 1) return { error: 'forward-auth got a repeated Host header' };
    return { method: check.method, target: check.url, host: host?.[0] ?? '', direct: true };
  }
  const [methodName, uriName] = hasForwarded ? FORWARDED : ORIGINAL;
  const single = (name: string): string | undefined | null => {
    const values = headers[name];
    if (values === undefined) return undefined;
    return values.length === 1 ? (values[0] ?? null) : null;
  };
  const method = single(methodName);
  const target = single(uriName);
  // X-Forwarded-Host belongs to the X-Forwarded-* family (Traefik, Caddy). nginx's auth_request passes the
  // client's own X-Forwarded-Host along, so with the X-Original-* family the host is the check's Host only.
  // A repeated X-Forwarded-Host (null) is an error, not a reason to fall back to Host.
  const forwardedHost = hasForwarded ? single('x-forwarded-host') : undefined;
  const host = forwardedHost === undefined ? single('host') : forwardedHost;
  if (method === null || target === null || host === null) return { error: 'forward-auth got a repeated X-Forwarded-*/X-Original-* or Host header' };
  if (method === undefined || target === undefined) {
    return { error: `forward-auth needs ${methodName} and ${uriName}` };
  }
  // nginx's auth_request turns any answer but 2xx, 401 and 403 into a 500: no redirect to sign in there
  // (deploy/nginx sends error_page 401 to the start route instead). Traefik and Caddy relay the 302.
  return { method, target, host: host ?? '', redirects: hasForwarded };
}

/** Whether a request target's path is the prefix or under it (the raw target; the engine decides on the canonical one). */
function isUnder(url: string, prefix: string): boolean {
  const path = url.split('?', 1)[0] ?? '';
  return path === prefix || path.startsWith(`${prefix}/`);
}

export function createForwardAuthDoor(options: HttpCheckDoorOptions & { readonly signInPrefix?: string | undefined }): FrontDoor {
  return createHttpCheckDoor(
    {
      name: 'forwardAuth',
      // The answer cannot tell the proxy to remove headers: a client's identity or override header would
      // reach the app unless the proxy overwrites it, so the engine refuses such requests.
      removesHeaders: false,
      translate: (check) => original(check, options.signInPrefix),
      allowHeaders(changes, headers) {
        const cookie = headers['cookie'];
        if (cookie === undefined) return changes.set;
        // The proxy cannot be told to remove a header, only to copy one: the Cookie header the application
        // may see (without the sidecar's and token cookies) is always in the answer, empty when nothing is
        // left (nginx `proxy_set_header Cookie $authz_cookie` then sends none).
        return { ...changes.set, cookie: changes.set['cookie'] ?? (changes.remove.includes('cookie') ? '' : cookie.join('; ')) };
      },
    },
    options,
  );
}
