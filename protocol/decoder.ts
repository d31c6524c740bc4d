/**
 * Incremental decoder for everything a client sends: push() arbitrary chunks as they arrive,
 * pull complete messages with next(). Pull-based so the server can stop taking requests when it
 * has too many in flight (and pause the socket) without the decoder buffering on its own.
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
  | { kind: 'option'; option: number; data: Buffer }
  /** Option data was larger than maxOptionLength and has been skipped. */
  | { kind: 'optionTooBig'; option: number; length: number }
  /** `data` is present for WRITE (possibly empty), absent for other commands. */
  | { kind: 'request'; header: RequestHeader; data?: Buffer }
  /** A WRITE payload larger than maxPayload has been skipped; the request must be failed. */
  | { kind: 'requestTooBig'; header: RequestHeader }
  /** Unrecoverable: the stream cannot be parsed further; drop the connection. */
  | { kind: 'error'; reason: string };

export type DecoderPhase = 'clientFlags' | 'options' | 'transmission';

type Pending =
  | { kind: 'option'; option: number; length: number }
  | { kind: 'optionTooBig'; option: number; length: number }
  | { kind: 'write'; header: RequestHeader }
  | { kind: 'requestTooBig'; header: RequestHeader };

const EMPTY = Buffer.alloc(0);

export class NbdDecoder {
  private readonly limits: DecoderLimits;
  private chunks: Buffer[] = [];
  /** Index of the first live chunk in `chunks`, and the read position inside it. */
  private first = 0;
  private head = 0;
  private buffered = 0;
  private skipRemaining = 0;
  private pending: Pending | undefined;
  private dead = false;
  private phaseNow: DecoderPhase = 'clientFlags';

  /**
   * @param allocate where payloads that span socket chunks are assembled (default
   *   Buffer.allocUnsafe); the server passes a pool so big payloads reuse memory.
   */
  constructor(
    limits: Partial<DecoderLimits> = {},
    private readonly allocate: (n: number) => Buffer = Buffer.allocUnsafe,
  ) {
    this.limits = { ...DEFAULT_DECODER_LIMITS, ...limits };
  }

  get phase(): DecoderPhase {
    return this.phaseNow;
  }

  /** Bytes received and held, not yet returned as messages. */
  get bufferedBytes(): number {
    return this.buffered;
  }

  /** True while a message (header or payload) is partly received. */
  get inMessage(): boolean {
    return this.buffered > 0 || this.pending !== undefined || this.skipRemaining > 0;
  }

  /** Switch to transmission requests; call right after the option that ends negotiation. */
  startTransmission(): void {
    this.phaseNow = 'transmission';
  }

  push(chunk: Buffer): void {
    if (this.dead || chunk.length === 0) return;
    if (this.skipRemaining > 0 && this.buffered === 0) {
      // Draining: drop bytes as they arrive instead of holding them.
      const n = Math.min(this.skipRemaining, chunk.length);
      this.skipRemaining -= n;
      if (n === chunk.length) return;
      chunk = chunk.subarray(n);
    }
    this.chunks.push(chunk);
    this.buffered += chunk.length;
  }

  /** The next complete message, or undefined when more bytes are needed. */
  next(): DecodedMessage | undefined {
    if (this.dead) return undefined;
    for (;;) {
      if (this.skipRemaining > 0) {
        const n = Math.min(this.skipRemaining, this.buffered);
        this.discard(n);
        this.skipRemaining -= n;
        if (this.skipRemaining > 0) return undefined;
      }
      const p = this.pending;
      if (p) {
        switch (p.kind) {
          case 'optionTooBig':
            this.pending = undefined;
            return { kind: 'optionTooBig', option: p.option, length: p.length };
          case 'requestTooBig':
            this.pending = undefined;
            return { kind: 'requestTooBig', header: p.header };
          case 'option':
            if (this.buffered < p.length) return undefined;
            this.pending = undefined;
            return { kind: 'option', option: p.option, data: this.take(p.length) };
          case 'write':
            if (this.buffered < p.header.length) return undefined;
            this.pending = undefined;
            return { kind: 'request', header: p.header, data: this.take(p.header.length) };
        }
      }
      switch (this.phaseNow) {
        case 'clientFlags': {
          if (this.buffered < CLIENT_FLAGS_SIZE) return undefined;
          const b = this.take(CLIENT_FLAGS_SIZE);
          this.phaseNow = 'options';
          return { kind: 'clientFlags', flags: b.readUInt32BE(0) };
        }
        case 'options': {
          if (this.buffered < OPTION_HEADER_SIZE) return undefined;
          const h = this.take(OPTION_HEADER_SIZE);
          if (h.readBigUInt64BE(0) !== IHAVEOPT) return this.fail('bad option magic');
          const option = h.readUInt32BE(8);
          const length = h.readUInt32BE(12);
          if (length > this.limits.maxOptionDrain) {
            return this.fail(`option ${option} data of ${length} bytes is too large to skip`);
          }
          if (length > this.limits.maxOptionLength) {
            this.skipRemaining = length;
            this.pending = { kind: 'optionTooBig', option, length };
          } else if (length === 0) {
            return { kind: 'option', option, data: EMPTY };
          } else {
            this.pending = { kind: 'option', option, length };
          }
          continue;
        }
        case 'transmission': {
          if (this.buffered < REQUEST_HEADER_SIZE) return undefined;
          const header = decodeRequestHeader(this.take(REQUEST_HEADER_SIZE));
          if (!header) return this.fail('bad request magic');
          if (header.type !== Command.WRITE) return { kind: 'request', header };
          const length = header.length;
          if (length === 0) return { kind: 'request', header, data: EMPTY };
          if (length > this.limits.maxPayloadDrain) {
            return this.fail(`write payload of ${length} bytes is too large to skip`);
          }
          if (length > this.limits.maxPayload) {
            this.skipRemaining = length;
            this.pending = { kind: 'requestTooBig', header };
          } else {
            this.pending = { kind: 'write', header };
          }
          continue;
        }
      }
    }
  }

  private fail(reason: string): DecodedMessage {
    this.dead = true;
    this.chunks = [];
    this.first = 0;
    this.head = 0;
    this.buffered = 0;
    return { kind: 'error', reason };
  }

  /** Remove and return the next n bytes (n <= buffered); zero-copy when they lie in one chunk. */
  private take(n: number): Buffer {
    const c = this.chunks[this.first];
    if (c.length - this.head >= n) {
      const out = c.subarray(this.head, this.head + n);
      this.advance(n);
      return out;
    }
    // Spans chunks: one allocation, one copy of each piece.
    const out = this.allocate(n);
    let filled = 0;
    while (filled < n) {
      const cur = this.chunks[this.first];
      const m = Math.min(cur.length - this.head, n - filled);
      cur.copy(out, filled, this.head, this.head + m);
      filled += m;
      this.advance(m);
    }
    return out;
  }

  private discard(n: number): void {
    while (n > 0) {
      const cur = this.chunks[this.first];
      const m = Math.min(cur.length - this.head, n);
      this.advance(m);
      n -= m;
    }
  }

  /** Move the read position forward by n bytes within the first chunk. */
  private advance(n: number): void {
    this.head += n;
    this.buffered -= n;
    if (this.head === this.chunks[this.first].length) {
      this.first++;
      this.head = 0;
      if (this.first === this.chunks.length) {
        this.chunks = [];
        this.first = 0;
      } else if (this.first >= 64) {
        this.chunks = this.chunks.slice(this.first);
        this.first = 0;
      }
    }
  }
}
