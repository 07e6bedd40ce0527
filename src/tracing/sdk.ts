/**
 * The OpenTelemetry SDK, loaded only when tracing is on (config.ts): a tracer provider with a batch span
 * processor and the OTLP/HTTP protobuf exporter (which reads OTEL_EXPORTER_OTLP_* itself), the resource
 * from OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES (service.name authz-sidecar by default), the sampler and
 * propagators of the environment, registered as the API's globals. No auto-instrumentation: the doors and
 * stages are traced by hand (spans.ts). A collector that cannot be reached never affects a request: spans
 * the exporter could not deliver are counted and dropped.
 */
import { context, propagation, trace, type TextMapPropagator } from '@opentelemetry/api';
import { AsyncLocalStorageContextManager } from '@opentelemetry/context-async-hooks';
import { CompositePropagator, W3CBaggagePropagator, W3CTraceContextPropagator, ExportResultCode, type ExportResult } from '@opentelemetry/core';
import { OTLPTraceExporter } from '@opentelemetry/exporter-trace-otlp-proto';
import { B3InjectEncoding, B3Propagator } from '@opentelemetry/propagator-b3';
import { envDetector, detectResources, resourceFromAttributes } from '@opentelemetry/resources';
import {
  AlwaysOffSampler,
  AlwaysOnSampler,
  BatchSpanProcessor,
  ParentBasedSampler,
  TraceIdRatioBasedSampler,
  TracerProvider,
  type ReadableSpan,
  type Sampler,
  type SpanExporter,
  type SpanProcessor,
} from '@opentelemetry/sdk-trace';
import type { SamplerConfig, TracingConfig } from './config.js';

export interface RunningTracing {
  /** Flushes what is buffered (bounded) and stops. */
  shutdown(): Promise<void>;
}

function samplerOf(config: SamplerConfig): Sampler {
  switch (config.kind) {
    case 'always_on':
      return new AlwaysOnSampler();
    case 'always_off':
      return new AlwaysOffSampler();
    case 'traceidratio':
      return new TraceIdRatioBasedSampler(config.ratio);
    case 'parentbased_always_on':
      return new ParentBasedSampler({ root: new AlwaysOnSampler() });
    case 'parentbased_always_off':
      return new ParentBasedSampler({ root: new AlwaysOffSampler() });
    case 'parentbased_traceidratio':
      return new ParentBasedSampler({ root: new TraceIdRatioBasedSampler(config.ratio) });
  }
}

function propagatorOf(names: readonly string[]): TextMapPropagator {
  const propagators = names.map((name): TextMapPropagator => {
    switch (name) {
      case 'b3':
        return new B3Propagator({ injectEncoding: B3InjectEncoding.SINGLE_HEADER });
      case 'b3multi':
        return new B3Propagator({ injectEncoding: B3InjectEncoding.MULTI_HEADER });
      case 'baggage':
        return new W3CBaggagePropagator();
      default:
        return new W3CTraceContextPropagator();
    }
  });
  return new CompositePropagator({ propagators });
}

/** An exporter that counts the spans it could not deliver (the collector down or refusing). */
function counting(exporter: SpanExporter, onDropped: (count: number) => void): SpanExporter {
  return {
    export(spans: ReadableSpan[], done: (result: ExportResult) => void): void {
      exporter.export(spans, (result) => {
        if (result.code !== ExportResultCode.SUCCESS) onDropped(spans.length);
        done(result);
      });
    },
    shutdown: () => exporter.shutdown(),
    forceFlush: () => exporter.forceFlush?.() ?? Promise.resolve(),
  };
}

/** The batch queue: spans past it are dropped (and counted) rather than held while a collector is slow or down. */
const MAX_QUEUE = 2048;
/** What is still queued at shutdown gets this long to be exported. */
const SHUTDOWN_MS = 2_000;

/**
 * A batch processor whose queue overflow is counted too: the SDK drops spans past its queue silently. The
 * count of spans queued goes up at each span's end and down when a batch is handed to the exporter.
 */
function countingQueue(exporter: SpanExporter, onDropped: (count: number) => void): SpanProcessor {
  let queued = 0;
  const inner = new BatchSpanProcessor({
    exporter: {
      export(spans, done) {
        queued = Math.max(0, queued - spans.length);
        exporter.export(spans, done);
      },
      shutdown: () => exporter.shutdown(),
      forceFlush: () => exporter.forceFlush?.() ?? Promise.resolve(),
    },
    maxQueueSize: MAX_QUEUE,
    maxExportBatchSize: 512,
    scheduledDelayMillis: 1000,
    exportTimeoutMillis: 5000,
  });
  return {
    onStart: (span, parent) => inner.onStart(span, parent),
    onEnd(span) {
      if (!span.spanContext().traceFlags) return inner.onEnd(span);
      if (queued >= MAX_QUEUE) {
        onDropped(1);
        return;
      }
      queued++;
      inner.onEnd(span);
    },
    forceFlush: () => inner.forceFlush(),
    shutdown: () => inner.shutdown(),
  };
}

export function startTracing(config: TracingConfig, options: { readonly onDropped: (count: number) => void }): RunningTracing {
  const detected = detectResources({ detectors: [envDetector] });
  const resource = resourceFromAttributes({ 'service.name': 'authz-sidecar' }).merge(detected);
  // A full queue drops spans rather than holding memory: a collector that is down costs nothing more.
  // The exporter's own timeout no longer than the batch's (its default is 10 s), unless the environment says.
  const timeout = process.env['OTEL_EXPORTER_OTLP_TRACES_TIMEOUT'] ?? process.env['OTEL_EXPORTER_OTLP_TIMEOUT'];
  const exporter = timeout === undefined ? new OTLPTraceExporter({ timeoutMillis: 5000 }) : new OTLPTraceExporter();
  const processor = countingQueue(counting(exporter, options.onDropped), options.onDropped);
  const provider = new TracerProvider({ resource, sampler: samplerOf(config.sampler), spanProcessors: [processor] });
  trace.setGlobalTracerProvider(provider);
  propagation.setGlobalPropagator(propagatorOf(config.propagators));
  // The stage spans' context reaches the identity provider calls they make (their CLIENT spans' parent).
  context.setGlobalContextManager(new AsyncLocalStorageContextManager().enable());
  return {
    async shutdown() {
      // Bounded: a collector that hangs must not hold the exit past the pod's grace period.
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([provider.shutdown().catch(() => undefined), new Promise<void>((resolve) => (timer = setTimeout(resolve, SHUTDOWN_MS)))]);
      clearTimeout(timer);
      trace.disable();
      propagation.disable();
      context.disable();
    },
  };
}
