/**
 * The optional Redis session wiring of the examples lines up (DESIGN.md §8, docs/sign-in.md "Shared sessions
 * in Redis"):
 * - deploy/kubernetes/redis-sessions (a kustomize Component), applied to the base here as kustomize would
 *   (its ConfigMap merge and JSON patches): the variable the config names is in the sidecar's environment,
 *   every secret file the config reads lies on a read-only 0400 Secret volume of the sidecar only, the
 *   config is the base's plus signIn and validates with the variable set;
 * - deploy/compose/compose.redis.yaml over compose.yaml: a redis:7-alpine service with no published port
 *   and the password the sidecars read, two replicas with the same config;
 * - and that compose flow run without Docker: the dev IdP script, a real redis-server with the demo
 *   password, two real sidecar processes with deploy/compose/authz-sidecar.redis.yaml (addresses moved to
 *   loopback ports) and a scripted browser: signed in through replica B, known to A, signed out at B,
 *   refused by A at once.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { DEFAULT_REDIS_KEY_PREFIX } from '../../src/config/defaults.js';
import { validateConfig } from '../../src/config/load.js';
import { ROOT } from '../support/cli.js';
import { startRedis, type TestRedis } from '../support/redis.js';
import { signInAtProvider, ScriptedBrowser } from '../support/scripted-browser.js';
import { startServe, type ServeProcess } from '../support/serve.js';
import { freePort, startRecordingUpstream, type RecordingUpstream } from '../support/upstream.js';

import { arr, docsOf, isObj, obj, read, str, type Obj } from '../support/yaml-docs.js';
/** The `${NAME}` references of a config text (`$${` is a literal `${`). */
const variablesOf = (text: string): string[] => [...text.matchAll(/(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)\}/g)].map((m) => m[1] as string).sort();
/** Every file the config reads from a secret: the sign-in client and cookie secrets and the Redis password. */
function secretFilesOf(config: Obj): string[] {
  const signIn = obj(config.signIn, 'signIn');
  const providers = arr(signIn.providers, 'providers').map((p) => obj(p, 'provider'));
  return [
    ...providers.flatMap((p) => (p.clientSecretFile === undefined ? [] : [str(p.clientSecretFile, 'clientSecretFile')])),
    ...arr(obj(signIn.cookie, 'cookie').secretFiles, 'secretFiles').map((f) => str(f, 'secretFile')),
    str(obj(obj(signIn.session, 'session').redis, 'redis').passwordFile, 'passwordFile'),
  ];
}
/** Copies `config` with every absolute secret path moved under `root` (the files a pod or container would mount). */
function relocated(config: Obj, root: string): Obj {
  const copy = structuredClone(config);
  const move = (p: string): string => (path.isAbsolute(p) ? path.join(root, p) : p);
  const signIn = obj(copy.signIn, 'signIn');
  for (const p of arr(signIn.providers, 'providers').map((x) => obj(x, 'provider'))) if (typeof p.clientSecretFile === 'string') p.clientSecretFile = move(p.clientSecretFile);
  const cookie = obj(signIn.cookie, 'cookie');
  cookie.secretFiles = arr(cookie.secretFiles, 'secretFiles').map((f) => move(str(f, 'secretFile')));
  const redis = obj(obj(signIn.session, 'session').redis, 'redis');
  redis.passwordFile = move(str(redis.passwordFile, 'passwordFile'));
  return copy;
}

/** RFC 6902 as kustomize applies the component's patch: test, add (with `-`), replace, remove. */
function applyJsonPatch(target: Obj, ops: unknown[]): Obj {
  const doc = structuredClone(target);
  const locate = (pointer: string): { parent: Obj | unknown[]; key: string } => {
    const parts = pointer.split('/').slice(1).map((p) => p.replace(/~1/g, '/').replace(/~0/g, '~'));
    const key = parts.pop();
    if (key === undefined) throw new Error(`bad pointer ${pointer}`);
    let node: unknown = doc;
    for (const part of parts) node = Array.isArray(node) ? node[Number(part)] : obj(node, pointer)[part];
    if (!Array.isArray(node) && !isObj(node)) throw new Error(`${pointer}: no such parent`);
    return { parent: node, key };
  };
  for (const raw of ops) {
    const op = obj(raw, 'patch op');
    const { parent, key } = locate(str(op.path, 'op.path'));
    const current = Array.isArray(parent) ? parent[Number(key)] : parent[key];
    switch (op.op) {
      case 'test':
        expect(current, `test ${String(op.path)}`).toEqual(op.value);
        break;
      case 'add':
        if (Array.isArray(parent)) parent.splice(key === '-' ? parent.length : Number(key), 0, structuredClone(op.value));
        else parent[key] = structuredClone(op.value);
        break;
      case 'replace':
        expect(current, `${String(op.path)} exists`).toBeDefined();
        if (Array.isArray(parent)) parent[Number(key)] = structuredClone(op.value);
        else parent[key] = structuredClone(op.value);
        break;
      case 'remove':
        if (Array.isArray(parent)) parent.splice(Number(key), 1);
        else delete parent[key];
        break;
      default:
        throw new Error(`unsupported patch op ${String(op.op)}`);
    }
  }
  return doc;
}

const podSpec = (deployment: Obj): Obj => obj(obj(obj(deployment.spec, 'spec').template, 'template').spec, 'pod spec');
function sidecarOf(deployment: Obj): Obj {
  const pod = podSpec(deployment);
  const found = [...arr(pod.initContainers ?? [], 'initContainers'), ...arr(pod.containers, 'containers')].map((c) => obj(c, 'container')).filter((c) => c.name === 'authz-sidecar');
  expect(found).toHaveLength(1);
  return found[0] as Obj;
}
const mountsOf = (container: Obj): Obj[] => arr(container.volumeMounts ?? [], 'volumeMounts').map((m) => obj(m, 'volumeMount'));
/** The mount (and its volume) under which `file` lies in `container`. */
function mountOf(deployment: Obj, container: Obj, file: string): { mount: Obj; volume: Obj } {
  const mount = mountsOf(container).find((m) => file.startsWith(`${str(m.mountPath, 'mountPath')}/`));
  expect(mount, `a volume mounted where ${file} lies`).toBeDefined();
  const volume = arr(podSpec(deployment).volumes, 'volumes').map((v) => obj(v, 'volume')).find((v) => v.name === mount?.name);
  expect(volume, `volume ${String(mount?.name)}`).toBeDefined();
  return { mount: mount as Obj, volume: volume as Obj };
}

// ---- Kubernetes --------------------------------------------------------------------------------------------------

const COMPONENT = 'deploy/kubernetes/redis-sessions';

describe('deploy/kubernetes/redis-sessions: the optional Redis wiring', () => {
  let component: Obj;
  let baseDeployment: Obj;
  let baseConfigMap: Obj;
  let deployment: Obj;
  let configMaps: Obj[];
  let config: Obj;
  let configText: string;
  let tmp: string;

  beforeAll(async () => {
    tmp = await mkdtemp(path.join(tmpdir(), 'authz-redis-k8s-'));
    const docs = await docsOf(`${COMPONENT}/kustomization.yaml`);
    expect(docs).toHaveLength(1);
    component = docs[0] as Obj;
    const base = (await Promise.all(['deployment.yaml', 'configmap.yaml'].map((f) => docsOf(`deploy/kubernetes/base/${f}`)))).flat();
    baseDeployment = base.find((d) => d.kind === 'Deployment') as Obj;
    baseConfigMap = base.find((d) => d.kind === 'ConfigMap') as Obj;

    // What kustomize makes of base + component: the generators (merge into the base ConfigMap, or new),
    // then the patches.
    configMaps = [structuredClone(baseConfigMap)];
    for (const raw of arr(component.configMapGenerator, 'configMapGenerator')) {
      const gen = obj(raw, 'generator');
      const data: Obj = {};
      for (const file of arr(gen.files ?? [], 'files').map((f) => str(f, 'file'))) data[path.basename(file)] = await read(`${COMPONENT}/${file}`);
      for (const literal of arr(gen.literals ?? [], 'literals').map((l) => str(l, 'literal'))) data[literal.slice(0, literal.indexOf('='))] = literal.slice(literal.indexOf('=') + 1);
      const existing = configMaps.find((c) => obj(c.metadata, 'metadata').name === gen.name);
      if (gen.behavior === 'merge') {
        expect(existing, `ConfigMap ${String(gen.name)} to merge into`).toBeDefined();
        expect(obj(existing?.metadata, 'metadata').namespace).toBe(gen.namespace);
        Object.assign(obj(existing?.data, 'data'), data);
      } else {
        expect(existing).toBeUndefined();
        configMaps.push({ apiVersion: 'v1', kind: 'ConfigMap', metadata: { name: gen.name, namespace: gen.namespace }, data });
      }
    }
    deployment = baseDeployment;
    for (const raw of arr(component.patches, 'patches')) {
      const patch = obj(raw, 'patch');
      expect(obj(patch.target, 'target')).toMatchObject({ kind: 'Deployment', name: obj(baseDeployment.metadata, 'metadata').name });
      deployment = applyJsonPatch(deployment, arr(parse(str(patch.patch, 'patch.patch')), 'patch ops'));
    }
    configText = str(obj(configMaps[0]?.data, 'data')['authz-sidecar.yaml'], 'authz-sidecar.yaml');
    config = obj(parse(configText), 'config');
  });
  afterAll(async () => {
    if (tmp !== undefined) await rm(tmp, { recursive: true, force: true });
  });

  it('is a Component that the native and classic overlays name (commented out: optional)', async () => {
    expect(component).toMatchObject({ apiVersion: 'kustomize.config.k8s.io/v1alpha1', kind: 'Component' });
    expect(component.resources).toBeUndefined();
    expect(await read('deploy/kubernetes/kustomization.yaml')).toMatch(/^# components:\n# {3}- redis-sessions$/m);
    expect(await read('deploy/kubernetes/classic/kustomization.yaml')).toMatch(/^# components:\n# {3}- \.\.\/redis-sessions$/m);
  });

  it('switches the sidecar config to the redis store with its URL from ${AUTHZ_REDIS_URL}, a password file and a key prefix of its own', () => {
    const redis = obj(obj(obj(config.signIn, 'signIn').session, 'session').redis, 'redis');
    expect(obj(obj(config.signIn, 'signIn').session, 'session').store).toBe('redis');
    expect(redis.url).toBe('${AUTHZ_REDIS_URL}');
    expect(redis.passwordFile).toBe('/var/run/secrets/redis/password');
    expect(str(redis.keyPrefix, 'keyPrefix')).toMatch(/^[a-z0-9-]+:$/);
    expect(redis.keyPrefix).not.toBe(DEFAULT_REDIS_KEY_PREFIX);
    expect(variablesOf(configText)).toEqual(['AUTHZ_REDIS_URL']);
  });

  it("is the base config plus signIn: nothing else differs from base/configmap.yaml's", () => {
    const base = obj(parse(str(obj(baseConfigMap.data, 'data')['authz-sidecar.yaml'], 'base config')), 'base config');
    expect(base.signIn).toBeUndefined();
    const { signIn: _signIn, ...rest } = config;
    expect(rest).toEqual(base);
    // model.conf and policy.csv stay the base's.
    expect(Object.keys(obj(configMaps[0]?.data, 'data')).sort()).toEqual(Object.keys(obj(baseConfigMap.data, 'data')).sort());
  });

  it('gives the sidecar every variable the config names, from the generated ConfigMap, holding a redis URL', () => {
    const sidecar = sidecarOf(deployment);
    // `add .../env` would replace a list the base had: the base's sidecar has none.
    expect(sidecarOf(baseDeployment).env).toBeUndefined();
    const env = arr(sidecar.env, 'env').map((e) => obj(e, 'env'));
    for (const name of variablesOf(configText)) {
      const entry = env.find((e) => e.name === name);
      expect(entry, `env ${name}`).toBeDefined();
      const ref = obj(obj(entry?.valueFrom, 'valueFrom').configMapKeyRef, 'configMapKeyRef');
      const source = configMaps.find((c) => obj(c.metadata, 'metadata').name === ref.name);
      expect(source, `ConfigMap ${String(ref.name)}`).toBeDefined();
      expect(str(obj(source?.data, 'data')[str(ref.key, 'key')], `${String(ref.name)}.${String(ref.key)}`)).toMatch(/^rediss?:\/\/[^/\s]+\/\d+$/);
    }
    // Only the sidecar gets it.
    for (const c of arr(podSpec(deployment).containers, 'containers').map((x) => obj(x, 'container'))) expect(c.env, `${String(c.name)} env`).toBeUndefined();
  });

  it('mounts a Secret, read-only with mode 0400 and the key named, wherever the config reads a secret file, into the sidecar only', () => {
    const sidecar = sidecarOf(deployment);
    const files = secretFilesOf(config);
    expect(files).toHaveLength(3);
    const secretVolumes = new Set<string>();
    for (const file of files) {
      const { mount, volume } = mountOf(deployment, sidecar, file);
      expect(mount.readOnly, `${file} read-only`).toBe(true);
      const secret = obj(volume.secret, `volume ${String(volume.name)}: a Secret`);
      expect(secret.defaultMode, `${file} mode`).toBe(0o400);
      const items = arr(secret.items, 'items').map((i) => obj(i, 'item'));
      expect(items.map((i) => i.path), `${file} is a key of ${String(secret.secretName)}`).toContain(path.relative(str(mount.mountPath, 'mountPath'), file));
      secretVolumes.add(str(volume.name, 'volume name'));
    }
    const redisVolume = mountOf(deployment, sidecar, '/var/run/secrets/redis/password').volume;
    expect(obj(redisVolume.secret, 'secret')).toMatchObject({ secretName: 'authz-sidecar-redis', items: [{ key: 'password', path: 'password' }] });
    for (const c of arr(podSpec(deployment).containers, 'containers').map((x) => obj(x, 'container'))) {
      expect(mountsOf(c).filter((m) => secretVolumes.has(String(m.name))), `${String(c.name)} mounts a sign-in Secret`).toEqual([]);
    }
  });

  it("leaves the base's containers, probes and resources as measured (bench/pods.mjs), and validates against the Kubernetes schemas", async () => {
    const strip = (c: Obj): Obj => {
      const { env: _env, volumeMounts, ...rest } = c;
      return { ...rest, volumeMounts: arr(volumeMounts, 'volumeMounts').filter((m) => !String(obj(m, 'mount').mountPath).startsWith('/var/run/secrets/')) };
    };
    expect(strip(sidecarOf(deployment))).toEqual(strip(sidecarOf(baseDeployment)));
    expect(podSpec(deployment).containers).toEqual(podSpec(baseDeployment).containers);
    const { Deployment } = await import('kubernetes-models/apps/v1');
    const { ConfigMap } = await import('kubernetes-models/v1');
    expect(() => new Deployment(deployment as never).validate()).not.toThrow();
    for (const c of configMaps) expect(() => new ConfigMap(c as never).validate()).not.toThrow();
  });

  it('its config validates with AUTHZ_REDIS_URL set, laid out as the pod mounts it, and names the variable without it', async () => {
    const dir = path.join(tmp, 'etc/authz-sidecar');
    await mkdir(path.join(dir, 'config'), { recursive: true });
    await mkdir(path.join(dir, 'keys'), { recursive: true });
    for (const [k, v] of Object.entries(obj(configMaps[0]?.data, 'data'))) await writeFile(path.join(dir, 'config', k), str(v, k));
    const keys = (await docsOf('deploy/kubernetes/base/secret.yaml'))[0] as Obj;
    for (const [k, v] of Object.entries(obj(keys.stringData, 'stringData'))) await writeFile(path.join(dir, 'keys', k), str(v, k));
    // The Secrets created out of band.
    for (const file of secretFilesOf(config)) {
      await mkdir(path.dirname(path.join(tmp, file)), { recursive: true });
      await writeFile(path.join(tmp, file), `${randomBytes(48).toString('base64')}\n`);
    }
    const file = path.join(dir, 'config', 'authz-sidecar.yaml');
    const url = str(obj(configMaps.find((c) => obj(c.metadata, 'metadata').name === 'authz-sidecar-redis')?.data, 'data').url, 'url');
    const loaded = await validateConfig(relocated(config, tmp), file, { AUTHZ_REDIS_URL: url });
    expect(loaded.signIn?.session).toMatchObject({ store: 'redis', redis: { url, keyPrefix: 'orders:', passwordFile: path.join(tmp, '/var/run/secrets/redis/password') } });
    await expect(validateConfig(relocated(config, tmp), file, {})).rejects.toThrow(/environment variable AUTHZ_REDIS_URL is not set/);
  });
});

// ---- Compose -----------------------------------------------------------------------------------------------------

const COMPOSE_DIR = path.join(ROOT, 'deploy/compose');

describe('deploy/compose/compose.redis.yaml: the shared store demo', () => {
  let base: Record<string, Obj>;
  let override: Obj;
  let services: Record<string, Obj>;
  let configText: string;
  let config: Obj;

  beforeAll(async () => {
    const services_ = (doc: Obj): Record<string, Obj> => Object.fromEntries(Object.entries(obj(doc.services, 'services')).map(([k, v]) => [k, obj(v, k)]));
    base = services_(((await docsOf('deploy/compose/compose.yaml'))[0]) as Obj);
    override = (await docsOf('deploy/compose/compose.redis.yaml'))[0] as Obj;
    services = services_(override);
    configText = await read('deploy/compose/authz-sidecar.redis.yaml');
    config = obj(parse(configText), 'config');
  });

  /** The override's sidecar merged over compose.yaml's, as compose merges them (lists appended, maps merged). */
  const sidecarA = (): Obj => {
    const a = base.sidecar as Obj;
    const o = services.sidecar as Obj;
    return {
      ...a,
      ...o,
      ports: [...arr(a.ports ?? [], 'ports'), ...arr(o.ports ?? [], 'ports')],
      volumes: [...arr(a.volumes ?? [], 'volumes'), ...arr(o.volumes ?? [], 'volumes')],
      environment: { ...obj(a.environment ?? {}, 'environment'), ...obj(o.environment ?? {}, 'environment') },
    };
  };
  const replicas = (): Array<[string, Obj]> => [['sidecar', sidecarA()], ['sidecar-b', services['sidecar-b'] as Obj]];

  it('adds redis:7-alpine with no published port, not as root, read-only, without capabilities or persistence', () => {
    const redis = services.redis as Obj;
    expect(redis.image).toBe('redis:7-alpine');
    expect(redis.ports).toBeUndefined();
    expect(redis.network_mode).toBeUndefined();
    expect(str(redis.user, 'user')).not.toMatch(/^(0|root)(:|$)/);
    expect(redis.read_only).toBe(true);
    expect(redis.cap_drop).toEqual(['ALL']);
    const command = arr(redis.command, 'command').join(' ');
    expect(command).toContain('--save ""');
    expect(command).toContain('--appendonly no');
    expect(Object.keys(base)).not.toContain('redis');
  });

  it('runs two replicas of the same image and config, each on the ports its environment names, published by the sidecar service', () => {
    const published = arr(sidecarA().ports, 'ports').map((p) => str(p, 'port'));
    const b = services['sidecar-b'] as Obj;
    expect(b.image).toBe(base.sidecar?.image);
    expect(b.network_mode).toBe('service:sidecar');
    expect(b.ports).toBeUndefined();
    for (const [name, svc] of replicas()) {
      const command = arr(svc.command, `${name}.command`).map((c) => str(c, 'arg'));
      expect(command).toEqual(['serve', '--config', '/etc/authz-sidecar/authz-sidecar.redis.yaml']);
      const volumes = arr(svc.volumes, `${name}.volumes`).map((v) => str(v, 'volume'));
      expect(volumes).toContain('./authz-sidecar.redis.yaml:/etc/authz-sidecar/authz-sidecar.redis.yaml:ro');
      expect(volumes).toContain('../../policies:/etc/authz-sidecar/policies:ro');
      const env = obj(svc.environment, `${name}.environment`);
      for (const v of variablesOf(configText)) expect(env[v], `${name}: ${v}`).toBeDefined();
      for (const key of ['AUTHZ_LISTEN', 'AUTHZ_ADMIN_LISTEN']) {
        const port = str(env[key], key).split(':')[1];
        expect(published, `${name} ${key}`).toContain(`${port}:${port}`);
      }
      expect(svc.read_only).toBe(true);
      expect(svc.cap_drop).toEqual(['ALL']);
      expect(svc.user).toBe('65532:65532');
    }
  });

  it('points both replicas at the redis service, with the password redis requires as their passwordFile', async () => {
    const redisConfig = obj(obj(obj(config.signIn, 'signIn').session, 'session').redis, 'redis');
    expect(obj(obj(config.signIn, 'signIn').session, 'session').store).toBe('redis');
    expect(redisConfig.url).toBe('${AUTHZ_REDIS_URL}');
    expect(str(redisConfig.keyPrefix, 'keyPrefix')).toMatch(/:$/);
    const secret = str(redisConfig.passwordFile, 'passwordFile');
    const name = path.basename(secret);
    expect(secret).toBe(`/run/secrets/${name}`);
    for (const [svcName, svc] of [...replicas(), ['redis', services.redis as Obj] as [string, Obj]]) {
      expect(arr(svc.secrets, `${svcName}.secrets`), `${svcName} gets the secret`).toContain(name);
    }
    for (const [, svc] of replicas()) expect(new URL(str(obj(svc.environment, 'environment').AUTHZ_REDIS_URL, 'AUTHZ_REDIS_URL')).hostname).toBe('redis');
    expect(arr(services.redis?.command, 'command').join(' ')).toContain(`--requirepass "$$(cat ${secret})"`);
    const file = str(obj(obj(override.secrets, 'secrets')[name], name).file, 'secret file');
    expect((await readFile(path.join(COMPOSE_DIR, file), 'utf8')).trim()).not.toBe('');
  });

  it('its config validates with the environment compose gives replica A, laid out as compose mounts it', async () => {
    const dir = await mkdtemp(path.join(tmpdir(), 'authz-redis-compose-'));
    try {
      const file = path.join(dir, 'etc/authz-sidecar/authz-sidecar.redis.yaml');
      await mkdir(path.dirname(file), { recursive: true });
      // ../../policies:/etc/authz-sidecar/policies:ro
      await symlink(path.join(ROOT, 'policies'), path.join(path.dirname(file), 'policies'));
      // Only the Redis password is absolute (the compose secret); the demo secrets are under policies/.
      const moved = relocated(config, dir);
      await mkdir(path.join(dir, 'run/secrets'), { recursive: true });
      await writeFile(path.join(dir, 'run/secrets/redis-password'), await readFile(path.join(COMPOSE_DIR, 'redis-password')));
      const env = Object.fromEntries(Object.entries(obj(sidecarA().environment, 'environment')).map(([k, v]) => [k, String(v)]));
      const loaded = await validateConfig(moved, file, env);
      expect(loaded.listen).toBe('0.0.0.0:8080');
      expect(loaded.signIn?.session.redis?.url).toBe('redis://redis:6379/0');
      expect(loaded.signIn?.allowedRedirectHosts).toEqual(['localhost:8082']);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it("the dev IdP's browser client is the one the config names, with the demo's client secret", async () => {
    const idp = await readFile(path.join(COMPOSE_DIR, 'idp/server.mjs'), 'utf8');
    const provider = obj(arr(obj(config.signIn, 'signIn').providers, 'providers')[0], 'provider');
    expect(idp).toContain(`client_id: '${str(provider.clientId, 'clientId')}'`);
    const secret = (await readFile(path.join(ROOT, 'policies/demo/client-secret'), 'utf8')).trim();
    expect(idp).toContain(`process.env.WEB_CLIENT_SECRET ?? '${secret}'`);
    expect(provider.clientSecretFile).toBe('./policies/demo/client-secret');
  });
});

// ---- The compose flow, without Docker ----------------------------------------------------------------------------

describe('the compose Redis flow: two sidecar processes sharing a real redis-server', () => {
  let idp: ChildProcess | undefined;
  let redis: TestRedis | undefined;
  let upstream: RecordingUpstream | undefined;
  const sidecars: ServeProcess[] = [];
  let dir = '';
  let originA = '';
  let originB = '';
  let idpUrl = '';

  async function waitFor(what: string, check: () => Promise<boolean>): Promise<void> {
    const deadline = Date.now() + 15_000;
    while (!(await check().catch(() => false))) {
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  beforeAll(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'authz-redis-flow-'));
    const password = (await readFile(path.join(COMPOSE_DIR, 'redis-password'), 'utf8')).trim();
    redis = await startRedis({ password });
    upstream = await startRecordingUpstream();
    const [idpPort, portA, portB] = [await freePort(), await freePort(), await freePort()];
    idpUrl = `http://127.0.0.1:${idpPort}`;
    originA = `http://127.0.0.1:${portA}`;
    originB = `http://127.0.0.1:${portB}`;
    idp = spawn(process.execPath, [path.join(COMPOSE_DIR, 'idp/server.mjs')], {
      env: { ...process.env, ISSUER: idpUrl, PORT: String(idpPort), HOST: '127.0.0.1', WEB_ORIGIN: originA },
      stdio: 'ignore',
    });
    await waitFor('the dev IdP', async () => (await fetch(`${idpUrl}/.well-known/openid-configuration`)).status === 200);

    const shipped = await read('deploy/compose/authz-sidecar.redis.yaml');
    const text = shipped
      .replace('http://127.0.0.1:3000', str(upstream.url, 'upstream'))
      .replaceAll('http://localhost:8090', idpUrl)
      .replaceAll('http://localhost:8080', originA)
      .replace('[localhost:8082]', `[127.0.0.1:${portB}]`)
      .replaceAll('./policies/', `${path.join(ROOT, 'policies')}/`)
      .replace('/run/secrets/redis-password', path.join(COMPOSE_DIR, 'redis-password'));
    await writeFile(path.join(dir, 'authz-sidecar.redis.yaml'), text);
    for (const [listen, origin] of [[`127.0.0.1:${portA}`, originA], [`127.0.0.1:${portB}`, originB]] as const) {
      const sidecar = await startServe({
        config: path.join(dir, 'authz-sidecar.redis.yaml'),
        env: { AUTHZ_LISTEN: listen, AUTHZ_ADMIN_LISTEN: '127.0.0.1:0', AUTHZ_REDIS_URL: redis.url },
      });
      expect(sidecar.url).toBe(origin);
      sidecars.push(sidecar);
    }
  }, 60_000);

  afterAll(async () => {
    for (const s of sidecars) await s.stop();
    if (idp !== undefined && idp.exitCode === null) {
      const exited = new Promise((r) => idp?.once('exit', r));
      idp.kill('SIGTERM');
      await exited;
    }
    await upstream?.close();
    await redis?.close();
    if (dir !== '') await rm(dir, { recursive: true, force: true });
  });

  it('both replicas are ready with the redis store up', async () => {
    for (const s of sidecars) {
      const res = await fetch(`${s.adminUrl}/readyz`);
      expect(res.status).toBe(200);
      expect(((await res.json()) as Obj).sessionStore).toEqual({ store: 'redis', up: true });
    }
  });

  it('signs in through replica B, is known to replica A, and a sign-out at B is refused by A at once', async () => {
    const browser = new ScriptedBrowser();
    try {
      const first = await browser.get(`${originB}/orders/42`);
      // B sends the browser to sign in on A's origin, with the way back to B.
      expect(first.hops[1]?.url).toBe(`${originA}/.authz/start?rd=${encodeURIComponent(`${originB}/orders/42`)}`);
      const { page } = await signInAtProvider(browser, first, { login: 'alice' });
      expect(page.url).toBe(`${originB}/orders/42`);
      expect(page.status).toBe(200);
      expect(upstream?.requests.at(-1)?.headers['x-auth-subject']).toBe('alice');
      expect(upstream?.requests.at(-1)?.headers['x-auth-roles']).toBe('reader');
      const ticket = browser.cookies.all().find((c) => c.name === 'authz')?.value ?? '';
      expect(ticket).toMatch(/^[A-Za-z0-9_-]{22}\.[A-Za-z0-9_-]{43}$/);
      const keys = [...(await (redis as TestRedis).dump()).keys()];
      expect(keys).toContain(`orders:session:${ticket.split('.')[0] ?? ''}`);
      expect(keys.every((k) => k.startsWith('orders:'))).toBe(true);

      const asA = (): Promise<Response> => fetch(`${originA}/orders/42`, { headers: { cookie: `authz=${ticket}`, accept: 'application/json' } });
      expect((await asA()).status).toBe(200);
      expect((await browser.get(`${originA}/orders/42`)).status).toBe(200);

      const out = await browser.get(`${originB}/.authz/sign-out`, { stopBefore: idpUrl });
      expect(out.redirectNotFollowed?.url).toMatch(new RegExp(`^${idpUrl}/`));
      expect(browser.cookies.all().find((c) => c.name === 'authz')).toBeUndefined();
      // A copy of the cookie is nothing at A now.
      expect((await asA()).status).toBe(401);
    } finally {
      await browser.close();
    }
  });
});
