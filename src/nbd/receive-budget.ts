/**
 * The payload memory clients hold, shared fairly by the connections of a server.
 *
 * Every payload buffer comes from the payload pool, whose bound covers all payload memory of the
 * data path. Two kinds of it are held by a client rather than by work that finishes on its own:
 * a WRITE payload being received (a client that sends a 32 MiB WRITE header and stalls keeps it
 * for good) and a READ reply until the socket has taken it (a client that stops reading keeps
 * it for good). If such memory could take the whole pool, the backend and every other client
 * would wait behind one stalled client. So:
 *
 * - what clients hold, together, is at most CLIENT_SHARE (3/4) of the pool's bound: the rest is
 *   for work that finishes on its own (the backend, coalescing, read-ahead);
 * - while other connections wait, a connection that already holds memory gets more only up to
 *   its fair share (that 3/4 divided among the connections holding or waiting); waiters are
 *   served in order, skipping any that does not fit or is over its share: a large waiter does
 *   not block a small request that fits;
 * - READ replies one connection holds are capped at REPLY_SHARE of what clients may hold (below
 *   the bound), except one whole reply, which a client without structured replies must get in
 *   one piece; with structured replies a larger READ is answered in pieces (see connection.ts);
 * - a connection holding nothing is always admitted if the total fits, and one payload bigger
 *   than the clients' share is admitted when nobody holds anything, as the pool does.
 *
 * Requests that do not fit wait; their connection stops reading meanwhile.
 */
import { PayloadPool } from '../core/payload-pool';

/** READ and WRITE payloads accepted whatever block size is advertised (libnbd caps at 64 MiB). */
export const MAX_PAYLOAD = 64 * 1024 * 1024;

/** The part of the pool's bound that memory held by clients may take. */
export const CLIENT_SHARE = 0.75;

/** The part of the clients' memory that one connection's READ replies may take. */
export const REPLY_SHARE = 0.5;

/**
 * The smallest bound (--max-memory) the command accepts, 48 MiB: CLIENT_SHARE of MAX_PAYLOAD.
 * With it, what clients may hold (36 MiB) takes one WRITE of the advertised maximum block size
 * (32 MiB, src/nbd/export.ts) and leaves room for other clients' replies.
 */
export const MIN_MAX_MEMORY = CLIENT_SHARE * MAX_PAYLOAD;

/** A connection waiting for payload memory. */
export interface PayloadWaiter {
  /** The buffer (exactly the size asked for), now counted as being received. */
  payloadReady(buf: Buffer): void;
}

type Kind = 'receive' | 'reply';

interface Waiting {
  account: ClientAccount;
  /** Bytes counted: the pool size class of the request. */
  size: number;
  kind: Kind;
  /** A piece of a READ reply: any power of two from MIN_PIECE up to `size` will do; grant() gets it. */
  flexible?: boolean;
  grant: (size: number) => void;
  /** Its connection closed before it was served. */
  cancelled?: () => void;
}

/** Pieces a large READ is split into when its whole size cannot be had: at least this. */
const MIN_PIECE = 1024 * 1024;

export class ReceiveBudget {
  private used = 0;
  private receiving = 0;
  private readonly queue: Waiting[] = [];
  private readonly active = new Set<ClientAccount>();

  constructor(readonly pool: PayloadPool) {}

  /** What clients may hold together. */
  get limit(): number {
    return Math.floor(this.pool.maxLiveBytes * CLIENT_SHARE);
  }

  /** READ reply bytes one connection may hold (beyond one whole reply); below the bound. */
  get replyCap(): number {
    return Math.floor(this.limit * REPLY_SHARE);
  }

  /**
   * The largest READ or WRITE payload served: at most what clients may hold, so that one
   * stalled client can never hold all of the pool (larger ones are refused with an error; the
   * advertised maximum block size is smaller, so conforming clients never send them).
   */
  get payloadLimit(): number {
    return Math.min(MAX_PAYLOAD, this.limit);
  }

  /** Bytes (by pool size class) of payloads being received. */
  get receivingBytes(): number {
    return this.receiving;
  }

  /** Bytes (by pool size class) held by clients: payloads being received and replies not yet sent. */
  get heldBytes(): number {
    return this.used;
  }

  /** Requests waiting for memory. */
  get waiting(): number {
    return this.queue.length;
  }

  /** The account of one connection. */
  account(): ClientAccount {
    return new ClientAccount(this);
  }

  /** @internal whether `a` may take `size` more bytes of `kind` now. */
  allows(a: ClientAccount, size: number, kind: Kind): boolean {
    if (this.used > 0 && this.used + size > this.limit) return false;
    if (kind === 'reply' && a.replies > 0 && a.replies + size > this.replyCap) return false;
    if (a.held > 0 && a.held + size > this.fairShare() && this.queue.length > a.waiting) return false;
    return true;
  }

  /** What `w` can be given now: its size, a smaller piece if it takes one, or 0. */
  private grantable(w: Waiting): number {
    if (this.allows(w.account, w.size, w.kind)) return w.size;
    // A waiting READ takes a smaller piece only while its connection holds no replies of its
    // own (those come back as its client reads them). Stricter than tryReply(), which also
    // splits a READ above the reply cap at once: a waiter already had that chance.
    if (!w.flexible || w.account.replies > 0) return 0;
    for (let piece = w.size / 2; piece >= MIN_PIECE; piece /= 2) if (this.allows(w.account, piece, w.kind)) return piece;
    return 0;
  }

  private fairShare(): number {
    return this.limit / Math.max(1, this.active.size);
  }

  /** @internal count `size` bytes of `kind` as held by `a`. */
  take(a: ClientAccount, size: number, kind: Kind): void {
    this.used += size;
    a.held += size;
    if (kind === 'reply') a.replies += size;
    else this.receiving += size;
    this.active.add(a);
  }

  /** @internal `a` no longer holds `size` bytes of `kind`. */
  give(a: ClientAccount, size: number, kind: Kind): void {
    this.used -= size;
    a.held -= size;
    if (kind === 'reply') a.replies -= size;
    else this.receiving -= size;
    if (a.held === 0 && a.waiting === 0) this.active.delete(a);
    this.wake();
  }

  /**
   * @internal queue a request; `grant` runs once it has been counted. `first`: ahead of the
   * other requests of its connection (the rest of a READ already being answered: until its
   * last piece, the read-ahead window under it stays pinned).
   */
  enqueue(w: Waiting, first = false): void {
    const at = first ? this.queue.findIndex((q) => q.account === w.account) : -1;
    if (at >= 0) this.queue.splice(at, 0, w);
    else this.queue.push(w);
    w.account.waiting++;
    this.active.add(w.account);
    this.wake();
  }

  /** @internal forget every waiter of `a`. */
  cancel(a: ClientAccount): void {
    const before = this.queue.length;
    for (let i = this.queue.length - 1; i >= 0; i--) {
      if (this.queue[i].account !== a) continue;
      const [w] = this.queue.splice(i, 1);
      a.waiting--;
      w.cancelled?.();
    }
    if (a.held === 0) this.active.delete(a);
    if (this.queue.length !== before) this.wake();
  }

  /**
   * Serve waiters in order, each one that is allowed now: one that does not fit, or whose
   * connection is over its share, does not hold back the others. (Order matters for speed: the
   * READs of a sequential reader reach read-ahead in the order sent.)
   */
  private wake(): void {
    // A grant only takes memory, so a waiter skipped in a pass stays skipped, except that the
    // last waiter of other connections leaving lifts the share limit: then one more pass.
    for (let granted = true; granted && this.queue.length > 0; ) {
      granted = false;
      for (let i = 0; i < this.queue.length; ) {
        const w = this.queue[i];
        const size = this.grantable(w);
        if (size === 0) {
          i++;
          continue;
        }
        this.queue.splice(i, 1);
        w.account.waiting--;
        this.take(w.account, size, w.kind);
        w.grant(size);
        granted = true;
      }
    }
  }
}

/** What one connection holds, and its requests for more. */
export class ClientAccount {
  /** @internal bytes held: payloads being received and replies not yet sent */
  held = 0;
  /** @internal bytes of replies held */
  replies = 0;
  /** @internal requests of this connection waiting */
  waiting = 0;
  private closed = false;

  constructor(private readonly budget: ReceiveBudget) {}

  /** A WRITE payload buffer of n bytes now, or undefined (then call wait()). */
  tryTake(n: number): Buffer | undefined {
    const size = PayloadPool.sizeClass(n);
    if (!this.budget.allows(this, size, 'receive')) return undefined;
    const buf = this.budget.pool.tryAllocate(n);
    if (buf) this.budget.take(this, size, 'receive');
    return buf;
  }

  /** Queue for a WRITE payload buffer of n bytes; `who.payloadReady` gets it once there is room. */
  wait(n: number, who: PayloadWaiter): void {
    const pool = this.budget.pool;
    this.budget.enqueue({
      account: this,
      size: PayloadPool.sizeClass(n),
      kind: 'receive',
      grant: (_size) => {
        // Admitted; the pool may still make it wait if work that finishes on its own holds
        // memory. Delivered from a microtask: the waiter's connection pumps, and that must not
        // run inside another connection's pump (done() is called from there).
        const buf = pool.tryAllocate(n);
        if (buf) queueMicrotask(() => who.payloadReady(buf));
        else void pool.allocate(n).then((b) => who.payloadReady(b));
      },
    });
  }

  /** A WRITE payload of n bytes is no longer being received (complete, or abandoned). */
  done(n: number): void {
    this.budget.give(this, PayloadPool.sizeClass(n), 'receive');
  }

  /**
   * Reply memory for a READ of `length` bytes, now: the length granted (all of it, or with
   * `split` a piece of at least 1 MiB, a power of two), or 0 if nothing fits now. Without
   * `split` the whole reply is asked for, and a reply above the reply cap only while this
   * connection holds no other reply.
   */
  tryReply(length: number, split: boolean): number {
    if (this.closed) return 0;
    const whole = PayloadPool.sizeClass(length);
    const cap = this.budget.replyCap;
    if ((!split || whole <= cap) && this.budget.allows(this, whole, 'reply')) {
      this.budget.take(this, whole, 'reply');
      return length;
    }
    if (!split) return 0;
    // A READ within the cap is split only when the memory it lacks is held by other
    // connections: replies of its own come back as its client reads them, and pieces would
    // leave the read-ahead window under each READ pinned until its last piece (measured:
    // virt-v2v's nbdcopy, 16 x 4 MiB in flight, stalled until read-ahead gave up, 2 s).
    if (whole <= cap && this.replies > 0) return 0;
    for (let piece = 2 ** Math.floor(Math.log2(Math.min(length, cap))); piece >= MIN_PIECE; piece /= 2) {
      if (piece >= length) continue;
      if (this.budget.allows(this, piece, 'reply')) {
        this.budget.take(this, piece, 'reply');
        return piece;
      }
    }
    return 0;
  }

  /**
   * Wait for reply memory: the whole `length`, or with `split` the largest piece that fits when
   * its turn comes (a power of two of at least 1 MiB, within the reply cap; the whole READ when
   * it fits). `rest`: the READ is already being answered, so this goes ahead of the
   * connection's other waiting READs. Resolves with the length granted, or 0 if the connection
   * closed first.
   */
  waitReply(length: number, split: boolean, rest = false): Promise<number> {
    if (this.closed) return Promise.resolve(0);
    if (!split) {
      return new Promise((resolve) =>
        this.budget.enqueue({ account: this, size: PayloadPool.sizeClass(length), kind: 'reply', grant: () => resolve(length), cancelled: () => resolve(0) }, rest),
      );
    }
    const whole = PayloadPool.sizeClass(length);
    const cap = 2 ** Math.floor(Math.log2(Math.max(MIN_PIECE, this.budget.replyCap)));
    // What is counted must be what replySent() gives back: the size class of the length granted.
    const size = Math.min(whole, cap);
    return new Promise((resolve) =>
      this.budget.enqueue(
        {
          account: this,
          size,
          kind: 'reply',
          flexible: size > MIN_PIECE,
          // The whole READ when its size class was granted, else the piece (never more than asked).
          grant: (granted) => resolve(granted >= whole ? length : Math.min(granted, length)),
          cancelled: () => resolve(0),
        },
        rest,
      ),
    );
  }

  /** Reply memory for `length` bytes (as granted) is no longer held: the socket took the reply. */
  replySent(length: number): void {
    this.budget.give(this, PayloadPool.sizeClass(length), 'reply');
  }

  /** The connection closed: stop waiting (what it holds is given back by done()/replySent()). */
  close(): void {
    this.closed = true;
    this.budget.cancel(this);
  }
}
