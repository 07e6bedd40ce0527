/**
 * One JSON log line per decision (`logging.decisions`: none | denied | all), shared by every front door.
 * It names who asked for what and why the answer was what it was; never a token, a secret or the claims.
 */
import type { Decision } from '../core/decision.js';

export type DecisionLogLevel = 'none' | 'denied' | 'all';

export interface DecisionLogger {
  info(obj: object, msg: string): void;
}

export function logDecision(logger: DecisionLogger, level: DecisionLogLevel, decision: Decision, startedNs: bigint): void {
  if (level === 'none' || (level === 'denied' && decision.outcome === 'allow')) return;
  const request = decision.request;
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
        policy: decision.policy?.join(', '),
        latencyMs: Number(process.hrtime.bigint() - startedNs) / 1e6,
      },
    },
    'decision',
  );
}
