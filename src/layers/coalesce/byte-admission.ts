/**
 * The coalescing layer's memory bound: bytes of writes accepted and not yet done by the inner
 * backend never exceed `limit`, except that one write is always let through when nothing is
 * held (a single write bigger than the bound cannot deadlock). A write that does not fit waits,
 * first come first served; the layer's send queue being full also holds everyone back.
 *
 * When a waiter's shortfall will not come back by itself (too little queued or in flight), the
 * layer is asked to evict an open run, which turns buffered bytes into bytes that come back.
 */
export interface AdmissionHooks {
  /** The send queue is at its bound: nothing is admitted until it shortens. */
  queueFull(): boolean;
  /** Held bytes that come back by themselves: queued for the inner backend or in flight. */
  returning(): number;
  /** Commit one open run so its bytes come back; false when there is none. Runs inside pump(). */
  evict(): boolean;
}

interface Waiter {
  n: number;
  resolve: () => void;
}

export class ByteAdmission {
  /** Bytes held now. */
  held = 0;
  /** The most ever held. */
  maxHeld = 0;
  private readonly waiters: Waiter[] = [];
  /** Writes admitted by pump() that have not run on yet: later writes must queue behind them. */
  private admitted = 0;
  private pumpScheduled = false;

  constructor(
    private readonly limit: number,
    private readonly hooks: AdmissionHooks,
  ) {}

  /** Someone waits for memory. */
  get waiting(): boolean {
    return this.waiters.length > 0;
  }

  /** n bytes can be taken at once: they fit, and no earlier write is waiting or about to run. */
  fitsNow(n: number): boolean {
    return this.waiters.length === 0 && this.admitted === 0 && this.fits(n);
  }

  /** Count n bytes as held (after fitsNow(n)). */
  hold(n: number): void {
    this.held += n;
    if (this.held > this.maxHeld) this.maxHeld = this.held;
  }

  /** n held bytes are done with. */
  release(n: number): void {
    this.held -= n;
    if (this.waiters.length > 0) this.pump();
  }

  /** Wait (first come first served) until n more bytes fit; they are then held. Call ran() once the caller has run on. */
  admit(n: number): Promise<void> {
    const p = new Promise<void>((resolve) => this.waiters.push({ n, resolve }));
    this.schedulePump();
    return p;
  }

  /** A write admitted by admit() has run on: later writes no longer queue behind it. */
  ran(): void {
    this.admitted--;
  }

  /**
   * Look at the waiters again, soon. pump() may evict an open run, so it must not run in the
   * middle of the layer placing a write: code that can run there defers it to a microtask.
   */
  schedulePump(): void {
    if (this.waiters.length === 0 || this.pumpScheduled) return;
    this.pumpScheduled = true;
    queueMicrotask(() => {
      this.pumpScheduled = false;
      this.pump();
    });
  }

  private fits(n: number): boolean {
    return (this.held === 0 || this.held + n <= this.limit) && !this.hooks.queueFull();
  }

  /**
   * Admit waiting writes that fit. If the memory they need will not come back by itself, ask
   * the layer to evict an open run.
   */
  private pump(): void {
    while (this.waiters.length > 0) {
      const w = this.waiters[0];
      if (this.fits(w.n)) {
        this.waiters.shift();
        this.hold(w.n);
        this.admitted++;
        w.resolve();
        continue;
      }
      const shortfall = this.held + w.n - this.limit;
      if (this.hooks.returning() >= shortfall || this.hooks.queueFull()) break;
      if (!this.hooks.evict()) break;
    }
  }
}
