/**
 * Property-based tests of the canonicalizer (fast-check): for any target built from the pieces that
 * path-confusion attacks use, the canonical path is a fixed point, holds no dot segment, no `//`, no encoded
 * slash and no backslash; and decide() never allows a target whose canonical form is denied.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { createCredentialExtractor } from '../../../src/authn/credentials.js';
import { createIdentityMapper } from '../../../src/authn/identity-mapping.js';
import { createCasbinAuthorizer } from '../../../src/authz/casbin-authorizer.js';
import { canonicalizeTarget, type PathOptions } from '../../../src/core/canonical-path.js';
import { createDecisionEngine } from '../../../src/core/decide.js';
import { AuthzSidecarError } from '../../../src/core/errors.js';
import { createIdentityHeaders } from '../../../src/core/identity-headers.js';
import { EXAMPLE_MODEL, EXAMPLE_POLICY } from '../../support/sidecar.js';

const PIECES = [
  '/', '//', '.', '..', '%2e', '%2E', '%2e%2e', '.%2e', '%2f', '%2F', '%5c', '%5C', '\\', ';', ';x=1', '..;', 'a', 'public', 'orders',
  'admin', '42', '%25', '%252e', '%41', '~', '%7e', '%7E', '?', '?q=/../x', '#', '%23', '%00', '%0d', '%ff', '%C3%A9', 'é', ' ', '*', ':',
];
const target = fc.array(fc.constantFrom(...PIECES), { maxLength: 12 }).map((parts) => `/${parts.join('')}`);
const OPTIONS: PathOptions[] = [
  { encodedSlashes: 'reject', semicolons: 'reject' },
  { encodedSlashes: 'decode', semicolons: 'keep' },
];

function canonical(t: string, options: PathOptions): string | undefined {
  try {
    return canonicalizeTarget('GET', t, options).path;
  } catch (err) {
    if (err instanceof AuthzSidecarError) return undefined;
    throw err;
  }
}

describe.each(OPTIONS)('canonicalizeTarget properties (%o)', (options) => {
  it('never throws anything but a 400, and its output is a canonical fixed point', () => {
    fc.assert(
      fc.property(target, (t) => {
        const out = canonical(t, options);
        if (out === undefined) return;
        expect(out.startsWith('/')).toBe(true);
        expect(out).not.toMatch(/\/\.\.?(\/|$)/);
        expect(out.slice(0, -1)).not.toContain('//');
        expect(out).not.toMatch(/%2f|%5c|\\/i);
        expect(out).not.toMatch(/%2e/i);
        expect(canonical(out, options)).toBe(out);
      }),
      { numRuns: 3000 },
    );
  });
});

describe('decide() on random targets', () => {
  it('never allows a target that another normalizer (WHATWG URL, or nginx merge-then-resolve) maps outside what the policy allows', async () => {
    const engine = createDecisionEngine({
      paths: OPTIONS[0] as PathOptions,
      credentials: createCredentialExtractor(),
      authenticators: [],
      identity: createIdentityMapper({}),
      authorizer: await createCasbinAuthorizer({ modelPath: EXAMPLE_MODEL, policyPath: EXAMPLE_POLICY }),
      identityHeaders: createIdentityHeaders({ prefix: 'x-auth-', subject: 'x-auth-subject', issuer: 'x-auth-issuer', roles: 'x-auth-roles', scopes: 'x-auth-scopes', claims: {} }),
      forwardToken: false,
    });
    const wire = (t: string, frontDoor: 'proxy' | 'forwardAuth') => ({ frontDoor, method: 'GET', target: t, host: 'h', headers: {}, peer: '', requestId: 'r', rewritesPath: frontDoor === 'proxy', removesHeaders: true });
    // Independent oracles of how servers behind a proxy resolve a raw path.
    const whatwg = (t: string): string => decodeURIComponent(new URL(t, 'http://app.internal').pathname);
    const nginxLike = (t: string): string => whatwg((t.split('?', 1)[0] ?? '').replace(/\/{2,}/g, '/'));
    let allowed = 0;
    const publicish = fc.oneof(target, target.map((t) => `/public${t}`), target.map((t) => `/public/x${t}`));
    await fc.assert(
      fc.asyncProperty(publicish, async (t) => {
        // Anonymous may only GET /public/*. The proxy forwards the canonical path: however the app resolves
        // it, it stays under /public/.
        const proxied = await engine.decide(wire(t, 'proxy'));
        if (proxied.outcome === 'allow') {
          allowed++;
          const forwarded = proxied.request?.path ?? '';
          for (const resolved of [whatwg(forwarded), nginxLike(forwarded)]) expect(resolved.startsWith('/public/')).toBe(true);
        }
        // A check door cannot change what the app receives, so the RAW target must stay under /public/
        // for every resolver whenever it is allowed there.
        const checked = await engine.decide(wire(t, 'forwardAuth'));
        if (checked.outcome === 'allow') {
          for (const resolved of [whatwg(t), nginxLike(t)]) expect(resolved.startsWith('/public/')).toBe(true);
        }
      }),
      { numRuns: 3000 },
    );
    // The generator does produce allowed targets, so the property was exercised.
    expect(allowed).toBeGreaterThan(50);
  });
});
