/**
 * Incremental decoder for everything a client sends. Pull-based: bytes go in, complete messages
 * come out of next(), so the server can stop taking requests when it has too many in flight
 * (and stop reading the socket) without the decoder buffering on its own.
 *
 * Two ways to feed it:
 * - Zero-copy: readTarget() says where the next bytes should land, the caller reads into that
 *   buffer (Node's `onread` buffer function) and reports commit(n). Headers and option data land
 *   in a small staging buffer; a WRITE payload lands straight in the buffer that next() returns,
 *   so payload bytes are copied once, by the kernel. Staging reads right after a WRITE are sized
 *   to one request header, so a header read does not swallow the next payload.
 * - push(chunk): copies a chunk in (tests, and sockets that can only deliver 'data' events).
 *
 * WRITE payload buffers come from the `allocatePayload` function given to the constructor. When
 * it returns undefined (no memory now), the decoder stops there: next() returns undefined and
 * payloadWanted says how many bytes are needed; the caller stops reading and, once memory is
 * available, hands a buffer to providePayload(). Bytes that arrive meanwhile are kept in staging.
 *
 * Phases: the 4-byte client flags, then option requests, then (after the server calls
 * startTransmission()) requests with their WRITE payloads.
 *
 * Bounded: option data and WRITE payloads above the configured limits are skipped without
 * buffering (dropped as they arrive) and reported as *TooBig messages; above the drain limits the
 * decoder reports a fatal error, because reading that much garbage is itself a denial of service.
 */
import {
  CLIENT_FLAGS_SIZE,
  Command,
  IHAVEOPT,
  OPTION_HEADER_SIZE,
  REQUEST_HEADER_SIZE,
} from './constants';
import { decodeRequestHeader, type RequestHeader } from './transmission';

export interface DecoderLimits {
  /** Largest option data delivered; larger is skipped and reported as optionTooBig. */
  maxOptionLength: number;
  /** Largest option data skipped; larger is a fatal error. */
  maxOptionDrain: number;
  /** Largest WRITE payload delivered; larger is skipped and reported as requestTooBig. */
  maxPayload: number;
  /** Largest WRITE payload skipped; larger is a fatal error. */
  maxPayloadDrain: number;
}

export const DEFAULT_DECODER_LIMITS: DecoderLimits = {
  maxOptionLength: 4 * 1024 * 1024,
  maxOptionDrain: 16 * 1024 * 1024,
  maxPayload: 64 * 1024 * 1024,
  maxPayloadDrain: 128 * 1024 * 1024,
};

export type DecodedMessage =
  | { kind: 'clientFlags'; flags: number }
  /** `data` is the decoder's own copy: the caller may keep it. */
  | { kind: 'option'; option: number; data: Buffer }
  /** Option data was larger than maxOptionLength and has been skipped. */
  | { kind: 'optionTooBig'; option: number; length: number }
  /**
   * `data` is present for WRITE (possibly empty), absent for other commands. A non-empty
   * payload is the buffer allocatePayload() or providePayload() gave: the caller now owns it.
   */
  | { kind: 'request'; header: RequestHeader; data?: Buffer }
  /** A WRITE payload larger than maxPayload has been skipped; the request must be failed. */
  | { kind: 'requestTooBig'; header: RequestHeader }
  /** Unrecoverable: the stream cannot be parsed further; drop the connection. */
  | { kind: 'error'; reason: string };

export type DecoderPhase = 'clientFlags' | 'options' | 'transmission';

/** Returns a buffer of exactly n bytes for a WRITE payload, or undefined if none is available now. */
export type PayloadAllocator = (n: number) => Buffer | undefined;

export interface DecoderOptions {
  /** Where WRITE payloads land (default Buffer.allocUnsafe). */
  allocatePayload?: PayloadAllocator;
  /** Staging buffer size: headers and small option data (default 64 KiB). */
  stagingSize?: number;
  /**
   * Bytes a staging read may take when the previous request was not a WRITE (default 4 KiB):
   * several READ headers per read, while a WRITE's payload swallowed into staging stays small.
   * 0 reads exactly one request header at a time, always.
   */
  stagingReadSize?: number;
}

/** A message body being received into its own buffer: option data or a WRITE payload. */
type Body =
  | { kind: 'option'; option: number; buf: Buffer | undefined }
  | { kind: 'write'; header: RequestHeader; buf: Buffer | undefined };

const EMPTY = Buffer.alloc(0);
const DEFAULT_STAGING = 64 * 1024;
const DEFAULT_STAGING_READ = 4 * 1024;

export class NbdDecoder {
  private readonly limits: DecoderLimits;
  private readonly allocatePayload: PayloadAllocator;
  private readonly stagingReadSize: number;
  /** Staging: received bytes not yet decoded are stage[head, tail). */
  private stage: Buffer;
  private head = 0;
  private tail = 0;
  /** The body being received, and how much of it is filled. */
  private body: Body | undefined;
  private filled = 0;
  /** Where the bytes of the next commit() landed: the body (true) or staging at `tail`. */
  private targetIsBody = false;
  private skipRemaining = 0;
  /** A skipped message to report once the skip is over. */
  private skipped: DecodedMessage | undefined;
  private lastWasWrite = false;
  private dead = false;
  private phaseNow: DecoderPhase = 'clientFlags';

  constructor(limits: Partial<DecoderLimits> = {}, opts: DecoderOptions = {}) {
    this.limits = { ...DEFAULT_DECODER_LIMITS, ...limits };
    this.allocatePayload = opts.allocatePayload ?? Buffer.allocUnsafe;
    const size = Math.max(opts.stagingSize ?? DEFAULT_STAGING, 2 * REQUEST_HEADER_SIZE);
    this.stage = Buffer.allocUnsafe(size);
    this.stagingReadSize = Math.min(opts.stagingReadSize ?? DEFAULT_STAGING_READ, size);
  }

  get phase(): DecoderPhase {
    return this.phaseNow;
  }

  /** Bytes received and held, not yet returned as messages. */
  get bufferedBytes(): number {
    return this.tail - this.head + this.filled;
  }

  /** True while a message (header or payload) is partly received. */
  get inMessage(): boolean {
    return this.tail > this.head || this.body !== undefined || this.skipRemaining > 0 || this.skipped !== undefined;
  }

  /** Bytes of the WRITE payload waiting for providePayload() (allocatePayload had none); else 0. */
  get payloadWanted(): number {
    const b = this.body;
    return b && b.kind === 'write' && !b.buf ? b.header.length : 0;
  }

  /** Switch to transmission requests; call right after the option that ends negotiation. */
  startTransmission(): void {
    this.phaseNow = 'transmission';
  }

  /** Give the payload buffer (exactly payloadWanted bytes) that allocatePayload could not. */
  providePayload(buf: Buffer): void {
    const want = this.payloadWanted;
    if (want === 0 || buf.length !== want) {
      throw new RangeError(`providePayload: ${buf.length} bytes given, ${want} wanted`);
    }
    this.body!.buf = buf;
    this.absorb();
  }

  /**
   * Stop decoding for good (the connection is closing). Returns the payload buffer being
   * received, if any, for the caller to release once nothing can write into it any more.
   */
  abandon(): Buffer | undefined {
    const b = this.body;
    const buf = b && b.kind === 'write' ? b.buf : undefined;
    this.body = undefined;
    this.filled = 0;
    this.dead = true;
    this.head = this.tail = 0;
    return buf;
  }

  /**
   * Where the next bytes should land: a non-empty buffer, valid until the matching commit().
   * Call it once per read; the bytes of that read are then reported with commit(n).
   */
  readTarget(): Buffer {
    const b = this.body;
    if (b && b.buf && this.filled < b.buf.length && this.head === this.tail) {
      this.targetIsBody = true;
      return b.buf.subarray(this.filled);
    }
    this.targetIsBody = false;
    const staged = this.tail - this.head;
    let need: number;
    let want: number;
    if (this.dead || this.skipRemaining > 0) {
      need = 1;
      want = this.stage.length;
    } else if (this.phaseNow !== 'transmission') {
      const n = this.body ? this.optionLength : this.phaseNow === 'clientFlags' ? CLIENT_FLAGS_SIZE : OPTION_HEADER_SIZE;
      need = n > staged ? n - staged : 1;
      want = this.stage.length;
    } else {
      need = REQUEST_HEADER_SIZE > staged ? REQUEST_HEADER_SIZE - staged : 1;
      // After a WRITE, read one header only: what follows it is most likely the next payload.
      want = this.lastWasWrite || this.stagingReadSize === 0 ? need : Math.max(need, this.stagingReadSize);
    }
    this.makeRoom(need);
    return this.stage.subarray(this.tail, Math.min(this.tail + want, this.stage.length));
  }

  /**
   * n bytes were written at the start of the last readTarget(). Returns false when they only
   * advanced a payload that is still incomplete (next() would return nothing new).
   */
  commit(n: number): boolean {
    if (this.dead) return false; // nothing is decoded any more; staging is reused as it is
    if (this.targetIsBody) {
      this.filled += n;
      return this.filled === this.body!.buf!.length;
    }
    this.tail += n;
    this.settle();
    return true;
  }

  /** Copy a chunk in (tests, and the 'data' event fallback). */
  push(chunk: Buffer): void {
    if (this.dead) return;
    let off = 0;
    while (off < chunk.length) {
      const b = this.body;
      const rest = chunk.length - off;
      let t: Buffer;
      if (b && b.buf && this.filled < b.buf.length && this.head === this.tail) {
        this.targetIsBody = true;
        t = b.buf.subarray(this.filled);
      } else {
        this.targetIsBody = false;
        this.makeRoom(rest);
        t = this.stage.subarray(this.tail);
      }
      const m = Math.min(t.length, rest);
      chunk.copy(t, 0, off, off + m);
      this.commit(m);
      off += m;
    }
  }

  /** The next complete message, or undefined when more bytes (or a payload buffer) are needed. */
  next(): DecodedMessage | undefined {
    if (this.dead) return undefined;
    for (;;) {
      if (this.skipRemaining > 0) {
        this.settle();
        if (this.skipRemaining > 0) return undefined;
      }
      if (this.skipped) {
        const m = this.skipped;
        this.skipped = undefined;
        return m;
      }
      const b = this.body;
      if (b) {
        if (b.kind === 'option' && !b.buf) {
          // Small option data: wait for it in staging, then hand out a copy.
          const n = this.optionLength;
          if (this.tail - this.head < n) return undefined;
          const data = Buffer.from(this.stage.subarray(this.head, this.head + n));
          this.head += n;
          this.body = undefined;
          return { kind: 'option', option: b.option, data };
        }
        if (b.kind === 'write' && !b.buf) {
          const buf = this.allocatePayload(b.header.length);
          if (!buf) return undefined;
          b.buf = buf;
          this.absorb();
        }
        if (!b.buf || this.filled < b.buf.length) return undefined;
        const data = b.buf;
        this.body = undefined;
        this.filled = 0;
        return b.kind === 'option' ? { kind: 'option', option: b.option, data } : { kind: 'request', header: b.header, data };
      }
      const avail = this.tail - this.head;
      switch (this.phaseNow) {
        case 'clientFlags': {
          if (avail < CLIENT_FLAGS_SIZE) return undefined;
          const flags = this.stage.readUInt32BE(this.head);
          this.head += CLIENT_FLAGS_SIZE;
          this.phaseNow = 'options';
          return { kind: 'clientFlags', flags };
        }
        case 'options': {
          if (avail < OPTION_HEADER_SIZE) return undefined;
          const h = this.stage;
          const pos = this.head;
          if (h.readBigUInt64BE(pos) !== IHAVEOPT) return this.fail('bad option magic');
          const option = h.readUInt32BE(pos + 8);
          const length = h.readUInt32BE(pos + 12);
          this.head += OPTION_HEADER_SIZE;
          if (length > this.limits.maxOptionDrain) {
            return this.fail(`option ${option} data of ${length} bytes is too large to skip`);
          }
          if (length > this.limits.maxOptionLength) {
            this.startSkip(length, { kind: 'optionTooBig', option, length });
          } else if (length === 0) {
            return { kind: 'option', option, data: EMPTY };
          } else if (length <= this.stage.length) {
            this.optionLength = length;
            this.body = { kind: 'option', option, buf: undefined };
          } else {
            // Large option data gets its own buffer (bounded by maxOptionLength).
            this.body = { kind: 'option', option, buf: Buffer.allocUnsafe(length) };
            this.absorb();
          }
          continue;
        }
        case 'transmission': {
          if (avail < REQUEST_HEADER_SIZE) return undefined;
          const header = decodeRequestHeader(this.stage, this.head);
          if (!header) return this.fail('bad request magic');
          this.head += REQUEST_HEADER_SIZE;
          this.lastWasWrite = header.type === Command.WRITE;
          if (header.type !== Command.WRITE) return { kind: 'request', header };
          const length = header.length;
          if (length === 0) return { kind: 'request', header, data: EMPTY };
          if (length > this.limits.maxPayloadDrain) {
            return this.fail(`write payload of ${length} bytes is too large to skip`);
          }
          if (length > this.limits.maxPayload) {
            this.startSkip(length, { kind: 'requestTooBig', header });
          } else {
            this.body = { kind: 'write', header, buf: undefined };
            this.filled = 0;
          }
          continue;
        }
      }
    }
  }

  /** Length of small option data awaited in staging (body.kind 'option' without a buffer). */
  private optionLength = 0;

  private startSkip(length: number, report: DecodedMessage): void {
    this.skipRemaining = length;
    this.skipped = report;
    this.settle();
  }

  /** Work that needs no consumer: drop skipped bytes, move staged bytes into the body. */
  private settle(): void {
    if (this.skipRemaining > 0) {
      const n = Math.min(this.skipRemaining, this.tail - this.head);
      this.head += n;
      this.skipRemaining -= n;
    }
    if (this.body?.buf) this.absorb();
  }

  /** Move staged bytes into the body buffer (bytes that arrived before the buffer did). */
  private absorb(): void {
    const buf = this.body!.buf!;
    const n = Math.min(this.tail - this.head, buf.length - this.filled);
    if (n > 0) {
      this.stage.copy(buf, this.filled, this.head, this.head + n);
      this.filled += n;
      this.head += n;
    }
  }

  /** Make at least `want` bytes of room after `tail` (compacting, or growing for push()). */
  private makeRoom(want: number): void {
    if (this.head === this.tail) this.head = this.tail = 0;
    if (this.stage.length - this.tail >= want) return;
    const live = this.tail - this.head;
    if (this.head > 0) {
      this.stage.copy(this.stage, 0, this.head, this.tail);
      this.head = 0;
      this.tail = live;
      if (this.stage.length - this.tail >= want) return;
    }
    // Only push() of big chunks, or a consumer that stopped pulling, gets here.
    const grown = Buffer.allocUnsafe(Math.max(2 * this.stage.length, live + want));
    this.stage.copy(grown, 0, 0, live);
    this.stage = grown;
  }

  private fail(reason: string): DecodedMessage {
    this.dead = true;
    this.head = this.tail = 0;
    this.skipRemaining = 0;
    return { kind: 'error', reason };
  }
}
