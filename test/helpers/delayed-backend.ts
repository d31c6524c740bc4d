/**
 * A layer that delays chosen operations, to hold requests in flight in tests. It owns the
 * payloads handed to pwrite/pwritev (src/core/backend.ts): the layer below gets a copy and the originals are released once the call settles.
 */
import { PassthroughLayer, type Backend, type WriteFlags } from '../../src/core/backend';
import { releaseBuffers } from '../../src/core/payload-pool';

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
    return this.pwritev([data], offset, flags);
  }

  override pwritev(data: readonly Buffer[], offset: number, flags?: WriteFlags): Promise<void> {
    const copy = Buffer.concat(data as Buffer[]);
    return this.hold('write', offset, () => this.inner.pwrite(copy, offset, flags)).finally(() => releaseBuffers(data));
  }

  override flush(): Promise<void> {
    return this.hold('flush', 0, () => super.flush());
  }
}
