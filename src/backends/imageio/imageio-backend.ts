/**
 * The imageio backend: an export backed by an oVirt imageio transfer URL
 * (`https://HOST:54322/images/TICKET`), in the shape of nbdkit's curl plugin: this file holds
 * the callbacks; the connections (http-connection.ts), the pool (pool.ts), the request and
 * retry policy (requests.ts, retry-policy.ts), opening (negotiate.ts), extents
 * (extent-cache.ts) and keep-alive (keep-alive.ts) live beside it.
 *
 * What it promises, beyond the Backend interface (src/core/backend.ts):
 * - Negotiation: OPTIONS tells the features (zero, flush, extents), max_readers/max_writers,
 *   the Allow header (no PUT: read-only) and the daemon's local unix socket, used when it is
 *   reachable from here (unixSocket 'auto'; abstract sockets too). Old servers (OPTIONS 405,
 *   204, no JSON) get a safe fallback: one connection, no zero, no flush, no extents. Sizes the
 *   server reports are checked; a given size larger than the transfer fails the start.
 * - Zero copy: pwritev sends the caller's buffers as one PUT body; pread reads the GET body
 *   straight into a pooled buffer.
 * - FLUSH: waits for the writes in flight, then sends `PATCH flush` on every connection that
 *   holds unflushed writes (imageio flushes per connection), and only on those.
 * - Data safety: see requests.ts (loss accounting) and retry-policy.ts (what may be repeated).
 *   Once data may have been lost, that flush, every later flush and close reject with a
 *   DataLossError.
 * - close() flushes connections with unflushed writes once, closes every HTTP connection
 *   (lingering ones delay oVirt's finalization) and rejects if data may have been lost.
 */
import type { Backend, BlockSize, Capabilities, Extent, WriteFlags, ZeroFlags } from '../../core/backend';
import { EXTENT_ZERO } from '../../core/backend';
import { releaseBuffer, releaseBuffers } from '../../core/payload-pool';
import { NbdError } from '../../nbd/codec/constants';
import { BackendError, ConfigError, TicketError, describeError } from '../../core/errors';
import type { Logger } from '../../core/log';
import { formatBytes } from '../../core/size';
import { ExtentCache } from './extent-cache';
import { ExtentMap } from './extent-map';
import type { HttpConnection } from './http/connection';
import { KeepAlive } from './keep-alive';
import {
  fetchExtents,
  parseOptions,
  probeUnixSocket,
  sizeFromRange,
  startError,
  unixEndpoint,
  urlEndpoint,
  type ImageioServerInfo,
} from './negotiate';
import { resolveOptions, type ImageioBackendOptions, type ResolvedOptions } from './options';
import { RequestRunner, type ImageioHttpStats } from './request-runner';

export type { ImageioBackendOptions } from './options';
export type { ImageioServerInfo } from './negotiate';
export type { ImageioHttpStats } from './request-runner';

/** Zero emulation writes from one shared buffer of this size: bounded memory. */
const ZERO_CHUNK = 8 << 20;
/** A PATCH zero may take a while on servers that write zeroes: one timeout per 4 GiB. */
const ZERO_BYTES_PER_TIMEOUT = 4 * 1024 ** 3;
/**
 * A flush may sync a whole upload's worth of data, and timing it out on a dirty connection
 * reports data loss: give it at least this long.
 */
const MIN_FLUSH_TIMEOUT_MS = 300_000;
const FLUSH_BODY = Buffer.from('{"op":"flush"}');
/** Zero ranges shorter than this inside a read are fetched rather than split around. */
const MIN_ZERO_GAP = 256 * 1024;

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

export class ImageioBackend implements Backend {
  readonly name = 'imageio';

  private readonly log: Logger;
  private readonly runner: RequestRunner;
  private info: ImageioServerInfo = {
    features: { zero: false, flush: false, extents: false },
    writable: false,
    legacy: true,
    transport: 'url',
  };
  private imageSize = -1;
  private caps!: Capabilities;
  private readonly extentCache: ExtentCache;
  private keeper: KeepAlive | null = null;
  /** Writes and zeroes in progress, which a flush waits for. */
  private readonly inflight = new Set<Promise<unknown>>();
  private closePromise: Promise<void> | null = null;
  private zeroBuffer: Buffer | null = null;

  /** Use openImageioBackend(), which negotiates before handing the backend out. */
  constructor(private readonly opts: ResolvedOptions) {
    this.log = opts.logger;
    this.runner = new RequestRunner(urlEndpoint(opts), this.log, opts.retries, opts.onDataLoss);
    this.extentCache = new ExtentCache(() => fetchExtents(this.runner, this.opts, 'extents'));
  }

  // ---- Negotiation -------------------------------------------------------------------------

  /** OPTIONS, transport choice, pool creation and size discovery. Called once by openImageioBackend. */
  async negotiate(): Promise<void> {
    const o = this.opts;
    await this.runner.setPool(urlEndpoint(o), 1);
    let res;
    try {
      res = await this.runner.run({
        kind: 'OPTIONS',
        method: 'OPTIONS',
        op: 'options',
        path: o.path,
        ok: [200, 204, 405],
        timeoutMs: o.requestTimeoutMs,
      });
    } catch (err) {
      throw startError(err, o);
    }
    this.info = parseOptions(res, this.log);
    let endpoint = urlEndpoint(o);
    if (this.info.unixSocket && o.unixSocket === 'auto' && (await probeUnixSocket(this.info.unixSocket, o, this.log))) {
      endpoint = unixEndpoint(this.info.unixSocket, o.connectTimeoutMs);
      this.info.transport = 'unix';
    }

    const { maxReaders, maxWriters } = this.info;
    const writable = this.info.writable && !o.readonly;
    let n = this.info.legacy ? 1 : Math.min(o.connections, maxReaders ?? 1);
    if (writable) n = Math.min(n, maxWriters ?? 1);
    n = Math.max(1, n);
    await this.runner.setPool(endpoint, n);

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
        url: o.url.href,
        transport: endpoint.display,
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
    this.keeper = new KeepAlive(
      this.runner,
      { idleMs: o.keepAliveIdleMs, flush: f.flush, path: o.path, timeoutMs: o.requestTimeoutMs },
      this.log,
    );
    this.keeper.start();
  }

  private async discoverSize(): Promise<number> {
    const given = this.opts.size;
    if (given === undefined) {
      if (this.info.features.extents) {
        const list = await fetchExtents(this.runner, this.opts, 'size');
        const size = ExtentMap.endOf(list);
        this.extentCache.install(size, list);
        return size;
      }
      return sizeFromRange(this.runner, this.opts);
    }
    // A size given on the command line must fit the transfer: imageio would refuse every
    // write past its end, and the copy would die late with a flood of errors.
    let actual: number | undefined;
    try {
      actual = await sizeFromRange(this.runner, this.opts);
    } catch (err) {
      if (err instanceof ConfigError || err instanceof TicketError) throw err;
      this.log.debug({ err: describeError(err) }, 'cannot check the given size against the transfer');
    }
    if (actual !== undefined && given > actual) {
      throw new ConfigError(
        `size ${formatBytes(given)} is larger than the transfer (${formatBytes(actual)}): pass a size of at most ${actual} bytes, or none`,
      );
    }
    return given;
  }

  /** What the server told us at negotiation (after fallbacks). */
  serverInfo(): ImageioServerInfo {
    return { ...this.info, features: { ...this.info.features } };
  }

  // ---- Backend interface -------------------------------------------------------------------

  size(): number {
    return this.imageSize;
  }

  capabilities(): Capabilities {
    return { ...this.caps };
  }

  blockSize(): Partial<BlockSize> {
    return { minimum: 1 };
  }

  async pread(offset: number, length: number): Promise<Buffer> {
    this.checkUsable();
    if (length === 0) return Buffer.alloc(0);
    const runs = await this.dataRuns(offset, length);
    const buf = await this.opts.pool.allocate(length);
    try {
      // Ranges imageio reports as zero are not fetched: clients read whole requests that
      // cover holes (nbdcopy reads 4 MiB chunks), and the bytes would all be zeroes.
      let at = 0;
      for (const [s, e] of runs) {
        buf.fill(0, at, s - offset);
        at = e - offset;
      }
      buf.fill(0, at, length);
      await Promise.all(runs.map(([s, e]) => this.get(s, e - s, buf.subarray(s - offset, e - offset))));
    } catch (err) {
      releaseBuffer(buf);
      throw err;
    }
    return buf;
  }

  private get(offset: number, length: number, into: Buffer): Promise<unknown> {
    return this.runner.run({
      kind: 'GET',
      method: 'GET',
      op: 'read',
      path: this.opts.path,
      headers: `Range: bytes=${offset}-${offset + length - 1}\r\n`,
      offset,
      length,
      ok: [206],
      into,
      timeoutMs: this.dataTimeout(length),
    });
  }

  /**
   * The parts of [offset, offset + length) to fetch, as [start, end) runs: all of it unless the
   * extent map says some of it reads as zeroes. Zero gaps shorter than MIN_ZERO_GAP are fetched
   * with their neighbours (one request rather than two).
   */
  private async dataRuns(offset: number, length: number): Promise<Array<[number, number]>> {
    const all: Array<[number, number]> = [[offset, offset + length]];
    if (!this.info.features.extents) return all;
    let extents: Extent[];
    try {
      extents = await this.extentCache.query(this.imageSize, offset, length);
    } catch {
      return all; // extents() says why when asked; a plain read is always right
    }
    const runs: Array<[number, number]> = [];
    for (const e of extents) {
      if (e.flags & EXTENT_ZERO) continue;
      const s = Math.max(e.offset, offset);
      const end = Math.min(e.offset + e.length, offset + length);
      if (s >= end) continue;
      const last = runs[runs.length - 1];
      if (last && s - last[1] < MIN_ZERO_GAP) last[1] = end;
      else runs.push([s, end]);
    }
    return runs;
  }

  pwrite(data: Buffer, offset: number, flags?: WriteFlags): Promise<void> {
    return this.pwritev([data], offset, flags);
  }

  pwritev(data: readonly Buffer[], offset: number, flags?: WriteFlags): Promise<void> {
    return this.track(async () => {
      let length = 0;
      for (const b of data) length += b.length;
      try {
        this.checkUsable();
        if (length === 0) return;
        await this.put(data, offset, length, flags?.fua ?? false, 'write');
      } finally {
        releaseBuffers(data);
        this.extentCache.note(offset, length, 0);
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
          await this.runner.run({
            kind: 'PATCH zero',
            method: 'PATCH',
            op: 'zero',
            path: this.opts.path,
            headers: 'Content-Type: application/json\r\n',
            body: [Buffer.from(JSON.stringify({ op: 'zero', offset, size: length, flush: fua }))],
            offset,
            length,
            ok: [200, 204],
            timeoutMs: this.opts.requestTimeoutMs * Math.max(1, Math.ceil(length / ZERO_BYTES_PER_TIMEOUT)),
            effect: fua ? undefined : { kind: 'unflushed', offset, length },
          });
        } else {
          await this.emulateZero(offset, length, fua);
        }
        ok = true;
      } finally {
        // A failed zero leaves the range unknown: data is the safe answer.
        this.extentCache.note(offset, length, ok ? EXTENT_ZERO : 0);
      }
    });
  }

  async flush(): Promise<void> {
    this.checkUsable();
    const loss = this.runner.dataLoss;
    if (loss) throw loss;
    // Everything in flight now finishes (or fails) before the per-connection flushes go out.
    await Promise.allSettled([...this.inflight]);
    await this.flushDirty('flush');
  }

  async extents(offset: number, length: number): Promise<Extent[]> {
    this.checkUsable();
    if (!this.info.features.extents) return [{ offset, length, flags: 0 }];
    try {
      return await this.extentCache.query(this.imageSize, offset, length);
    } catch (err) {
      if (err instanceof TicketError) throw err;
      // Reporting data is always correct; try again on the next call.
      this.log.warn({ err: describeError(err) }, 'imageio extents failed; reporting data');
      return [{ offset, length, flags: 0 }];
    }
  }

  close(): Promise<void> {
    this.closePromise ??= this.doClose();
    return this.closePromise;
  }

  /** HTTP counters: requests by kind, retries, reconnects, connections, bytes. */
  httpStats(): ImageioHttpStats {
    const s = this.runner.stats;
    const requests: ImageioHttpStats['requests'] = {};
    for (const [k, v] of Object.entries(s.requests)) requests[k] = { ...v };
    return { ...s, requests };
  }

  // ---- Operations --------------------------------------------------------------------------

  private dataTimeout(bytes: number): number {
    return this.opts.requestTimeoutMs + bytes / this.opts.minRatePerMs;
  }

  private put(data: readonly Buffer[], offset: number, length: number, fua: boolean, op: string): Promise<unknown> {
    // Without the flush feature there is no way to flush later: let the server flush each PUT
    // (its default), and do not track unflushed writes we could never clean.
    const flush = this.info.features.flush;
    return this.runner.run({
      kind: 'PUT',
      method: 'PUT',
      op,
      path: this.opts.path + (flush ? (fua ? '?flush=y' : '?flush=n') : ''),
      headers: `Content-Type: application/octet-stream\r\nContent-Range: bytes ${offset}-${offset + length - 1}/*\r\n`,
      body: data,
      offset,
      length,
      ok: [200, 204],
      timeoutMs: this.dataTimeout(length),
      effect: flush && !fua ? { kind: 'unflushed', offset, length } : undefined,
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
          await this.put([zeroes.subarray(0, n)], off, n, fua, 'zero');
        } catch (err) {
          failed ??= err;
        }
      }
    };
    await Promise.all(Array.from({ length: Math.min(this.runner.pool.size, Math.ceil(length / ZERO_CHUNK)) }, worker));
    if (failed) throw failed;
  }

  /** PATCH flush on every connection with unflushed writes, once each. */
  private async flushDirty(op: string): Promise<void> {
    if (!this.info.features.flush) {
      // Every PUT was flushed by the server (see negotiate()).
      if (this.runner.dataLoss) throw this.runner.dataLoss;
      return;
    }
    const dirty = this.runner.conns.filter((c) => !c.unflushed.empty);
    const results = await Promise.allSettled(dirty.map((c) => this.flushConnection(c, op)));
    if (this.runner.dataLoss) throw this.runner.dataLoss;
    for (const r of results) if (r.status === 'rejected') throw r.reason;
  }

  private async flushConnection(conn: HttpConnection, op: string): Promise<void> {
    await this.runner.run(
      {
        kind: 'PATCH flush',
        method: 'PATCH',
        op,
        path: this.opts.path,
        headers: 'Content-Type: application/json\r\n',
        body: [FLUSH_BODY],
        ok: [200, 204],
        timeoutMs: Math.max(this.opts.requestTimeoutMs, MIN_FLUSH_TIMEOUT_MS),
        effect: { kind: 'flushed' },
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
    if (this.runner.closing) throw new BackendError(NbdError.ESHUTDOWN, 'imageio backend is closed');
  }

  // ---- Close -------------------------------------------------------------------------------

  private async doClose(): Promise<void> {
    this.keeper?.stop();
    let flushError: unknown = null;
    await Promise.allSettled([...this.inflight]);
    if (!this.runner.dataLoss && this.runner.conns.some((c) => !c.unflushed.empty)) {
      // Closing a dirty connection may lose its writes: flush first.
      try {
        await this.flushDirty('close');
      } catch (err) {
        flushError = err;
      }
    }
    await this.runner.closeAll();
    if (this.runner.dataLoss) throw this.runner.dataLoss;
    if (flushError) throw flushError;
  }
}
