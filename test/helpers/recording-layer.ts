/**
 * Test-only layer: records every call that reaches it, can delay calls, hold them until
 * released, and fail chosen ones with BackendError EIO. Also checks, as the imageio pool would
 * need, that no two overlapping modifying calls (write, zero, trim) ever run at the same time.
 *
 * Payloads: it owns what pwrite/pwritev hand it (src/core/backend.ts). The layer below gets a copy
 * made when the call reaches it, and the buffers handed over are released once the call
 * settles (failed calls too), so tests can check that the layer above released everything
 * exactly once whatever the layer below does with buffers. pwritev is recorded as a 'pwrite'
 * with `segments` > 1.
 */
import { PassthroughLayer, type Backend, type WriteFlags, type ZeroFlags } from '../../src/core/backend';
import { releaseBuffer, releaseBuffers, type PayloadPool } from '../../src/core/payload-pool';
import { BackendError } from '../../src/core/errors';
import { NbdError } from '../../src/nbd/codec/constants';

export type Op = 'pread' | 'pwrite' | 'zero' | 'trim' | 'flush' | 'extents' | 'close';

export interface Call {
  op: Op;
  offset: number;
  length: number;
  fua: boolean;
  /** ms since the layer was created, when the call arrived and when it settled. */
  start: number;
  end?: number;
  failed?: boolean;
  /** Sequence number in arrival order. */
  seq: number;
  /** Buffers of a pwrite/pwritev. */
  segments?: number;
}

export interface RecordingOptions {
  /** Delay in ms before the call reaches the inner backend. */
  delay?: (call: Call) => number;
  /** Return true to fail this call with EIO instead of passing it on. */
  fail?: (call: Call) => boolean;
  /** Answer reads with buffers from this pool (as a backend reading into pooled memory). */
  readPool?: PayloadPool;
}

export class RecordingLayer extends PassthroughLayer {
  readonly calls: Call[] = [];
  /** Modifying calls that overlapped another one still running: must stay empty. */
  readonly overlapViolations: Array<[Call, Call]> = [];
  inFlight = 0;
  maxInFlight = 0;
  private readonly running = new Set<Call>();
  private readonly t0 = Date.now();
  private held: Array<() => void> | undefined;

  constructor(
    inner: Backend,
    public opts: RecordingOptions = {},
  ) {
    super(inner, 'recording');
  }

  /** Calls arriving from now on wait until release(). */
  hold(): void {
    this.held ??= [];
  }

  release(): void {
    const waiters = this.held ?? [];
    this.held = undefined;
    for (const w of waiters) w();
  }

  /** Number of calls currently waiting in hold(). */
  heldCount(): number {
    return this.held?.length ?? 0;
  }

  writes(): Call[] {
    return this.calls.filter((c) => c.op === 'pwrite');
  }

  override pread(offset: number, length: number): Promise<Buffer> {
    return this.run('pread', offset, length, false, async () => {
      const data = await super.pread(offset, length);
      const pool = this.opts.readPool;
      if (!pool) return data;
      const out = pool.tryAllocate(length) ?? (await pool.allocate(length));
      data.copy(out);
      releaseBuffer(data);
      return out;
    });
  }
  override pwrite(data: Buffer, offset: number, flags?: WriteFlags): Promise<void> {
    return this.pwritev([data], offset, flags);
  }
  override pwritev(data: readonly Buffer[], offset: number, flags?: WriteFlags): Promise<void> {
    let length = 0;
    for (const b of data) length += b.length;
    const p = this.run(
      'pwrite',
      offset,
      length,
      !!flags?.fua,
      () => this.inner.pwrite(Buffer.concat(data as Buffer[], length), offset, flags),
      data.length,
    );
    return p.finally(() => releaseBuffers(data));
  }
  override zero(offset: number, length: number, flags?: ZeroFlags): Promise<void> {
    return this.run('zero', offset, length, !!flags?.fua, () => super.zero(offset, length, flags));
  }
  override trim(offset: number, length: number, flags?: WriteFlags): Promise<void> {
    return this.run('trim', offset, length, !!flags?.fua, () => super.trim(offset, length, flags));
  }
  override flush(): Promise<void> {
    return this.run('flush', 0, 0, false, () => super.flush());
  }
  override extents(offset: number, length: number) {
    return this.run('extents', offset, length, false, () => super.extents(offset, length));
  }
  override close(): Promise<void> {
    return this.run('close', 0, 0, false, () => super.close());
  }

  private async run<T>(
    op: Op,
    offset: number,
    length: number,
    fua: boolean,
    fn: () => Promise<T>,
    segments?: number,
  ): Promise<T> {
    const call: Call = { op, offset, length, fua, start: Date.now() - this.t0, seq: this.calls.length, segments };
    this.calls.push(call);
    this.inFlight++;
    this.maxInFlight = Math.max(this.maxInFlight, this.inFlight);
    const modifies = op === 'pwrite' || op === 'zero' || op === 'trim';
    if (modifies) {
      for (const other of this.running) {
        if (other.offset < offset + length && offset < other.offset + other.length) {
          this.overlapViolations.push([other, call]);
        }
      }
      this.running.add(call);
    }
    try {
      if (this.held) await new Promise<void>((resolve) => this.held!.push(resolve));
      const ms = this.opts.delay?.(call) ?? 0;
      if (ms > 0) await new Promise((resolve) => setTimeout(resolve, ms));
      if (this.opts.fail?.(call)) {
        call.failed = true;
        throw new BackendError(NbdError.EIO, `injected failure: ${op} ${length} bytes at offset ${offset}`);
      }
      return await fn();
    } finally {
      call.end = Date.now() - this.t0;
      this.inFlight--;
      this.running.delete(call);
    }
  }
}
