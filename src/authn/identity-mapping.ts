/**
 * Maps verified claims to an Identity (`identity` config). The subject must be a non-empty string: jose
 * accepts a `sub` that is an array or a number, and an empty subject would collapse into the bare prefix.
 */
import { DEFAULT_ANONYMOUS_SUBJECT, DEFAULT_ROLES_CLAIMS, DEFAULT_SCOPES_CLAIM, DEFAULT_SUBJECT_CLAIM } from '../config/defaults.js';
import { claimAt, copyClaims, type Claims, type ClaimValue, type Identity } from '../core/identity.js';
import type { IdentityMapper, IdentityResult } from '../core/stages.js';

export interface IdentityMappingOptions {
  /** A claim name, or a list where the first present one wins (`[sub, client_id]`). Default `sub`. */
  readonly subjectClaim?: string | readonly string[];
  /** Dotted claim paths whose string or string-array values are roles. Default roles, groups, realm_access.roles. */
  readonly rolesClaims?: readonly string[];
  /** A space-separated string or an array of strings. Default `scope`. */
  readonly scopesClaim?: string;
  /** The subject of a request without a token. Default `anonymous`. */
  readonly anonymousSubject?: string;
}

// Defined in config/defaults.ts; re-exported for callers that import them from here.
export { DEFAULT_ANONYMOUS_SUBJECT, DEFAULT_ROLES_CLAIMS, DEFAULT_SCOPES_CLAIM, DEFAULT_SUBJECT_CLAIM } from '../config/defaults.js';

function strings(value: ClaimValue | undefined, split: boolean): string[] {
  if (typeof value === 'string') return split ? value.split(' ').filter((s) => s !== '') : value === '' ? [] : [value];
  // Non-string entries are ignored: a malformed role grants nothing.
  if (Array.isArray(value)) return value.filter((v): v is string => typeof v === 'string' && v !== '');
  return [];
}

export function createIdentityMapper(options: IdentityMappingOptions = {}): IdentityMapper {
  const subjectClaims =
    typeof options.subjectClaim === 'string' ? [options.subjectClaim] : [...(options.subjectClaim ?? [DEFAULT_SUBJECT_CLAIM])];
  if (subjectClaims.length === 0) throw new TypeError('subjectClaim must name at least one claim');
  const rolesClaims = [...(options.rolesClaims ?? DEFAULT_ROLES_CLAIMS)];
  const scopesClaim = options.scopesClaim ?? DEFAULT_SCOPES_CLAIM;
  const anonymous: Identity = Object.freeze({
    anonymous: true,
    subject: options.anonymousSubject ?? DEFAULT_ANONYMOUS_SUBJECT,
    issuer: undefined,
    roles: Object.freeze([]),
    scopes: Object.freeze([]),
    claims: copyClaims({}),
  });

  return {
    anonymous: () => anonymous,
    fromClaims(claims: Claims, issuer: string): IdentityResult {
      // The first claim that is present decides; a present claim of the wrong type is an error, not a skip.
      const name = subjectClaims.find((c) => claimAt(claims, c) !== undefined);
      const subject = name === undefined ? undefined : claimAt(claims, name);
      if (typeof subject !== 'string' || subject === '') {
        return { ok: false, reason: 'TOKEN_CLAIMS', detail: `the subject claim (${subjectClaims.join(', ')}) is missing or not a non-empty string` };
      }
      const roles = [...new Set(rolesClaims.flatMap((path) => strings(claimAt(claims, path), false)))];
      const scopes = strings(claimAt(claims, scopesClaim), true);
      return { ok: true, identity: { anonymous: false, subject, issuer, roles, scopes, claims } };
    },
  };
}
