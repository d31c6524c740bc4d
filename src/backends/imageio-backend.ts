/**
 * The imageio backend: an export backed by an oVirt imageio transfer URL
 * (`https://HOST:54322/images/TICKET`), spoken to over HTTP/1.1 with undici.
 *
 * What it promises, beyond the Backend interface (src/backend.ts):
 * - Negotiation: OPTIONS tells us the features (zero, flush, extents), max_readers/max_writers,
 *   the Allow header (no PUT: read-only) and the daemon's local unix socket, which we use when
 *   it is reachable from here (unixSocket 'auto'). Servers without OPTIONS (405, 204, no JSON)
 *   get a safe fallback: one connection, no zero, no flush, no extents.
 * - Pool: min(connections, max_readers[, max_writers]) keep-alive connections, one request on
 *   each at a time (imageio-pool.ts). flush() drains the writes in flight and then sends
 *   `PATCH flush` on every connection in parallel, because imageio flushes per connection.
 * - Data safety: every connection remembers the writes and zeroes it acknowledged since its
 *   last flush. If such a dirty connection is lost (socket closed, flush failed), those writes
 *   may be gone: we log the ranges, and that flush and every later flush (and close) reject
 *   with DataLossError. Losing a clean connection is harmless and silent.
 * - Retries (up to `retries`, short backoff) after a network error or a 5xx:
 *     GET, OPTIONS: always (reads change nothing).
 *     PUT, PATCH zero: when nothing else can have been lost with the connection: it was clean
 *       before the request, or it is still the same socket (a 5xx on a live connection). The
 *       request is then resent whole, which is idempotent.
 *     PATCH flush: only on a connection that was clean. Retrying a flush whose connection
 *       dropped would flush a *new* connection, not the old one; and after a failed fsync the
 *       kernel may have dropped dirty pages, so a second fsync proves nothing. A flush that fails
 *       on a dirty connection is therefore data loss, never retried.
 *   403 (ticket expired or cancelled) is final: TicketError. 416 on a write or zero is ENOSPC.
 *   Any other 4xx is a final EIO.
 * - Every failure becomes an HttpError with {method, op, offset, length, status, body,
 *   connection, code} and is logged once, as one line.
 * - Keep-alive: connections idle longer than keepAliveIdleMs get a `PATCH flush` (or OPTIONS
 *   without the flush feature), so imageio's 60 s idle timeout does not close them while the
 *   NBD client pauses. A failure there fails the next request; on a dirty connection it is
 *   data loss.
 * - close() flushes dirty connections, closes every HTTP connection (lingering ones delay
 *   oVirt's finalization) and rejects if data may have been lost.
 */
import { readFileSync } from 'node:fs';
import type { IncomingHttpHeaders } from 'node:http';
import { Client } from 'undici';
import type { Backend, BlockSize, Capabilities, Extent, WriteFlags, ZeroFlags } from '../backend';
import { EXTENT_ZERO } from '../backend';
import { NbdError } from '../../protocol/constants';
import {
  BackendError,
  ConfigError,
  DataLossError,
  HttpError,
  TicketError,
  describeError,
  type HttpFailure,
} from '../errors';
import type { Logger } from '../log';
import { silentLogger } from '../log';
import { ExtentMap, type ImageioExtent } from './imageio-extents';
import { ConnectionPool, ImageioConnection } from './imageio-pool';

export interface ImageioBackendOptions {
  /** Transfer URL: https://HOST:54322/images/TICKET or http://... */
  url: string;
  /** Wanted HTTP connections (default 4), capped by the server's max_readers/max_writers. */
  connections?: number;
  /** Image size; discovered from the server when absent. */
  size?: number;
  /** PEM file with the CA that signed imageio's certificate (default: the system CAs). */
  cafile?: string;
  /** Do not verify imageio's TLS certificate. */
  insecure?: boolean;
  /** 'auto' (default): use the daemon's local unix socket when reachable from here. */
  unixSocket?: 'auto' | 'never';
  readonly?: boolean;
  /** Default 10000. */
  connectTimeoutMs?: number;
  /** Headers and body timeout per request, default 60000. */
  requestTimeoutMs?: number;
  /** Retries of a retryable request after a network error or 5xx, default 3. */
  retries?: number;
  /** Keep-alive request on connections idle longer than this, default 30000 (imageio closes at 60 s). */
  keepAliveIdleMs?: number;
  logger?: Logger;
}

/** Counters for `--stats` and tests. Request keys: GET, PUT, PATCH zero, PATCH flush, OPTIONS, GET extents. */
export interface ImageioHttpStats {
  /** Per request kind: attempts sent, and the data bytes they covered (read, written, zeroed). */
  requests: Record<string, { count: number; bytes: number }>;
  retries: number;
  /** Sockets opened again after the first one of a pooled connection. */
  reconnects: number;
  /** Pooled connections that opened a socket at least once. */
  connectionsUsed: number;
  poolSize: number;
  /** HTTP body bytes sent and received. */
  bytesSent: number;
  bytesReceived: number;
}

/** What OPTIONS told us, after fallbacks. */
export interface ImageioServerInfo {
  features: { zero: boolean; flush: boolean; extents: boolean };
  /** PUT allowed by the Allow header (or no header at all). */
  writable: boolean;
  maxReaders?: number;
  maxWriters?: number;
  unixSocket?: string;
  /** The server answered OPTIONS without JSON (405, 204...): the old-server fallback applies. */
  legacy: boolean;
  /** 'unix' when requests go to the daemon's local socket. */
  transport: 'url' | 'unix';
}

const PREFERRED_BLOCK_SIZE = 8 << 20;
/** Zero emulation writes from one shared buffer of this size: bounded memory. */
const ZERO_CHUNK = 8 << 20;
/** Bodies kept from non-data responses (JSON, error text). */
const MAX_SMALL_BODY = 64 << 10;
/** Error bodies quoted in messages and logs. */
const ERROR_BODY_CHARS = 200;
/** Long enough that undici never closes an idle socket itself: imageio and our keeper decide. */
const CLIENT_KEEPALIVE_MS = 3600_000;
/** How long close() waits for connections to close before destroying them. */
const CLOSE_TIMEOUT_MS = 5000;
/** A PATCH zero may take a while on servers that write zeroes: one timeout per 4 GiB. */
const ZERO_BYTES_PER_TIMEOUT = 4 * 1024 ** 3;
/**
 * A flush may sync a whole upload's worth of data, and timing it out on a dirty connection
 * reports data loss: give it at least this long.
 */
const MIN_FLUSH_TIMEOUT_MS = 300_000;

const TLS_VERIFY_CODES = new Set([
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'UNABLE_TO_GET_ISSUER_CERT',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'SELF_SIGNED_CERT_IN_CHAIN',
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'CERT_HAS_EXPIRED',
  'CERT_NOT_YET_VALID',
  'CERT_UNTRUSTED',
  'ERR_TLS_CERT_ALTNAME_INVALID',
]);

type RequestKind = 'GET' | 'PUT' | 'PATCH zero' | 'PATCH flush' | 'OPTIONS' | 'GET extents';

interface HttpRequest {
  kind: RequestKind;
  method: 'GET' | 'PUT' | 'PATCH' | 'OPTIONS';
  /** NBD-side operation for messages: read, write, zero, flush, extents, options, keepalive, size. */
  op: string;
  path: string;
  headers?: Record<string, string>;
  body?: Buffer;
  offset?: number;
  length?: number;
  /** Statuses that mean success. */
  ok: readonly number[];
  /** GET data: collect exactly this many bytes of a 206 body into one preallocated Buffer. */
  readLength?: number;
  /** Acknowledged but not durable: remember it on the connection until the next flush. */
  unflushed?: boolean;
  headersTimeout?: number;
}

interface HttpResponse {
  status: number;
  headers: IncomingHttpHeaders;
  body: Buffer;
}

/** Where connections go: the transfer URL, or the daemon's local unix socket. */
interface Transport {
  kind: 'url' | 'unix';
  origin: string;
  socketPath?: string;
  tls?: { ca?: Buffer; rejectUnauthorized?: boolean };
}

interface ResolvedOptions {
  url: URL;
  path: string;
  connections: number;
  size?: number;
  tls?: { ca?: Buffer; rejectUnauthorized?: boolean };
  unixSocket: 'auto' | 'never';
  readonly: boolean;
  connectTimeoutMs: number;
  requestTimeoutMs: number;
  retries: number;
  keepAliveIdleMs: number;
  logger: Logger;
}

export async function openImageioBackend(opts: ImageioBackendOptions): Promise<ImageioBackend> {
  const backend = new ImageioBackend(resolveOptions(opts));
  try {
    await backend.negotiate();
  } catch (err) {
    await backend.close().catch(() => {});
    throw err;
  }
  return backend;
}

function resolveOptions(opts: ImageioBackendOptions): ResolvedOptions {
  let url: URL;
  try {
    url = new URL(opts.url);
  } catch {
    throw new ConfigError(`invalid imageio URL '${opts.url}'`);
  }
  if (url.protocol !== 'https:' && url.protocol !== 'http:') {
    throw new ConfigError(`imageio URL must be http:// or https://, not '${url.protocol}' (${opts.url})`);
  }
  if (!/^\/images\/[^/]+$/.test(url.pathname)) {
    throw new ConfigError(`imageio URL path must be /images/TICKET-ID, not '${url.pathname}'`);
  }
  const positive = (name: string, v: number | undefined, def: number, min = 1) => {
    const x = v ?? def;
    if (!Number.isSafeInteger(x) || x < min) throw new ConfigError(`${name} must be an integer >= ${min}, not ${v}`);
    return x;
  };
  let tls: ResolvedOptions['tls'];
  if (url.protocol === 'https:') {
    if (opts.insecure) tls = { rejectUnauthorized: false };
    else if (opts.cafile) {
      try {
        tls = { ca: readFileSync(opts.cafile) };
      } catch (err) {
        throw new ConfigError(`cannot read CA file ${opts.cafile}: ${describeError(err)}`);
      }
    }
  }
  if (opts.size !== undefined && (!Number.isSafeInteger(opts.size) || opts.size < 0)) {
    throw new ConfigError(`invalid size ${opts.size}`);
  }
  return {
    url,
    path: url.pathname,
    connections: positive('connections', opts.connections, 4),
    size: opts.size,
    tls,
    unixSocket: opts.unixSocket ?? 'auto',
    readonly: opts.readonly ?? false,
    connectTimeoutMs: positive('connectTimeoutMs', opts.connectTimeoutMs, 10_000),
    requestTimeoutMs: positive('requestTimeoutMs', opts.requestTimeoutMs, 60_000),
    retries: positive('retries', opts.retries, 3, 0),
    keepAliveIdleMs: positive('keepAliveIdleMs', opts.keepAliveIdleMs, 30_000),
    logger: opts.logger ?? silentLogger(),
  };
}

export class ImageioBackend implements Backend {
  readonly name = 'imageio';

  private readonly log: Logger;
  private readonly debug: boolean;
  private transport: Transport;
  private conns: ImageioConnection[] = [];
  private pool: ConnectionPool;
  private info: ImageioServerInfo = {
    features: { zero: false, flush: false, extents: false },
    writable: false,
    legacy: true,
    transport: 'url',
  };
  private imageSize = -1;
  private caps!: Capabilities;

  /** Sticky: set when written data may have been lost; every later flush and close rejects with it. */
  private dataLoss: DataLossError | null = null;
  /** A keep-alive failure, reported by the next request. */
  private keeperError: Error | null = null;
  private keeper: NodeJS.Timeout | null = null;
  private readonly keeping = new Set<ImageioConnection>();
  /** Writes and zeroes in progress, which a flush waits for. */
  private readonly inflight = new Set<Promise<unknown>>();
  private closing = false;
  private closePromise: Promise<void> | null = null;

  private extentMap: ExtentMap | null = null;
  private extentLoad: Promise<ExtentMap> | null = null;
  /** Our writes and zeroes that finished while extents were being fetched, applied afterwards. */
  private extentLog: Array<[number, number, number]> | null = null;

  private zeroBuffer: Buffer | null = null;

  private readonly stats: ImageioHttpStats = {
    requests: {},
    retries: 0,
    reconnects: 0,
    connectionsUsed: 0,
    poolSize: 0,
    bytesSent: 0,
    bytesReceived: 0,
  };

  /** Use openImageioBackend(), which negotiates before handing the backend out. */
  constructor(private readonly opts: ResolvedOptions) {
    this.log = opts.logger;
    this.debug = this.log.isLevelEnabled('debug');
    this.transport = {
      kind: 'url',
      origin: opts.url.origin,
      tls: opts.tls,
    };
    this.conns = [this.newConnection(0)];
    this.pool = new ConnectionPool(this.conns);
  }

  // ---- Negotiation -------------------------------------------------------------------------

  /** OPTIONS, transport choice, pool creation and size discovery. Called once by openImageioBackend. */
  async negotiate(): Promise<void> {
    const res = await this.requestOrConfigError({
      kind: 'OPTIONS',
      method: 'OPTIONS',
      op: 'options',
      path: this.opts.path,
      ok: [200, 204, 405],
    });
    this.info = parseOptions(res, this.log);
    if (this.info.unixSocket && this.opts.unixSocket === 'auto') await this.tryUnixSocket(this.info.unixSocket);

    const { maxReaders, maxWriters } = this.info;
    const writable = this.info.writable && !this.opts.readonly;
    let n = this.info.legacy ? 1 : Math.min(this.opts.connections, maxReaders ?? 1);
    if (writable) n = Math.min(n, maxWriters ?? 1);
    n = Math.max(1, n);
    for (let i = this.conns.length; i < n; i++) this.conns.push(this.newConnection(i));
    this.pool = new ConnectionPool(this.conns);
    this.stats.poolSize = n;

    const f = this.info.features;
    // A server without the flush feature (old imageio, OPTIONS 405/204) flushes every PUT
    // itself: imageio's PUT flush default is "y" precisely for those old clients, and we send
    // no ?flush= to them. A write is then durable when its response arrives, so FLUSH only has
    // to wait for the requests in flight, and FUA holds by itself. Advertising flush keeps
    // virt-v2v's `nbdcopy --flush` working against such servers.
    this.caps = {
      canWrite: writable,
      canFlush: writable,
      canFua: writable,
      canZero: writable,
      canFastZero: writable && f.zero,
      canTrim: false,
      canCache: false,
      canExtents: f.extents,
      // Our flush covers every connection, so it covers writes made through any NBD connection.
      canMultiConn: true,
    };
    this.imageSize = await this.discoverSize();
    this.log.info(
      {
        url: this.opts.url.href,
        transport: this.info.transport === 'unix' ? `unix:${JSON.stringify(this.transport.socketPath)}` : 'url',
        connections: n,
        features: Object.entries(f)
          .filter(([, v]) => v)
          .map(([k]) => k),
        legacy: this.info.legacy,
        writable,
        size: this.imageSize,
      },
      'imageio backend ready',
    );
    this.startKeeper();
  }

  /** What the server told us at negotiation (after fallbacks). */
  serverInfo(): ImageioServerInfo {
    return { ...this.info, features: { ...this.info.features } };
  }

  /** Requests made while opening: turn TLS verification failures into a clear ConfigError. */
  private async requestOrConfigError(req: HttpRequest): Promise<HttpResponse> {
    try {
      return await this.request(req);
    } catch (err) {
      const code = err instanceof HttpError ? err.failure.code : undefined;
      if (err instanceof HttpError && code && TLS_VERIFY_CODES.has(code)) {
        const e = new ConfigError(
          `cannot verify the TLS certificate of ${this.opts.url.origin}: ${describeError(err.cause ?? err)}; ` +
            `pass the CA that signed it (cafile) or turn verification off (insecure)`,
        );
        (e as { cause?: unknown }).cause = err;
        throw e;
      }
      throw err;
    }
  }

  /** Switches to the daemon's local socket if it answers OPTIONS for our ticket from here. */
  private async tryUnixSocket(socketPath: string): Promise<void> {
    const shown = JSON.stringify(socketPath);
    const client = new Client('http://localhost', {
      socketPath,
      pipelining: 1,
      connect: { timeout: Math.min(this.opts.connectTimeoutMs, 2000) },
      headersTimeout: Math.min(this.opts.requestTimeoutMs, 5000),
      bodyTimeout: Math.min(this.opts.requestTimeoutMs, 5000),
    });
    try {
      const { statusCode, body } = await client.request({ method: 'OPTIONS', path: this.opts.path });
      await body.dump();
      if (statusCode !== 200) {
        this.log.debug({ socket: shown, status: statusCode }, 'imageio unix socket refused the ticket; using the URL');
        return;
      }
    } catch (err) {
      this.log.debug({ socket: shown, err: describeError(err) }, 'imageio unix socket not reachable; using the URL');
      return;
    } finally {
      await client.close().catch(() => client.destroy());
    }
    // Connection 0 was opened on the URL for OPTIONS: replace it.
    const old = this.conns[0];
    this.transport = { kind: 'unix', origin: 'http://localhost', socketPath };
    this.info.transport = 'unix';
    this.conns[0] = this.newConnection(0);
    await closeClient(old.client);
    // The negotiation connection is not part of the pool: count only pooled connections.
    if (old.everConnected) this.stats.connectionsUsed--;
    this.log.debug({ socket: shown }, 'using the imageio unix socket');
  }

  private async discoverSize(): Promise<number> {
    if (this.opts.size !== undefined) return this.opts.size;
    if (this.info.features.extents) {
      const list = await this.fetchExtents('size');
      const size = ExtentMap.endOf(list);
      this.installExtents(size, list);
      return size;
    }
    const res = await this.request({
      kind: 'GET',
      method: 'GET',
      op: 'size',
      path: this.opts.path,
      headers: { range: 'bytes=0-0' },
      offset: 0,
      length: 1,
      ok: [206],
      readLength: 1,
    });
    const m = /\/(\d+)\s*$/.exec(String(res.headers['content-range'] ?? ''));
    if (!m) {
      throw new ConfigError(
        `cannot find the image size: the server sent no extents and no Content-Range total; pass the size explicitly`,
      );
    }
    return Number(m[1]);
  }

  // ---- Backend interface -------------------------------------------------------------------

  size(): number {
    return this.imageSize;
  }

  capabilities(): Capabilities {
    return { ...this.caps };
  }

  blockSize(): Partial<BlockSize> {
    return { minimum: 1, preferred: PREFERRED_BLOCK_SIZE };
  }

  async pread(offset: number, length: number): Promise<Buffer> {
    this.checkUsable();
    if (length === 0) return Buffer.alloc(0);
    const res = await this.request({
      kind: 'GET',
      method: 'GET',
      op: 'read',
      path: this.opts.path,
      headers: { range: `bytes=${offset}-${offset + length - 1}` },
      offset,
      length,
      ok: [206],
      readLength: length,
    });
    return res.body;
  }

  pwrite(data: Buffer, offset: number, flags?: WriteFlags): Promise<void> {
    return this.track(async () => {
      this.checkUsable();
      if (data.length === 0) return;
      try {
        await this.put(data, offset, flags?.fua ?? false, 'write');
      } finally {
        this.noteExtent(offset, data.length, 0);
      }
    });
  }

  zero(offset: number, length: number, flags?: ZeroFlags): Promise<void> {
    return this.track(async () => {
      this.checkUsable();
      if (flags?.fastZero && !this.info.features.zero) {
        throw new BackendError(NbdError.ENOTSUP, 'fast zero is not supported: imageio has no zero feature');
      }
      if (length === 0) return;
      const fua = flags?.fua ?? false;
      let ok = false;
      try {
        if (this.info.features.zero) {
          const body = Buffer.from(JSON.stringify({ op: 'zero', offset, size: length, flush: fua }));
          await this.request({
            kind: 'PATCH zero',
            method: 'PATCH',
            op: 'zero',
            path: this.opts.path,
            headers: { 'content-type': 'application/json' },
            body,
            offset,
            length,
            ok: [200, 204],
            unflushed: !fua,
            headersTimeout: this.opts.requestTimeoutMs * Math.max(1, Math.ceil(length / ZERO_BYTES_PER_TIMEOUT)),
          });
        } else {
          await this.emulateZero(offset, length, fua);
        }
        ok = true;
      } finally {
        // A failed zero leaves the range unknown: data is the safe answer.
        this.noteExtent(offset, length, ok ? EXTENT_ZERO : 0);
      }
    });
  }

  async flush(): Promise<void> {
    this.checkUsable();
    if (this.dataLoss) throw this.dataLoss;
    // Everything in flight now finishes (or fails) before the per-connection flushes go out.
    await Promise.allSettled([...this.inflight]);
    // Without the flush feature every PUT was flushed by the server (see negotiate()).
    if (!this.info.features.flush) return;
    const results = await Promise.allSettled(
      this.conns.map((conn) => (conn.connected || !conn.unflushed.empty ? this.flushConnection(conn, 'flush') : null)),
    );
    if (this.dataLoss) throw this.dataLoss;
    for (const r of results) if (r.status === 'rejected') throw r.reason;
  }

  async extents(offset: number, length: number): Promise<Extent[]> {
    this.checkUsable();
    if (!this.info.features.extents) return [{ offset, length, flags: 0 }];
    let map = this.extentMap;
    if (!map) {
      try {
        map = await this.loadExtents();
      } catch (err) {
        if (err instanceof TicketError) throw err;
        // Reporting data is always correct; try again on the next call.
        this.log.warn({ err: describeError(err) }, 'imageio extents failed; reporting data');
        return [{ offset, length, flags: 0 }];
      }
    }
    return map.query(offset, length);
  }

  async close(): Promise<void> {
    if (!this.closePromise) this.closePromise = this.doClose();
    return this.closePromise;
  }

  /** HTTP counters: requests by kind, retries, reconnects, connections, bytes. */
  httpStats(): ImageioHttpStats {
    const requests: ImageioHttpStats['requests'] = {};
    for (const [k, v] of Object.entries(this.stats.requests)) requests[k] = { ...v };
    return { ...this.stats, requests };
  }

  // ---- Operations --------------------------------------------------------------------------

  private put(data: Buffer, offset: number, fua: boolean, op: string): Promise<HttpResponse> {
    // Without the flush feature there is no way to flush later: let the server flush each PUT
    // (its default), and do not track unflushed writes we could never clean.
    const query = this.info.features.flush ? (fua ? '?flush=y' : '?flush=n') : '';
    return this.request({
      kind: 'PUT',
      method: 'PUT',
      op,
      path: this.opts.path + query,
      headers: {
        'content-type': 'application/octet-stream',
        'content-range': `bytes ${offset}-${offset + data.length - 1}/*`,
      },
      body: data,
      offset,
      length: data.length,
      ok: [200, 204],
      unflushed: this.info.features.flush && !fua,
    });
  }

  /** Zero without the zero feature: PUTs from one shared zero buffer, as many at once as connections. */
  private async emulateZero(offset: number, length: number, fua: boolean): Promise<void> {
    const chunk = Math.min(ZERO_CHUNK, length);
    if (!this.zeroBuffer || this.zeroBuffer.length < chunk) this.zeroBuffer = Buffer.alloc(chunk);
    const zeroes = this.zeroBuffer;
    const end = offset + length;
    let next = offset;
    let failed: unknown = null;
    const worker = async () => {
      while (next < end && !failed) {
        const off = next;
        const n = Math.min(ZERO_CHUNK, end - off);
        next += n;
        try {
          await this.put(zeroes.subarray(0, n), off, fua, 'zero');
        } catch (err) {
          failed ??= err;
        }
      }
    };
    await Promise.all(Array.from({ length: Math.min(this.pool.size, Math.ceil(length / ZERO_CHUNK)) }, worker));
    if (failed) throw failed;
  }

  /** PATCH flush on one connection. A failure on a dirty connection is data loss (see header). */
  private async flushConnection(conn: ImageioConnection, op: string): Promise<void> {
    await this.request(
      {
        kind: 'PATCH flush',
        method: 'PATCH',
        op,
        path: this.opts.path,
        headers: { 'content-type': 'application/json' },
        body: Buffer.from('{"op":"flush"}'),
        ok: [200, 204],
        // The keeper's flush only has the idle connection's recent writes to sync.
        headersTimeout: op === 'keepalive' ? undefined : Math.max(this.opts.requestTimeoutMs, MIN_FLUSH_TIMEOUT_MS),
      },
      conn,
    );
  }

  private track<T>(fn: () => Promise<T>): Promise<T> {
    const p = fn();
    this.inflight.add(p);
    const done = () => this.inflight.delete(p);
    p.then(done, done);
    return p;
  }

  private checkUsable(): void {
    if (this.closing) throw new BackendError(NbdError.ESHUTDOWN, 'imageio backend is closed');
    const e = this.keeperError;
    if (e) {
      this.keeperError = null;
      throw e;
    }
  }

  // ---- Extents -----------------------------------------------------------------------------

  private async fetchExtents(op: string): Promise<ImageioExtent[]> {
    const res = await this.request({
      kind: 'GET extents',
      method: 'GET',
      op,
      path: `${this.opts.path}/extents?context=zero`,
      ok: [200],
    });
    try {
      return ExtentMap.parse(JSON.parse(res.body.toString('utf8')));
    } catch (err) {
      throw new HttpError(
        { method: 'GET', op, status: res.status, body: res.body.toString('utf8', 0, ERROR_BODY_CHARS) },
        `GET extents failed: bad answer: ${describeError(err)}`,
      );
    }
  }

  private loadExtents(): Promise<ExtentMap> {
    if (!this.extentLoad) {
      this.extentLog = [];
      this.extentLoad = this.fetchExtents('extents').then(
        (list) => this.installExtents(this.imageSize, list),
        (err) => {
          this.extentLoad = null;
          this.extentLog = null;
          throw err;
        },
      );
    }
    return this.extentLoad;
  }

  private installExtents(size: number, list: ImageioExtent[]): ExtentMap {
    const map = new ExtentMap(size, list);
    // Our writes that finished while the request was out may or may not be in the answer:
    // apply them again, they are newer.
    for (const [o, l, f] of this.extentLog ?? []) map.set(o, l, f);
    this.extentLog = null;
    this.extentMap = map;
    return map;
  }

  private noteExtent(offset: number, length: number, flags: number): void {
    if (this.extentMap) this.extentMap.set(offset, length, flags);
    else if (this.extentLog) this.extentLog.push([offset, length, flags]);
  }

  // ---- Requests ----------------------------------------------------------------------------

  /**
   * Sends one request on a pooled connection (or on `target`), with the retry policy from the
   * header comment. Resolves with a success status; rejects with an HttpError (logged), a
   * TicketError, or a DataLossError when a flush on a dirty connection failed.
   */
  private async request(req: HttpRequest, target?: ImageioConnection): Promise<HttpResponse> {
    for (let attempt = 0; ; attempt++) {
      if (this.closePromise && !this.closing && target === undefined && req.kind !== 'PATCH flush') {
        // close() is flushing: new data requests are refused.
        throw new BackendError(NbdError.ESHUTDOWN, 'imageio backend is closing');
      }
      const conn = target ? await this.pool.acquireThis(target) : await this.pool.acquire();
      const wasClean = conn.unflushed.empty;
      const generation = conn.generation;
      const started = performance.now();
      let res: HttpResponse | undefined;
      let cause: unknown;
      try {
        res = await this.exchange(conn, req);
      } catch (err) {
        cause = err;
      }
      const lost = conn.generation !== generation;
      const success = res !== undefined && req.ok.includes(res.status);
      if (success) {
        if (req.unflushed) {
          // Acknowledged on a socket that is already gone: the disconnect handler could not know.
          if (lost) this.recordLoss(conn, undefined, `${req.op} ${req.offset}-${req.offset! + req.length! - 1}`);
          else conn.unflushed.add(req.offset!, req.length!);
        } else if (req.kind === 'PATCH flush' && !lost) {
          conn.unflushed.clear();
        }
      }
      this.pool.release(conn);
      if (this.debug) {
        this.log.debug(
          {
            method: req.method,
            op: req.op,
            offset: req.offset,
            length: req.length,
            connection: conn.id,
            status: res?.status,
            ms: Math.round((performance.now() - started) * 10) / 10,
          },
          'imageio request',
        );
      }
      if (success) return res!;

      const failure: HttpFailure = {
        method: req.method,
        op: req.op,
        offset: req.offset,
        length: req.length,
        status: res?.status,
        body: res ? res.body.toString('utf8', 0, ERROR_BODY_CHARS).trim() : undefined,
        connection: conn.id,
        code: cause ? errorCode(cause) : undefined,
      };
      if (req.kind === 'PATCH flush' && !wasClean) {
        // The data this connection acknowledged may not be durable, and no retry can prove
        // otherwise (see the header comment). Lost sockets are recorded by the disconnect handler.
        const err = this.fail(req, failure, cause, attempt);
        this.recordLoss(conn, err);
        throw this.dataLoss ?? err;
      }
      if (attempt < this.opts.retries && this.retryable(req, failure, wasClean, lost)) {
        this.stats.retries++;
        const delay = Math.min(100 * 2 ** attempt, 2000);
        this.log.warn(
          { ...failure, attempt: attempt + 1, retries: this.opts.retries, delayMs: delay },
          `${this.describeRequest(req)} failed (${this.describeFailure(failure, cause)}); retrying`,
        );
        await sleep(delay);
        continue;
      }
      throw this.fail(req, failure, cause, attempt);
    }
  }

  private retryable(req: HttpRequest, f: HttpFailure, wasClean: boolean, lost: boolean): boolean {
    if (this.closing) return false;
    if (f.status !== undefined && f.status < 500) return false;
    if (f.code && TLS_VERIFY_CODES.has(f.code)) return false;
    if (f.code === 'ERR_BAD_RESPONSE') return false;
    switch (req.kind) {
      case 'GET':
      case 'GET extents':
      case 'OPTIONS':
        return true;
      case 'PUT':
      case 'PATCH zero':
        return wasClean || !lost;
      case 'PATCH flush':
        return wasClean;
    }
  }

  /** Builds the final error for a failed request and logs it once. */
  private fail(req: HttpRequest, failure: HttpFailure, cause: unknown, retries: number): HttpError {
    const suffix = retries > 0 ? ` (after ${retries} ${retries === 1 ? 'retry' : 'retries'})` : '';
    let err: HttpError;
    if (failure.status === 403) {
      err = new TicketError(
        failure,
        `${this.describeRequest(req)} failed: HTTP 403: the imageio ticket expired, was cancelled or does not exist: ${failure.body ?? ''}`,
      );
    } else {
      const errno =
        failure.status === 416 && (req.kind === 'PUT' || req.kind === 'PATCH zero') ? NbdError.ENOSPC : NbdError.EIO;
      err = new HttpError(failure, `${this.describeRequest(req)} failed: ${this.describeFailure(failure, cause)}${suffix}`, {
        cause,
        errno,
      });
    }
    this.log.error({ ...failure, retries }, err.message);
    return err;
  }

  private describeRequest(req: HttpRequest): string {
    const name = req.kind === 'GET extents' ? 'GET extents' : req.kind;
    return req.offset !== undefined ? `${name} offset=${req.offset} length=${req.length}` : name;
  }

  private describeFailure(f: HttpFailure, cause: unknown): string {
    if (f.status !== undefined && !cause) return `HTTP ${f.status} ${f.body ?? ''}`.trim();
    return `connection ${f.connection}: ${describeError(cause)}`;
  }

  /** One HTTP exchange on a connection we hold. Rejects only when no usable response arrived. */
  private async exchange(conn: ImageioConnection, req: HttpRequest): Promise<HttpResponse> {
    const kindStats = (this.stats.requests[req.kind] ??= { count: 0, bytes: 0 });
    kindStats.count++;
    if (req.kind === 'PUT' || req.kind === 'PATCH zero' || (req.kind === 'GET' && req.op !== 'size')) {
      kindStats.bytes += req.length ?? 0;
    }
    if (req.body) this.stats.bytesSent += req.body.length;
    const timeout = req.headersTimeout ?? this.opts.requestTimeoutMs;
    const { statusCode, headers, body } = await conn.client.request({
      method: req.method,
      path: req.path,
      headers: req.headers,
      body: req.body,
      headersTimeout: timeout,
      bodyTimeout: this.opts.requestTimeoutMs,
    });
    if (req.readLength !== undefined && statusCode === 206) {
      const want = req.readLength;
      const declared = Number(headers['content-length']);
      if (headers['content-length'] !== undefined && declared !== want) {
        body.destroy();
        throw badResponse(`expected ${want} bytes, server announced ${declared}`);
      }
      // One buffer of the exact size; each chunk is copied into place once.
      const buf = Buffer.allocUnsafe(want);
      let pos = 0;
      for await (const chunk of body as AsyncIterable<Buffer>) {
        if (pos + chunk.length > want) {
          body.destroy();
          throw badResponse(`server sent more than the ${want} bytes asked for`);
        }
        chunk.copy(buf, pos);
        pos += chunk.length;
      }
      this.stats.bytesReceived += pos;
      if (pos !== want) throw badResponse(`short read: ${pos} of ${want} bytes`);
      return { status: statusCode, headers, body: buf };
    }
    // Small bodies: JSON answers and one-line error texts. A huge unexpected body (say a 200
    // with the whole image) is not read: closing the socket is cheaper.
    const declared = Number(headers['content-length'] ?? 0);
    if (declared > (req.kind === 'GET extents' ? 256 << 20 : MAX_SMALL_BODY)) {
      body.destroy();
      return { status: statusCode, headers, body: Buffer.from(`(${declared} bytes not read)`) };
    }
    const chunks: Buffer[] = [];
    let total = 0;
    for await (const chunk of body as AsyncIterable<Buffer>) {
      chunks.push(chunk);
      total += chunk.length;
    }
    this.stats.bytesReceived += total;
    return { status: statusCode, headers, body: Buffer.concat(chunks, total) };
  }

  // ---- Connections -------------------------------------------------------------------------

  private newConnection(id: number): ImageioConnection {
    const t = this.transport;
    const client = new Client(t.origin, {
      socketPath: t.socketPath,
      pipelining: 1,
      connect: { timeout: this.opts.connectTimeoutMs, ...(t.tls ?? {}) },
      headersTimeout: this.opts.requestTimeoutMs,
      bodyTimeout: this.opts.requestTimeoutMs,
      keepAliveTimeout: CLIENT_KEEPALIVE_MS,
      keepAliveMaxTimeout: CLIENT_KEEPALIVE_MS,
    });
    const conn = new ImageioConnection(id, client);
    client.on('connect', () => {
      conn.connected = true;
      if (conn.everConnected) {
        this.stats.reconnects++;
        this.log.debug({ connection: id }, 'imageio connection reopened');
      } else {
        conn.everConnected = true;
        this.stats.connectionsUsed++;
      }
    });
    client.on('disconnect', (_origin, _targets, err) => {
      conn.connected = false;
      conn.generation++;
      if (!conn.unflushed.empty) this.recordLoss(conn, err);
      else if (!this.closing) this.log.debug({ connection: id, reason: describeError(err) }, 'imageio connection closed (clean)');
    });
    client.on('connectionError', (_origin, _targets, err) => {
      this.log.debug({ connection: id, err: describeError(err) }, 'imageio connection failed');
    });
    return conn;
  }

  /**
   * The unflushed writes of `conn` may be gone: log them, make data loss sticky, and forget
   * them (the connection starts clean on its next socket). `extra` names a write acknowledged
   * on a socket that was already closed.
   */
  private recordLoss(conn: ImageioConnection, cause?: unknown, extra?: string): void {
    if (conn.unflushed.empty && !extra) return;
    const what = [conn.unflushed.empty ? '' : conn.unflushed.describe(), extra ?? ''].filter(Boolean).join('; ');
    const msg =
      `imageio connection ${conn.id} was lost or failed to flush with unflushed writes (${what}); ` +
      `that data may not have reached the disk`;
    this.log.error(
      {
        connection: conn.id,
        first: conn.unflushed.empty ? undefined : conn.unflushed.first,
        end: conn.unflushed.empty ? undefined : conn.unflushed.end,
        requests: conn.unflushed.count,
        bytes: conn.unflushed.bytes,
        cause: cause ? describeError(cause) : undefined,
      },
      msg,
    );
    conn.unflushed.clear();
    this.dataLoss ??= new DataLossError(msg, { cause });
  }

  // ---- Keep-alive --------------------------------------------------------------------------

  private startKeeper(): void {
    const period = Math.max(50, Math.min(this.opts.keepAliveIdleMs / 2, 15_000));
    this.keeper = setInterval(() => this.keepIdleConnections(), period);
    this.keeper.unref();
  }

  private keepIdleConnections(): void {
    const now = Date.now();
    for (const conn of this.conns) {
      if (this.closing || this.closePromise) return;
      if (!conn.connected || conn.busy || this.keeping.has(conn)) continue;
      if (now - conn.lastUsed < this.opts.keepAliveIdleMs) continue;
      this.keeping.add(conn);
      this.keepAlive(conn).finally(() => this.keeping.delete(conn));
    }
  }

  private async keepAlive(conn: ImageioConnection): Promise<void> {
    try {
      if (this.info.features.flush) {
        await this.flushConnection(conn, 'keepalive');
      } else {
        await this.request({ kind: 'OPTIONS', method: 'OPTIONS', op: 'keepalive', path: this.opts.path, ok: [200, 204, 405] }, conn);
      }
    } catch (err) {
      if (this.closing) return;
      // Data loss is sticky already; anything else is reported by the next request.
      if (!(err instanceof DataLossError)) this.keeperError = err as Error;
    }
  }

  // ---- Close -------------------------------------------------------------------------------

  private async doClose(): Promise<void> {
    if (this.keeper) clearInterval(this.keeper);
    this.keeper = null;
    let flushError: unknown = null;
    if (this.info.features.flush && !this.dataLoss && this.conns.some((c) => !c.unflushed.empty)) {
      // Closing a dirty connection may lose its writes: flush first.
      try {
        await Promise.allSettled([...this.inflight]);
        await Promise.all(this.conns.filter((c) => !c.unflushed.empty).map((c) => this.flushConnection(c, 'close')));
      } catch (err) {
        flushError = err;
      }
    }
    this.closing = true;
    this.pool.close();
    await Promise.all(this.conns.map((c) => closeClient(c.client)));
    if (this.dataLoss) throw this.dataLoss;
    if (flushError) throw flushError;
  }
}

/** Closes a Client gracefully, destroying it if that takes longer than CLOSE_TIMEOUT_MS. */
async function closeClient(client: Client): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<'timeout'>((resolve) => {
    timer = setTimeout(() => resolve('timeout'), CLOSE_TIMEOUT_MS);
  });
  try {
    const r = await Promise.race([client.close().then(() => 'closed' as const), timeout]);
    if (r === 'timeout') await client.destroy();
  } catch {
    await client.destroy().catch(() => {});
  } finally {
    clearTimeout(timer);
  }
}

/** Interprets OPTIONS; anything but a 200 with a JSON object is an old server: safe fallback. */
function parseOptions(res: HttpResponse, log: Logger): ImageioServerInfo {
  const allow = res.headers['allow'];
  const allowList = allow === undefined ? undefined : String(allow).toUpperCase().split(/\s*,\s*/);
  const writable = allowList === undefined || res.status !== 200 || allowList.includes('PUT');
  let json: Record<string, unknown> | undefined;
  if (res.status === 200 && res.body.length > 0) {
    try {
      const parsed = JSON.parse(res.body.toString('utf8'));
      if (parsed && typeof parsed === 'object' && !Array.isArray(parsed)) json = parsed as Record<string, unknown>;
    } catch {
      /* not JSON: old server */
    }
  }
  if (!json) {
    log.warn({ status: res.status }, 'imageio OPTIONS gave no features (old server): one connection, no zero, no flush');
    return { features: { zero: false, flush: false, extents: false }, writable, legacy: true, transport: 'url' };
  }
  const features = Array.isArray(json.features) ? json.features.map(String) : [];
  const int = (v: unknown) => (Number.isSafeInteger(v) && (v as number) > 0 ? (v as number) : undefined);
  return {
    features: {
      zero: features.includes('zero'),
      flush: features.includes('flush'),
      extents: features.includes('extents'),
    },
    writable,
    maxReaders: int(json.max_readers),
    maxWriters: int(json.max_writers),
    unixSocket: typeof json.unix_socket === 'string' && json.unix_socket !== '' ? json.unix_socket : undefined,
    legacy: false,
    transport: 'url',
  };
}

function badResponse(message: string): Error {
  return Object.assign(new Error(message), { code: 'ERR_BAD_RESPONSE' });
}

function errorCode(err: unknown): string | undefined {
  for (let e = err, i = 0; e && i < 4; i++) {
    const code = (e as { code?: unknown }).code;
    if (typeof code === 'string') return code;
    e = (e as { cause?: unknown }).cause;
  }
  return undefined;
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
