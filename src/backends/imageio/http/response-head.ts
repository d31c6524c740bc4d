/**
 * HTTP/1.1 response heads, as bytes in and a parsed head out: no sockets here.
 *
 * Strict where a lax reading could move data to the wrong place: the status line must be
 * `HTTP/1.x NNN`, header names must be tokens, Content-Length must be one run of digits
 * (repeated only with the same value) and a safe integer, and a response may not have both
 * Content-Length and chunked Transfer-Encoding. A head is at most MAX_HEAD_BYTES with at most
 * MAX_HEADERS header lines. Anything else is a BadResponseError, which the caller turns into a
 * failed request and a closed connection.
 */

/** Largest response head we accept; imageio's are about 200 bytes. */
export const MAX_HEAD_BYTES = 16 * 1024;
/** Most header lines in one head; imageio sends fewer than 10. */
export const MAX_HEADERS = 100;

export class BadResponseError extends Error {
  readonly code = 'ERR_BAD_RESPONSE';
}

export type BodyFraming =
  /** No body (204, 304, 1xx, or Content-Length: 0). */
  | { kind: 'none' }
  | { kind: 'length'; length: number }
  | { kind: 'chunked' }
  /** No length and not chunked: the body ends when the server closes the connection. */
  | { kind: 'close' };

export interface ResponseHead {
  status: number;
  /** Lower-case names; repeated headers joined with ", ". */
  headers: Record<string, string>;
  framing: BodyFraming;
  /** The server will close the connection after this response (or HTTP/1.0 without keep-alive). */
  close: boolean;
  /** Bytes of the head, including the blank line. */
  headBytes: number;
}

const CRLFCRLF = Buffer.from('\r\n\r\n');
/** RFC 9110 token: what a header name is made of (no spaces, no obsolete line folding). */
const TOKEN = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;

/**
 * Parses the head at buf[start, end). Returns undefined when it is not complete yet, throws
 * BadResponseError when it cannot be one (too long, garbage).
 */
export function parseResponseHead(buf: Buffer, start: number, end: number): ResponseHead | undefined {
  // Only [start, end) is ours: the rest of `buf` may hold stale bytes.
  const found = buf.subarray(start, end).indexOf(CRLFCRLF);
  const stop = found < 0 ? -1 : start + found;
  if (stop < 0) {
    if (end - start >= 5 && buf.toString('latin1', start, start + 5) !== 'HTTP/') {
      throw new BadResponseError(`not an HTTP response: ${JSON.stringify(buf.toString('latin1', start, Math.min(end, start + 40)))}`);
    }
    if (end - start > MAX_HEAD_BYTES) throw new BadResponseError(`response head longer than ${MAX_HEAD_BYTES} bytes`);
    return undefined;
  }
  if (stop - start > MAX_HEAD_BYTES) throw new BadResponseError(`response head longer than ${MAX_HEAD_BYTES} bytes`);
  const lines = buf.toString('latin1', start, stop).split('\r\n');
  const m = /^HTTP\/1\.([01]) (\d{3})(?: .*)?$/.exec(lines[0]);
  if (!m) throw new BadResponseError(`bad status line: ${JSON.stringify(lines[0].slice(0, 80))}`);
  const minor = Number(m[1]);
  const status = Number(m[2]);
  const headers: Record<string, string> = {};
  let lengths: string[] | undefined;
  if (lines.length - 1 > MAX_HEADERS) throw new BadResponseError(`response head has more than ${MAX_HEADERS} header lines`);
  for (let i = 1; i < lines.length; i++) {
    const line = lines[i];
    const colon = line.indexOf(':');
    if (colon <= 0 || !TOKEN.test(line.slice(0, colon))) {
      throw new BadResponseError(`bad header line: ${JSON.stringify(line.slice(0, 80))}`);
    }
    const name = line.slice(0, colon).toLowerCase();
    const value = line.slice(colon + 1).trim();
    if (name === 'content-length') (lengths ??= []).push(...value.split(',').map((v) => v.trim()));
    headers[name] = name in headers ? `${headers[name]}, ${value}` : value;
  }
  const connection = (headers['connection'] ?? '').toLowerCase();
  const close = connection.includes('close') || (minor === 0 && !connection.includes('keep-alive'));
  const te = headers['transfer-encoding'];
  let framing: BodyFraming;
  if ((status >= 100 && status < 200) || status === 204 || status === 304) {
    framing = { kind: 'none' };
  } else if (te !== undefined) {
    if (lengths) throw new BadResponseError('response has both Content-Length and Transfer-Encoding');
    if (te.toLowerCase().split(',').pop()!.trim() !== 'chunked') {
      throw new BadResponseError(`unsupported Transfer-Encoding: ${JSON.stringify(te)}`);
    }
    framing = { kind: 'chunked' };
  } else if (lengths) {
    if (!lengths.every((v) => v === lengths![0]) || !/^\d{1,16}$/.test(lengths[0])) {
      throw new BadResponseError(`bad Content-Length: ${JSON.stringify(headers['content-length'])}`);
    }
    const length = Number(lengths[0]);
    if (!Number.isSafeInteger(length)) throw new BadResponseError(`Content-Length too large: ${lengths[0]}`);
    framing = length === 0 ? { kind: 'none' } : { kind: 'length', length };
  } else {
    framing = { kind: 'close' };
  }
  return { status, headers, framing, close: close || framing.kind === 'close', headBytes: stop + 4 - start };
}
