/**
 * Tracing configuration (DESIGN.md §9) from the standard OpenTelemetry environment variables. Off unless
 * `OTEL_TRACES_EXPORTER=otlp`; then the SDK is loaded (sdk.ts) and every door traces. This module reads the
 * environment only: it loads no OpenTelemetry code, so a sidecar without tracing loads none.
 */
import { SidecarError } from '../core/errors.js';

export type SamplerConfig =
  | { readonly kind: 'always_on' | 'always_off' | 'parentbased_always_on' | 'parentbased_always_off' }
  | { readonly kind: 'traceidratio' | 'parentbased_traceidratio'; readonly ratio: number };

export interface TracingConfig {
  readonly sampler: SamplerConfig;
  /** `tracecontext`, `baggage`, `b3` (single header), `b3multi`, in order. */
  readonly propagators: readonly string[];
}

const SAMPLERS = new Set(['always_on', 'always_off', 'traceidratio', 'parentbased_always_on', 'parentbased_always_off', 'parentbased_traceidratio']);
const PROPAGATORS = new Set(['tracecontext', 'baggage', 'b3', 'b3multi', 'none']);

function invalid(variable: string, message: string): SidecarError<'CONFIG_INVALID'> {
  return new SidecarError('CONFIG_INVALID', `${variable}: ${message}`);
}

/** The tracing configuration of an environment, or undefined when tracing is off; throws naming a bad variable. */
export function tracingFromEnv(env: NodeJS.ProcessEnv): TracingConfig | undefined {
  const exporter = (env['OTEL_TRACES_EXPORTER'] ?? 'none').trim().toLowerCase();
  if (exporter === 'none' || exporter === '') return undefined;
  if (exporter !== 'otlp') throw invalid('OTEL_TRACES_EXPORTER', `"${exporter}" is not supported (otlp or none)`);
  const protocol = (env['OTEL_EXPORTER_OTLP_TRACES_PROTOCOL'] ?? env['OTEL_EXPORTER_OTLP_PROTOCOL'] ?? 'http/protobuf').trim();
  if (protocol !== 'http/protobuf') throw invalid(env['OTEL_EXPORTER_OTLP_TRACES_PROTOCOL'] === undefined ? 'OTEL_EXPORTER_OTLP_PROTOCOL' : 'OTEL_EXPORTER_OTLP_TRACES_PROTOCOL', `"${protocol}" is not supported (http/protobuf)`);

  const samplerName = (env['OTEL_TRACES_SAMPLER'] ?? 'parentbased_always_on').trim().toLowerCase();
  if (!SAMPLERS.has(samplerName)) throw invalid('OTEL_TRACES_SAMPLER', `"${samplerName}" is not one of ${[...SAMPLERS].join(', ')}`);
  let sampler: SamplerConfig;
  if (samplerName === 'traceidratio' || samplerName === 'parentbased_traceidratio') {
    const arg = env['OTEL_TRACES_SAMPLER_ARG'];
    const ratio = arg === undefined || arg.trim() === '' ? 1 : Number(arg);
    if (!Number.isFinite(ratio) || ratio < 0 || ratio > 1) throw invalid('OTEL_TRACES_SAMPLER_ARG', 'must be a number from 0 to 1');
    sampler = { kind: samplerName, ratio };
  } else {
    sampler = { kind: samplerName as 'always_on' };
  }

  const propagators = (env['OTEL_PROPAGATORS'] ?? 'tracecontext,baggage')
    .split(',')
    .map((p) => p.trim().toLowerCase())
    .filter((p) => p !== '');
  for (const p of propagators) if (!PROPAGATORS.has(p)) throw invalid('OTEL_PROPAGATORS', `"${p}" is not one of ${[...PROPAGATORS].join(', ')}`);
  return { sampler, propagators: propagators.filter((p) => p !== 'none') };
}
