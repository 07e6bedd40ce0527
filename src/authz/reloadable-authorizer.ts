/**
 * The serving authorizer, replaceable at run time (file changes, SIGHUP). A new model and policy replace
 * the running ones only after they loaded completely and passed the lint; a broken one is reported and the
 * last good one keeps serving. The swap is one assignment, so a request is decided wholly by one policy.
 */
import type { AccessRequest } from '../core/access-request.js';
import type { Identity } from '../core/identity.js';
import type { Authorizer, AuthzResult } from '../core/stages.js';
import type { CasbinAuthorizer } from './casbin-authorizer.js';

export type ReloadResult = { readonly ok: true; readonly sha256: string; readonly changed: boolean } | { readonly ok: false; readonly error: Error };

export interface ReloadableAuthorizer extends Authorizer {
  current(): CasbinAuthorizer;
  /** Loads again; swaps in the result when it loaded, keeps the current one otherwise. Never throws. */
  reload(): Promise<ReloadResult>;
}

export function createReloadableAuthorizer(initial: CasbinAuthorizer, load: () => Promise<CasbinAuthorizer>): ReloadableAuthorizer {
  let serving = initial;
  let running: Promise<ReloadResult> | undefined;
  let again = false;

  async function reloadOnce(): Promise<ReloadResult> {
    try {
      const next = await load();
      const changed = next.sha256 !== serving.sha256;
      serving = next;
      return { ok: true, sha256: next.sha256, changed };
    } catch (err) {
      return { ok: false, error: err instanceof Error ? err : new Error(String(err), { cause: err }) };
    }
  }

  return {
    current: () => serving,
    missing: () => serving.missing(),
    authorize(request: AccessRequest, identity: Identity): AuthzResult {
      return serving.authorize(request, identity);
    },
    // Reloads never overlap; a request for one while another runs is served by one more run after it, so
    // the last change on disk is always the one loaded.
    reload(): Promise<ReloadResult> {
      if (running !== undefined) {
        again = true;
        return running;
      }
      running = (async () => {
        let result = await reloadOnce();
        while (again) {
          again = false;
          result = await reloadOnce();
        }
        return result;
      })().finally(() => {
        running = undefined;
      });
      return running;
    },
  };
}
