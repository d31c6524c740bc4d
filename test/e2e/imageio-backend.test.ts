/**
 * ImageioBackend against the project's imageio-compatible server (real HTTP, real sockets):
 * negotiation, transports, round trips, flush on every connection, errors, data-loss
 * detection, keep-alive.
 */
import { randomBytes } from 'node:crypto';
import { mkdtempSync, promises as fsp, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import pino from 'pino';
import { EXTENT_HOLE, EXTENT_ZERO } from '../../src/core/backend';
import { ImageioBackend, openImageioBackend, type ImageioBackendOptions } from '../../src/backends/imageio';
import { ConfigError, DataLossError, HttpError, TicketError, toNbdErrno } from '../../src/core/errors';
import { ImageioServer, type ImageioServerOptions } from '../../sim/imageio-server/imageio-server';
import { makePki, waitAllClosed, type TestPki } from '../helpers/cli';
import type { Logger } from '../../src/core/log';
import { NbdError } from '../../src/nbd/codec/constants';
import { PayloadPool } from '../../src/core/payload-pool';

const MiB = 1 << 20;

let dir: string;
const cleanups: Array<() => Promise<unknown>> = [];

beforeEach(async () => {
  dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'imageio-backend-'));
});

afterEach(async () => {
  while (cleanups.length) await cleanups.pop()!().catch(() => {});
  await fsp.rm(dir, { recursive: true, force: true });
});

interface LogLine {
  level: number;
  msg: string;
  [k: string]: unknown;
}

function captureLogger(): { logger: Logger; lines: LogLine[] } {
  const lines: LogLine[] = [];
  const logger = pino({ level: 'debug' }, { write: (s: string) => lines.push(JSON.parse(s)) });
  return { logger, lines };
}

async function startServer(opts: Partial<ImageioServerOptions> = {}, size = 64 * MiB): Promise<ImageioServer> {
  const image = path.join(dir, `disk-${randomBytes(4).toString('hex')}.raw`);
  await fsp.writeFile(image, '');
  await fsp.truncate(image, size);
  const server = new ImageioServer({ image, ...opts });
  await server.start();
  cleanups.push(() => server.close());
  return server;
}

async function open(server: ImageioServer | string, opts: Partial<ImageioBackendOptions> = {}): Promise<ImageioBackend> {
  const url = typeof server === 'string' ? server : server.url;
  const b = await openImageioBackend({ url, retries: 2, pool: new PayloadPool(), ...opts });
  cleanups.push(() => b.close());
  return b;
}

/** Connections the server saw that carried data requests. */
function dataConnections(server: ImageioServer) {
  return server.stats().connections.filter((c) => c.reads + c.writes + c.zeros > 0);
}

describe('negotiation', () => {
  test('nbd-style server: 4 connections, every feature, size from extents', async () => {
    const server = await startServer({ backend: 'nbd' });
    const b = await open(server);
    expect(b.size()).toBe(64 * MiB);
    expect(b.capabilities()).toEqual({
      canWrite: true,
      canFlush: true,
      canFua: true,
      canZero: true,
      canFastZero: true,
      canTrim: false,
      canCache: false,
      canExtents: true,
      canMultiConn: true,
    });
    // The preferred block size to advertise is the export's choice (open-export.ts), not the backend's.
    expect(b.blockSize().preferred).toBeUndefined();
    expect(b.httpStats().poolSize).toBe(4);
    expect(b.serverInfo()).toMatchObject({ legacy: false, maxReaders: 8, maxWriters: 8, transport: 'url' });
  });

  test('file-style server (max_writers 1): one connection; connections option caps the pool', async () => {
    const server = await startServer({ backend: 'file' });
    expect((await open(server)).httpStats().poolSize).toBe(1);
    const nbd = await startServer({ backend: 'nbd' });
    expect((await open(nbd, { connections: 2 })).httpStats().poolSize).toBe(2);
  });

  test('read-only ticket: no writes, readers-only pool, multi-conn', async () => {
    const server = await startServer({ readonly: true, backend: 'file' });
    const b = await open(server);
    const caps = b.capabilities();
    expect(caps.canWrite).toBe(false);
    expect(caps.canZero).toBe(false);
    expect(caps.canFlush).toBe(false);
    expect(caps.canMultiConn).toBe(true);
    expect(b.httpStats().poolSize).toBe(4); // min(4, max_readers 8): max_writers does not apply
    // readonly option on a writable ticket
    const rw = await startServer();
    expect((await open(rw, { readonly: true })).capabilities().canWrite).toBe(false);
  });

  test.each(['options-405', 'options-204'] as const)(
    'legacy server (%s): one connection, zero emulated with PUTs, flush waits for self-flushing PUTs',
    async (legacy) => {
      const server = await startServer({ legacy });
      const b = await open(server);
      expect(b.httpStats().poolSize).toBe(1);
      const caps = b.capabilities();
      // Old servers flush every PUT (PUT's flush default is y), so FLUSH and FUA can be offered.
      expect(caps).toMatchObject({ canWrite: true, canZero: true, canFastZero: false, canFlush: true, canFua: true, canExtents: false });
      expect(b.size()).toBe(64 * MiB); // from GET Range bytes=0-0
      await b.pwrite(Buffer.alloc(20 * MiB, 0xaa), 0);
      await b.zero(MiB, 17 * MiB);
      await expect(b.zero(0, 10, { fastZero: true })).rejects.toMatchObject({ errno: NbdError.ENOTSUP });
      const s = server.stats();
      expect(s.ops.zero ?? 0).toBe(0);
      const data = await b.pread(0, 20 * MiB);
      expect(data.subarray(0, MiB).every((x) => x === 0xaa)).toBe(true);
      expect(data.subarray(MiB, 18 * MiB).every((x) => x === 0)).toBe(true);
      expect(data.subarray(18 * MiB).every((x) => x === 0xaa)).toBe(true);
      expect(b.httpStats().requests['PATCH zero']).toBeUndefined();
      expect(b.httpStats().requests.PUT.count).toBe(1 + 3); // 17 MiB in 8 MiB pieces
      await b.flush();
      expect(b.httpStats().requests['PATCH flush']).toBeUndefined();
      // Every PUT went without ?flush=n, so the server flushed each one: nothing left unflushed.
      expect(dataConnections(server).every((c) => c.unflushedWrites === 0)).toBe(true);
    },
  );

  test('unix socket: auto uses the advertised socket, never sticks to the URL', async () => {
    const sock = path.join(dir, 'local.sock');
    const server = await startServer({ unix: sock });
    const auto = await open(server, { unixSocket: 'auto' });
    expect(auto.serverInfo().transport).toBe('unix');
    await auto.pwrite(Buffer.alloc(MiB, 1), 0);
    await auto.flush();
    expect(dataConnections(server).map((c) => c.service)).toEqual(['unix']);
    await auto.close();

    const never = await open(server, { unixSocket: 'never' });
    expect(never.serverInfo().transport).toBe('url');
    await never.pread(0, MiB);
    expect(dataConnections(server).map((c) => c.service)).toEqual(['unix', 'tcp']);
  });

  test('unix socket advertised but unreachable: falls back to the URL', async () => {
    const server = await startServer({ unix: path.join(dir, 'local.sock') });
    await fsp.rm(path.join(dir, 'local.sock'));
    const b = await open(server);
    expect(b.serverInfo().transport).toBe('url');
    expect((await b.pread(0, 4096)).length).toBe(4096);
  });

  test('unreachable server: HttpError carrying ECONNREFUSED', async () => {
    const server = await startServer();
    const url = server.url;
    await server.close();
    const err = await openImageioBackend({ url, pool: new PayloadPool(), retries: 0 }).catch((e) => e);
    expect(err).toBeInstanceOf(HttpError);
    expect(err.failure).toMatchObject({ method: 'OPTIONS', code: 'ECONNREFUSED' });
    expect(err.message).toMatch(/ECONNREFUSED/);
  });

  test('unknown ticket: TicketError with the server message', async () => {
    const server = await startServer();
    const err = await openImageioBackend({ url: server.url.replace(/[^/]+$/, 'no-such-ticket'), pool: new PayloadPool() }).catch((e) => e);
    expect(err).toBeInstanceOf(TicketError);
    expect(err.message).toMatch(/No such ticket no-such-ticket/);
  });

  test('bad URLs are ConfigErrors', async () => {
    await expect(openImageioBackend({ url: 'nbd://x/images/t', pool: new PayloadPool() })).rejects.toBeInstanceOf(ConfigError);
    await expect(openImageioBackend({ url: 'http://x/foo', pool: new PayloadPool() })).rejects.toBeInstanceOf(ConfigError);
    await expect(openImageioBackend({ url: 'https://x/images/t', pool: new PayloadPool(), cafile: path.join(dir, 'none.pem') })).rejects.toThrow(
      /cannot read CA file/,
    );
  });
});

describe('HTTPS', () => {
  let pkiDir: string;
  let pki: TestPki;

  beforeAll(() => {
    pkiDir = mkdtempSync(path.join(os.tmpdir(), 'imageio-backend-pki-'));
    pki = makePki(pkiDir);
  });

  afterAll(() => rmSync(pkiDir, { recursive: true, force: true }));

  test('verifies with the CA file; insecure skips verification; a wrong CA fails clearly', async () => {
    const server = await startServer({ tls: { cert: pki.cert, key: pki.key } });
    expect(server.url).toMatch(/^https:/);
    const b = await open(server, { cafile: pki.ca });
    await b.pwrite(Buffer.alloc(4096, 3), 0);
    expect((await b.pread(0, 4096))[100]).toBe(3);

    const insecure = await open(server, { insecure: true });
    expect((await insecure.pread(0, 4096))[100]).toBe(3);

    const wrong = await openImageioBackend({ url: server.url, pool: new PayloadPool(), cafile: pki.otherCa }).catch((e) => e);
    expect(wrong).toBeInstanceOf(ConfigError);
    expect(wrong.message).toMatch(/cannot verify the TLS certificate.*(cafile|insecure)/);
    const system = await openImageioBackend({ url: server.url, pool: new PayloadPool() }).catch((e) => e);
    expect(system).toBeInstanceOf(ConfigError);
  });
});

describe('data path', () => {
  test('many parallel writes and reads: what we read is what the file holds', async () => {
    const size = 64 * MiB;
    const server = await startServer({}, size);
    const b = await open(server);
    const writes = Array.from({ length: 48 }, (_, i) => {
      const len = 1 + ((i * 7919) % (2 * MiB));
      const off = (i * 1_299_709) % (size - len);
      return { off, data: randomBytes(len) };
    });
    await Promise.all(writes.map((w) => b.pwrite(w.data, w.off)));
    await b.flush();
    const reads = await Promise.all(Array.from({ length: 32 }, (_, i) => b.pread(i * 2 * MiB, 2 * MiB)));
    const back = Buffer.concat(reads);
    const file = await fsp.readFile(path.join(dir, (await fsp.readdir(dir)).find((f) => f.endsWith('.raw'))!));
    expect(back.equals(file)).toBe(true);
    expect(dataConnections(server).length).toBe(4);
    expect(b.httpStats().connectionsUsed).toBe(4);
  });

  test('disjoint parallel writes read back exactly', async () => {
    const server = await startServer({}, 32 * MiB);
    const b = await open(server);
    const chunks = Array.from({ length: 64 }, (_, i) => ({ off: i * 512 * 1024 + (i % 3), data: randomBytes(300_000 + i) }));
    await Promise.all(chunks.map((c) => b.pwrite(c.data, c.off)));
    const back = await Promise.all(chunks.map((c) => b.pread(c.off, c.data.length)));
    back.forEach((buf, i) => expect(buf.equals(chunks[i].data)).toBe(true));
    expect(b.httpStats().requests.PUT).toEqual({ count: 64, bytes: chunks.reduce((n, c) => n + c.data.length, 0) });
  });

  test('a large zero is one PATCH; extents follow our writes and zeroes', async () => {
    const size = 512 * MiB; // more than imageio's 128 MiB zero step and NBD's 32 MiB requests
    const server = await startServer({}, size);
    const b = await open(server);
    await b.pwrite(Buffer.alloc(MiB, 9), 0);
    const first = await b.extents(0, size);
    expect(first[0]).toEqual({ offset: 0, length: MiB, flags: 0 });
    await b.zero(0, size - 4096);
    expect(server.stats().ops.zero).toBe(1);
    expect(b.httpStats().requests['PATCH zero']).toEqual({ count: 1, bytes: size - 4096 });
    await b.pwrite(Buffer.alloc(4096, 1), 8192);
    const ex = await b.extents(0, 16384);
    expect(ex).toEqual([
      { offset: 0, length: 8192, flags: EXTENT_ZERO },
      { offset: 8192, length: 4096, flags: 0 },
      { offset: 12288, length: 4096, flags: EXTENT_ZERO },
    ]);
    expect(b.httpStats().requests['GET extents'].count).toBe(1); // fetched once (at open, for the size)
    expect((await b.pread(8190, 6)).equals(Buffer.from([0, 0, 1, 1, 1, 1]))).toBe(true);
    // the tail the zero did not cover is still a hole
    expect((await b.extents(size - 4096, 4096))[0].flags & EXTENT_HOLE).toBe(EXTENT_HOLE);
  });

  test('flush waits for writes in flight and reaches every connection', async () => {
    const server = await startServer();
    const b = await open(server);
    const writes = Array.from({ length: 16 }, (_, i) => b.pwrite(Buffer.alloc(MiB, i), i * MiB));
    // Not awaited first: flush must wait for the writes already in flight.
    const flushed = b.flush();
    await Promise.all(writes);
    await flushed;
    const conns = dataConnections(server);
    expect(conns.length).toBe(4);
    for (const c of conns) {
      expect(c.flushes).toBeGreaterThanOrEqual(1);
      expect(c.unflushedWrites).toBe(0);
    }
    expect(b.httpStats().requests['PATCH flush'].count).toBe(4);
  });

  test('FUA writes use flush=y and zero with flush true', async () => {
    const server = await startServer();
    const b = await open(server, { connections: 1 });
    await b.pwrite(Buffer.alloc(4096, 5), 0, { fua: true });
    await b.zero(8192, 4096, { fua: true });
    const c = dataConnections(server)[0];
    expect(c.unflushedWrites).toBe(0);
  });
});

describe('errors', () => {
  test('500 on PUT, every retry: EIO with a logged line naming method, offset, length, status, body', async () => {
    const server = await startServer();
    const { logger, lines } = captureLogger();
    const b = await open(server, { logger, retries: 2 });
    server.faults.add({ method: 'PUT', times: Infinity, action: { status: 500 } });
    const err = await b.pwrite(Buffer.alloc(8 * MiB), MiB).catch((e) => e);
    expect(err).toBeInstanceOf(HttpError);
    expect(toNbdErrno(err)).toBe(NbdError.EIO);
    expect(err.message).toMatch(
      /^PUT offset=1048576 length=8388608 failed: HTTP 500 Server failed to perform the request, check logs/,
    );
    expect(err.failure).toMatchObject({ method: 'PUT', op: 'write', offset: MiB, length: 8 * MiB, status: 500 });
    const errors = lines.filter((l) => l.level === 50);
    expect(errors).toHaveLength(1);
    expect(errors[0]).toMatchObject({ method: 'PUT', offset: MiB, length: 8 * MiB, status: 500 });
    expect(String(errors[0].body)).toMatch(/^Server failed/);
    expect(typeof errors[0].connection).toBe('number');
    expect(b.httpStats().retries).toBe(2);
  });

  test('one 500 on a clean connection is retried transparently', async () => {
    const server = await startServer();
    const b = await open(server, { connections: 1 });
    server.faults.add({ method: 'PUT', action: { status: 500 } });
    await b.pwrite(Buffer.alloc(4096, 7), 0);
    expect((await b.pread(0, 4096))[0]).toBe(7);
    expect(b.httpStats().retries).toBe(1);
    await b.flush();
  });

  test('a read covering zero extents fetches only the data in it', async () => {
    const server = await startServer({}, 32 * MiB);
    const b = await open(server, { connections: 2 });
    const d1 = randomBytes(MiB);
    const d2 = randomBytes(2 * MiB);
    await b.pwrite(d1, MiB);
    await b.pwrite(d2, 8 * MiB);
    await b.flush();
    const before = b.httpStats().requests.GET ?? { count: 0, bytes: 0 };
    const got = await b.pread(0, 16 * MiB);
    const after = b.httpStats().requests.GET!;
    expect(after.count - before.count).toBe(2);
    expect(after.bytes - before.bytes).toBe(3 * MiB);
    const want = Buffer.alloc(16 * MiB);
    d1.copy(want, MiB);
    d2.copy(want, 8 * MiB);
    expect(got.equals(want)).toBe(true);
  });

  test('a size larger than the transfer fails the start with one line', async () => {
    const server = await startServer({}, 16 * MiB);
    const err = await open(server, { size: 32 * MiB }).catch((e) => e);
    expect(err).toBeInstanceOf(ConfigError);
    expect(err.message).toBe(
      'size 32.00 MiB is larger than the transfer (16.00 MiB): pass a size of at most 16777216 bytes, or none',
    );
    const b = await open(server, { size: 8 * MiB });
    expect(b.size()).toBe(8 * MiB);
  });

  test('a 4xx is final; write past the ticket size is ENOSPC', async () => {
    const server = await startServer({}, 16 * MiB);
    const b = await open(server);
    const err = await b.pwrite(Buffer.alloc(4096), 20 * MiB).catch((e) => e);
    expect(err).toBeInstanceOf(HttpError);
    expect(err.errno).toBe(NbdError.ENOSPC);
    expect(err.failure.status).toBe(416);
    const zerr = await b.zero(20 * MiB, 4096).catch((e) => e);
    expect(zerr.errno).toBe(NbdError.ENOSPC);
    expect(b.httpStats().retries).toBe(0);
  });

  test('403 expired ticket: TicketError, no retry', async () => {
    const server = await startServer();
    const b = await open(server);
    // Data, so that the read needs a GET (ranges known to be zero are not fetched).
    await b.pwrite(Buffer.alloc(4096, 1), 0);
    server.expireTicket();
    const err = await b.pread(0, 4096).catch((e) => e);
    expect(err).toBeInstanceOf(TicketError);
    expect(err.message).toMatch(/expired, was cancelled.*Transfer=.* expired/);
    expect(toNbdErrno(err)).toBe(NbdError.EIO);
    expect(b.httpStats().retries).toBe(0);
  });

  test('a request that times out is retried (clean connection)', async () => {
    const server = await startServer();
    const { logger, lines } = captureLogger();
    const b = await open(server, { connections: 1, requestTimeoutMs: 1000, logger });
    await b.pwrite(Buffer.alloc(4096, 4), 0);
    await b.flush();
    server.faults.add({ method: 'GET', op: 'read', action: { delayMs: 4000 } });
    expect((await b.pread(0, 4096))[0]).toBe(4);
    expect(b.httpStats().retries).toBe(1);
    expect(lines.find((l) => l.level === 40)).toMatchObject({ method: 'GET', code: 'ERR_TIMEOUT' });
  });

  test('dropped clean connection: reconnect is transparent', async () => {
    const server = await startServer();
    const b = await open(server, { connections: 2 });
    await b.pwrite(Buffer.alloc(MiB, 1), 0);
    await b.flush();
    expect(server.closeIdleConnections()).toBeGreaterThan(0);
    await new Promise((r) => setTimeout(r, 50));
    await b.pwrite(Buffer.alloc(MiB, 2), MiB);
    expect((await b.pread(0, 2 * MiB)).subarray(MiB - 1, MiB + 1)).toEqual(Buffer.from([1, 2]));
    await b.flush();
    expect(b.httpStats().reconnects).toBeGreaterThan(0);
    await b.close();
  });

  test('socket dropped mid-PUT on a clean connection: not resent (it may still land), flush fails', async () => {
    // The server may have read the request and still be writing it: a resent PUT could be
    // overtaken by the old one after newer data was written over the same range.
    const server = await startServer();
    const { logger, lines } = captureLogger();
    const b = await open(server, { connections: 1, logger });
    server.faults.add({ method: 'PUT', action: { drop: 'mid-body' } });
    const err = await b.pwrite(randomBytes(4 * MiB), 0).catch((e) => e);
    expect(err).toBeInstanceOf(HttpError);
    expect(b.httpStats().retries).toBe(0);
    const ferr = await b.flush().catch((e) => e);
    expect(ferr).toBeInstanceOf(DataLossError);
    expect(ferr.message).toMatch(/PUT offset=0 length=4194304 may still be written by imageio/);
    expect(ferr.message).toMatch(/transfer NOT complete/);
    expect(lines.filter((l) => l.level === 50 && /may still be written/.test(l.msg))).toHaveLength(1);
    await expect(b.close()).rejects.toBeInstanceOf(DataLossError);
  });

  test('a PUT or zero that outlives the request timeout is not retried: flush fails', async () => {
    const server = await startServer();
    const b = await open(server, { connections: 2, requestTimeoutMs: 500, minRate: 1024 ** 3 });
    server.faults.add({ method: 'PUT', action: { delayMs: 2500 } });
    const err = await b.pwrite(Buffer.alloc(MiB, 1), 0).catch((e) => e);
    expect(err).toBeInstanceOf(HttpError);
    expect(err.failure.code).toBe('ERR_TIMEOUT');
    expect(b.httpStats().retries).toBe(0);
    await expect(b.flush()).rejects.toBeInstanceOf(DataLossError);

    const server2 = await startServer();
    const b2 = await open(server2, { connections: 2, requestTimeoutMs: 500 });
    server2.faults.add({ method: 'PATCH', op: 'zero', action: { delayMs: 2500 } });
    const zerr = await b2.zero(0, MiB).catch((e) => e);
    expect(zerr).toBeInstanceOf(HttpError);
    expect(b2.httpStats().retries).toBe(0);
    await expect(b2.flush()).rejects.toBeInstanceOf(DataLossError);
  });

  test('a GET cut mid-body is retried and the data is complete', async () => {
    const server = await startServer();
    const b = await open(server, { connections: 1 });
    const data = randomBytes(3 * MiB);
    await b.pwrite(data, MiB);
    await b.flush();
    server.faults.add({ method: 'GET', op: 'read', action: { drop: 'mid-body' } });
    expect((await b.pread(MiB, 3 * MiB)).equals(data)).toBe(true);
    expect(b.httpStats().retries).toBe(1);
  });

  test('dropped dirty connection: flush fails with DataLossError, and keeps failing', async () => {
    const server = await startServer();
    const { logger, lines } = captureLogger();
    const b = await open(server, { connections: 1, logger });
    await b.pwrite(Buffer.alloc(MiB, 1), 4 * MiB);
    server.closeIdleConnections();
    await new Promise((r) => setTimeout(r, 50));
    // Reads still work (on a fresh connection).
    expect((await b.pread(0, 4096)).length).toBe(4096);
    const e1 = await b.flush().catch((e) => e);
    expect(e1).toBeInstanceOf(DataLossError);
    expect(toNbdErrno(e1)).toBe(NbdError.EIO);
    expect(e1.message).toMatch(/4194304-5242879/);
    await b.pwrite(Buffer.alloc(4096), 0);
    await expect(b.flush()).rejects.toBeInstanceOf(DataLossError);
    const loss = lines.filter((l) => l.level === 50 && /unflushed writes/.test(l.msg));
    expect(loss).toHaveLength(1);
    await expect(b.close()).rejects.toBeInstanceOf(DataLossError);
  });

  test('socket dropped mid-PUT on a dirty connection: the write fails, and so does flush', async () => {
    const server = await startServer();
    const b = await open(server, { connections: 1 });
    await b.pwrite(Buffer.alloc(4096, 1), 0);
    server.faults.add({ method: 'PUT', action: { drop: 'mid-body' } });
    const err = await b.pwrite(Buffer.alloc(MiB, 2), MiB).catch((e) => e);
    expect(err).toBeInstanceOf(HttpError);
    expect(err.failure.code).toBeDefined();
    await expect(b.flush()).rejects.toBeInstanceOf(DataLossError);
  });

  test('a failed flush on a dirty connection is data loss, not retried', async () => {
    const server = await startServer();
    const b = await open(server, { connections: 1 });
    await b.pwrite(Buffer.alloc(4096, 1), 0);
    server.faults.add({ method: 'PATCH', op: 'flush', action: { status: 500 } });
    await expect(b.flush()).rejects.toBeInstanceOf(DataLossError);
    expect(b.httpStats().retries).toBe(0);
    await expect(b.flush()).rejects.toBeInstanceOf(DataLossError);
  });
});

describe('keep-alive', () => {
  test('idle connections survive a pause longer than the server idle timeout', async () => {
    const server = await startServer({ idleTimeoutMs: 1500 });
    const b = await open(server, { keepAliveIdleMs: 500 });
    await Promise.all(Array.from({ length: 8 }, (_, i) => b.pwrite(Buffer.alloc(MiB, i + 1), i * MiB)));
    await new Promise((r) => setTimeout(r, 2500));
    await b.flush(); // no DataLossError: the dirty connections were kept (and flushed) by the keeper
    expect(server.stats().connections.filter((c) => c.closedBy === 'idle')).toHaveLength(0);
    expect(b.httpStats().reconnects).toBe(0);
    expect((await b.pread(7 * MiB, 1))[0]).toBe(8);
  });

  test('without the keeper the server closes a dirty connection and flush reports the loss', async () => {
    const server = await startServer({ idleTimeoutMs: 1000 });
    const b = await open(server, { keepAliveIdleMs: 600_000, connections: 1 });
    await b.pwrite(Buffer.alloc(MiB, 1), 0);
    await new Promise((r) => setTimeout(r, 1500));
    expect(server.stats().connections.some((c) => c.closedBy === 'idle')).toBe(true);
    await expect(b.flush()).rejects.toBeInstanceOf(DataLossError);
  });

  test('keep-alive failures on a clean connection are not data loss and reach no request', async () => {
    const server = await startServer({ idleTimeoutMs: 60_000 });
    const { logger, lines } = captureLogger();
    const b = await open(server, { keepAliveIdleMs: 300, connections: 1, logger });
    await b.pwrite(Buffer.alloc(4096, 3), 0);
    await b.flush();
    server.faults.add({ method: 'PATCH', op: 'flush', times: 2, action: { status: 500 } });
    await new Promise((r) => setTimeout(r, 1500));
    expect(server.stats().faultsApplied).toBe(2);
    await b.pwrite(Buffer.alloc(4096, 4), 4096);
    await b.flush();
    expect((await b.pread(0, 8192)).subarray(4095, 4097)).toEqual(Buffer.from([3, 4]));
    expect(lines.filter((l) => l.level >= 50)).toEqual([]);
    await b.close();
  });

  test('an expired ticket during a pause: the next request fails with its own 403', async () => {
    const server = await startServer({ idleTimeoutMs: 60_000 });
    const b = await open(server, { keepAliveIdleMs: 300, connections: 1 });
    await b.pwrite(Buffer.alloc(4096, 1), 0);
    await b.pread(0, 4096);
    server.expireTicket();
    await new Promise((r) => setTimeout(r, 900));
    const err = await b.pread(0, 4096).catch((e) => e);
    expect(err).toBeInstanceOf(TicketError);
  });
});

describe('close', () => {
  test('close flushes dirty connections and closes every HTTP connection', async () => {
    const server = await startServer();
    const b = await open(server);
    await Promise.all(Array.from({ length: 8 }, (_, i) => b.pwrite(Buffer.alloc(MiB, 1), i * MiB)));
    await b.close();
    await waitAllClosed(server);
    const s = server.stats();
    for (const c of s.connections) expect(c.unflushedWrites).toBe(0);
    await expect(b.pread(0, 1)).rejects.toMatchObject({ errno: NbdError.ESHUTDOWN });
  });
});
