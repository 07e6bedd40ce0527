/**
 * Two browser rules of sign-in (DESIGN.md §7), on the request's headers alone:
 *
 * - Who is redirected to sign in: with `unauthenticated: auto`, only a browser navigation (what a person
 *   typed or clicked) gets the 302 to the start route; a fetch, an XHR, a form POST or an API client gets the
 *   401 with its Bearer challenge, so a script never receives a login page in place of its JSON (oauth2-proxy
 *   #1522).
 * - CSRF: a request authenticated by the session cookie with an unsafe method is refused when the browser
 *   says it comes from another site, or when its Origin is not this origin or an allowed host. With neither
 *   Origin nor Sec-Fetch-Site (no current browser sends an unsafe request so), it is refused too: fail closed.
 */
import type { HeaderMap } from '../core/access-request.js';

export type UnauthenticatedMode = 'auto' | 'redirect' | 'deny';

const first = (headers: HeaderMap, name: string): string | undefined => headers[name]?.[0];

/** A top-level browser navigation: GET/HEAD, fetch metadata of a document navigation (or none), HTML accepted. */
export function isBrowserNavigation(method: string, headers: HeaderMap): boolean {
  if (method !== 'GET' && method !== 'HEAD') return false;
  const mode = first(headers, 'sec-fetch-mode')?.toLowerCase();
  if (mode !== undefined && mode !== 'navigate') return false;
  const dest = first(headers, 'sec-fetch-dest')?.toLowerCase();
  if (dest !== undefined && dest !== 'document') return false;
  if (headers['x-requested-with']?.some((v) => v.toLowerCase() === 'xmlhttprequest')) return false;
  const accept = (headers['accept'] ?? []).join(',').toLowerCase();
  return /(?:^|[\s,])(?:text\/html|application\/xhtml\+xml|\*\/\*)(?:$|[\s,;])/.test(accept);
}

/** Whether a request without credentials is redirected to sign in (else it gets the 401). */
export function redirectsToSignIn(mode: UnauthenticatedMode, method: string, headers: HeaderMap): boolean {
  switch (mode) {
    case 'deny':
      return false;
    case 'redirect':
      return method === 'GET' || method === 'HEAD';
    default:
      return isBrowserNavigation(method, headers);
  }
}

const SAFE_METHODS = new Set(['GET', 'HEAD', 'OPTIONS']);

/**
 * Why a session-authenticated request is refused as cross-site (403), or undefined when it may go on.
 * `origin` is the request's own origin (`https://host[:port]`); `allowedHosts` as in return URLs
 * (`app.example.com`, `.example.com` for subdomains), on `scheme` (the callback URL's) only.
 */
export function csrfRefusal(method: string, headers: HeaderMap, origin: string, allowedHosts: readonly string[], scheme = 'https:'): string | undefined {
  if (SAFE_METHODS.has(method)) return undefined;
  const site = first(headers, 'sec-fetch-site')?.toLowerCase();
  if (site === 'cross-site') return 'a cross-site request may not use the session';
  const given = headers['origin'];
  if (given === undefined) return site === 'same-origin' ? undefined : 'a request that changes state must say its Origin';
  if (given.length !== 1 || given[0] === undefined) return 'the request has more than one Origin';
  const value = given[0].toLowerCase();
  if (value === origin.toLowerCase()) return undefined;
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    return 'the Origin is not this site';
  }
  // An allowed host counts on this site's scheme only (an http page of it could be anyone's on the path).
  if (url.origin !== value || url.protocol !== scheme) return 'the Origin is not this site';
  const hostname = url.hostname;
  for (const entry of allowedHosts.map((h) => h.toLowerCase())) {
    if (entry.startsWith('.') ? url.port === '' && hostname.length > entry.length && hostname.endsWith(entry) : url.host === entry) return undefined;
  }
  return 'the Origin is not this site';
}
