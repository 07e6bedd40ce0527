/**
 * regexMatch as the sidecar evaluates it: anchored (Casbin's built-in is not, and keeps its name even when
 * a function of that name is added), and refused at load when it can backtrack catastrophically.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createCasbinAuthorizer, PolicyLoadError } from '../../../src/authz/casbin-authorizer.js';
import type { AccessRequest } from '../../../src/core/access-request.js';
import { copyClaims, type Identity } from '../../../src/core/identity.js';
import { RBAC_MODEL } from '../../support/models.js';

const REGEX_MODEL = RBAC_MODEL.replace('keyMatch2(r.obj, p.obj)', 'regexMatch(r.obj, p.obj)');
const anonymous: Identity = { anonymous: true, subject: 'anonymous', issuer: undefined, roles: [], scopes: [], claims: copyClaims({}) };
const request = (path: string): AccessRequest => ({ frontDoor: 'proxy', method: 'GET', path, query: undefined, host: 'h', headers: {}, peer: '', requestId: 'r' });

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'authz-regex-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function authorizer(policy: string) {
  const modelPath = join(dir, 'model.conf');
  const policyPath = join(dir, `${Math.random().toString(36).slice(2)}.csv`);
  await writeFile(modelPath, REGEX_MODEL);
  await writeFile(policyPath, policy);
  return createCasbinAuthorizer({ modelPath, policyPath });
}

describe('regexMatch', () => {
  it.each([
    ['/public', true],
    ['/public/x', false],
    ['/x/public', false],
    ['/x/public/y', false],
    ['/publicity', false],
  ])('pattern "/public" on %s -> %s (anchored)', async (path, allowed) => {
    const a = await authorizer('p, anonymous, /public, GET\n');
    expect(a.authorize(request(path), anonymous).allowed).toBe(allowed);
  });

  it.each([
    ['/public/x', true],
    ['/admin/public/x', false],
    ['/orders/1/public/', false],
  ])('pattern "/public/.*" on %s -> %s', async (path, allowed) => {
    const a = await authorizer('p, anonymous, /public/.*, GET\n');
    expect(a.authorize(request(path), anonymous).allowed).toBe(allowed);
  });

  it.each(['/(a+)+', '/(a|a)*', '/(\\w|\\d)+$', '/(x*)*y'])('refuses %s at load (catastrophic backtracking)', async (pattern) => {
    const err = await authorizer(`p, anonymous, ${pattern}, GET\n`).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(PolicyLoadError);
    expect((err as Error).message).toContain('can backtrack catastrophically');
  });

  it('keeps safe alternations and bounded repeats', async () => {
    const a = await authorizer('p, anonymous, /orders/(get|list), GET\np, anonymous, /x{3}, GET\n');
    expect(a.authorize(request('/orders/list'), anonymous).allowed).toBe(true);
    expect(a.authorize(request('/xxx'), anonymous).allowed).toBe(true);
    expect(a.authorize(request('/orders/lists'), anonymous).allowed).toBe(false);
  });
});
