/**
 * AccessRequest: what every front door turns its wire request into. The core canonicalizes the target once
 * (canonical-path.ts); everything downstream (credentials, policy, the forwarded request) reads only this.
 */

export type FrontDoor = 'proxy' | 'extAuthzHttp' | 'extAuthzGrpc' | 'forwardAuth' | 'cli';

/** Header map with lower-case names and every value a header had (two `Authorization` lines are two values). */
export type HeaderMap = Readonly<Record<string, readonly string[]>>;

/** What a front door hands to `decide()`: the request as it arrived, target not yet canonicalized. */
export interface WireRequest {
  readonly frontDoor: FrontDoor;
  readonly method: string;
  /** The raw request target as received (origin-form or absolute-form). */
  readonly target: string;
  readonly host: string;
  readonly headers: HeaderMap;
  /** The caller's transport identity where the door knows one (Istio SPIFFE id); '' otherwise. */
  readonly peer: string;
  readonly requestId: string;
  /**
   * True when the door itself forwards the canonical path (the proxy). A door that only answers a check
   * cannot make the application see the canonical path, so paths that would need normalizing are refused
   * there rather than a form authorized that the application never receives.
   */
  readonly rewritesPath: boolean;
  /**
   * False when the door cannot tell its proxy to remove headers (forward-auth: nginx copies only what it is
   * told to set). A client's identity or override header would then reach the application unless the proxy
   * overwrites it, so such a request is refused (400) rather than hoped for.
   */
  readonly removesHeaders: boolean;
  /**
   * False when the door's proxy cannot relay a redirect (nginx auth_request turns anything but 2xx, 401 and
   * 403 into a 500): a browser that would be sent to sign in gets the 401, which nginx's error_page sends
   * to the start route instead. Default true.
   */
  readonly redirects?: boolean;
  /** Reads the request body as text, up to `limit` bytes (undefined when larger or unreadable); for the sign-in routes. */
  readonly readBody?: BodyReader | undefined;
  /** The door's span context when tracing is on (opaque to the core), the parent of the stage spans. */
  readonly trace?: unknown;
}

export type BodyReader = (limit: number) => Promise<string | undefined>;

export interface AccessRequest {
  readonly frontDoor: FrontDoor;
  readonly method: string;
  /** Canonical path (DESIGN.md §3): what the policy matches and what is forwarded upstream. */
  readonly path: string;
  /** The query exactly as received, without '?'; undefined when there was none. Never matched by path rules. */
  readonly query: string | undefined;
  readonly host: string;
  /** Headers with every client-supplied identity header already removed. */
  readonly headers: HeaderMap;
  readonly peer: string;
  readonly requestId: string;
  /** The body, for the one route that reads one (back-channel logout); never read for a decision. */
  readonly readBody?: BodyReader | undefined;
  /** The door's span context when tracing is on (opaque to the core). */
  readonly trace?: unknown;
}

/** Builds a HeaderMap with a null prototype, so a header named `__proto__` or `constructor` is just data. */
export function headerMap(entries: Iterable<readonly [string, string | readonly string[] | undefined]>): HeaderMap {
  const map: Record<string, string[]> = Object.create(null) as Record<string, string[]>;
  for (const [name, value] of entries) {
    if (value === undefined) continue;
    const key = name.toLowerCase();
    const values = typeof value === 'string' ? [value] : [...value];
    const existing = map[key];
    if (existing) existing.push(...values);
    else map[key] = values;
  }
  return map;
}

/**
 * The HeaderMap of a request as node received it (`rawHeaders`: name, value, name, value...), in one pass:
 * every line kept, names lower-cased. Cheaper than going through node's `headersDistinct` object.
 */
export function headerMapFromRaw(rawHeaders: readonly string[]): HeaderMap {
  const map: Record<string, string[]> = Object.create(null) as Record<string, string[]>;
  for (let i = 0; i + 1 < rawHeaders.length; i += 2) {
    const key = (rawHeaders[i] ?? '').toLowerCase();
    const value = rawHeaders[i + 1] ?? '';
    const existing = map[key];
    if (existing === undefined) map[key] = [value];
    else existing.push(value);
  }
  return map;
}
