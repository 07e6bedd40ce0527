/**
 * The canonical path (DESIGN.md §3), computed once per request and used both for the policy decision and
 * for the request forwarded upstream, so that what was authorized is exactly what the application sees.
 * Every rule here closes a class of published bypasses: dot segments (Envoy CVE-2019-9901), encoded slashes
 * and backslashes (Envoy CVE-2021-29492), `;` path parameters (Istio #27409, Tomcat `..;`), NUL/CR/LF,
 * and fragments smuggled into the target.
 */
import { AuthzSidecarError, type ReasonCode } from './errors.js';

export interface PathOptions {
  /** `reject` (default): `%2F` and `%5C` give 400. `decode`: both become `/`. */
  readonly encodedSlashes: 'reject' | 'decode';
  /** `reject` (default): any `;` in the path gives 400. `keep`: forwarded as is, but `.;x` / `..;x` segments are rejected. */
  readonly semicolons: 'reject' | 'keep';
  /**
   * For doors that cannot rewrite the path the application receives (ext_authz, forward-auth): a path
   * with dot segments or empty segments is refused (PATH_NOT_CANONICAL) instead of normalized, since the
   * application would see the raw form and may resolve it differently (`/public//../admin`).
   */
  readonly strictSegments?: boolean;
}

export const DEFAULT_PATH_OPTIONS: PathOptions = Object.freeze({ encodedSlashes: 'reject', semicolons: 'reject' });

export interface CanonicalTarget {
  /** Canonical path: starts with `/`, no dot segments, no empty segments, unreserved characters decoded. */
  readonly path: string;
  /** The query exactly as received, without the leading `?`; `undefined` when the target had no `?`. */
  readonly query: string | undefined;
  /** The authority of an absolute-form target (`GET http://host/path`), which overrides `Host` (RFC 9112 §3.2.2). */
  readonly authority: string | undefined;
}

const HEX = /^[0-9A-Fa-f]{2}$/;
const ABSOLUTE_FORM = /^([A-Za-z][A-Za-z0-9+.-]*):\/\/([^/?#]*)(.*)$/s;
const AUTHORITY = /^(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?$/;
/** RFC 3986 pchar and "/" without "%": a path made only of these needs no decoding. */
const PLAIN_PATH = /^[A-Za-z0-9\-._~!$&'()*+,;=:@/]*$/;
const NOT_PCHAR = /^["<>`{}|^[\]]$/;
const UTF8 = new TextDecoder('utf-8', { fatal: true });

function isUnreserved(byte: number): boolean {
  // RFC 3986 §2.3: ALPHA / DIGIT / "-" / "." / "_" / "~"
  return (
    (byte >= 0x41 && byte <= 0x5a) ||
    (byte >= 0x61 && byte <= 0x7a) ||
    (byte >= 0x30 && byte <= 0x39) ||
    byte === 0x2d ||
    byte === 0x2e ||
    byte === 0x5f ||
    byte === 0x7e
  );
}

function fail(code: ReasonCode, detail: string): never {
  throw new AuthzSidecarError(code, detail);
}

/**
 * Canonicalizes a raw HTTP request target (what the client sent after the method). Throws
 * `AuthzSidecarError` with a `PATH_*` code (400) when the target must be rejected.
 */
export function canonicalizeTarget(method: string, target: string, options: PathOptions = DEFAULT_PATH_OPTIONS): CanonicalTarget {
  if (method === 'CONNECT' || target === '*') {
    fail('PATH_TARGET_FORM', 'only origin-form and absolute-form request targets are accepted');
  }
  // Everything on the wire must be visible ASCII: no space, no control character, no raw 8-bit byte.
  for (let i = 0; i < target.length; i++) {
    const c = target.charCodeAt(i);
    if (c <= 0x20 || c === 0x7f) fail('PATH_CONTROL_CHAR', 'the request target contains a control character or space');
    if (c > 0x7e) fail('PATH_BAD_ENCODING', 'the request target contains a character that is not percent-encoded');
  }
  if (target.includes('#')) fail('PATH_FRAGMENT', 'the request target contains a fragment ("#")');

  let authority: string | undefined;
  let rest = target;
  if (!target.startsWith('/')) {
    const m = ABSOLUTE_FORM.exec(target);
    const scheme = m?.[1]?.toLowerCase();
    if (!m || (scheme !== 'http' && scheme !== 'https')) {
      fail('PATH_TARGET_FORM', 'the request target is neither origin-form nor an http(s) absolute-form URI');
    }
    authority = m[2] ?? '';
    if (!AUTHORITY.test(authority)) fail('PATH_TARGET_FORM', 'the absolute-form target has an invalid authority');
    rest = m[3] ?? '';
    if (rest === '' || rest.startsWith('?')) rest = `/${rest}`;
  }
  // "//host/x" is a network-path reference that some URL parsers read as a new authority; the slash
  // merging below makes it the plain path "/host/x".

  const q = rest.indexOf('?');
  const rawPath = q === -1 ? rest : rest.slice(0, q);
  const query = q === -1 ? undefined : rest.slice(q + 1);

  const decoded = decodeUnreserved(rawPath, options);
  const segments = removeDotSegments(decoded);
  // Merge repeated slashes: "" segments other than a trailing one come from "//".
  const merged = segments.filter((s, i) => s !== '' || i === segments.length - 1);
  const path = '/' + merged.join('/');
  if (options.strictSegments === true && path !== decoded) {
    fail('PATH_NOT_CANONICAL', 'the path has dot segments or empty segments; send it normalized (e.g. Envoy normalize_path and merge_slashes)');
  }
  if (options.semicolons === 'keep') {
    for (const seg of merged) {
      const base = seg.split(';', 1)[0];
      if (seg.includes(';') && (base === '.' || base === '..')) {
        fail('PATH_SEMICOLON', 'a dot segment with ";" parameters is ambiguous (Tomcat "..;")');
      }
    }
  }
  return { path, query, authority };
}

/**
 * Percent-decodes unreserved characters exactly once (RFC 3986 §6.2.2.2), upper-cases the hex of the
 * escapes it keeps, and rejects what must never reach a router: decoded NUL/CR/LF/#, backslashes, encoded
 * slashes (unless configured), raw `;` (unless configured) and invalid UTF-8.
 */
function decodeUnreserved(rawPath: string, options: PathOptions): string {
  if (rawPath.includes('\\')) fail('PATH_BACKSLASH', 'the path contains a backslash');
  if (options.semicolons === 'reject' && rawPath.includes(';')) {
    fail('PATH_SEMICOLON', 'the path contains ";" (path parameters are not accepted)');
  }
  if (PLAIN_PATH.test(rawPath)) return rawPath;

  const bytes: number[] = [];
  let out = '';
  for (let i = 0; i < rawPath.length; i++) {
    const ch = rawPath[i] ?? '';
    if (ch !== '%') {
      bytes.push(ch.charCodeAt(0));
      // Characters RFC 3986 never allows raw in a path are sent encoded, as a WHATWG URL parser would.
      out += NOT_PCHAR.test(ch) ? `%${ch.charCodeAt(0).toString(16).toUpperCase()}` : ch;
      continue;
    }
    const hex = rawPath.slice(i + 1, i + 3);
    if (!HEX.test(hex)) fail('PATH_BAD_ENCODING', 'the path contains an invalid percent-encoding');
    const byte = parseInt(hex, 16);
    bytes.push(byte);
    i += 2;
    if (byte === 0x00 || byte === 0x0a || byte === 0x0d) fail('PATH_CONTROL_CHAR', 'the path contains an encoded NUL, CR or LF');
    if (byte === 0x23) fail('PATH_FRAGMENT', 'the path contains an encoded "#"');
    if (byte === 0x2f || byte === 0x5c) {
      if (options.encodedSlashes === 'reject') fail('PATH_ENCODED_SLASH', 'the path contains an encoded slash or backslash (%2F, %5C)');
      out += '/';
      continue;
    }
    out += isUnreserved(byte) ? String.fromCharCode(byte) : `%${hex.toUpperCase()}`;
  }
  try {
    UTF8.decode(Uint8Array.from(bytes));
  } catch {
    fail('PATH_BAD_ENCODING', 'the path is not valid UTF-8 once percent-decoded');
  }
  return out;
}

/**
 * RFC 3986 §5.2.4 on a path that starts with "/": returns its segments after the leading slash, with "."
 * and ".." resolved; ".." never climbs above the root. A trailing "." or ".." leaves a trailing slash.
 */
function removeDotSegments(path: string): string[] {
  const input = path.split('/').slice(1);
  const output: string[] = [];
  for (let i = 0; i < input.length; i++) {
    const seg = input[i] ?? '';
    const last = i === input.length - 1;
    if (seg === '.' || seg === '..') {
      if (seg === '..') output.pop();
      if (last) output.push('');
      continue;
    }
    output.push(seg);
  }
  return output;
}
