/**
 * Payload memory: the buffers that carry disk data through the process, shared by the NBD
 * server, every layer and every backend.
 *
 * Why: at hundreds of MiB/s a fresh multi-MiB allocation per request costs more CPU in page
 * faults and garbage collection than moving the bytes, and holding payloads in several places
 * (partly received WRITEs, coalesced runs, HTTP requests in flight, READ replies waiting for a
 * slow client) must have one global bound, or a few hostile clients can take all memory.
 *
 * Promises:
 * - allocate(n) / tryAllocate(n) give a Buffer of exactly n bytes (contents undefined) that
 *   carries one reference. Buffers of MIN_POOLED bytes or more come from power-of-two size
 *   classes and are reused; smaller ones get their own backing store and are not reused.
 * - Reference counts are per backing ArrayBuffer, so a subarray of a pooled buffer can be
 *   retained and released like the buffer itself. releaseBuffer() and retainBuffer() accept any
 *   Buffer: on one not from a pool they do nothing, so code can release what it was given
 *   without knowing where it came from.
 * - The pool's live bytes (handed out, not yet released, counted by backing size) never exceed
 *   maxLiveBytes, except that one request bigger than the bound is granted when nothing else is
 *   live. allocate() waits until the bytes fit; tryAllocate() returns undefined instead.
 *   Waiters are served in order, but one that does not fit does not hold back later (smaller)
 *   ones that do: a large request waiting for memory must not stop every small one. What keeps
 *   a large waiter from waiting for ever is that the memory held by clients is bounded per
 *   connection above the pool (src/nbd/receive-budget.ts), so held buffers come back.
 * - There is no process-wide pool: whoever builds the data path (the command, a test, a library
 *   user) creates one and passes it down, so a bound and a leak belong to their owner.
 * - A buffer dropped without its last release is not lost to the accounting: when the garbage
 *   collector reclaims it, its bytes stop counting as live (and `leaked` counts it). Releasing
 *   is still the rule: it is what lets memory be reused at once.
 *
 * The ownership rules of the data path (Backend.pwrite/pwritev/pread) are written in
 * src/core/backend.ts; this module is only the mechanism.
 */

/** Smaller buffers are counted but not kept for reuse. */
export const MIN_POOLED = 64 * 1024;

export interface PayloadPoolOptions {
  /** Bound on live bytes (default 256 MiB). Fixed for the pool's life: the owner picks it. */
  maxLiveBytes?: number;
  /** Bytes of released buffers kept for reuse (default a quarter of the bound, at most 32 MiB). */
  maxFreeBytes?: number;
}

export interface PayloadPoolStats {
  liveBytes: number;
  peakLiveBytes: number;
  freeBytes: number;
  /** Allocations that had to wait for memory. */
  waits: number;
  /** Buffers reclaimed by the garbage collector while still referenced (a missing release). */
  leaked: number;
}

interface Entry {
  pool: PayloadPool;
  /** Backing store size, what counts against the bound. */
  size: number;
  refs: number;
}

interface Waiter {
  n: number;
  resolve: (buf: Buffer) => void;
}

const owners = new WeakMap<ArrayBufferLike, Entry>();

export class PayloadPool {
  private readonly maxLive: number;
  private readonly maxFree: number;
  private live = 0;
  private peakLive = 0;
  private freeBytes = 0;
  private waits = 0;
  private leaked = 0;
  private readonly free = new Map<number, ArrayBuffer[]>();
  private readonly waiters: Waiter[] = [];
  private readonly registry = new FinalizationRegistry<Entry>((e) => {
    if (e.refs > 0) {
      e.refs = 0;
      this.leaked++;
      this.unlive(e.size);
    }
  });

  constructor(opts: PayloadPoolOptions = {}) {
    this.maxLive = opts.maxLiveBytes ?? 256 * 1024 * 1024;
    this.maxFree = opts.maxFreeBytes ?? this.maxLive;
    if (!(this.maxLive > 0)) throw new RangeError(`maxLiveBytes must be positive, not ${this.maxLive}`);
  }

  get maxLiveBytes(): number {
    return this.maxLive;
  }

  get liveBytes(): number {
    return this.live;
  }

  stats(): PayloadPoolStats {
    return { liveBytes: this.live, peakLiveBytes: this.peakLive, freeBytes: this.freeBytes, waits: this.waits, leaked: this.leaked };
  }

  /** A buffer of n bytes with one reference, or undefined if it does not fit now. */
  tryAllocate(n: number): Buffer | undefined {
    if (!this.fits(PayloadPool.sizeClass(n))) return undefined;
    return this.take(n);
  }

  /** A buffer of n bytes with one reference, once it fits within the bound. */
  allocate(n: number): Promise<Buffer> {
    const buf = this.tryAllocate(n);
    if (buf) return Promise.resolve(buf);
    this.waits++;
    return new Promise((resolve) => this.waiters.push({ n, resolve }));
  }

  /** Bytes a buffer of n bytes holds against the bound. */
  static sizeClass(n: number): number {
    return n < MIN_POOLED ? Math.max(n, 1) : 2 ** Math.ceil(Math.log2(n));
  }

  /** Whether `size` more bytes (a backing size) stay within the bound. */
  private fits(size: number): boolean {
    return this.live === 0 || this.live + size <= this.maxLive;
  }

  private take(n: number): Buffer {
    let size = PayloadPool.sizeClass(n);
    let ab: ArrayBuffer | undefined;
    if (size >= MIN_POOLED) {
      // The class asked for, else a kept buffer twice as big: mixed request sizes (the last,
      // shorter write of an extent) should not leave kept buffers nobody asks for. The bigger
      // one counts with its own size, so it is taken only if that still fits the bound.
      ab = this.free.get(size)?.pop();
      if (!ab && this.free.get(size * 2)?.length && this.live + size * 2 <= this.maxLive) {
        size *= 2;
        ab = this.free.get(size)!.pop();
      }
    }
    let entry: Entry;
    if (ab) {
      this.freeBytes -= size;
      entry = owners.get(ab)!;
    } else {
      ab = Buffer.allocUnsafeSlow(size).buffer as ArrayBuffer;
      entry = { pool: this, size, refs: 0 };
      owners.set(ab, entry);
      this.registry.register(ab, entry);
    }
    entry.refs = 1;
    this.live += size;
    if (this.live > this.peakLive) this.peakLive = this.live;
    return Buffer.from(ab, 0, n);
  }

  /** Called with the entry of a buffer whose last reference was released. */
  private recycle(ab: ArrayBuffer, e: Entry): void {
    this.unlive(e.size, false);
    if (e.size >= MIN_POOLED && this.freeBytes + e.size <= this.maxFree) {
      let list = this.free.get(e.size);
      if (!list) this.free.set(e.size, (list = []));
      list.push(ab);
      this.freeBytes += e.size;
    }
    this.wake();
  }

  private unlive(size: number, wake = true): void {
    this.live -= size;
    if (wake) this.wake();
  }

  /** Serve, in order, every waiter that fits; one that does not fit does not stop the others. */
  private wake(): void {
    for (let i = 0; i < this.waiters.length && this.live < this.maxLive; ) {
      const w = this.waiters[i];
      if (!this.fits(PayloadPool.sizeClass(w.n))) {
        i++;
        continue;
      }
      this.waiters.splice(i, 1);
      w.resolve(this.take(w.n));
    }
  }

  /** Requests waiting for memory. */
  get waiting(): number {
    return this.waiters.length;
  }

  /** Drop the buffers kept for reuse (tests, shutdown). */
  trim(): void {
    this.free.clear();
    this.freeBytes = 0;
  }

  /** @internal used by releaseBuffer() */
  static release(buf: Buffer | Uint8Array): void {
    const ab = buf.buffer;
    const e = owners.get(ab);
    if (!e) return;
    if (e.refs <= 0) throw new Error('payload buffer released more often than retained');
    if (--e.refs === 0) e.pool.recycle(ab as ArrayBuffer, e);
  }

  /** @internal used by retainBuffer() */
  static retain(buf: Buffer | Uint8Array): void {
    const e = owners.get(buf.buffer);
    if (!e) return;
    if (e.refs <= 0) throw new Error('payload buffer retained after its last release');
    e.refs++;
  }

  /** @internal references held on buf's backing store (0 for buffers not from a pool) */
  static refs(buf: Buffer | Uint8Array): number {
    return owners.get(buf.buffer)?.refs ?? 0;
  }
}

/** Give up one reference to a payload buffer (or a subarray of one). No-op for other buffers. */
export function releaseBuffer(buf: Buffer | Uint8Array): void {
  PayloadPool.release(buf);
}

/** Release every buffer of a list. */
export function releaseBuffers(bufs: readonly (Buffer | Uint8Array)[]): void {
  for (const b of bufs) PayloadPool.release(b);
}

/** Take one more reference to a payload buffer (or a subarray of one). No-op for other buffers. */
export function retainBuffer(buf: Buffer | Uint8Array): void {
  PayloadPool.retain(buf);
}

/** References held on a buffer's backing store; 0 if it is not from a pool. For tests and asserts. */
export function bufferRefs(buf: Buffer | Uint8Array): number {
  return PayloadPool.refs(buf);
}
