/**
 * Return URLs (DESIGN.md §7): the shapes of the peers' open-redirect advisories are each refused, and the
 * two allowed shapes (a local path, an https URL on an allowed host) pass unchanged.
 */
import { describe, expect, it } from 'vitest';
import { checkReturnUrl, type ReturnUrlPolicy } from '../../../src/signin/return-url.js';

const policy: ReturnUrlPolicy = { callbackHost: 'orders.example.com', allowedHosts: ['app.example.com', '.shop.example.com'], allowHttp: false };

describe('return URLs that pass', () => {
  it.each([
    ['/', '/'],
    ['/orders/42?expand=items#top', '/orders/42?expand=items#top'],
    ['/caf%C3%A9/menu', '/caf%C3%A9/menu'],
    ['/a//b', '/a//b'],
    ['https://orders.example.com/orders', 'https://orders.example.com/orders'],
    ['https://app.example.com/', 'https://app.example.com/'],
    ['https://eu.shop.example.com/cart?x=1', 'https://eu.shop.example.com/cart?x=1'],
    ['HTTPS://ORDERS.EXAMPLE.COM/x', 'https://orders.example.com/x'],
  ])('%s', (value, location) => {
    expect(checkReturnUrl(value, policy)).toEqual({ ok: true, location });
  });

  it('allows http only when the policy does (secure: false on a loopback callback)', () => {
    const loopback: ReturnUrlPolicy = { callbackHost: '127.0.0.1:8080', allowedHosts: [], allowHttp: true };
    expect(checkReturnUrl('http://127.0.0.1:8080/x', loopback)).toEqual({ ok: true, location: 'http://127.0.0.1:8080/x' });
    expect(checkReturnUrl('http://orders.example.com/x', policy).ok).toBe(false);
  });
});

describe('the open-redirect corpus: every shape refused', () => {
  // Each shape is a way a browser, a proxy or a URL parser reads the value as another host.
  it.each([
    // Network-path references and their disguises (oauth2-proxy CVE-2020-5233, CVE-2020-11053; mod_auth_openidc CVE-2021-32786, CVE-2022-23527)
    '//evil.com',
    '///evil.com',
    '/\\evil.com',
    '/\\/evil.com',
    '\\/\\/evil.com',
    '\\\\evil.com',
    '/%2Fevil.com',
    '/%2fevil.com',
    '/%5Cevil.com',
    '/%5c%5cevil.com',
    '/%09/evil.com',
    '/\t/evil.com',
    '/\n/evil.com',
    '/ /evil.com',
    '/%20/evil.com',
    '/%0d%0a/evil.com',
    '/%00/evil.com',
    '/\u0000/evil.com',
    '/%E3%80%80/evil.com',
    '/%C2%A0/evil.com',
    '/%e2%80%a8/evil.com',
    ' /orders',
    '/orders ',
    // Hosts that only look allowed (oauth2-proxy CVE-2020-4037, CVE-2021-21291; mod_auth_openidc CVE-2021-39191)
    'https://evil.com',
    'https://orders.example.com.evil.com/',
    'https://evil.com/.example.com',
    'https://evil.com\\.shop.example.com',
    'https://evil.com%2F.shop.example.com',
    'https://evil.com?.shop.example.com',
    'https://evil.com#.shop.example.com',
    'https://orders.example.com@evil.com/',
    'https://evil.com@orders.example.com/',
    'https://user:pass@orders.example.com/',
    'https://orders.example.com\\@evil.com/',
    'https://orders.example.com./',
    'https://shop.example.com/',
    'https://evilshop.example.com/',
    'https://eu.shop.example.com:8443/',
    'https://app.example.com:444/',
    'https://оrders.example.com/',
    'https://xn--rders-3ve.example.com/',
    // Schemes and scheme tricks
    'http://orders.example.com/',
    'https:evil.com',
    'https:/evil.com',
    'https:\\\\evil.com',
    'javascript:alert(1)',
    'JaVaScRiPt:alert(1)',
    'data:text/html,<script>alert(1)</script>',
    'ftp://orders.example.com/',
    'evil.com',
    'orders',
    '',
  ])('%j', (value) => {
    const result = checkReturnUrl(value, policy);
    expect(result.ok).toBe(false);
    expect(result).not.toHaveProperty('location');
  });

  it('refuses a missing or overlong value', () => {
    expect(checkReturnUrl(undefined, policy)).toEqual({ ok: false, reason: 'no return URL' });
    expect(checkReturnUrl(`/${'a'.repeat(2048)}`, policy).ok).toBe(false);
  });
});
