/**
 * Builds the backend stack for a URL, like nbdkit loading a plugin and its filters:
 *   stats -> [coalesce] -> imageio | file | memory
 * Every failure here happens before anything listens, so the CLI can report one clear line.
 */
import type { Backend } from './backend';
import type { RunConfig } from './config';
import type { Logger } from './log';
import { ConfigError } from './errors';
import { parseSize } from './size';
import { MemoryBackend } from './backends/memory-backend';
import { openFileBackend } from './backends/file-backend';
import type { ImageioBackend } from './backends/imageio-backend';
import type { CoalesceLayer } from './layers/coalesce-layer';
import { StatsLayer } from './layers/stats-layer';

export interface ExportStack {
  /** The top of the stack: what the NBD server serves. */
  top: StatsLayer;
  stats: StatsLayer;
  coalesce?: CoalesceLayer;
  imageio?: ImageioBackend;
  /** Preferred NBD request size to advertise. */
  preferredBlockSize: number;
  describe: string;
}

export type ExportOptions = Pick<
  RunConfig,
  | 'url'
  | 'size'
  | 'cafile'
  | 'insecure'
  | 'unixSocket'
  | 'connections'
  | 'requestSize'
  | 'maxBuffer'
  | 'coalesceIdleMs'
  | 'preferredBlockSize'
  | 'connectTimeoutMs'
  | 'requestTimeoutMs'
  | 'retries'
  | 'readonly'
> &
  Partial<Pick<RunConfig, 'keepAliveMs'>>;

const MiB = 2 ** 20;

export async function openExport(opts: ExportOptions, logger: Logger): Promise<ExportStack> {
  const { url } = opts;
  let base: Backend;
  let imageio: ImageioBackend | undefined;
  let describe: string;
  if (url.startsWith('memory:')) {
    const size = parseSize(url.slice('memory:'.length), 'memory size');
    if (size === 0) throw new ConfigError('memory:SIZE needs a size above 0, e.g. memory:1G');
    base = new MemoryBackend(size, opts.readonly);
    describe = `memory disk of ${size} bytes`;
  } else if (url.startsWith('file://')) {
    let path: string;
    try {
      path = decodeURIComponent(new URL(url).pathname);
    } catch {
      throw new ConfigError(`invalid file URL '${url}'`);
    }
    base = await openFileBackend(path, { readonly: opts.readonly });
    describe = `file ${path}`;
  } else {
    // undici and the HTTP code load only for imageio URLs: start-up time counts in every copy.
    const { openImageioBackend } = require('./backends/imageio-backend') as typeof import('./backends/imageio-backend');
    imageio = await openImageioBackend({
      url,
      size: opts.size,
      connections: opts.connections,
      cafile: opts.cafile,
      insecure: opts.insecure,
      unixSocket: opts.unixSocket,
      readonly: opts.readonly,
      connectTimeoutMs: opts.connectTimeoutMs,
      requestTimeoutMs: opts.requestTimeoutMs,
      retries: opts.retries,
      keepAliveIdleMs: opts.keepAliveMs,
      logger,
    });
    base = imageio;
    describe = `imageio transfer ${url}`;
  }

  let coalesce: CoalesceLayer | undefined;
  let inner = base;
  if (imageio && opts.requestSize > 0 && !opts.readonly && base.capabilities().canWrite) {
    const { CoalesceLayer } = require('./layers/coalesce-layer') as typeof import('./layers/coalesce-layer');
    coalesce = new CoalesceLayer(base, {
      requestSize: opts.requestSize,
      maxBufferedBytes: opts.maxBuffer,
      maxInFlight: imageio.httpStats().poolSize,
      // A write of half a request or more is big already: send it as it is, without a copy.
      directWriteSize: Math.ceil(opts.requestSize / 2),
      idleMs: opts.coalesceIdleMs,
      logger,
    });
    inner = coalesce;
  }
  const stats = new StatsLayer(inner);
  const preferredBlockSize = opts.preferredBlockSize ?? (imageio ? 8 * MiB : 4 * MiB);
  return { top: stats, stats, coalesce, imageio, preferredBlockSize, describe };
}
