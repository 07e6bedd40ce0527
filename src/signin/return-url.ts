/**
 * Return URLs of browser sign-in (DESIGN.md §7: `rd` of start and sign-out, `postLogoutRedirect`): where the
 * sidecar may send a browser with a 302. An open redirect here hands a sign-in to a phishing page, and every
 * peer has had several (oauth2-proxy: CVE-2020-5233, CVE-2020-11053, CVE-2020-4037, CVE-2021-21291;
 * mod_auth_openidc: CVE-2021-32786, CVE-2021-39191, CVE-2022-23527), each a shape some browser reads as
 * another host. So the rule allows two shapes only, checked on the raw text before any parsing:
 *
 * - a path: exactly one leading `/`, then no `/` or `\` (raw or percent-encoded) right after it, no backslash
 *   anywhere, and nothing but visible ASCII, with no encoded control character or whitespace;
 * - an absolute URL: `https` (`http` only when allowed), no user info, and a host that is the callback URL's
 *   or one of `allowedRedirectHosts` (`app.example.com`: that host; `.example.com`: its subdomains, on the
 *   scheme's default port).
 *
 * Anything else is refused (answered 400, never redirected).
 */

export interface ReturnUrlPolicy {
  /** The callback URL's host (`host[:port]`, lower case): always an allowed host. */
  readonly callbackHost: string;
  /** `app.example.com` (that host, any port given with it) or `.example.com` (its subdomains). */
  readonly allowedHosts: readonly string[];
  /** `http` URLs too (only when the cookie is not `secure`, on a loopback callback). */
  readonly allowHttp: boolean;
}

export type ReturnUrl = { readonly ok: true; readonly location: string } | { readonly ok: false; readonly reason: string };

/** Visible ASCII only: no control characters, whitespace, DEL or raw non-ASCII (an IDN look-alike). */
const VISIBLE_ASCII = /^[\x21-\x7e]+$/;
/**
 * Percent-encoded control characters, space, DEL and backslash, and the UTF-8 of Unicode whitespace and
 * invisible characters (NBSP, NEL, U+1680, U+2000-U+203F with the line and paragraph separators, U+3000,
 * the BOM). Other encoded UTF-8 (a path with `%C3%A9`) is fine.
 */
const ENCODED_FORBIDDEN = /%(?:[01][0-9a-f]|20|7f|5c)|%c2%(?:a0|85)|%e1%9a%80|%e2%80%[89ab][0-9a-f]|%e3%80%80|%ef%bb%bf/i;
const MAX_LENGTH = 2048;

function refuse(reason: string): ReturnUrl {
  return { ok: false, reason };
}

function hostAllowed(url: URL, policy: ReturnUrlPolicy): boolean {
  const host = url.host.toLowerCase();
  const hostname = url.hostname.toLowerCase();
  if (host === policy.callbackHost.toLowerCase()) return true;
  for (const entry of policy.allowedHosts) {
    const e = entry.toLowerCase();
    if (e.startsWith('.')) {
      // Subdomains only, on the default port (url.port is '' then).
      if (url.port === '' && hostname.length > e.length && hostname.endsWith(e)) return true;
    } else if (host === e) {
      return true;
    }
  }
  return false;
}

/** Checks a return URL; `location` is what goes into the Location header. */
export function checkReturnUrl(value: string | undefined, policy: ReturnUrlPolicy): ReturnUrl {
  if (value === undefined || value === '') return refuse('no return URL');
  if (value.length > MAX_LENGTH) return refuse('the return URL is too long');
  if (!VISIBLE_ASCII.test(value)) return refuse('the return URL holds whitespace, control or non-ASCII characters');
  if (value.includes('\\')) return refuse('the return URL holds a backslash');
  if (ENCODED_FORBIDDEN.test(value)) return refuse('the return URL holds an encoded control character, space or backslash');

  if (value.startsWith('/')) {
    // `//host` and `/\host` (and their encoded forms) are network-path references to another host.
    const second = value.slice(1, 4).toLowerCase();
    if (second.startsWith('/') || second.startsWith('%2f')) return refuse('the return path starts with more than one slash');
    return { ok: true, location: value };
  }

  const scheme = /^([a-z][a-z0-9+.-]*):/i.exec(value)?.[1]?.toLowerCase();
  if (scheme !== 'https' && !(scheme === 'http' && policy.allowHttp)) return refuse('the return URL is neither a path nor an https URL');
  // `https:evil.com` and `https:/evil.com` parse as `https://evil.com` in WHATWG URLs.
  if (!value.slice(scheme.length + 1).startsWith('//')) return refuse('the return URL is not of the form scheme://host/...');
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    return refuse('the return URL cannot be parsed');
  }
  if (url.username !== '' || url.password !== '' || value.slice(scheme.length + 3).split(/[/?#]/, 1)[0]?.includes('@')) {
    return refuse('the return URL holds user info');
  }
  if (!hostAllowed(url, policy)) return refuse('the return URL names a host that is not allowed');
  return { ok: true, location: url.href };
}
