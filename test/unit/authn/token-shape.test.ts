import { readFile } from 'node:fs/promises';
import { resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import { JWS_COMPACT, looksLikeJwt, tokenCacheKey } from '../../../src/authn/token-shape.js';
import * as jwt from '../../../src/authn/jwt.js';

describe('token-shape', () => {
  it.each([
    ['a JWS in compact serialization', 'eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhIn0.c2ln', true],
    ['an unsecured-looking JWS (empty signature part)', 'eyJhbGciOiJub25lIn0.eyJzdWIiOiJhIn0.', true],
    ['an opaque token', 'c2b1f0a8e4d94f4b9b7e3e1d2a6c0f11', false],
    ['two parts', 'abc.def', false],
    ['a JWE (five parts)', 'a.b.c.d.e', false],
    ['base64 with padding', 'eyJh.eyJz.c2ln==', false],
    ['an empty header part', '.eyJz.c2ln', false],
  ])('looksLikeJwt: %s', (_name, token, expected) => {
    expect(looksLikeJwt(token)).toBe(expected);
    expect(JWS_COMPACT.test(token)).toBe(expected);
  });

  it('tokenCacheKey is the SHA-256 of the token, base64url, and never contains the token', () => {
    expect(tokenCacheKey('abc')).toBe('ungWv48Bz-pBQUDeXa4iI7ADYaOWF3qctBD_YfIAFa0');
    const token = 'eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhIn0.c2ln';
    expect(tokenCacheKey(token)).toMatch(/^[A-Za-z0-9_-]{43}$/);
    expect(tokenCacheKey(token)).not.toBe(tokenCacheKey(`${token}x`));
  });

  it('jwt.ts keeps its old names as re-exports', () => {
    expect(jwt.JWS_COMPACT).toBe(JWS_COMPACT);
    expect(jwt.sha256).toBe(tokenCacheKey);
  });

  it('introspection does not import the JWT authenticator', async () => {
    const text = await readFile(resolve(import.meta.dirname, '../../../src/authn/introspection.ts'), 'utf8');
    expect(text).not.toMatch(/from '\.\/jwt\.js'/);
    expect(text).toMatch(/from '\.\/token-shape\.js'/);
  });
});
