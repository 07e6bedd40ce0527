/**
 * AccessRequest: what every front door turns its wire request into. The core canonicalizes the target once
 * (canonical-path.ts); everything downstream (credentials, policy, the forwarded request) reads only this.
 */

import type { CanonicalTarget } from './canonical-path.js';

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
   * The target already canonicalized by the door (the proxy needs it for routing before it decides), from
   * `engine.canonicalize`; decide() computes it itself when absent.
   */
  readonly canonical?: CanonicalTarget | undefined;
}

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
