import { describe, expect, it } from 'vitest';
import { headerMap, headerMapFromRaw } from '../../../src/core/access-request.js';

describe('headerMapFromRaw', () => {
  it('keeps every line of a repeated header, in order, under its lower-case name', () => {
    const map = headerMapFromRaw(['Authorization', 'Bearer a', 'accept', '*/*', 'AUTHORIZATION', 'Bearer b']);
    expect(map['authorization']).toEqual(['Bearer a', 'Bearer b']);
    expect(map['accept']).toEqual(['*/*']);
    expect(Object.keys(map)).toEqual(['authorization', 'accept']);
  });

  it('is the same map as headerMap over node headersDistinct-style entries', () => {
    const raw = ['Host', 'a.example', 'X-Auth-Subject', 'root', 'x_auth_roles', 'admin', 'Cookie', 'a=1', 'cookie', 'b=2'];
    const distinct: Array<[string, string[]]> = [
      ['host', ['a.example']],
      ['x-auth-subject', ['root']],
      ['x_auth_roles', ['admin']],
      ['cookie', ['a=1', 'b=2']],
    ];
    expect({ ...headerMapFromRaw(raw) }).toEqual({ ...headerMap(distinct) });
  });

  it('treats names like __proto__ and constructor as data (null prototype)', () => {
    const map = headerMapFromRaw(['__proto__', 'x', 'constructor', 'y']);
    expect(Object.getPrototypeOf(map)).toBeNull();
    expect(map['__proto__']).toEqual(['x']);
    expect(map['constructor']).toEqual(['y']);
  });
});
