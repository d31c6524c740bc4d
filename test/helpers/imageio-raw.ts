/**
 * Test helpers for the imageio server: temporary image files, raw socket exchanges (for
 * malformed or pipelined requests that an HTTP client would refuse to send), and a parser for
 * the sequence of responses that comes back.
 */
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { ImageioServer, ImageioServerOptions } from '../../sim/imageio-server';

export interface TempDir {
  dir: string;
  file(name: string): string;
  cleanup(): void;
}

export function tempDir(prefix = 'imageio-server-test-'): TempDir {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  return {
    dir,
    file: (name) => path.join(dir, name),
    cleanup: () => fs.rmSync(dir, { recursive: true, force: true }),
  };
}

/** Create a sparse raw image of `size` bytes, optionally with `data` written at offsets. */
export function makeImage(file: string, size: number, data: [number, Buffer][] = []): string {
  const fd = fs.openSync(file, 'w');
  fs.ftruncateSync(fd, size);
  for (const [off, buf] of data) fs.writeSync(fd, buf, 0, buf.length, off);
  fs.closeSync(fd);
  return file;
}

/** A started server on a fresh temp image; `done()` closes it and removes the files. */
export async function startServer(
  size: number,
  opts: Partial<ImageioServerOptions> = {},
  data: [number, Buffer][] = [],
): Promise<{ server: ImageioServer; image: string; tmp: TempDir; port: number; done: () => Promise<void> }> {
  const tmp = tempDir();
  const image = makeImage(tmp.file('disk.raw'), size, data);
  const server = new ImageioServer({ image, ticket: 'test-ticket', ...opts });
  await server.start();
  const port = Number(new URL(server.url).port);
  return {
    server,
    image,
    tmp,
    port,
    done: async () => {
      await server.close();
      tmp.cleanup();
    },
  };
}

export interface RawResult {
  data: Buffer;
  /** The server closed the connection (we saw EOF or a reset). */
  closed: boolean;
}

/**
 * Send bytes on a new connection and collect everything until the server closes it, or
 * `quietMs` (default 300) pass without data after some arrived, or `firstByteMs` (default
 * 10000) pass with nothing at all. The wait for the first byte is long so that a loaded machine
 * (a slow fsync, say) does not cut a response off. `halfClose` ends our side after sending.
 */
export function rawExchange(
  target: { port: number } | { socketPath: string },
  data: Buffer | string | (Buffer | string)[],
  opts: { halfClose?: boolean; quietMs?: number; firstByteMs?: number } = {},
): Promise<RawResult> {
  const quietMs = opts.quietMs ?? 300;
  const firstByteMs = Math.max(quietMs, opts.firstByteMs ?? 10000);
  return new Promise((resolve, reject) => {
    const sock =
      'port' in target ? net.connect(target.port, '127.0.0.1') : net.connect({ path: target.socketPath });
    const chunks: Buffer[] = [];
    let timer: NodeJS.Timeout | undefined;
    let done = false;
    const finish = (closed: boolean) => {
      if (done) return;
      done = true;
      if (timer) clearTimeout(timer);
      sock.destroy();
      resolve({ data: Buffer.concat(chunks), closed });
    };
    const rearm = () => {
      if (timer) clearTimeout(timer);
      timer = setTimeout(() => finish(false), chunks.length ? quietMs : firstByteMs);
    };
    sock.on('connect', () => {
      for (const d of Array.isArray(data) ? data : [data]) sock.write(d);
      if (opts.halfClose) sock.end();
      rearm();
    });
    sock.on('data', (d: Buffer) => {
      chunks.push(d);
      rearm();
    });
    sock.on('end', () => finish(true));
    sock.on('close', () => finish(true));
    sock.on('error', (err: NodeJS.ErrnoException) => {
      if (err.code === 'ECONNRESET' || err.code === 'EPIPE') finish(true);
      else if (!done) reject(err);
    });
  });
}

export interface ParsedResponse {
  status: number;
  reason: string;
  headers: Record<string, string>;
  /** Header names in the order received, as sent (case kept). */
  rawNames: string[];
  body: Buffer;
}

/** Split raw bytes into HTTP responses (bodies by content-length; 1xx and 204 have none). */
export function parseResponses(data: Buffer): ParsedResponse[] {
  const out: ParsedResponse[] = [];
  let pos = 0;
  while (pos < data.length) {
    const end = data.indexOf('\r\n\r\n', pos);
    if (end < 0) throw new Error(`incomplete response head: ${JSON.stringify(data.subarray(pos).toString('latin1'))}`);
    const lines = data.subarray(pos, end).toString('latin1').split('\r\n');
    const m = /^HTTP\/1\.[01] (\d{3}) ?(.*)$/.exec(lines[0]);
    if (!m) throw new Error(`bad status line ${JSON.stringify(lines[0])}`);
    const headers: Record<string, string> = {};
    const rawNames: string[] = [];
    for (const line of lines.slice(1)) {
      const i = line.indexOf(':');
      rawNames.push(line.slice(0, i));
      headers[line.slice(0, i).toLowerCase()] = line.slice(i + 1).trim();
    }
    const status = Number(m[1]);
    const len = status < 200 || status === 204 ? 0 : Number(headers['content-length'] ?? 0);
    const bodyStart = end + 4;
    out.push({ status, reason: m[2], headers, rawNames, body: data.subarray(bodyStart, bodyStart + len) });
    pos = bodyStart + len;
  }
  return out;
}

/** One raw request; returns the parsed responses and whether the server closed the connection. */
export async function rawRequest(
  target: { port: number } | { socketPath: string },
  data: Buffer | string | (Buffer | string)[],
  opts: { halfClose?: boolean; quietMs?: number; firstByteMs?: number } = {},
): Promise<{ responses: ParsedResponse[]; closed: boolean }> {
  const r = await rawExchange(target, data, opts);
  return { responses: parseResponses(r.data), closed: r.closed };
}

/** Build a request head (HTTP/1.1, Host set). */
export function head(method: string, target: string, headers: Record<string, string | number> = {}): string {
  let s = `${method} ${target} HTTP/1.1\r\nHost: 127.0.0.1\r\n`;
  for (const [k, v] of Object.entries(headers)) s += `${k}: ${v}\r\n`;
  return s + '\r\n';
}
