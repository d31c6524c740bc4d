/**
 * An imageio-compatible HTTP server for one ticket backed by a raw image file: the remote
 * service on TCP (HTTP or HTTPS) and optionally the local service on a unix socket. It follows
 * ovirt-imageio 2.5.3 (docs/imageio.md) closely enough that a client that works against it works
 * against the real daemon.
 *
 * Known differences from the real daemon (mostly where Node's HTTP parser decides):
 * - `Content-Length: abc` and an unknown method (`FOO`) are rejected by Node's parser: we answer
 *   imageio's 400/405 text but must close the connection (imageio keeps it).
 * - A chunked PUT gets 400 "Content-Length header is required" and a close at once; imageio
 *   answers that 400, then a second HTML 400 for the chunk bytes, then closes.
 * - HEAD gets the 405 head without its body. Responses to keep-alive requests have no
 *   `connection` header, like imageio; the header order differs slightly.
 * - Extents (nbd backend) come from an allocation map (a scan at start, then PUT = data,
 *   PATCH zero = zero) instead of SEEK_DATA; zero extents are reported with hole: true.
 * - PATCH zero writes zeros (no fallocate from Node) but skips ranges already known zero.
 * - One idle timeout for all connections (imageio switches to the ticket's inactivity_timeout
 *   once a request is authorized); CORS is not implemented.
 * - Checksum: the algorithms listed are those computed here (imageio lists all of Python's
 *   hashlib, including shake_* which then fail with 500).
 */
import { randomUUID } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import http, { IncomingMessage, ServerResponse } from 'node:http';
import https from 'node:https';
import type { AddressInfo, Socket } from 'node:net';
import type { Logger } from '../../src/core/log';
import { silentLogger } from '../../src/core/log';
import { Connection } from './connection';
import { FaultInjector } from './faults';
import { handleRequest, ServiceContext } from './handlers';
import { rawErrorResponse, rawHtmlError } from './http-errors';
import { ImageFile } from './image-file';
import { reprString } from './py-format';
import { ImageioServerStats, newConnectionStats, bump } from './stats';
import { Ticket } from './ticket';

export interface ImageioServerOptions {
  /** Path of a raw image file (must exist); its size is the ticket size unless `size` is given. */
  image: string;
  size?: number;
  /** Ticket id; default a random UUID. */
  ticket?: string;
  transferId?: string;
  /** Remote service; host default 127.0.0.1; port 0 = ephemeral. Default { port: 0 }. */
  tcp?: { port: number; host?: string };
  /**
   * Local service (plain HTTP, /images only, no /info/) on this unix socket: a file system path,
   * or an abstract name starting with "\0" (imageio's default is "\0/org/ovirt/imageio";
   * abstractSocketName() makes a unique one). None when absent.
   */
  unix?: string;
  /** PEM certificate and key; makes the TCP service HTTPS. */
  tls?: { cert: string | Buffer; key: string | Buffer };
  /** What OPTIONS reports: max_writers 1 for 'file', 8 for 'nbd'; also the extents style. Default 'nbd'. */
  backend?: 'file' | 'nbd';
  /** Ticket ops ["read"]: allow OPTIONS,GET; features checksum,extents. */
  readonly?: boolean;
  /** Emulate an old server without OPTIONS support. */
  legacy?: 'options-405' | 'options-204';
  /** Close connections idle (nothing in flight) this long. Default 60000. */
  idleTimeoutMs?: number;
  /** Ticket expiry after the last operation. Default 3600. */
  ticketTimeoutS?: number;
  /** Include unix_socket in OPTIONS when `unix` is set. Default true. */
  advertiseUnixSocket?: boolean;
  logger?: Logger;
}

export type { ImageioServerStats, ImageioConnectionStats } from './stats';

export class ImageioServer {
  readonly ticketId: string;
  readonly faults = new FaultInjector();
  private readonly opts: ImageioServerOptions;
  private readonly logger: Logger;
  private readonly idleTimeoutMs: number;
  private ticket?: Ticket;
  private image?: ImageFile;
  private tcpServer?: http.Server;
  private unixServer?: http.Server;
  private tcpAddress?: AddressInfo;
  private readonly conns = new Map<Socket, Connection>();
  private readonly closing: Promise<void>[] = [];
  private nextConnId = 1;
  private readonly counters: ImageioServerStats = {
    methods: {},
    ops: {},
    statuses: {},
    bytesRead: 0,
    bytesWritten: 0,
    bytesZeroed: 0,
    flushes: 0,
    faultsApplied: 0,
    connectionsOpened: 0,
    connectionsOpen: 0,
    maxConcurrentConnections: 0,
    connections: [],
  };

  constructor(opts: ImageioServerOptions) {
    this.opts = opts;
    this.ticketId = opts.ticket ?? randomUUID();
    this.logger = opts.logger ?? silentLogger();
    this.idleTimeoutMs = opts.idleTimeoutMs ?? 60000;
  }

  /** Open the image, then listen on every configured service. */
  async start(): Promise<void> {
    const o = this.opts;
    const readonly = !!o.readonly;
    this.image = await ImageFile.open(o.image, o.size, readonly);
    const size = o.size ?? this.image.fileSize;
    this.ticket = new Ticket({
      id: this.ticketId,
      size,
      ops: readonly ? ['read'] : ['read', 'write'],
      timeoutS: o.ticketTimeoutS ?? 3600,
      transferId: o.transferId,
    });
    const advertise = o.advertiseUnixSocket ?? true;
    const base = {
      ticket: this.ticket,
      image: this.image,
      backend: o.backend ?? 'nbd',
      legacy: o.legacy,
      unixSocket: o.unix !== undefined && advertise ? o.unix : undefined,
      faults: this.faults,
      stats: this.counters,
      logger: this.logger,
    } as const;

    const tcp = o.tcp ?? { port: 0 };
    const tcpCtx: ServiceContext = { ...base, service: 'tcp' };
    const serverOpts = { keepAliveTimeout: 0, requestTimeout: 0, headersTimeout: 0, noDelay: true };
    this.tcpServer = o.tls
      ? https.createServer({ ...serverOpts, cert: o.tls.cert, key: o.tls.key })
      : http.createServer(serverOpts);
    this.setupServer(this.tcpServer, tcpCtx, o.tls ? 'secureConnection' : 'connection');
    await listen(this.tcpServer, () => this.tcpServer!.listen({ port: tcp.port, host: tcp.host ?? '127.0.0.1', backlog: 40 }));
    this.tcpAddress = this.tcpServer.address() as AddressInfo;

    if (o.unix !== undefined) {
      if (!isAbstractSocket(o.unix)) await fsp.rm(o.unix, { force: true });
      this.unixServer = http.createServer(serverOpts);
      this.setupServer(this.unixServer, { ...base, service: 'unix' }, 'connection');
      await listen(this.unixServer, () => this.unixServer!.listen(o.unix));
    }
    this.logger.debug({ url: this.url, unix: o.unix, size }, 'imageio server listening');
  }

  private setupServer(server: http.Server, ctx: ServiceContext, connEvent: 'connection' | 'secureConnection'): void {
    server.on(connEvent, (socket: Socket) => this.addConnection(socket, ctx.service));
    server.on('request', (req: IncomingMessage, res: ServerResponse) => {
      const conn = this.conns.get(req.socket) ?? this.addConnection(req.socket, ctx.service);
      conn.stats.requests++;
      bump(this.counters.methods, req.method ?? '');
      this.logger.debug({ conn: conn.stats.id, method: req.method, url: req.url }, 'request');
      conn.enqueue(() => handleRequest(ctx, conn, req, res));
    });
    server.on('clientError', (err: NodeJS.ErrnoException & { rawPacket?: Buffer }, socket: Socket) =>
      this.onClientError(err, socket),
    );
  }

  private addConnection(socket: Socket, service: 'tcp' | 'unix'): Connection {
    const existing = this.conns.get(socket);
    if (existing) return existing;
    const remote = service === 'tcp' ? `${socket.remoteAddress}:${socket.remotePort}` : 'unix';
    const stats = newConnectionStats(this.nextConnId++, service, remote);
    const conn = new Connection(socket, stats, this.idleTimeoutMs);
    this.conns.set(socket, conn);
    this.counters.connections.push(stats);
    this.counters.connectionsOpened++;
    this.counters.connectionsOpen++;
    this.counters.maxConcurrentConnections = Math.max(this.counters.maxConcurrentConnections, this.counters.connectionsOpen);
    socket.once('close', () => {
      this.conns.delete(socket);
      this.counters.connectionsOpen--;
      this.closing.push(conn.onClosed());
    });
    return conn;
  }

  /** Requests Node's HTTP parser rejected, answered the way imageio answers them. */
  private onClientError(err: NodeJS.ErrnoException & { rawPacket?: Buffer }, socket: Socket): void {
    const conn = this.conns.get(socket);
    if (err.code === 'HPE_INVALID_EOF_STATE' && conn) {
      // The client half-closed in the middle of a body: a PUT answers 400 "Requested N bytes, available M".
      conn.shortBody = true;
      if (conn.onShortBody) {
        conn.onShortBody();
        return;
      }
      if (conn.inFlight > 0) return;
    }
    if (!socket.writable || err.code === 'ECONNRESET') {
      socket.destroy();
      return;
    }
    // rawPacket is the whole chunk read; the bad request starts after the last complete head before the error.
    const packet = err.rawPacket?.toString('latin1') ?? '';
    const errorAt = (err as { bytesParsed?: number }).bytesParsed ?? packet.length;
    const headEnd = packet.lastIndexOf('\r\n\r\n', Math.max(0, errorAt - 1));
    const raw = headEnd >= 0 && headEnd + 4 <= errorAt ? packet.slice(headEnd + 4) : packet;
    const firstLine = raw.split(/\r?\n/, 1)[0];
    let response: string;
    if (err.code === 'HPE_INVALID_CONTENT_LENGTH' || err.code === 'HPE_UNEXPECTED_CONTENT_LENGTH') {
      const m = /\r?\ncontent-length:[ \t]*([^\r\n]*)/i.exec(raw);
      response = rawErrorResponse(400, 'Bad Request', `Invalid Content-Length: ${reprString((m?.[1] ?? '').trim())}`);
    } else if (err.code === 'HPE_INVALID_METHOD' && /^[!-~]+ \S+ HTTP\/1\.[01]$/.test(firstLine)) {
      response = rawErrorResponse(405, 'Method Not Allowed', `Invalid method ${reprString(firstLine.split(' ')[0])}`);
    } else {
      response = rawHtmlError(
        400,
        'Bad Request',
        `Bad request syntax (${reprString(firstLine)})`,
        'Bad request syntax or unsupported method',
      );
    }
    const send = async () => {
      if (conn) conn.stats.closedBy ??= 'server';
      if (socket.writable) socket.end(response);
      else socket.destroy();
    };
    // Answer after the responses to earlier requests on this connection.
    if (conn) conn.enqueue(send);
    else void send();
  }

  /** The transfer URL, e.g. http://127.0.0.1:PORT/images/TICKET. */
  get url(): string {
    if (!this.tcpAddress) throw new Error('ImageioServer is not started');
    const { address, port, family } = this.tcpAddress;
    const host = family === 'IPv6' ? `[${address}]` : address;
    return `${this.opts.tls ? 'https' : 'http'}://${host}:${port}/images/${this.ticketId}`;
  }

  get unixSocket(): string | undefined {
    return this.opts.unix;
  }

  /** A snapshot of the counters; connections include closed ones. */
  stats(): ImageioServerStats {
    const c = this.counters;
    return {
      ...c,
      methods: { ...c.methods },
      ops: { ...c.ops },
      statuses: { ...c.statuses },
      faultsApplied: this.faults.applied,
      connections: c.connections.map((s) => ({ ...s })),
    };
  }

  /** Later requests get 403 "Transfer=ID expired". */
  expireTicket(): void {
    this.ticket?.expire();
  }

  /** Later requests (and ops running now, when they end) get 403 "Transfer=ID was canceled". */
  cancelTicket(): void {
    this.ticket?.cancel();
  }

  /** Close every connection with nothing in flight now, as imageio's idle timeout would. */
  closeIdleConnections(): number {
    let n = 0;
    for (const conn of this.conns.values()) {
      if (conn.inFlight === 0) {
        conn.destroy('idle');
        n++;
      }
    }
    return n;
  }

  /** Stop listening, close every connection, and release the per-connection file handles. */
  async close(): Promise<void> {
    const servers = [this.tcpServer, this.unixServer].filter((s): s is http.Server => !!s);
    const closed = servers.map((s) => new Promise<void>((r) => s.close(() => r())));
    for (const conn of this.conns.values()) conn.destroy('shutdown');
    for (const s of servers) s.closeAllConnections();
    await Promise.all(closed);
    await Promise.all(this.closing);
    if (this.opts.unix !== undefined && this.unixServer && !isAbstractSocket(this.opts.unix)) {
      await fsp.rm(this.opts.unix, { force: true });
    }
    this.tcpServer = this.unixServer = undefined;
  }
}

/** Linux abstract socket names start with a NUL byte and have no file behind them. */
export function isAbstractSocket(name: string): boolean {
  return name.startsWith('\0');
}

let abstractCount = 0;

/**
 * A fresh abstract socket name for one server: imageio's default "\0/org/ovirt/imageio" plus
 * "/PID-N", so that servers in parallel tests (or in one process) never collide.
 */
export function abstractSocketName(): string {
  return `\0/org/ovirt/imageio/${process.pid}-${++abstractCount}`;
}

/** How a unix socket is shown in text: abstract names as "@name" (the ss(8) convention). */
export function displaySocket(name: string): string {
  return isAbstractSocket(name) ? `@${name.slice(1)}` : name;
}

function listen(server: http.Server, start: () => void): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.once('listening', () => {
      server.off('error', reject);
      resolve();
    });
    start();
  });
}
