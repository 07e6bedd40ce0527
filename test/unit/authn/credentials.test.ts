import { describe, expect, it } from 'vitest';
import { createCredentialExtractor, type TokenSource } from '../../../src/authn/credentials.js';
import { headerMap } from '../../../src/core/access-request.js';
import type { CredentialResult, ForwardedHeaders } from '../../../src/core/stages.js';

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

describe('createCredentialExtractor: cookies and query parameters', () => {
  const COOKIE: readonly TokenSource[] = [{ cookie: 'access_token' }];
  const QUERY: readonly TokenSource[] = [{ query: 'access_token' }];
  const HEADER_AND_COOKIE: readonly TokenSource[] = [{ header: 'authorization' }, { cookie: 'access_token' }];
  const HEADER_AND_QUERY: readonly TokenSource[] = [{ header: 'authorization' }, { query: 'access_token' }];
  const conflict = (detail: string): CredentialResult => ({ kind: 'error', reason: 'CREDENTIALS_CONFLICT', detail });
  const malformed = (detail: string): CredentialResult => ({ kind: 'error', reason: 'CREDENTIALS_MALFORMED', detail });

  const cases: Array<{
    name: string;
    sources: readonly TokenSource[];
    headers?: Array<[string, string | string[]]>;
    query?: string;
    expected: CredentialResult;
  }> = [
    {
      name: 'token cookie among other cookies',
      sources: COOKIE,
      headers: [['cookie', `theme=dark; access_token=${JWT}; session=abc`]],
      expected: { kind: 'token', token: JWT, source: 'cookie:access_token' },
    },
    {
      name: 'token cookie without spaces after the separators',
      sources: COOKIE,
      headers: [['cookie', `theme=dark;access_token=${JWT};session=abc`]],
      expected: { kind: 'token', token: JWT, source: 'cookie:access_token' },
    },
    {
      name: 'token cookie in the second of two Cookie lines (HTTP/2)',
      sources: COOKIE,
      headers: [['cookie', ['theme=dark', `access_token=${JWT}`]]],
      expected: { kind: 'token', token: JWT, source: 'cookie:access_token' },
    },
    { name: 'no token cookie', sources: COOKIE, headers: [['cookie', 'theme=dark; session=abc']], expected: { kind: 'none' } },
    {
      name: 'a cookie whose name only contains the token name',
      sources: COOKIE,
      headers: [['cookie', `my_access_token=${JWT}; access_token_old=${OTHER}`]],
      expected: { kind: 'none' },
    },
    {
      name: 'a cookie is ignored when not configured',
      sources: AUTHORIZATION_ONLY,
      headers: [['cookie', `access_token=${JWT}`]],
      expected: { kind: 'none' },
    },
    {
      name: 'the same cookie twice (same value)',
      sources: COOKIE,
      headers: [['cookie', `access_token=${JWT}; theme=dark; access_token=${JWT}`]],
      expected: conflict('the request has more than one access_token cookie'),
    },
    {
      name: 'the same cookie twice (different values)',
      sources: COOKIE,
      headers: [['cookie', `access_token=${JWT}; access_token=${OTHER}`]],
      expected: conflict('the request has more than one access_token cookie'),
    },
    {
      name: 'the same cookie in two Cookie lines',
      sources: COOKIE,
      headers: [['cookie', [`access_token=${JWT}`, `access_token=${OTHER}`]]],
      expected: conflict('the request has more than one access_token cookie'),
    },
    {
      name: 'a token cookie that is not a token',
      sources: COOKIE,
      headers: [['cookie', 'access_token="quoted value"']],
      expected: malformed('the access_token cookie is not a token'),
    },
    {
      name: 'query parameter among others',
      sources: QUERY,
      query: `page=2&access_token=${JWT}&sort=asc`,
      expected: { kind: 'token', token: JWT, source: 'query parameter:access_token' },
    },
    {
      name: 'percent-encoded query value',
      sources: QUERY,
      query: 'page=2&access_token=abc%2Bdef%2Fghi%3D%3D',
      expected: { kind: 'token', token: 'abc+def/ghi==', source: 'query parameter:access_token' },
    },
    {
      name: 'percent-encoded query parameter name',
      sources: QUERY,
      query: `access%5Ftoken=${JWT}`,
      expected: { kind: 'token', token: JWT, source: 'query parameter:access_token' },
    },
    { name: 'no query at all', sources: QUERY, expected: { kind: 'none' } },
    { name: 'empty query', sources: QUERY, query: '', expected: { kind: 'none' } },
    { name: 'query without the parameter', sources: QUERY, query: 'page=2&token=x', expected: { kind: 'none' } },
    { name: 'a query parameter is ignored when not configured', sources: AUTHORIZATION_ONLY, query: `access_token=${JWT}`, expected: { kind: 'none' } },
    {
      name: 'the parameter twice (same value)',
      sources: QUERY,
      query: `access_token=${JWT}&page=2&access_token=${JWT}`,
      expected: conflict('the request has more than one access_token query parameter'),
    },
    {
      name: 'the parameter twice, once percent-encoded in the name',
      sources: QUERY,
      query: `access_token=${JWT}&access%5Ftoken=${OTHER}`,
      expected: conflict('the request has more than one access_token query parameter'),
    },
    {
      name: 'the parameter without a value',
      sources: QUERY,
      query: 'access_token&page=2',
      expected: malformed('the access_token query parameter is not a token'),
    },
    {
      name: 'a "+" in the query is a space, so not a token',
      sources: QUERY,
      query: 'access_token=abc+def',
      expected: malformed('the access_token query parameter is not a token'),
    },
    {
      name: 'invalid percent-encoding in the value',
      sources: QUERY,
      query: 'access_token=abc%zz',
      expected: malformed('the access_token query parameter is not a token'),
    },
    {
      name: 'header and cookie with the same token',
      sources: HEADER_AND_COOKIE,
      headers: [
        ['authorization', `Bearer ${JWT}`],
        ['cookie', `access_token=${JWT}`],
      ],
      expected: { kind: 'token', token: JWT, source: 'header:authorization' },
    },
    {
      name: 'header and cookie with different tokens',
      sources: HEADER_AND_COOKIE,
      headers: [
        ['authorization', `Bearer ${JWT}`],
        ['cookie', `access_token=${OTHER}`],
      ],
      expected: conflict('the request carries two different credentials'),
    },
    {
      name: 'cookie only, header source also configured',
      sources: HEADER_AND_COOKIE,
      headers: [['cookie', `access_token=${JWT}`]],
      expected: { kind: 'token', token: JWT, source: 'cookie:access_token' },
    },
    {
      name: 'header and query parameter with the same token',
      sources: HEADER_AND_QUERY,
      headers: [['authorization', `Bearer ${JWT}`]],
      query: `access_token=${JWT}`,
      expected: { kind: 'token', token: JWT, source: 'header:authorization' },
    },
    {
      name: 'header and query parameter with different tokens',
      sources: HEADER_AND_QUERY,
      headers: [['authorization', `Bearer ${JWT}`]],
      query: `access_token=${OTHER}`,
      expected: conflict('the request carries two different credentials'),
    },
  ];

  it.each(cases)('$name', ({ sources, headers = [], query, expected }) => {
    expect(createCredentialExtractor(sources).extract(headerMap(headers), query)).toEqual(expected);
  });
});

describe('createCredentialExtractor: scrubbing forwarded requests', () => {
  const ALL: readonly TokenSource[] = [{ header: 'authorization' }, { header: 'X-Access-Token' }, { cookie: 'access_token' }, { query: 'access_token' }];

  const headerCases: Array<{ name: string; sources: readonly TokenSource[]; before: ForwardedHeaders; after: ForwardedHeaders }> = [
    {
      name: 'removes every token header, keeps the others',
      sources: ALL,
      before: { authorization: `Bearer ${JWT}`, 'x-access-token': JWT, accept: 'application/json', 'x-request-id': 'r-1' },
      after: { accept: 'application/json', 'x-request-id': 'r-1' },
    },
    {
      name: 'removes only the token cookie, keeps the other cookies in order',
      sources: ALL,
      before: { cookie: `theme=dark; access_token=${JWT}; session=abc`, accept: '*/*' },
      after: { cookie: 'theme=dark; session=abc', accept: '*/*' },
    },
    {
      name: 'deletes the Cookie header when only the token cookie was in it',
      sources: ALL,
      before: { cookie: `access_token=${JWT}`, accept: '*/*' },
      after: { accept: '*/*' },
    },
    {
      name: 'joins several Cookie lines without the token cookie',
      sources: ALL,
      before: { cookie: ['theme=dark', `access_token=${JWT}; session=abc`] },
      after: { cookie: 'theme=dark; session=abc' },
    },
    {
      name: 'deletes several Cookie lines holding only token cookies',
      sources: ALL,
      before: { cookie: [`access_token=${JWT}`, `access_token=${OTHER}`] },
      after: {},
    },
    {
      name: 'keeps cookies whose names only contain the token name',
      sources: ALL,
      before: { cookie: `my_access_token=a; access_token=${JWT}; access_token_old=b` },
      after: { cookie: 'my_access_token=a; access_token_old=b' },
    },
    {
      name: 'leaves the Cookie header alone without a cookie source',
      sources: AUTHORIZATION_ONLY,
      before: { authorization: `Bearer ${JWT}`, cookie: 'access_token=not-ours; theme=dark' },
      after: { cookie: 'access_token=not-ours; theme=dark' },
    },
    {
      name: 'a request without token headers or cookies is unchanged',
      sources: ALL,
      before: { accept: '*/*', cookie: 'theme=dark' },
      after: { accept: '*/*', cookie: 'theme=dark' },
    },
  ];
  it.each(headerCases)('scrubHeaders $name', ({ sources, before, after }) => {
    const forwarded: ForwardedHeaders = { ...before };
    createCredentialExtractor(sources).scrubHeaders(forwarded);
    expect(forwarded).toEqual(after);
    expect(JSON.stringify(forwarded)).not.toContain(JWT);
  });

  const queryCases: Array<{ name: string; sources?: readonly TokenSource[]; query: string | undefined; expected: string | undefined }> = [
    { name: 'removes the token parameter, keeps the rest byte for byte', query: `a=1&access_token=${JWT}&b=%2F%2f&c=x+y`, expected: 'a=1&b=%2F%2f&c=x+y' },
    { name: 'keeps order and repeated other parameters', query: `z=1&a=2&access_token=${JWT}&z=3&empty=&flag`, expected: 'z=1&a=2&z=3&empty=&flag' },
    { name: 'token parameter first', query: `access_token=${JWT}&page=2`, expected: 'page=2' },
    { name: 'token parameter last', query: `page=2&access_token=${JWT}`, expected: 'page=2' },
    { name: 'removes every copy of the token parameter', query: `access_token=${JWT}&x=1&access_token=${OTHER}`, expected: 'x=1' },
    { name: 'removes a percent-encoded spelling of the name', query: `access%5Ftoken=${JWT}&x=1`, expected: 'x=1' },
    { name: 'keeps parameters whose names only contain the token name', query: `my_access_token=a&access_token_old=b&access_token=${JWT}`, expected: 'my_access_token=a&access_token_old=b' },
    { name: 'keeps a parameter with invalid percent-encoding in its name', query: `a%zz=1&access_token=${JWT}`, expected: 'a%zz=1' },
    { name: 'no query stays no query', query: undefined, expected: undefined },
    { name: 'a query without the token parameter is unchanged', query: 'q=%E2%82%AC&sort=-date', expected: 'q=%E2%82%AC&sort=-date' },
    { name: 'leaves the query alone without a query source', sources: AUTHORIZATION_ONLY, query: `access_token=${JWT}&x=1`, expected: `access_token=${JWT}&x=1` },
  ];
  it.each(queryCases)('scrubQuery $name', ({ sources = ALL, query, expected }) => {
    expect(createCredentialExtractor(sources).scrubQuery(query)).toBe(expected);
  });
});
