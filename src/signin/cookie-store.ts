/**
 * The sidecar's cookies (DESIGN.md §7): the session in the cookie store, and the state cookies of pending
 * sign-ins. Both are sealed by the cookie codec (JWE `dir`/`A256GCM`); the session is split into
 * `<name>.0`, `<name>.1`, ... when long. The session store is an interface: the cookie store here, the
 * redis store of §8 next to it.
 */
import { randomBytes } from 'node:crypto';
import { LRUCache } from 'lru-cache';
import type { Claims } from '../core/identity.js';
import { isCookieOf, joinFromCookies, MAX_CHUNK_LENGTH, MAX_CHUNKS, splitIntoCookies, type CookieCodec } from './cookie-codec.js';

/** A pending sign-in lives this long (the time to log in at the provider). */
export const STATE_COOKIE_SECONDS = 600;
/** At most this many pending sign-ins per browser; a new one drops the oldest. */
export const MAX_STATE_COOKIES = 5;
/** A return URL longer than this is not kept in a state cookie (the sign-in ends on `/`): five must stay small. */
export const MAX_STORED_RETURN_URL = 512;

/** What a session holds, wherever it is stored. Never logged. */
export interface SessionData {
  /** The sidecar's own session id: new at every sign-in, what sign-out revokes. */
  readonly id: string;
  readonly provider: string;
  readonly issuer: string;
  readonly subject: string;
  /** The ID token's claims (userinfo merged over them when configured), less protocol claims. */
  readonly claims: Claims;
  readonly accessToken?: string | undefined;
  /** When the access token expires (seconds since the epoch), when the provider said. */
  readonly accessTokenExpiresAt?: number | undefined;
  readonly refreshToken?: string | undefined;
  /** The raw ID token, for `id_token_hint` at sign-out. */
  readonly idToken?: string | undefined;
  /** The provider's session id (`sid`), for back-channel logout. */
  readonly providerSid?: string | undefined;
  /** Sign-in time in milliseconds since the epoch (exact enough to tell a sign-in from a logout in the same second). */
  readonly startedAtMs: number;
  /** The absolute end (`maxAgeSeconds` after sign-in), seconds since the epoch. */
  readonly expiresAt: number;
}

/** A pending sign-in (one state cookie). */
export interface PendingSignIn {
  readonly state: string;
  readonly nonce: string;
  readonly verifier: string;
  readonly provider: string;
  readonly returnTo: string;
  readonly createdAt: number;
  /** The start's trace and span ids when tracing is on: the callback links its span to them. */
  readonly traceId?: string | undefined;
  readonly spanId?: string | undefined;
}

export interface CookieSettings {
  readonly name: string;
  readonly secure: boolean;
  readonly sameSite: 'lax' | 'strict';
  readonly domain: string;
  /** The sign-in routes' prefix: the path of the state cookies, so that requests to the app never carry them. */
  readonly prefix: string;
}

/** A request's cookies by name; a name sent twice (a cookie tossed in from a sibling domain) maps to undefined. */
export type RequestCookies = ReadonlyMap<string, string | undefined>;

export function parseCookies(lines: readonly string[] | undefined): RequestCookies {
  const map = new Map<string, string | undefined>();
  for (const line of lines ?? []) {
    for (const part of line.split(';')) {
      const eq = part.indexOf('=');
      if (eq <= 0) continue;
      const name = part.slice(0, eq).trim();
      const value = part.slice(eq + 1).trim();
      map.set(name, map.has(name) ? undefined : value);
    }
  }
  return map;
}

/** `Set-Cookie` with the sidecar's attributes; Max-Age 0 clears. */
export function setCookie(
  settings: CookieSettings,
  name: string,
  value: string,
  maxAgeSeconds: number,
  sameSite: 'lax' | 'strict' = settings.sameSite,
  path = '/',
): string {
  let line = `${name}=${value}; Path=${path}; Max-Age=${Math.max(0, Math.floor(maxAgeSeconds))}; HttpOnly; SameSite=${sameSite === 'strict' ? 'Strict' : 'Lax'}`;
  if (settings.secure) line += '; Secure';
  if (settings.domain !== '') line += `; Domain=${settings.domain}`;
  return line;
}

/**
 * The state cookies' name stem: the session cookie's name, with `__Host-` made `__Secure-` (a `__Host-`
 * cookie must have Path=/, and state cookies live under the prefix only).
 */
function stateStem(settings: CookieSettings): string {
  const base = settings.name.startsWith('__Host-') ? `__Secure-${settings.name.slice('__Host-'.length)}` : settings.name;
  return `${base}-s-`;
}

/** The state cookie names: `<stem><first 16 characters of the state>`. */
function stateCookieName(settings: CookieSettings, state: string): string {
  return `${stateStem(settings)}${state.slice(0, 16)}`;
}

function isStateCookie(settings: CookieSettings, name: string): boolean {
  return name.startsWith(stateStem(settings));
}

/** The path of the state cookies: the sign-in routes only (start sees them to drop the oldest, callback to finish). */
function statePath(settings: CookieSettings): string {
  return `${settings.prefix}/`;
}

/** Whether a cookie is one of the sidecar's own (session, its chunks, state cookies): never forwarded. */
export function isOwnCookie(settings: CookieSettings, name: string): boolean {
  return isCookieOf(settings.name, name) || isStateCookie(settings, name);
}

/** What a session store does; the cookie store keeps the session in the browser, the redis store (§8) a key. */
export interface SessionStore {
  /** The request's session; `invalid` when a session cookie came but cannot be used (to be cleared). */
  load(cookies: RequestCookies, now: number): Promise<SessionData | 'invalid' | undefined>;
  /** Set-Cookie lines that store `session`, clearing the chunks of a previous one the request still holds. */
  save(session: SessionData, cookies: RequestCookies, now: number): Promise<string[]>;
  /** Set-Cookie lines that clear the request's session cookies. */
  clear(cookies: RequestCookies): string[];
}

/** Session payload claim names in the JWE (short: the cookie travels with every request). */
interface SealedSession {
  v: 1;
  id: string;
  p: string;
  iss: string;
  sub: string;
  c: Claims;
  at?: string;
  ate?: number;
  rt?: string;
  idt?: string;
  psid?: string;
  st: number;
}

export function toSealed(s: SessionData): SealedSession {
  return {
    v: 1,
    id: s.id,
    p: s.provider,
    iss: s.issuer,
    sub: s.subject,
    c: s.claims,
    st: s.startedAtMs,
    ...(s.accessToken === undefined ? {} : { at: s.accessToken }),
    ...(s.accessTokenExpiresAt === undefined ? {} : { ate: s.accessTokenExpiresAt }),
    ...(s.refreshToken === undefined ? {} : { rt: s.refreshToken }),
    ...(s.idToken === undefined ? {} : { idt: s.idToken }),
    ...(s.providerSid === undefined ? {} : { psid: s.providerSid }),
  };
}

export function fromSealed(p: Record<string, unknown>): SessionData | undefined {
  const str = (v: unknown): string | undefined => (typeof v === 'string' && v !== '' ? v : undefined);
  const num = (v: unknown): number | undefined => (typeof v === 'number' && Number.isFinite(v) ? v : undefined);
  const id = str(p['id']);
  const provider = str(p['p']);
  const issuer = str(p['iss']);
  const subject = str(p['sub']);
  const startedAtMs = num(p['st']);
  const expiresAt = num(p['exp']);
  const claims = p['c'];
  if (p['v'] !== 1 || id === undefined || provider === undefined || issuer === undefined || subject === undefined || startedAtMs === undefined || expiresAt === undefined) return undefined;
  if (typeof claims !== 'object' || claims === null || Array.isArray(claims)) return undefined;
  return {
    id,
    provider,
    issuer,
    subject,
    claims: claims as Claims,
    accessToken: str(p['at']),
    accessTokenExpiresAt: num(p['ate']),
    refreshToken: str(p['rt']),
    idToken: str(p['idt']),
    providerSid: str(p['psid']),
    startedAtMs,
    expiresAt,
  };
}

/**
 * The cookie store. Opened sessions are remembered by their sealed value (bounded by bytes), so a browser's
 * requests decrypt its cookie once; the remembered copy is dropped when it expires.
 */
export function createCookieSessionStore(settings: CookieSettings, codec: CookieCodec, copyClaims: (value: unknown) => Claims): SessionStore {
  const opened = new LRUCache<string, SessionData>({ maxSize: 4 * 1024 * 1024, sizeCalculation: (_v, key) => key.length + 512 });

  function chunkNames(cookies: RequestCookies): string[] {
    return [...cookies.keys()].filter((n) => isCookieOf(settings.name, n));
  }

  return {
    async load(cookies, now) {
      const names = chunkNames(cookies);
      if (names.length === 0) return undefined;
      // A session cookie sent twice (one tossed in by a sibling subdomain) is no session.
      const joined = new Map<string, string>();
      for (const n of names) {
        const v = cookies.get(n);
        if (v === undefined) return 'invalid';
        joined.set(n, v);
      }
      // The whole cookie beside chunks (one of them tossed in), or chunks past those joined: no session.
      if (joined.has(settings.name) && names.length > 1) return 'invalid';
      const sealed = joinFromCookies(settings.name, joined);
      if (sealed === undefined) return 'invalid';
      if (!joined.has(settings.name) && names.some((n) => Number(n.slice(settings.name.length + 1)) >= names.length)) return 'invalid';
      const known = opened.get(sealed);
      if (known !== undefined) return known.expiresAt > now ? known : 'invalid';
      const payload = await codec.open(sealed, new Date(now * 1000));
      const session = payload === undefined ? undefined : fromSealed({ ...payload, c: copyClaims(payload['c']) });
      if (session === undefined) return 'invalid';
      opened.set(sealed, session);
      return session;
    },
    async save(session, cookies, now) {
      let sealed = await codec.seal(toSealed(session) as unknown as Record<string, unknown>, session.expiresAt);
      if (sealed.length > MAX_CHUNK_LENGTH * MAX_CHUNKS && session.idToken !== undefined) {
        // Too large with the raw ID token beside its claims: it goes (sign-out then names the client instead
        // of hinting the ID token).
        sealed = await codec.seal(toSealed({ ...session, idToken: undefined }) as unknown as Record<string, unknown>, session.expiresAt);
      }
      const parts = splitIntoCookies(settings.name, sealed);
      const maxAge = session.expiresAt - now;
      const lines = parts.map(([name, value]) => setCookie(settings, name, value, maxAge));
      const written = new Set(parts.map(([name]) => name));
      for (const name of chunkNames(cookies)) if (!written.has(name)) lines.push(setCookie(settings, name, '', 0));
      opened.set(sealed, session);
      return lines;
    },
    clear(cookies) {
      return chunkNames(cookies).map((name) => setCookie(settings, name, '', 0));
    },
  };
}

/** The state cookies of pending sign-ins. */
export interface StateCookies {
  /** Set-Cookie lines for a new pending sign-in, clearing the oldest when there would be more than five. */
  begin(pending: PendingSignIn, cookies: RequestCookies, now: number): Promise<string[]>;
  /** The pending sign-in of `state`, or why there is none; the Set-Cookie that clears its cookie. */
  take(state: string, cookies: RequestCookies, now: number): Promise<{ pending: PendingSignIn | undefined; clear: string[] }>;
}

export function createStateCookies(settings: CookieSettings, codec: CookieCodec): StateCookies {
  async function open(value: string | undefined, now: number): Promise<PendingSignIn | undefined> {
    if (value === undefined) return undefined;
    const p = await codec.open(value, new Date(now * 1000));
    if (p === undefined) return undefined;
    const { state, nonce, verifier, provider, returnTo, createdAt, traceId, spanId } = p as Record<string, unknown>;
    if (typeof state !== 'string' || typeof nonce !== 'string' || typeof verifier !== 'string' || typeof provider !== 'string' || typeof returnTo !== 'string' || typeof createdAt !== 'number') {
      return undefined;
    }
    const linked = typeof traceId === 'string' && typeof spanId === 'string' ? { traceId, spanId } : {};
    return { state, nonce, verifier, provider, returnTo, createdAt, ...linked };
  }

  return {
    async begin(pending, cookies, now) {
      const lines: string[] = [];
      const existing: Array<{ name: string; createdAt: number }> = [];
      for (const [name, value] of cookies) {
        if (!isStateCookie(settings, name)) continue;
        const p = await open(value, now);
        // An expired or broken state cookie is cleared at once.
        if (p === undefined) lines.push(setCookie(settings, name, '', 0, 'lax', statePath(settings)));
        else existing.push({ name, createdAt: p.createdAt });
      }
      existing.sort((a, b) => a.createdAt - b.createdAt);
      while (existing.length >= MAX_STATE_COOKIES) lines.push(setCookie(settings, (existing.shift() as { name: string }).name, '', 0, 'lax', statePath(settings)));
      const sealed = await codec.seal(pending as unknown as Record<string, unknown>, now + STATE_COOKIE_SECONDS);
      // Lax whatever the session's SameSite: the provider sends the browser back with a cross-site navigation.
      lines.push(setCookie(settings, stateCookieName(settings, pending.state), sealed, STATE_COOKIE_SECONDS, 'lax', statePath(settings)));
      return lines;
    },
    async take(state, cookies, now) {
      const name = stateCookieName(settings, state);
      const pending = await open(cookies.get(name), now);
      const clear = cookies.has(name) ? [setCookie(settings, name, '', 0, 'lax', statePath(settings))] : [];
      // The whole state must match, not only the part in the cookie's name.
      return { pending: pending?.state === state ? pending : undefined, clear };
    },
  };
}

/** 128 random bits, base64url. */
export function randomId(): string {
  return randomBytes(16).toString('base64url');
}
