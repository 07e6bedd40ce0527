import { describe, expect, it } from 'vitest';
import { createCredentialExtractor, type TokenSource } from '../../../src/authn/credentials.js';
import { headerMap } from '../../../src/core/access-request.js';
import type { CredentialResult } from '../../../src/core/stages.js';

const JWT = 'eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl';
const OTHER = 'eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJib2IifQ.c2lnbmF0dXJl';
const AUTHORIZATION_ONLY: readonly TokenSource[] = [{ header: 'authorization' }];
const WITH_CUSTOM: readonly TokenSource[] = [{ header: 'authorization' }, { header: 'X-Access-Token' }];

function extract(sources: readonly TokenSource[], headers: Array<[string, string | string[]]>): CredentialResult {
  return createCredentialExtractor(sources).extract(headerMap(headers), undefined);
}

describe('createCredentialExtractor', () => {
  const cases: Array<{ name: string; sources?: readonly TokenSource[]; headers: Array<[string, string | string[]]>; expected: CredentialResult }> = [
    { name: 'no headers at all', headers: [], expected: { kind: 'none' } },
    { name: 'unrelated headers only', headers: [['accept', 'application/json']], expected: { kind: 'none' } },
    { name: 'Bearer token', headers: [['authorization', `Bearer ${JWT}`]], expected: { kind: 'token', token: JWT, source: 'header:authorization' } },
    { name: 'scheme in lower case', headers: [['authorization', `bearer ${JWT}`]], expected: { kind: 'token', token: JWT, source: 'header:authorization' } },
    { name: 'scheme in upper case', headers: [['authorization', `BEARER ${JWT}`]], expected: { kind: 'token', token: JWT, source: 'header:authorization' } },
    { name: 'header name in any case', headers: [['AUTHORIZATION', `Bearer ${JWT}`]], expected: { kind: 'token', token: JWT, source: 'header:authorization' } },
    { name: 'b64token with padding', headers: [['authorization', 'Bearer abc+/-_.~==']], expected: { kind: 'token', token: 'abc+/-_.~==', source: 'header:authorization' } },
    {
      name: 'Basic credentials are malformed',
      headers: [['authorization', 'Basic YWxpY2U6c2VjcmV0']],
      expected: { kind: 'error', reason: 'CREDENTIALS_MALFORMED', detail: 'the Authorization header is not a Bearer token' },
    },
    {
      name: 'a bare token in Authorization is malformed',
      headers: [['authorization', JWT]],
      expected: { kind: 'error', reason: 'CREDENTIALS_MALFORMED', detail: 'the Authorization header is not a Bearer token' },
    },
    {
      name: 'empty bearer',
      headers: [['authorization', 'Bearer ']],
      expected: { kind: 'error', reason: 'CREDENTIALS_MALFORMED', detail: 'the Authorization header is not a Bearer token' },
    },
    {
      name: 'scheme without a token',
      headers: [['authorization', 'Bearer']],
      expected: { kind: 'error', reason: 'CREDENTIALS_MALFORMED', detail: 'the Authorization header is not a Bearer token' },
    },
    {
      name: 'empty Authorization header',
      headers: [['authorization', '']],
      expected: { kind: 'error', reason: 'CREDENTIALS_MALFORMED', detail: 'the Authorization header is not a Bearer token' },
    },
    {
      name: 'token with a space inside',
      headers: [['authorization', `Bearer ${JWT} ${OTHER}`]],
      expected: { kind: 'error', reason: 'CREDENTIALS_MALFORMED', detail: 'the Authorization header is not a Bearer token' },
    },
    {
      name: 'two Authorization values',
      headers: [['authorization', [`Bearer ${JWT}`, `Bearer ${OTHER}`]]],
      expected: { kind: 'error', reason: 'CREDENTIALS_CONFLICT', detail: 'the request has more than one authorization header' },
    },
    {
      name: 'two identical Authorization values',
      headers: [['authorization', [`Bearer ${JWT}`, `Bearer ${JWT}`]]],
      expected: { kind: 'error', reason: 'CREDENTIALS_CONFLICT', detail: 'the request has more than one authorization header' },
    },
    {
      name: 'custom header carrying a bare token',
      sources: WITH_CUSTOM,
      headers: [['x-access-token', JWT]],
      expected: { kind: 'token', token: JWT, source: 'header:x-access-token' },
    },
    {
      name: 'custom header carrying a Bearer token',
      sources: WITH_CUSTOM,
      headers: [['X-Access-Token', `Bearer ${JWT}`]],
      expected: { kind: 'token', token: JWT, source: 'header:x-access-token' },
    },
    {
      name: 'custom header that is not a token',
      sources: WITH_CUSTOM,
      headers: [['x-access-token', 'not a token']],
      expected: { kind: 'error', reason: 'CREDENTIALS_MALFORMED', detail: 'the x-access-token header is not a token' },
    },
    {
      name: 'custom header is ignored when not configured',
      sources: AUTHORIZATION_ONLY,
      headers: [['x-access-token', JWT]],
      expected: { kind: 'none' },
    },
    {
      name: 'Authorization and custom header carrying different tokens',
      sources: WITH_CUSTOM,
      headers: [
        ['authorization', `Bearer ${JWT}`],
        ['x-access-token', OTHER],
      ],
      expected: { kind: 'error', reason: 'CREDENTIALS_CONFLICT', detail: 'the request carries two different credentials' },
    },
    {
      name: 'Authorization and custom header carrying the same token',
      sources: WITH_CUSTOM,
      headers: [
        ['authorization', `Bearer ${JWT}`],
        ['x-access-token', JWT],
      ],
      expected: { kind: 'token', token: JWT, source: 'header:authorization' },
    },
    {
      name: 'the first configured source names the token source',
      sources: [{ header: 'x-access-token' }, { header: 'authorization' }],
      headers: [
        ['authorization', `Bearer ${JWT}`],
        ['x-access-token', JWT],
      ],
      expected: { kind: 'token', token: JWT, source: 'header:x-access-token' },
    },
  ];

  it.each(cases)('$name', ({ sources = AUTHORIZATION_ONLY, headers, expected }) => {
    expect(extract(sources, headers)).toEqual(expected);
  });

  it('never puts the token into an error detail', () => {
    const result = extract(WITH_CUSTOM, [
      ['authorization', `Bearer ${JWT}`],
      ['x-access-token', OTHER],
    ]);
    expect(result.kind).toBe('error');
    expect(JSON.stringify(result)).not.toContain(JWT);
    expect(JSON.stringify(result)).not.toContain(OTHER);
  });

  it('lists the token headers in lower case, Authorization by default', () => {
    expect(createCredentialExtractor().tokenHeaders).toEqual(['authorization']);
    expect(createCredentialExtractor(WITH_CUSTOM).tokenHeaders).toEqual(['authorization', 'x-access-token']);
  });

  it('needs at least one source', () => {
    expect(() => createCredentialExtractor([])).toThrow(TypeError);
  });
});
