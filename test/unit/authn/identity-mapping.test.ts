import { describe, expect, it } from 'vitest';
import { createIdentityMapper, type IdentityMappingOptions } from '../../../src/authn/identity-mapping.js';
import { copyClaims, type Identity } from '../../../src/core/identity.js';

const ISSUER = 'https://idp.example.com';

/** Claims as the JWT authenticator hands them over: copied into null-prototype objects. */
function map(claims: unknown, options: IdentityMappingOptions = {}): ReturnType<ReturnType<typeof createIdentityMapper>['fromClaims']> {
  return createIdentityMapper(options).fromClaims(copyClaims(claims), ISSUER);
}

function identityOf(claims: unknown, options: IdentityMappingOptions = {}): Identity {
  const result = map(claims, options);
  if (!result.ok) throw new Error(`expected an identity, got ${result.reason}`);
  return result.identity;
}

describe('createIdentityMapper: subject', () => {
  const accepted: Array<{ name: string; claims: Record<string, unknown>; options?: IdentityMappingOptions; subject: string }> = [
    { name: 'sub by default', claims: { sub: 'alice' }, subject: 'alice' },
    { name: 'a configured claim name', claims: { sub: 'alice', client_id: 'orders-cli' }, options: { subjectClaim: 'client_id' }, subject: 'orders-cli' },
    { name: 'list: the first claim wins when present', claims: { sub: 'alice', client_id: 'orders-cli' }, options: { subjectClaim: ['sub', 'client_id'] }, subject: 'alice' },
    { name: 'list: the next claim when the first is absent', claims: { client_id: 'orders-cli' }, options: { subjectClaim: ['sub', 'client_id'] }, subject: 'orders-cli' },
    { name: 'a dotted claim path', claims: { ext: { uid: 'u-1' } }, options: { subjectClaim: 'ext.uid' }, subject: 'u-1' },
    { name: 'a subject that looks like a role stays a subject', claims: { sub: 'role:admin' }, subject: 'role:admin' },
  ];
  it.each(accepted)('$name', ({ claims, options, subject }) => {
    const identity = identityOf(claims, options);
    expect(identity.subject).toBe(subject);
    expect(identity.anonymous).toBe(false);
    expect(identity.issuer).toBe(ISSUER);
  });

  const rejected: Array<{ name: string; claims: Record<string, unknown>; options?: IdentityMappingOptions }> = [
    { name: 'sub missing', claims: { client_id: 'orders-cli' } },
    { name: 'sub empty', claims: { sub: '' } },
    { name: 'sub an array', claims: { sub: ['alice'] } },
    { name: 'sub a number', claims: { sub: 42 } },
    { name: 'sub a boolean', claims: { sub: true } },
    { name: 'sub null', claims: { sub: null } },
    { name: 'sub an object', claims: { sub: { id: 'alice' } } },
    { name: 'list: none present', claims: { azp: 'x' }, options: { subjectClaim: ['sub', 'client_id'] } },
    { name: 'list: first present but a number, although the next is a string', claims: { sub: 42, client_id: 'orders-cli' }, options: { subjectClaim: ['sub', 'client_id'] } },
    { name: 'list: first present but empty, although the next is a string', claims: { sub: '', client_id: 'orders-cli' }, options: { subjectClaim: ['sub', 'client_id'] } },
    { name: 'list: first present but null, although the next is a string', claims: { sub: null, client_id: 'orders-cli' }, options: { subjectClaim: ['sub', 'client_id'] } },
    { name: 'an inherited property is not a claim', claims: {}, options: { subjectClaim: 'constructor' } },
  ];
  it.each(rejected)('$name -> TOKEN_CLAIMS', ({ claims, options }) => {
    const result = map(claims, options);
    expect(result.ok).toBe(false);
    if (result.ok) return;
    expect(result.reason).toBe('TOKEN_CLAIMS');
    expect(result.detail).not.toContain('alice');
  });

  it('needs at least one subject claim', () => {
    expect(() => createIdentityMapper({ subjectClaim: [] })).toThrow(TypeError);
  });
});

describe('createIdentityMapper: roles', () => {
  const cases: Array<{ name: string; claims: Record<string, unknown>; options?: IdentityMappingOptions; roles: string[] }> = [
    { name: 'no roles claim', claims: {}, roles: [] },
    { name: 'roles array', claims: { roles: ['reader', 'writer'] }, roles: ['reader', 'writer'] },
    { name: 'roles string is one role', claims: { roles: 'reader' }, roles: ['reader'] },
    { name: 'a string with a space is still one role', claims: { roles: 'order reader' }, roles: ['order reader'] },
    { name: 'groups', claims: { groups: ['ops'] }, roles: ['ops'] },
    { name: 'realm_access.roles (dotted path)', claims: { realm_access: { roles: ['admin'] } }, roles: ['admin'] },
    {
      name: 'several claim paths, in configured order',
      claims: { roles: ['reader'], groups: 'ops', realm_access: { roles: ['admin'] } },
      roles: ['reader', 'ops', 'admin'],
    },
    {
      name: 'duplicates across and within claims removed',
      claims: { roles: ['reader', 'reader'], groups: ['reader', 'ops'], realm_access: { roles: ['ops', 'admin'] } },
      roles: ['reader', 'ops', 'admin'],
    },
    { name: 'non-string entries ignored', claims: { roles: ['reader', 7, null, true, { name: 'admin' }, ['admin'], ''] }, roles: ['reader'] },
    { name: 'a number claim grants nothing', claims: { roles: 7 }, roles: [] },
    { name: 'an object claim grants nothing', claims: { roles: { admin: true } }, roles: [] },
    { name: 'an empty string grants nothing', claims: { roles: '' }, roles: [] },
    { name: 'realm_access not an object', claims: { realm_access: 'admin' }, roles: [] },
    {
      name: 'configured claims replace the defaults',
      claims: { roles: ['reader'], resource_access: { orders: { roles: ['writer'] } } },
      options: { rolesClaims: ['resource_access.orders.roles'] },
      roles: ['writer'],
    },
  ];
  it.each(cases)('$name', ({ claims, options, roles }) => {
    expect(identityOf({ sub: 'alice', ...claims }, options).roles).toEqual(roles);
  });
});

describe('createIdentityMapper: scopes', () => {
  const cases: Array<{ name: string; claims: Record<string, unknown>; options?: IdentityMappingOptions; scopes: string[] }> = [
    { name: 'no scope claim', claims: {}, scopes: [] },
    { name: 'space-separated string', claims: { scope: 'orders:read orders:write' }, scopes: ['orders:read', 'orders:write'] },
    { name: 'repeated spaces', claims: { scope: ' openid   orders:read ' }, scopes: ['openid', 'orders:read'] },
    { name: 'array', claims: { scope: ['orders:read', 'orders:write'] }, scopes: ['orders:read', 'orders:write'] },
    { name: 'array with non-strings', claims: { scope: ['orders:read', 3, null] }, scopes: ['orders:read'] },
    { name: 'empty string', claims: { scope: '' }, scopes: [] },
    { name: 'configured claim', claims: { scope: 'a', scp: ['b', 'c'] }, options: { scopesClaim: 'scp' }, scopes: ['b', 'c'] },
  ];
  it.each(cases)('$name', ({ claims, options, scopes }) => {
    expect(identityOf({ sub: 'alice', ...claims }, options).scopes).toEqual(scopes);
  });
});

describe('createIdentityMapper: identity', () => {
  it('keeps the claims it was given', () => {
    const claims = copyClaims({ sub: 'alice', email: 'alice@example.com' });
    const result = createIdentityMapper().fromClaims(claims, ISSUER);
    expect(result.ok && result.identity.claims).toBe(claims);
  });

  it.each([
    ['default anonymous subject', {}, 'anonymous'],
    ['configured anonymous subject', { anonymousSubject: 'guest' }, 'guest'],
  ])('anonymous identity: %s', (_name, options: IdentityMappingOptions, subject) => {
    const identity = createIdentityMapper(options).anonymous();
    expect(identity).toEqual({ anonymous: true, subject, issuer: undefined, roles: [], scopes: [], claims: {} });
    expect(Object.getPrototypeOf(identity.claims)).toBeNull();
    expect(Object.isFrozen(identity)).toBe(true);
    expect(Object.isFrozen(identity.roles)).toBe(true);
  });
});
