/**
 * Who is sent to sign in (browser navigations only, with unauthenticated: auto) and which session-
 * authenticated requests are refused as cross-site (DESIGN.md §7).
 */
import { describe, expect, it } from 'vitest';
import { headerMap } from '../../../src/core/access-request.js';
import { csrfRefusal, isBrowserNavigation, redirectsToSignIn } from '../../../src/signin/navigation.js';

const h = (entries: Record<string, string | string[]>) => headerMap(Object.entries(entries).flatMap(([k, v]) => (Array.isArray(v) ? v.map((x) => [k, x] as [string, string]) : [[k, v] as [string, string]])));

const CHROME_NAVIGATION = { accept: 'text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,*/*;q=0.8', 'sec-fetch-mode': 'navigate', 'sec-fetch-dest': 'document', 'sec-fetch-site': 'none' };

describe('browser navigations', () => {
  it.each([
    ['Chrome typing a URL', 'GET', CHROME_NAVIGATION],
    ['a HEAD of the same', 'HEAD', CHROME_NAVIGATION],
    ['an older browser without fetch metadata', 'GET', { accept: 'text/html' }],
    ['curl with Accept */*', 'GET', { accept: '*/*' }],
    ['XHTML', 'GET', { accept: 'application/xhtml+xml' }],
  ])('%s is one', (_what, method, headers) => {
    expect(isBrowserNavigation(method, h(headers))).toBe(true);
    expect(redirectsToSignIn('auto', method, h(headers))).toBe(true);
  });

  it.each([
    ['fetch() from a page', 'GET', { accept: '*/*', 'sec-fetch-mode': 'cors', 'sec-fetch-dest': 'empty' }],
    ['an XHR', 'GET', { accept: '*/*', 'x-requested-with': 'XMLHttpRequest' }],
    ['an image', 'GET', { accept: 'image/avif,image/webp,*/*', 'sec-fetch-mode': 'no-cors', 'sec-fetch-dest': 'image' }],
    ['an iframe', 'GET', { accept: 'text/html', 'sec-fetch-mode': 'navigate', 'sec-fetch-dest': 'iframe' }],
    ['an API client asking for JSON', 'GET', { accept: 'application/json' }],
    ['no Accept at all', 'GET', {}],
    ['a form POST', 'POST', CHROME_NAVIGATION],
    ['a DELETE', 'DELETE', { accept: '*/*' }],
    ['text/htmlx is not text/html', 'GET', { accept: 'text/htmlx' }],
  ])('%s is not', (_what, method, headers) => {
    expect(isBrowserNavigation(method, h(headers))).toBe(false);
    expect(redirectsToSignIn('auto', method, h(headers))).toBe(false);
  });

  it('redirect mode sends every GET and HEAD, deny mode none', () => {
    expect(redirectsToSignIn('redirect', 'GET', h({ accept: 'application/json' }))).toBe(true);
    expect(redirectsToSignIn('redirect', 'POST', h(CHROME_NAVIGATION))).toBe(false);
    expect(redirectsToSignIn('deny', 'GET', h(CHROME_NAVIGATION))).toBe(false);
  });
});

describe('CSRF', () => {
  const origin = 'https://orders.example.com';
  const allowed = ['app.example.com', '.shop.example.com'];
  const refuse = (method: string, headers: Record<string, string | string[]>) => csrfRefusal(method, h(headers), origin, allowed);

  it('lets safe methods through whatever their origin', () => {
    for (const m of ['GET', 'HEAD', 'OPTIONS']) expect(refuse(m, { origin: 'https://evil.com', 'sec-fetch-site': 'cross-site' })).toBeUndefined();
  });

  it.each([
    ['its own origin', { origin: 'https://orders.example.com', 'sec-fetch-site': 'same-origin' }],
    ['its own origin, in capitals', { origin: 'HTTPS://ORDERS.EXAMPLE.COM' }],
    ['an allowed host', { origin: 'https://app.example.com', 'sec-fetch-site': 'same-site' }],
    ['a subdomain of an allowed domain', { origin: 'https://eu.shop.example.com' }],
    ['no Origin, but fetch metadata says same-origin', { 'sec-fetch-site': 'same-origin' }],
  ])('allows an unsafe request from %s', (_what, headers) => {
    expect(refuse('POST', headers)).toBeUndefined();
  });

  it.each([
    ['another site by fetch metadata', { 'sec-fetch-site': 'cross-site', origin: 'https://orders.example.com' }],
    ['another origin', { origin: 'https://evil.com' }],
    ['a sibling subdomain', { origin: 'https://evil.example.com', 'sec-fetch-site': 'same-site' }],
    ['the right host on another port', { origin: 'https://orders.example.com:8443' }],
    ['the right host over http', { origin: 'http://orders.example.com' }],
    ['a look-alike host', { origin: 'https://orders.example.com.evil.com' }],
    ['the allowed domain itself (subdomains only)', { origin: 'https://shop.example.com' }],
    ['Origin null (a sandboxed frame, a redirect)', { origin: 'null' }],
    ['two Origin headers', { origin: ['https://orders.example.com', 'https://evil.com'] }],
    ['an Origin with a path', { origin: 'https://orders.example.com/x' }],
    ['no Origin and no fetch metadata', {}],
    ['no Origin, fetch metadata same-site', { 'sec-fetch-site': 'same-site' }],
  ])('refuses an unsafe request from %s', (_what, headers) => {
    for (const m of ['POST', 'PUT', 'PATCH', 'DELETE']) expect(refuse(m, headers), m).toEqual(expect.any(String));
  });
});

describe('CSRF: allowed hosts on this site scheme only', () => {
  const h = (entries: Array<[string, string]>) => headerMap(entries);
  it('refuses an allowed host over http when the site is https, accepts it over https', () => {
    expect(csrfRefusal('POST', h([['origin', 'http://api.example.com']]), 'https://orders.example.com', ['api.example.com'], 'https:')).toBe('the Origin is not this site');
    expect(csrfRefusal('POST', h([['origin', 'https://api.example.com']]), 'https://orders.example.com', ['api.example.com'], 'https:')).toBeUndefined();
  });
  it('checks a WebSocket handshake like an unsafe request', () => {
    expect(csrfRefusal('UPGRADE', h([['origin', 'https://evil.example']]), 'https://orders.example.com', [])).toBe('the Origin is not this site');
    expect(csrfRefusal('UPGRADE', h([['origin', 'https://orders.example.com']]), 'https://orders.example.com', [])).toBeUndefined();
  });
});
