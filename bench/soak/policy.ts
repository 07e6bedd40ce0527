/**
 * The soak's policies and the oracle's own reading of them. Two versions that disagree on a few routes take
 * turns through a Kubernetes-style `..data` swap (a ConfigMap update: a new timestamped folder, then one atomic
 * rename of the `..data` link), and a broken one is written now and then, which the sidecar must refuse while
 * the last good one keeps serving.
 *
 * The oracle does not ask Casbin: it evaluates the same rules with its own few lines (roles through `g`,
 * keyMatch2 as a regular expression), so a bug in the sidecar's evaluation shows up as a disagreement.
 */
import { mkdir, readlink, rename, rm, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { RBAC_MODEL } from '../../test/support/models.js';

/** The example model's shape (RBAC, keyMatch2 paths, a "*" action), shared with the tests. */
export const MODEL = RBAC_MODEL;

interface Rule {
  readonly sub: string;
  readonly obj: string;
  readonly act: string;
}

export interface PolicyVersion {
  readonly name: string;
  readonly csv: string;
  /** Would this version allow `roles` (without prefix; 'anonymous' alone for no credentials) to do method on path? */
  allows(subject: string | undefined, roles: readonly string[], method: string, path: string): boolean;
}

const INHERITS: ReadonlyArray<readonly [string, string]> = [
  ['role:writer', 'role:reader'],
  ['role:admin', 'role:writer'],
];

function keyMatch2(path: string, pattern: string): boolean {
  const source = pattern
    .replace(/[.+?^${}()|[\]\\]/g, '\\$&')
    .replace(/\/\*/g, '/.*')
    .replace(/:[^/]+/g, '[^/]+');
  return new RegExp(`^${source}$`).test(path);
}

function version(name: string, rules: readonly Rule[]): PolicyVersion {
  const csv = [...rules.map((r) => `p, ${r.sub}, ${r.obj}, ${r.act}`), ...INHERITS.map(([a, b]) => `g, ${a}, ${b}`)].join('\n') + '\n';
  return {
    name,
    csv,
    allows(subject, roles, method, path) {
      const subjects = new Set<string>(subject === undefined ? ['anonymous'] : [`user:${subject}`, ...roles.map((r) => `role:${r}`)]);
      for (let grew = true; grew; ) {
        grew = false;
        for (const [child, parent] of INHERITS) {
          if (subjects.has(child) && !subjects.has(parent)) {
            subjects.add(parent);
            grew = true;
          }
        }
      }
      const act = method === 'HEAD' ? 'GET' : method;
      return rules.some((r) => subjects.has(r.sub) && keyMatch2(path, r.obj) && (r.act === act || r.act === '*'));
    },
  };
}

const COMMON: Rule[] = [
  { sub: 'anonymous', obj: '/public/*', act: 'GET' },
  { sub: 'role:reader', obj: '/orders', act: 'GET' },
  { sub: 'role:writer', obj: '/orders', act: 'POST' },
  { sub: 'role:admin', obj: '/admin/*', act: '*' },
];

/** v1: readers read single orders. v2: they read reports instead, and writers may delete orders. */
export const POLICY_VERSIONS: readonly PolicyVersion[] = [
  version('v1', [...COMMON, { sub: 'role:reader', obj: '/orders/:id', act: 'GET' }]),
  version('v2', [
    ...COMMON,
    { sub: 'role:reader', obj: '/reports/*', act: 'GET' },
    { sub: 'role:writer', obj: '/orders/:id', act: 'GET' },
    { sub: 'role:writer', obj: '/orders/:id', act: 'DELETE' },
  ]),
];

/** Not a policy the sidecar may load: a rule with a missing field. */
export const BROKEN_POLICY = 'p, role:reader, /orders\np, role:admin, /admin/*, *, extra, fields\n';

/**
 * A folder laid out as kubelet lays out a mounted ConfigMap: `policy.csv -> ..data/policy.csv`,
 * `..data -> ..<timestamp>`; `write` makes a new timestamped folder and renames a fresh link over `..data`.
 */
export class ConfigMapDir {
  #generation = 0;

  constructor(readonly dir: string) {}

  get policyFile(): string {
    return join(this.dir, 'policy.csv');
  }

  async init(csv: string): Promise<void> {
    await mkdir(this.dir, { recursive: true });
    await this.write(csv);
    await symlink('..data/policy.csv', this.policyFile);
  }

  async write(csv: string): Promise<void> {
    const name = `..soak_${process.pid}_${++this.#generation}`;
    await mkdir(join(this.dir, name));
    await writeFile(join(this.dir, name, 'policy.csv'), csv);
    const link = join(this.dir, '..data');
    let previous: string | undefined;
    try {
      previous = await readlink(link);
    } catch {
      previous = undefined;
    }
    await symlink(name, join(this.dir, '..data_tmp'));
    await rename(join(this.dir, '..data_tmp'), link);
    if (previous !== undefined) await rm(join(this.dir, previous), { recursive: true, force: true });
  }
}
