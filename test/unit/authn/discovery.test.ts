import { afterEach, describe, expect, it } from 'vitest';
import { createDiscoveredKeySource } from '../../../src/authn/discovery.js';
import { KeysUnavailableError, type KeySource } from '../../../src/authn/jwks-source.js';
import { SidecarError } from '../../../src/core/errors.js';
import { closedPort, until } from './loopback.js';

const sources: KeySource[] = [];
afterEach(() => {
  for (const s of sources.splice(0)) s.close();
});

describe('createDiscoveredKeySource', () => {
  it('before discovery succeeds, getKey throws KeysUnavailableError with the discovery error as cause', async () => {
    const port = await closedPort();
    const errors: Error[] = [];
    const source = createDiscoveredKeySource(`http://127.0.0.1:${port}`, {
      timeoutMs: 2_000,
      onDiscovery: (result, error) => {
        if (result === 'error' && error !== undefined) errors.push(error);
      },
    });
    sources.push(source);
    await until(() => errors.length > 0, 'the first discovery attempt');

    const err: unknown = await Promise.resolve()
      .then(() => source.getKey({ alg: 'RS256' }, { payload: '', signature: '' }))
      .then(
        () => undefined,
        (e: unknown) => e,
      );
    expect(err).toBeInstanceOf(KeysUnavailableError);
    expect(err).toBeInstanceOf(SidecarError);
    expect((err as KeysUnavailableError).code).toBe('KEYS_UNAVAILABLE');
    expect((err as KeysUnavailableError).message).toBe(`discovery of http://127.0.0.1:${port} has not succeeded yet`);
    expect((err as KeysUnavailableError).cause).toBe(errors.at(-1));
    expect(source.ready()).toBe(false);
  });
});
