/**
 * The one shape of every listener the sidecar runs: the four front doors and the admin listener. The
 * composition root starts them, reports readiness from them and drains them on SIGTERM, without knowing
 * which transport each one speaks.
 */
import type { Decision } from '../core/decision.js';

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

/** Called by a door with each decision and when the door started on it (process.hrtime.bigint()). */
export type DecisionObserver = (decision: Decision, startedNs: bigint) => void;
