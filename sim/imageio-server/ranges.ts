/**
 * Range (GET) and Content-Range (PUT) header parsing with imageio's exact rules and messages.
 * Only `bytes=FIRST-LAST` and `bytes=FIRST-` are served; a PUT uses only the first byte of
 * its Content-Range (the length comes from Content-Length).
 */
import { ImageioHttpError } from './http-errors';
import { reprString } from './py-format';

export interface ByteRange {
  first: number;
  /** Inclusive; undefined for `bytes=N-`. */
  last?: number;
}

/** Parse a Range header; throws 416 errors worded as imageio's. */
export function parseRange(header: string): ByteRange {
  // Python: re.match(r"bytes=(\d*)-(\d*)$"); "$" also matches before a final "\n".
  const m = /^bytes=(\d*)-(\d*)\n?$/.exec(header);
  if (!m) {
    throw new ImageioHttpError(416, `Cannot satisfy range ${reprString(header)}, invalid range or multiple ranges`);
  }
  const [, first, last] = m;
  if (!first) {
    if (!last) throw new ImageioHttpError(416, `Cannot satisfy range ${reprString(header)}, no first or last`);
    throw new ImageioHttpError(416, 'suffix-byte-range-spec not supported yet');
  }
  const f = Number(first);
  if (!last) return { first: f };
  const l = Number(last);
  if (f > l) throw new ImageioHttpError(416, `Cannot satisfy range ${reprString(header)}, first > last`);
  return { first: f, last: l };
}

/** Parse a PUT Content-Range header; returns the first byte. Throws 400 like imageio. */
export function parseContentRange(header: string): { first: number; last?: number; complete?: number } {
  const m = /^bytes (\d+)-(\d+|\*)\/(\d+|\*)\n?$/.exec(header);
  if (!m) throw new ImageioHttpError(400, `Invalid Content-Range ${reprString(header)}`);
  const first = Number(m[1]);
  const last = m[2] === '*' ? undefined : Number(m[2]);
  if (last !== undefined && last < first) {
    throw new ImageioHttpError(400, `Invalid Content-Range ${reprString(header)}, first > last`);
  }
  const complete = m[3] === '*' ? undefined : Number(m[3]);
  if (complete !== undefined && last !== undefined && last >= complete) {
    throw new ImageioHttpError(400, `Invalid Content-Range ${reprString(header)}, last >= complete`);
  }
  return { first, last, complete };
}

/** imageio's validate.allowed_range: offset+size must fit the ticket. */
export function checkAllowedRange(offset: number, size: number, ticketSize: number): void {
  if (offset + size > ticketSize || size < 0) {
    throw new ImageioHttpError(416, 'Requested range out of allowed range', { contentRange: `bytes */${ticketSize}` });
  }
}
