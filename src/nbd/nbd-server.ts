/**
 * The NBD server: listens on a unix socket or TCP and runs one NbdConnection per client.
 *
 * Promises: fixed newstyle negotiation (see handshake.ts), concurrent out-of-order replies,
 * requests validated before any backend call (see connection.ts), a misbehaving client only
 * ever loses its own connection, and close() lets every connection finish the requests it has
 * started before closing the sockets.
 */
import { EventEmitter } from 'node:events';
import * as net from 'node:net';
import * as fs from 'node:fs';
import type { Logger } from '../core/log';
import { silentLogger } from '../core/log';
import { describeError } from '../core/errors';
import { NbdConnection } from './connection';
import type { ExportConfig } from './export';
import type { PayloadPool } from '../core/payload-pool';
import { ReceiveBudget } from './receive-budget';

export type { ExportConfig } from './export';

export interface NbdServerOptions {
  /** The export served for the empty name "" is exports[0]. */
  exports: ExportConfig[];
  logger?: Logger;
  /** Time a client has to finish negotiating; default 10000 ms. */
  handshakeTimeoutMs?: number;
  /** Requests running at once per connection before the socket is paused; default 64. */
  maxInFlightPerConnection?: number;
  /** READ/WRITE bytes running at once per connection before the socket is paused; default 64 MiB. */
  maxPendingBytesPerConnection?: number;
  /** Options accepted per connection before it is dropped; default 256. */
  maxOptions?: number;
  /**
   * Where WRITE payload buffers come from: the pool the export's backend and layers use, so
   * that its bound covers all payload memory (partly received WRITEs, payloads waiting for the
   * backend, READ replies waiting for a slow client). What clients hold is shared fairly
   * between connections within 3/4 of the bound (see receive-budget.ts).
   */
  payloadPool: PayloadPool;
  /** How sockets are read: 'onread' (default, zero-copy) or 'data' (events, one copy). */
  readMode?: 'onread' | 'data';
}

export type ListenAddress = { unix: string } | { port: number; host?: string };

export class NbdServer extends EventEmitter {
  private readonly opts: NbdServerOptions;
  private readonly log: Logger;
  private readonly server: net.Server;
  private readonly connections = new Map<number, NbdConnection>();
  /** Payload memory of WRITEs being received, shared by every connection. */
  private readonly budget: ReceiveBudget;
  private nextId = 1;
  private unixPath: string | undefined;
  private closing: Promise<void> | undefined;

  constructor(opts: NbdServerOptions) {
    super();
    if (opts.exports.length === 0) throw new RangeError('NbdServer needs at least one export');
    this.opts = opts;
    this.log = opts.logger ?? silentLogger();
    this.budget = new ReceiveBudget(opts.payloadPool);
    // Half-open: a client that shuts down its sending side still gets its replies.
    // Paused: the connection re-wraps the socket to read into its own buffers (socket-reader.ts)
    // and nothing may be read before that.
    this.server = net.createServer({ allowHalfOpen: true, pauseOnConnect: true }, (socket) => this.accept(socket));
    this.server.on('error', (err) => {
      if (this.listenerCount('error') > 0) this.emit('error', err);
      else this.log.error({ err: describeError(err) }, 'server error');
    });
  }

  get connectionCount(): number {
    return this.connections.size;
  }

  /** Payload memory: the pool's live bytes and bound, what clients hold (WRITEs being received, unsent replies), and requests waiting. */
  memoryStats(): { liveBytes: number; maxLiveBytes: number; receivingBytes: number; clientBytes: number; waiting: number } {
    const pool = this.budget.pool;
    return {
      liveBytes: pool.liveBytes,
      maxLiveBytes: pool.maxLiveBytes,
      receivingBytes: this.budget.receivingBytes,
      clientBytes: this.budget.heldBytes,
      waiting: this.budget.waiting,
    };
  }

  /** Resolves once listening; port 0 resolves with the port actually bound. */
  listen(addr: ListenAddress): Promise<{ unix?: string; port?: number; host?: string }> {
    return new Promise((resolve, reject) => {
      const onError = (err: Error) => reject(err);
      this.server.once('error', onError);
      const done = () => {
        this.server.off('error', onError);
        if ('unix' in addr) {
          this.unixPath = addr.unix;
          resolve({ unix: addr.unix });
        } else {
          const a = this.server.address() as net.AddressInfo;
          resolve({ port: a.port, host: a.address });
        }
      };
      if ('unix' in addr) this.server.listen(addr.unix, done);
      else this.server.listen(addr.port, addr.host ?? '127.0.0.1', done);
    });
  }

  /** Serves a socket that is already connected (nbdkit -s: stdin/stdout); 'disconnect' tells when it is done. */
  serveSocket(socket: net.Socket): void {
    this.accept(socket);
  }

  /** Stop accepting; let every connection finish its outstanding requests, then close. */
  close(): Promise<void> {
    if (!this.closing) {
      this.closing = (async () => {
        const stopped = new Promise<void>((resolve) => this.server.close(() => resolve()));
        for (const c of this.connections.values()) c.shutdown();
        await Promise.all([stopped, ...[...this.connections.values()].map((c) => c.done)]);
        if (this.unixPath) fs.rmSync(this.unixPath, { force: true });
      })();
    }
    return this.closing;
  }

  private accept(socket: net.Socket): void {
    if (this.closing) {
      socket.destroy();
      return;
    }
    const id = this.nextId++;
    const remote = socket.remoteAddress ?? 'unix';
    const conn = new NbdConnection(socket, {
      id,
      exports: this.opts.exports,
      logger: this.log,
      handshakeTimeoutMs: this.opts.handshakeTimeoutMs ?? 10000,
      maxInFlight: Math.max(1, this.opts.maxInFlightPerConnection ?? 64),
      maxPendingBytes: this.opts.maxPendingBytesPerConnection ?? 64 * 1024 * 1024,
      // Below the bound: a client that does not read its replies stops being served at its share.
      maxWriteBuffer: this.budget.replyCap,
      maxOptions: this.opts.maxOptions ?? 256,
      budget: this.budget,
      readMode: this.opts.readMode,
    });
    this.connections.set(id, conn);
    this.log.debug({ conn: id, remote }, 'connection');
    this.emit('connection', id);
    conn.done.then(
      () => {
        this.connections.delete(id);
        this.log.debug({ conn: id }, 'disconnect');
        this.emit('disconnect', id);
      },
      (err: unknown) => this.log.error({ conn: id, err: describeError(err) }, 'connection failed'),
    );
  }
}
