// eslint-disable-next-line @typescript-eslint/triple-slash-reference -- see oidc-provider.d.ts for why
/// <reference path="./oidc-provider.d.ts" />
/**
 * What the two real OpenID Provider harnesses share (oidc-provider.ts for tokens, signin-provider.ts for
 * browser sign-in): signing keys, loopback listening and closing, the private in-memory adapter, and
 * loading oidc-provider without its console notices.
 */
import type { Server } from 'node:http';
import { calculateJwkThumbprint, exportJWK, generateKeyPair, type JWK } from 'jose';
import type * as OidcProviderModule from 'oidc-provider';

export type SigningKey = JWK & { kid: string };
export type StoredPayload = Record<string, unknown>;
/** An adapter store: `<Model>:<id>` to the payload and its expiry (ms since the epoch). */
export type AdapterStore = Map<string, { payload: StoredPayload; expiresAt: number }>;

export async function generateSigningKey(): Promise<SigningKey> {
  const { privateKey } = await generateKeyPair('RS256', { extractable: true });
  const jwk = await exportJWK(privateKey);
  return { ...jwk, kid: await calculateJwkThumbprint(jwk), alg: 'RS256', use: 'sig' };
}

/** Listens on 127.0.0.1 (port 0 = any free port). */
export function listen(server: Server, port: number): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    const onError = (err: NodeJS.ErrnoException): void => {
      reject(new Error(`cannot listen on 127.0.0.1:${port}: ${err.code ?? err.message}`));
    };
    server.once('error', onError);
    server.listen(port, '127.0.0.1', () => {
      server.off('error', onError);
      resolve();
    });
  });
}

/** Stops listening and destroys every open connection. */
export function closeServer(server: Server): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    server.close((err) => (err ? reject(err) : resolve()));
    server.closeAllConnections();
  });
}

/** Private in-memory storage per provider (keys `<Model>:<id>`), reachable by the revocation knobs. */
export function createAdapterFactory(store: AdapterStore = new Map()): (name: string) => OidcProviderModule.Adapter {
  const get = (key: string): StoredPayload | undefined => {
    const entry = store.get(key);
    if (entry === undefined) return undefined;
    if (entry.expiresAt <= Date.now()) {
      store.delete(key);
      return undefined;
    }
    return entry.payload;
  };
  return (name) => {
    const key = (id: string): string => `${name}:${id}`;
    const findBy = (field: string, value: string): StoredPayload | undefined => {
      for (const k of [...store.keys()]) {
        if (!k.startsWith(`${name}:`)) continue;
        const payload = get(k);
        if (payload !== undefined && payload[field] === value) return payload;
      }
      return undefined;
    };
    return {
      upsert(id, payload, expiresIn) {
        const expiresAt = typeof expiresIn === 'number' ? Date.now() + expiresIn * 1000 : Number.POSITIVE_INFINITY;
        store.set(key(id), { payload: { ...(payload as StoredPayload) }, expiresAt });
        return Promise.resolve();
      },
      find(id) {
        return Promise.resolve(get(key(id)));
      },
      findByUserCode(userCode) {
        return Promise.resolve(findBy('userCode', userCode));
      },
      findByUid(uid) {
        return Promise.resolve(findBy('uid', uid));
      },
      consume(id) {
        const payload = get(key(id));
        if (payload !== undefined) payload.consumed = Math.floor(Date.now() / 1000);
        return Promise.resolve();
      },
      destroy(id) {
        store.delete(key(id));
        return Promise.resolve();
      },
      revokeByGrantId(grantId) {
        for (const [k, entry] of [...store]) {
          if (k.startsWith(`${name}:`) && entry.payload.grantId === grantId) store.delete(k);
        }
        return Promise.resolve();
      },
    };
  };
}

let modulePromise: Promise<typeof OidcProviderModule> | undefined;

/** Loads oidc-provider once, dropping the notices it prints on import (e.g. "Unsupported runtime" on Node < 22). */
export function loadOidcProvider(): Promise<typeof OidcProviderModule> {
  modulePromise ??= (async () => {
    const restore = muteProviderNotices();
    try {
      return await import('oidc-provider');
    } finally {
      restore();
    }
  })();
  return modulePromise;
}

export function quietly<T>(fn: () => T): T {
  const restore = muteProviderNotices();
  try {
    return fn();
  } finally {
    restore();
  }
}

let muteDepth = 0;
let unmuted: { warn: typeof console.warn; info: typeof console.info } | undefined;

/**
 * Filters console.warn/console.info lines of oidc-provider's `attention` helper ("oidc-provider WARNING: ..." /
 * "oidc-provider NOTICE: ...", possibly in ANSI colours); everything else passes. Re-entrant; returns the undo.
 */
export function muteProviderNotices(): () => void {
  if (muteDepth++ === 0) {
    const original = { warn: console.warn, info: console.info };
    unmuted = original;
    const isNotice = (args: unknown[]): boolean => typeof args[0] === 'string' && /oidc-provider (?:WARNING|NOTICE): /.test(args[0]);
    console.warn = (...args: unknown[]) => {
      if (!isNotice(args)) original.warn(...args);
    };
    console.info = (...args: unknown[]) => {
      if (!isNotice(args)) original.info(...args);
    };
  }
  let undone = false;
  return () => {
    if (undone) return;
    undone = true;
    if (--muteDepth === 0 && unmuted !== undefined) {
      console.warn = unmuted.warn;
      console.info = unmuted.info;
      unmuted = undefined;
    }
  };
}
