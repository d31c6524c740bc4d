/**
 * One HTTP/1.1 response, from bytes to a result: interim (1xx) responses skipped, then the
 * final head, then the body by its framing. No sockets here; the connection feeds it.
 *
 * Promises:
 * - feed() consumes bytes up to the end of the response and no further; once `result` is set
 *   it consumes nothing more (what is left is the caller's: a server that sent more than its
 *   response).
 * - Memory stays bounded whatever arrives: a head is at most MAX_HEAD_BYTES (the caller's
 *   staging window), at most MAX_INTERIM interim responses are skipped, and a body other than
 *   `into` is kept up to `maxBody` bytes; a longer one ends the response with `truncated`.
 * - A successful status (`ok`) with `into` must announce exactly into.length bytes by
 *   Content-Length; its body goes into `into`, through directTarget() when the caller can
 *   read straight into it.
 * - Anything malformed throws BadResponseError; the reader must then be dropped.
 */
import { ChunkedDecoder } from './chunked-decoder';
import { BadResponseError, parseResponseHead, type ResponseHead } from './response-head';

/** Interim responses skipped before the final one; a server sending more is not imageio. */
export const MAX_INTERIM = 16;

export interface ReadSpec {
  /** Statuses that mean success: `into` applies only to them. */
  ok: readonly number[];
  into?: Buffer;
  /** Any other body is kept up to this many bytes. */
  maxBody: number;
}

export interface ReadResult {
  head: ResponseHead;
  /** The body (empty for `into` responses): at most maxBody bytes. */
  body: Buffer;
  /** The body was longer than maxBody: it was cut; the connection must be closed. */
  truncated: boolean;
}

type Phase = 'head' | 'dest' | 'chunked' | 'until-close' | 'done';

export class ResponseReader {
  phase: Phase = 'head';
  /** The final response's head, once parsed. */
  head: ResponseHead | undefined;
  result: ReadResult | undefined;
  private interim = 0;
  private dest: Buffer | undefined;
  private filled = 0;
  /** The declared body is longer than dest: cut. */
  private cut = false;
  private chunked: ChunkedDecoder | undefined;
  private parts: Buffer[] = [];
  private kept = 0;

  constructor(private readonly spec: ReadSpec) {}

  /** Consumes from buf[start, end) (never past the end of the response); returns the bytes used. */
  feed(buf: Buffer, start: number, end: number): number {
    let i = start;
    while (i < end && this.phase !== 'done') {
      switch (this.phase) {
        case 'head': {
          const head = parseResponseHead(buf, i, end);
          if (!head) return i - start;
          i += head.headBytes;
          this.onHead(head);
          break;
        }
        case 'dest': {
          const dest = this.dest!;
          const n = Math.min(end - i, dest.length - this.filled);
          buf.copy(dest, this.filled, i, i + n);
          i += n;
          this.advanceDirect(n);
          break;
        }
        case 'chunked': {
          const dec = this.chunked!;
          i += dec.feed(buf, i, end);
          if (dec.done) this.finish(dec.body(), false);
          else if (dec.overflow) this.finish(dec.body(), true);
          break;
        }
        case 'until-close': {
          const n = end - i;
          const k = Math.min(n, this.spec.maxBody - this.kept);
          if (k > 0) {
            this.parts.push(Buffer.from(buf.subarray(i, i + k)));
            this.kept += k;
          }
          i += n;
          if (n > k) this.finish(Buffer.concat(this.parts, this.kept), true);
          break;
        }
      }
    }
    return i - start;
  }

  /** Where the next body bytes may be read directly, while the body has a known length. */
  directTarget(): Buffer | undefined {
    return this.phase === 'dest' ? this.dest!.subarray(this.filled) : undefined;
  }

  /** `n` bytes were written at the start of directTarget(). */
  advanceDirect(n: number): void {
    this.filled += n;
    if (this.filled === this.dest!.length) this.finish(this.dest === this.spec.into ? Buffer.alloc(0) : this.dest!, this.cut);
  }

  /** The server closed the connection: returns true when that completed the response. */
  end(): boolean {
    if (this.phase === 'until-close') this.finish(Buffer.concat(this.parts, this.kept), false);
    return this.result !== undefined;
  }

  private onHead(head: ResponseHead): void {
    if (head.status >= 100 && head.status < 200) {
      // RFC 9110 section 15.2: a client must accept interim responses it did not ask for
      // (100 Continue, 103 Early Hints) and wait for the final one; 101 would switch protocols.
      if (head.status === 101) throw new BadResponseError('the server switched protocols (101) without being asked');
      if (++this.interim > MAX_INTERIM) throw new BadResponseError(`more than ${MAX_INTERIM} interim (1xx) responses`);
      return;
    }
    this.head = head;
    const spec = this.spec;
    const f = head.framing;
    if (spec.into && spec.ok.includes(head.status)) {
      const want = spec.into.length;
      if (f.kind !== 'length' || f.length !== want) {
        if (!(want === 0 && f.kind === 'none')) {
          const got = f.kind === 'length' ? `${f.length} bytes` : f.kind === 'none' ? 'no body' : `a ${f.kind}-delimited body`;
          throw new BadResponseError(`expected a body of ${want} bytes, the server announced ${got}`);
        }
      }
      this.phase = 'dest';
      this.dest = spec.into;
      if (want === 0) this.advanceDirect(0);
      return;
    }
    switch (f.kind) {
      case 'none':
        this.finish(Buffer.alloc(0), false);
        return;
      case 'length':
        this.phase = 'dest';
        this.dest = Buffer.allocUnsafe(Math.min(f.length, spec.maxBody));
        this.cut = f.length > spec.maxBody;
        if (this.dest.length === 0) this.advanceDirect(0);
        return;
      case 'chunked':
        this.phase = 'chunked';
        this.chunked = new ChunkedDecoder(spec.maxBody);
        return;
      case 'close':
        this.phase = 'until-close';
        return;
    }
  }

  private finish(body: Buffer, truncated: boolean): void {
    this.phase = 'done';
    this.result = { head: this.head!, body, truncated };
    this.dest = undefined;
    this.chunked = undefined;
    this.parts = [];
  }
}
