/**
 * The soak's oracle: it knows what was true when each request was in flight (which policy version each replica
 * ran, which keys the IdP published and when each replica fetched them, which sessions lived, which parts
 * were down) and from that the answers a request may get. Everything is judged from the request's own
 * [sent, answered] interval, so a request that overlaps a change may get either side's answer, and nothing
 * else:
 *
 * - an allow is right only if the credential was valid and some policy version in force during the request
 *   allows it; an allow also carries the right identity (never a spoofed one) and, through the proxy, the
 *   canonical path;
 * - 503 is permitted only while a needed key, the introspection endpoint or the session store could not be
 *   had (the outage, plus until that replica could fetch again); 502/504 only on the proxy door while the app
 *   is down;
 * - a deny of a request that had to be allowed is a wrong denial; anything a client sees as a reset, a
 *   timeout or a 500 is a failure.
 */
import type { PolicyVersion } from './policy.js';

export type Door = 'proxy' | 'http' | 'grpc' | 'forward';
export const DOORS: readonly Door[] = ['proxy', 'http', 'grpc', 'forward'];

/** What a door answered, made comparable across doors (gRPC's denied_response status is its HTTP status). */
export type Answer =
  | {
      readonly kind: 'answer';
      readonly status: number;
      /** what the client (or Envoy, nginx, Traefik) would do: forward the request */
      readonly allow: boolean;
      /**
       * identity headers (any spelling of the `x-auth-` prefix, lower case) as the app received them (proxy) or
       * as the check's answer sets them
       */
      readonly identity?: Readonly<Record<string, string>>;
      /** check doors: header names the answer has removed upstream (lower case) */
      readonly removed?: readonly string[];
      /** proxy: what reached the app that must not: the sidecar's cookie, the token */
      readonly leaked?: readonly string[];
      /** proxy only: the path the app received */
      readonly upstreamPath?: string | undefined;
      /** gRPC: the status code does not go with the HTTP status (16 with 401, 7 with 403, 14 with 503, 3 with 400) */
      readonly codeMismatch?: boolean;
    }
  | { readonly kind: 'failure'; readonly failure: 'reset' | 'refused' | 'no answer' | 'other'; readonly detail: string };

export interface Window {
  readonly kind: 'idp' | 'introspection' | 'app' | 'redis';
  readonly start: number;
  end: number;
}

interface KeyRecord {
  readonly publishedAt: number;
  removedAt: number;
}

export interface Session {
  readonly cookie: string;
  readonly subject: string;
  readonly roles: readonly string[];
  readonly createdAt: number;
  /** when its end began: the sign-out request was sent, or the store was killed */
  endingAt: number;
  /** when its end was done: the sign-out answered, or the store was killed */
  endedAt: number;
}

/** What a request carried, as the oracle needs it. */
export type Credential =
  | { readonly kind: 'none' }
  | { readonly kind: 'jwt'; readonly kid: string; readonly subject: string; readonly roles: readonly string[]; readonly valid: boolean }
  | { readonly kind: 'opaque'; readonly subject: string; readonly roles: readonly string[]; readonly active: boolean }
  | { readonly kind: 'session'; readonly session: Session };

export interface Probe {
  readonly door: Door;
  readonly replica: string;
  readonly method: string;
  /** the canonical path, or undefined when the path must be refused (400) */
  readonly canonical: string | undefined;
  readonly credential: Credential;
  /** identity header names it carries of its own (lower case), to be overwritten or removed */
  readonly spoofed: readonly string[];
  /** carries a bearer token (which must not reach the app: forwardToken is off) */
  readonly bearer: boolean;
}

/** The identity headers the soak's config sets: headers.subject, issuer, roles, scopes. */
const IDENTITY_HEADERS = new Set(['x-auth-subject', 'x-auth-issuer', 'x-auth-roles', 'x-auth-scopes']);

export type Verdict =
  | 'right'
  | 'permitted'
  | 'wrong allow'
  | 'wrong identity'
  | 'wrong path'
  | 'wrong denial'
  | 'wrong status'
  | 'failure';

interface PolicyTransition {
  /** when the file was written (or the replica started) */
  readonly written: number;
  /** when the replica said it loaded it; Infinity until then */
  loaded: number;
  readonly version: PolicyVersion;
}

/** How long after a change the oracle still accepts the old behaviour: a fetch answered, a store reconnected. */
const SETTLE_MS = 1_000;
/** A reload the replica never reported is taken as done this long after the write. */
const RELOAD_DEADLINE_MS = 15_000;

export class Timeline {
  readonly windows: Window[] = [];
  readonly #keys = new Map<string, KeyRecord>();
  /** per replica: when its JWKS fetches arrived at the IdP */
  readonly #fetches = new Map<string, number[]>();
  readonly #policy = new Map<string, PolicyTransition[]>();

  open(kind: Window['kind'], at = Date.now()): Window {
    const w: Window = { kind, start: at, end: Infinity };
    this.windows.push(w);
    return w;
  }

  keyPublished(kid: string, at = Date.now()): void {
    this.#keys.set(kid, { publishedAt: at, removedAt: Infinity });
  }

  keyRemoved(kid: string, at = Date.now()): void {
    const k = this.#keys.get(kid);
    if (k !== undefined) k.removedAt = at;
  }

  jwksFetched(replica: string, at: number): void {
    const list = this.#fetches.get(replica) ?? [];
    list.push(at);
    this.#fetches.set(replica, list);
  }

  /** A replica started, or a policy file was written that this replica will load. */
  policyWritten(replica: string, version: PolicyVersion, at = Date.now(), loaded = Infinity): void {
    const list = this.#policy.get(replica) ?? [];
    list.push({ written: at, loaded, version });
    this.#policy.set(replica, list);
  }

  /** The replica logged that it loaded the newest good policy. */
  policyLoaded(replica: string, at = Date.now()): void {
    const last = this.#policy.get(replica)?.at(-1);
    if (last !== undefined && last.loaded === Infinity) last.loaded = at;
  }

  /** Good writes a replica never reported loading within the deadline (a missed reload). */
  missedReloads(now = Date.now()): number {
    let n = 0;
    for (const list of this.#policy.values()) {
      for (const t of list) if (t.loaded === Infinity && now - t.written > RELOAD_DEADLINE_MS) n++;
    }
    return n;
  }

  /** Every policy version a replica may have run during [t0, t1]. */
  versions(replica: string, t0: number, t1: number): PolicyVersion[] {
    const list = this.#policy.get(replica) ?? [];
    const out = new Set<PolicyVersion>();
    for (let i = 0; i < list.length; i++) {
      const t = list[i] as PolicyTransition;
      const next = list[i + 1];
      // In force from (at the earliest) its write until (at the latest) the next one was loaded.
      const until = next === undefined ? Infinity : Math.min(next.loaded, next.written + RELOAD_DEADLINE_MS);
      if (t.written <= t1 && until >= t0) out.add(t.version);
    }
    return [...out];
  }

  #overlaps(kind: Window['kind'] | readonly Window['kind'][], t0: number, t1: number, settleMs = SETTLE_MS): Window[] {
    const kinds = typeof kind === 'string' ? [kind] : kind;
    return this.windows.filter((w) => kinds.includes(w.kind) && w.start <= t1 && w.end + settleMs >= t0);
  }

  /** Fetch arrivals of `replica` in [from, to). */
  #fetchedBetween(replica: string, from: number, to: number): boolean {
    return (this.#fetches.get(replica) ?? []).some((a) => a >= from && a < to);
  }

  /**
   * May the replica still have held the key `kid` during [t0, t1]? Until it fetched a key set without it: a
   * fetch arriving after the removal, answered before the request began.
   */
  #mayHoldKey(replica: string, kid: string, t0: number): boolean {
    const k = this.#keys.get(kid);
    if (k === undefined) return false;
    if (k.removedAt === Infinity) return true;
    return !this.#fetchedBetween(replica, k.removedAt, t0 - SETTLE_MS);
  }

  /**
   * May the replica have been unable to get the key `kid` during [t0, t1]? While the IdP was down since it
   * was published, and until the replica's first fetch after that outage.
   */
  #keyMayBeUnavailable(replica: string, kid: string, t0: number, t1: number): boolean {
    const k = this.#keys.get(kid);
    const published = k?.publishedAt ?? -Infinity;
    const removed = k?.removedAt ?? Infinity;
    // A key the replica certainly holds (fetched since it was published, not since it was removed) verifies
    // without the IdP: never a 503. A kid it lacks, new or withdrawn, it cannot tell apart while the IdP is
    // down: 503 until its first fetch after the outage.
    const holds = published > -Infinity && this.#fetchedBetween(replica, published, t0 - SETTLE_MS) && !(removed < Infinity && this.#fetchedBetween(replica, removed, t1));
    if (holds) return false;
    return this.windows.some((w) => w.kind === 'idp' && w.start <= t1 && w.end >= published && !this.#fetchedBetween(replica, Math.max(w.end, published), t0 - SETTLE_MS));
  }

  /**
   * Removals of a key that some replica did not follow with a fetch within `withinMs` (unknown kids keep
   * arriving in the load, so each replica refetches at least once per cooldown, or backoff during an
   * outage): a sidecar that stopped refetching would keep a withdrawn key for ever.
   */
  lateFetches(replicas: readonly string[], withinMs: number, now = Date.now()): string[] {
    const out: string[] = [];
    for (const [kid, k] of this.#keys) {
      if (k.removedAt === Infinity || now - k.removedAt < withinMs) continue;
      for (const r of replicas) {
        if (!this.#fetchedBetween(r, k.removedAt, k.removedAt + withinMs)) out.push(`replica ${r} fetched no key set within ${withinMs / 1000} s after key ${kid.slice(0, 8)} was removed`);
      }
    }
    return out;
  }

  /** The answers `probe`, sent at t0 and answered at t1, may get. */
  expect(
    probe: Probe,
    t0: number,
    t1: number,
  ): { allow: boolean; denials: Set<number>; permitted: Set<number>; subject?: string; roles?: readonly string[]; strictWithdrawn: boolean } {
    const denials = new Set<number>();
    const permitted = new Set<number>();
    // Forward-auth cannot take a client's identity headers off the request its proxy forwards: it refuses them.
    if (probe.canonical === undefined || (probe.door === 'forward' && probe.spoofed.length > 0)) {
      denials.add(400);
      return { allow: false, denials, permitted, strictWithdrawn: false };
    }
    const path = probe.canonical;
    const versions = this.versions(probe.replica, t0, t1);
    const policy = (subject: string | undefined, roles: readonly string[]): { allow: boolean; deny: boolean } => {
      const answers = versions.map((v) => v.allows(subject, roles, probe.method, path));
      return { allow: answers.includes(true), deny: answers.includes(false) };
    };
    const c = probe.credential;
    let allow = false;
    let subject: string | undefined;
    let roles: readonly string[] | undefined;
    let strictWithdrawn = false;
    const decideFor = (s: string | undefined, r: readonly string[], denyStatus: number): void => {
      const p = policy(s, r);
      allow = p.allow;
      if (p.deny) denials.add(denyStatus);
      subject = s;
      roles = r;
    };
    switch (c.kind) {
      case 'none':
        decideFor(undefined, [], 401);
        break;
      case 'jwt': {
        const held = this.#mayHoldKey(probe.replica, c.kid, t0);
        const published = held && (this.#keys.get(c.kid)?.removedAt ?? -Infinity) === Infinity;
        // A withdrawn key the replica has certainly dropped: only 401 is right.
        strictWithdrawn = c.valid && !held && this.#keys.has(c.kid);
        if (c.valid && held) decideFor(c.subject, c.roles, 403);
        if (!c.valid || !published) {
          // an invalid token, or a withdrawn key the replica may already have dropped
          denials.add(401);
        }
        if (this.#keyMayBeUnavailable(probe.replica, c.kid, t0, t1)) {
          permitted.add(503);
        }
        break;
      }
      case 'opaque':
        if (c.active) decideFor(c.subject, c.roles, 403);
        else denials.add(401);
        if (this.#overlaps(['idp', 'introspection'], t0, t1).length > 0) {
          permitted.add(503);
        }
        break;
      case 'session': {
        const s = c.session;
        const ended = s.endedAt < t0;
        const maybeEnded = s.endingAt <= t1;
        if (!ended) decideFor(s.subject, s.roles, 403);
        if (maybeEnded) {
          denials.add(401);
        }
        if (this.#overlaps('redis', t0, t1, 5_000).length > 0) {
          permitted.add(503);
        }
        break;
      }
    }
    if (probe.door === 'proxy' && allow && this.#overlaps('app', t0, t1).length > 0) {
      permitted.add(502);
      permitted.add(504);
    }
    return { allow, denials, permitted, ...(subject === undefined ? {} : { subject }), ...(roles === undefined ? {} : { roles }), strictWithdrawn };
  }

  /** Was any fault window open during [t0, t1]? */
  inFault(t0: number, t1: number): boolean {
    return this.windows.some((w) => w.start <= t1 && w.end >= t0);
  }

  judge(probe: Probe, answer: Answer, t0: number, t1: number): Verdict {
    if (answer.kind === 'failure') return 'failure';
    const e = this.expect(probe, t0, t1);
    // The proxy answers 502/504 only after it decided to forward: an allow.
    const forwarded = answer.allow || (probe.door === 'proxy' && (answer.status === 502 || answer.status === 504));
    if (forwarded) {
      if (!e.allow) return 'wrong allow';
      if (!answer.allow) return e.permitted.has(answer.status) ? 'permitted' : 'failure';
      if (this.#wrongIdentity(probe, answer, e)) return 'wrong identity';
      if (probe.door === 'proxy' && answer.upstreamPath !== probe.canonical) return 'wrong path';
      return 'right';
    }
    if (answer.codeMismatch === true) return 'wrong status';
    if (answer.status === 500) return 'failure';
    if (e.denials.has(answer.status)) return 'right';
    if (e.permitted.has(answer.status)) return 'permitted';
    if (e.allow && (answer.status === 401 || answer.status === 403 || answer.status === 400)) return 'wrong denial';
    return 'wrong status';
  }

  /**
   * The identity an allow carries: exactly the expected subject and roles (nothing for an anonymous allow),
   * no header of the prefix that the sidecar does not set, nothing that leaked to the app; and on the check
   * doors, every identity header the client sent (and its token) overwritten or removed upstream.
   */
  #wrongIdentity(probe: Probe, answer: Extract<Answer, { kind: 'answer' }>, e: { subject?: string; roles?: readonly string[] }): boolean {
    const identity = answer.identity ?? {};
    if ((answer.leaked ?? []).length > 0) return true;
    const names = Object.keys(identity);
    if (e.subject === undefined) {
      if (names.length > 0) return true;
    } else {
      if (identity['x-auth-subject'] !== e.subject) return true;
      if ((identity['x-auth-roles'] ?? '') !== (e.roles ?? []).join(',')) return true;
      if (names.some((n) => !IDENTITY_HEADERS.has(n))) return true;
    }
    if (probe.door === 'http' || probe.door === 'grpc') {
      const removed = new Set(answer.removed ?? []);
      if (probe.spoofed.some((n) => identity[n] === undefined && !removed.has(n))) return true;
      if (probe.bearer && !removed.has('authorization')) return true;
    }
    return false;
  }
}
