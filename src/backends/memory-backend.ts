/**
 * A sparse in-memory disk: `memory:SIZE`. Pages are allocated on first write; zeroing whole
 * pages frees them, so extents report holes. Every operation is immediately "durable", so
 * flush is a no-op and multi-conn is safe.
 *
 * Payload memory (src/core/backend.ts): pwrite/pwritev copy into the pages and release what they were
 * given; pread returns a buffer from the payload pool, which the caller releases. The pages are
 * the disk itself, not payload memory, and are not counted in the pool.
 */
import type { Backend, Capabilities, Extent, WriteFlags, ZeroFlags } from '../core/backend';
import { EXTENT_HOLE, EXTENT_ZERO } from '../core/backend';
import { releaseBuffer, type PayloadPool } from '../core/payload-pool';

const PAGE = 64 * 1024;

export class MemoryBackend implements Backend {
  readonly name = 'memory';
  private readonly pages = new Map<number, Buffer>();

  constructor(
    private readonly bytes: number,
    private readonly readonly: boolean,
    /** Where read buffers come from. */
    private readonly pool: PayloadPool,
  ) {
    if (!Number.isSafeInteger(bytes) || bytes < 0) throw new RangeError(`invalid size ${bytes}`);
  }

  size(): number {
    return this.bytes;
  }

  capabilities(): Capabilities {
    const w = !this.readonly;
    return {
      canWrite: w,
      canFlush: true,
      canFua: w,
      canZero: w,
      canFastZero: w,
      canTrim: w,
      canCache: true,
      canExtents: true,
      canMultiConn: true,
    };
  }

  /** Bytes of pages allocated: for tests of sparseness. */
  allocatedBytes(): number {
    return this.pages.size * PAGE;
  }

  async pread(offset: number, length: number): Promise<Buffer> {
    const out = this.pool.tryAllocate(length) ?? (await this.pool.allocate(length));
    this.forEachPage(offset, length, (page, pageOff, bufOff, n) => {
      const p = this.pages.get(page);
      if (p) p.copy(out, bufOff, pageOff, pageOff + n);
      else out.fill(0, bufOff, bufOff + n); // pool memory is not zeroed
    });
    return out;
  }

  async pwrite(data: Buffer, offset: number, _flags?: WriteFlags): Promise<void> {
    try {
      this.copyIn(data, offset);
    } finally {
      releaseBuffer(data);
    }
  }

  async pwritev(data: readonly Buffer[], offset: number, _flags?: WriteFlags): Promise<void> {
    try {
      for (const b of data) {
        this.copyIn(b, offset);
        offset += b.length;
      }
    } finally {
      for (const b of data) releaseBuffer(b);
    }
  }

  private copyIn(data: Buffer, offset: number): void {
    this.forEachPage(offset, data.length, (page, pageOff, bufOff, n) => {
      let p = this.pages.get(page);
      if (!p) {
        p = Buffer.alloc(PAGE);
        this.pages.set(page, p);
      }
      data.copy(p, pageOff, bufOff, bufOff + n);
    });
  }

  async zero(offset: number, length: number, _flags?: ZeroFlags): Promise<void> {
    this.forEachPage(offset, length, (page, pageOff, _bufOff, n) => {
      const p = this.pages.get(page);
      if (!p) return;
      if (n === PAGE) this.pages.delete(page);
      else p.fill(0, pageOff, pageOff + n);
    });
  }

  async trim(offset: number, length: number): Promise<void> {
    return this.zero(offset, length);
  }

  async cache(): Promise<void> {}

  async flush(): Promise<void> {}

  async extents(offset: number, length: number): Promise<Extent[]> {
    const out: Extent[] = [];
    const push = (off: number, len: number, flags: number) => {
      const last = out[out.length - 1];
      if (last && last.flags === flags && last.offset + last.length === off) last.length += len;
      else out.push({ offset: off, length: len, flags });
    };
    this.forEachPage(offset, length, (page, pageOff, _bufOff, n) => {
      push(page * PAGE + pageOff, n, this.pages.has(page) ? 0 : EXTENT_HOLE | EXTENT_ZERO);
    });
    if (out.length === 0) out.push({ offset, length, flags: EXTENT_HOLE | EXTENT_ZERO });
    return out;
  }

  async close(): Promise<void> {
    this.pages.clear();
  }

  private forEachPage(
    offset: number,
    length: number,
    fn: (page: number, pageOff: number, bufOff: number, n: number) => void,
  ): void {
    let pos = offset;
    const end = offset + length;
    while (pos < end) {
      const page = Math.floor(pos / PAGE);
      const pageOff = pos - page * PAGE;
      const n = Math.min(PAGE - pageOff, end - pos);
      fn(page, pageOff, pos - offset, n);
      pos += n;
    }
  }
}
