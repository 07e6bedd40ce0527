/**
 * The request-id rule every HTTP door shares (fastify's genReqId): the client's one sane `x-request-id`,
 * else a new UUID.
 */
import type { IncomingMessage } from 'node:http';
import { describe, expect, it } from 'vitest';
import { requestIdOf, requestIdOrNew } from '../../../src/frontends/request-id.js';

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;
const withHeaders = (...rawHeaders: string[]) => ({ rawHeaders }) as unknown as IncomingMessage;

describe('requestIdOf', () => {
  it("keeps the client's x-request-id, whatever the case of its name", () => {
    expect(requestIdOf(withHeaders('Host', 'a', 'X-Request-Id', 'abc-123'))).toBe('abc-123');
    expect(requestIdOf(withHeaders('x-request-id', 'trace:1.2_3'))).toBe('trace:1.2_3');
  });

  it('makes a new one when there is none, when it is not a sane token, and when there are two', () => {
    expect(requestIdOf(withHeaders('Host', 'a'))).toMatch(UUID);
    expect(requestIdOf(withHeaders('X-Request-Id', 'a b'))).toMatch(UUID);
    expect(requestIdOf(withHeaders('X-Request-Id', 'x'.repeat(129)))).toMatch(UUID);
    expect(requestIdOf(withHeaders('X-Request-Id', ''))).toMatch(UUID);
    expect(requestIdOf(withHeaders('X-Request-Id', 'one', 'x-request-id', 'two'))).toMatch(UUID);
  });

  it('does not take a header whose name only looks alike', () => {
    expect(requestIdOf(withHeaders('X-Request-Idx', 'abc', 'X-Request', 'def'))).toMatch(UUID);
  });
});

describe('requestIdOrNew', () => {
  it('takes the first sane candidate', () => {
    expect(requestIdOrNew(undefined, 'bad id', 'envoy-7')).toBe('envoy-7');
    expect(requestIdOrNew()).toMatch(UUID);
  });
});
