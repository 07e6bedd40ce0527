/**
 * What every front door does with a decision once made: one JSON log line (`logging.decisions`: none |
 * denied | all) and the metrics. The log line names who asked for what and why the answer was what it was;
 * never a token, a secret or the claims.
 */
import type { Metrics } from '../admin/metrics.js';
import { decisionLabel } from '../admin/metrics.js';
import type { Decision } from '../core/decision.js';

export type DecisionLogLevel = 'none' | 'denied' | 'all';

export interface DecisionLogger {
  info(obj: object, msg: string): void;
}

/** Called by a door with each decision, when it was started, and the logger of the request. */
export type DecisionObserver = (decision: Decision, startedNs: bigint, logger: DecisionLogger) => void;

export function createDecisionObserver(options: { readonly level: DecisionLogLevel; readonly metrics?: Metrics | undefined }): DecisionObserver {
  const { level, metrics } = options;
  return (decision, startedNs, logger) => {
    const seconds = Number(process.hrtime.bigint() - startedNs) / 1e9;
    const request = decision.request;
    const frontend = request?.frontDoor ?? 'unknown';
    const dryRun = decision.dryRunDenied !== undefined;
    if (metrics !== undefined) {
      metrics.requests.inc({ frontend, decision: dryRun ? 'deny' : decisionLabel(decision.outcome), dry_run: String(dryRun) });
      metrics.decisionDuration.observe({ frontend }, seconds);
    }
    const denied = decision.outcome !== 'allow' || dryRun;
    if (level === 'none' || (level === 'denied' && !denied)) return;
    logger.info(
      {
        decision: {
          requestId: decision.requestId,
          frontDoor: request?.frontDoor,
          method: request?.method,
          path: request?.path,
          subject: decision.identity?.subject,
          anonymous: decision.identity?.anonymous,
          roles: decision.identity?.roles,
          outcome: decision.outcome,
          status: decision.status,
          reason: decision.reason,
          ...(dryRun ? { dryRun: true, dryRunDenied: decision.dryRunDenied } : {}),
          policy: decision.policy?.join(', '),
          latencyMs: seconds * 1000,
        },
      },
      'decision',
    );
  };
}
