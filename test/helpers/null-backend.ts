/**
 * Test and benchmark backend that keeps nothing: writes are counted and their buffers released
 * at once (or after `delayMs`, like a slow server); reads return buffers from `pool` whose
 * contents are undefined (only their handling is measured).
 */
import type { Backend, Capabilities, Extent, WriteFlags, ZeroFlags } from '../../src/core/backend';
import { releaseBuffer, releaseBuffers, type PayloadPool } from '../../src/core/payload-pool';

export class NullBackend implements Backend {
  readonly name = 'null';
  /** Write requests (pwrite or pwritev calls) and their bytes. */
  requests = 0;
  bytes = 0;
  reads = 0;
  readBytes = 0;

  constructor(
    private readonly bytesSize: number,
    private readonly delayMs = 0,
    private readonly pool: PayloadPool,
  ) {}

  size(): number {
    return this.bytesSize;
  }

  capabilities(): Capabilities {
    return {
      canWrite: true,
      canFlush: true,
      canFua: true,
      canZero: true,
      canFastZero: false,
      canTrim: false,
      canCache: false,
      canExtents: false,
      canMultiConn: true,
    };
  }

  async pread(_offset: number, length: number): Promise<Buffer> {
    this.reads++;
    this.readBytes += length;
    if (this.delayMs > 0) await sleep(this.delayMs);
    return this.pool.tryAllocate(length) ?? (await this.pool.allocate(length));
  }

  async pwrite(data: Buffer, _offset: number, _flags?: WriteFlags): Promise<void> {
    this.requests++;
    this.bytes += data.length;
    try {
      if (this.delayMs > 0) await sleep(this.delayMs);
    } finally {
      releaseBuffer(data);
    }
  }

  async pwritev(data: readonly Buffer[], _offset: number, _flags?: WriteFlags): Promise<void> {
    this.requests++;
    for (const b of data) this.bytes += b.length;
    try {
      if (this.delayMs > 0) await sleep(this.delayMs);
    } finally {
      releaseBuffers(data);
    }
  }

  async zero(_offset: number, _length: number, _flags?: ZeroFlags): Promise<void> {
    if (this.delayMs > 0) await sleep(this.delayMs);
  }

  async flush(): Promise<void> {}

  async extents(offset: number, length: number): Promise<Extent[]> {
    return [{ offset, length, flags: 0 }];
  }

  async close(): Promise<void> {}
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
