/**
 * One keep-alive HTTP/1.1 connection to imageio, carrying one request at a time, written for
 * the data path.
 *
 * Why not an HTTP client library here: at 8 MiB per request the bytes are the cost. undici
 * delivers response bodies as freshly allocated socket chunks copied once more into its
 * parser, and a request body made of several buffers must be a stream. Here a GET body is read
 * by the kernel (or OpenSSL) straight into the caller's buffer (`onread` with a buffer
 * function, see connector.ts), and a PUT body is a list of the client's own payload buffers.
 * The bytes are parsed by response-reader.ts, which has no sockets.
 *
 * Promises:
 * - request() resolves with the response when it arrived complete; it rejects with an
 *   ExchangeError whose `sent` says whether any byte of the request may have reached the
 *   server (false only when the connection could not be made, or the previous request's body
 *   was not taken in time and nothing of this one was written).
 * - A request has one deadline (`timeoutMs`) for everything after the connection is made;
 *   when it passes, the connection is destroyed and the request rejects with ERR_TIMEOUT.
 * - No response can grow memory without bound: bodies other than `into` are kept up to
 *   `maxBody` bytes; a longer (or endless) body is cut, the result marked `truncated`, and the
 *   connection closed. A successful response whose body does not match `into` exactly is a
 *   bad response (ERR_BAD_RESPONSE), and the connection is closed.
 * - Unflushed writes are tracked here, per socket: a successful request's `effect` is applied
 *   before request() resolves and before a close that follows the response can be seen, so a
 *   server that closes right after a successful flush is never mistaken for data loss. When a
 *   socket closes with unflushed writes, `onLost` is called and the record starts empty.
 */
import type { Socket } from 'node:net';
import { UnflushedWrites } from '../unflushed-writes';
import { connectSocket, type Endpoint, type TlsSessionSlot } from './connector';
import { BadResponseError } from './response-head';
import { ResponseReader } from './response-reader';

export type { Endpoint } from './connector';

/** What a successful request changes on its connection. */
export type Effect = { kind: 'unflushed'; offset: number; length: number } | { kind: 'flushed' };

export interface ExchangeSpec {
  method: string;
  /** Path and query. */
  path: string;
  /** Extra header lines, each ending in "\r\n". */
  headers?: string;
  /** Request body: sent in order after the head; one writev on plain sockets, piece by piece over TLS. */
  body?: readonly Buffer[];
  /** Statuses that mean success: `into` and `effect` apply only to them. */
  ok: readonly number[];
  /** A successful response's body must be exactly into.length bytes and is read straight into it. */
  into?: Buffer;
  /** Any other body is kept up to this many bytes. */
  maxBody: number;
  /** Deadline for the whole exchange once connected. */
  timeoutMs: number;
  effect?: Effect;
}

export interface ExchangeResult {
  status: number;
  headers: Record<string, string>;
  /** The body (empty for `into` responses): at most maxBody bytes. */
  body: Buffer;
  /** The body was longer than maxBody, or never ended: it was cut and the connection closed. */
  truncated: boolean;
}

/** A request that got no complete response. */
export class ExchangeError extends Error {
  constructor(
    message: string,
    /** ERR_TIMEOUT, ERR_CLOSED, ERR_BAD_RESPONSE, or the socket's own (ECONNREFUSED, ECONNRESET, TLS codes). */
    readonly code: string,
    /** Some of the request may have reached the server. */
    readonly sent: boolean,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = 'ExchangeError';
  }
}

export interface ConnectionHooks {
  /** A socket was opened; `again` after the first. */
  connected?(conn: HttpConnection, again: boolean): void;
  /** A socket closed while it held unflushed writes (already cleared here). */
  lost?(conn: HttpConnection, unflushed: UnflushedWrites, cause: unknown): void;
  /** A socket closed with nothing at risk. */
  closed?(conn: HttpConnection, cause: unknown): void;
}

/**
 * Writes `parts` to a TLS socket one at a time, each when the previous has gone out, and
 * resolves when all have (or the socket failed: its close handler reports that).
 *
 * Why not one corked writev as on plain sockets: Node's TLS socket copies the pieces of a
 * writev into one new buffer before OpenSSL encrypts it, so every byte of an 8 MiB PUT made of
 * the client's 256 KiB writes would be copied once more and its pages faulted in fresh. Written
 * one at a time, OpenSSL encrypts straight from the payload buffers; measured on a 1 GiB upload
 * of 8 MiB PUTs (32 x 256 KiB), this is about 0.2 CPU s per GiB less (docs/performance.md).
 *
 * Pieces longer than TLS_WRITE_MAX are written in parts of that size (views, not copies).
 */
/**
 * The most written to a TLS socket at once. Node encrypts a whole write into its own output
 * buffer before the socket takes any of it, so a 4 MiB piece (nbdcopy --request-size=4194304)
 * held 4 MiB more per connection: 131 against 108 MiB peak RSS over the unix socket.
 */
const TLS_WRITE_MAX = 256 * 1024;

function writeOneByOne(socket: Socket, parts: readonly Buffer[]): Promise<void> {
  return new Promise((resolve) => {
    let i = 0;
    let off = 0;
    const done = (): void => {
      socket.off('close', done);
      resolve();
    };
    const next = (err?: Error | null): void => {
      if (err || i === parts.length || socket.destroyed) return done();
      const part = parts[i];
      const end = Math.min(part.length, off + TLS_WRITE_MAX);
      const piece = off === 0 && end === part.length ? part : part.subarray(off, end);
      if (end === part.length) {
        i++;
        off = 0;
      } else {
        off = end;
      }
      socket.write(piece, next);
    };
    socket.on('close', done);
    next();
  });
}

/** Reads for response heads are this small so that they take little of a body with them. */
const HEAD_WINDOW = 2048;
const STAGING_BYTES = 64 * 1024;

interface Exchange {
  spec: ExchangeSpec;
  resolve: (r: ExchangeResult) => void;
  reject: (e: ExchangeError) => void;
  reader: ResponseReader;
  timer?: NodeJS.Timeout;
  failure?: ExchangeError;
}

export class HttpConnection {
  /** Incremented whenever a socket closes. */
  generation = 0;
  connected = false;
  everConnected = false;
  busy = false;
  /** Date.now() when the last request on this connection finished. */
  lastUsed = Date.now();
  readonly unflushed = new UnflushedWrites();
  bytesSent = 0;
  bytesReceived = 0;

  private readonly tlsSession: TlsSessionSlot = {};
  private socket: Socket | undefined;
  private closedPromise: Promise<void> | undefined;
  private resolveClosed: (() => void) | undefined;
  private closeCause: unknown;
  private cur: Exchange | undefined;
  private readonly staging = Buffer.allocUnsafeSlow(STAGING_BYTES);
  private sStart = 0;
  private sEnd = 0;
  private readingDest = false;
  private shut = false;
  /** The body of the last request while it is still being written over TLS (see writeOneByOne). */
  private writing: Promise<void> | undefined;
  /** A response completed in this turn of the event loop (see request()). */
  private justCompleted = false;

  constructor(
    readonly id: number,
    readonly endpoint: Endpoint,
    private readonly hooks: ConnectionHooks = {},
  ) {}

  /** Sends one request and resolves with its complete response (see the header comment). */
  async request(spec: ExchangeSpec): Promise<ExchangeResult> {
    if (this.cur) throw new Error(`connection ${this.id} is busy`);
    if (this.shut) throw new ExchangeError('connection is closed', 'ERR_CLOSED', false);
    // A server that closes right after a response: its EOF is usually in the socket already,
    // read later in this same turn of the event loop. Sending before it is seen would put a
    // write on a dead connection, with an outcome we could not know; one turn lets it show.
    if (this.justCompleted) await new Promise<void>((r) => setImmediate(r));
    // The previous body still being written (its response can be read before the last write's
    // callback runs, or the server answered early): this head goes after it, within this
    // request's deadline.
    if (this.writing) await this.afterWriting(this.writing, spec.timeoutMs);
    if (this.socket?.destroyed && this.closedPromise) await this.closedPromise; // a destroyed socket finishing its close
    const socket = this.socket ?? (await this.connect());
    return new Promise<ExchangeResult>((resolve, reject) => {
      const x: Exchange = { spec, resolve, reject, reader: new ResponseReader(spec) };
      this.cur = x;
      x.timer = setTimeout(() => {
        x.failure = new ExchangeError(`no complete response within ${(spec.timeoutMs / 1000).toFixed(1)} s`, 'ERR_TIMEOUT', true);
        socket.destroy();
      }, spec.timeoutMs);
      let length = 0;
      for (const b of spec.body ?? []) length += b.length;
      const head =
        `${spec.method} ${spec.path} HTTP/1.1\r\nHost: ${this.hostHeader()}\r\n${spec.headers ?? ''}` +
        (length > 0 || spec.method === 'PUT' || spec.method === 'PATCH' ? `Content-Length: ${length}\r\n` : '') +
        '\r\n';
      const parts: Buffer[] = [Buffer.from(head, 'latin1')];
      for (const b of spec.body ?? []) if (b.length > 0) parts.push(b);
      if (this.endpoint.protocol === 'https:' && this.endpoint.kind === 'url') {
        const writing = writeOneByOne(socket, parts).then(() => {
          if (this.writing === writing) this.writing = undefined;
        });
        this.writing = writing;
      } else {
        // Plain sockets: one writev straight from the buffers (no copy).
        socket.cork();
        for (const b of parts) socket.write(b);
        socket.uncork();
      }
      this.bytesSent += length;
    });
  }

  private async afterWriting(writing: Promise<void>, timeoutMs: number): Promise<void> {
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<boolean>((r) => (timer = setTimeout(() => r(true), timeoutMs)));
    const timedOut = await Promise.race([writing.then(() => false), late]);
    clearTimeout(timer);
    if (timedOut) {
      this.socket?.destroy();
      throw new ExchangeError(`the server did not take the previous request's body within ${(timeoutMs / 1000).toFixed(1)} s`, 'ERR_TIMEOUT', false);
    }
  }

  /** Closes the socket (after the current request, if any, is answered by the caller's choice). */
  close(): Promise<void> {
    this.shut = true;
    if (!this.socket) return Promise.resolve();
    const p = this.closedPromise!;
    this.socket.end();
    const s = this.socket;
    setTimeout(() => s.destroy(), 2000).unref();
    return p;
  }

  /** Closes at once; a request in progress rejects. */
  destroy(): Promise<void> {
    this.shut = true;
    if (!this.socket) return Promise.resolve();
    const p = this.closedPromise!;
    this.socket.destroy();
    return p;
  }

  /** Drop the current socket (e.g. after a failed keep-alive); the next request opens a new one. */
  reset(): Promise<void> {
    if (!this.socket) return Promise.resolve();
    const p = this.closedPromise!;
    this.socket.destroy();
    return p;
  }

  private hostHeader(): string {
    const e = this.endpoint;
    if (e.kind === 'unix') return 'localhost';
    return e.port ? `${e.hostname}:${e.port}` : e.hostname;
  }

  private async connect(): Promise<Socket> {
    const e = this.endpoint;
    let socket: Socket;
    try {
      // Every read lands where readTarget() says.
      socket = await connectSocket(e, { buffer: () => this.readTarget(), callback: (n) => this.onRead(n) }, this.tlsSession);
    } catch (err) {
      const code = (err as { code?: unknown }).code;
      throw new ExchangeError(`cannot connect to ${e.display}: ${(err as Error).message}`, typeof code === 'string' ? code : 'ERR_CONNECT', false, {
        cause: err,
      });
    }
    if (this.shut) {
      socket.destroy();
      throw new ExchangeError('connection is closed', 'ERR_CLOSED', false);
    }
    this.attach(socket);
    return socket;
  }

  private attach(socket: Socket): void {
    this.socket = socket;
    this.connected = true;
    this.closeCause = undefined;
    this.sStart = this.sEnd = 0;
    this.closedPromise = new Promise((r) => (this.resolveClosed = r));
    const again = this.everConnected;
    this.everConnected = true;
    socket.on('error', (err) => {
      this.closeCause ??= err;
    });
    socket.on('end', () => this.onEnd());
    socket.on('close', () => this.onClose(socket));
    this.hooks.connected?.(this, again);
  }

  // ---- Reading ------------------------------------------------------------------------------

  /** Where the next read lands: the body's destination, or a small window of the staging buffer. */
  private readTarget(): Buffer {
    // Straight into the body's destination only when nothing is staged before it.
    const direct = this.sStart === this.sEnd ? this.cur?.reader.directTarget() : undefined;
    if (direct && direct.length > 0) {
      this.readingDest = true;
      return direct;
    }
    this.readingDest = false;
    if (this.sStart === this.sEnd) {
      this.sStart = this.sEnd = 0;
    } else if (this.sEnd + HEAD_WINDOW > STAGING_BYTES) {
      this.staging.copy(this.staging, 0, this.sStart, this.sEnd);
      this.sEnd -= this.sStart;
      this.sStart = 0;
    }
    return this.staging.subarray(this.sEnd, Math.min(this.sEnd + HEAD_WINDOW, STAGING_BYTES));
  }

  private onRead(n: number): boolean {
    if (n <= 0) return true;
    this.bytesReceived += n;
    const x = this.cur;
    try {
      if (this.readingDest && x) {
        x.reader.advanceDirect(n);
        if (x.reader.result) this.complete(x);
        return true;
      }
      this.sEnd += n;
      this.process();
    } catch (err) {
      this.failCurrent(err instanceof BadResponseError ? err : new BadResponseError(String(err)));
    }
    return true;
  }

  /** Consumes staged bytes for the current exchange. */
  private process(): void {
    const x = this.cur;
    if (!x) {
      if (this.sEnd > this.sStart) {
        // Nothing was asked: a server talking out of turn cannot be trusted with the next request.
        this.closeCause ??= new BadResponseError('the server sent data nobody asked for');
        this.sStart = this.sEnd;
        this.socket?.destroy();
      }
      return;
    }
    this.sStart += x.reader.feed(this.staging, this.sStart, this.sEnd);
    if (x.reader.result) this.complete(x);
  }

  /** The response is in: apply its effect, settle the request, and decide the socket's fate. */
  private complete(x: Exchange): void {
    if (this.cur !== x) return;
    this.cur = undefined;
    clearTimeout(x.timer);
    const { head, body, truncated } = x.reader.result!;
    if (x.spec.effect && x.spec.ok.includes(head.status)) {
      const e = x.spec.effect;
      if (e.kind === 'unflushed') this.unflushed.add(e.offset, e.length);
      else this.unflushed.clear();
    }
    this.lastUsed = Date.now();
    if (!this.justCompleted) {
      this.justCompleted = true;
      setImmediate(() => (this.justCompleted = false));
    }
    const leftover = this.sEnd > this.sStart;
    if (head.close || truncated || leftover) {
      if (leftover) this.closeCause ??= new BadResponseError('the server sent more than its response');
      this.sStart = this.sEnd;
      this.socket?.destroy();
    }
    x.resolve({ status: head.status, headers: head.headers, body, truncated });
  }

  private failCurrent(err: BadResponseError): void {
    const x = this.cur;
    if (x) x.failure ??= new ExchangeError(err.message, 'ERR_BAD_RESPONSE', true, { cause: err });
    else this.closeCause ??= err;
    this.socket?.destroy();
  }

  private onEnd(): void {
    const x = this.cur;
    if (x && x.reader.end()) this.complete(x);
    // Otherwise the close handler reports it; our side closes too.
    this.socket?.destroy();
  }

  private onClose(socket: Socket): void {
    if (this.socket !== socket) return;
    this.socket = undefined;
    this.connected = false;
    this.generation++;
    this.readingDest = false;
    this.sStart = this.sEnd = 0;
    const cause = this.closeCause;
    const x = this.cur;
    if (x) {
      this.cur = undefined;
      clearTimeout(x.timer);
      const err =
        x.failure ??
        new ExchangeError(
          x.reader.head
            ? `the server closed the connection in the middle of the response body` +
                (cause ? `: ${(cause as Error).message ?? String(cause)}` : '')
            : `the server closed the connection before answering` + (cause ? `: ${(cause as Error).message ?? String(cause)}` : ''),
          (cause as { code?: string } | undefined)?.code ?? 'ERR_CLOSED',
          true,
          { cause },
        );
      x.reject(err);
    }
    if (!this.unflushed.empty) {
      const lost = this.unflushed.snapshot();
      this.unflushed.clear();
      this.hooks.lost?.(this, lost, cause ?? x?.failure);
    } else {
      this.hooks.closed?.(this, cause);
    }
    const r = this.resolveClosed;
    this.closedPromise = undefined;
    this.resolveClosed = undefined;
    r?.();
  }
}
