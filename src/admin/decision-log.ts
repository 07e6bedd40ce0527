/**
 * What every front door does with a decision once made: one JSON log line (`logging.decisions`: none |
 * denied | all) and the metrics. The log line names who asked for what and why the answer was what it was;
 * never a token, a secret or the claims.
 */
import type { DecisionObserver } from '../frontends/front-door.js';
import { decisionLabel, type Metrics } from './metrics.js';

export type DecisionLogLevel = 'none' | 'denied' | 'all';

export interface DecisionLogger {
  info(obj: object, msg: string): void;
}


export function createDecisionObserver(options: {
  readonly level: DecisionLogLevel;
  readonly logger: DecisionLogger;
  readonly metrics?: Metrics | undefined;
}): DecisionObserver {
  const { level, metrics, logger } = options;
  return (decision, startedNs, trace) => {
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
          ...(trace === undefined ? {} : trace),
        },
      },
      'decision',
    );
  };
}
