/**
 * The docs are part of the contract: every reason code is documented in docs/reason-codes.md and every config key
 * in docs/configuration.md (the README is the front page and links to them).
 */
import { existsSync } from 'node:fs';
import { readFile, readdir } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import { z } from 'zod';
import { configSchema } from '../../src/config/schema.js';
import { REASONS } from '../../src/core/errors.js';

const ROOT = resolve(import.meta.dirname, '../..');
const DOCS = resolve(ROOT, 'docs');
const REASON_CODES = await readFile(resolve(DOCS, 'reason-codes.md'), 'utf8');
const CONFIGURATION = await readFile(resolve(DOCS, 'configuration.md'), 'utf8');
const README_PATH = resolve(ROOT, 'README.md');
const PAGES = (await readdir(DOCS)).filter((name) => name.endsWith('.md')).sort();

/** Markdown without its fenced code blocks (a `#` or `](` inside one is not a heading or a link). */
async function prose(file: string): Promise<string> {
  return (await readFile(file, 'utf8')).replace(/^```[^]*?^```/gm, '');
}

/** The anchors GitHub makes of a page's headings: lower case, punctuation dropped, spaces as `-`, repeats numbered. */
async function anchors(file: string): Promise<Set<string>> {
  const seen = new Map<string, number>();
  const out = new Set<string>();
  for (const [, heading] of (await prose(file)).matchAll(/^#{1,6} (.+)$/gm)) {
    const slug = (heading as string).trim().toLowerCase().replace(/[^\p{L}\p{N}\- _]/gu, '').replace(/ /g, '-');
    const n = seen.get(slug) ?? 0;
    seen.set(slug, n + 1);
    out.add(n === 0 ? slug : `${slug}-${String(n)}`);
  }
  return out;
}

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

describe('docs', () => {
  it.each(Object.entries(REASONS))('docs/reason-codes.md documents reason code %s with its status', (code, spec) => {
    expect(REASON_CODES).toContain(`| \`${code}\` | ${spec.status} |`);
  });

  const keys = keyPaths(configSchema, '');
  it('finds the config keys of the schema', () => {
    expect(keys).toContain('authn.jwt[].audiences');
    expect(keys).toContain('headers.forwardToken');
  });
  it.each(keys)('docs/configuration.md documents config key %s in the configuration reference', (key) => {
    expect(CONFIGURATION).toContain(`| \`${key}\` |`);
  });

  it('the README links every docs page', async () => {
    const readme = await readFile(README_PATH, 'utf8');
    expect(PAGES.length).toBeGreaterThan(0);
    for (const page of PAGES) expect(readme, page).toContain(`](docs/${page})`);
  });

  it.each(['README.md', ...PAGES.map((page) => `docs/${page}`)])('every relative link in %s reaches a file and heading', async (name) => {
    const file = resolve(ROOT, name);
    for (const [, target] of (await prose(file)).matchAll(/\]\(([^)\s]+)\)/g)) {
      if (/^[a-z]+:/i.test(target as string)) continue;
      const [path = '', anchor] = (target as string).split('#');
      const linked = path === '' ? file : resolve(dirname(file), path);
      expect(existsSync(linked), `${name}: ${target as string}`).toBe(true);
      if (anchor !== undefined && anchor !== '') expect(await anchors(linked), `${name}: ${target as string}`).toContain(anchor);
    }
  });
});
