/**
 * Reading deploy/ files in tests: typed access to parsed YAML (each step names what it expected, so a
 * failure says where), and every document of a multi-document file.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { expect } from 'vitest';
import { parseAllDocuments } from 'yaml';
import { ROOT } from './cli.js';

export type Obj = Record<string, unknown>;

export const isObj = (v: unknown): v is Obj => typeof v === 'object' && v !== null && !Array.isArray(v);

export function obj(v: unknown, what: string): Obj {
  if (!isObj(v)) throw new Error(`${what}: expected an object, got ${JSON.stringify(v)}`);
  return v;
}

export function arr(v: unknown, what: string): unknown[] {
  if (!Array.isArray(v)) throw new Error(`${what}: expected a list, got ${JSON.stringify(v)}`);
  return v;
}

export function str(v: unknown, what: string): string {
  if (typeof v !== 'string' || v === '') throw new Error(`${what}: expected a non-empty string, got ${JSON.stringify(v)}`);
  return v;
}

/** A file of the repository, by its path from the root. */
export const read = (file: string): Promise<string> => readFile(join(ROOT, file), 'utf8');

/** Every document of a YAML file (none empty), each an object; YAML errors fail the test. */
export async function docsOf(file: string): Promise<Obj[]> {
  return parseAllDocuments(await read(file))
    .map((d) => {
      expect(d.errors, `${file}: YAML errors`).toEqual([]);
      return d.toJS() as unknown;
    })
    .filter((d) => d !== null && d !== undefined)
    .map((d) => obj(d, file));
}
