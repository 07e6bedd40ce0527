/**
 * Loads the YAML config once at startup (fastify's initial-config-validation pattern): parse, substitute
 * `${VAR}`, validate against the schema, resolve relative paths against the config file's folder, check the
 * files it names are readable, deep-freeze. One ConfigError lists every problem with its key path.
 */
import { access, readFile } from 'node:fs/promises';
import { constants } from 'node:fs';
import { dirname, isAbsolute, resolve } from 'node:path';
import { isMap, isScalar, isSeq, LineCounter, parseDocument, type Document, type Node } from 'yaml';
import type { z } from 'zod';
import { SidecarError } from '../core/errors.js';
import { configSchemaChecked, type Config } from './schema.js';

export interface ConfigIssue {
  /** Key path such as `authn.jwt[0].audiences`; '' for the file as a whole. */
  readonly path: string;
  readonly message: string;
  /** 1-based line in the config file, when known. */
  readonly line?: number | undefined;
  /** The library error behind the issue, when there is one (kept as the ConfigError's cause). */
  readonly cause?: unknown;
}

/**
 * A config (or a file read like one) that cannot be used, code CONFIG_INVALID. `cause` is the library
 * error behind the issues when there is one: the YAML parse error, the fs error of an unreadable file
 * (an AggregateError when several files are unreadable).
 */
export class ConfigError extends SidecarError<'CONFIG_INVALID'> {
  constructor(
    readonly file: string,
    readonly issues: readonly ConfigIssue[],
    options?: { cause?: unknown },
  ) {
    // Without an explicit cause, the errors behind the issues are the cause.
    super('CONFIG_INVALID', `invalid config ${file}:\n${issues.map((i) => `  ${formatIssue(i)}`).join('\n')}`, options ?? causeOf(issues.flatMap((i) => (i.cause === undefined ? [] : [i.cause]))));
    this.name = 'ConfigError';
  }
}

/** The `cause` of an error wrapping these library errors: none, the one, or an AggregateError of them all. */
function causeOf(errors: readonly unknown[]): { cause?: unknown } {
  if (errors.length === 0) return {};
  if (errors.length === 1) return { cause: errors[0] };
  return { cause: new AggregateError(errors, `${errors.length} errors`) };
}

function formatIssue(issue: ConfigIssue): string {
  const where = issue.line === undefined ? '' : ` (line ${issue.line})`;
  return issue.path === '' ? `${issue.message}${where}` : `${issue.path}: ${issue.message}${where}`;
}

export function formatKeyPath(path: readonly PropertyKey[]): string {
  let out = '';
  for (const part of path) {
    if (typeof part === 'number') out += `[${part}]`;
    else out += out === '' ? String(part) : `.${String(part)}`;
  }
  return out;
}

/** `${NAME}` is replaced from the environment; `$${` stands for a literal `${`. An unset variable is an error. */
function substitute(value: unknown, env: NodeJS.ProcessEnv, path: PropertyKey[], issues: ConfigIssue[]): unknown {
  if (typeof value === 'string') {
    return value.replace(/\$(\$?)\{([^}]*)\}/g, (whole, escaped: string, name: string) => {
      if (escaped === '$') return whole.slice(1);
      if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(name)) {
        issues.push({ path: formatKeyPath(path), message: `invalid variable reference \${${name}}` });
        return whole;
      }
      const v = env[name];
      if (v === undefined) {
        issues.push({ path: formatKeyPath(path), message: `environment variable ${name} is not set` });
        return whole;
      }
      return v;
    });
  }
  if (Array.isArray(value)) return value.map((v, i) => substitute(v, env, [...path, i], issues));
  if (typeof value === 'object' && value !== null) {
    // Null prototype: a "__proto__" key stays a key (and is refused as unknown), never a prototype.
    const out = Object.create(null) as Record<string, unknown>;
    for (const [k, v] of Object.entries(value)) out[k] = substitute(v, env, [...path, k], issues);
    return out;
  }
  return value;
}

/** Finds the line of a key path in the YAML document, for error messages. */
function lineOf(doc: Document, counter: LineCounter, path: readonly PropertyKey[]): number | undefined {
  let node: Node | null | undefined = doc.contents;
  let line: number | undefined;
  for (const part of path) {
    if (isMap(node)) {
      const pair = node.items.find((p) => isScalar(p.key) && p.key.value === part);
      if (!pair) break;
      const keyNode = pair.key as Node;
      if (keyNode.range) line = counter.linePos(keyNode.range[0]).line;
      node = pair.value as Node | null;
    } else if (isSeq(node) && typeof part === 'number') {
      node = node.items[part] as Node | null | undefined;
      if (node?.range) line = counter.linePos(node.range[0]).line;
    } else {
      break;
    }
  }
  return line;
}

export function zodIssues(error: z.ZodError, lineAt: (path: readonly PropertyKey[]) => number | undefined): ConfigIssue[] {
  const out: ConfigIssue[] = [];
  for (const issue of error.issues) {
    if (issue.code === 'unrecognized_keys') {
      for (const key of issue.keys) {
        const path = [...issue.path, key];
        out.push({ path: formatKeyPath(path), message: 'unknown key', line: lineAt(path) });
      }
      continue;
    }
    const missing = issue.code === 'invalid_type' && issue.message.endsWith('received undefined');
    out.push({
      path: formatKeyPath(issue.path),
      message: missing ? 'required' : issue.message,
      line: lineAt(issue.path),
    });
  }
  return out;
}

function deepFreeze<T>(value: T): T {
  if (typeof value === 'object' && value !== null && !Object.isFrozen(value)) {
    Object.freeze(value);
    for (const v of Object.values(value)) deepFreeze(v);
  }
  return value;
}

function resolvePath(base: string, p: string): string {
  return isAbsolute(p) ? p : resolve(base, p);
}

function resolveUnix(base: string, address: string): string {
  return address.startsWith('unix:') ? `unix:${resolvePath(base, address.slice('unix:'.length))}` : address;
}

/**
 * Validates an already-parsed config object (the YAML's data). `lineAt` maps a key path to its line in the
 * source, when there is one.
 */
export async function validateConfig(
  raw: unknown,
  file: string,
  env: NodeJS.ProcessEnv = process.env,
  lineAt: (path: readonly PropertyKey[]) => number | undefined = () => undefined,
): Promise<Config> {
  const issues: ConfigIssue[] = [];
  const substituted = substitute(raw ?? {}, env, [], issues);
  if (issues.length > 0) throw new ConfigError(file, issues);

  const parsed = configSchemaChecked.safeParse(substituted);
  if (!parsed.success) {
    throw new ConfigError(file, zodIssues(parsed.error, lineAt));
  }
  const config = parsed.data;
  const base = dirname(resolve(file));

  config.listen = resolveUnix(base, config.listen);
  config.admin.listen = resolveUnix(base, config.admin.listen);
  for (const door of [config.extAuthz.http, config.extAuthz.grpc, config.extAuthz.forwardAuth]) {
    if (door !== undefined) door.listen = resolveUnix(base, door.listen);
  }
  if (config.upstream !== undefined) config.upstream.url = resolveUnix(base, config.upstream.url);
  config.authz.model = resolvePath(base, config.authz.model);
  config.authz.policy = resolvePath(base, config.authz.policy);
  const files: Array<[string, string]> = [
    ['authz.model', config.authz.model],
    ['authz.policy', config.authz.policy],
  ];
  config.authn.jwt.forEach((issuer, i) => {
    if (issuer.jwksFile !== undefined) {
      issuer.jwksFile = resolvePath(base, issuer.jwksFile);
      files.push([`authn.jwt[${i}].jwksFile`, issuer.jwksFile]);
    }
    if (issuer.secretFile !== undefined) {
      issuer.secretFile = resolvePath(base, issuer.secretFile);
      files.push([`authn.jwt[${i}].secretFile`, issuer.secretFile]);
    }
  });
  config.authn.introspection.forEach((entry, i) => {
    entry.clientSecretFile = resolvePath(base, entry.clientSecretFile);
    files.push([`authn.introspection[${i}].clientSecretFile`, entry.clientSecretFile]);
  });
  if (config.signIn !== undefined) {
    const signIn = config.signIn;
    signIn.providers.forEach((provider, i) => {
      if (provider.clientSecretFile === undefined) return;
      provider.clientSecretFile = resolvePath(base, provider.clientSecretFile);
      files.push([`signIn.providers[${i}].clientSecretFile`, provider.clientSecretFile]);
    });
    const redis = signIn.session.redis;
    if (redis?.passwordFile !== undefined) {
      redis.passwordFile = resolvePath(base, redis.passwordFile);
      files.push(['signIn.session.redis.passwordFile', redis.passwordFile]);
    }
    signIn.cookie.secretFiles = signIn.cookie.secretFiles.map((f, i) => {
      const path = resolvePath(base, f);
      files.push([`signIn.cookie.secretFiles[${i}]`, path]);
      return path;
    });
  }
  const seen = new Set<string>();
  config.authn.jwt.forEach((issuer, i) => {
    if (seen.has(issuer.issuer)) issues.push({ path: `authn.jwt[${i}].issuer`, message: 'this issuer is configured twice' });
    seen.add(issuer.issuer);
  });
  const unreadable: unknown[] = [];
  for (const [key, path] of files) {
    try {
      await access(path, constants.R_OK);
    } catch (err) {
      issues.push({ path: key, message: `cannot read file ${path}` });
      unreadable.push(err);
    }
  }
  if (issues.length > 0) throw new ConfigError(file, issues, causeOf(unreadable));
  return deepFreeze(config);
}

/** Deeper than any real config; bounds every recursive walk over the data. */
const MAX_DEPTH = 64;

/** Refuses data that would send a walk around in circles (a self-referencing alias) or too deep. */
function checkShape(value: unknown, depth = 0, path: object[] = []): string | undefined {
  if (typeof value !== 'object' || value === null) return undefined;
  if (path.includes(value)) return 'an alias refers to itself';
  if (depth > MAX_DEPTH) return `nesting deeper than ${MAX_DEPTH} levels`;
  for (const child of Object.values(value)) {
    const error = checkShape(child, depth + 1, [...path, value]);
    if (error !== undefined) return error;
  }
  return undefined;
}

/** A YAML file parsed, with a function that finds the line of a key path in it (for error messages). */
export interface YamlFile {
  readonly data: unknown;
  readonly lineAt: (path: readonly PropertyKey[]) => number | undefined;
}

/** Reads and parses a YAML file; unreadable files and YAML syntax errors become a ConfigError with lines. */
export async function readYamlFile(file: string, what = 'file'): Promise<YamlFile> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    throw new ConfigError(file, [{ path: '', message: `cannot read the ${what}: ${(err as NodeJS.ErrnoException).code ?? 'error'}` }], { cause: err });
  }
  const counter = new LineCounter();
  const doc = parseDocument(text, { lineCounter: counter, prettyErrors: true, uniqueKeys: true });
  if (doc.errors.length > 0) {
    throw new ConfigError(
      file,
      doc.errors.map((e) => ({ path: '', message: `YAML: ${e.message.split('\n')[0] ?? e.code}`, line: e.linePos?.[0].line })),
      causeOf(doc.errors),
    );
  }
  let data: unknown;
  try {
    data = doc.toJS({ maxAliasCount: 100 }) as unknown;
  } catch (err) {
    throw new ConfigError(file, [{ path: '', message: `YAML: ${(err as Error).message.split('\n')[0] ?? 'cannot be read'}` }], { cause: err });
  }
  const shapeError = checkShape(data);
  if (shapeError !== undefined) throw new ConfigError(file, [{ path: '', message: `YAML: ${shapeError}` }]);
  return { data, lineAt: (path) => lineOf(doc, counter, path) };
}

export async function loadConfig(file: string, env: NodeJS.ProcessEnv = process.env): Promise<Config> {
  const { data, lineAt } = await readYamlFile(file, 'config file');
  return validateConfig(data, file, env, lineAt);
}
