/**
 * The request-id rule of every door: the client's `x-request-id` (for the check doors: the original
 * request's, as the proxy passed it) when it is a sane token, since it goes into logs and upstream;
 * otherwise a new UUID.
 */
import { randomUUID } from 'node:crypto';
import type { IncomingMessage } from 'node:http';

const REQUEST_ID = /^[A-Za-z0-9._:-]{1,128}$/;

/** The first of `candidates` that is a sane token, else a new UUID. */
export function requestIdOrNew(...candidates: Array<string | undefined>): string {
  for (const given of candidates) if (given !== undefined && REQUEST_ID.test(given)) return given;
  return randomUUID();
}

/**
 * The request id of an HTTP request (fastify's genReqId): its one `x-request-id` when sane. Read from
 * `rawHeaders`, as every door reads headers; two of them (node would join them with ", ") get a new id.
 */
export function requestIdOf(req: IncomingMessage): string {
  const raw = req.rawHeaders;
  let given: string | undefined;
  for (let i = 0; i + 1 < raw.length; i += 2) {
    const name = raw[i] ?? '';
    if (name.length !== 12 || name.toLowerCase() !== 'x-request-id') continue;
    if (given !== undefined) return requestIdOrNew();
    given = raw[i + 1];
  }
  return requestIdOrNew(given);
}
