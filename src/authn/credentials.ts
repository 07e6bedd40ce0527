/**
 * Token extraction (`authn.tokenFrom`). Sources are checked in order and all of them are read: a request
 * carrying two different credentials is ambiguous (which one did the application see?) and gets a 400,
 * as does a repeated Authorization header (RFC 9110 §11.6.2 allows one).
 */
import type { HeaderMap } from '../core/access-request.js';
import type { CredentialExtractor, CredentialResult } from '../core/stages.js';

export interface HeaderTokenSource {
  /** Header name; for `authorization` the value must be `Bearer <token>` (scheme case-insensitive). */
  readonly header: string;
}
export type TokenSource = HeaderTokenSource;

export const DEFAULT_TOKEN_SOURCES: readonly TokenSource[] = Object.freeze([{ header: 'authorization' }]);

// RFC 6750 §2.1: b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
const BEARER = /^Bearer +([A-Za-z0-9\-._~+/]+=*) *$/i;
const B64TOKEN = /^[A-Za-z0-9\-._~+/]+=*$/;

export function createCredentialExtractor(sources: readonly TokenSource[] = DEFAULT_TOKEN_SOURCES): CredentialExtractor {
  if (sources.length === 0) throw new TypeError('tokenFrom needs at least one source');
  const headers = sources.map((s) => s.header.toLowerCase());

  function fromHeader(name: string, value: string): string | undefined {
    const bearer = BEARER.exec(value);
    if (bearer) return bearer[1];
    // Custom headers may carry the bare token; Authorization must use the Bearer scheme.
    if (name !== 'authorization' && B64TOKEN.test(value.trim())) return value.trim();
    return undefined;
  }

  return {
    tokenHeaders: headers,
    extract(map: HeaderMap): CredentialResult {
      const found: Array<{ token: string; source: string }> = [];
      for (const name of headers) {
        const values = map[name];
        if (values === undefined) continue;
        if (values.length > 1) {
          return { kind: 'error', reason: 'CREDENTIALS_CONFLICT', detail: `the request has more than one ${name} header` };
        }
        const token = fromHeader(name, values[0] ?? '');
        if (token === undefined) {
          return {
            kind: 'error',
            reason: 'CREDENTIALS_MALFORMED',
            detail: name === 'authorization' ? 'the Authorization header is not a Bearer token' : `the ${name} header is not a token`,
          };
        }
        found.push({ token, source: `header:${name}` });
      }
      const first = found[0];
      if (first === undefined) return { kind: 'none' };
      if (found.some((f) => f.token !== first.token)) {
        return { kind: 'error', reason: 'CREDENTIALS_CONFLICT', detail: 'the request carries two different credentials' };
      }
      return { kind: 'token', token: first.token, source: first.source };
    },
  };
}
