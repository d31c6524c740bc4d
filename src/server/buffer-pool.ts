/**
 * Reusable buffers for WRITE payloads. Every multi-MiB payload used to be a fresh allocation,
 * and at hundreds of MiB/s the garbage collector spent more time than the data path itself.
 * Payloads of at least MIN_POOLED bytes come from power-of-two size classes; the server gives
 * a buffer back once the backend's pwrite has resolved (the Backend contract: a backend does
 * not keep `data` after that unless it copied it). Shared by every connection of a server.
 */
export const MIN_POOLED = 64 * 1024;

export class BufferPool {
  private readonly free = new Map<number, Buffer[]>();
  /** Backing stores this pool made: only those are taken back. */
  private readonly mine = new WeakSet<ArrayBufferLike>();
  private freeBytes = 0;

  constructor(private readonly maxFreeBytes = 32 * 1024 * 1024) {}

  /** A buffer of exactly n bytes (contents undefined). */
  allocate(n: number): Buffer {
    if (n < MIN_POOLED) return Buffer.allocUnsafe(n);
    const size = 2 ** Math.ceil(Math.log2(n));
    const list = this.free.get(size);
    let full = list?.pop();
    if (full) {
      this.freeBytes -= size;
    } else {
      full = Buffer.allocUnsafeSlow(size);
      this.mine.add(full.buffer);
    }
    return full.subarray(0, n);
  }

  /** Give back a buffer from allocate(); the caller must hold no reference to it any more. */
  release(buf: Buffer): void {
    const ab = buf.buffer;
    if (!this.mine.has(ab) || buf.byteOffset !== 0) return;
    const size = ab.byteLength;
    if (this.freeBytes + size > this.maxFreeBytes) return;
    let list = this.free.get(size);
    if (!list) this.free.set(size, (list = []));
    list.push(Buffer.from(ab, 0, size));
    this.freeBytes += size;
  }

  /** Bytes held for reuse, for tests. */
  get pooledBytes(): number {
    return this.freeBytes;
  }
}
