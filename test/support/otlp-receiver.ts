/**
 * A real OTLP/HTTP trace receiver for the tracing tests (#17): a loopback HTTP server that accepts what an
 * OpenTelemetry collector accepts on POST /v1/traces and decodes it with the official OTLP protobuf
 * definitions (test/support/otlp-proto/, copied verbatim from open-telemetry/opentelemetry-proto) through
 * protobufjs. No exporter is mocked: point OTEL_EXPORTER_OTLP_ENDPOINT (or an OTLPTraceExporter's `url`) at it.
 *
 * - `application/x-protobuf` (http/protobuf) and `application/json` (http/json, OTLP's JSON mapping: hex ids,
 *   integer enums, int64 as strings or numbers); `content-encoding: gzip` (or deflate) is undone first.
 * - Answers 200 with an empty ExportTraceServiceResponse in the request's encoding; 415 for another content
 *   type, 400 for a body that does not decode, 404/405 for other paths and methods.
 * - `setFailWith(503)` (or `failWith` at start) answers every export with that status instead, like a broken
 *   collector; those requests are counted and their bodies kept, but their spans are not stored.
 */
import { once } from 'node:events';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { gunzipSync, inflateSync } from 'node:zlib';
import protobuf from 'protobufjs';

/** An attribute value as decoded from an OTLP AnyValue (kvlist as a plain object, bytes as a Buffer). */
export type AttributeValue = string | number | boolean | Buffer | null | AttributeValue[] | { [key: string]: AttributeValue };
export type AttributeMap = Record<string, AttributeValue>;

export type SpanKindName = 'UNSPECIFIED' | 'INTERNAL' | 'SERVER' | 'CLIENT' | 'PRODUCER' | 'CONSUMER';
export type StatusCodeName = 'UNSET' | 'OK' | 'ERROR';

export interface ReceivedEvent {
  name: string;
  timeUnixNano: bigint;
  attributes: AttributeMap;
}

export interface ReceivedLink {
  traceId: string;
  spanId: string;
  traceState: string;
  attributes: AttributeMap;
}

export interface ReceivedSpan {
  /** 32 lower-case hex digits. */
  traceId: string;
  /** 16 lower-case hex digits. */
  spanId: string;
  /** 16 lower-case hex digits; '' for a root span. */
  parentSpanId: string;
  traceState: string;
  name: string;
  kind: SpanKindName;
  startTimeUnixNano: bigint;
  endTimeUnixNano: bigint;
  attributes: AttributeMap;
  droppedAttributesCount: number;
  /** Status code as its OTLP name (UNSET = 0, OK = 1, ERROR = 2, the same numbers as the API's SpanStatusCode). */
  status: { code: StatusCodeName; message: string };
  events: ReceivedEvent[];
  links: ReceivedLink[];
  /** Span.flags (W3C trace flags in the low byte, 0x100/0x200 for "parent is remote" known/true). */
  flags: number;
  /** The attributes of the span's Resource (service.name, telemetry.sdk.*, ...). */
  resource: AttributeMap;
  /** The InstrumentationScope (the tracer's name and version). */
  scope: { name: string; version: string };
}

export interface OtlpReceiver {
  /** http://127.0.0.1:PORT: the OTEL_EXPORTER_OTLP_ENDPOINT base (exporters post to `${url}/v1/traces`). */
  readonly url: string;
  /** http://127.0.0.1:PORT/v1/traces: OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, or an exporter's `url` option. */
  readonly tracesUrl: string;
  /** Every span accepted so far, flattened out of resourceSpans/scopeSpans, in arrival order. */
  spans(): ReceivedSpan[];
  /** How many POSTs reached /v1/traces (refused ones included). */
  requests(): number;
  /** Resolves with spans() once predicate(spans()) holds; rejects after timeoutMs with what did arrive. */
  waitForSpans(predicate: (spans: ReceivedSpan[]) => boolean, timeoutMs?: number): Promise<ReceivedSpan[]>;
  /** Every /v1/traces request body (after undoing content-encoding), refused ones included: search them for secrets. */
  rawBodies(): Buffer[];
  /** Answer every export with this HTTP status from now on (503: a broken collector); no argument: accept again. */
  setFailWith(status?: number): void;
  close(): Promise<void>;
}

const PROTO_DIR = join(dirname(fileURLToPath(import.meta.url)), 'otlp-proto');
const MAX_BODY = 32 * 1024 * 1024;

let requestType: protobuf.Type | undefined;

/** ExportTraceServiceRequest from the official trace_service.proto (loaded once). */
function exportTraceServiceRequest(): protobuf.Type {
  if (requestType === undefined) {
    const root = new protobuf.Root();
    root.resolvePath = (_origin, target) => join(PROTO_DIR, target);
    root.loadSync('opentelemetry/proto/collector/trace/v1/trace_service.proto');
    root.resolveAll();
    requestType = root.lookupType('opentelemetry.proto.collector.trace.v1.ExportTraceServiceRequest');
  }
  return requestType;
}

/** The protobuf request as a plain object with the OTLP/JSON field names (camelCase) and value shapes. */
function decodeProtobuf(body: Buffer): unknown {
  const type = exportTraceServiceRequest();
  // longs as decimal strings and enums as numbers, as in OTLP/JSON; bytes stay Buffers (told apart below).
  return type.toObject(type.decode(body), { longs: String, enums: Number, defaults: false, arrays: true, oneofs: false });
}

type Json = Record<string, unknown>;

function isObject(value: unknown): value is Json {
  return typeof value === 'object' && value !== null && !Array.isArray(value) && !(value instanceof Uint8Array);
}

/** A field by its OTLP/JSON name (lowerCamelCase), or by its proto name (snake_case), which JSON parsers also accept. */
function field(obj: Json, camel: string): unknown {
  if (camel in obj) return obj[camel];
  const snake = camel.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`);
  return obj[snake];
}

function list(obj: Json, camel: string): Json[] {
  const value = field(obj, camel);
  if (value === undefined || value === null) return [];
  if (!Array.isArray(value)) throw new Error(`${camel} is not a list`);
  return value.map((item) => {
    if (!isObject(item)) throw new Error(`${camel} holds a non-message`);
    return item;
  });
}

function message(obj: Json, camel: string): Json {
  const value = field(obj, camel);
  if (value === undefined || value === null) return {};
  if (!isObject(value)) throw new Error(`${camel} is not a message`);
  return value;
}

function str(obj: Json, camel: string): string {
  const value = field(obj, camel);
  if (value === undefined || value === null) return '';
  if (typeof value !== 'string') throw new Error(`${camel} is not a string`);
  return value;
}

function int(obj: Json, camel: string): number {
  const value = field(obj, camel);
  if (value === undefined || value === null) return 0;
  const n = typeof value === 'string' ? Number(value) : value;
  if (typeof n !== 'number' || !Number.isInteger(n)) throw new Error(`${camel} is not an integer`);
  return n;
}

function nanos(obj: Json, camel: string): bigint {
  const value = field(obj, camel);
  if (value === undefined || value === null) return 0n;
  if (typeof value !== 'string' && typeof value !== 'number') throw new Error(`${camel} is not a uint64`);
  return BigInt(value);
}

/** trace_id/span_id: raw bytes in protobuf, hex in OTLP/JSON (not base64: OTLP's one exception to the proto JSON mapping). */
function id(obj: Json, camel: string, length: number): string {
  const value = field(obj, camel);
  if (value === undefined || value === null) return '';
  const hex = value instanceof Uint8Array ? Buffer.from(value).toString('hex') : typeof value === 'string' ? value.toLowerCase() : undefined;
  if (hex === undefined || (hex !== '' && !new RegExp(`^[0-9a-f]{${length}}$`).test(hex))) throw new Error(`${camel} is not a ${length / 2}-byte id`);
  return hex;
}

const SPAN_KINDS: readonly SpanKindName[] = ['UNSPECIFIED', 'INTERNAL', 'SERVER', 'CLIENT', 'PRODUCER', 'CONSUMER'];
const STATUS_CODES: readonly StatusCodeName[] = ['UNSET', 'OK', 'ERROR'];

/** An enum given as its number (OTLP/JSON, protobuf) or its full name (SPAN_KIND_SERVER, STATUS_CODE_ERROR). */
function enumName<T extends string>(obj: Json, camel: string, names: readonly T[], prefix: string): T {
  const value = field(obj, camel);
  if (value === undefined || value === null) return names[0]!;
  if (typeof value === 'number' && names[value] !== undefined) return names[value];
  if (typeof value === 'string') {
    const name = names.find((n) => `${prefix}${n}` === value);
    if (name !== undefined) return name;
  }
  throw new Error(`${camel} ${JSON.stringify(value)} is not a known value`);
}

function anyValue(value: Json): AttributeValue {
  if ('stringValue' in value || 'string_value' in value) return str(value, 'stringValue');
  if ('boolValue' in value || 'bool_value' in value) return field(value, 'boolValue') === true;
  if ('intValue' in value || 'int_value' in value) {
    const raw = field(value, 'intValue');
    if (typeof raw === 'number') return raw;
    if (typeof raw !== 'string' || !/^-?\d+$/.test(raw)) throw new Error('intValue is not an int64');
    const n = Number(raw);
    return Number.isSafeInteger(n) ? n : raw;
  }
  if ('doubleValue' in value || 'double_value' in value) {
    const raw = field(value, 'doubleValue');
    return typeof raw === 'string' ? Number(raw) : (raw as number); // "NaN", "Infinity" in JSON
  }
  if ('arrayValue' in value || 'array_value' in value) return list(message(value, 'arrayValue'), 'values').map(anyValue);
  if ('kvlistValue' in value || 'kvlist_value' in value) return attributes(message(value, 'kvlistValue'), 'values');
  if ('bytesValue' in value || 'bytes_value' in value) {
    const raw = field(value, 'bytesValue');
    if (raw instanceof Uint8Array) return Buffer.from(raw);
    if (typeof raw !== 'string') throw new Error('bytesValue is not base64');
    return Buffer.from(raw, 'base64');
  }
  return null; // an empty AnyValue
}

function attributes(obj: Json, camel = 'attributes'): AttributeMap {
  const out: AttributeMap = {};
  for (const kv of list(obj, camel)) out[str(kv, 'key')] = anyValue(message(kv, 'value'));
  return out;
}

/** Flattens an ExportTraceServiceRequest (decoded protobuf or parsed OTLP/JSON) into spans. */
function flatten(request: unknown): ReceivedSpan[] {
  if (!isObject(request)) throw new Error('the request is not an object');
  const out: ReceivedSpan[] = [];
  for (const resourceSpans of list(request, 'resourceSpans')) {
    const resource = attributes(message(resourceSpans, 'resource'));
    for (const scopeSpans of list(resourceSpans, 'scopeSpans')) {
      const scopeMessage = message(scopeSpans, 'scope');
      const scope = { name: str(scopeMessage, 'name'), version: str(scopeMessage, 'version') };
      for (const span of list(scopeSpans, 'spans')) {
        const status = message(span, 'status');
        out.push({
          traceId: id(span, 'traceId', 32),
          spanId: id(span, 'spanId', 16),
          parentSpanId: id(span, 'parentSpanId', 16),
          traceState: str(span, 'traceState'),
          name: str(span, 'name'),
          kind: enumName(span, 'kind', SPAN_KINDS, 'SPAN_KIND_'),
          startTimeUnixNano: nanos(span, 'startTimeUnixNano'),
          endTimeUnixNano: nanos(span, 'endTimeUnixNano'),
          attributes: attributes(span),
          droppedAttributesCount: int(span, 'droppedAttributesCount'),
          status: { code: enumName(status, 'code', STATUS_CODES, 'STATUS_CODE_'), message: str(status, 'message') },
          events: list(span, 'events').map((event) => ({ name: str(event, 'name'), timeUnixNano: nanos(event, 'timeUnixNano'), attributes: attributes(event) })),
          links: list(span, 'links').map((link) => ({
            traceId: id(link, 'traceId', 32),
            spanId: id(link, 'spanId', 16),
            traceState: str(link, 'traceState'),
            attributes: attributes(link),
          })),
          flags: int(span, 'flags'),
          resource,
          scope,
        });
      }
    }
  }
  return out;
}

async function readBody(req: IncomingMessage): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req) {
    const buf = chunk as Buffer;
    size += buf.length;
    if (size > MAX_BODY) throw new Error('body too large');
    chunks.push(buf);
  }
  return Buffer.concat(chunks);
}

function decodeContent(body: Buffer, encoding: string | undefined): Buffer {
  switch ((encoding ?? 'identity').trim().toLowerCase()) {
    case 'identity':
    case '':
      return body;
    case 'gzip':
    case 'x-gzip':
      return gunzipSync(body);
    case 'deflate':
      return inflateSync(body);
    default:
      throw new Error(`content-encoding ${encoding} is not supported`);
  }
}

export async function startOtlpReceiver(options: { failWith?: number } = {}): Promise<OtlpReceiver> {
  const received: ReceivedSpan[] = [];
  const bodies: Buffer[] = [];
  const waiters = new Set<() => void>();
  let requestCount = 0;
  let failWith = options.failWith;

  function answer(res: ServerResponse, status: number, type: string, body: string | Buffer): void {
    res.writeHead(status, { 'content-type': type, 'content-length': Buffer.byteLength(body) });
    res.end(body);
  }

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const path = new URL(req.url ?? '/', 'http://receiver').pathname;
    if (path !== '/v1/traces') return answer(res, 404, 'text/plain', 'not found\n');
    if (req.method !== 'POST') {
      res.setHeader('allow', 'POST');
      return answer(res, 405, 'text/plain', 'method not allowed\n');
    }
    requestCount++;
    let body: Buffer;
    try {
      body = decodeContent(await readBody(req), req.headers['content-encoding']);
    } catch (err) {
      return answer(res, 400, 'text/plain', `${(err as Error).message}\n`);
    }
    bodies.push(body);
    if (failWith !== undefined) return answer(res, failWith, 'text/plain', `refused with ${failWith} by the test receiver\n`);

    const mediaType = (req.headers['content-type'] ?? '').split(';')[0]!.trim().toLowerCase();
    let spans: ReceivedSpan[];
    try {
      if (mediaType === 'application/x-protobuf') spans = flatten(decodeProtobuf(body));
      else if (mediaType === 'application/json') spans = flatten(JSON.parse(body.toString('utf8')));
      else return answer(res, 415, 'text/plain', `content-type ${mediaType || '(none)'} is not OTLP/HTTP\n`);
    } catch (err) {
      return answer(res, 400, 'text/plain', `undecodable ExportTraceServiceRequest: ${(err as Error).message}\n`);
    }
    received.push(...spans);
    for (const wake of waiters) wake();
    // An empty ExportTraceServiceResponse: no bytes in protobuf, {} in JSON.
    if (mediaType === 'application/json') answer(res, 200, 'application/json', '{}');
    else answer(res, 200, 'application/x-protobuf', Buffer.alloc(0));
  }

  const server = createServer((req, res) => {
    handle(req, res).catch((err: unknown) => {
      if (!res.headersSent) answer(res, 500, 'text/plain', `${String(err)}\n`);
      else res.destroy();
    });
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as AddressInfo;
  const url = `http://127.0.0.1:${port}`;

  return {
    url,
    tracesUrl: `${url}/v1/traces`,
    spans: () => [...received],
    requests: () => requestCount,
    rawBodies: () => [...bodies],
    setFailWith(status?: number) {
      failWith = status;
    },
    waitForSpans(predicate, timeoutMs = 5000) {
      return new Promise((resolve, reject) => {
        const check = (): boolean => {
          const snapshot = [...received];
          if (!predicate(snapshot)) return false;
          clearTimeout(timer);
          waiters.delete(wake);
          resolve(snapshot);
          return true;
        };
        const wake = (): void => {
          try {
            check();
          } catch (err) {
            clearTimeout(timer);
            waiters.delete(wake);
            reject(err instanceof Error ? err : new Error(String(err)));
          }
        };
        const timer = setTimeout(() => {
          waiters.delete(wake);
          const seen = received.map((s) => `${s.name} (${s.kind})`).join(', ') || 'none';
          reject(new Error(`waitForSpans: not satisfied after ${timeoutMs} ms; ${requestCount} requests, spans: ${seen}`));
        }, timeoutMs);
        waiters.add(wake);
        wake();
      });
    },
    async close() {
      waiters.clear();
      const closed = once(server, 'close');
      server.close();
      server.closeAllConnections();
      await closed;
    },
  };
}
