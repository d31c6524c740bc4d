/**
 * The imageio connection pool: N undici Clients, each exactly one keep-alive HTTP connection,
 * handed out one request at a time.
 *
 * Why not undici's Pool: imageio gives every HTTP connection its own backend (its own fd or
 * NBD socket), so `PATCH flush` flushes only the connection it arrives on, and losing a
 * connection can lose what it wrote. We must choose the connection for a flush and know which
 * connection carried which write; a Pool cannot do either.
 *
 * Promises:
 * - acquire() hands out idle connections round-robin; when all are busy, callers wait FIFO.
 * - acquireThis(conn) waits for one particular connection and takes precedence over acquire()
 *   waiters, so a flush or keep-alive cannot be starved by a stream of reads and writes.
 * - A connection is used by one request at a time (pipelining 1), so a request that starts on
 *   a connection runs after everything sent on it before.
 */
import { Client } from 'undici';

/** Writes acknowledged on a connection since its last flush: what a lost connection may lose. */
export class UnflushedWrites {
  /** Exact ranges, merged when adjacent; beyond MAX_RANGES only first/end/count/bytes stay exact. */
  private ranges: Array<[number, number]> = [];
  private overflow = false;
  first = Infinity;
  end = 0;
  count = 0;
  bytes = 0;

  private static readonly MAX_RANGES = 8;

  get empty(): boolean {
    return this.count === 0;
  }

  add(offset: number, length: number): void {
    this.count++;
    this.bytes += length;
    this.first = Math.min(this.first, offset);
    this.end = Math.max(this.end, offset + length);
    if (this.overflow) return;
    const last = this.ranges[this.ranges.length - 1];
    if (last && last[1] === offset) last[1] = offset + length;
    else if (this.ranges.length < UnflushedWrites.MAX_RANGES) this.ranges.push([offset, offset + length]);
    else this.overflow = true;
  }

  clear(): void {
    this.ranges = [];
    this.overflow = false;
    this.first = Infinity;
    this.end = 0;
    this.count = 0;
    this.bytes = 0;
  }

  /** E.g. "3 requests, 12582912 bytes in 0-8388607, 16777216-20971519". */
  describe(): string {
    const where = this.overflow
      ? `somewhere in ${this.first}-${this.end - 1}`
      : `in ${this.ranges.map(([s, e]) => `${s}-${e - 1}`).join(', ')}`;
    return `${this.count} request${this.count === 1 ? '' : 's'}, ${this.bytes} bytes ${where}`;
  }
}

/** One pooled HTTP connection and what we know about it. */
export class ImageioConnection {
  busy = false;
  /** A socket is open (between undici's 'connect' and 'disconnect'). */
  connected = false;
  everConnected = false;
  /** Incremented when the socket closes: a request that saw it change lost its socket. */
  generation = 0;
  /** Date.now() when the last request on this connection finished. */
  lastUsed = Date.now();
  readonly unflushed = new UnflushedWrites();

  constructor(
    readonly id: number,
    readonly client: Client,
  ) {}
}

type Waiter = (conn: ImageioConnection) => void;

export class ConnectionPool {
  private readonly idle: ImageioConnection[];
  private readonly waiters: Waiter[] = [];
  private readonly targeted = new Map<ImageioConnection, Waiter[]>();
  private closed = false;

  constructor(readonly connections: readonly ImageioConnection[]) {
    this.idle = [...connections];
  }

  get size(): number {
    return this.connections.length;
  }

  /** Any idle connection; waits FIFO when all are busy. */
  acquire(): Promise<ImageioConnection> {
    if (this.closed) return Promise.reject(new Error('connection pool is closed'));
    const conn = this.idle.shift();
    if (conn) {
      conn.busy = true;
      return Promise.resolve(conn);
    }
    return new Promise((resolve) => this.waiters.push(resolve));
  }

  /** This connection, as soon as its current request is done. */
  acquireThis(conn: ImageioConnection): Promise<ImageioConnection> {
    if (this.closed) return Promise.reject(new Error('connection pool is closed'));
    const i = this.idle.indexOf(conn);
    if (i >= 0) {
      this.idle.splice(i, 1);
      conn.busy = true;
      return Promise.resolve(conn);
    }
    return new Promise((resolve) => {
      const list = this.targeted.get(conn);
      if (list) list.push(resolve);
      else this.targeted.set(conn, [resolve]);
    });
  }

  release(conn: ImageioConnection): void {
    conn.lastUsed = Date.now();
    const list = this.targeted.get(conn);
    if (list && list.length > 0) {
      const next = list.shift()!;
      if (list.length === 0) this.targeted.delete(conn);
      next(conn);
      return;
    }
    const next = this.waiters.shift();
    if (next) {
      next(conn);
      return;
    }
    conn.busy = false;
    this.idle.push(conn);
  }

  /** Refuses new acquisitions. Waiters still queued are served as connections are released. */
  close(): void {
    this.closed = true;
  }
}
