/**
 * Validation of the shipped deployment files without a cluster: every YAML document in deploy/kubernetes,
 * deploy/istio and deploy/compose parses; the Kubernetes objects have the fields their kinds require; the
 * security settings of the issue hold on every container; and every example config that ships passes the
 * real `authz-sidecar validate` (the config files are laid out as the pod would see them).
 */
import { execFile } from 'node:child_process';
import { mkdtemp, mkdir, readdir, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseAllDocuments } from 'yaml';
import { arr, isObj, obj, str, type Obj } from '../support/yaml-docs.js';

const run = promisify(execFile);
const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const CLI = path.join(ROOT, 'bin/authz-sidecar.js');
const K8S_ROOT = path.join(ROOT, 'deploy/kubernetes');
/** The base the overlays include (deploy/kubernetes itself and classic/). */
const K8S_DIR = path.join(K8S_ROOT, 'base');
const ISTIO_DIR = path.join(ROOT, 'deploy/istio');
const COMPOSE_FILE = path.join(ROOT, 'deploy/compose/compose.yaml');

interface Doc { file: string; index: number; value: Obj }

async function yamlFiles(dir: string): Promise<string[]> {
  return (await readdir(dir)).filter((f) => /\.ya?ml$/.test(f)).sort().map((f) => path.join(dir, f));
}

async function parseFile(file: string): Promise<Doc[]> {
  const docs = parseAllDocuments(await readFile(file, 'utf8'), { prettyErrors: true });
  const out: Doc[] = [];
  for (const [index, doc] of docs.entries()) {
    if (doc.errors.length > 0) throw new Error(`${file} document ${index}: ${doc.errors.map((e) => e.message).join('; ')}`);
    if (doc.warnings.length > 0) throw new Error(`${file} document ${index}: ${doc.warnings.map((e) => e.message).join('; ')}`);
    const value: unknown = doc.toJS();
    if (value === null || value === undefined) continue;
    out.push({ file, index, value: obj(value, `${file} document ${index}`) });
  }
  return out;
}

/** apiVersion per kind for every kind the deploy folders may use. */
const KNOWN_KINDS: Record<string, string[]> = {
  Namespace: ['v1'],
  ConfigMap: ['v1'],
  Secret: ['v1'],
  Service: ['v1'],
  ServiceAccount: ['v1'],
  Deployment: ['apps/v1'],
  NetworkPolicy: ['networking.k8s.io/v1'],
  PodDisruptionBudget: ['policy/v1'],
  Kustomization: ['kustomize.config.k8s.io/v1beta1'],
  AuthorizationPolicy: ['security.istio.io/v1', 'security.istio.io/v1beta1'],
  ServiceEntry: ['networking.istio.io/v1', 'networking.istio.io/v1beta1'],
  IstioOperator: ['install.istio.io/v1alpha1'],
};
const NAME_RE = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;
const NAMELESS_KINDS = new Set(['Kustomization', 'IstioOperator']);

function validateStructure(doc: Doc): void {
  const where = `${path.relative(ROOT, doc.file)}#${doc.index}`;
  const v = doc.value;
  const kind = str(v.kind, `${where} kind`);
  const apiVersion = str(v.apiVersion, `${where} apiVersion`);
  expect(KNOWN_KINDS[kind], `${where}: unknown kind ${kind}`).toBeDefined();
  expect(KNOWN_KINDS[kind], `${where}: apiVersion of ${kind}`).toContain(apiVersion);
  if (!NAMELESS_KINDS.has(kind)) {
    const name = str(obj(v.metadata, `${where} metadata`).name, `${where} metadata.name`);
    expect(name, `${where} metadata.name`).toMatch(NAME_RE);
  }
  const spec = (): Obj => obj(v.spec, `${where} spec`);
  switch (kind) {
    case 'ConfigMap':
      for (const [k, val] of Object.entries(obj(v.data, `${where} data`))) expect(typeof val, `${where} data.${k}`).toBe('string');
      break;
    case 'Secret': {
      expect(v.data ?? v.stringData, `${where} data or stringData`).toBeDefined();
      for (const [k, val] of Object.entries(obj(v.stringData ?? {}, `${where} stringData`))) expect(typeof val, `${where} stringData.${k}`).toBe('string');
      for (const [k, val] of Object.entries(obj(v.data ?? {}, `${where} data`))) expect(str(val, `${where} data.${k}`)).toMatch(/^[A-Za-z0-9+/=]*$/);
      break;
    }
    case 'Deployment': {
      const s = spec();
      const selector = obj(obj(s.selector, `${where} spec.selector`).matchLabels, `${where} spec.selector.matchLabels`);
      const template = obj(s.template, `${where} spec.template`);
      const labels = obj(obj(template.metadata, `${where} template.metadata`).labels, `${where} template labels`);
      for (const [k, val] of Object.entries(selector)) expect(labels[k], `${where}: template label ${k} matches the selector`).toBe(val);
      const pod = obj(template.spec, `${where} template.spec`);
      const containers = [...arr(pod.initContainers ?? [], 'initContainers'), ...arr(pod.containers, `${where} containers`)];
      expect(arr(pod.containers, 'containers').length).toBeGreaterThan(0);
      const volumeNames = new Set(arr(pod.volumes ?? [], 'volumes').map((vol) => str(obj(vol, 'volume').name, 'volume.name')));
      for (const c of containers.map((c) => obj(c, `${where} container`))) {
        str(c.name, `${where} container.name`);
        str(c.image, `${where} ${String(c.name)}.image`);
        for (const p of arr(c.ports ?? [], 'ports')) {
          const port = obj(p, 'port').containerPort;
          expect(Number.isInteger(port) && (port as number) > 0 && (port as number) < 65536, `${where} containerPort ${String(port)}`).toBe(true);
        }
        for (const m of arr(c.volumeMounts ?? [], 'volumeMounts')) {
          const mount = obj(m, 'volumeMount');
          expect(volumeNames.has(str(mount.name, 'volumeMount.name')), `${where}: volumeMount ${String(mount.name)} has a volume`).toBe(true);
          expect(str(mount.mountPath, 'mountPath')).toMatch(/^\//);
        }
      }
      break;
    }
    case 'Service': {
      const s = spec();
      obj(s.selector, `${where} spec.selector`);
      for (const p of arr(s.ports, `${where} spec.ports`)) {
        const port = obj(p, 'port');
        expect(Number.isInteger(port.port), `${where} port`).toBe(true);
        expect(port.targetPort, `${where} targetPort`).toBeDefined();
      }
      break;
    }
    case 'NetworkPolicy': {
      const s = spec();
      obj(s.podSelector, `${where} spec.podSelector`);
      for (const t of arr(s.policyTypes ?? ['Ingress'], 'policyTypes')) expect(['Ingress', 'Egress']).toContain(t);
      break;
    }
    case 'Kustomization':
      arr(v.resources, `${where} resources`);
      break;
    case 'AuthorizationPolicy':
      expect(['ALLOW', 'DENY', 'AUDIT', 'CUSTOM']).toContain(spec().action ?? 'ALLOW');
      break;
    default:
      break;
  }
}

let k8sDocs: Doc[] = [];
let istioDocs: Doc[] = [];
let tmp = '';

const byKind = (docs: Doc[], kind: string): Obj[] => docs.filter((d) => d.value.kind === kind).map((d) => d.value);
function one(docs: Doc[], kind: string): Obj {
  const found = byKind(docs, kind);
  expect(found, `exactly one ${kind}`).toHaveLength(1);
  return found[0] as Obj;
}
function podSpec(deployment: Obj): Obj {
  return obj(obj(obj(deployment.spec, 'spec').template, 'template').spec, 'pod spec');
}
function containersOf(pod: Obj): { init: Obj[]; main: Obj[] } {
  return {
    init: arr(pod.initContainers ?? [], 'initContainers').map((c) => obj(c, 'container')),
    main: arr(pod.containers, 'containers').map((c) => obj(c, 'container')),
  };
}

async function validateConfig(config: string): Promise<{ code: number; out: string }> {
  try {
    const { stdout, stderr } = await run(process.execPath, [CLI, 'validate', '--config', config], { cwd: ROOT });
    return { code: 0, out: stdout + stderr };
  } catch (err) {
    const e = err as { code?: number; stdout?: string; stderr?: string };
    return { code: e.code ?? -1, out: `${e.stdout ?? ''}${e.stderr ?? ''}` };
  }
}

/** Writes a ConfigMap's or Secret's keys into dir, as the kubelet's volume would. */
async function materialize(source: Obj, dir: string): Promise<void> {
  await mkdir(dir, { recursive: true });
  for (const [k, val] of Object.entries(obj(source.data ?? {}, 'data'))) {
    const text = source.kind === 'Secret' ? Buffer.from(str(val, k), 'base64').toString('utf8') : str(val, k);
    await writeFile(path.join(dir, k), text);
  }
  for (const [k, val] of Object.entries(obj(source.stringData ?? {}, 'stringData'))) await writeFile(path.join(dir, k), str(val, k));
}

/** The container-level lockdown of the issue, on one container. */
function checkContainerLeastPrivilege(c: Obj, podSc: Obj): void {
  const name = String(c.name);
  const sc = obj(c.securityContext, `${name} securityContext`);
  expect(sc.runAsNonRoot ?? podSc.runAsNonRoot, `${name} runAsNonRoot`).toBe(true);
  expect(sc.readOnlyRootFilesystem, `${name} readOnlyRootFilesystem`).toBe(true);
  expect(sc.allowPrivilegeEscalation, `${name} allowPrivilegeEscalation`).toBe(false);
  expect(obj(sc.capabilities, 'capabilities').drop, `${name} drops ALL`).toEqual(['ALL']);
  expect(obj(sc.capabilities, 'capabilities').add, `${name} adds no capability`).toBeUndefined();
  expect(sc.privileged ?? false, `${name} privileged`).toBe(false);
  const user = sc.runAsUser ?? podSc.runAsUser;
  if (user !== undefined) expect(user, `${name} runAsUser`).not.toBe(0);
}

/** Every container of the pod locked down, seccomp RuntimeDefault, no service-account token. */
function checkPodLeastPrivilege(pod: Obj): void {
  const podSc = obj(pod.securityContext, 'pod securityContext');
  expect(podSc.seccompProfile).toEqual({ type: 'RuntimeDefault' });
  expect(podSc.runAsNonRoot).toBe(true);
  expect(pod.automountServiceAccountToken).toBe(false);
  expect(pod.hostNetwork ?? false).toBe(false);
  expect(pod.hostPID ?? false).toBe(false);
  const { init, main } = containersOf(pod);
  for (const c of [...init, ...main]) checkContainerLeastPrivilege(c, podSc);
}

/** Secret volumes exist, name Secrets that ship, and are mounted (read-only) into authz-sidecar only. */
function checkSecretOnlyInSidecar(pod: Obj, docs: Doc[] = k8sDocs): void {
  const volumes = arr(pod.volumes, 'volumes').map((v) => obj(v, 'volume'));
  const secretVolumes = new Set(volumes.filter((v) => v.secret !== undefined || v.projected !== undefined).map((v) => v.name));
  expect(secretVolumes.size).toBeGreaterThan(0);
  const secretNames = byKind(docs, 'Secret').map((s) => obj(s.metadata, 'metadata').name);
  for (const v of volumes.filter((v) => v.secret !== undefined)) expect(secretNames).toContain(obj(v.secret, 'secret').secretName);
  const { init, main } = containersOf(pod);
  for (const c of [...init, ...main]) {
    const mounts = arr(c.volumeMounts ?? [], 'volumeMounts').map((m) => obj(m, 'mount'));
    expect(mounts.some((m) => secretVolumes.has(m.name)), `${String(c.name)} mounts the Secret`).toBe(c.name === 'authz-sidecar');
    for (const m of mounts.filter((m) => secretVolumes.has(m.name))) expect(m.readOnly).toBe(true);
    for (const e of arr(c.envFrom ?? [], 'envFrom')) expect(obj(e, 'envFrom').secretRef, `${String(c.name)} envFrom a Secret`).toBeUndefined();
    for (const e of arr(c.env ?? [], 'env')) expect(obj(obj(e, 'env').valueFrom ?? {}, 'valueFrom').secretKeyRef, `${String(c.name)} env from a Secret`).toBeUndefined();
  }
}

beforeAll(async () => {
  k8sDocs = (await Promise.all((await yamlFiles(K8S_DIR)).map(parseFile))).flat();
  istioDocs = (await Promise.all((await yamlFiles(ISTIO_DIR)).map(parseFile))).flat();
  tmp = await mkdtemp(path.join(tmpdir(), 'authz-deploy-'));
});
afterAll(async () => {
  if (tmp !== '') await rm(tmp, { recursive: true, force: true });
});

describe('deploy manifests parse and are structurally valid', () => {
  it('finds the Kubernetes and Istio manifests', () => {
    expect(k8sDocs.length).toBeGreaterThanOrEqual(6);
    expect(istioDocs.length).toBeGreaterThanOrEqual(3);
  });

  it('every Kubernetes and Istio object has a known kind, apiVersion, name and the fields its kind requires', () => {
    for (const doc of [...k8sDocs, ...istioDocs]) validateStructure(doc);
  });

  it('every core Kubernetes object validates against the Kubernetes OpenAPI schemas (kubernetes-models)', async () => {
    const models: Record<string, () => Promise<new (data: unknown) => { validate(): void }>> = {
      'v1/Namespace': async () => (await import('kubernetes-models/v1')).Namespace as never,
      'v1/ConfigMap': async () => (await import('kubernetes-models/v1')).ConfigMap as never,
      'v1/Secret': async () => (await import('kubernetes-models/v1')).Secret as never,
      'v1/Service': async () => (await import('kubernetes-models/v1')).Service as never,
      'apps/v1/Deployment': async () => (await import('kubernetes-models/apps/v1')).Deployment as never,
      'networking.k8s.io/v1/NetworkPolicy': async () => (await import('kubernetes-models/networking.k8s.io/v1')).NetworkPolicy as never,
    };
    let validated = 0;
    for (const doc of [...k8sDocs, ...istioDocs]) {
      const load = models[`${String(doc.value.apiVersion)}/${String(doc.value.kind)}`];
      if (load === undefined) continue; // Kustomization, IstioOperator, AuthorizationPolicy: not core kinds
      const Model = await load();
      expect(() => new Model(doc.value).validate(), `${doc.file} document ${doc.index}`).not.toThrow();
      validated++;
    }
    expect(validated).toBeGreaterThanOrEqual(7);
    // The validator is not lenient: a wrong type fails.
    const { Deployment } = await import('kubernetes-models/apps/v1');
    expect(() => new Deployment({ metadata: { name: 'x' }, spec: { replicas: 'two' as unknown as number, selector: {}, template: {} } }).validate()).toThrow();
  });

  it('deploy/kubernetes and classic/ are overlays of base/, never of a folder that contains them (kustomize refuses that cycle)', async () => {
    const root = (await parseFile(path.join(K8S_ROOT, 'kustomization.yaml')))[0]?.value;
    expect(root?.resources).toEqual(['base']);
    const classic = (await parseFile(path.join(K8S_ROOT, 'classic/kustomization.yaml')))[0]?.value;
    for (const overlay of [{ dir: K8S_ROOT, k: root }, { dir: path.join(K8S_ROOT, 'classic'), k: classic }]) {
      for (const resource of arr(overlay.k?.resources, 'resources').map((r) => str(r, 'resource'))) {
        const target = path.resolve(overlay.dir, resource);
        // A resource folder that contains the overlay's own folder is the cycle kustomize refuses.
        expect(overlay.dir.startsWith(`${target}${path.sep}`) || overlay.dir === target, `${overlay.dir} includes ${resource}`).toBe(false);
      }
    }
  });

  it('base/kustomization.yaml lists every other manifest in deploy/kubernetes/base, and only existing ones', async () => {
    const kustomization = one(k8sDocs, 'Kustomization');
    const listed = arr(kustomization.resources, 'resources').map((r) => str(r, 'resource')).sort();
    const files = (await yamlFiles(K8S_DIR)).map((f) => path.basename(f)).filter((f) => f !== 'kustomization.yaml');
    expect(listed).toEqual(files);
    const namespace = str(kustomization.namespace, 'namespace');
    for (const doc of k8sDocs.filter((d) => d.value.kind !== 'Kustomization' && d.value.kind !== 'Namespace')) {
      expect(obj(doc.value.metadata, 'metadata').namespace ?? namespace, `${doc.file} namespace`).toBe(namespace);
    }
  });
});

describe('deploy/istio', () => {
  it('the ext_authz Deployment runs every container locked down, with probes on the admin port', () => {
    for (const deployment of byKind(istioDocs, 'Deployment')) {
      const pod = podSpec(deployment);
      const { init, main } = containersOf(pod);
      for (const c of [...init, ...main]) {
        checkContainerLeastPrivilege(c, obj(pod.securityContext ?? {}, 'pod securityContext'));
        expect(obj(obj(c.resources, 'resources').limits, 'limits').memory).toBeDefined();
        if (c.name !== 'authz-sidecar') continue;
        expect(obj(obj(c.readinessProbe, 'readinessProbe').httpGet, 'httpGet')).toMatchObject({ path: '/readyz', port: 8081 });
        expect(obj(obj(c.livenessProbe, 'livenessProbe').httpGet, 'httpGet')).toMatchObject({ path: '/healthz', port: 8081 });
      }
    }
  });

  describe('per pod (deploy/istio/per-pod.yaml)', () => {
    const perPod = (): Doc[] => istioDocs.filter((d) => d.file.endsWith('per-pod.yaml'));
    const deployment = (): Obj => one(perPod(), 'Deployment');

    it('runs authz-sidecar as a native sidecar beside the app, locked down, the Secret in the sidecar only', () => {
      const pod = podSpec(deployment());
      const { init, main } = containersOf(pod);
      expect(init.map((c) => [c.name, c.restartPolicy])).toEqual([['authz-sidecar', 'Always']]);
      expect(main.map((c) => c.name)).toEqual(['app']);
      checkPodLeastPrivilege(pod);
      checkSecretOnlyInSidecar(pod, perPod());
    });

    it("wires the pod's own sidecar: gRPC door on 127.0.0.1, the ServiceEntry, the provider and the policy agree", async () => {
      const config = parseAllDocuments(str(obj(one(perPod(), 'ConfigMap').data, 'data')['authz-sidecar.yaml'], 'config'))[0]?.toJS() as Obj;
      const grpcListen = str(obj(obj(config.extAuthz, 'extAuthz').grpc, 'grpc').listen, 'grpc.listen');
      expect(grpcListen).toMatch(/^127\.0\.0\.1:\d+$/);
      const port = Number(grpcListen.split(':')[1]);
      const entry = obj(one(perPod(), 'ServiceEntry').spec, 'ServiceEntry spec');
      expect(arr(entry.endpoints, 'endpoints').map((e) => obj(e, 'endpoint').address)).toEqual(['127.0.0.1']);
      expect(arr(entry.ports, 'ports').map((p) => obj(p, 'port').number)).toEqual([port]);
      const host = str(arr(entry.hosts, 'hosts')[0], 'host');
      const mesh = one(istioDocs, 'IstioOperator');
      const providers = arr(obj(obj(mesh.spec, 'spec').meshConfig, 'meshConfig').extensionProviders, 'extensionProviders').map((p) => obj(p, 'provider'));
      const policy = obj(one(perPod(), 'AuthorizationPolicy').spec, 'AuthorizationPolicy spec');
      expect(policy.action).toBe('CUSTOM');
      const provider = providers.find((p) => p.name === obj(policy.provider, 'provider').name);
      expect(provider, 'the policy names a registered provider').toBeDefined();
      expect(obj(provider?.envoyExtAuthzGrpc, 'envoyExtAuthzGrpc')).toMatchObject({ service: host, port, failOpen: false });
      const labels = obj(obj(obj(obj(deployment().spec, 'spec').template, 'template').metadata, 'metadata').labels, 'labels');
      expect(labels).toMatchObject(obj(obj(policy.selector, 'selector').matchLabels, 'matchLabels'));
    });

    it('its config, with the Secret mounted beside it, passes `authz-sidecar validate`', async () => {
      const dir = path.join(tmp, 'istio-per-pod');
      await materialize(one(perPod(), 'ConfigMap'), path.join(dir, 'config'));
      await materialize(one(perPod(), 'Secret'), path.join(dir, 'keys'));
      const result = await validateConfig(path.join(dir, 'config', 'authz-sidecar.yaml'));
      expect(result.code, result.out).toBe(0);
    });
  });
});

describe('deploy/kubernetes: the native sidecar deployment', () => {
  const deployment = (): Obj => one(k8sDocs, 'Deployment');
  const sidecar = (): Obj => {
    const { init } = containersOf(podSpec(deployment()));
    const found = init.filter((c) => c.name === 'authz-sidecar');
    expect(found).toHaveLength(1);
    return found[0] as Obj;
  };

  it('runs authz-sidecar as a native sidecar (initContainer with restartPolicy Always) in front of the app', () => {
    const { init, main } = containersOf(podSpec(deployment()));
    expect(sidecar().restartPolicy).toBe('Always');
    expect(main.map((c) => c.name)).not.toContain('authz-sidecar');
    expect(main.length).toBeGreaterThan(0);
    // Plain init containers (no restartPolicy) would block the pod: every init container here is a sidecar.
    for (const c of init) expect(c.restartPolicy, `${String(c.name)} restartPolicy`).toBe('Always');
    const ports = arr(sidecar().ports, 'ports').map((p) => obj(p, 'port').containerPort);
    expect(ports).toEqual(expect.arrayContaining([8080, 8081]));
  });

  it('the app listens on loopback only and exposes no port of its own', () => {
    const { main } = containersOf(podSpec(deployment()));
    for (const c of main) {
      expect(c.ports, `${String(c.name)} ports`).toBeUndefined();
      const args = JSON.stringify([...(arr(c.args ?? [], 'args')), ...(arr(c.command ?? [], 'command'))]);
      expect(args, `${String(c.name)} binds 127.0.0.1:3000`).toContain('127.0.0.1:3000');
      expect(args).not.toContain('0.0.0.0');
    }
  });

  it('probes: startup and readiness on :8081/readyz, liveness on :8081/healthz', () => {
    const s = sidecar();
    const probe = (name: string): Obj => obj(obj(s[name], name).httpGet, `${name}.httpGet`);
    expect(probe('startupProbe')).toMatchObject({ path: '/readyz', port: 8081 });
    expect(probe('readinessProbe')).toMatchObject({ path: '/readyz', port: 8081 });
    expect(probe('livenessProbe')).toMatchObject({ path: '/healthz', port: 8081 });
  });

  it('sizes the sidecar from its measured pod (bench/pods.mjs, checked by pod-memory.test.ts), leaves V8 sizes to the image; every container has requests and limits', () => {
    expect(sidecar().resources).toEqual({ requests: { cpu: '50m', memory: '128Mi' }, limits: { cpu: '1000m', memory: '224Mi' } });
    // The image's entrypoint caps the old space at half the limit (test/deploy/entrypoint.test.ts); a
    // NODE_OPTIONS here would only add flags after it.
    const env = arr(sidecar().env ?? [], 'env').map((e) => obj(e, 'env entry'));
    expect(env.find((e) => e.name === 'NODE_OPTIONS')).toBeUndefined();
    const { init, main } = containersOf(podSpec(deployment()));
    for (const c of [...init, ...main]) {
      const r = obj(c.resources, `${String(c.name)} resources`);
      for (const part of ['requests', 'limits']) {
        expect(obj(r[part], part).cpu, `${String(c.name)} ${part}.cpu`).toBeDefined();
        expect(obj(r[part], part).memory, `${String(c.name)} ${part}.memory`).toBeDefined();
      }
    }
  });

  it('least privilege on every container (init containers included) and RuntimeDefault seccomp on the pod', () => {
    checkPodLeastPrivilege(podSpec(deployment()));
  });

  it('the Secret is mounted only into the sidecar; the sidecar gets an emptyDir at /tmp', () => {
    const pod = podSpec(deployment());
    checkSecretOnlyInSidecar(pod);
    const volumes = arr(pod.volumes, 'volumes').map((v) => obj(v, 'volume'));
    const tmpMount = arr(sidecar().volumeMounts, 'volumeMounts').map((m) => obj(m, 'mount')).find((m) => m.mountPath === '/tmp');
    expect(tmpMount, 'sidecar /tmp mount').toBeDefined();
    expect(volumes.find((v) => v.name === tmpMount?.name)?.emptyDir).toBeDefined();
  });

  it('the Service targets the sidecar port 8080 and selects the pods; the NetworkPolicy admits 8080 only', () => {
    const service = one(k8sDocs, 'Service');
    const spec = obj(service.spec, 'spec');
    for (const p of arr(spec.ports, 'ports')) expect([8080, 'http']).toContain(obj(p, 'port').targetPort);
    const httpPort = arr(sidecar().ports, 'ports').map((p) => obj(p, 'port')).find((p) => p.containerPort === 8080);
    for (const p of arr(spec.ports, 'ports')) {
      const target = obj(p, 'port').targetPort;
      if (typeof target === 'string') expect(httpPort?.name).toBe(target);
    }
    const podLabels = obj(obj(obj(obj(deployment().spec, 'spec').template, 'template').metadata, 'metadata').labels, 'labels');
    expect(podLabels).toMatchObject(obj(spec.selector, 'selector'));

    const policy = obj(one(k8sDocs, 'NetworkPolicy').spec, 'spec');
    expect(podLabels).toMatchObject(obj(obj(policy.podSelector, 'podSelector').matchLabels, 'matchLabels'));
    expect(policy.policyTypes).toContain('Ingress');
    const rules = arr(policy.ingress, 'ingress').map((r) => obj(r, 'rule'));
    expect(rules.length).toBeGreaterThan(0);
    for (const rule of rules) {
      const ports = arr(rule.ports, 'ports (a rule without ports admits every port)').map((p) => obj(p, 'port'));
      expect(ports.map((p) => p.port)).toEqual([8080]);
    }
  });

  it('the ConfigMap config proxies 0.0.0.0:8080 to 127.0.0.1:3000 and passes `authz-sidecar validate` as mounted', async () => {
    const pod = podSpec(deployment());
    const volumes = arr(pod.volumes, 'volumes').map((v) => obj(v, 'volume'));
    const root = path.join(tmp, 'k8s');
    for (const m of arr(sidecar().volumeMounts, 'volumeMounts').map((m) => obj(m, 'mount'))) {
      const volume = volumes.find((v) => v.name === m.name) as Obj;
      const dir = path.join(root, str(m.mountPath, 'mountPath'));
      if (volume.configMap !== undefined) {
        const name = obj(volume.configMap, 'configMap').name;
        const source = byKind(k8sDocs, 'ConfigMap').find((c) => obj(c.metadata, 'metadata').name === name);
        expect(source, `ConfigMap ${String(name)}`).toBeDefined();
        await materialize(source as Obj, dir);
      } else if (volume.secret !== undefined) {
        const name = obj(volume.secret, 'secret').secretName;
        const source = byKind(k8sDocs, 'Secret').find((c) => obj(c.metadata, 'metadata').name === name);
        expect(source, `Secret ${String(name)}`).toBeDefined();
        await materialize(source as Obj, dir);
      } else {
        await mkdir(dir, { recursive: true });
      }
    }
    const args = arr(sidecar().args, 'args').map((a) => str(a, 'arg'));
    expect(args[0]).toBe('serve');
    const configPath = args[args.indexOf('--config') + 1];
    expect(configPath).toMatch(/^\/etc\/authz-sidecar\//);
    const local = path.join(root, str(configPath, '--config'));
    const config = obj((await parseFile(local))[0]?.value, 'config');
    expect(config.listen).toBe('0.0.0.0:8080');
    expect(obj(config.upstream, 'upstream').url).toBe('http://127.0.0.1:3000');
    expect(obj(config.admin, 'admin').listen).toBe('0.0.0.0:8081');
    const result = await validateConfig(local);
    expect(result.code, result.out).toBe(0);
  });

  it('the example Secret holds public keys only', () => {
    for (const secret of byKind(k8sDocs, 'Secret')) {
      for (const [k, text] of Object.entries(obj(secret.stringData ?? {}, 'stringData'))) {
        if (!k.endsWith('.json')) continue;
        const jwks = JSON.parse(str(text, k)) as { keys: Obj[] };
        for (const key of jwks.keys) for (const priv of ['d', 'p', 'q', 'dp', 'dq', 'qi', 'k']) expect(key[priv], `${k} ${priv}`).toBeUndefined();
      }
    }
  });
});

/** RFC 6901 pointer → parent container and key. */
function locate(root: unknown, pointer: string): { parent: Obj | unknown[]; key: string } {
  const parts = pointer.split('/').slice(1).map((p) => p.replace(/~1/g, '/').replace(/~0/g, '~'));
  const key = parts.pop();
  if (key === undefined) throw new Error(`bad pointer ${pointer}`);
  let node: unknown = root;
  for (const part of parts) node = Array.isArray(node) ? node[Number(part)] : obj(node, pointer)[part];
  if (!Array.isArray(node) && !isObj(node)) throw new Error(`${pointer}: no such parent`);
  return { parent: node, key };
}
function take(root: unknown, pointer: string): unknown {
  const { parent, key } = locate(root, pointer);
  if (Array.isArray(parent)) {
    const index = Number(key);
    expect(index < parent.length, `${pointer} exists`).toBe(true);
    return parent.splice(index, 1)[0];
  }
  expect(key in parent, `${pointer} exists`).toBe(true);
  const value = parent[key];
  delete parent[key];
  return value;
}
function put(root: unknown, pointer: string, value: unknown): void {
  const { parent, key } = locate(root, pointer);
  if (Array.isArray(parent)) parent.splice(key === '-' ? parent.length : Number(key), 0, value);
  else parent[key] = value;
}
/** The subset of RFC 6902 kustomize patches here use: add, remove, move, replace. */
function applyJsonPatch(target: Obj, ops: unknown[]): Obj {
  const doc = structuredClone(target);
  for (const raw of ops) {
    const op = obj(raw, 'patch op');
    const at = str(op.path, 'op.path');
    switch (op.op) {
      case 'add': put(doc, at, structuredClone(op.value)); break;
      case 'remove': take(doc, at); break;
      case 'replace': take(doc, at); put(doc, at, structuredClone(op.value)); break;
      case 'move': put(doc, at, take(doc, str(op.from, 'op.from'))); break;
      default: throw new Error(`unsupported patch op ${String(op.op)}`);
    }
  }
  return doc;
}

describe('deploy/kubernetes/classic: the two-container variant for clusters before 1.29', () => {
  it('patches the base Deployment into a pod with the sidecar as a regular container, as locked down', async () => {
    const docs = await parseFile(path.join(K8S_ROOT, 'classic/kustomization.yaml'));
    expect(docs).toHaveLength(1);
    const kustomization = (docs[0] as Doc).value;
    validateStructure(docs[0] as Doc);
    expect(kustomization.resources).toEqual(['../base']);
    const base = one(k8sDocs, 'Deployment');
    const baseMeta = obj(base.metadata, 'metadata');
    let patched = base;
    for (const raw of arr(kustomization.patches, 'patches')) {
      const patch = obj(raw, 'patch');
      const target = obj(patch.target, 'patch.target');
      expect(target).toMatchObject({ kind: 'Deployment', name: baseMeta.name });
      const ops = parseAllDocuments(str(patch.patch, 'patch.patch'))[0]?.toJS() as unknown;
      patched = applyJsonPatch(patched, arr(ops, 'patch ops'));
    }
    const pod = podSpec(patched);
    expect(pod.initContainers).toBeUndefined();
    const { main } = containersOf(pod);
    const sidecar = main.find((c) => c.name === 'authz-sidecar');
    expect(sidecar, 'sidecar in containers').toBeDefined();
    expect(sidecar?.restartPolicy).toBeUndefined();
    expect(main).toHaveLength(containersOf(podSpec(base)).main.length + 1);
    checkPodLeastPrivilege(pod);
    checkSecretOnlyInSidecar(pod);
    // Readiness still gates traffic on the sidecar having loaded its policy and keys.
    expect(obj(obj(sidecar?.readinessProbe, 'readinessProbe').httpGet, 'httpGet')).toMatchObject({ path: '/readyz', port: 8081 });
  });
});

describe('example configs that ship pass `authz-sidecar validate`', () => {
  it('policies/authz-sidecar.yaml', async () => {
    const result = await validateConfig(path.join(ROOT, 'policies/authz-sidecar.yaml'));
    expect(result.code, result.out).toBe(0);
  });

  it('the config in deploy/istio/authz-sidecar.yaml', async () => {
    const configMap = istioDocs.find((d) => d.value.kind === 'ConfigMap' && d.file.endsWith('authz-sidecar.yaml'))?.value;
    expect(configMap).toBeDefined();
    const dir = path.join(tmp, 'istio');
    await materialize(configMap as Obj, dir);
    const result = await validateConfig(path.join(dir, 'authz-sidecar.yaml'));
    expect(result.code, result.out).toBe(0);
  });

  it('deploy/compose/authz-sidecar.yaml, laid out as the compose volumes mount it', async () => {
    const dir = path.join(tmp, 'compose');
    await mkdir(dir, { recursive: true });
    await writeFile(path.join(dir, 'authz-sidecar.yaml'), await readFile(path.join(ROOT, 'deploy/compose/authz-sidecar.yaml')));
    await symlink(path.join(ROOT, 'policies'), path.join(dir, 'policies'));
    const result = await validateConfig(path.join(dir, 'authz-sidecar.yaml'));
    expect(result.code, result.out).toBe(0);
  });
});

describe('deploy/compose/compose.yaml', () => {
  let compose: Obj = {};
  beforeAll(async () => {
    const docs = await parseFile(COMPOSE_FILE);
    expect(docs).toHaveLength(1);
    compose = (docs[0] as Doc).value;
  });
  const services = (): Record<string, Obj> =>
    Object.fromEntries(Object.entries(obj(compose.services, 'services')).map(([k, v]) => [k, obj(v, k)]));

  it('has the app, the sidecar built from the repository Dockerfile, and a dev IdP', () => {
    const s = services();
    expect(Object.keys(s).sort()).toEqual(['app', 'idp', 'sidecar']);
    const build = obj(s.sidecar?.build, 'sidecar.build');
    expect(path.resolve(path.dirname(COMPOSE_FILE), str(build.context, 'context'))).toBe(path.resolve(ROOT));
    expect(build.dockerfile).toBe('Dockerfile');
    for (const [name, svc] of Object.entries(s)) {
      expect(svc.image ?? svc.build, `${name} image or build`).toBeDefined();
      if (svc.command !== undefined) arr(svc.command, `${name}.command`);
    }
  });

  it('app and IdP share the sidecar network namespace; only the sidecar publishes ports', () => {
    const s = services();
    for (const name of ['app', 'idp']) {
      expect(s[name]?.network_mode, `${name}.network_mode`).toBe('service:sidecar');
      expect(s[name]?.ports, `${name}.ports`).toBeUndefined();
      expect(obj(s[name]?.depends_on, `${name}.depends_on`).sidecar).toBeDefined();
    }
    const ports = arr(s.sidecar?.ports, 'sidecar.ports').map((p) => str(p, 'port'));
    expect(ports).toContain('8080:8080');
    expect(ports.every((p) => /^\d+:\d+$/.test(p))).toBe(true);
    expect(JSON.stringify(s.app?.command)).toContain('127.0.0.1:3000');
  });

  it('the sidecar runs read-only, non-root, without capabilities, with its config mounted read-only', async () => {
    const sidecar = services().sidecar as Obj;
    expect(sidecar.read_only).toBe(true);
    expect(sidecar.cap_drop).toEqual(['ALL']);
    expect(sidecar.tmpfs).toEqual(['/tmp']);
    expect(str(sidecar.user, 'user')).not.toMatch(/^(0|root)(:|$)/);
    expect(sidecar.security_opt).toContain('no-new-privileges:true');
    const volumes = arr(sidecar.volumes, 'volumes').map((v) => str(v, 'volume'));
    for (const v of volumes) {
      expect(v, 'mounted read-only').toMatch(/:ro$/);
      const source = v.split(':')[0] as string;
      await readdir(path.resolve(path.dirname(COMPOSE_FILE), source)).catch(async () => readFile(path.resolve(path.dirname(COMPOSE_FILE), source)));
    }
    const command = arr(sidecar.command, 'command').map((c) => str(c, 'arg'));
    expect(command.slice(0, 2)).toEqual(['serve', '--config']);
    expect(volumes.some((v) => v.endsWith(`:${command[2] ?? ''}:ro`))).toBe(true);
  });
});
