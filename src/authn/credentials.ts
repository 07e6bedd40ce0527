/**
 * Token extraction (`authn.tokenFrom`): headers, cookies and (only when listed, since URLs end up in logs)
 * query parameters. Every source is read: a request carrying two different credentials is ambiguous
 * (which one did the application see?) and gets a 400, as does a repeated Authorization header
 * (RFC 9110 §11.6.2 allows one) or a repeated token cookie or parameter.
 */
import { DEFAULT_TOKEN_SOURCES } from '../config/defaults.js';
import type { HeaderMap } from '../core/access-request.js';
import type { CredentialExtractor, CredentialResult, ForwardedHeaders } from '../core/stages.js';

// Defined in config/defaults.ts; re-exported for callers that import it from here.
export { DEFAULT_TOKEN_SOURCES } from '../config/defaults.js';

export type TokenSource = { readonly header: string } | { readonly cookie: string } | { readonly query: string };

// RFC 6750 §2.1: b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
const BEARER = /^Bearer +([A-Za-z0-9\-._~+/]+=*) *$/i;
const B64TOKEN = /^[A-Za-z0-9\-._~+/]+=*$/;

type Found = { token: string; source: string } | { error: CredentialResult & { kind: 'error' } };

function malformed(detail: string): Found {
  return { error: { kind: 'error', reason: 'CREDENTIALS_MALFORMED', detail } };
}
function conflict(detail: string): Found {
  return { error: { kind: 'error', reason: 'CREDENTIALS_CONFLICT', detail } };
}

/** Cookie pairs (RFC 6265 §5.4); several Cookie header lines (HTTP/2) are one list. */
function cookies(values: readonly string[] | undefined): Array<[string, string]> {
  const out: Array<[string, string]> = [];
  for (const line of values ?? []) {
    for (const part of line.split(';')) {
      const eq = part.indexOf('=');
      if (eq <= 0) continue;
      out.push([part.slice(0, eq).trim(), part.slice(eq + 1).trim()]);
    }
  }
  return out;
}

function decodeQueryValue(value: string): string | undefined {
  try {
    return decodeURIComponent(value.replaceAll('+', ' '));
  } catch {
    return undefined;
  }
}

function queryValues(query: string | undefined, name: string): Array<string | undefined> {
  if (query === undefined || query === '') return [];
  const out: Array<string | undefined> = [];
  for (const pair of query.split('&')) {
    const eq = pair.indexOf('=');
    const key = decodeQueryValue(eq === -1 ? pair : pair.slice(0, eq));
    if (key === name) out.push(eq === -1 ? '' : decodeQueryValue(pair.slice(eq + 1)));
  }
  return out;
}

/** Reads the token from `sources`, in order; default DEFAULT_TOKEN_SOURCES (the Authorization header). */
export function createCredentialExtractor(sources: readonly TokenSource[] = DEFAULT_TOKEN_SOURCES): CredentialExtractor {
  if (sources.length === 0) throw new TypeError('tokenFrom needs at least one source');
  const headers = sources.flatMap((s) => ('header' in s ? [s.header.toLowerCase()] : []));
  const cookieNames = new Set(sources.flatMap((s) => ('cookie' in s ? [s.cookie] : [])));
  const queryNames = new Set(sources.flatMap((s) => ('query' in s ? [s.query] : [])));

  function fromHeader(name: string, values: readonly string[]): Found | undefined {
    if (values.length > 1) return conflict(`the request has more than one ${name} header`);
    const value = values[0] ?? '';
    const bearer = BEARER.exec(value);
    if (bearer?.[1] !== undefined) return { token: bearer[1], source: `header:${name}` };
    // Custom headers may carry the bare token; Authorization must use the Bearer scheme.
    if (name !== 'authorization' && B64TOKEN.test(value.trim())) return { token: value.trim(), source: `header:${name}` };
    return malformed(name === 'authorization' ? 'the Authorization header is not a Bearer token' : `the ${name} header is not a token`);
  }

  function fromSingle(kind: string, name: string, values: ReadonlyArray<string | undefined>): Found | undefined {
    if (values.length === 0) return undefined;
    if (values.length > 1) return conflict(`the request has more than one ${name} ${kind}`);
    const value = values[0];
    if (value === undefined || !B64TOKEN.test(value)) return malformed(`the ${name} ${kind} is not a token`);
    return { token: value, source: `${kind}:${name}` };
  }

  return {
    tokenHeaders: headers,
    extract(map: HeaderMap, query: string | undefined): CredentialResult {
      const found: Found[] = [];
      for (const source of sources) {
        let f: Found | undefined;
        if ('header' in source) {
          const values = map[source.header.toLowerCase()];
          f = values === undefined ? undefined : fromHeader(source.header.toLowerCase(), values);
        } else if ('cookie' in source) {
          f = fromSingle('cookie', source.cookie, cookies(map['cookie']).filter(([n]) => n === source.cookie).map(([, v]) => v));
        } else {
          f = fromSingle('query parameter', source.query, queryValues(query, source.query));
        }
        if (f === undefined) continue;
        if ('error' in f) return f.error;
        found.push(f);
      }
      const tokens = found as Array<{ token: string; source: string }>;
      const first = tokens[0];
      if (first === undefined) return { kind: 'none' };
      if (tokens.some((f) => f.token !== first.token)) {
        return { kind: 'error', reason: 'CREDENTIALS_CONFLICT', detail: 'the request carries two different credentials' };
      }
      return { kind: 'token', token: first.token, source: first.source };
    },
    scrubHeaders(forwarded: ForwardedHeaders): void {
      for (const name of headers) delete forwarded[name];
      if (cookieNames.size > 0 && forwarded['cookie'] !== undefined) {
        const lines = typeof forwarded['cookie'] === 'string' ? [forwarded['cookie']] : forwarded['cookie'];
        const kept = cookies(lines).filter(([n]) => !cookieNames.has(n));
        if (kept.length === 0) delete forwarded['cookie'];
        else forwarded['cookie'] = kept.map(([n, v]) => `${n}=${v}`).join('; ');
      }
    },
    scrubQuery(query: string | undefined): string | undefined {
      if (queryNames.size === 0 || query === undefined) return query;
      return query
        .split('&')
        .filter((pair) => {
          const eq = pair.indexOf('=');
          const key = decodeQueryValue(eq === -1 ? pair : pair.slice(0, eq));
          return key === undefined || !queryNames.has(key);
        })
        .join('&');
    },
  };
}
