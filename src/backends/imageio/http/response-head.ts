/**
 * HTTP/1.1 response heads, as bytes in and a parsed head out: no sockets here.
 *
 * Strict where a lax reading could move data to the wrong place: the status line must be
 * `HTTP/1.x NNN`, Content-Length must be one run of digits (repeated only with the same
 * value) and a safe integer, and a response may not have both Content-Length and chunked
 * Transfer-Encoding. Anything else is a BadResponseError, which the caller turns into a
 * failed request and a closed connection.
 */

/** Largest response head we accept; imageio's are about 200 bytes. */
export const MAX_HEAD_BYTES = 16 * 1024;

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

/**
 * Parses the head at buf[start, end). Returns undefined when it is not complete yet, throws
 * BadResponseError when it cannot be one (too long, garbage).
 */
export function parseResponseHead(buf: Buffer, start: number, end: number): ResponseHead | undefined {
  const stop = buf.indexOf(CRLFCRLF, start);
  if (stop < 0 || stop + 4 > end) {
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
  for (let i = 1; i < lines.length; i++) {
    const line = lines[i];
    const colon = line.indexOf(':');
    if (colon <= 0 || /[\s]/.test(line[colon - 1])) {
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

/**
 * Incremental chunked-body decoder (RFC 9112 section 7.1) that keeps at most `cap` bytes of
 * body. Feed it bytes; it reports how many it consumed and whether the body ended.
 */
export class ChunkedDecoder {
  private state: 'size' | 'data' | 'data-crlf' | 'trailer' | 'done' = 'size';
  private line = '';
  private remaining = 0;
  private readonly parts: Buffer[] = [];
  private kept = 0;
  /** Body bytes seen, kept or not. */
  total = 0;

  constructor(private readonly cap: number) {}

  get done(): boolean {
    return this.state === 'done';
  }

  /** More body than the cap arrived (the caller stops reading and closes). */
  get overflow(): boolean {
    return this.total > this.cap;
  }

  body(): Buffer {
    return Buffer.concat(this.parts, this.kept);
  }

  /** Consumes from buf[start, end); returns the number of bytes used (stops at the end of the body). */
  feed(buf: Buffer, start: number, end: number): number {
    let i = start;
    while (i < end && this.state !== 'done') {
      switch (this.state) {
        case 'size':
        case 'trailer': {
          const nl = buf.indexOf(10, i);
          const stop = nl < 0 || nl >= end ? end : nl;
          this.line += buf.toString('latin1', i, stop);
          if (this.line.length > 1024) throw new BadResponseError('chunked body: line too long');
          i = stop;
          if (nl < 0 || nl >= end) break;
          i++; // the LF
          const line = this.line.replace(/\r$/, '');
          this.line = '';
          if (this.state === 'trailer') {
            if (line === '') this.state = 'done';
            break;
          }
          const m = /^([0-9a-fA-F]{1,12})(?:\s*;.*)?$/.exec(line);
          if (!m) throw new BadResponseError(`chunked body: bad chunk size ${JSON.stringify(line.slice(0, 40))}`);
          this.remaining = parseInt(m[1], 16);
          this.state = this.remaining === 0 ? 'trailer' : 'data';
          break;
        }
        case 'data': {
          const n = Math.min(this.remaining, end - i);
          this.total += n;
          const room = this.cap - this.kept;
          if (room > 0) {
            const k = Math.min(room, n);
            this.parts.push(Buffer.from(buf.subarray(i, i + k)));
            this.kept += k;
          }
          this.remaining -= n;
          i += n;
          if (this.remaining === 0) this.state = 'data-crlf';
          if (this.overflow) return i - start;
          break;
        }
        case 'data-crlf': {
          const c = buf[i];
          if (c === 13) {
            i++;
          } else if (c === 10) {
            i++;
            this.state = 'size';
          } else {
            throw new BadResponseError('chunked body: missing CRLF after chunk data');
          }
          break;
        }
      }
    }
    return i - start;
  }
}
