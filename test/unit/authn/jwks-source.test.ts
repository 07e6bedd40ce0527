import { randomUUID } from 'node:crypto';
import type { ServerResponse } from 'node:http';
import { errors, exportJWK, generateKeyPair, jwtVerify, SignJWT, type CryptoKey, type JWK } from 'jose';
import { afterEach, describe, expect, it } from 'vitest';
import {
  createRemoteKeySource,
  fetchJwks,
  keyIdentity,
  KeysUnavailableError,
  type FetchResult,
  type KeySource,
  type RemoteKeySourceOptions,
} from '../../../src/authn/jwks-source.js';
import { closedPort, gate, sendJson, startLoopback, until, type Loopback } from './loopback.js';

const T0 = Date.parse('2030-01-01T00:00:00Z');
const COOLDOWN_MS = 30_000;
const REFRESH_MS = 600_000;
/** Small enough for a test, large enough for a JWKS of two RSA keys (about 1 KiB). */
const MAX_BYTES = 4_096;
/** Small enough for a test, far above a loopback round trip. */
const TIMEOUT_MS = 400;

interface TestKey {
  readonly kid: string;
  readonly privateKey: CryptoKey;
  readonly jwk: JWK;
}

async function testKey(kid: string): Promise<TestKey> {
  const { publicKey, privateKey } = await generateKeyPair('RS256');
  return { kid, privateKey, jwk: { ...(await exportJWK(publicKey)), kid, alg: 'RS256', use: 'sig' } };
}

const OLD = await testKey('old-1');
const NEW = await testKey('new-1');
/** A key the IdP never publishes: its tokens carry kids nobody knows. */
const STRANGER = await testKey('stranger');

async function sign(key: TestKey, kid: string = key.kid): Promise<string> {
  return new SignJWT({ sub: 'alice' }).setProtectedHeader({ alg: 'RS256', kid }).sign(key.privateKey);
}

const OLD_TOKEN = await sign(OLD);
const NEW_TOKEN = await sign(NEW);
const unknownKidToken = (): Promise<string> => sign(STRANGER, `unknown-${randomUUID()}`);

// ---------------------------------------------------------------------------------------------------------
// The remote side: a JWKS endpoint that counts requests and whose answer the test can change.

type Reply = (res: ServerResponse) => void;

const serveKeys =
  (...keys: TestKey[]): Reply =>
  (res) =>
    sendJson(res, 200, { keys: keys.map((k) => k.jwk) });

const raw =
  (status: number, body: string, headers: Record<string, string> = { 'content-type': 'application/json' }): Reply =>
  (res) => {
    res.writeHead(status, headers);
    res.end(body);
  };

/** Sent in pieces without content-length (chunked), so only counting the bytes read can catch the size. */
const chunked =
  (body: string): Reply =>
  (res) => {
    res.writeHead(200, { 'content-type': 'application/json' });
    for (let i = 0; i < body.length; i += 1_024) res.write(body.slice(i, i + 1_024));
    res.end();
  };

const hang: Reply = () => {
  // Never answers; the client must give up after timeoutMs.
};

const held =
  (wait: Promise<void>, reply: Reply): Reply =>
  (res) => {
    void wait.then(() => reply(res));
  };

interface JwksServer {
  readonly url: URL;
  requests: number;
  reply: Reply;
}

const servers: Loopback[] = [];
const sources: KeySource[] = [];
afterEach(async () => {
  for (const s of sources.splice(0)) s.close();
  for (const s of servers.splice(0)) await s.close();
});

async function jwksServer(reply: Reply = serveKeys(OLD)): Promise<JwksServer> {
  const state = { requests: 0, reply };
  const loopback = await startLoopback((_req, res) => {
    state.requests++;
    state.reply(res);
  });
  servers.push(loopback);
  const url = new URL(`${loopback.origin}/certs`);
  return Object.assign(state, { url });
}

interface Harness {
  readonly source: KeySource;
  readonly clock: { ms: number };
  readonly fetches: Array<{ result: FetchResult; error: Error | undefined }>;
  verify(token: string): Promise<unknown>;
}

function keySource(url: URL, options: RemoteKeySourceOptions = {}): Harness {
  const clock = { ms: T0 };
  const fetches: Harness['fetches'] = [];
  const source = createRemoteKeySource(url, {
    cooldownMs: COOLDOWN_MS,
    refreshMs: REFRESH_MS,
    ...options,
    now: () => clock.ms,
    onFetch: (result, error) => fetches.push({ result, error }),
  });
  sources.push(source);
  return { source, clock, fetches, verify: async (token) => (await jwtVerify(token, source.getKey)).payload };
}

/** A source whose initial fetch has completed (successfully). */
async function loadedSource(server: JwksServer, options: RemoteKeySourceOptions = {}): Promise<Harness> {
  const h = keySource(server.url, options);
  await until(() => h.fetches.length === 1, 'the initial JWKS fetch');
  expect(h.fetches[0]?.result).toBe('success');
  expect(h.source.ready()).toBe(true);
  expect(server.requests).toBe(1);
  return h;
}

describe('createRemoteKeySource: initial fetch', () => {
  it('fetches the keys at construction; ready() is false until they are loaded, true after', async () => {
    const release = gate();
    const server = await jwksServer(held(release.wait, serveKeys(OLD)));
    const h = keySource(server.url);
    expect(h.source.ready()).toBe(false);
    // The request goes out without any getKey call.
    await until(() => server.requests === 1, 'the JWKS request');
    expect(h.source.ready()).toBe(false);

    release.release();
    await until(() => h.source.ready(), 'the keys to be loaded');
    await until(() => h.fetches.length === 1, 'onFetch');
    expect(h.fetches.map((f) => f.result)).toEqual(['success']);
    await expect(h.verify(OLD_TOKEN)).resolves.toMatchObject({ sub: 'alice' });
    expect(server.requests).toBe(1);
  });

  it('a getKey call made before the keys arrive waits for the initial fetch instead of starting another', async () => {
    const release = gate();
    const server = await jwksServer(held(release.wait, serveKeys(OLD)));
    const h = keySource(server.url);
    await until(() => server.requests === 1, 'the JWKS request');
    const verified = h.verify(OLD_TOKEN);
    release.release();
    await expect(verified).resolves.toMatchObject({ sub: 'alice' });
    expect(server.requests).toBe(1);
  });

  it('never fetched and the endpoint is down: getKey throws KeysUnavailableError', async () => {
    const port = await closedPort();
    const h = keySource(new URL(`http://127.0.0.1:${port}/certs`), { timeoutMs: 2_000 });
    const err = await h.verify(OLD_TOKEN).then(() => undefined, (e: unknown) => e);
    expect(err).toBeInstanceOf(KeysUnavailableError);
    expect(h.source.ready()).toBe(false);
    expect(h.fetches.length).toBeGreaterThanOrEqual(1);
    expect(h.fetches.every((f) => f.result === 'error' && f.error instanceof Error)).toBe(true);
    // The code it maps to, and why: the fetch error (fetch's TypeError) is kept as the cause.
    expect((err as KeysUnavailableError).code).toBe('KEYS_UNAVAILABLE');
    expect((err as KeysUnavailableError).cause).toBeInstanceOf(Error);
    expect((err as KeysUnavailableError).cause).toBe(h.fetches.at(-1)?.error);
  });

  it('never fetched and the endpoint answers 500: getKey throws KeysUnavailableError', async () => {
    const server = await jwksServer(raw(500, JSON.stringify({ keys: [OLD.jwk] })));
    const h = keySource(server.url);
    const err = await h.verify(OLD_TOKEN).then(() => undefined, (e: unknown) => e);
    expect(err).toBeInstanceOf(KeysUnavailableError);
    expect((err as Error).cause).toBeInstanceOf(Error);
    expect(((err as Error).cause as Error).message).toBe('JWKS endpoint answered HTTP 500');
    expect(h.source.ready()).toBe(false);
  });

  const badOptions: Array<[name: string, options: RemoteKeySourceOptions]> = [
    ['timeoutMs 0', { timeoutMs: 0 }],
    ['negative cooldownMs', { cooldownMs: -1 }],
    ['refreshMs 0', { refreshMs: 0 }],
    ['backoffMs 0', { backoffMs: 0 }],
    ['maxBytes 0', { maxBytes: 0 }],
    ['timeoutMs NaN', { timeoutMs: Number.NaN }],
  ];
  it.each(badOptions)('rejects %s with a TypeError when built', (_name, options) => {
    expect(() => createRemoteKeySource(new URL('http://127.0.0.1:1/certs'), options)).toThrow(TypeError);
  });
});

describe('createRemoteKeySource: refetch on an unknown kid', () => {
  it('50 concurrent unknown kids right after the initial fetch cause at most one extra fetch', async () => {
    const server = await jwksServer();
    const h = await loadedSource(server);
    const tokens = await Promise.all(Array.from({ length: 50 }, unknownKidToken));

    const results = await Promise.allSettled(tokens.map((t) => h.verify(t)));
    for (const r of results) {
      expect(r.status).toBe('rejected');
      if (r.status === 'rejected') expect(r.reason).toBeInstanceOf(errors.JWKSNoMatchingKey);
    }
    expect(server.requests - 1).toBeLessThanOrEqual(1);
  });

  it('concurrent misses past the cooldown share exactly one fetch; misses inside the next cooldown fetch nothing', async () => {
    const server = await jwksServer();
    const h = await loadedSource(server);

    h.clock.ms += COOLDOWN_MS + 1;
    const tokens = await Promise.all(Array.from({ length: 50 }, unknownKidToken));
    const results = await Promise.allSettled(tokens.map((t) => h.verify(t)));
    expect(results.every((r) => r.status === 'rejected' && r.reason instanceof errors.JWKSNoMatchingKey)).toBe(true);
    expect(server.requests).toBe(2);

    // Further unknown kids inside the cooldown: no fetch at all, concurrent or one after another.
    h.clock.ms += COOLDOWN_MS - 1;
    await Promise.allSettled((await Promise.all(Array.from({ length: 10 }, unknownKidToken))).map((t) => h.verify(t)));
    for (let i = 0; i < 5; i++) await expect(h.verify(await unknownKidToken())).rejects.toBeInstanceOf(errors.JWKSNoMatchingKey);
    expect(server.requests).toBe(2);

    // Past the cooldown again: one more miss, exactly one more fetch.
    h.clock.ms += 2;
    await expect(h.verify(await unknownKidToken())).rejects.toBeInstanceOf(errors.JWKSNoMatchingKey);
    expect(server.requests).toBe(3);
    await expect(h.verify(await unknownKidToken())).rejects.toBeInstanceOf(errors.JWKSNoMatchingKey);
    expect(server.requests).toBe(3);
    // The old keys served all along.
    await expect(h.verify(OLD_TOKEN)).resolves.toMatchObject({ sub: 'alice' });
    expect(h.fetches.map((f) => f.result)).toEqual(['success', 'success', 'success']);
  });

  it('picks up a rotated key: a token with the new kid is accepted after one refetch', async () => {
    const server = await jwksServer();
    const h = await loadedSource(server);
    server.reply = serveKeys(NEW);

    // Inside the cooldown that follows the initial fetch the new kid is not looked up.
    await expect(h.verify(NEW_TOKEN)).rejects.toBeInstanceOf(errors.JWKSNoMatchingKey);
    expect(server.requests).toBe(1);

    h.clock.ms += COOLDOWN_MS + 1;
    await expect(h.verify(NEW_TOKEN)).resolves.toMatchObject({ sub: 'alice' });
    expect(server.requests).toBe(2);
    // The new set replaced the old one; the new key is served without further fetches.
    await expect(h.verify(NEW_TOKEN)).resolves.toMatchObject({ sub: 'alice' });
    await expect(h.verify(OLD_TOKEN)).rejects.toBeInstanceOf(errors.JWKSNoMatchingKey);
    expect(server.requests).toBe(2);
  });

  it('a rotation that keeps the old key serves both', async () => {
    const server = await jwksServer();
    const h = await loadedSource(server);
    server.reply = serveKeys(OLD, NEW);
    h.clock.ms += COOLDOWN_MS + 1;
    await expect(h.verify(NEW_TOKEN)).resolves.toMatchObject({ sub: 'alice' });
    await expect(h.verify(OLD_TOKEN)).resolves.toMatchObject({ sub: 'alice' });
    expect(server.requests).toBe(2);
  });
});

describe('createRemoteKeySource: a bad answer never replaces good keys', () => {
  const big = JSON.stringify({ keys: [OLD.jwk], padding: 'x'.repeat(MAX_BYTES * 2) });
  const garbage: Array<[name: string, reply: Reply]> = [
    ['HTTP 500 (even with a valid JWKS body)', raw(500, JSON.stringify({ keys: [OLD.jwk] }))],
    ['a body that is not JSON', raw(200, '<html>maintenance</html>', { 'content-type': 'text/html' })],
    ['{"keys":"x"}', raw(200, '{"keys":"x"}')],
    ['{"keys":[]}', raw(200, '{"keys":[]}')],
    ['JSON null', raw(200, 'null')],
    ['{"keys":["x"]}', raw(200, '{"keys":["x"]}')],
    ['a body over maxBytes with content-length', raw(200, big)],
    ['a body over maxBytes, chunked', chunked(big)],
    ['no answer within timeoutMs', hang],
  ];
  const triggers = [
    {
      trigger: 'background refresh after refreshMs',
      run: async (h: Harness): Promise<void> => {
        h.clock.ms += REFRESH_MS;
        // Answered from the current keys while the refresh runs in the background.
        await expect(h.verify(OLD_TOKEN)).resolves.toMatchObject({ sub: 'alice' });
        await until(() => h.fetches.length === 2, 'the background refresh');
      },
    },
    {
      trigger: 'unknown kid past the cooldown',
      run: async (h: Harness): Promise<void> => {
        h.clock.ms += COOLDOWN_MS + 1;
        // The refetch failed: whether the kid is a new key cannot be told, so not a bad token but unavailable.
        await expect(h.verify(await unknownKidToken())).rejects.toBeInstanceOf(KeysUnavailableError);
        expect(h.fetches.length).toBe(2);
      },
    },
  ];
  const cases = garbage.flatMap(([name, reply]) => triggers.map((t) => ({ name, reply, ...t })));

  it.each(cases)('$name ($trigger): old keys keep serving, onFetch reports error', async ({ reply, run }) => {
    const server = await jwksServer();
    const h = await loadedSource(server, { maxBytes: MAX_BYTES, timeoutMs: TIMEOUT_MS });
    server.reply = reply;

    await run(h);
    expect(server.requests).toBe(2);
    expect(h.fetches[1]?.result).toBe('error');
    expect(h.fetches[1]?.error).toBeInstanceOf(Error);
    expect(h.source.ready()).toBe(true);
    await expect(h.verify(OLD_TOKEN)).resolves.toMatchObject({ sub: 'alice' });
  });

  // "answers something that is not a usable JWKS is counted and ignored": a set whose only member is not a key.
  it('a key set whose members are not keys ({"keys":[{}]}) does not replace good keys', async () => {
    const server = await jwksServer();
    const h = await loadedSource(server);
    server.reply = raw(200, '{"keys":[{}]}');
    h.clock.ms += COOLDOWN_MS + 1;
    await expect(h.verify(await unknownKidToken())).rejects.toBeInstanceOf(KeysUnavailableError);
    expect(server.requests).toBe(2);
    await expect(h.verify(OLD_TOKEN)).resolves.toMatchObject({ sub: 'alice' });
    expect(h.fetches[1]?.result).toBe('error');
  });

  it('a good answer after bad ones is taken', async () => {
    const server = await jwksServer();
    const h = await loadedSource(server);
    server.reply = raw(503, 'down');
    h.clock.ms += COOLDOWN_MS + 1;
    await expect(h.verify(NEW_TOKEN)).rejects.toBeInstanceOf(KeysUnavailableError);
    server.reply = serveKeys(OLD, NEW);
    h.clock.ms += COOLDOWN_MS + 1;
    await expect(h.verify(NEW_TOKEN)).resolves.toMatchObject({ sub: 'alice' });
    expect(h.fetches.map((f) => f.result)).toEqual(['success', 'error', 'success']);
  });
});

describe('createRemoteKeySource: background refresh', () => {
  it('before refreshMs nothing is fetched; after it one getKey starts one background fetch and is answered from the current keys', async () => {
    const server = await jwksServer();
    const h = await loadedSource(server);

    h.clock.ms += REFRESH_MS - 1;
    await expect(h.verify(OLD_TOKEN)).resolves.toMatchObject({ sub: 'alice' });
    expect(server.requests).toBe(1);

    const release = gate();
    server.reply = held(release.wait, serveKeys(OLD, NEW));
    h.clock.ms += 1;
    // Answered while the refresh is still held by the server: from the keys we have.
    await expect(h.verify(OLD_TOKEN)).resolves.toMatchObject({ sub: 'alice' });
    await until(() => server.requests === 2, 'the background fetch');
    // More requests while it runs do not start more fetches.
    await Promise.all([h.verify(OLD_TOKEN), h.verify(OLD_TOKEN), h.verify(OLD_TOKEN)]);
    expect(h.fetches.length).toBe(1);

    release.release();
    await until(() => h.fetches.length === 2, 'the background fetch to finish');
    expect(h.fetches[1]?.result).toBe('success');
    // The refreshed set is in use (the new key verifies without a miss-triggered fetch) and is fresh again.
    await expect(h.verify(NEW_TOKEN)).resolves.toMatchObject({ sub: 'alice' });
    await expect(h.verify(OLD_TOKEN)).resolves.toMatchObject({ sub: 'alice' });
    expect(server.requests).toBe(2);
  });

  // The module header: "refreshed in the background every refreshMs". A refresh that failed must not turn
  // into one fetch per request while the IdP is down.
  it('a failed background refresh is not retried by every following request', async () => {
    const server = await jwksServer();
    const h = await loadedSource(server);
    server.reply = raw(500, 'down');
    h.clock.ms += REFRESH_MS;
    await h.verify(OLD_TOKEN);
    await until(() => h.fetches.length === 2, 'the background refresh');
    expect(h.fetches[1]?.result).toBe('error');

    for (let i = 0; i < 5; i++) {
      await expect(h.verify(OLD_TOKEN)).resolves.toMatchObject({ sub: 'alice' });
      await new Promise((resolve) => setImmediate(resolve));
    }
    // Let any fetch those requests started reach the server.
    await new Promise((resolve) => setTimeout(resolve, 50));
    expect(server.requests).toBe(2);
  });
});

// Soak finding: a token signed with the IdP's new key got 401 while the IdP was down, and kept getting it for
// most of a cooldown after the IdP came back. An unknown kid that cannot be looked up is 503, and a failed
// fetch is retried after backoffMs, doubling up to the cooldown, not after the whole cooldown.
describe('createRemoteKeySource: unknown kid while the JWKS endpoint is failing', () => {
  const BACKOFF_MS = 1_000;

  /** A source loaded with OLD whose endpoint then answers 503; one failed refetch made for NEW_TOKEN. */
  async function failingSource(): Promise<{ server: JwksServer; h: Harness }> {
    const server = await jwksServer();
    const h = await loadedSource(server, { backoffMs: BACKOFF_MS });
    server.reply = raw(503, 'down');
    h.clock.ms += COOLDOWN_MS + 1;
    const err = await h.verify(NEW_TOKEN).then(() => undefined, (e: unknown) => e);
    expect(err).toBeInstanceOf(KeysUnavailableError);
    expect((err as KeysUnavailableError).code).toBe('KEYS_UNAVAILABLE');
    // Why: the fetch error, as the cause; the message names no token content.
    expect(((err as Error).cause as Error).message).toBe('JWKS endpoint answered HTTP 503');
    expect((err as Error).message).not.toContain(NEW.kid);
    expect(server.requests).toBe(2);
    expect(h.fetches.map((f) => f.result)).toEqual(['success', 'error']);
    return { server, h };
  }

  it('a kid the last good set lacks is KeysUnavailableError when the refetch fails, and while the retry waits its backoff', async () => {
    const { server, h } = await failingSource();
    // Inside the backoff: no fetch, still unavailable (not a bad token), for the new kid and for any other.
    h.clock.ms += BACKOFF_MS - 1;
    await expect(h.verify(NEW_TOKEN)).rejects.toBeInstanceOf(KeysUnavailableError);
    await expect(h.verify(await unknownKidToken())).rejects.toBeInstanceOf(KeysUnavailableError);
    expect(server.requests).toBe(2);
    // Known keys keep serving throughout.
    await expect(h.verify(OLD_TOKEN)).resolves.toMatchObject({ sub: 'alice' });
    // A token signed by another key under a known kid is still a bad signature: no key is missing.
    await expect(h.verify(await sign(STRANGER, OLD.kid))).rejects.toBeInstanceOf(errors.JWSSignatureVerificationFailed);
    expect(server.requests).toBe(2);
  });

  it('a failed background refresh makes an unknown kid unavailable too', async () => {
    const server = await jwksServer();
    const h = await loadedSource(server, { backoffMs: BACKOFF_MS });
    server.reply = raw(500, 'down');
    h.clock.ms += REFRESH_MS;
    await expect(h.verify(OLD_TOKEN)).resolves.toMatchObject({ sub: 'alice' });
    await until(() => h.fetches.length === 2, 'the background refresh');
    expect(h.fetches[1]?.result).toBe('error');
    await expect(h.verify(NEW_TOKEN)).rejects.toBeInstanceOf(KeysUnavailableError);
    expect(server.requests).toBe(2);
  });

  it('the IdP is retried after backoffMs, doubling up to the cooldown; the new key is accepted on the first retry that succeeds', async () => {
    const { server, h } = await failingSource();
    let fetches = 2;
    // Waits after the 1st, 2nd, ... failure: 1 s, 2 s, 4 s, 8 s, 16 s, then the 30 s cooldown (not 32 s), twice.
    for (const wait of [1_000, 2_000, 4_000, 8_000, 16_000, 30_000, 30_000]) {
      h.clock.ms += wait - 1;
      await expect(h.verify(NEW_TOKEN)).rejects.toBeInstanceOf(KeysUnavailableError);
      expect(server.requests).toBe(fetches);
      h.clock.ms += 1;
      await expect(h.verify(NEW_TOKEN)).rejects.toBeInstanceOf(KeysUnavailableError);
      expect(server.requests).toBe(++fetches);
    }

    // The IdP is back with the rotated key: the next retry (one cooldown later, the cap) takes it.
    server.reply = serveKeys(NEW);
    h.clock.ms += COOLDOWN_MS;
    await expect(h.verify(NEW_TOKEN)).resolves.toMatchObject({ sub: 'alice' });
    expect(server.requests).toBe(++fetches);
    expect(h.fetches.at(-1)?.result).toBe('success');

    // The IdP answered: a kid its set lacks is a bad token again, and the next refetch waits the full cooldown.
    h.clock.ms += COOLDOWN_MS - 1;
    await expect(h.verify(OLD_TOKEN)).rejects.toBeInstanceOf(errors.JWKSNoMatchingKey);
    await expect(h.verify(await unknownKidToken())).rejects.toBeInstanceOf(errors.JWKSNoMatchingKey);
    expect(server.requests).toBe(fetches);
  });

  it('a success resets the backoff: the next outage is retried after backoffMs again', async () => {
    const { server, h } = await failingSource();
    server.reply = serveKeys(OLD, NEW);
    h.clock.ms += BACKOFF_MS;
    await expect(h.verify(NEW_TOKEN)).resolves.toMatchObject({ sub: 'alice' });
    expect(server.requests).toBe(3);

    server.reply = raw(503, 'down');
    h.clock.ms += COOLDOWN_MS;
    await expect(h.verify(await unknownKidToken())).rejects.toBeInstanceOf(KeysUnavailableError);
    expect(server.requests).toBe(4);
    h.clock.ms += BACKOFF_MS;
    await expect(h.verify(await unknownKidToken())).rejects.toBeInstanceOf(KeysUnavailableError);
    expect(server.requests).toBe(5);
    expect(h.fetches.map((f) => f.result)).toEqual(['success', 'error', 'success', 'error', 'error']);
  });

  it('concurrent misses during an outage share one fetch; a flood of random kids costs one fetch per backoff step', async () => {
    const { server, h } = await failingSource();
    const release = gate();
    server.reply = held(release.wait, raw(503, 'down'));
    h.clock.ms += BACKOFF_MS;
    const flood = await Promise.all(Array.from({ length: 50 }, unknownKidToken));
    const settled = Promise.allSettled(flood.map((t) => h.verify(t)));
    await until(() => server.requests === 3, 'the shared refetch');
    release.release();
    const results = await settled;
    expect(results.every((r) => r.status === 'rejected' && r.reason instanceof KeysUnavailableError)).toBe(true);
    expect(server.requests).toBe(3);

    // Inside the next backoff (2 s) another 50, one after another: no fetch.
    h.clock.ms += 2 * BACKOFF_MS - 1;
    for (const t of await Promise.all(Array.from({ length: 50 }, unknownKidToken))) {
      await expect(h.verify(t)).rejects.toBeInstanceOf(KeysUnavailableError);
    }
    expect(server.requests).toBe(3);
  });

  it('the backoff never exceeds a shorter cooldown', async () => {
    const server = await jwksServer();
    const h = await loadedSource(server, { backoffMs: 5_000, cooldownMs: 2_000 });
    server.reply = raw(503, 'down');
    h.clock.ms += 2_000;
    await expect(h.verify(NEW_TOKEN)).rejects.toBeInstanceOf(KeysUnavailableError);
    expect(server.requests).toBe(2);
    h.clock.ms += 2_000;
    await expect(h.verify(NEW_TOKEN)).rejects.toBeInstanceOf(KeysUnavailableError);
    expect(server.requests).toBe(3);
  });
});

// Soak finding: tokens verified with a key the IdP has since removed kept working from the verified-token
// cache. The source reports which keys a fetched set dropped; jwt.ts stops using those cached verifications.
describe('createRemoteKeySource: keys removed from the set', () => {
  function removals(): { calls: Array<readonly string[]>; onKeysRemoved: (removed: readonly string[]) => void } {
    const calls: Array<readonly string[]> = [];
    return { calls, onKeysRemoved: (removed) => calls.push(removed) };
  }

  it('reports the identity of a key the refetched set no longer holds, before the waiting request goes on', async () => {
    const server = await jwksServer(serveKeys(OLD));
    const r = removals();
    let reportedBeforeAnswer = false;
    const h = await loadedSource(server, { onKeysRemoved: r.onKeysRemoved });
    expect(r.calls).toEqual([]);
    server.reply = serveKeys(NEW);
    h.clock.ms += COOLDOWN_MS + 1;
    await h.verify(NEW_TOKEN).then(() => (reportedBeforeAnswer = r.calls.length === 1));
    expect(reportedBeforeAnswer).toBe(true);
    expect(r.calls).toEqual([[await keyIdentity(OLD.jwk)]]);
  });

  it('reports keys dropped by a background refresh', async () => {
    const server = await jwksServer(serveKeys(OLD, NEW));
    const r = removals();
    const h = await loadedSource(server, { onKeysRemoved: r.onKeysRemoved });
    server.reply = serveKeys(NEW);
    h.clock.ms += REFRESH_MS;
    await h.verify(NEW_TOKEN);
    await until(() => h.fetches.length === 2, 'the background refresh');
    expect(r.calls).toEqual([[await keyIdentity(OLD.jwk)]]);
  });

  const sets: Array<[name: string, next: () => JWK[], removed: () => JWK[]]> = [
    ['a key added', () => [OLD.jwk, NEW.jwk], () => []],
    ['the same keys, members reordered and extra members added', () => [{ x5t: 'cert-thumbprint', ...reordered(OLD.jwk) }], () => []],
    ['the same key material under a new kid', () => [{ ...OLD.jwk, kid: 'old-1-renamed' }], () => [OLD.jwk]],
    ['the same kid with other key material', () => [{ ...STRANGER.jwk, kid: OLD.kid }], () => [OLD.jwk]],
    ['the key restricted to encryption (use: enc)', () => [{ ...OLD.jwk, use: 'enc' }, NEW.jwk], () => [OLD.jwk]],
  ];
  it.each(sets)('%s', async (_name, next, removed) => {
    const server = await jwksServer(serveKeys(OLD));
    const r = removals();
    const h = await loadedSource(server, { onKeysRemoved: r.onKeysRemoved });
    server.reply = (res) => sendJson(res, 200, { keys: next() });
    h.clock.ms += REFRESH_MS;
    await h.verify(OLD_TOKEN).catch(() => undefined);
    await until(() => h.fetches.length === 2, 'the background refresh');
    expect(h.fetches[1]?.result).toBe('success');
    const expected = await Promise.all(removed().map((k) => keyIdentity(k)));
    expect(r.calls).toEqual(expected.length === 0 ? [] : [expected]);
  });

  it('a key without kid is identified by its thumbprint: dropping it is reported, republishing it is not', async () => {
    const { kid: _kid, ...noKid } = OLD.jwk;
    const server = await jwksServer((res) => sendJson(res, 200, { keys: [noKid] }));
    const r = removals();
    const h = await loadedSource(server, { onKeysRemoved: r.onKeysRemoved });
    server.reply = (res) => sendJson(res, 200, { keys: [reordered(noKid)] });
    h.clock.ms += REFRESH_MS;
    await h.verify(OLD_TOKEN).catch(() => undefined);
    await until(() => h.fetches.length === 2, 'the first refresh');
    expect(r.calls).toEqual([]);

    server.reply = serveKeys(NEW);
    h.clock.ms += REFRESH_MS;
    await h.verify(NEW_TOKEN).catch(() => undefined);
    await until(() => h.fetches.length === 3, 'the second refresh');
    expect(r.calls).toEqual([[await keyIdentity(noKid)]]);
  });

  it('a failed fetch removes nothing and reports nothing', async () => {
    const server = await jwksServer();
    const r = removals();
    const h = await loadedSource(server, { onKeysRemoved: r.onKeysRemoved });
    server.reply = raw(200, '{"keys":[]}');
    h.clock.ms += COOLDOWN_MS + 1;
    await expect(h.verify(NEW_TOKEN)).rejects.toBeInstanceOf(KeysUnavailableError);
    expect(h.fetches[1]?.result).toBe('error');
    expect(r.calls).toEqual([]);
    await expect(h.verify(OLD_TOKEN)).resolves.toMatchObject({ sub: 'alice' });
  });
});

/** The same members in reverse order. */
function reordered(jwk: JWK): JWK {
  return Object.fromEntries(Object.entries(jwk).reverse());
}

describe('keyIdentity', () => {
  it('is the same for the same key whatever the member order or extra members', async () => {
    expect(await keyIdentity(reordered(OLD.jwk))).toBe(await keyIdentity(OLD.jwk));
    expect(await keyIdentity({ ...OLD.jwk, x5t: 'abc' })).toBe(await keyIdentity(OLD.jwk));
  });

  it('differs when the material, kid, alg, use or key_ops differ', async () => {
    const base = await keyIdentity(OLD.jwk);
    const variants: JWK[] = [
      { ...NEW.jwk, kid: OLD.kid },
      { ...OLD.jwk, kid: 'other' },
      { ...OLD.jwk, alg: 'PS256' },
      { ...OLD.jwk, use: 'enc' },
      { ...OLD.jwk, key_ops: ['verify'] },
    ];
    for (const v of variants) expect(await keyIdentity(v)).not.toBe(base);
  });

  it('identifies members that are not keys by their content', async () => {
    expect(await keyIdentity({ kty: 'RSA', kid: 'broken' })).toBe(await keyIdentity({ kid: 'broken', kty: 'RSA' }));
    expect(await keyIdentity({ kty: 'RSA', kid: 'broken' })).not.toBe(await keyIdentity({ kty: 'RSA', kid: 'other' }));
    expect(await keyIdentity('x')).not.toBe(await keyIdentity({}));
  });
});

describe('fetchJwks', () => {
  it('returns the key set and a key resolver for it', async () => {
    const server = await jwksServer(serveKeys(OLD, NEW));
    const { jwks, keys, identities } = await fetchJwks(server.url, TIMEOUT_MS, MAX_BYTES);
    expect(jwks.keys.map((k) => k.kid)).toEqual([OLD.kid, NEW.kid]);
    expect(identities).toEqual(new Set([await keyIdentity(OLD.jwk), await keyIdentity(NEW.jwk)]));
    await expect(jwtVerify(NEW_TOKEN, keys)).resolves.toMatchObject({ payload: { sub: 'alice' } });
  });

  const failures: Array<[name: string, reply: Reply]> = [
    ['HTTP 500', raw(500, JSON.stringify({ keys: [OLD.jwk] }))],
    ['HTTP 302 (redirects are not followed)', raw(302, '', { location: '/elsewhere' })],
    ['not JSON', raw(200, 'keys')],
    ['keys not an array', raw(200, '{"keys":"x"}')],
    ['no keys member', raw(200, '{}')],
    ['an empty key set', raw(200, '{"keys":[]}')],
    ['a body over maxBytes', raw(200, JSON.stringify({ keys: [OLD.jwk], padding: 'x'.repeat(MAX_BYTES) }))],
    ['a chunked body over maxBytes', chunked(JSON.stringify({ keys: [OLD.jwk], padding: 'x'.repeat(MAX_BYTES) }))],
    ['no answer within the timeout', hang],
  ];
  it.each(failures)('throws on %s', async (_name, reply) => {
    const server = await jwksServer(reply);
    await expect(fetchJwks(server.url, TIMEOUT_MS, MAX_BYTES)).rejects.toThrow();
    expect(server.requests).toBe(1);
  });
});
