import { newModelFromString, StringAdapter, type Model } from 'casbin';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { PolicyTextAdapter } from '../../../src/authz/casbin-authorizer.js';
import { buildPolicyIndex, conjuncts, literalPrefix } from '../../../src/authz/policy-index.js';
import { RBAC_MODEL } from '../../support/models.js';

async function loaded(modelText: string, policy: string, adapter: 'ours' | 'casbin' = 'ours'): Promise<Model> {
  const model = newModelFromString(modelText);
  await (adapter === 'ours' ? new PolicyTextAdapter(policy) : new StringAdapter(policy)).loadPolicy(model);
  return model;
}

function policyOf(model: Model): Record<string, string[][]> {
  const out: Record<string, string[][]> = {};
  for (const sec of ['p', 'g']) {
    for (const [key, assertion] of model.model.get(sec) ?? []) out[key] = assertion.policy;
  }
  return out;
}

describe('literalPrefix', () => {
  it.each([
    ['/orders/:id', '/orders/'],
    ['/orders/*', '/orders/'],
    ['/orders', '/orders'],
    ['/a/{id}/b', '/a'], // keyMatch2 reads "/{0,1}" as a quantifier on the slash
    ['/a.b/c', '/a'],
    ['*', ''],
    ['/x|/y', ''],
    ['/files/(.*)', '/files/'],
    ['/v1+/', '/v1'],
    // A quantifier makes the character before it optional: "/a*" matches "/".
    ['/a*', '/'],
    ['/ab?', '/a'],
    ['/orders/a{0,1}', '/orders/'],
    ['a*', ''],
  ])('%s starts with %j', (pattern, prefix) => {
    expect(literalPrefix(pattern)).toBe(prefix);
  });
});

describe('conjuncts', () => {
  it('splits the top-level && and unwraps parentheses around the whole', () => {
    expect(conjuncts('g(r_sub, p_sub) && keyMatch2(r_obj, p_obj) && (r_act == p_act || p_act == "*")')).toEqual([
      'g(r_sub, p_sub)',
      'keyMatch2(r_obj, p_obj)',
      '(r_act == p_act || p_act == "*")',
    ]);
    expect(conjuncts('(r_sub == p_sub && r_obj == p_obj)')).toEqual(['r_sub == p_sub', 'r_obj == p_obj']);
    expect(conjuncts('(a) && (b)')).toEqual(['(a)', '(b)']);
  });

  it('refuses a top-level || or ?: (the terms are then not all required)', () => {
    expect(conjuncts('r_sub == p_sub || r_sub == "root"')).toBeUndefined();
    expect(conjuncts('a && b ? c : d')).toBeUndefined();
    expect(conjuncts('(a && b) || c')).toBeUndefined();
  });

  it('ignores operators inside strings and refuses unbalanced text', () => {
    expect(conjuncts('r_sub == "a || b" && r_obj == p_obj')).toEqual(['r_sub == "a || b"', 'r_obj == p_obj']);
    expect(conjuncts('(a && b')).toBeUndefined();
    expect(conjuncts('r_sub == "open')).toBeUndefined();
  });
});

describe('buildPolicyIndex', () => {
  const policy = [
    'p, role:reader, /orders/:id, GET',
    'p, role:admin, /admin/*, *',
    'p, user:alice, /me, GET',
    'p, role:reader, /public/*, GET',
    'g, role:admin, role:reader',
  ].join('\n');

  it('selects the lines of the subject, its roles and their parents whose literal prefix the path has', async () => {
    const index = buildPolicyIndex(await loaded(RBAC_MODEL, policy));
    expect(index).toBeDefined();
    const scope = { subject: 'user:bob', roles: ['role:admin'] };
    expect(index!.candidates(['user:bob', '/orders/1', 'GET'], scope)).toEqual([['role:reader', '/orders/:id', 'GET']]);
    expect(index!.candidates(['user:bob', '/admin/x', 'GET'], scope)).toEqual([['role:admin', '/admin/*', '*']]);
    // Alice's own line; the token roles belong to bob only.
    expect(index!.candidates(['user:alice', '/me', 'GET'], scope)).toEqual([['user:alice', '/me', 'GET']]);
  });

  it('returns one line that cannot match when none can, never an empty policy', async () => {
    const index = buildPolicyIndex(await loaded(RBAC_MODEL, policy));
    const none = index!.candidates(['user:eve', '/orders/1', 'GET'], { subject: 'user:eve', roles: [] });
    expect(none).toHaveLength(1);
    expect(none[0]![0]).not.toBe('user:eve');
  });

  it('is not built when a term could throw on some lines only (Casbin would deny with an error there)', async () => {
    // keyMatch2 turns "api[" into an invalid regex: Casbin throws on that line, which must not be left out.
    expect(buildPolicyIndex(await loaded(RBAC_MODEL, 'p, anonymous, api[, GET\np, anonymous, /public/*, GET\n'))).toBeUndefined();
    // ipMatch throws on a line whose value is not an IP; the index does not read it, so it cannot skip it.
    const ip = RBAC_MODEL.replace(/^m = .*$/m, 'm = g(r.sub, p.sub) && keyMatch2(r.obj, p.obj) && ipMatch(r.act, p.act)');
    expect(buildPolicyIndex(await loaded(ip, policy))).toBeUndefined();
    // Comparisons, role functions and the shipped model's method term cannot throw: indexed.
    expect(buildPolicyIndex(await loaded(RBAC_MODEL, policy))).toBeDefined();
  });

  it('is not built for matchers it cannot read', async () => {
    const or = RBAC_MODEL.replace(/^m = .*$/m, 'm = g(r.sub, p.sub) || r.sub == "root"');
    expect(buildPolicyIndex(await loaded(or, policy))).toBeUndefined();
    const evalModel = RBAC_MODEL.replace(/^m = .*$/m, 'm = eval(p.sub)');
    expect(buildPolicyIndex(await loaded(evalModel, policy))).toBeUndefined();
    const noP = RBAC_MODEL.replace(/^m = .*$/m, 'm = r.sub == "root"');
    expect(buildPolicyIndex(await loaded(noP, policy))).toBeUndefined();
    expect(buildPolicyIndex(await loaded(RBAC_MODEL, '# empty\n'))).toBeUndefined();
  });
});

describe('PolicyTextAdapter', () => {
  it('loads exactly what Casbin StringAdapter loads, plain lines and quoted or bracketed ones', async () => {
    const tricky = [
      'p, alice, /a, GET',
      '  p ,  bob , /b/:id ,  POST  ',
      'p, "carol, jr", /c, GET',
      'p, dave, "/d""q", GET',
      'p, eve, /f, (GET|POST)',
      '# a comment',
      '   # indented comment',
      'p,\tfrank, /g, GET',
      'p, gina, /h,',
      'g, alice, admin',
      'g2, alice, x',
      'q, unknown, section',
      'p, \u00e9milie, /\u00e9, GET',
      'p, ivan, /i, GET\r',
      '   ',
      '',
    ].join('\n');
    const casbin = policyOf(await loaded(RBAC_MODEL, tricky, 'casbin'));
    expect(policyOf(await loaded(RBAC_MODEL, tricky))).toEqual(casbin);
    expect(casbin.p).toContainEqual(['carol, jr', '/c', 'GET']);
    // A line Casbin's CSV reader refuses is refused the same way.
    const bad = 'p, "x"y, /z, GET';
    await expect(loaded(RBAC_MODEL, bad, 'casbin')).rejects.toThrow(/quote/i);
    await expect(loaded(RBAC_MODEL, bad)).rejects.toThrow(/quote/i);
  });

  it('agrees with Casbin on generated lines', async () => {
    const field = fc.stringMatching(/^[ a-z:/*.,"(){}#|\t-]{0,8}$/);
    const line = fc.tuple(fc.constantFrom('p', 'g', ' p', 'p ', '#p'), fc.array(field, { minLength: 1, maxLength: 4 })).map(([k, f]) => [k, ...f].join(','));
    await fc.assert(
      fc.asyncProperty(fc.array(line, { maxLength: 8 }), async (lines) => {
        const text = lines.join('\n');
        let casbin: Record<string, string[][]> | Error;
        try {
          casbin = policyOf(await loaded(RBAC_MODEL, text, 'casbin'));
        } catch (err) {
          casbin = err as Error;
        }
        if (casbin instanceof Error) await expect(loaded(RBAC_MODEL, text)).rejects.toThrow(casbin.message);
        else expect(policyOf(await loaded(RBAC_MODEL, text))).toEqual(casbin);
      }),
      { numRuns: 300 },
    );
  });
});
