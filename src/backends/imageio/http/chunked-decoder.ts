/**
 * Incremental decoder of a chunked response body (RFC 9112 section 7.1), as bytes in and body
 * out: no sockets here. It keeps at most `cap` bytes of body whatever the server sends: chunk
 * sizes are at most 12 hex digits, a size or trailer line at most 1024 bytes, trailers are
 * read and dropped. A malformed body throws BadResponseError.
 */
import { BadResponseError } from './response-head';

/**
 * Incremental chunked-body decoder (RFC 9112 section 7.1) that keeps at most `cap` bytes of
 * body. Feed it bytes; it reports how many it consumed and whether the body ended.
 */
export class ChunkedDecoder {
  private state: 'size' | 'data' | 'data-crlf' | 'trailer' | 'done' = 'size';
  private line = '';
  private remaining = 0;
  private sawCR = false;
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
          // CRLF, or a bare LF (RFC 9112 section 2.2 lets a recipient accept it).
          const c = buf[i];
          if (c === 13 && !this.sawCR) {
            this.sawCR = true;
            i++;
          } else if (c === 10) {
            this.sawCR = false;
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
