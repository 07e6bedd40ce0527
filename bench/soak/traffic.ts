/**
 * What the soak sends: tokens signed with the IdP's published keys (pools per role set, a new one per request
 * for cache churn, expired, wrong-audience, forged, withdrawn-key), opaque tokens, and the requests' targets
 * (routes, odd paths) and headers (spoofed identity headers).
 */
import { generateKeyPairSync, randomBytes, sign } from 'node:crypto';
import type { Credential } from './oracle.js';
import { AUDIENCE, type World } from './world.js';

/* ---- tokens --------------------------------------------------------------------------------------------- */

export interface Minted {
  readonly token: string;
  readonly kid: string;
  readonly subject: string;
  readonly roles: readonly string[];
}

const ROLE_SETS: ReadonlyArray<readonly string[]> = [['reader'], ['writer'], ['admin'], []];

/** A foreign RSA key: tokens under a kid the IdP never published (forged, or from another realm). */
const FOREIGN = generateKeyPairSync('rsa', { modulusLength: 2048 });
const b64 = (v: unknown): string => Buffer.from(JSON.stringify(v)).toString('base64url');
function forge(claims: Record<string, unknown>, kid: string): string {
  const head = `${b64({ alg: 'RS256', typ: 'at+jwt', kid })}.${b64(claims)}`;
  return `${head}.${sign('sha256', Buffer.from(head), FOREIGN.privateKey).toString('base64url')}`;
}

export class Tokens {
  signingKid: string;
  valid: Minted[] = [];
  expired: Minted[] = [];
  wrongAudience: Minted[] = [];
  /** tokens under keys the IdP withdrew (minted while they were published) */
  withdrawn: Minted[] = [];
  #serial = 0;

  constructor(readonly world: World) {
    this.signingKid = world.initialKid;
  }

  claims(subject: string, roles: readonly string[], overrides: Record<string, unknown> = {}): Record<string, unknown> {
    const now = Math.floor(Date.now() / 1000);
    return { iss: this.world.api.issuer, aud: AUDIENCE, sub: subject, roles, iat: now, exp: now + 3_600, jti: randomBytes(8).toString('hex'), ...overrides };
  }

  async mint(subject: string, roles: readonly string[], overrides: Record<string, unknown> = {}, kid = this.signingKid): Promise<Minted> {
    return { token: await this.world.api.signJwt(this.claims(subject, roles, overrides), kid), kid, subject, roles };
  }

  /** Pools for the current signing key: 5 subjects per role set, and a few expired and wrong-audience ones. */
  async refill(): Promise<void> {
    const valid: Minted[] = [];
    for (const roles of ROLE_SETS) for (let i = 0; i < 5; i++) valid.push(await this.mint(`user-${roles[0] ?? 'none'}-${i}`, roles));
    const now = Math.floor(Date.now() / 1000);
    const expired: Minted[] = [];
    const wrong: Minted[] = [];
    for (let i = 0; i < 4; i++) {
      expired.push(await this.mint(`expired-${i}`, ['admin'], { iat: now - 7_200, exp: now - 3_600 }));
      wrong.push(await this.mint(`other-${i}`, ['admin'], { aud: 'another-api' }));
    }
    this.valid = valid;
    this.expired = expired;
    this.wrongAudience = wrong;
  }

  churn(): Promise<Minted> {
    const roles = ROLE_SETS[this.#serial % ROLE_SETS.length] as readonly string[];
    return this.mint(`churn-${++this.#serial}`, roles);
  }

  forged(): Minted {
    const kid = `forged-${this.#serial++ % 64}`;
    return { token: forge(this.claims('forger', ['admin']), kid), kid, subject: 'forger', roles: ['admin'] };
  }
}

export interface OpaqueToken {
  readonly token: string;
  readonly subject: string;
  readonly roles: readonly string[];
  readonly expiresAt: number;
}

/* ---- what is sent --------------------------------------------------------------------------------------- */

export interface Target {
  readonly method: string;
  readonly raw: string;
  /** undefined: the sidecar must refuse the path (400) */
  readonly canonical: string | undefined;
  /** a path that needs normalizing: the check doors refuse it (400), only the proxy normalizes (docs/front-doors.md) */
  readonly needsNormalizing: boolean;
}

/** `canonical` null: the path must be refused. */
const t = (method: string, raw: string, canonical: string | null = raw.split('?')[0] ?? raw): Target => ({
  method,
  raw,
  canonical: canonical ?? undefined,
  needsNormalizing: /\/\.{1,2}(\/|$)|\/\//.test(raw.split('?')[0] ?? raw),
});
export const ROUTES: readonly Target[] = [
  t('GET', '/orders'),
  t('GET', '/orders/7'),
  t('GET', '/orders?page=2'),
  t('POST', '/orders'),
  t('DELETE', '/orders/7'),
  t('GET', '/reports/q3'),
  t('GET', '/public/info'),
  t('GET', '/admin/users'),
  t('POST', '/admin/users'),
];
export const ODD: readonly Target[] = [
  t('GET', '/orders/7/../../admin/users', '/admin/users'),
  t('GET', '//orders//7', '/orders/7'),
  t('GET', '/orders/%37', '/orders/7'),
  t('GET', '/public/./info', '/public/info'),
  t('GET', '/admin%2fusers', null),
  t('GET', '/orders;jsessionid=1', null),
  t('GET', '/orders/7%00', null),
  t('GET', '/orders/%zz', null),
  t('GET', '/public/..%2f..%2fadmin/users', null),
];
export const SESSION_ROUTES: readonly Target[] = [t('GET', '/orders'), t('GET', '/orders/7'), t('GET', '/reports/q3'), t('GET', '/admin/users')];
export const SPOOF = { 'x-auth-subject': 'root', 'x-auth-roles': 'admin', x_auth_subject: 'root' };

export interface Planned {
  readonly kind: string;
  readonly target: Target;
  readonly credential: Credential;
  readonly headers: Record<string, string>;
  /** carries identity headers of its own (x-auth-*) */
  readonly spoofed?: boolean;
  /** carries a bearer token */
  readonly bearer?: boolean;
}

export const pick = <T>(list: readonly T[]): T => list[Math.floor(Math.random() * list.length)] as T;

