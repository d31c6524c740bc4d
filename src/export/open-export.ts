/**
 * Builds the backend stack for a URL, like nbdkit loading a plugin and its filters:
 *   journal -> stats -> [readahead] -> [coalesce] -> [progress] -> [size limit] -> imageio | file | memory
 * Every failure here happens before anything listens, so the CLI can report one clear line.
 *
 * Start-up checks for imageio URLs, before and after the backend opens:
 *   - probeScheme(): an https URL on a plain-HTTP server (or the reverse) is a ConfigError
 *     naming the scheme to use, without the backend's retries;
 *   - the export size: a size larger than the transfer is refused (imageio would answer 416
 *     to every write past its end); a smaller one is served as a prefix.
 *
 * The caller owns the payload pool (its bound covers every buffer of the stack; give the NBD
 * server the same one) and may pass a data-loss sink; the journal is told of every loss the
 * backend reports either way, so the summary at exit knows of it without reading any log.
 */
import type { Backend } from '../core/backend';
import { PassthroughLayer } from '../core/backend';
import type { Logger } from '../core/log';
import type { PayloadPool } from '../core/payload-pool';
import { silentLogger } from '../core/log';
import { ConfigError } from '../core/errors';
import { parseSize, formatSize } from '../core/size';
import { MemoryBackend } from '../backends/memory-backend';
import { openFileBackend } from '../backends/file-backend';
import type { ImageioBackend } from '../backends/imageio';
import type { CoalesceLayer } from '../layers/coalesce/coalesce-layer';
import type { ReadaheadLayer } from '../layers/readahead-layer';
import { StatsLayer } from '../layers/stats-layer';
import { ProgressLayer, type ProgressSink } from '../layers/progress-layer';
import { FailureJournal } from '../layers/failure-journal';
import { DEFAULTS } from '../core/defaults';
import { probeScheme } from '../backends/imageio/start-probe';

export interface ExportStack {
  /** The top of the stack: what the NBD server serves. */
  top: Backend;
  /** Failed requests and reported data loss, for the one-line summary. */
  journal: FailureJournal;
  /** The payload pool the stack allocates from (the one given). */
  pool: PayloadPool;
  stats: StatsLayer;
  coalesce?: CoalesceLayer;
  readahead?: ReadaheadLayer;
  imageio?: ImageioBackend;
  /** Preferred NBD request size to advertise. */
  preferredBlockSize: number;
  /** What is served, for logs: "imageio transfer https://...", "file /x.raw", "memory disk". */
  describe: string;
}

/** What openExport() needs; only `url` is required, the rest default to EXPORT_DEFAULTS. */
export interface ExportOptions {
  /** memory:SIZE, file:///path, or an imageio transfer URL https://HOST:54322/images/TICKET (or http://). */
  url: string;
  /** Where every payload buffer of the stack comes from; the NBD server serving it must use the same. */
  pool: PayloadPool;
  /**
   * Told, besides the stack's journal, when the backend reports acknowledged writes as possibly
   * lost: `connection` names the imageio connection, `bytes` is how much.
   */
  onDataLoss?: (connection: string, bytes: number) => void;
  /** Export size; must not exceed the transfer's size (default: the size imageio reports). */
  size?: number;
  /** CA file to verify imageio's certificate. */
  cafile?: string;
  insecure?: boolean;
  unixSocket?: 'auto' | 'never';
  connections?: number;
  /** Coalesce writes into HTTP requests of this size; 0 turns coalescing off. */
  requestSize?: number;
  /** Read sequential reads ahead in requests of this size; 0 turns read-ahead off (default 8 MiB). */
  readahead?: number;
  maxBuffer?: number;
  coalesceIdleMs?: number;
  /** Preferred NBD block size to advertise (default 4 KiB for imageio, 4 MiB otherwise; 0: none). */
  preferredBlockSize?: number;
  connectTimeoutMs?: number;
  requestTimeoutMs?: number;
  /** Slowest body rate tolerated, bytes per second (default 1 MiB/s). */
  minRate?: number;
  retries?: number;
  keepAliveMs?: number;
  readonly?: boolean;
  /** Check the URL's scheme against the server before opening (default true). */
  probe?: boolean;
  /** Told when the server accepts a connection but does not answer for a while. */
  onWaiting?: (what: string) => void;
  /** Told of each range done, as the backend completed it (below coalescing: writes once imageio confirmed them). */
  progress?: ProgressSink;
}

const MiB = 2 ** 20;

/** The defaults openExport() applies (from the one table, src/core/defaults.ts). */
export const EXPORT_DEFAULTS = {
  insecure: DEFAULTS.insecure,
  unixSocket: DEFAULTS.unixSocket,
  connections: DEFAULTS.connections,
  requestSize: DEFAULTS.requestSize,
  readahead: DEFAULTS.readahead,
  maxBuffer: DEFAULTS.maxBuffer,
  coalesceIdleMs: DEFAULTS.coalesceIdleMs,
  connectTimeoutMs: DEFAULTS.connectTimeoutMs,
  requestTimeoutMs: DEFAULTS.requestTimeoutMs,
  minRate: DEFAULTS.minRate,
  retries: DEFAULTS.retries,
  keepAliveMs: DEFAULTS.keepAliveMs,
  readonly: DEFAULTS.readonly,
} as const satisfies Partial<Omit<ExportOptions, 'pool' | 'onDataLoss'>>;

/** Serves a prefix of a larger backend: --size below the transfer's size. */
class SizeLimit extends PassthroughLayer {
  constructor(
    inner: Backend,
    private readonly limit: number,
  ) {
    super(inner);
  }
  override size(): number {
    return this.limit;
  }
}

/**
 * Opens the export `opts.url` and the layers above it. Logs nothing unless given a logger:
 * every failure to open is thrown (ConfigError for what the user must change).
 */
export async function openExport(options: ExportOptions, logger: Logger = silentLogger()): Promise<ExportStack> {
  const opts = { ...EXPORT_DEFAULTS, ...stripUndefined(options), url: options.url };
  const { url } = opts;
  const { pool } = options;
  // The journal is built last, on top; the backend reports losses from the first write on.
  const top: { journal?: FailureJournal } = {};
  const onDataLoss = (connection: string, bytes: number) => {
    top.journal?.onDataLoss(connection, bytes);
    options.onDataLoss?.(connection, bytes);
  };
  let base: Backend;
  let imageio: ImageioBackend | undefined;
  let describe: string;
  if (url.startsWith('memory:')) {
    const size = parseSize(url.slice('memory:'.length), 'memory size');
    if (size === 0) throw new ConfigError('memory:SIZE needs a size above 0, e.g. memory:1G');
    base = new MemoryBackend(size, opts.readonly, pool);
    describe = 'memory disk';
  } else if (url.startsWith('file:')) {
    let path: string;
    try {
      const u = new URL(url);
      if (u.host !== '' && u.host !== 'localhost') throw new Error('host');
      path = decodeURIComponent(u.pathname);
    } catch {
      throw new ConfigError(`invalid file URL '${url}': use file:///absolute/path`);
    }
    base = await openFileBackend(path, { readonly: opts.readonly, pool });
    describe = `file ${path}`;
  } else {
    let parsed: URL | undefined;
    try {
      parsed = new URL(url);
    } catch {
      /* the backend names the problem */
    }
    if (opts.probe !== false && parsed && (parsed.protocol === 'http:' || parsed.protocol === 'https:')) {
      await probeScheme(parsed, { connectTimeoutMs: opts.connectTimeoutMs, onWaiting: opts.onWaiting });
    }
    // The HTTP code loads only for imageio URLs: start-up time counts in every copy.
    const { openImageioBackend } = require('../backends/imageio') as typeof import('../backends/imageio');
    const backendOptions = {
      url,
      connections: opts.connections,
      cafile: opts.cafile,
      insecure: opts.insecure,
      unixSocket: opts.unixSocket,
      readonly: opts.readonly,
      connectTimeoutMs: opts.connectTimeoutMs,
      requestTimeoutMs: opts.requestTimeoutMs,
      minRate: opts.minRate,
      retries: opts.retries,
      keepAliveIdleMs: opts.keepAliveMs,
      pool,
      onDataLoss,
      logger,
    };
    // The size imageio reports is the limit: open without --size to learn it, then compare.
    try {
      imageio = await openImageioBackend(backendOptions);
    } catch (err) {
      // A server that reports no size at all can still be used with an explicit size.
      if (!(err instanceof ConfigError) || opts.size === undefined) throw err;
      imageio = await openImageioBackend({ ...backendOptions, size: opts.size });
    }
    base = imageio;
    describe = `imageio transfer ${url}`;
  }

  if (opts.size !== undefined && opts.size !== base.size()) {
    if (opts.size > base.size()) {
      await base.close().catch(() => undefined);
      throw new ConfigError(
        `--size ${formatSize(opts.size)} is larger than the ${imageio ? 'transfer' : 'disk'} (${formatSize(base.size())}): ` +
          `writes past its end would fail; leave --size out or make it at most ${base.size()}`,
      );
    }
    base = new SizeLimit(base, opts.size);
  }
  if (options.progress) base = new ProgressLayer(base, options.progress);

  let coalesce: CoalesceLayer | undefined;
  let inner = base;
  if (imageio && opts.requestSize > 0 && !opts.readonly && base.capabilities().canWrite) {
    const { CoalesceLayer } = require('../layers/coalesce/coalesce-layer') as typeof import('../layers/coalesce/coalesce-layer');
    coalesce = new CoalesceLayer(base, {
      requestSize: opts.requestSize,
      maxBufferedBytes: opts.maxBuffer,
      maxInFlight: imageio.httpStats().poolSize,
      idleMs: opts.coalesceIdleMs,
      pool,
      logger,
    });
    inner = coalesce;
  }
  let readahead: ReadaheadLayer | undefined;
  if (imageio && opts.readahead > 0) {
    // Above every layer that writes, so that writes through it drop the windows they overlap.
    const { ReadaheadLayer } = require('../layers/readahead-layer') as typeof import('../layers/readahead-layer');
    readahead = new ReadaheadLayer(inner, { windowSize: opts.readahead, maxWindows: 4, pool });
    inner = readahead;
  }
  const stats = new StatsLayer(inner);
  const journal = (top.journal = new FailureJournal(stats));
  // imageio: 4 KiB, so that clients keep their own request sizes and detect zeroes finely
  // (with 8 MiB nbdcopy sent 57% more data than the image held); coalescing and read-ahead
  // make the HTTP requests large.
  const preferredBlockSize = opts.preferredBlockSize ?? (imageio ? 4096 : 4 * MiB);
  return { top: journal, journal, pool, stats, coalesce, readahead, imageio, preferredBlockSize, describe };
}

function stripUndefined<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;
}
