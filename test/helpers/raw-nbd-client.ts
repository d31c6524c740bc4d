/**
 * A deliberately dumb NBD client over node:net for edge-case tests: it sends exactly the bytes
 * it is told to and reads replies by their magic, so tests can misbehave on purpose.
 */
import * as net from 'node:net';
import {
  BASE_ALLOCATION,
  ClientFlag,
  InfoType,
  Option,
  OptionReply,
  SIMPLE_REPLY_MAGIC,
  STRUCTURED_REPLY_MAGIC,
} from '../../src/nbd/codec/constants';
import {
  encodeClientFlags,
  encodeInfoRequestData,
  encodeMetaContextRequestData,
  encodeOptionRequest,
} from '../../src/nbd/codec/handshake';
import { encodeRequest, type RequestFields } from '../../src/nbd/codec/transmission';

export interface OptionReplyMessage {
  option: number;
  type: number;
  data: Buffer;
}

export type ReplyMessage =
  | { kind: 'simple'; error: number; cookie: bigint }
  | { kind: 'chunk'; flags: number; type: number; cookie: bigint; payload: Buffer };

export class RawNbdClient {
  private chunks: Buffer[] = [];
  private buffered = 0;
  private waiter: (() => void) | undefined;
  private ended = false;
  readonly closed: Promise<void>;

  private constructor(readonly socket: net.Socket) {
    socket.on('data', (c: Buffer) => {
      this.chunks.push(c);
      this.buffered += c.length;
      this.wake();
    });
    socket.on('error', () => undefined);
    this.closed = new Promise((resolve) =>
      socket.on('close', () => {
        this.ended = true;
        this.wake();
        resolve();
      }),
    );
  }

  static connect(path: string): Promise<RawNbdClient> {
    return new Promise((resolve, reject) => {
      const s = net.createConnection(path, () => resolve(new RawNbdClient(s)));
      s.once('error', reject);
    });
  }

  private wake(): void {
    const w = this.waiter;
    this.waiter = undefined;
    if (w) w();
  }

  get isClosed(): boolean {
    return this.ended;
  }

  write(buf: Buffer): void {
    this.socket.write(buf);
  }

  destroy(): void {
    this.socket.destroy();
  }

  /** Exactly n bytes; rejects if the server closes first or nothing arrives in time. */
  async read(n: number, timeoutMs = 5000): Promise<Buffer> {
    const deadline = Date.now() + timeoutMs;
    while (this.buffered < n) {
      if (this.ended) throw new Error(`connection closed with ${this.buffered} of ${n} bytes`);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timed out waiting for ${n} bytes (have ${this.buffered})`);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.waiter = () => {
          clearTimeout(t);
          resolve();
        };
      });
    }
    const all = Buffer.concat(this.chunks);
    this.chunks = [all.subarray(n)];
    this.buffered -= n;
    return all.subarray(0, n);
  }

  /** Resolves true if the server closes the connection within the time limit. */
  async waitClosed(timeoutMs = 5000): Promise<boolean> {
    let t: NodeJS.Timeout | undefined;
    const r = await Promise.race([
      this.closed.then(() => true),
      new Promise<boolean>((resolve) => (t = setTimeout(() => resolve(false), timeoutMs))),
    ]);
    clearTimeout(t);
    return r;
  }

  /** Read the greeting and send client flags (default FIXED_NEWSTYLE | NO_ZEROES). */
  async greet(flags = ClientFlag.FIXED_NEWSTYLE | ClientFlag.NO_ZEROES): Promise<Buffer> {
    const g = await this.read(18);
    this.write(encodeClientFlags(flags));
    return g;
  }

  /** Send one option and collect replies up to the final one (ACK or an error). */
  async option(option: number, data?: Buffer): Promise<OptionReplyMessage[]> {
    this.write(encodeOptionRequest(option, data));
    return this.optionReplies();
  }

  async optionReplies(): Promise<OptionReplyMessage[]> {
    const out: OptionReplyMessage[] = [];
    for (;;) {
      const h = await this.read(20);
      const len = h.readUInt32BE(16);
      const r = { option: h.readUInt32BE(8), type: h.readUInt32BE(12), data: len ? await this.read(len) : Buffer.alloc(0) };
      out.push(r);
      if (r.type === OptionReply.ACK || r.type >= 0x80000000) return out;
    }
  }

  /**
   * Greet, optionally negotiate structured replies and base:allocation, then GO.
   * Returns the export size and transmission flags.
   */
  async negotiate(opts: { structured?: boolean; metaContext?: boolean; name?: string } = {}): Promise<{
    size: number;
    flags: number;
  }> {
    await this.greet();
    const name = opts.name ?? '';
    if (opts.structured ?? true) {
      const r = await this.option(Option.STRUCTURED_REPLY);
      if (r[0].type !== OptionReply.ACK) throw new Error('STRUCTURED_REPLY refused');
    }
    if (opts.metaContext) {
      await this.option(
        Option.SET_META_CONTEXT,
        encodeMetaContextRequestData({ exportName: name, queries: [BASE_ALLOCATION] }),
      );
    }
    const replies = await this.option(Option.GO, encodeInfoRequestData({ exportName: name, infos: [InfoType.BLOCK_SIZE] }));
    const last = replies[replies.length - 1];
    if (last.type !== OptionReply.ACK) throw new Error(`GO failed: ${last.type.toString(16)}`);
    const info = replies.find((r) => r.type === OptionReply.INFO && r.data.readUInt16BE(0) === InfoType.EXPORT)!;
    return { size: Number(info.data.readBigUInt64BE(2)), flags: info.data.readUInt16BE(10) };
  }

  request(r: RequestFields, payload?: Buffer): void {
    this.write(payload ? Buffer.concat([encodeRequest(r), payload]) : encodeRequest(r));
  }

  /** Read one simple reply (without data) or one structured chunk. */
  async reply(timeoutMs = 5000): Promise<ReplyMessage> {
    const magic = (await this.read(4, timeoutMs)).readUInt32BE(0);
    if (magic === SIMPLE_REPLY_MAGIC) {
      const b = await this.read(12, timeoutMs);
      return { kind: 'simple', error: b.readUInt32BE(0), cookie: b.readBigUInt64BE(4) };
    }
    if (magic === STRUCTURED_REPLY_MAGIC) {
      const b = await this.read(16, timeoutMs);
      const len = b.readUInt32BE(12);
      return {
        kind: 'chunk',
        flags: b.readUInt16BE(0),
        type: b.readUInt16BE(2),
        cookie: b.readBigUInt64BE(4),
        payload: len ? await this.read(len, timeoutMs) : Buffer.alloc(0),
      };
    }
    throw new Error(`bad reply magic 0x${magic.toString(16)}`);
  }
}

/** Errno carried by a reply: simple error field, or the ERROR chunk's error, else 0. */
export function replyErrno(r: ReplyMessage): number {
  if (r.kind === 'simple') return r.error;
  return r.type & 0x8000 ? r.payload.readUInt32BE(0) : 0;
}
