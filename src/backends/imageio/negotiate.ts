/**
 * Opening a transfer: OPTIONS (features, limits, the daemon's local socket), the choice of
 * transport, and the image size, each checked so that a bad answer fails the start with one
 * clear line instead of a crash later.
 */
import { ConfigError, HttpError, describeError } from '../../core/errors';
import type { Logger } from '../../core/log';
import { formatBytes } from '../../core/size';
import { ExtentMap, type ImageioExtent } from './extent-map';
import { HttpConnection, type Endpoint, type ExchangeResult } from './http/connection';
import type { ResolvedOptions } from './options';
import { TLS_VERIFY_CODES, type RequestRunner } from './request-runner';

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

/** Bodies of GET extents are read up to this size. */
export const MAX_EXTENTS_BODY = 256 * 1024 * 1024;

export function urlEndpoint(o: ResolvedOptions): Endpoint {
  const u = o.url;
  return {
    kind: 'url',
    display: u.origin,
    protocol: u.protocol as 'http:' | 'https:',
    hostname: u.hostname,
    port: u.port,
    tls: u.protocol === 'https:' ? (o.tls ?? {}) : undefined,
    connectTimeoutMs: o.connectTimeoutMs,
  };
}

export function unixEndpoint(socketPath: string, connectTimeoutMs: number): Endpoint {
  return {
    kind: 'unix',
    display: `unix:${JSON.stringify(socketPath)}`,
    protocol: 'http:',
    hostname: 'localhost',
    port: '',
    socketPath,
    connectTimeoutMs,
  };
}

/** Interprets OPTIONS; anything but a 200 with a JSON object is an old server: safe fallback. */
export function parseOptions(res: ExchangeResult, log: Logger): ImageioServerInfo {
  if (res.truncated) {
    throw new ConfigError(
      `imageio's answer to OPTIONS is longer than ${res.body.length} bytes or never ends: is this an imageio server?`,
    );
  }
  const allow = res.headers['allow'];
  const allowList = allow === undefined ? undefined : allow.toUpperCase().split(/\s*,\s*/);
  const writable = allowList === undefined || res.status !== 200 || allowList.includes('PUT');
  let json: Record<string, unknown> | undefined;
  if (res.status === 200 && res.body.length > 0 && !res.truncated) {
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

/** Turns a failure of the first request into a ConfigError when it is about configuration. */
export function startError(err: unknown, o: ResolvedOptions): unknown {
  if (!(err instanceof HttpError)) return err;
  const code = err.failure.code;
  const origin = o.url.origin;
  if (code === 'ERR_SSL_WRONG_VERSION_NUMBER' || /wrong version number/i.test(describeError(err))) {
    return withCause(
      new ConfigError(`${origin} does not speak TLS (the server speaks plain HTTP): use http://${o.url.host}${o.url.pathname}`),
      err,
    );
  }
  if (code && TLS_VERIFY_CODES.has(code)) {
    return withCause(new ConfigError(tlsVerifyMessage(origin, err)), err);
  }
  return err;
}

/**
 * A certificate that could not be verified, as one line: the problem once (the innermost error
 * with a certificate code, without Node's advice on how to start it) and the options that fix it.
 */
export function tlsVerifyMessage(origin: string, err: unknown): string {
  let reason = describeError(err);
  for (let e: unknown = err, depth = 0; e instanceof Error && depth < 8; e = e.cause, depth++) {
    const code = (e as { code?: unknown }).code;
    if (typeof code === 'string' && TLS_VERIFY_CODES.has(code)) reason = `${e.message.replace(/; if the root CA is installed locally.*$/s, '')} [${code}]`;
  }
  return `cannot verify the TLS certificate of ${origin}: ${reason}: pass the CA that signed it with --cafile FILE, or turn verification off with --insecure`;
}

function withCause<T extends Error>(e: T, cause: unknown): T {
  (e as { cause?: unknown }).cause = cause;
  return e;
}

/**
 * Switches the runner to the daemon's local socket if it answers OPTIONS for our ticket from
 * here. Says why at the default level when it does not: on an oVirt host, falling back to TCP
 * means HTTPS, the slowest way.
 */
export async function probeUnixSocket(socketPath: string, o: ResolvedOptions, log: Logger): Promise<boolean> {
  const shown = JSON.stringify(socketPath);
  const conn = new HttpConnection(-1, unixEndpoint(socketPath, Math.min(o.connectTimeoutMs, 2000)));
  let why: string;
  try {
    const res = await conn.request({
      method: 'OPTIONS',
      path: o.path,
      ok: [200],
      maxBody: 64 * 1024,
      timeoutMs: Math.min(o.requestTimeoutMs, 5000),
    });
    if (res.status === 200) return true;
    why = `it answered HTTP ${res.status} for this ticket`;
  } catch (err) {
    why = `it is not reachable from here: ${describeError(err)}`;
  } finally {
    await conn.destroy();
  }
  log.warn(
    { socket: shown, url: o.url.origin },
    `imageio offers its unix socket ${shown} but ${why}; using ${o.url.origin}` + (o.url.protocol === 'https:' ? ' (HTTPS)' : ''),
  );
  return false;
}

/** Checks a size the server told us: a safe, non-negative integer. */
export function checkSize(n: number, where: string): number {
  if (!Number.isSafeInteger(n) || n < 0) {
    throw new ConfigError(`imageio reported an impossible image size (${where}): ${n}; is this an imageio server?`);
  }
  return n;
}

/** The image size from a 1-byte GET's Content-Range total. */
export async function sizeFromRange(runner: RequestRunner, o: ResolvedOptions): Promise<number> {
  const into = Buffer.allocUnsafe(1);
  const res = await runner.run({
    kind: 'GET',
    method: 'GET',
    op: 'size',
    path: o.path,
    headers: 'Range: bytes=0-0\r\n',
    offset: 0,
    length: 1,
    ok: [206],
    into,
    timeoutMs: o.requestTimeoutMs,
  });
  const range = res.headers['content-range'] ?? '';
  const m = /^bytes\s+\d+-\d+\/(\d+)\s*$/.exec(range);
  if (!m) {
    throw new ConfigError(
      `cannot find the image size: the server sent no extents and no usable Content-Range (${JSON.stringify(range.slice(0, 80))}); pass the size explicitly`,
    );
  }
  if (m[1].length > 16) throw new ConfigError(`imageio reported an impossible image size (Content-Range): ${m[1]}`);
  return checkSize(Number(m[1]), 'Content-Range');
}

/** GET /extents?context=zero, parsed and checked. */
export async function fetchExtents(runner: RequestRunner, o: ResolvedOptions, op: string): Promise<ImageioExtent[]> {
  const res = await runner.run({
    kind: 'GET extents',
    method: 'GET',
    op,
    path: `${o.path}/extents?context=zero`,
    ok: [200],
    maxBody: MAX_EXTENTS_BODY,
    timeoutMs: o.requestTimeoutMs,
  });
  try {
    if (res.truncated) throw new Error(`answer longer than ${formatBytes(MAX_EXTENTS_BODY)}`);
    const list = ExtentMap.parse(JSON.parse(res.body.toString('utf8')));
    checkSize(ExtentMap.endOf(list), 'extents');
    return list;
  } catch (err) {
    if (err instanceof ConfigError) throw err;
    throw new HttpError(
      { method: 'GET', op, status: res.status, body: res.body.toString('utf8', 0, 200) },
      `GET extents failed: bad answer: ${describeError(err)}`,
    );
  }
}
