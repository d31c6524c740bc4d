/**
 * One client connection: the handshake (delegated to Handshake), then the transmission phase
 * like nbdkit's protocol.c: decode -> validate -> exactly one backend call -> reply.
 *
 * Requests run concurrently and are answered in completion order. Flow control: when too many
 * requests or payload bytes are in flight, or the client is not reading its replies, we stop
 * pulling messages from the decoder and pause the socket. The same happens when a WRITE payload
 * buffer cannot be had from the payload pool (see receive-budget.ts): reading resumes once it is.
 *
 * Payload memory (the rules are in src/core/backend.ts): the socket is read straight into the
 * decoder's targets, so a WRITE payload lands in its pooled buffer, whose reference goes to
 * backend.pwrite. A READ reply's buffer, from backend.pread, is released once the socket has
 * written it (or failed to).
 *
 * Ending: after DISC, the client's EOF, or server shutdown, no new request is started; the
 * connection closes once every started request has replied. A client that vanishes does not
 * stop its requests: they finish and their replies are dropped.
 */
import type { Socket } from 'node:net';
import { releaseBuffer } from '../core/payload-pool';
import type { Logger } from '../core/log';
import { describeError, toNbdErrno } from '../core/errors';
import { Command, CommandFlag, NbdError, TransmissionFlag } from './codec/constants';
import { NbdDecoder, type DecodedMessage, type DecoderLimits } from './codec/decoder';
import {
  encodeBlockStatusChunk,
  encodeErrorChunk,
  encodeOffsetDataHeader,
  encodeSimpleReply,
  type RequestHeader,
} from './codec/transmission';
import { toBlockDescriptors } from './block-status';
import type { ExportConfig } from './export';
import { Handshake, type OptionOutcome, type TransmissionParams } from './handshake';
import { MAX_PAYLOAD, type ClientAccount, type PayloadWaiter, type ReceiveBudget } from './receive-budget';
import { adoptWithUserBuffers } from './socket-reader';

export interface ConnectionOptions {
  id: number;
  exports: readonly ExportConfig[];
  logger: Logger;
  handshakeTimeoutMs: number;
  /** Requests started and not yet answered, per connection. */
  maxInFlight: number;
  /** READ/WRITE bytes of requests in flight before we stop taking more (at least one runs). */
  maxPendingBytes: number;
  /** Reply bytes queued in the socket before we stop taking requests (below the memory bound). */
  maxWriteBuffer: number;
  maxOptions: number;
  decoderLimits?: Partial<DecoderLimits>;
  /** The payload memory clients hold, shared fairly by the server's connections. */
  budget: ReceiveBudget;
  /**
   * 'onread' (default): read into the decoder's buffers. 'data': take the socket's 'data'
   * events and copy (what is done anyway when the socket's handle cannot be adopted).
   */
  readMode?: 'onread' | 'data';
}

export { MAX_PAYLOAD } from './receive-budget';

const COMMAND_NAMES: Record<number, string> = {
  [Command.READ]: 'read',
  [Command.WRITE]: 'write',
  [Command.DISC]: 'disc',
  [Command.FLUSH]: 'flush',
  [Command.TRIM]: 'trim',
  [Command.CACHE]: 'cache',
  [Command.WRITE_ZEROES]: 'zero',
  [Command.BLOCK_STATUS]: 'block-status',
};

/**
 * Flags each command accepts (before checking what was advertised). Spec: with SEND_FUA the
 * client MAY set FUA on any command and the server ignores it where it means nothing (READ,
 * FLUSH, CACHE, BLOCK_STATUS); nbdkit does the same.
 */
const ALLOWED_FLAGS: Record<number, number> = {
  [Command.READ]: CommandFlag.FUA | CommandFlag.DF,
  [Command.WRITE]: CommandFlag.FUA,
  [Command.FLUSH]: CommandFlag.FUA,
  [Command.TRIM]: CommandFlag.FUA,
  [Command.CACHE]: CommandFlag.FUA,
  [Command.WRITE_ZEROES]: CommandFlag.FUA | CommandFlag.NO_HOLE | CommandFlag.FAST_ZERO,
  [Command.BLOCK_STATUS]: CommandFlag.FUA | CommandFlag.REQ_ONE,
};

const WRITE_FUA = { fua: true };

interface Rejection {
  errno: NbdError;
  message: string;
}

export class NbdConnection implements PayloadWaiter {
  readonly id: number;
  /** Resolves when the socket is closed and no request is running. */
  readonly done: Promise<void>;

  private readonly log: Logger;
  private readonly debug: boolean;
  private readonly decoder: NbdDecoder;
  /** Largest READ/WRITE payload served (see ReceiveBudget.payloadLimit). */
  private get payloadLimit(): number {
    return this.budget.payloadLimit;
  }
  private readonly budget: ReceiveBudget;
  /** What this connection holds of the clients' memory: payloads being received, replies not yet sent. */
  private readonly account: ClientAccount;
  private readonly socket: Socket;
  private readonly handshake: Handshake;
  private tx: TransmissionParams | undefined;
  private handshakeTimer: NodeJS.Timeout | undefined;
  private inFlight = 0;
  private pendingBytes = 0;
  /** No new requests are taken (DISC, client EOF, fatal error, shutdown). */
  private stopReading = false;
  private peerEnded = false;
  private ending = false;
  private waitingDrain = false;
  /** Waiting for a WRITE payload buffer (reading is paused meanwhile). */
  private waitingMemory = false;
  private closed = false;
  /** The socket is corked until the tick queue runs (see batch()). */
  private batching = false;
  private resolveDone!: () => void;

  constructor(
    accepted: Socket,
    private readonly opts: ConnectionOptions,
  ) {
    this.id = opts.id;
    this.log = opts.logger.child({ conn: opts.id });
    this.debug = this.log.isLevelEnabled('debug');
    this.budget = opts.budget;
    this.account = opts.budget.account();
    this.decoder = new NbdDecoder(
      { maxPayload: Math.min(MAX_PAYLOAD, opts.budget.payloadLimit), ...opts.decoderLimits },
      { allocatePayload: (n) => (this.waitingMemory ? undefined : this.account.tryTake(n)) },
    );
    this.handshake = new Handshake(opts.exports, this.log, { maxOptions: opts.maxOptions });
    this.done = new Promise((resolve) => (this.resolveDone = resolve));

    const adopted =
      opts.readMode === 'data'
        ? undefined
        : adoptWithUserBuffers(accepted, {
            buffer: () => this.decoder.readTarget(),
            callback: (n) => {
              // After DISC or a fatal error nothing more is decoded; keep reading so EOF is seen.
              if (!this.stopReading && this.decoder.commit(n)) this.pump();
            },
          });
    const socket = (this.socket = adopted ?? accepted);
    if (!adopted) {
      socket.on('data', (chunk: Buffer) => {
        if (this.stopReading) return;
        this.decoder.push(chunk);
        this.pump();
      });
    }
    socket.on('end', () => {
      this.peerEnded = true;
      this.pump();
    });
    socket.on('error', (err) => this.log.debug({ err: describeError(err) }, 'socket error'));
    socket.on('close', () => {
      this.closed = true;
      this.clearHandshakeTimer();
      this.releaseInput();
      if (this.inFlight > 0) this.log.debug({ inFlight: this.inFlight }, 'client gone with requests in flight');
      this.maybeDone();
    });
    if ('setNoDelay' in socket) socket.setNoDelay(true);

    this.handshakeTimer = setTimeout(() => {
      this.log.warn({ timeoutMs: opts.handshakeTimeoutMs }, 'handshake timed out, disconnecting');
      this.socket.destroy();
    }, opts.handshakeTimeoutMs);
    this.write(this.handshake.greeting());
    // The server listens with pauseOnConnect: start reading now that everything is wired.
    socket.resume();
  }

  /** Stop taking requests; close once the running ones have replied. Handshakes are dropped. */
  shutdown(): void {
    if (!this.tx) {
      this.socket.destroy();
      return;
    }
    this.stopReading = true;
    this.maybeEnd();
  }

  // -------------------------------------------------------------------------------------------
  // Input

  private pump(): void {
    let blocked = false;
    while (!this.stopReading && !this.closed) {
      if (this.tx && this.overloaded()) {
        blocked = true;
        break;
      }
      const msg = this.decoder.next();
      if (!msg) {
        if (this.decoder.payloadWanted > 0) {
          // No payload memory now: stop reading until the budget hands us a buffer.
          blocked = true;
          if (!this.waitingMemory) {
            this.waitingMemory = true;
            if (this.debug) this.log.debug({ bytes: this.decoder.payloadWanted }, 'waiting for payload memory');
            this.account.wait(this.decoder.payloadWanted, this);
          }
        }
        break;
      }
      this.handleMessage(msg);
    }
    if (this.peerEnded && !blocked && !this.stopReading) {
      // EOF and every complete message taken: like DISC, finish what runs and close.
      if (!this.tx) {
        this.log.debug('client closed during the handshake');
        this.socket.destroy();
        return;
      }
      // The client's own doing (it gave up on a failed copy, or was killed): not ours to warn about.
      if (this.decoder.inMessage) this.log.debug('client closed in the middle of a request');
      this.stopReading = true;
    }
    if (blocked) this.socket.pause();
    else if (this.socket.isPaused()) this.socket.resume();
    this.maybeEnd();
  }

  /** ReceiveBudget: the payload buffer we waited for. */
  payloadReady(buf: Buffer): void {
    this.waitingMemory = false;
    if (this.closed || this.stopReading || this.decoder.payloadWanted !== buf.length) {
      releaseBuffer(buf);
      this.account.done(buf.length);
      return;
    }
    this.decoder.providePayload(buf);
    this.pump();
  }

  /** The socket is closed: give back the payload being received, stop waiting for memory. */
  private releaseInput(): void {
    this.account.close();
    const buf = this.decoder.abandon();
    if (buf) {
      releaseBuffer(buf);
      this.account.done(buf.length);
    }
  }

  private overloaded(): boolean {
    if (this.inFlight >= this.opts.maxInFlight) return true;
    if (this.inFlight > 0 && this.pendingBytes >= this.opts.maxPendingBytes) return true;
    if (this.socket.writableLength >= this.opts.maxWriteBuffer) {
      if (!this.waitingDrain) {
        this.waitingDrain = true;
        this.socket.once('drain', () => {
          this.waitingDrain = false;
          this.pump();
        });
      }
      return true;
    }
    return false;
  }

  private handleMessage(msg: DecodedMessage): void {
    switch (msg.kind) {
      case 'error':
        this.drop(msg.reason);
        return;
      case 'clientFlags': {
        const bad = this.handshake.clientFlags(msg.flags);
        if (bad) this.drop(bad);
        return;
      }
      case 'option':
        this.applyOutcome(this.handshake.option(msg.option, msg.data));
        return;
      case 'optionTooBig':
        this.applyOutcome(this.handshake.optionTooBig(msg.option, msg.length));
        return;
      case 'request':
        // A WRITE payload is complete: it no longer counts as being received.
        if (msg.data && msg.data.length > 0) this.account.done(msg.data.length);
        this.handleRequest(msg.header, msg.data);
        return;
      case 'requestTooBig': {
        const h = msg.header;
        // The payload has been drained: fail this request, keep the connection.
        this.log.warn({ cookie: h.cookie.toString(), length: h.length }, 'write payload too large, drained');
        // EINVAL: the spec keeps EOVERFLOW for reads (and payload-less requests) over the limit.
        this.sendError(h, NbdError.EINVAL, `write of ${h.length} bytes exceeds the ${this.payloadLimit} byte limit`);
        return;
      }
    }
  }

  /** Hard disconnect for a client that broke the protocol. */
  private drop(reason: string): void {
    this.log.warn({ reason }, 'protocol violation, dropping connection');
    this.stopReading = true;
    this.socket.destroy();
  }

  private applyOutcome(o: OptionOutcome): void {
    this.writeAll(o.replies);
    switch (o.action) {
      case 'continue':
        return;
      case 'close':
        this.log.debug({ reason: o.reason }, 'closing during the handshake');
        this.stopReading = true;
        this.clearHandshakeTimer();
        if (o.replies.length > 0) {
          // ABORT: the client should close after our ACK; do not wait for it forever.
          this.socket.end();
          setTimeout(() => this.socket.destroy(), 2000).unref();
        } else {
          this.socket.destroy();
        }
        return;
      case 'transmit':
        this.tx = o.params;
        this.clearHandshakeTimer();
        this.decoder.startTransmission();
        this.log.debug(
          {
            export: o.params.export.config.name,
            flags: o.params.flags,
            structured: o.params.structuredReplies,
            metaContext: o.params.metaContextId !== undefined,
          },
          'transmission phase',
        );
        return;
    }
  }

  // -------------------------------------------------------------------------------------------
  // Transmission

  private handleRequest(h: RequestHeader, data: Buffer | undefined): void {
    const tx = this.tx!;
    if (h.type === Command.DISC) {
      if (this.debug) this.log.debug({ inFlight: this.inFlight }, 'DISC');
      this.stopReading = true;
      return;
    }
    const bad = this.validate(h, tx);
    if (bad) {
      if (data) releaseBuffer(data); // never reached the backend
      const level = bad.errno === NbdError.ENOTSUP ? 'debug' : 'warn';
      this.log[level](
        { cmd: COMMAND_NAMES[h.type] ?? h.type, flags: h.flags, offset: h.offset, length: h.length, errno: bad.errno },
        `rejected request: ${bad.message}`,
      );
      this.sendError(h, bad.errno, bad.message);
      return;
    }
    if (this.debug) {
      this.log.debug({ cmd: COMMAND_NAMES[h.type], flags: h.flags, offset: h.offset, length: h.length }, 'request');
    }
    const weight = h.type === Command.READ || h.type === Command.WRITE ? h.length : 0;
    this.inFlight++;
    this.pendingBytes += weight;
    this.dispatch(h, data, tx)
      .catch((err: unknown) => {
        const errno = toNbdErrno(err);
        this.log.warn(
          { cmd: COMMAND_NAMES[h.type], offset: h.offset, length: h.length, errno, err: describeError(err) },
          'backend request failed',
        );
        this.sendError(h, errno, describeError(err));
      })
      .finally(() => {
        this.inFlight--;
        this.pendingBytes -= weight;
        if (this.closed) this.maybeDone();
        else this.pump();
      });
  }

  /** Checks done before any backend call, in nbdkit's spirit. Returns why to reject, if so. */
  private validate(h: RequestHeader, tx: TransmissionParams): Rejection | undefined {
    const exp = tx.export;
    const allowed = ALLOWED_FLAGS[h.type];
    if (allowed === undefined) return { errno: NbdError.EINVAL, message: `unknown command ${h.type}` };
    const isWrite = h.type === Command.WRITE || h.type === Command.WRITE_ZEROES || h.type === Command.TRIM;
    if (isWrite && exp.readonly) return { errno: NbdError.EPERM, message: 'export is read-only' };
    if ((h.flags & ~allowed) !== 0) {
      return { errno: NbdError.EINVAL, message: `flags 0x${h.flags.toString(16)} not allowed for this command` };
    }
    const f = tx.flags;
    if (h.flags & CommandFlag.FUA && !(f & TransmissionFlag.SEND_FUA)) {
      return { errno: NbdError.EINVAL, message: 'FUA was not advertised' };
    }
    if (h.flags & CommandFlag.DF && !(f & TransmissionFlag.SEND_DF)) {
      return { errno: NbdError.EINVAL, message: 'DF was not advertised' };
    }
    if (h.flags & CommandFlag.FAST_ZERO && !(f & TransmissionFlag.SEND_FAST_ZERO)) {
      return { errno: NbdError.EINVAL, message: 'FAST_ZERO was not advertised' };
    }
    switch (h.type) {
      case Command.FLUSH:
        if (!(f & TransmissionFlag.SEND_FLUSH)) return { errno: NbdError.EINVAL, message: 'FLUSH was not advertised' };
        if (h.offset !== 0 || h.length !== 0) {
          return { errno: NbdError.EINVAL, message: 'FLUSH with non-zero offset or length' };
        }
        return undefined;
      case Command.TRIM:
        if (!(f & TransmissionFlag.SEND_TRIM)) return { errno: NbdError.EINVAL, message: 'TRIM was not advertised' };
        break;
      case Command.WRITE_ZEROES:
        if (!(f & TransmissionFlag.SEND_WRITE_ZEROES)) {
          return { errno: NbdError.EINVAL, message: 'WRITE_ZEROES was not advertised' };
        }
        break;
      case Command.CACHE:
        if (!(f & TransmissionFlag.SEND_CACHE)) return { errno: NbdError.EINVAL, message: 'CACHE was not advertised' };
        break;
      case Command.BLOCK_STATUS:
        if (tx.metaContextId === undefined) {
          return { errno: NbdError.EINVAL, message: 'BLOCK_STATUS without a negotiated meta context' };
        }
        break;
      case Command.READ:
        if (h.length > this.payloadLimit) {
          return {
            errno: tx.structuredReplies ? NbdError.EOVERFLOW : NbdError.EINVAL,
            message: `read of ${h.length} bytes exceeds the ${this.payloadLimit} byte limit`,
          };
        }
        break;
    }
    // Offsets beyond 2^53 decode as values > MAX_SAFE_INTEGER and fail this test too.
    if (h.length === 0 || h.offset > exp.size || h.length > exp.size - h.offset) {
      const enospc = h.type === Command.WRITE || h.type === Command.WRITE_ZEROES;
      return {
        errno: enospc ? NbdError.ENOSPC : NbdError.EINVAL,
        message: `offset ${h.offset} length ${h.length} out of range (export size ${exp.size})`,
      };
    }
    return undefined;
  }

  /**
   * One backend call, then the reply. Rejections are answered by the caller. The exception is
   * a structured READ whose reply memory cannot be had in one piece (see receive-budget.ts): it
   * is read and answered in pieces, one OFFSET_DATA chunk each.
   */
  private async dispatch(h: RequestHeader, data: Buffer | undefined, tx: TransmissionParams): Promise<void> {
    const b = tx.export.backend;
    const fua = (h.flags & CommandFlag.FUA) !== 0;
    switch (h.type) {
      case Command.READ:
        await this.read(h, b, tx.structuredReplies);
        return;
      case Command.WRITE:
        // The backend takes over our reference to the payload (and releases it).
        await b.pwrite(data!, h.offset, fua ? WRITE_FUA : undefined);
        break;
      case Command.FLUSH:
        await b.flush();
        break;
      case Command.TRIM:
        await b.trim!(h.offset, h.length, { fua });
        break;
      case Command.CACHE:
        if (b.cache) await b.cache(h.offset, h.length);
        break;
      case Command.WRITE_ZEROES: {
        const fastZero = (h.flags & CommandFlag.FAST_ZERO) !== 0;
        if (fastZero && !tx.export.caps.canFastZero) {
          if (this.debug) this.log.debug({ offset: h.offset, length: h.length }, 'fast zero not supported');
          this.sendError(h, NbdError.ENOTSUP, 'fast zero is not supported');
          return;
        }
        await b.zero(h.offset, h.length, { fua, mayTrim: (h.flags & CommandFlag.NO_HOLE) === 0, fastZero });
        break;
      }
      case Command.BLOCK_STATUS: {
        const extents =
          tx.export.caps.canExtents && b.extents
            ? await b.extents(h.offset, h.length)
            : [{ offset: h.offset, length: h.length, flags: 0 }];
        const desc = toBlockDescriptors(extents, h.offset, h.length, (h.flags & CommandFlag.REQ_ONE) !== 0);
        if (desc.length === 0) throw new Error('backend returned no extent at the requested offset');
        this.write(encodeBlockStatusChunk(h.cookie, tx.metaContextId!, desc, true));
        return;
      }
    }
    this.write(encodeSimpleReply(h.cookie, NbdError.OK));
  }

  /**
   * A READ: its reply memory is counted from before the backend call until the socket has
   * taken the reply, so a client that does not read its replies holds only its own share.
   */
  private async read(h: RequestHeader, b: ExportConfig['backend'], structured: boolean): Promise<void> {
    let done = 0;
    while (done < h.length) {
      const want = h.length - done;
      let granted = this.account.tryReply(want, structured);
      if (granted === 0) {
        if (this.debug) this.log.debug({ bytes: want }, 'waiting for reply memory');
        granted = await this.account.waitReply(want, structured, done > 0);
        if (granted === 0) return; // the connection closed: nobody to answer
      }
      let buf: Buffer;
      try {
        buf = await b.pread(h.offset + done, granted);
      } catch (err) {
        this.account.replySent(granted);
        throw err;
      }
      if (buf.length !== granted) {
        releaseBuffer(buf);
        this.account.replySent(granted);
        throw new Error(`backend returned ${buf.length} of ${granted} bytes`);
      }
      this.sendRead(h, h.offset + done, buf, structured, done + granted === h.length, granted);
      done += granted;
      if (!this.writable()) return;
    }
  }

  // -------------------------------------------------------------------------------------------
  // Output

  /**
   * Header and data back to back, no copy; the data's reference, and the reply memory counted
   * for it (`counted` bytes), are given back once the socket has taken it.
   */
  private sendRead(h: RequestHeader, offset: number, data: Buffer, structured: boolean, last: boolean, counted: number): void {
    const sent = () => {
      releaseBuffer(data);
      this.account.replySent(counted);
    };
    if (!this.writable()) {
      sent();
      return;
    }
    const header = structured
      ? encodeOffsetDataHeader(h.cookie, offset, data.length, last)
      : encodeSimpleReply(h.cookie, NbdError.OK);
    this.batch();
    this.socket.write(header);
    // The callback runs once the bytes are written, or with an error if the socket fails or is
    // destroyed first: either way the buffer is ours to release then.
    this.socket.write(data, sent);
  }

  private sendError(h: RequestHeader, errno: NbdError, message: string): void {
    // With structured replies, errors go in ERROR chunks (mandatory for READ) with a message.
    this.write(this.tx?.structuredReplies ? encodeErrorChunk(h.cookie, errno, message) : encodeSimpleReply(h.cookie, errno));
  }

  private writable(): boolean {
    return !this.closed && !this.socket.destroyed && !this.socket.writableEnded;
  }

  private write(buf: Buffer): void {
    if (!this.writable()) return;
    this.batch();
    this.socket.write(buf);
  }

  private writeAll(bufs: Buffer[]): void {
    if (bufs.length === 0 || !this.writable()) return;
    this.batch();
    for (const b of bufs) this.socket.write(b);
  }

  /**
   * Replies made in one burst go out in one writev rather than one write(2) each: when a PUT
   * completes and frees buffer space, dozens of waiting WRITEs are acknowledged by the same
   * chain of promise continuations. The socket stays corked until the tick queue runs, which is
   * after those continuations, so no reply waits for anything but the code already running.
   */
  private batch(): void {
    if (this.batching) return;
    this.batching = true;
    this.socket.cork();
    process.nextTick(this.endBatch);
  }

  private readonly endBatch = (): void => {
    this.batching = false;
    this.socket.uncork();
  };

  // -------------------------------------------------------------------------------------------
  // Lifecycle

  private maybeEnd(): void {
    if (!this.stopReading || this.inFlight > 0 || this.ending || this.closed) return;
    if (!this.tx) return; // handshake endings destroy/end directly
    this.ending = true;
    if (this.debug) this.log.debug('all requests answered, closing');
    this.socket.end();
    // A client that never closes its side must not keep us (or server.close()) waiting.
    setTimeout(() => this.socket.destroy(), 2000).unref();
  }

  private maybeDone(): void {
    if (this.closed && this.inFlight === 0) this.resolveDone();
  }

  private clearHandshakeTimer(): void {
    if (this.handshakeTimer) {
      clearTimeout(this.handshakeTimer);
      this.handshakeTimer = undefined;
    }
  }
}
