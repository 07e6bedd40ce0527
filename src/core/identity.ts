/**
 * Identity: who the caller is once authentication is done. Claims are untrusted input and live in
 * null-prototype objects (see copyClaims), so `__proto__` or `constructor` claims are plain data.
 */

export type ClaimValue = string | number | boolean | null | ClaimValue[] | Claims;
export interface Claims {
  [name: string]: ClaimValue;
}

export interface Identity {
  /** True for a request without credentials, evaluated as the configured anonymous subject. */
  readonly anonymous: boolean;
  /** The subject as taken from the token (without subjectPrefix), or the anonymous subject. */
  readonly subject: string;
  readonly issuer: string | undefined;
  readonly roles: readonly string[];
  readonly scopes: readonly string[];
  readonly claims: Readonly<Claims>;
}

const MAX_CLAIM_DEPTH = 16;

/**
 * Deep-copies a JSON value into null-prototype objects. Values that are not JSON (functions, symbols) are
 * dropped; nesting deeper than 16 levels is cut off (a token is bounded by header size, this bounds the walk).
 */
export function copyClaims(value: unknown, depth = 0): Claims {
  const out = Object.create(null) as Claims;
  if (typeof value !== 'object' || value === null || Array.isArray(value) || depth > MAX_CLAIM_DEPTH) return out;
  for (const key of Object.keys(value)) {
    const copied = copyClaimValue((value as Record<string, unknown>)[key], depth + 1);
    if (copied !== undefined) out[key] = copied;
  }
  return out;
}

function copyClaimValue(value: unknown, depth: number): ClaimValue | undefined {
  if (value === null || typeof value === 'string' || typeof value === 'boolean') return value;
  if (typeof value === 'number') return Number.isFinite(value) ? value : undefined;
  if (depth > MAX_CLAIM_DEPTH) return undefined;
  if (Array.isArray(value)) {
    const arr: ClaimValue[] = [];
    for (const item of value) {
      const copied = copyClaimValue(item, depth + 1);
      if (copied !== undefined) arr.push(copied);
    }
    return arr;
  }
  if (typeof value === 'object') return copyClaims(value, depth);
  return undefined;
}

/** Reads a dotted claim path (`realm_access.roles`) through own properties only. */
export function claimAt(claims: Readonly<Claims>, dottedPath: string): ClaimValue | undefined {
  let current: ClaimValue | undefined = claims;
  for (const part of dottedPath.split('.')) {
    if (typeof current !== 'object' || current === null || Array.isArray(current)) return undefined;
    if (!Object.hasOwn(current, part)) return undefined;
    current = current[part];
  }
  return current;
}
