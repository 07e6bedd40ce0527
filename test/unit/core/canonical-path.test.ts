import { describe, expect, it } from 'vitest';
import { canonicalizeTarget, type PathOptions } from '../../../src/core/canonical-path.js';
import { AuthzSidecarError, type ReasonCode } from '../../../src/core/errors.js';

const STRICT: PathOptions = { encodedSlashes: 'reject', semicolons: 'reject' };
const LENIENT: PathOptions = { encodedSlashes: 'decode', semicolons: 'keep' };

function rejection(target: string, options: PathOptions = STRICT, method = 'GET'): ReasonCode | undefined {
  try {
    canonicalizeTarget(method, target, options);
    return undefined;
  } catch (err) {
    if (err instanceof AuthzSidecarError) return err.code;
    throw err;
  }
}

describe('canonicalizeTarget: accepted targets', () => {
  const cases: Array<[name: string, target: string, path: string, query?: string, options?: PathOptions]> = [
    ['plain path', '/orders/42', '/orders/42'],
    ['root', '/', '/'],
    ['trailing slash kept', '/orders/', '/orders/'],
    ['single dot segment removed', '/a/./b', '/a/b'],
    ['double dot segment removed', '/a/b/../c', '/a/c'],
    ['dot dot never climbs above the root', '/../../etc/passwd', '/etc/passwd'],
    ['trailing dot leaves a trailing slash', '/a/b/.', '/a/b/'],
    ['trailing dot dot leaves a trailing slash', '/a/b/..', '/a/'],
    ['percent-encoded dot segments decoded then removed', '/public/%2e%2e/admin', '/admin'],
    ['upper-case encoded dots too', '/public/%2E%2E/admin', '/admin'],
    ['mixed encoded dot', '/public/.%2e/admin', '/admin'],
    ['repeated slashes merged', '//a///b//', '/a/b/'],
    ['network-path reference is a path', '//evil.example/x', '/evil.example/x'],
    ['unreserved characters decoded once', '/%7Euser/%41%62c-%5F', '/~user/Abc-_'],
    ['reserved escapes kept with upper-case hex', '/a%2bb/%3a/%3b', '/a%2Bb/%3A/%3B'],
    ['double encoding decoded only once', '/a/%252e%252e/b', '/a/%252e%252e/b'],
    ['double-encoded slash stays encoded', '/a%252Fb', '/a%252Fb'],
    ['valid UTF-8 escapes kept', '/caf%C3%A9', '/caf%C3%A9'],
    ['characters never raw in a path are encoded', '/a"b<c>`{}|^', '/a%22b%3Cc%3E%60%7B%7D%7C%5E'],
    ['query kept exactly as received', '/search?q=a%2Fb&x=../y&z=%zz', '/search', 'q=a%2Fb&x=../y&z=%zz'],
    ['query is not canonicalized', '/a/../b?p=/../admin', '/b', 'p=/../admin'],
    ['empty query kept as empty', '/a?', '/a', ''],
    ['absolute-form target', 'http://example.com/a/../b?x=1', '/b', 'x=1'],
    ['absolute-form without path', 'https://example.com', '/'],
    ['absolute-form with only a query', 'http://example.com?x', '/', 'x'],
    ['semicolon kept when configured', '/a;v=1/b', '/a;v=1/b', undefined, LENIENT],
    ['encoded slash decoded when configured', '/a%2Fb%5cc', '/a/b/c', undefined, LENIENT],
    ['decoded slashes join dot-segment removal? no: decoding happens before', '/a/%2F..%2Fb', '/a/b', undefined, LENIENT],
  ];
  it.each(cases)('%s: %s', (_name, target, path, query, options = STRICT) => {
    const result = canonicalizeTarget('GET', target, options);
    expect(result.path).toBe(path);
    expect(result.query).toBe(query);
  });

  it('reports the authority of an absolute-form target', () => {
    expect(canonicalizeTarget('GET', 'http://Api.Example.com:8080/x').authority).toBe('Api.Example.com:8080');
    expect(canonicalizeTarget('GET', '/x').authority).toBeUndefined();
  });

  it('is idempotent: a canonical path canonicalizes to itself', () => {
    for (const target of ['/a/./b/../c//d/', '/%7e/%2e%2e/x', '/caf%c3%a9/%3a', '/a"b']) {
      const once = canonicalizeTarget('GET', target, STRICT).path;
      expect(canonicalizeTarget('GET', once, STRICT).path).toBe(once);
    }
  });
});

describe('canonicalizeTarget: rejected targets (400)', () => {
  const cases: Array<[name: string, target: string, code: ReasonCode, options?: PathOptions, method?: string]> = [
    ['raw fragment', '/a#frag', 'PATH_FRAGMENT'],
    ['fragment in the query', '/a?x=1#f', 'PATH_FRAGMENT'],
    ['encoded fragment', '/a%23b', 'PATH_FRAGMENT'],
    ['encoded NUL', '/a%00b', 'PATH_CONTROL_CHAR'],
    ['encoded CR', '/a%0db', 'PATH_CONTROL_CHAR'],
    ['encoded LF', '/a%0Ab', 'PATH_CONTROL_CHAR'],
    ['raw NUL', '/a\u0000b', 'PATH_CONTROL_CHAR'],
    ['raw CR LF', '/a\r\nX-Injected: 1', 'PATH_CONTROL_CHAR'],
    ['raw space', '/a b', 'PATH_CONTROL_CHAR'],
    ['raw tab', '/a\tb', 'PATH_CONTROL_CHAR'],
    ['DEL', '/a\u007fb', 'PATH_CONTROL_CHAR'],
    ['raw non-ASCII', '/café', 'PATH_BAD_ENCODING'],
    ['truncated escape', '/a%2', 'PATH_BAD_ENCODING'],
    ['non-hex escape', '/a%zzb', 'PATH_BAD_ENCODING'],
    ['lone percent', '/100%', 'PATH_BAD_ENCODING'],
    ['invalid UTF-8 (lone continuation byte)', '/a%80', 'PATH_BAD_ENCODING'],
    ['invalid UTF-8 (overlong slash)', '/a%C0%AFb', 'PATH_BAD_ENCODING'],
    ['invalid UTF-8 (truncated sequence)', '/a%E2%82', 'PATH_BAD_ENCODING'],
    ['backslash', '/a\\..\\admin', 'PATH_BACKSLASH'],
    ['backslash even with encodedSlashes decode', '/a\\b', 'PATH_BACKSLASH', LENIENT],
    ['encoded slash', '/public%2F..%2Fadmin', 'PATH_ENCODED_SLASH'],
    ['encoded slash lower-case', '/a%2fb', 'PATH_ENCODED_SLASH'],
    ['encoded backslash', '/a%5Cb', 'PATH_ENCODED_SLASH'],
    ['semicolon path parameter', '/admin;jsessionid=1', 'PATH_SEMICOLON'],
    ['Tomcat ..; bypass', '/public/..;/admin', 'PATH_SEMICOLON'],
    ['..; even when semicolons are kept', '/public/..;/admin', 'PATH_SEMICOLON', LENIENT],
    ['.; even when semicolons are kept', '/public/.;x/admin', 'PATH_SEMICOLON', LENIENT],
    ['asterisk-form', '*', 'PATH_TARGET_FORM', STRICT, 'OPTIONS'],
    ['CONNECT authority-form', 'example.com:443', 'PATH_TARGET_FORM', STRICT, 'CONNECT'],
    ['relative target', 'a/b', 'PATH_TARGET_FORM'],
    ['empty target', '', 'PATH_TARGET_FORM'],
    ['non-http absolute form', 'ftp://example.com/x', 'PATH_TARGET_FORM'],
    ['absolute form with userinfo', 'http://user@example.com/x', 'PATH_TARGET_FORM'],
  ];
  it.each(cases)('%s: %j', (_name, target, code, options = STRICT, method = 'GET') => {
    expect(rejection(target, options, method)).toBe(code);
  });

  it('errors carry status 400 and a detail that names the problem', () => {
    try {
      canonicalizeTarget('GET', '/a%2fb', STRICT);
      expect.unreachable('should have thrown');
    } catch (err) {
      expect(err).toBeInstanceOf(AuthzSidecarError);
      expect((err as AuthzSidecarError).status).toBe(400);
      expect((err as AuthzSidecarError).detail).toMatch(/encoded slash/);
    }
  });
});
