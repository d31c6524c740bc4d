/**
 * HttpConnection against a scriptable raw HTTP server (real sockets): bodies read into the
 * caller's buffer, wrong lengths, endless and trickled bodies, garbage, closes at every point,
 * and the unflushed-writes bookkeeping around closes.
 */
import * as net from 'node:net';
import { HttpConnection, type Endpoint, type ExchangeError, type ExchangeSpec } from '../../../../../src/backends/imageio/http/connection';

interface RawRequest {
  method: string;
  path: string;
  headers: Record<string, string>;
  body: Buffer;
}

type Handler = (req: RawRequest, socket: net.Socket, n: number) => void;

/** A tiny HTTP/1.1 server: parses requests with Content-Length bodies, lets the test answer. */
async function rawServer(handler: Handler, listen: string | number = 0): Promise<{ endpoint: Endpoint; connections: () => number; close: () => Promise<void> }> {
  const sockets = new Set<net.Socket>();
  let opened = 0;
  let count = 0;
  const server = net.createServer((socket) => {
    sockets.add(socket);
    opened++;
    socket.on('close', () => sockets.delete(socket));
    socket.on('error', () => {});
    let buf = Buffer.alloc(0);
    let want = -1;
    let head: Omit<RawRequest, 'body'> | undefined;
    socket.on('data', (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      for (;;) {
        if (!head) {
          const i = buf.indexOf('\r\n\r\n');
          if (i < 0) return;
          const lines = buf.toString('latin1', 0, i).split('\r\n');
          const [method, path] = lines[0].split(' ');
          const headers: Record<string, string> = {};
          for (const l of lines.slice(1)) headers[l.slice(0, l.indexOf(':')).toLowerCase()] = l.slice(l.indexOf(':') + 1).trim();
          head = { method, path, headers };
          want = Number(headers['content-length'] ?? 0);
          buf = buf.subarray(i + 4);
        }
        if (buf.length < want) return;
        const req = { ...head, body: buf.subarray(0, want) };
        buf = buf.subarray(want);
        head = undefined;
        handler(req, socket, count++);
      }
    });
  });
  await new Promise<void>((r) => server.listen(listen as never, () => r()));
  const addr = server.address();
  const endpoint: Endpoint =
    typeof listen === 'string'
      ? { kind: 'unix', display: listen, protocol: 'http:', hostname: 'localhost', port: '', socketPath: listen, connectTimeoutMs: 2000 }
      : {
          kind: 'url',
          display: 'http://127.0.0.1',
          protocol: 'http:',
          hostname: '127.0.0.1',
          port: String((addr as net.AddressInfo).port),
          connectTimeoutMs: 2000,
        };
  return {
    endpoint,
    connections: () => opened,
    close: async () => {
      for (const s of sockets) s.destroy();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
}

const cleanups: Array<() => Promise<unknown>> = [];
afterEach(async () => {
  while (cleanups.length) await cleanups.pop()!().catch(() => {});
});

async function setup(handler: Handler, listen?: string) {
  const server = await rawServer(handler, listen);
  cleanups.push(server.close);
  const lost: Array<{ describe: string; cause: unknown }> = [];
  const conn = new HttpConnection(0, server.endpoint, {
    lost: (_c, unflushed, cause) => lost.push({ describe: unflushed.describe(), cause }),
  });
  cleanups.push(() => conn.destroy());
  return { server, conn, lost };
}

const get = (into: Buffer, extra: Partial<ExchangeSpec> = {}): ExchangeSpec => ({
  method: 'GET',
  path: '/images/t',
  headers: `Range: bytes=0-${into.length - 1}\r\n`,
  ok: [206],
  into,
  maxBody: 1024,
  timeoutMs: 5000,
  ...extra,
});

const reply = (status: number, body: Buffer | string = '', extra = '') =>
  Buffer.concat([Buffer.from(`HTTP/1.1 ${status} X\r\ncontent-length: ${Buffer.byteLength(body)}\r\n${extra}\r\n`), Buffer.from(body)]);

describe('HttpConnection', () => {
  test('a GET body lands in the caller buffer; PUT bodies of several buffers arrive whole; keep-alive reuses the socket', async () => {
    const data = Buffer.alloc(3 * 1024 * 1024 + 17);
    for (let i = 0; i < data.length; i++) data[i] = (i * 7) & 0xff;
    let put: Buffer | undefined;
    const { server, conn } = await setup((req, s) => {
      if (req.method === 'PUT') {
        put = Buffer.from(req.body);
        s.write(reply(200));
      } else s.write(reply(206, data));
    });
    const into = Buffer.alloc(data.length);
    const r = await conn.request(get(into));
    expect(r.status).toBe(206);
    expect(into.equals(data)).toBe(true);
    const parts = [data.subarray(0, 5), data.subarray(5, 1 << 20), data.subarray(1 << 20)];
    const w = await conn.request({ method: 'PUT', path: '/images/t', body: parts, ok: [200], maxBody: 1024, timeoutMs: 5000 });
    expect(w.status).toBe(200);
    expect(put!.equals(data)).toBe(true);
    expect(server.connections()).toBe(1);
  });

  test.each([
    ['shorter', 100],
    ['longer', 5000],
  ])('a 206 whose Content-Length is %s than asked: bad response, connection closed, next request works', async (_n, len) => {
    const { server, conn } = await setup((req, s, n) => {
      if (n === 0) s.write(reply(206, Buffer.alloc(len)));
      else s.write(reply(206, Buffer.alloc(4096, 9)));
    });
    const err = (await conn.request(get(Buffer.alloc(4096))).catch((e) => e)) as ExchangeError;
    expect(err.code).toBe('ERR_BAD_RESPONSE');
    expect(err.sent).toBe(true);
    expect(err.message).toMatch(new RegExp(`expected a body of 4096 bytes, the server announced ${len} bytes`));
    const into = Buffer.alloc(4096);
    await conn.request(get(into));
    expect(into[4095]).toBe(9);
    expect(server.connections()).toBe(2);
  });

  test.each([
    ['chunked', 'transfer-encoding: chunked\r\n'],
    ['close-delimited', ''],
  ])('an endless %s 500 body is cut at maxBody: memory stays bounded, the connection closes', async (kind, te) => {
    let stop = false;
    const { conn } = await setup((_req, s) => {
      s.write(`HTTP/1.1 500 Internal\r\n${te}\r\n`);
      const piece = Buffer.alloc(64 * 1024, 0x41);
      const chunk = kind === 'chunked' ? Buffer.concat([Buffer.from('10000\r\n'), piece, Buffer.from('\r\n')]) : piece;
      const pump = () => {
        while (!stop && !s.destroyed && s.write(chunk));
        if (!stop && !s.destroyed) s.once('drain', pump);
      };
      pump();
    });
    const rss0 = process.memoryUsage().rss;
    const r = await conn.request(get(Buffer.alloc(4096), { maxBody: 64 * 1024 }));
    stop = true;
    expect(r.status).toBe(500);
    expect(r.truncated).toBe(true);
    expect(r.body.length).toBe(64 * 1024);
    expect(process.memoryUsage().rss - rss0).toBeLessThan(64 * 1024 * 1024);
    await new Promise((r) => setTimeout(r, 50));
    expect(conn.connected).toBe(false);
  });

  test('a complete chunked error body is read and the connection kept', async () => {
    const { server, conn } = await setup((_req, s) => {
      s.write('HTTP/1.1 500 Internal\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6;x=y\r\n world\r\n0\r\n\r\n');
    });
    const r = await conn.request(get(Buffer.alloc(10)));
    expect(r).toMatchObject({ status: 500, truncated: false });
    expect(r.body.toString()).toBe('hello world');
    await conn.request(get(Buffer.alloc(10)));
    expect(server.connections()).toBe(1);
  });

  test.each([
    ['garbage instead of a status line', 'SSH-2.0-OpenSSH_9.2\r\n\r\n', 'ERR_BAD_RESPONSE'],
    ['a bad status line', 'HTTP/1.1 2000 OK\r\n\r\n', 'ERR_BAD_RESPONSE'],
    ['two different Content-Lengths', 'HTTP/1.1 206 OK\r\ncontent-length: 4\r\ncontent-length: 5\r\n\r\n', 'ERR_BAD_RESPONSE'],
    ['a Content-Length that is not a number', 'HTTP/1.1 500 OK\r\ncontent-length: 12abc\r\n\r\n', 'ERR_BAD_RESPONSE'],
    ['a huge Content-Length', 'HTTP/1.1 500 OK\r\ncontent-length: 99999999999999999999\r\n\r\n', 'ERR_BAD_RESPONSE'],
  ])('%s: a bad response, no crash', async (_name, text, code) => {
    const { conn } = await setup((_req, s) => s.write(text));
    const err = (await conn.request(get(Buffer.alloc(4))).catch((e) => e)) as ExchangeError;
    expect(err.code).toBe(code);
    expect(err.sent).toBe(true);
  });

  test('interim responses (100 Continue, 103 Early Hints) before the final one are skipped; the connection is kept', async () => {
    const { server, conn } = await setup((_req, s) => {
      s.write('HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n');
      s.write(reply(206, 'abcd'));
    });
    const into = Buffer.alloc(4);
    const r = await conn.request(get(into));
    expect(r.status).toBe(206);
    expect(into.toString()).toBe('abcd');
    await conn.request(get(Buffer.alloc(4)));
    expect(server.connections()).toBe(1);
  });

  test('a head with more header lines than the limit: a bad response, no crash', async () => {
    const { conn } = await setup((_req, s) => s.write(`HTTP/1.1 206 OK\r\n${'x-a: 1\r\n'.repeat(200)}content-length: 4\r\n\r\nabcd`));
    const err = (await conn.request(get(Buffer.alloc(4))).catch((e) => e)) as ExchangeError;
    expect(err.code).toBe('ERR_BAD_RESPONSE');
    expect(err.message).toMatch(/more than 100 header lines/);
  });

  test('a close in the middle of the headers: the request fails, sent', async () => {
    const { conn } = await setup((_req, s) => {
      s.write('HTTP/1.1 206 Partial\r\ncontent-le');
      setTimeout(() => s.destroy(), 20);
    });
    const err = (await conn.request(get(Buffer.alloc(4))).catch((e) => e)) as ExchangeError;
    expect(err.sent).toBe(true);
    expect(err.message).toMatch(/closed the connection before answering/);
  });

  test('the deadline covers the whole exchange: a trickled body fails on time', async () => {
    const { conn } = await setup((_req, s) => {
      s.write('HTTP/1.1 206 Partial\r\ncontent-length: 40\r\n\r\n');
      const t = setInterval(() => (s.destroyed ? clearInterval(t) : s.write('x')), 200);
      s.on('close', () => clearInterval(t));
    });
    const t0 = Date.now();
    const err = (await conn.request(get(Buffer.alloc(40), { timeoutMs: 1000 })).catch((e) => e)) as ExchangeError;
    const took = Date.now() - t0;
    expect(err.code).toBe('ERR_TIMEOUT');
    expect(took).toBeGreaterThanOrEqual(900);
    expect(took).toBeLessThan(5000);
  });

  test('a connection that cannot be made: nothing was sent', async () => {
    const conn = new HttpConnection(0, {
      kind: 'unix',
      display: 'x',
      protocol: 'http:',
      hostname: 'localhost',
      port: '',
      socketPath: `/tmp/imageio-nbd-missing-${process.pid}.sock`,
      connectTimeoutMs: 1000,
    });
    const err = (await conn.request(get(Buffer.alloc(4))).catch((e) => e)) as ExchangeError;
    expect(err.sent).toBe(false);
    expect(err.code).toBe('ENOENT');
  });

  test('an abstract unix socket (imageio daemon default) works', async () => {
    const name = `\0/imageio-nbd-test/${process.pid}`;
    const { conn } = await setup((_req, s) => s.write(reply(206, 'abcd')), name);
    const into = Buffer.alloc(4);
    await conn.request(get(into));
    expect(into.toString()).toBe('abcd');
  });

  test('unsolicited bytes while idle: the socket is dropped and the next request reconnects', async () => {
    let sock: net.Socket | undefined;
    const { server, conn } = await setup((_req, s) => {
      sock = s;
      s.write(reply(206, 'abcd'));
    });
    await conn.request(get(Buffer.alloc(4)));
    sock!.write('HTTP/1.1 200 OK\r\n\r\n');
    await new Promise((r) => setTimeout(r, 100));
    expect(conn.connected).toBe(false);
    await conn.request(get(Buffer.alloc(4)));
    expect(server.connections()).toBe(2);
  });

  test('unflushed writes: a close right after a successful flush is not a loss; a close after a write is', async () => {
    const { conn, lost } = await setup((req, s) => {
      if (req.method === 'PATCH') s.end(reply(200, '', 'connection: close\r\n'));
      else s.write(reply(200));
    });
    const put = (offset: number): ExchangeSpec => ({
      method: 'PUT',
      path: '/images/t',
      body: [Buffer.alloc(4096)],
      ok: [200],
      maxBody: 1024,
      timeoutMs: 5000,
      effect: { kind: 'unflushed', offset, length: 4096 },
    });
    await conn.request(put(0));
    expect(conn.unflushed.describe()).toBe('1 request, 4096 bytes in 0-4095');
    await conn.request({ method: 'PATCH', path: '/images/t', body: [Buffer.from('{"op":"flush"}')], ok: [200], maxBody: 1024, timeoutMs: 5000, effect: { kind: 'flushed' } });
    await new Promise((r) => setTimeout(r, 100));
    expect(conn.connected).toBe(false);
    expect(lost).toEqual([]);
    await conn.request(put(8192));
    await conn.reset();
    expect(lost).toHaveLength(1);
    expect(lost[0].describe).toBe('1 request, 4096 bytes in 8192-12287');
  });
});
