/**
 * The decision pipeline of DESIGN.md §1, the same for every front door and for the CLI:
 * wire request -> canonical AccessRequest -> credentials -> authentication -> Identity -> policy -> Decision.
 * Every path through it ends in a Decision; anything unexpected fails closed (deny), never allow, never a 500.
 */
import type { AccessRequest, HeaderMap, WireRequest } from './access-request.js';
import { canonicalizeTarget, type PathOptions } from './canonical-path.js';
import { NO_UPSTREAM_CHANGES, outcomeOf, problemAnswer, type AnswerHeaders, type ClientAnswer, type Decision, type UpstreamChanges } from './decision.js';
import { AuthzSidecarError, REASONS, type ReasonCode, type ReasonSpec } from './errors.js';
import type { Claims, Identity } from './identity.js';
import type { IdentityHeaders } from './identity-headers.js';
import type { Authenticator, Authorizer, BrowserSessions, CredentialExtractor, ForwardedHeaders, IdentityMapper, SessionResult, StageTracer } from './stages.js';

/** The answer of an allowed request: nothing for the client beyond the application's own answer. */
const ALLOW_ANSWER: ClientAnswer = Object.freeze({ status: 200, headers: Object.freeze({}), body: '' });

export const DEFAULT_REALM = 'authz-sidecar';

export interface DecisionEngineOptions {
  readonly paths: PathOptions;
  readonly credentials: CredentialExtractor;
  /** Tried in order; the first that does not answer "not mine" decides. */
  readonly authenticators: readonly Authenticator[];
  readonly identity: IdentityMapper;
  readonly authorizer: Authorizer;
  readonly identityHeaders: IdentityHeaders;
  /** Keep the token header on the forwarded request (default false: it is removed). */
  readonly forwardToken: boolean;
  /** The realm of RFC 6750 challenges. Default "authz-sidecar". */
  readonly realm?: string;
  /**
   * `dryRun`: requests the policy denies are let through (and marked, logged, counted as denials);
   * authentication failures, bad requests and outages are still enforced. Default `enforce`.
   */
  readonly mode?: 'enforce' | 'dryRun';
  /** Browser sign-in (DESIGN.md §7): its routes, and sessions as the credential of requests without a token. */
  readonly sessions?: BrowserSessions | undefined;
  /** Stage spans when tracing is on (DESIGN.md §9). */
  readonly stages?: StageTracer | undefined;
}

export interface Readiness {
  readonly ready: boolean;
  readonly missing: readonly string[];
  /** The browser session store (with `signIn`): reported, never a reason to be unready. */
  readonly sessionStore?: { readonly store: 'cookie' | 'redis'; readonly up: boolean } | undefined;
}

/** The engine's whole public surface: doors call decide() and render the Decision. */
export interface DecisionEngine {
  decide(wire: WireRequest): Promise<Decision>;
  readiness(): Readiness;
  close(): void;
}

/** RFC 7230 quoted-string content: no quote, backslash or control characters. */
function quoted(value: string): string {
  // eslint-disable-next-line no-control-regex -- removing control characters is the point
  return value.replace(/["\\\x00-\x1f\x7f-\uffff]/g, '');
}

export function createDecisionEngine(options: DecisionEngineOptions): DecisionEngine {
  const realm = quoted(options.realm ?? DEFAULT_REALM);
  const strictPaths: PathOptions = { ...options.paths, strictSegments: true };
  const { credentials, authenticators, identity: identityMapper, authorizer, identityHeaders, sessions, stages } = options;

  function deny(
    reason: ReasonCode,
    detail: string,
    requestId: string,
    request: AccessRequest | undefined,
    identity?: Identity,
    policy?: readonly string[],
    policyRequest?: readonly string[],
    headers?: AnswerHeaders,
  ): Decision {
    const spec: ReasonSpec = REASONS[reason];
    const challenge: Record<string, string | readonly string[]> = { ...headers };
    if (spec.status === 401 || spec.bearerError !== undefined) {
      // RFC 6750 §3: a bare challenge when no credentials came, error and description when they were bad.
      challenge['www-authenticate'] =
        spec.bearerError === undefined
          ? `Bearer realm="${realm}"`
          : `Bearer realm="${realm}", error="${spec.bearerError}", error_description="${quoted(detail)}"`;
    }
    return {
      outcome: outcomeOf(reason),
      status: spec.status,
      reason,
      detail,
      request,
      identity,
      policy,
      policyRequest,
      upstream: NO_UPSTREAM_CHANGES,
      answer: problemAnswer(reason, detail, requestId, challenge),
      requestId,
    };
  }

  /**
   * The headers with every client identity and override header taken out: the only place they are
   * stripped. The names seen go into the decision's removal list, so every door drops them upstream.
   */
  function splitIdentityHeaders(headers: HeaderMap): { clean: HeaderMap; spoofed: string[] } {
    const clean: Record<string, readonly string[]> = Object.create(null) as Record<string, readonly string[]>;
    const spoofed: string[] = [];
    for (const name of Object.keys(headers)) {
      const values = headers[name];
      if (values === undefined) continue;
      if (identityHeaders.isClientIdentityHeader(name)) spoofed.push(name);
      else clean[name] = values;
    }
    return { clean, spoofed };
  }

  /** Identity headers of an identity, with the owned header names it does not set (to remove upstream). */
  interface Rendered {
    readonly set: Readonly<Record<string, string>>;
    readonly remove: readonly string[];
    /** `remove` plus the extra names of a request (token headers present, spoofed headers seen), by those names. */
    readonly removeWith: Map<string, readonly string[]>;
  }

  function render(identity: Identity): Rendered | undefined {
    const set = identityHeaders.render(identity);
    if (set === undefined) return undefined;
    return { set: Object.freeze(set), remove: Object.freeze(identityHeaders.names.filter((n) => !(n in set))), removeWith: new Map() };
  }

  /** The removal list with a request's extra names; the usual combinations are built once per identity. */
  function removalList(rendered: Rendered, extra: readonly string[]): readonly string[] {
    if (extra.length === 0) return rendered.remove;
    const key = extra.join(',');
    let list = rendered.removeWith.get(key);
    if (list === undefined) {
      list = Object.freeze([...rendered.remove, ...extra]);
      // Bounded: spoofed header names are the client's choice.
      if (rendered.removeWith.size < 16) rendered.removeWith.set(key, list);
    }
    return list;
  }

  /**
   * What the forwarded request must lose or gain besides the identity headers: client identity headers
   * seen, token headers and token cookies (unless forwardToken), token query parameters.
   */
  function upstreamChanges(request: AccessRequest, headers: HeaderMap, spoofed: readonly string[], rendered: Rendered, session: SessionResult | undefined): UpstreamChanges {
    let set = rendered.set;
    const extra: string[] = [];
    // Spoofed names not already removed (an owned name the identity does not set is in `remove` anyway).
    for (const name of spoofed) if (!(name in set) && !rendered.remove.includes(name)) extra.push(name);
    if (!options.forwardToken) {
      // Token headers go whole; the Cookie header loses only the token cookies.
      for (const name of credentials.tokenHeaders) if (headers[name] !== undefined) extra.push(name);
    }
    const cookie = headers['cookie'];
    if (cookie !== undefined && (!options.forwardToken || sessions !== undefined)) {
      const joined = cookie.join('; ');
      let after: string | undefined = joined;
      if (!options.forwardToken) {
        const scratch: ForwardedHeaders = { cookie: joined };
        credentials.scrubHeaders(scratch);
        after = typeof scratch['cookie'] === 'string' ? scratch['cookie'] : undefined;
      }
      // The sidecar's own cookies (session, chunks, pending sign-ins) never reach the application.
      if (after !== undefined && sessions !== undefined) after = sessions.scrubCookie(after);
      if (after === undefined) extra.push('cookie');
      else if (after !== joined) set = { ...set, cookie: after };
    }
    if (session?.kind === 'session' && options.forwardToken && session.accessToken !== undefined) {
      set = { ...set, authorization: `Bearer ${session.accessToken}` };
    }
    const query = options.forwardToken ? request.query : credentials.scrubQuery(request.query);
    return {
      set,
      remove: removalList(rendered, extra.filter((n) => !(n in set))),
      query,
      removeQuery: query === request.query ? [] : droppedNames(request.query, query),
    };
  }

  type Mapped = { ok: true; identity: Identity } | { ok: false; reason: ReasonCode; detail: string };
  // Authenticators hand out the same claims object for every request with a cached token: the identity
  // mapped from it (and its headers) is remembered with it, and goes when the token leaves the cache.
  const mapped = new WeakMap<object, { readonly issuer: string; readonly result: Mapped }>();
  const rendered = new WeakMap<Identity, Rendered | undefined>();

  function mapClaims(claims: Claims, issuer: string): Mapped {
    const known = mapped.get(claims);
    if (known !== undefined && known.issuer === issuer) return known.result;
    const fresh = identityMapper.fromClaims(claims, issuer);
    mapped.set(claims, { issuer, result: fresh });
    return fresh;
  }

  /** A sign-in route's answer as a decision: rendered by every door like a deny. */
  async function routeDecision(request: AccessRequest): Promise<Decision> {
    const { reason, detail, answer } = await (sessions as BrowserSessions).route(request);
    return {
      outcome: outcomeOf(reason),
      status: answer.status,
      reason,
      detail,
      request,
      identity: undefined,
      policy: undefined,
      policyRequest: undefined,
      upstream: NO_UPSTREAM_CHANGES,
      answer,
      requestId: request.requestId,
    };
  }

  async function authenticate(token: string): Promise<Mapped> {
    for (const authenticator of authenticators) {
      const result = await authenticator.authenticate(token);
      if (result.kind === 'notMine') continue;
      if (result.kind === 'failed') return { ok: false, reason: result.reason, detail: result.detail };
      return mapClaims(result.claims, result.issuer);
    }
    return { ok: false, reason: 'TOKEN_ISSUER', detail: 'the token is not a JWT of a trusted issuer' };
  }

  async function decide(wire: WireRequest): Promise<Decision> {
    const { requestId } = wire;
    // RFC 9112 §3.2: a request with more than one Host header is invalid (which host was authorized?).
    if ((wire.headers['host']?.length ?? 0) > 1) return deny('BAD_REQUEST', 'the request has more than one Host header', requestId, undefined);
    const { clean, spoofed } = splitIdentityHeaders(wire.headers);
    if (!wire.removesHeaders && spoofed.length > 0) {
      return deny('BAD_REQUEST', `the request carries ${spoofed[0] ?? ''}, a header only the sidecar may set`, requestId, undefined);
    }
    let request: AccessRequest;
    try {
      const target = canonicalizeTarget(wire.method, wire.target, wire.rewritesPath ? options.paths : strictPaths);
      request = {
        frontDoor: wire.frontDoor,
        method: wire.method,
        path: target.path,
        query: target.query,
        host: (target.authority ?? wire.host).toLowerCase(),
        headers: clean,
        peer: wire.peer,
        requestId,
        ...(wire.readBody === undefined ? {} : { readBody: wire.readBody }),
        ...(wire.trace === undefined ? {} : { trace: wire.trace }),
      };
    } catch (err) {
      if (err instanceof AuthzSidecarError) return deny(err.code, err.detail, requestId, undefined);
      throw err;
    }

    // The sidecar's own routes: answered whatever credentials the request carries.
    if (sessions?.isRoute(request.path) === true) {
      const routed = request;
      return stages !== undefined && wire.trace !== undefined ? stages.run('authz-sidecar.signin', wire.trace, () => routeDecision(routed)) : routeDecision(request);
    }

    const credential = credentials.extract(request.headers, request.query);
    if (credential.kind === 'error') return deny(credential.reason, credential.detail, requestId, request);

    let identity: Identity;
    // A bearer token wins; without one, the browser session (if any) is the credential.
    let session: SessionResult | undefined;
    if (credential.kind === 'none' && sessions !== undefined) {
      const live = sessions;
      session = stages !== undefined && wire.trace !== undefined ? await stages.run('authz-sidecar.session', wire.trace, () => live.resolve(request)) : await sessions.resolve(request);
      if (session.kind === 'failed') return deny(session.reason, session.detail, requestId, request, undefined, undefined, undefined, session.headers);
    }
    if (session?.kind === 'session') {
      const authn = mapClaims(session.claims, session.issuer);
      if (!authn.ok) return deny(authn.reason, authn.detail, requestId, request, undefined, undefined, undefined, session.headers);
      identity = authn.identity;
    } else if (credential.kind === 'none') {
      identity = identityMapper.anonymous();
    } else {
      const token = credential.token;
      const authn = stages !== undefined && wire.trace !== undefined ? await stages.run('authz-sidecar.authenticate', wire.trace, () => authenticate(token)) : await authenticate(token);
      // An invalid token is never downgraded to anonymous (DESIGN.md §3).
      if (!authn.ok) return deny(authn.reason, authn.detail, requestId, request);
      identity = authn.identity;
    }

    let allowed: boolean;
    let policy: readonly string[] | undefined;
    let policyRequest: readonly string[];
    try {
      const asked = identity;
      ({ allowed, policy, request: policyRequest } =
        stages !== undefined && wire.trace !== undefined ? stages.runSync('authz-sidecar.policy', wire.trace, () => authorizer.authorize(request, asked)) : authorizer.authorize(request, identity));
    } catch {
      // A matcher that throws on this input is doubt about the policy: deny.
      return deny('POLICY_ERROR', 'the policy could not be evaluated for this request', requestId, request, identity);
    }
    let dryRunDenied: ReasonCode | undefined;
    if (!allowed && options.mode === 'dryRun') {
      dryRunDenied = identity.anonymous ? 'CREDENTIALS_MISSING' : 'POLICY_DENIED';
    } else if (!allowed) {
      if (identity.anonymous) {
        const redirect = sessions?.signInRedirect(request, wire.redirects !== false);
        if (redirect !== undefined) return signInRedirect(redirect, session?.headers, request, identity, policy, policyRequest);
        return deny('CREDENTIALS_MISSING', 'this resource requires authentication', requestId, request, identity, policy, policyRequest, session?.headers);
      }
      return deny('POLICY_DENIED', 'the policy does not allow this request', requestId, request, identity, policy, policyRequest, session?.headers);
    }

    let headers = rendered.get(identity);
    if (headers === undefined && !rendered.has(identity)) {
      headers = render(identity);
      rendered.set(identity, headers);
    }
    if (headers === undefined) {
      return deny('IDENTITY_UNRENDERABLE', 'the identity cannot be rendered as headers', requestId, request, identity, undefined, undefined, session?.headers);
    }
    return {
      outcome: 'allow',
      status: 200,
      reason: 'ALLOWED',
      detail: 'allowed',
      request,
      identity,
      policy,
      policyRequest,
      upstream: upstreamChanges(request, wire.headers, spoofed, headers, session),
      answer: session === undefined || Object.keys(session.headers).length === 0 ? ALLOW_ANSWER : { status: 200, headers: session.headers, body: '' },
      dryRunDenied,
      requestId,
    };
  }

  /** The 302 to sign in, with the Set-Cookie that clears a session that failed. */
  function signInRedirect(
    redirect: ClientAnswer,
    clear: AnswerHeaders | undefined,
    request: AccessRequest,
    identity: Identity,
    policy: readonly string[] | undefined,
    policyRequest: readonly string[] | undefined,
  ): Decision {
    const answer = clear === undefined || Object.keys(clear).length === 0 ? redirect : { ...redirect, headers: mergeHeaders(redirect.headers, clear) };
    return {
      outcome: 'signIn',
      status: answer.status,
      reason: 'SIGNIN_REDIRECT',
      detail: 'a browser without a session is sent to sign in',
      request,
      identity,
      policy,
      policyRequest,
      upstream: NO_UPSTREAM_CHANGES,
      answer,
      requestId: request.requestId,
    };
  }

  return {
    decide,
    readiness(): Readiness {
      const missing = [...authenticators.flatMap((a) => a.missing()), ...authorizer.missing(), ...(sessions?.missing() ?? [])];
      return { ready: missing.length === 0, missing, ...(sessions === undefined ? {} : { sessionStore: sessions.status() }) };
    },
    close(): void {
      for (const a of authenticators) a.close();
      sessions?.close();
    },
  };
}

/** The names of the query parameters in `before` that are not in `after`. */
function droppedNames(before: string | undefined, after: string | undefined): string[] {
  const names = (query: string | undefined): string[] =>
    query === undefined || query === '' ? [] : query.split('&').map((pair) => (pair.includes('=') ? pair.slice(0, pair.indexOf('=')) : pair));
  const kept = new Set(names(after));
  return [...new Set(names(before))].filter((n) => !kept.has(n));
}

/** Two header sets in one; a header in both (Set-Cookie) keeps every value. */
export function mergeHeaders(a: AnswerHeaders, b: AnswerHeaders): AnswerHeaders {
  const out: Record<string, string | readonly string[]> = { ...a };
  for (const [name, value] of Object.entries(b)) {
    const existing = out[name];
    out[name] = existing === undefined ? value : [...(typeof existing === 'string' ? [existing] : existing), ...(typeof value === 'string' ? [value] : value)];
  }
  return out;
}
