/**
 * Prometheus metrics (DESIGN.md §4) with prom-client, on a registry of this sidecar's own (served by the
 * admin listener's /metrics). Latency histograms have buckets from 50 µs to 1 s: a decision takes tens of
 * microseconds, an upstream call milliseconds.
 */
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';

export const LATENCY_BUCKETS = [0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1];

export interface Metrics {
  readonly registry: Registry;
  readonly requests: Counter<'frontend' | 'decision' | 'dry_run'>;
  readonly decisionDuration: Histogram<'frontend'>;
  readonly upstreamDuration: Histogram<'status_class'>;
  readonly jwksFetches: Counter<'issuer' | 'result'>;
  readonly cacheHits: Counter<'cache'>;
  readonly cacheMisses: Counter<'cache'>;
  readonly policyReloads: Counter<'result'>;
  readonly signIns: Counter<'provider' | 'result'>;
  readonly sessionRefreshes: Counter<'provider' | 'result'>;
  readonly logouts: Counter<'kind'>;
  readonly spansDropped: Counter;
  readonly logLinesDropped: Counter;
  /** Reports authz_sidecar_session_store_up{store} from `status` at every scrape (with signIn only). */
  watchSessionStore(status: () => { readonly store: string; readonly up: boolean }): void;
  /** Sets authz_sidecar_policy_info{sha256} to 1 for the serving policy (and drops the old series). */
  setPolicy(sha256: string): void;
}

export function createMetrics(): Metrics {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry });
  const policyInfo = new Gauge({ name: 'authz_sidecar_policy_info', help: 'The policy being served (value 1), by SHA-256 of model and policy', labelNames: ['sha256'], registers: [registry] });
  return {
    registry,
    requests: new Counter({
      name: 'authz_sidecar_requests_total',
      help: 'Decisions by front door and outcome (allow | deny | unauthenticated | bad_request | unavailable | sign_in); dry_run="true" for denials let through by dry-run',
      labelNames: ['frontend', 'decision', 'dry_run'],
      registers: [registry],
    }),
    decisionDuration: new Histogram({
      name: 'authz_sidecar_decision_duration_seconds',
      help: 'Time to decide a request, from the wire request to the decision',
      labelNames: ['frontend'],
      buckets: LATENCY_BUCKETS,
      registers: [registry],
    }),
    upstreamDuration: new Histogram({
      name: 'authz_sidecar_upstream_duration_seconds',
      help: 'Time until the application answered a forwarded request (headers)',
      labelNames: ['status_class'],
      buckets: LATENCY_BUCKETS,
      registers: [registry],
    }),
    jwksFetches: new Counter({ name: 'authz_sidecar_jwks_fetches_total', help: 'JWKS fetches by issuer and result', labelNames: ['issuer', 'result'], registers: [registry] }),
    cacheHits: new Counter({ name: 'authz_sidecar_cache_hits_total', help: 'Cache hits (jwt | introspection | decision)', labelNames: ['cache'], registers: [registry] }),
    cacheMisses: new Counter({ name: 'authz_sidecar_cache_misses_total', help: 'Cache misses (jwt | introspection | decision)', labelNames: ['cache'], registers: [registry] }),
    policyReloads: new Counter({ name: 'authz_sidecar_policy_reloads_total', help: 'Policy and key file reloads by result (success | failure)', labelNames: ['result'], registers: [registry] }),
    signIns: new Counter({ name: 'authz_sidecar_signin_total', help: 'Browser sign-ins by provider and result (success | failure)', labelNames: ['provider', 'result'], registers: [registry] }),
    sessionRefreshes: new Counter({
      name: 'authz_sidecar_session_refresh_total',
      help: 'Session refreshes by provider and result (success | failure: provider unreachable | ended: refused, the session ends)',
      labelNames: ['provider', 'result'],
      registers: [registry],
    }),
    logouts: new Counter({ name: 'authz_sidecar_logout_total', help: 'Sessions ended by kind (user: sign-out | backchannel: the provider)', labelNames: ['kind'], registers: [registry] }),
    spansDropped: new Counter({ name: 'authz_sidecar_spans_dropped_total', help: 'Spans the OTLP exporter could not deliver (the collector down or refusing); requests are never affected', registers: [registry] }),
    logLinesDropped: new Counter({
      name: 'authz_sidecar_log_lines_dropped_total',
      help: 'Log lines dropped because the reader of stdout fell behind by more than the 4 MiB buffer (a slow log collector); requests are never affected',
      registers: [registry],
    }),
    watchSessionStore(status) {
      new Gauge({
        name: 'authz_sidecar_session_store_up',
        help: 'Whether the browser session store answers (1) or not (0), by store (cookie | redis)',
        labelNames: ['store'],
        registers: [registry],
        collect() {
          const s = status();
          this.reset();
          this.set({ store: s.store }, s.up ? 1 : 0);
        },
      });
    },
    setPolicy(sha256: string): void {
      policyInfo.reset();
      policyInfo.set({ sha256 }, 1);
    },
  };
}

/** The `decision` label of a decision outcome. */
export function decisionLabel(outcome: string): string {
  switch (outcome) {
    case 'allow':
      return 'allow';
    case 'forbidden':
      return 'deny';
    case 'badRequest':
      return 'bad_request';
    case 'signIn':
      return 'sign_in';
    default:
      return outcome;
  }
}
