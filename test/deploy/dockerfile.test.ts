/**
 * The Dockerfile without a Docker engine: a line parser checks the stages, base image, user, ports,
 * entrypoint and that no secret is baked in; then the runtime stage is replayed in a temp dir (the files it
 * COPYs, filtered by .dockerignore, the already built dist/, `npm ci --omit=dev --ignore-scripts`) and the
 * result is started. The TypeScript build itself is exercised by `npm test`'s pretest (`npm run build`).
 */
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { cp, mkdtemp, readFile, readdir, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { afterAll, describe, expect, it } from 'vitest';

const run = promisify(execFile);
const ROOT = fileURLToPath(new URL('../../', import.meta.url));

interface Instruction { op: string; args: string; line: number }
interface Stage { from: string; name: string | undefined; instructions: Instruction[] }

/** Joins continuation lines, drops comments and parser directives, splits into stages. */
function parseDockerfile(text: string): Stage[] {
  const instructions: Instruction[] = [];
  let buffer = '';
  let start = 0;
  for (const [i, raw] of text.split('\n').entries()) {
    const line = raw.trim();
    if (buffer === '' && (line === '' || line.startsWith('#'))) continue;
    if (buffer === '') start = i + 1;
    if (line.startsWith('#')) continue; // a comment inside a continued instruction
    if (line.endsWith('\\')) {
      buffer += `${line.slice(0, -1)} `;
      continue;
    }
    buffer += line;
    const match = /^(\S+)\s*(.*)$/.exec(buffer);
    if (match) instructions.push({ op: (match[1] as string).toUpperCase(), args: (match[2] as string).trim(), line: start });
    buffer = '';
  }
  const stages: Stage[] = [];
  for (const ins of instructions) {
    if (ins.op === 'FROM') {
      const m = /^(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?$/i.exec(ins.args);
      if (!m) throw new Error(`line ${ins.line}: cannot parse FROM ${ins.args}`);
      stages.push({ from: m[1] as string, name: m[2], instructions: [] });
    } else if (stages.length === 0) {
      if (ins.op !== 'ARG') throw new Error(`line ${ins.line}: ${ins.op} before the first FROM`);
    } else {
      (stages[stages.length - 1] as Stage).instructions.push(ins);
    }
  }
  return stages;
}

const jsonArray = (args: string): string[] => {
  const value: unknown = JSON.parse(args);
  if (!Array.isArray(value) || !value.every((v) => typeof v === 'string')) throw new Error(`not an exec-form array: ${args}`);
  return value;
};

/** COPY [--from=x] [--chown=..] src... dest */
function parseCopy(args: string): { from: string | undefined; sources: string[]; dest: string } {
  const words = args.trim().startsWith('[') ? jsonArray(args) : args.split(/\s+/);
  let from: string | undefined;
  const rest: string[] = [];
  for (const w of words) {
    if (w.startsWith('--from=')) from = w.slice('--from='.length);
    else if (!w.startsWith('--')) rest.push(w);
  }
  const dest = rest.pop();
  if (dest === undefined || rest.length === 0) throw new Error(`COPY needs a source and a destination: ${args}`);
  return { from, sources: rest, dest };
}

/** .dockerignore as simple patterns: name, dir/, **\/glob, *.ext; `!` re-includes. */
function ignoreMatcher(text: string): (rel: string) => boolean {
  const rules = text.split('\n').map((l) => l.trim()).filter((l) => l !== '' && !l.startsWith('#')).map((l) => {
    const negate = l.startsWith('!');
    const pattern = (negate ? l.slice(1) : l).replace(/^\/+/, '').replace(/\/+$/, '');
    const source = pattern.split('/').map((seg) => (seg === '**' ? '(?:.*/)?' : `${seg.replace(/[.+^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '[^/]*').replace(/\?/g, '[^/]')}/`)).join('');
    return { negate, re: new RegExp(`^${source.replace(/\/$/, '').replace(/\(\?:\.\*\/\)\?$/, '.*')}(?:/.*)?$`) };
  });
  return (rel) => {
    let ignored = false;
    for (const r of rules) if (r.re.test(rel)) ignored = !r.negate;
    return ignored;
  };
}

const dockerfile = await readFile(path.join(ROOT, 'Dockerfile'), 'utf8');
const stages = parseDockerfile(dockerfile);
const runtime = stages[stages.length - 1] as Stage;
const ops = (stage: Stage, op: string): Instruction[] => stage.instructions.filter((i) => i.op === op);
const ignored = ignoreMatcher(await readFile(path.join(ROOT, '.dockerignore'), 'utf8'));

describe('Dockerfile', () => {
  it('is multi-stage: a build stage runs npm ci and npm run build, the runtime stage copies its dist/', () => {
    expect(stages.length).toBeGreaterThanOrEqual(2);
    const build = stages.find((s) => ops(s, 'RUN').some((r) => r.args.includes('npm run build')));
    expect(build, 'a stage runs npm run build').toBeDefined();
    expect(build?.name).toBeDefined();
    const buildRuns = ops(build as Stage, 'RUN').map((r) => r.args);
    expect(buildRuns.some((r) => /\bnpm ci\b/.test(r) && !r.includes('--omit=dev'))).toBe(true);
    expect(build).not.toBe(runtime);
    const copies = ops(runtime, 'COPY').map((c) => parseCopy(c.args));
    expect(copies.some((c) => c.from === build?.name && c.sources.some((s) => s.replace(/\/$/, '').endsWith('dist')))).toBe(true);
    // Production dependencies only: an `npm ci --omit=dev` in the runtime stage or in the stage it copies node_modules from.
    const modules = copies.find((c) => c.sources.some((s) => s.includes('node_modules')));
    const depsStage = modules?.from === undefined ? runtime : stages.find((s) => s.name === modules.from);
    expect(depsStage, 'node_modules come from a stage').toBeDefined();
    expect(ops(depsStage as Stage, 'RUN').some((r) => /npm ci\b.*--omit=dev/.test(r.args))).toBe(true);
  });

  it('every stage is a small glibc image of a supported Node LTS the README promises (26, Debian slim: what bench/pods.mjs measures)', () => {
    expect(runtime.from).toMatch(/^(?:docker\.io\/(?:library\/)?)?node:26[\w.-]*-(?:bookworm|trixie)-slim$/);
    // Build and runtime on the same major: the bundle targets what it runs on.
    for (const s of stages) expect(s.from).toMatch(/node:26|nodejs26/);
    for (const s of stages) expect(s.from, 'pinned to a tag, never latest').toMatch(/:(?!latest$)[\w.-]+$/);
  });

  it('runs as a non-root user, numeric so Kubernetes can verify runAsNonRoot', () => {
    const users = ops(runtime, 'USER');
    expect(users.length).toBeGreaterThan(0);
    const user = (users[users.length - 1] as Instruction).args;
    expect(user).toMatch(/^[1-9]\d*(?::[1-9]\d*)?$/);
    // Nothing after USER switches back or writes to the image.
    const after = runtime.instructions.slice(runtime.instructions.indexOf(users[users.length - 1] as Instruction) + 1);
    expect(after.map((i) => i.op).filter((op) => op === 'RUN' || op === 'USER')).toEqual([]);
  });

  it('exposes the listener ports and runs `authz-sidecar serve`', () => {
    const ports = ops(runtime, 'EXPOSE').flatMap((e) => e.args.split(/\s+/)).map((p) => p.replace(/\/tcp$/, ''));
    expect(ports.sort()).toEqual(['8080', '8081', '9191', '9193', '9292']);
    const entrypoint = jsonArray((ops(runtime, 'ENTRYPOINT').pop() as Instruction).args);
    // The entrypoint script (its runtime defaults), which execs node on bin/authz-sidecar.js; copied
    // executable whatever the checkout's mode bits, with LF line ends (a CRLF script breaks /bin/sh).
    expect(entrypoint).toEqual(['/app/bin/entrypoint.sh']);
    expect(ops(runtime, 'COPY').some((c) => /--chmod=0?5[05]5\b/.test(c.args) && /\bbin\/?(\s|$)/.test(c.args))).toBe(true);
    expect(readFileSync(path.join(ROOT, '.gitattributes'), 'utf8')).toMatch(/^\*\.sh\s+text\s+eol=lf$/m);
    const cmd = jsonArray((ops(runtime, 'CMD').pop() as Instruction).args);
    expect(cmd).toEqual(['serve', '--config', '/etc/authz-sidecar/authz-sidecar.yaml']);
    expect(ops(runtime, 'WORKDIR').pop()?.args).toBe('/app');
  });

  it('bakes in no secret and writes nowhere but /tmp at run time', () => {
    for (const s of stages) {
      for (const i of [...ops(s, 'ARG'), ...ops(s, 'ENV')]) expect(i.args, `line ${i.line}`).not.toMatch(/SECRET|TOKEN|PASSWORD|PASSWD|API_?KEY|PRIVATE/i);
      for (const i of ops(s, 'COPY')) expect(i.args).not.toMatch(/\.env\b|\.pem\b|\.key\b|\.npmrc/);
    }
    expect(ops(runtime, 'VOLUME')).toEqual([]);
    for (const pattern of ['.git', 'node_modules', 'dist', 'test', 'bench', 'coverage', '.env']) expect(ignored(pattern), `.dockerignore ${pattern}`).toBe(true);
    expect(ignored('src/cli/main.ts')).toBe(false);
    expect(ignored('policies/model.conf')).toBe(false);
  });
});

describe('Dockerfile replayed without Docker', () => {
  let dir = '';
  afterAll(async () => {
    if (dir !== '') await rm(dir, { recursive: true, force: true });
  });

  it('the runtime stage, assembled in a temp dir, validates the example config and reports its version', async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'authz-image-'));
    const app = path.join(dir, 'app');
    // The runtime stage's COPYs from the build context (respecting .dockerignore); dist/ comes from the build
    // stage, which is `npm run build` on the same sources: take the dist/ built by npm test's pretest.
    const contextCopies = ops(runtime, 'COPY').map((c) => parseCopy(c.args)).filter((c) => c.from === undefined);
    expect(contextCopies.length).toBeGreaterThan(0);
    for (const copy of contextCopies) {
      for (const source of copy.sources) {
        const rel = source.replace(/\/$/, '');
        expect(ignored(rel), `${rel} is copied but .dockerignore excludes it`).toBe(false);
        // Docker semantics: a directory's contents go into dest; a file goes into dest/ (or becomes dest).
        const dest = path.join(app, copy.dest.replace(/^(?:\/app)?\/?\.?\/?/, ''));
        const isDir = (await stat(path.join(ROOT, rel))).isDirectory();
        const target = isDir || !copy.dest.endsWith('/') ? dest : path.join(dest, path.basename(rel));
        await cp(path.join(ROOT, rel), target, { recursive: true, filter: (src) => !ignored(path.relative(ROOT, src)) });
      }
    }
    const fromBuild = ops(runtime, 'COPY').map((c) => parseCopy(c.args)).find((c) => c.from !== undefined && c.sources.some((s) => s.includes('dist')));
    expect(fromBuild).toBeDefined();
    await cp(path.join(ROOT, 'dist'), path.join(app, 'dist'), { recursive: true });

    for (const expected of ['package.json', 'package-lock.json', 'bin/authz-sidecar.js', 'proto', 'policies/authz-sidecar.yaml', 'dist/cli/main.js']) {
      await stat(path.join(app, expected));
    }
    expect((await readdir(app)).sort()).toEqual(['bin', 'dist', 'package-lock.json', 'package.json', 'policies', 'proto']);

    const npm = process.platform === 'win32' ? 'npm.cmd' : 'npm';
    await run(npm, ['ci', '--omit=dev', '--ignore-scripts', '--no-audit', '--no-fund'], { cwd: app, env: { ...process.env, NODE_ENV: 'production' } });
    const modules = await readdir(path.join(app, 'node_modules'));
    for (const dev of ['typescript', 'vitest', 'eslint', 'oidc-provider']) expect(modules, `${dev} is a devDependency`).not.toContain(dev);
    for (const dep of ['fastify', 'casbin', 'jose', 'yaml']) expect(modules).toContain(dep);

    const env = { ...process.env, NODE_ENV: 'production' };
    const version = await run(process.execPath, ['bin/authz-sidecar.js', '--version'], { cwd: app, env });
    const pkg = JSON.parse(await readFile(path.join(ROOT, 'package.json'), 'utf8')) as { version: string };
    expect(version.stdout.trim()).toContain(pkg.version);
    // And as the image starts it: through its entrypoint, which execs the node on PATH.
    const viaEntrypoint = await run('sh', ['bin/entrypoint.sh', '--version'], { cwd: app, env: { ...env, PATH: `${path.dirname(process.execPath)}:${process.env.PATH ?? ''}` } });
    expect(viaEntrypoint.stdout.trim()).toContain(pkg.version);
    // Exits 0, or execFile rejects with the CLI's output.
    const validate = await run(process.execPath, ['bin/authz-sidecar.js', 'validate', '--config', 'policies/authz-sidecar.yaml'], { cwd: app, env });
    expect(validate.stderr).not.toMatch(/invalid config/);
  }, 120_000);
});
