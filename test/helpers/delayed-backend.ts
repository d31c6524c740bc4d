/** A layer that delays chosen operations, to hold requests in flight in tests. */
import { PassthroughLayer, type Backend, type WriteFlags } from '../../src/backend';
import { releaseBuffer } from '../../src/buffers';

export class DelayedBackend extends PassthroughLayer {
  /** Calls started and not yet finished. */
  running = 0;
  started = 0;
  finished = 0;

  constructor(
    inner: Backend,
    /** Delay per call in ms, or a function of (op, offset) for per-request delays. */
    private readonly delay: number | ((op: string, offset: number) => number),
  ) {
    super(inner, 'delayed');
  }

  private async hold<T>(op: string, offset: number, fn: () => Promise<T>): Promise<T> {
    this.running++;
    this.started++;
    try {
      const ms = typeof this.delay === 'number' ? this.delay : this.delay(op, offset);
      if (ms > 0) await new Promise((r) => setTimeout(r, ms));
      return await fn();
    } finally {
      this.running--;
      this.finished++;
    }
  }

  override pread(offset: number, length: number): Promise<Buffer> {
    return this.hold('read', offset, () => super.pread(offset, length));
  }

  override pwrite(data: Buffer, offset: number, flags?: WriteFlags): Promise<void> {
    // Copy, and give back the caller's buffer at once (src/backend.ts: pwrite takes it over).
    const copy = Buffer.from(data);
    releaseBuffer(data);
    return this.hold('write', offset, () => super.pwrite(copy, offset, flags));
  }

  override flush(): Promise<void> {
    return this.hold('flush', 0, () => super.flush());
  }
}
