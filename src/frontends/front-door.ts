/**
 * The one shape of every listener the sidecar runs: the four front doors and the admin listener. The
 * composition root starts them, reports readiness from them and drains them on SIGTERM, without knowing
 * which transport each one speaks.
 */
import type { Decision } from '../core/decision.js';
import type * as Spans from '../tracing/spans.js';

export interface FrontDoor {
  /** For logs and readiness: `proxy`, `extAuthzHttp`, `extAuthzGrpc`, `forwardAuth`, `admin`. */
  readonly name: string;
  /** Binds `host:port` or `unix:/path`; resolves with the bound address (the real port when 0 was asked for). */
  listen(address: string): Promise<string>;
  /** True while listening and not draining. */
  ready(): boolean;
  /**
   * Stops accepting, lets in-flight requests finish, and at `deadline` (epoch ms) cuts what is left
   * (connections, streams); resolves once the door is closed.
   */
  drain(deadline: number): Promise<void>;
  /** Closes at once (drain with a deadline of now). */
  close(): Promise<void>;
}

/**
 * Called by a door with each decision, when the door started on it (process.hrtime.bigint()), and the ids
 * of its span when tracing is on and the request is sampled (for the decision log).
 */
export type DecisionObserver = (decision: Decision, startedNs: bigint, trace?: { readonly trace_id: string; readonly span_id: string }) => void;

/** The span helpers (src/tracing/spans.ts) when tracing is on; doors do no tracing work without them. */
export type DoorTracing = typeof Spans;
