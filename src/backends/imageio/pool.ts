/**
 * The imageio connection pool: N HttpConnections, each exactly one keep-alive HTTP
 * connection, handed out one request at a time.
 *
 * Why not a general-purpose pool: imageio gives every HTTP connection its own backend (its own fd or
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
import type { HttpConnection } from './http/connection';

type Waiter = (conn: HttpConnection) => void;

export class ConnectionPool {
  private readonly idle: HttpConnection[];
  private readonly waiters: Waiter[] = [];
  private readonly targeted = new Map<HttpConnection, Waiter[]>();
  private closed = false;

  constructor(readonly connections: readonly HttpConnection[]) {
    this.idle = [...connections];
  }

  get size(): number {
    return this.connections.length;
  }

  /** Any idle connection; waits FIFO when all are busy. */
  acquire(): Promise<HttpConnection> {
    if (this.closed) return Promise.reject(new Error('connection pool is closed'));
    const conn = this.idle.shift();
    if (conn) {
      conn.busy = true;
      return Promise.resolve(conn);
    }
    return new Promise((resolve) => this.waiters.push(resolve));
  }

  /** This connection, as soon as its current request is done. */
  acquireThis(conn: HttpConnection): Promise<HttpConnection> {
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

  release(conn: HttpConnection): void {
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
