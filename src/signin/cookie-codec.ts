/**
 * The cookie store's codec (DESIGN.md §7): a session or a pending sign-in sealed as a JWE (`dir`,
 * `A256GCM`), so the browser holds it but can neither read nor change it, split into `<name>.0`,
 * `<name>.1`, ... when longer than a cookie can safely be.
 *
 * Keys come from `cookie.secretFiles` (each at least 32 bytes): the first seals, every one opens, so a new
 * secret put first takes over while cookies sealed with the old one keep working until they expire. Each
 * secret is stretched with HKDF-SHA256 into its AES key; the JWE names the key (`kid`) so opening tries
 * the right one. Opening never throws: a cookie that is tampered with, expired, sealed with an unknown key or
 * not a JWE at all is simply no session (fail closed).
 */
import { createHash, hkdfSync } from 'node:crypto';
import { decodeProtectedHeader, EncryptJWT, jwtDecrypt, type JWTPayload } from 'jose';

export const MIN_COOKIE_SECRET_BYTES = 32;
/** Longer values are split: browsers keep at least 4,096 bytes per cookie, name and attributes included. */
export const MAX_CHUNK_LENGTH = 3_800;
/**
 * At most this many chunks (11,400 bytes) are set and read; a session that needs more is refused when
 * sealed. Every cookie rides in one Cookie header: past this, with the request's other headers, it would
 * outgrow the 16 KiB header section of the sidecar (and of many proxies), and the browser, sending it with
 * every request, would be refused (431) everywhere on the site.
 */
export const MAX_CHUNKS = 3;

const HKDF_INFO = 'authz-sidecar cookie v1';

interface Key {
  readonly kid: string;
  readonly key: Uint8Array;
}

export interface CookieCodec {
  /** Seals `payload` until `expiresAt` (seconds since the epoch, the JWT `exp`). */
  seal(payload: JWTPayload, expiresAt: number): Promise<string>;
  /** The payload of a sealed value, or undefined when it cannot be trusted (never throws). */
  open(sealed: string, now?: Date): Promise<JWTPayload | undefined>;
}

function deriveKey(secret: Uint8Array): Key {
  const key = new Uint8Array(hkdfSync('sha256', secret, new Uint8Array(0), HKDF_INFO, 32));
  const kid = createHash('sha256').update(key).digest('base64url').slice(0, 12);
  return { kid, key };
}

/** `secrets` in order: the first seals. Each must be at least 32 bytes (`what` names it in the error). */
export function createCookieCodec(secrets: ReadonlyArray<{ readonly bytes: Uint8Array; readonly what: string }>): CookieCodec {
  if (secrets.length === 0) throw new TypeError('at least one cookie secret is needed');
  for (const s of secrets) {
    if (s.bytes.length < MIN_COOKIE_SECRET_BYTES) throw new TypeError(`${s.what}: a cookie secret needs at least ${MIN_COOKIE_SECRET_BYTES} bytes, it has ${s.bytes.length}`);
  }
  const keys = secrets.map((s) => deriveKey(s.bytes));
  const byKid = new Map(keys.map((k) => [k.kid, k]));
  const sealing = keys[0] as Key;

  return {
    seal(payload, expiresAt) {
      return new EncryptJWT(payload).setProtectedHeader({ alg: 'dir', enc: 'A256GCM', kid: sealing.kid }).setExpirationTime(expiresAt).encrypt(sealing.key);
    },
    async open(sealed, now) {
      let kid: unknown;
      try {
        kid = decodeProtectedHeader(sealed).kid;
      } catch {
        return undefined;
      }
      const key = typeof kid === 'string' ? byKid.get(kid) : undefined;
      if (key === undefined) return undefined;
      try {
        const { payload } = await jwtDecrypt(sealed, key.key, {
          keyManagementAlgorithms: ['dir'],
          contentEncryptionAlgorithms: ['A256GCM'],
          requiredClaims: ['exp'],
          ...(now ? { currentDate: now } : {}),
        });
        return payload;
      } catch {
        return undefined;
      }
    },
  };
}

/** A sealed value as cookie values: one named `name` when it fits, else `<name>.0`, `<name>.1`, ... */
export function splitIntoCookies(name: string, value: string): Array<readonly [string, string]> {
  if (value.length <= MAX_CHUNK_LENGTH) return [[name, value]];
  const chunks: Array<readonly [string, string]> = [];
  for (let i = 0; i * MAX_CHUNK_LENGTH < value.length; i++) chunks.push([`${name}.${i}`, value.slice(i * MAX_CHUNK_LENGTH, (i + 1) * MAX_CHUNK_LENGTH)]);
  if (chunks.length > MAX_CHUNKS) throw new RangeError(`a cookie of ${value.length} bytes needs more than ${MAX_CHUNKS} chunks`);
  return chunks;
}

/**
 * The sealed value back from a request's cookies: `name` itself, or its chunks from `.0` up to the first
 * missing one. Undefined when there is neither (a missing chunk makes the value fail to open, not this).
 */
export function joinFromCookies(name: string, cookies: ReadonlyMap<string, string>): string | undefined {
  const whole = cookies.get(name);
  if (whole !== undefined) return whole;
  let joined = '';
  for (let i = 0; i < MAX_CHUNKS; i++) {
    const chunk = cookies.get(`${name}.${i}`);
    if (chunk === undefined) break;
    joined += chunk;
  }
  return joined === '' ? undefined : joined;
}

/** Whether a cookie name is `name` or one of its chunks (the sidecar's own: never forwarded to the app). */
export function isCookieOf(name: string, cookieName: string): boolean {
  return cookieName === name || (cookieName.startsWith(`${name}.`) && /^\d$/.test(cookieName.slice(name.length + 1)));
}
