/**
 * The decision pipeline of DESIGN.md §1, the same for every front door and for the CLI:
 * wire request -> canonical AccessRequest -> credentials -> authentication -> Identity -> policy -> Decision.
 * Every path through it ends in a Decision; anything unexpected fails closed (deny), never allow, never a 500.
 */
import type { AccessRequest, HeaderMap, WireRequest } from './access-request.js';
import { canonicalizeTarget, type CanonicalTarget, type PathOptions } from './canonical-path.js';
import { outcomeOf, type Decision } from './decision.js';
import { AuthzSidecarError, REASONS, type ReasonCode, type ReasonSpec } from './errors.js';
import type { Identity } from './identity.js';
import type { IdentityHeaders } from './identity-headers.js';
import type { Authenticator, Authorizer, CredentialExtractor, ForwardedHeaders, IdentityMapper } from './stages.js';

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
}

export interface Readiness {
  readonly ready: boolean;
  readonly missing: readonly string[];
}

export interface DecisionEngine {
  decide(wire: WireRequest): Promise<Decision>;
  /** The canonical path rules with this engine's options; undefined when the target must be rejected. */
  canonicalize(method: string, target: string): CanonicalTarget | undefined;
  /** Doors use this to strip spoofed identity headers from what they forward, on every route. */
  isClientIdentityHeader(name: string): boolean;
  /** Every identity and override header name the sidecar owns (see IdentityHeaders.names). */
  readonly identityHeaderNames: readonly string[];
  /** Removes the credentials (unless forwardToken) from the headers of an allowed request about to be forwarded. */
  scrubHeadersForUpstream(headers: ForwardedHeaders): void;
  /** Header names that carry tokens (for doors that list headers to remove, like ext_authz). */
  readonly tokenHeaders: readonly string[];
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
  const { credentials, authenticators, identity: identityMapper, authorizer, identityHeaders } = options;

  function deny(
    reason: ReasonCode,
    detail: string,
    requestId: string,
    request: AccessRequest | undefined,
    identity?: Identity,
    policy?: readonly string[],
    policyRequest?: readonly string[],
  ): Decision {
    const spec: ReasonSpec = REASONS[reason];
    const responseHeaders: Record<string, string> = {};
    if (spec.status === 401 || spec.bearerError !== undefined) {
      // RFC 6750 §3: a bare challenge when no credentials came, error and description when they were bad.
      responseHeaders['www-authenticate'] =
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
      responseHeaders,
      upstreamHeaders: {},
      upstreamQuery: undefined,
      requestId,
    };
  }

  function withoutIdentityHeaders(headers: HeaderMap): HeaderMap {
    const out: Record<string, readonly string[]> = Object.create(null) as Record<string, readonly string[]>;
    for (const name of Object.keys(headers)) {
      const values = headers[name];
      if (values !== undefined && !identityHeaders.isClientIdentityHeader(name)) out[name] = values;
    }
    return out;
  }

  type Mapped = { ok: true; identity: Identity } | { ok: false; reason: ReasonCode; detail: string };
  // Authenticators hand out the same claims object for every request with a cached token: the identity
  // mapped from it (and its headers) is remembered with it, and goes when the token leaves the cache.
  const mapped = new WeakMap<object, { readonly issuer: string; readonly result: Mapped }>();
  const rendered = new WeakMap<Identity, Record<string, string> | undefined>();

  async function authenticate(token: string): Promise<Mapped> {
    for (const authenticator of authenticators) {
      const result = await authenticator.authenticate(token);
      if (result.kind === 'notMine') continue;
      if (result.kind === 'failed') return { ok: false, reason: result.reason, detail: result.detail };
      const known = mapped.get(result.claims);
      if (known !== undefined && known.issuer === result.issuer) return known.result;
      const fresh = identityMapper.fromClaims(result.claims, result.issuer);
      mapped.set(result.claims, { issuer: result.issuer, result: fresh });
      return fresh;
    }
    return { ok: false, reason: 'TOKEN_ISSUER', detail: 'the token is not a JWT of a trusted issuer' };
  }

  async function decide(wire: WireRequest): Promise<Decision> {
    const { requestId } = wire;
    // RFC 9112 §3.2: a request with more than one Host header is invalid (which host was authorized?).
    if ((wire.headers['host']?.length ?? 0) > 1) return deny('BAD_REQUEST', 'the request has more than one Host header', requestId, undefined);
    let request: AccessRequest;
    try {
      // Doors that only answer a check cannot make the application see the canonical path: they refuse
      // paths that would need normalizing rather than authorize a form the application never receives.
      const strictSegments = wire.frontDoor !== 'proxy' && wire.frontDoor !== 'cli';
      const target = wire.canonical ?? canonicalizeTarget(wire.method, wire.target, strictSegments ? strictPaths : options.paths);
      request = {
        frontDoor: wire.frontDoor,
        method: wire.method,
        path: target.path,
        query: target.query,
        host: (target.authority ?? wire.host).toLowerCase(),
        headers: withoutIdentityHeaders(wire.headers),
        peer: wire.peer,
        requestId,
      };
    } catch (err) {
      if (err instanceof AuthzSidecarError) return deny(err.code, err.detail, requestId, undefined);
      throw err;
    }

    const credential = credentials.extract(request.headers, request.query);
    if (credential.kind === 'error') return deny(credential.reason, credential.detail, requestId, request);

    let identity: Identity;
    if (credential.kind === 'none') {
      identity = identityMapper.anonymous();
    } else {
      const authn = await authenticate(credential.token);
      // An invalid token is never downgraded to anonymous (DESIGN.md §3).
      if (!authn.ok) return deny(authn.reason, authn.detail, requestId, request);
      identity = authn.identity;
    }

    let allowed: boolean;
    let policy: readonly string[] | undefined;
    let policyRequest: readonly string[];
    try {
      ({ allowed, policy, request: policyRequest } = authorizer.authorize(request, identity));
    } catch {
      // A matcher that throws on this input is doubt about the policy: deny.
      return deny('POLICY_ERROR', 'the policy could not be evaluated for this request', requestId, request, identity);
    }
    let dryRunDenied: ReasonCode | undefined;
    if (!allowed && options.mode === 'dryRun') {
      dryRunDenied = identity.anonymous ? 'CREDENTIALS_MISSING' : 'POLICY_DENIED';
    } else if (!allowed) {
      return identity.anonymous
        ? deny('CREDENTIALS_MISSING', 'this resource requires authentication', requestId, request, identity, policy, policyRequest)
        : deny('POLICY_DENIED', 'the policy does not allow this request', requestId, request, identity, policy, policyRequest);
    }

    let upstreamHeaders = rendered.get(identity);
    if (upstreamHeaders === undefined && !rendered.has(identity)) {
      upstreamHeaders = identityHeaders.render(identity);
      if (upstreamHeaders !== undefined) Object.freeze(upstreamHeaders);
      rendered.set(identity, upstreamHeaders);
    }
    if (upstreamHeaders === undefined) {
      return deny('IDENTITY_UNRENDERABLE', 'the identity cannot be rendered as headers', requestId, request, identity);
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
      responseHeaders: {},
      upstreamHeaders,
      upstreamQuery: options.forwardToken ? request.query : credentials.scrubQuery(request.query),
      dryRunDenied,
      requestId,
    };
  }


  return {
    decide,
    canonicalize(method: string, target: string): CanonicalTarget | undefined {
      try {
        return canonicalizeTarget(method, target, options.paths);
      } catch (err) {
        if (err instanceof AuthzSidecarError) return undefined;
        throw err;
      }
    },
    isClientIdentityHeader: (name) => identityHeaders.isClientIdentityHeader(name),
    identityHeaderNames: identityHeaders.names,
    scrubHeadersForUpstream: (headers) => {
      if (!options.forwardToken) credentials.scrubHeaders(headers);
    },
    tokenHeaders: credentials.tokenHeaders,
    readiness(): Readiness {
      const missing = [...authenticators.flatMap((a) => a.missing()), ...authorizer.missing()];
      return { ready: missing.length === 0, missing };
    },
    close(): void {
      for (const a of authenticators) a.close();
    },
  };
}
