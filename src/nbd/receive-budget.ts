/**
 * Memory for WRITE payloads still being received, shared by every connection of a server.
 *
 * Every payload buffer comes from the payload pool, whose bound covers all payload memory of the
 * process. A payload being received, though, is held by the client: one that sends a 64 MiB WRITE
 * header and then stalls keeps 64 MiB forever. If such payloads could take the whole pool, READ
 * replies and the backend (which need pool memory to make progress) would wait behind them for
 * good. So payloads being received may hold at most `share` of the pool's bound (3/4 by
 * default); the rest stays for work that finishes on its own. One payload bigger than that is
 * still admitted when no other is being received, as the pool does with its bound.
 *
 * Requests that do not fit wait first come first served; their connections stop reading.
 */
import { PayloadPool } from '../core/payload-pool';

/** A connection waiting for payload memory. */
export interface PayloadWaiter {
  /** The buffer (exactly the size asked for), now counted as being received. */
  payloadReady(buf: Buffer): void;
}

interface Waiting {
  n: number;
  who: PayloadWaiter;
}

export class ReceiveBudget {
  private used = 0;
  private readonly queue: Waiting[] = [];

  constructor(
    readonly pool: PayloadPool,
    private readonly share = 0.75,
  ) {}

  /**
   * The largest READ or WRITE payload served: at most the receive share of the bound, so that
   * one stalled client can never hold all of it (larger ones are refused with an error; the
   * advertised maximum block size is smaller, so conforming clients never send them).
   */
  get payloadLimit(): number {
    return Math.floor(this.pool.maxLiveBytes * this.share);
  }

  /** Bytes (by pool size class) of payloads being received. */
  get receivingBytes(): number {
    return this.used;
  }

  /** Connections waiting for payload memory. */
  get waiting(): number {
    return this.queue.length;
  }

  /** A payload buffer of n bytes now, or undefined (then call wait()). */
  tryTake(n: number): Buffer | undefined {
    if (this.queue.length > 0) return undefined;
    const size = PayloadPool.sizeClass(n);
    if (!this.fits(size)) return undefined;
    const buf = this.pool.tryAllocate(n);
    if (buf) this.used += size;
    return buf;
  }

  /** Queue for a payload buffer of n bytes; `who.payloadReady` gets it once there is room. */
  wait(n: number, who: PayloadWaiter): void {
    this.queue.push({ n, who });
    this.wake();
  }

  /** Forget a waiter (its connection closed). A buffer already on its way still arrives. */
  cancel(who: PayloadWaiter): void {
    const i = this.queue.findIndex((w) => w.who === who);
    if (i >= 0) this.queue.splice(i, 1);
    if (i === 0) this.wake();
  }

  /** A payload of n bytes is no longer being received (complete, or abandoned). */
  done(n: number): void {
    this.used -= PayloadPool.sizeClass(n);
    if (this.queue.length > 0) this.wake();
  }

  private fits(size: number): boolean {
    return this.used === 0 || this.used + size <= this.pool.maxLiveBytes * this.share;
  }

  private wake(): void {
    while (this.queue.length > 0) {
      const w = this.queue[0];
      const size = PayloadPool.sizeClass(w.n);
      if (!this.fits(size)) return;
      this.queue.shift();
      this.used += size;
      // Admitted; the pool may still make it wait (its own FIFO) if other users hold memory.
      // Delivered from a microtask: the waiter's connection pumps, and that must not run inside
      // another connection's pump (done() is called from there).
      const buf = this.pool.tryAllocate(w.n);
      if (buf) queueMicrotask(() => w.who.payloadReady(buf));
      else void this.pool.allocate(w.n).then((b) => w.who.payloadReady(b));
    }
  }
}
