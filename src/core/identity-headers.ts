/**
 * Identity headers: the only channel through which the application learns who the caller is, so nothing a
 * client sends may look like one (mod_auth_openidc CVE-2017-6413: spoofed claim headers). Incoming headers
 * under the prefix, in any case and with `_` for `-` (many servers fold `X_Auth_Subject` into
 * `X-Auth-Subject`), and every configured header name are removed before anything else; on allow they are
 * set from the verified identity only.
 */
import { claimAt, type ClaimValue, type Identity } from './identity.js';

export interface IdentityHeaderOptions {
  readonly prefix: string;
  readonly subject: string;
  readonly issuer: string;
  readonly roles: string;
  readonly scopes: string;
  /** header name -> dotted claim path */
  readonly claims: Readonly<Record<string, string>>;
}

/**
 * Headers that would let a client change what the application does after the decision: method overrides
 * (a GET authorized, then run as DELETE by frameworks honouring X-HTTP-Method-Override) and URL rewrites
 * (X-Original-URL / X-Rewrite-URL, honoured by IIS and Symfony). Removed like identity headers.
 */
export const OVERRIDE_HEADERS = Object.freeze(['x-http-method-override', 'x-http-method', 'x-method-override', 'x-original-url', 'x-rewrite-url']);

export interface IdentityHeaders {
  /**
   * True for a header a client must never be able to pass to the application: identity headers (name in
   * any case, `_` or `-`) and the OVERRIDE_HEADERS.
   */
  isClientIdentityHeader(name: string): boolean;
  /**
   * Every header name the sidecar owns, lower-case: the configured identity headers and the
   * OVERRIDE_HEADERS. Check doors ask their proxy to remove each one the sidecar does not set, whether or
   * not the check request showed it (the proxy may not include every client header in the check).
   */
  readonly names: readonly string[];
  /**
   * The headers for an allowed request; `undefined` when the identity cannot be rendered safely, which the
   * engine turns into a 401. The anonymous identity gets no identity headers at all.
   */
  render(identity: Identity): Record<string, string> | undefined;
}

function normalize(name: string): string {
  return name.toLowerCase().replaceAll('_', '-');
}

const PLAIN = /^[\x21-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?$/;

/**
 * A value goes out as is when it is printable ASCII without `%`, without leading or trailing space (and,
 * in lists, without `,`); otherwise it is percent-encoded (encodeURIComponent). So a consumer can always
 * apply decodeURIComponent. Returns undefined for what cannot be encoded (lone UTF-16 surrogates).
 */
function encodeValue(value: string, inList: boolean): string | undefined {
  if (PLAIN.test(value) && !value.includes('%') && !(inList && value.includes(','))) return value;
  try {
    return encodeURIComponent(value);
  } catch {
    return undefined;
  }
}

function renderClaim(value: ClaimValue): string | undefined {
  if (typeof value === 'string') return encodeValue(value, false);
  if (typeof value === 'number' || typeof value === 'boolean') return String(value);
  if (Array.isArray(value) && value.every((v) => typeof v === 'string')) return renderList(value);
  if (value === null) return undefined;
  return encodeValue(JSON.stringify(value), false);
}

function renderList(items: readonly string[]): string | undefined {
  const out: string[] = [];
  for (const item of items) {
    const encoded = encodeValue(item, true);
    if (encoded === undefined) return undefined;
    out.push(encoded);
  }
  return out.join(',');
}

export function createIdentityHeaders(options: IdentityHeaderOptions): IdentityHeaders {
  const prefix = normalize(options.prefix);
  const named = new Set(
    [options.subject, options.issuer, options.roles, options.scopes, ...Object.keys(options.claims), ...OVERRIDE_HEADERS].map(normalize),
  );
  const claimHeaders = Object.entries(options.claims).map(([header, path]) => [header.toLowerCase(), path] as const);

  // Both spellings: a proxy that forwards `X_Auth_Roles` as is (Envoy does by default) must remove it too.
  const names = Object.freeze(
    [
      ...new Set(
        [options.subject, options.issuer, options.roles, options.scopes, ...Object.keys(options.claims), ...OVERRIDE_HEADERS].flatMap((n) => [
          n.toLowerCase(),
          n.toLowerCase().replaceAll('-', '_'),
        ]),
      ),
    ],
  );

  return {
    names,
    isClientIdentityHeader(name: string): boolean {
      const n = normalize(name);
      return (prefix !== '' && n.startsWith(prefix)) || named.has(n);
    },
    render(identity: Identity): Record<string, string> | undefined {
      const headers: Record<string, string> = Object.create(null) as Record<string, string>;
      if (identity.anonymous) return headers;
      const subject = encodeValue(identity.subject, false);
      if (subject === undefined) return undefined;
      headers[options.subject] = subject;
      if (identity.issuer !== undefined) {
        const issuer = encodeValue(identity.issuer, false);
        if (issuer === undefined) return undefined;
        headers[options.issuer] = issuer;
      }
      for (const [header, list] of [
        [options.roles, identity.roles],
        [options.scopes, identity.scopes],
      ] as const) {
        if (list.length === 0) continue;
        const rendered = renderList(list);
        if (rendered === undefined) return undefined;
        headers[header] = rendered;
      }
      for (const [header, path] of claimHeaders) {
        const value = claimAt(identity.claims, path);
        if (value === undefined) continue;
        if (value === null) continue;
        const rendered = renderClaim(value);
        // A claim the operator asked for that cannot be rendered safely fails the identity, like the subject.
        if (rendered === undefined) return undefined;
        headers[header] = rendered;
      }
      return headers;
    },
  };
}
