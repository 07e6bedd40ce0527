import { describe, expect, it } from 'vitest';
import { createIdentityHeaders, type IdentityHeaderOptions } from '../../../src/core/identity-headers.js';
import { copyClaims, type Identity } from '../../../src/core/identity.js';

const OPTIONS: IdentityHeaderOptions = {
  prefix: 'x-auth-',
  subject: 'x-auth-subject',
  issuer: 'x-auth-issuer',
  roles: 'x-auth-roles',
  scopes: 'x-auth-scopes',
  claims: { 'X-User-Email': 'email', 'x-tenant': 'org.tenant', 'x-auth-groups': 'groups' },
};
const ISSUER = 'https://idp.example.com';

function identity(overrides: Partial<Omit<Identity, 'claims'>> & { claims?: Record<string, unknown> } = {}): Identity {
  const { claims = {}, ...rest } = overrides;
  return { anonymous: false, subject: 'alice', issuer: ISSUER, roles: [], scopes: [], ...rest, claims: copyClaims(claims) };
}

describe('isClientIdentityHeader', () => {
  const headers = createIdentityHeaders(OPTIONS);
  const cases: Array<[name: string, expected: boolean]> = [
    ['x-auth-subject', true],
    ['X-Auth-Subject', true],
    ['X_Auth_Subject', true],
    ['X-AUTH-ROLES', true],
    ['x_auth_roles', true],
    ['X-Auth_Issuer', true],
    ['x-auth-anything-else', true],
    ['X-AUTH-', true],
    ['x-user-email', true],
    ['X_USER_EMAIL', true],
    ['x-tenant', true],
    ['X_Tenant', true],
    ['authorization', false],
    ['x-authz', false],
    ['x-auth', false],
    ['x-author', false],
    ['xx-auth-subject', false],
    ['x-user-email-2', false],
    ['accept', false],
  ];
  it.each(cases)('%s -> %s', (name, expected) => {
    expect(headers.isClientIdentityHeader(name)).toBe(expected);
  });

  it('with an empty prefix only the configured names are identity headers', () => {
    const h = createIdentityHeaders({ ...OPTIONS, prefix: '' });
    expect(h.isClientIdentityHeader('X_Auth_Subject')).toBe(true);
    expect(h.isClientIdentityHeader('x-tenant')).toBe(true);
    expect(h.isClientIdentityHeader('x-auth-other')).toBe(false);
    expect(h.isClientIdentityHeader('accept')).toBe(false);
    expect(h.isClientIdentityHeader('')).toBe(false);
  });

  it('a prefix configured with "_" matches "-" too', () => {
    const h = createIdentityHeaders({ ...OPTIONS, prefix: 'X_Remote_' });
    expect(h.isClientIdentityHeader('x-remote-user')).toBe(true);
    expect(h.isClientIdentityHeader('X_REMOTE_USER')).toBe(true);
  });
});

describe('render: value encoding', () => {
  const headers = createIdentityHeaders(OPTIONS);
  const subjects: Array<[name: string, subject: string, rendered: string]> = [
    ['plain ASCII', 'alice', 'alice'],
    ['printable punctuation', 'svc:orders@example.com', 'svc:orders@example.com'],
    ['inner space', 'Alice Smith', 'Alice Smith'],
    ['comma outside a list', 'Smith, Alice', 'Smith, Alice'],
    ['non-ASCII', 'José', 'Jos%C3%A9'],
    ['emoji', 'a😀', 'a%F0%9F%98%80'],
    ['percent sign', '100%', '100%25'],
    ['something that looks encoded', 'a%41', 'a%2541'],
    ['leading space', ' alice', '%20alice'],
    ['trailing space', 'alice ', 'alice%20'],
    ['CR LF (header injection)', 'alice\r\nx-auth-roles: admin', 'alice%0D%0Ax-auth-roles%3A%20admin'],
    ['NUL', 'a\u0000b', 'a%00b'],
    ['tab', 'a\tb', 'a%09b'],
    ['DEL', 'a\u007fb', 'a%7Fb'],
  ];
  it.each(subjects)('subject %s', (_name, subject, rendered) => {
    const out = headers.render(identity({ subject }));
    expect(out?.['x-auth-subject']).toBe(rendered);
    expect(decodeURIComponent(rendered)).toBe(subject);
    expect(rendered).toMatch(/^[\x20-\x7e]*$/);
  });

  const roleCases: Array<[name: string, roles: string[], rendered: string]> = [
    ['plain roles joined by commas', ['reader', 'writer'], 'reader,writer'],
    ['a role containing a comma is encoded on its own', ['a,b', 'c'], 'a%2Cb,c'],
    ['a non-ASCII role', ['lecteur', 'rédacteur'], 'lecteur,r%C3%A9dacteur'],
    ['a role with a space inside stays as is', ['order reader'], 'order reader'],
    ['a role with a leading space', [' admin'], '%20admin'],
  ];
  it.each(roleCases)('roles: %s', (_name, roles, rendered) => {
    const out = headers.render(identity({ roles }));
    expect(out?.['x-auth-roles']).toBe(rendered);
    expect(rendered.split(',').map(decodeURIComponent)).toEqual(roles);
  });

  it('scopes are rendered like roles', () => {
    expect(headers.render(identity({ scopes: ['orders:read', 'a,b'] }))?.['x-auth-scopes']).toBe('orders:read,a%2Cb');
  });

  const unrenderable: Array<[name: string, overrides: Partial<Omit<Identity, 'claims'>>]> = [
    ['lone high surrogate subject', { subject: 'alice\uD800' }],
    ['lone low surrogate subject', { subject: '\uDC00' }],
    ['lone surrogate issuer', { issuer: 'https://idp\uD800' }],
    ['lone surrogate role', { roles: ['reader', '\uD800'] }],
    ['lone surrogate scope', { scopes: ['\uDFFF'] }],
  ];
  it.each(unrenderable)('%s -> undefined (unrenderable)', (_name, overrides) => {
    expect(headers.render(identity(overrides))).toBeUndefined();
  });
});

describe('render: which headers', () => {
  const headers = createIdentityHeaders(OPTIONS);

  it('anonymous gets no identity headers at all', () => {
    const out = headers.render({ anonymous: true, subject: 'anonymous', issuer: undefined, roles: [], scopes: [], claims: copyClaims({ email: 'x@example.com' }) });
    expect(out).toEqual({});
  });

  it('sets subject, issuer, roles and scopes', () => {
    const out = headers.render(identity({ roles: ['reader', 'writer'], scopes: ['openid'] }));
    expect(out).toEqual({
      'x-auth-subject': 'alice',
      'x-auth-issuer': ISSUER,
      'x-auth-roles': 'reader,writer',
      'x-auth-scopes': 'openid',
    });
  });

  it('leaves out empty lists and a missing issuer', () => {
    expect(headers.render(identity({ issuer: undefined }))).toEqual({ 'x-auth-subject': 'alice' });
  });

  const claims: Array<[name: string, claims: Record<string, unknown>, expected: Record<string, string>]> = [
    ['string claim', { email: 'alice@example.com' }, { 'x-user-email': 'alice@example.com' }],
    ['non-ASCII string claim', { email: 'josé@example.com' }, { 'x-user-email': 'jos%C3%A9%40example.com' }],
    ['dotted path', { org: { tenant: 'acme' } }, { 'x-tenant': 'acme' }],
    ['number claim', { org: { tenant: 42 } }, { 'x-tenant': '42' }],
    ['boolean claim', { org: { tenant: false } }, { 'x-tenant': 'false' }],
    ['array of strings', { groups: ['ops', 'a,b'] }, { 'x-auth-groups': 'ops,a%2Cb' }],
    ['object claim as encoded JSON', { org: { tenant: { id: 1 } } }, { 'x-tenant': '{"id":1}' }],
    ['missing claim', {}, {}],
    ['null claim', { email: null }, {}],
    ['path through a non-object', { org: 'acme' }, {}],
  ];
  it('a claim that cannot be encoded never goes out raw', () => {
    const out = headers.render(identity({ claims: { email: 'a\uD800@example.com' } }));
    expect(out === undefined || !Object.hasOwn(out, 'x-user-email')).toBe(true);
  });

  it.each(claims)('claims mapping: %s', (_name, claimSet, expected) => {
    const out = headers.render(identity({ claims: claimSet }));
    expect(out).toEqual({ 'x-auth-subject': 'alice', 'x-auth-issuer': ISSUER, ...expected });
  });
});
