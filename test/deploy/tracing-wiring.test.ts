/**
 * The optional tracing wiring of the examples lines up (DESIGN.md §9, docs/tracing.md):
 * - deploy/kubernetes/tracing (a kustomize Component), its strategic merge patch applied to the base as
 *   kustomize applies it (lists merged by name): the sidecar container, and only it, gets the standard OTEL_*
 *   variables, nothing else of the measured base changes, and the endpoint is a collector Service's OTLP/HTTP
 *   port;
 * - deploy/compose/compose.tracing.yaml over compose.yaml: a Jaeger all-in-one service receiving OTLP/HTTP on
 *   4318, and the sidecar's OTEL_* variables pointing at it;
 * - in both, every variable is a standard OpenTelemetry one, the sidecar accepts the values (tracingFromEnv:
 *   a bad one would stop it at startup) and docs/tracing.md documents each.
 */
import { beforeAll, describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { tracingFromEnv } from '../../src/tracing/config.js';
import { arr, docsOf, isObj, obj, read, str, type Obj } from '../support/yaml-docs.js';

/**
 * The OpenTelemetry SDK environment variables (specification, "Environment Variable Specification" and the
 * OTLP exporter's) that concern a trace exporter: a name outside this list is a typo the SDK ignores.
 */
const OTLP_OPTIONS = ['ENDPOINT', 'PROTOCOL', 'HEADERS', 'TIMEOUT', 'COMPRESSION', 'CERTIFICATE', 'CLIENT_KEY', 'CLIENT_CERTIFICATE'];
const STANDARD = new Set([
  'OTEL_TRACES_EXPORTER',
  'OTEL_SERVICE_NAME',
  'OTEL_RESOURCE_ATTRIBUTES',
  'OTEL_TRACES_SAMPLER',
  'OTEL_TRACES_SAMPLER_ARG',
  'OTEL_PROPAGATORS',
  ...OTLP_OPTIONS.flatMap((o) => [`OTEL_EXPORTER_OTLP_${o}`, `OTEL_EXPORTER_OTLP_TRACES_${o}`]),
]);

/** What every example must hold: tracing on, standard names only, values the sidecar accepts, the endpoint's URL. */
function checkTracingEnv(env: Record<string, string>, where: string): URL {
  for (const name of Object.keys(env).filter((n) => n.startsWith('OTEL_'))) expect(STANDARD, `${where}: ${name} is a standard variable`).toContain(name);
  expect(env['OTEL_TRACES_EXPORTER'], `${where}: tracing on`).toBe('otlp');
  expect(env['OTEL_EXPORTER_OTLP_PROTOCOL'] ?? 'http/protobuf').toBe('http/protobuf');
  // The exporter appends /v1/traces to OTEL_EXPORTER_OTLP_ENDPOINT (the signal-specific one is used as is).
  expect(env['OTEL_EXPORTER_OTLP_TRACES_ENDPOINT'], `${where}: one endpoint variable`).toBeUndefined();
  const endpoint = new URL(str(env['OTEL_EXPORTER_OTLP_ENDPOINT'], `${where}: OTEL_EXPORTER_OTLP_ENDPOINT`));
  expect(endpoint.protocol).toMatch(/^https?:$/);
  expect(endpoint.port, `${where}: the OTLP/HTTP port`).toBe('4318');
  expect(endpoint.pathname, `${where}: no path (the exporter adds /v1/traces)`).toBe('/');
  const config = tracingFromEnv(env);
  expect(config, `${where}: accepted by the sidecar`).toBeDefined();
  expect(config?.propagators).toContain('tracecontext');
  return endpoint;
}

/** A strategic merge of `patch` into `target` as kustomize does it for a Deployment: maps merged, the name-keyed lists by name. */
function strategicMerge(target: unknown, patch: unknown, key?: string): unknown {
  if (isObj(target) && isObj(patch)) {
    const out: Obj = { ...target };
    for (const [k, v] of Object.entries(patch)) out[k] = k in target ? strategicMerge(target[k], v, k) : structuredClone(v);
    return out;
  }
  if (Array.isArray(target) && Array.isArray(patch) && ['initContainers', 'containers', 'env', 'volumes', 'volumeMounts'].includes(key ?? '')) {
    const out: unknown[] = [...(target as unknown[])];
    for (const item of patch.map((p) => obj(p, `${key ?? ''} item`))) {
      const at = out.findIndex((t) => isObj(t) && t.name === item.name);
      if (at < 0) out.push(structuredClone(item));
      else out[at] = strategicMerge(out[at], item);
    }
    return out;
  }
  return structuredClone(patch);
}

const podSpec = (deployment: Obj): Obj => obj(obj(obj(deployment.spec, 'spec').template, 'template').spec, 'pod spec');
const envOf = (container: Obj): Record<string, string> =>
  Object.fromEntries(arr(container.env ?? [], 'env').map((e) => obj(e, 'env')).map((e) => [str(e.name, 'env name'), str(e.value, `${String(e.name)}: a literal value`)]));

// ---- Kubernetes --------------------------------------------------------------------------------------------------

const COMPONENT = 'deploy/kubernetes/tracing';

describe('deploy/kubernetes/tracing: the optional tracing Component', () => {
  let component: Obj;
  let patch: Obj;
  let base: Obj;
  let deployment: Obj;

  beforeAll(async () => {
    const docs = await docsOf(`${COMPONENT}/kustomization.yaml`);
    expect(docs).toHaveLength(1);
    component = docs[0] as Obj;
    base = (await docsOf('deploy/kubernetes/base/deployment.yaml')).find((d) => d.kind === 'Deployment') as Obj;
    const patches = arr(component.patches, 'patches').map((p) => obj(p, 'patch'));
    expect(patches).toHaveLength(1);
    expect(obj(patches[0]?.target, 'target')).toMatchObject({ group: 'apps', version: 'v1', kind: 'Deployment', name: obj(base.metadata, 'metadata').name });
    patch = obj(parse(str(patches[0]?.patch, 'patch')), 'patch');
    deployment = obj(strategicMerge(base, patch), 'patched Deployment');
  });

  it('is a Component, named after redis-sessions (whose patch sets the whole env list) in both overlays, commented out', async () => {
    expect(component).toMatchObject({ apiVersion: 'kustomize.config.k8s.io/v1alpha1', kind: 'Component' });
    expect(component.resources).toBeUndefined();
    expect(component.configMapGenerator).toBeUndefined();
    expect(await read('deploy/kubernetes/kustomization.yaml')).toMatch(/^# components:\n# {3}- redis-sessions\n# {3}- tracing$/m);
    expect(await read('deploy/kubernetes/classic/kustomization.yaml')).toMatch(/^# components:\n# {3}- \.\.\/redis-sessions\n# {3}- \.\.\/tracing$/m);
  });

  it('is a strategic merge patch of the orders Deployment that names the sidecar and sets env only', () => {
    const { name, namespace } = obj(base.metadata, 'metadata');
    expect(patch).toMatchObject({ apiVersion: 'apps/v1', kind: 'Deployment', metadata: { name, namespace } });
    const spec = podSpec(patch);
    expect(Object.keys(spec)).toEqual(['initContainers']);
    const containers = arr(spec.initContainers, 'initContainers').map((c) => obj(c, 'container'));
    expect(containers).toHaveLength(1);
    expect(containers[0]?.name).toBe('authz-sidecar');
    expect(Object.keys(containers[0] ?? {}).sort()).toEqual(['env', 'name']);
  });

  it('gives the sidecar, and only it, the OTEL_* variables, and changes nothing else of the measured base', () => {
    const sidecar = arr(podSpec(deployment).initContainers, 'initContainers').map((c) => obj(c, 'container')).find((c) => c.name === 'authz-sidecar') as Obj;
    const baseSidecar = arr(podSpec(base).initContainers, 'initContainers').map((c) => obj(c, 'container')).find((c) => c.name === 'authz-sidecar') as Obj;
    expect(baseSidecar.env, 'the base sidecar has no env').toBeUndefined();
    const { env: _env, ...rest } = sidecar;
    expect(rest).toEqual(baseSidecar);
    const { initContainers: _a, ...restSpec } = podSpec(deployment);
    const { initContainers: _b, ...baseSpec } = podSpec(base);
    expect(restSpec).toEqual(baseSpec);
    for (const c of arr(podSpec(deployment).containers, 'containers').map((x) => obj(x, 'container'))) expect(c.env, `${String(c.name)} env`).toBeUndefined();
    expect(Object.keys(envOf(sidecar)).every((n) => n.startsWith('OTEL_'))).toBe(true);
  });

  it('sets standard variables the sidecar accepts, exporting to a collector Service on its OTLP/HTTP port', () => {
    const sidecar = arr(podSpec(deployment).initContainers, 'initContainers').map((c) => obj(c, 'container')).find((c) => c.name === 'authz-sidecar') as Obj;
    const endpoint = checkTracingEnv(envOf(sidecar), COMPONENT);
    // <service>.<namespace>.svc.cluster.local: a collector Service, not a pod address or the sidecar itself.
    expect(endpoint.hostname).toMatch(/^[a-z0-9-]+\.[a-z0-9-]+\.svc\.cluster\.local$/);
    expect(endpoint.hostname).toMatch(/collector/);
  });
});

// ---- Compose -----------------------------------------------------------------------------------------------------

describe('deploy/compose/compose.tracing.yaml: Jaeger all-in-one and the sidecar exporting to it', () => {
  let base: Record<string, Obj>;
  let services: Record<string, Obj>;
  const services_ = (doc: Obj): Record<string, Obj> => Object.fromEntries(Object.entries(obj(doc.services, 'services')).map(([k, v]) => [k, obj(v, k)]));

  beforeAll(async () => {
    base = services_((await docsOf('deploy/compose/compose.yaml'))[0] as Obj);
    services = services_((await docsOf('deploy/compose/compose.tracing.yaml'))[0] as Obj);
  });

  it('adds a pinned jaegertracing/all-in-one with its OTLP receivers on, publishing only its UI', () => {
    const jaeger = services.jaeger as Obj;
    expect(str(jaeger.image, 'image')).toMatch(/^jaegertracing\/all-in-one:\d+\.\d+\.\d+$/);
    expect(String(obj(jaeger.environment, 'environment').COLLECTOR_OTLP_ENABLED)).toBe('true');
    expect(arr(jaeger.ports, 'ports')).toEqual(['16686:16686']);
    expect(jaeger.network_mode).toBeUndefined();
    expect(jaeger.cap_drop).toEqual(['ALL']);
    expect(Object.keys(base)).not.toContain('jaeger');
  });

  it("changes only the sidecar's environment (and its start after jaeger)", () => {
    expect(Object.keys(services).sort()).toEqual(['jaeger', 'sidecar']);
    const sidecar = services.sidecar as Obj;
    expect(Object.keys(sidecar).sort()).toEqual(['depends_on', 'environment']);
    expect(obj(sidecar.depends_on, 'depends_on').jaeger).toBeDefined();
    expect(base.sidecar?.environment, 'compose.yaml sets no sidecar environment').toBeUndefined();
  });

  it('sets standard variables the sidecar accepts, exporting to the jaeger service on 4318', () => {
    const env = Object.fromEntries(Object.entries(obj(services.sidecar?.environment, 'environment')).map(([k, v]) => [k, String(v)]));
    const endpoint = checkTracingEnv(env, 'compose.tracing.yaml');
    expect(endpoint.hostname).toBe('jaeger');
    // The sidecar is on the project network (app and IdP join its namespace), where the service name resolves.
    expect(base.sidecar?.network_mode).toBeUndefined();
  });

  it("compose.yaml's header names the override", async () => {
    expect(await read('deploy/compose/compose.yaml')).toContain('-f deploy/compose/compose.tracing.yaml');
  });
});

// ---- Docs --------------------------------------------------------------------------------------------------------

describe('docs/tracing.md', () => {
  it('documents every OTEL_* variable the sidecar reads and the examples set', async () => {
    const doc = await read('docs/tracing.md');
    const source = await read('src/tracing/config.ts');
    const read_ = [...source.matchAll(/'(OTEL_[A-Z_]+)'/g)].map((m) => m[1] as string);
    expect(read_).toContain('OTEL_TRACES_EXPORTER');
    const examples = [
      ...(await read(`${COMPONENT}/kustomization.yaml`)).matchAll(/name: (OTEL_[A-Z_]+)/g),
      ...(await read('deploy/compose/compose.tracing.yaml')).matchAll(/^\s+(OTEL_[A-Z_]+):/gm),
    ].map((m) => m[1] as string);
    expect(examples.length).toBeGreaterThan(5);
    for (const name of new Set([...read_, ...examples])) expect(doc, name).toContain(`\`${name}\``);
  });
});
