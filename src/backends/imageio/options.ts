/** Options of the imageio backend, their defaults, and their checks (one ConfigError line each). */
import { readFileSync } from 'node:fs';
import { ConfigError, describeError } from '../../core/errors';
import type { Logger } from '../../core/log';
import { silentLogger } from '../../core/log';
import type { PayloadPool } from '../../core/payload-pool';
import { DEFAULTS } from '../../core/defaults';

export interface ImageioBackendOptions {
  /** Transfer URL: https://HOST:54322/images/TICKET or http://... */
  url: string;
  /** Wanted HTTP connections (default 4), capped by the server's max_readers/max_writers. */
  connections?: number;
  /** Image size; discovered from the server when absent (and checked against it when given). */
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
  /**
   * Deadline of one request, headers and body, default 60000. Requests that carry data get
   * more time for their bytes at `minRate`.
   */
  requestTimeoutMs?: number;
  /** Slowest transfer rate tolerated for request and response bodies, bytes/s (default 1 MiB/s). */
  minRate?: number;
  /** Retries of a request that may be repeated safely (see retry-policy.ts), default 3. */
  retries?: number;
  /** Keep-alive request on connections idle longer than this, default 30000 (imageio closes at 60 s). */
  keepAliveIdleMs?: number;
  /** Where GET bodies are read into. */
  pool: PayloadPool;
  /**
   * Told when written bytes that imageio acknowledged may be lost (a connection closed, or
   * failed to flush, with unflushed writes): `connection` names it, `bytes` is how much.
   */
  onDataLoss?: (connection: string, bytes: number) => void;
  logger?: Logger;
}

export interface ResolvedOptions {
  url: URL;
  path: string;
  connections: number;
  size?: number;
  tls?: { ca?: Buffer; rejectUnauthorized?: boolean };
  unixSocket: 'auto' | 'never';
  readonly: boolean;
  connectTimeoutMs: number;
  requestTimeoutMs: number;
  /** Bytes per millisecond. */
  minRatePerMs: number;
  retries: number;
  keepAliveIdleMs: number;
  pool: PayloadPool;
  onDataLoss?: (connection: string, bytes: number) => void;
  logger: Logger;
}


export function resolveOptions(opts: ImageioBackendOptions): ResolvedOptions {
  let url: URL;
  try {
    url = new URL(opts.url);
  } catch {
    throw new ConfigError(`invalid imageio URL '${opts.url}': expected https://HOST:54322/images/TICKET`);
  }
  if (url.protocol !== 'https:' && url.protocol !== 'http:') {
    throw new ConfigError(`imageio URL must be http:// or https://, not '${url.protocol}' (${opts.url})`);
  }
  if (!/^\/images\/[^/]+$/.test(url.pathname)) {
    throw new ConfigError(`imageio URL path must be /images/TICKET-ID, not '${url.pathname}'`);
  }
  const number = (name: string, v: number | undefined, def: number, min: number, integer: boolean) => {
    const x = v ?? def;
    if (!Number.isFinite(x) || x < min || (integer && !Number.isSafeInteger(x))) {
      throw new ConfigError(`${name} must be ${integer ? 'an integer' : 'a number'} >= ${min}, not ${v}`);
    }
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
    connections: number('connections', opts.connections, DEFAULTS.connections, 1, true),
    size: opts.size,
    tls,
    unixSocket: opts.unixSocket ?? DEFAULTS.unixSocket,
    readonly: opts.readonly ?? false,
    connectTimeoutMs: number('connectTimeoutMs', opts.connectTimeoutMs, DEFAULTS.connectTimeoutMs, 1, false),
    requestTimeoutMs: number('requestTimeoutMs', opts.requestTimeoutMs, DEFAULTS.requestTimeoutMs, 1, false),
    minRatePerMs: number('minRate', opts.minRate, DEFAULTS.minRate, 1, false) / 1000,
    retries: number('retries', opts.retries, DEFAULTS.retries, 0, true),
    keepAliveIdleMs: number('keepAliveIdleMs', opts.keepAliveIdleMs, DEFAULTS.keepAliveMs, 1, false),
    pool: opts.pool,
    onDataLoss: opts.onDataLoss,
    logger: opts.logger ?? silentLogger(),
  };
}
