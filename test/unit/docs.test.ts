/** The README is part of the contract: every reason code and every config key must be documented there. */
import { readFile } from 'node:fs/promises';
import { resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import { z } from 'zod';
import { configSchema } from '../../src/config/schema.js';
import { REASONS } from '../../src/core/errors.js';

const README = await readFile(resolve(import.meta.dirname, '../../README.md'), 'utf8');

/** Every key path of the schema: `authn.jwt[].issuer`, `headers.claims`, ... */
function keyPaths(schema: z.ZodType, prefix: string): string[] {
  let inner: z.ZodType = schema;
  // Unwrap defaults, optionals, pipes and refinements down to the object, array or leaf.
  for (;;) {
    const def = (inner as unknown as { def: { type: string; innerType?: z.ZodType; in?: z.ZodType } }).def;
    if (def.innerType !== undefined) inner = def.innerType;
    else if (def.type === 'pipe' && def.in !== undefined) inner = def.in;
    else break;
  }
  if (inner instanceof z.ZodObject) {
    return Object.entries(inner.shape as Record<string, z.ZodType>).flatMap(([key, child]) => {
      const path = prefix === '' ? key : `${prefix}.${key}`;
      const nested = keyPaths(child, path);
      return nested.length > 0 ? nested : [path];
    });
  }
  if (inner instanceof z.ZodUnion) {
    return [...new Set((inner.options as z.ZodType[]).flatMap((option) => keyPaths(option, prefix)))];
  }
  if (inner instanceof z.ZodArray) {
    const element = inner.element as z.ZodType;
    const nested = keyPaths(element, `${prefix}[]`);
    return nested.length > 0 ? [`${prefix}[]`, ...nested] : [];
  }
  return [];
}

describe('README', () => {
  it.each(Object.entries(REASONS))('documents reason code %s with its status', (code, spec) => {
    expect(README).toContain(`| \`${code}\` | ${spec.status} |`);
  });

  const keys = keyPaths(configSchema, '');
  it('finds the config keys of the schema', () => {
    expect(keys).toContain('authn.jwt[].audiences');
    expect(keys).toContain('headers.forwardToken');
  });
  it.each(keys)('documents config key %s in the configuration reference', (key) => {
    expect(README).toContain(`| \`${key}\` |`);
  });
});
