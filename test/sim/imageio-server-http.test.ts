import { Client } from 'undici';
import fs from 'node:fs';
import { abstractSocketName } from '../../sim/imageio-server/imageio-server';
import { head, rawRequest, startServer } from '../helpers/imageio-raw';

const MiB = 1 << 20;
const SIZE = 4 * MiB;
const T = '/images/test-ticket';

async function withServer(
  opts: Parameters<typeof startServer>[1],
  fn: (s: Awaited<ReturnType<typeof startServer>>, client: Client) => Promise<void>,
  data: [number, Buffer][] = [],
) {
  const s = await startServer(SIZE, opts, data);
  const client = new Client(`http://127.0.0.1:${s.port}`);
  try {
    await fn(s, client);
  } finally {
    await client.close();
    await s.done();
  }
}

async function text(client: Client, opts: Parameters<Client['request']>[0]) {
  const r = await client.request(opts);
  return { status: r.statusCode, headers: r.headers, body: await r.body.text() };
}

describe('OPTIONS', () => {
  test('nbd backend with a unix socket: exact body, key order and allow', async () => {
    const unix = `/tmp/imageio-opt-${process.pid}.sock`;
    await withServer({ unix }, async (_s, client) => {
      const r = await text(client, { path: T, method: 'OPTIONS' });
      expect(r.status).toBe(200);
      expect(r.headers.allow).toBe('OPTIONS,GET,PUT,PATCH');
      expect(r.headers['content-type']).toBe('application/json');
      expect(r.headers.server).toBe('imageio/2.5.3');
      expect(r.body).toBe(
        `{"unix_socket": "${unix}", "features": ["checksum", "extents", "flush", "zero"], "max_readers": 8, "max_writers": 8}\n`,
      );
    });
  });

  test('abstract local socket: reported as imageio reports "\\u0000/org/ovirt/imageio"', async () => {
    const unix = abstractSocketName();
    expect(unix).toMatch(new RegExp(`^\\0/org/ovirt/imageio/${process.pid}-\\d+$`));
    expect(abstractSocketName()).not.toBe(unix); // one per server, even in one process
    await withServer({ unix }, async (s, client) => {
      const r = await text(client, { path: T, method: 'OPTIONS' });
      // JSON with ensure_ascii: the NUL byte is the 6 characters \u0000, as the real daemon sends it.
      expect(r.body).toBe(
        `{"unix_socket": "\\u0000${unix.slice(1)}", "features": ["checksum", "extents", "flush", "zero"], "max_readers": 8, "max_writers": 8}\n`,
      );
      expect(JSON.parse(r.body).unix_socket).toBe(unix);
      expect(s.server.unixSocket).toBe(unix);
    });
  });

  test('file backend reports max_writers 1; no unix_socket without a local service', async () => {
    await withServer({ backend: 'file' }, async (_s, client) => {
      const r = await text(client, { path: T, method: 'OPTIONS' });
      expect(r.body).toBe('{"features": ["checksum", "extents", "flush", "zero"], "max_readers": 8, "max_writers": 1}\n');
    });
  });

  test('readonly ticket, /images/*, and unix socket not advertised', async () => {
    await withServer({ readonly: true, unix: `/tmp/imageio-ro-${process.pid}.sock`, advertiseUnixSocket: false }, async (_s, client) => {
      const r = await text(client, { path: T, method: 'OPTIONS' });
      expect(r.headers.allow).toBe('OPTIONS,GET');
      expect(r.body).toBe('{"features": ["checksum", "extents"], "max_readers": 8, "max_writers": 8}\n');
      const star = await text(client, { path: '/images/*', method: 'OPTIONS' });
      expect(star.headers.allow).toBe('OPTIONS,GET,PUT,PATCH');
      expect(star.body).toBe('{"features": ["checksum", "extents", "flush", "zero"]}\n');
      const put = await text(client, { path: T, method: 'PUT', body: Buffer.alloc(10) });
      expect(put.status).toBe(403);
      expect(put.body).toBe('You are not allowed to access this resource: Transfer=(ticket/test-ticket) forbids write\n');
    });
  });

  test('legacy servers', async () => {
    await withServer({ legacy: 'options-405' }, async (_s, client) => {
      const r = await text(client, { path: T, method: 'OPTIONS' });
      expect(r.status).toBe(405);
      expect(r.body).toBe(`Method 'OPTIONS' not defined for '${T}'\n`);
    });
    await withServer({ legacy: 'options-204' }, async (_s, client) => {
      const r = await text(client, { path: T, method: 'OPTIONS' });
      expect(r.status).toBe(204);
      expect((await text(client, { path: T, method: 'GET', headers: { range: 'bytes=0-0' } })).status).toBe(206);
    });
  });
});

describe('GET, PUT, PATCH round trips', () => {
  test('PUT then GET ranges and the whole image', async () => {
    await withServer({}, async (s, client) => {
      const data = Buffer.alloc(3 * MiB + 17);
      for (let i = 0; i < data.length; i++) data[i] = (i * 7 + 3) & 0xff;
      const put = await text(client, {
        path: `${T}?flush=n`,
        method: 'PUT',
        body: data,
        headers: { 'content-range': `bytes 1000-${1000 + data.length - 1}/*` },
      });
      expect(put).toMatchObject({ status: 200, body: '' });
      expect(put.headers['content-length']).toBe('0');
      const r = await client.request({ path: T, method: 'GET', headers: { range: `bytes=1000-${1000 + data.length - 1}` } });
      expect(r.statusCode).toBe(206);
      expect(r.headers['content-range']).toBe(`bytes 1000-${1000 + data.length - 1}/${SIZE}`);
      expect(r.headers['content-type']).toBe('application/octet-stream');
      expect(r.headers['content-disposition']).toBe('attachment');
      expect(Buffer.from(await r.body.arrayBuffer()).equals(data)).toBe(true);
      const open = await client.request({ path: T, method: 'GET', headers: { range: `bytes=${SIZE - 10}-` } });
      expect(open.statusCode).toBe(206);
      expect(open.headers['content-range']).toBe(`bytes ${SIZE - 10}-${SIZE - 1}/${SIZE}`);
      expect((await open.body.arrayBuffer()).byteLength).toBe(10);
      const whole = await client.request({ path: T, method: 'GET' });
      expect(whole.statusCode).toBe(200);
      expect(whole.headers['content-range']).toBeUndefined();
      const all = Buffer.from(await whole.body.arrayBuffer());
      expect(all.length).toBe(SIZE);
      expect(all.subarray(1000, 1000 + data.length).equals(data)).toBe(true);
      expect(fs.readFileSync(s.image).subarray(1000, 1000 + data.length).equals(data)).toBe(true);
    });
  });

  test('only the first byte of Content-Range counts; no Content-Range writes at 0', async () => {
    await withServer({}, async (s, client) => {
      const body = Buffer.alloc(4096, 0xab);
      expect((await text(client, { path: T, method: 'PUT', body, headers: { 'content-range': 'bytes 8192-8192/*' } })).status).toBe(200);
      expect((await text(client, { path: T, method: 'PUT', body: Buffer.from('head') })).status).toBe(200);
      const img = fs.readFileSync(s.image);
      expect(img.subarray(8192, 8192 + 4096).equals(body)).toBe(true);
      expect(img[8192 + 4096]).toBe(0);
      expect(img.subarray(0, 4).toString()).toBe('head');
    });
  });

  test('PATCH zero and flush, and extents for nbd and file backends', async () => {
    const data: [number, Buffer][] = [[0, Buffer.alloc(100, 1)], [2 * MiB, Buffer.alloc(MiB, 2)]];
    await withServer(
      {},
      async (s, client) => {
        const ext = await text(client, { path: `${T}/extents`, method: 'GET' });
        expect(ext.body).toBe(
          // The start-up scan reports 4 KiB blocks, as qemu-nbd's allocation does: 100 bytes at 0
          // are one 4 KiB data extent.
          `[{"start": 0, "length": 4096, "zero": false, "hole": false}, ` +
            `{"start": 4096, "length": ${2 * MiB - 4096}, "zero": true, "hole": true}, ` +
            `{"start": ${2 * MiB}, "length": ${MiB}, "zero": false, "hole": false}, ` +
            `{"start": ${3 * MiB}, "length": ${MiB}, "zero": true, "hole": true}]\n`,
        );
        const z = await text(client, {
          path: T,
          method: 'PATCH',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({ op: 'zero', offset: 2 * MiB, size: MiB, flush: true }),
        });
        expect(z).toMatchObject({ status: 200, body: '' });
        expect(fs.readFileSync(s.image).subarray(2 * MiB, 3 * MiB).every((b) => b === 0)).toBe(true);
        const unaligned = await text(client, { path: T, method: 'PATCH', body: '{"op": "zero", "offset": 10, "size": 1000}' });
        expect(unaligned.status).toBe(200);
        expect(fs.readFileSync(s.image).subarray(0, 12)).toEqual(Buffer.from([1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0]));
        const ext2 = JSON.parse((await text(client, { path: `${T}/extents?context=zero`, method: 'GET' })).body);
        expect(ext2).toEqual([
          { start: 0, length: 10, zero: false, hole: false },
          { start: 10, length: 1000, zero: true, hole: true },
          { start: 1010, length: 4096 - 1010, zero: false, hole: false },
          { start: 4096, length: 4 * MiB - 4096, zero: true, hole: true },
        ]);
        expect((await text(client, { path: T, method: 'PATCH', body: '{"op": "flush"}' })).status).toBe(200);
        const dirty = await text(client, { path: `${T}/extents?context=dirty`, method: 'GET' });
        expect(dirty).toMatchObject({ status: 404, body: 'Ticket does not support dirty extents\n' });
        expect(s.server.stats().ops).toMatchObject({ zero: 2, flush: 1, extents: 2 });
      },
      data,
    );
    await withServer({ backend: 'file' }, async (_s, client) => {
      const ext = await text(client, { path: `${T}/extents`, method: 'GET' });
      expect(ext.body).toBe(`[{"start": 0, "length": ${SIZE}, "zero": false, "hole": false}]\n`);
    });
  });

  test('GET /info/ on TCP only', async () => {
    const unix = `/tmp/imageio-info-${process.pid}.sock`;
    await withServer({ unix }, async (s, client) => {
      expect((await text(client, { path: '/info/', method: 'GET' })).body).toBe('{"version": "2.5.3"}\n');
      const local = await rawRequest({ socketPath: unix }, head('GET', '/info/'));
      expect(local.responses[0].status).toBe(404);
      expect(local.responses[0].body.toString()).toBe("No handler for '/info/'\n");
      const opts = await rawRequest({ socketPath: unix }, head('OPTIONS', T));
      expect(opts.responses[0].status).toBe(200);
      expect(s.server.unixSocket).toBe(unix);
    });
  });
});

/** Rows of imageio.md section 4, sent raw so that the exact bytes and the close are visible. */
describe('error table', () => {
  const cases: [string, string | string[], number, string, boolean, Record<string, string>?][] = [
    ['unknown ticket', head('GET', '/images/no-such-ticket'), 403, 'You are not allowed to access this resource: No such ticket no-such-ticket', true],
    ['PUT past the end', head('PUT', T, { 'content-range': `bytes ${SIZE - 2}-${SIZE + 1}/*`, 'content-length': 4 }) + 'abcd', 416, 'Requested range out of allowed range', true, { 'content-range': `bytes */${SIZE}` }],
    ['GET range past the end', head('GET', T, { range: `bytes=${SIZE - 100}-${SIZE + 100}` }), 416, 'Requested range out of allowed range', false, { 'content-range': `bytes */${SIZE}` }],
    ['GET range far past the end', head('GET', T, { range: 'bytes=2000000000-2000000100' }), 416, 'Requested range out of allowed range', false],
    ['PATCH zero past the end', patch(`{"op": "zero", "offset": ${SIZE}, "size": 1}`), 416, 'Requested range out of allowed range', false, { 'content-range': `bytes */${SIZE}` }],
    ['suffix range', head('GET', T, { range: 'bytes=-100' }), 416, 'suffix-byte-range-spec not supported yet', false],
    ['multiple ranges', head('GET', T, { range: 'bytes=0-1,5-6' }), 416, "Cannot satisfy range 'bytes=0-1,5-6', invalid range or multiple ranges", false],
    ['first > last', head('GET', T, { range: 'bytes=10-5' }), 416, "Cannot satisfy range 'bytes=10-5', first > last", false],
    ['bad Content-Range syntax', head('PUT', T, { 'content-range': 'bytes=0-4095', 'content-length': 4 }) + 'abcd', 400, "Invalid Content-Range 'bytes=0-4095'", true],
    ['Content-Range first > last', head('PUT', T, { 'content-range': 'bytes 4095-0/*', 'content-length': 4 }) + 'abcd', 400, "Invalid Content-Range 'bytes 4095-0/*', first > last", true],
    ['PUT without Content-Length', head('PUT', T), 400, 'Content-Length header is required', false],
    ['flush=maybe', head('PUT', `${T}?flush=maybe`, { 'content-length': 4 }) + 'abcd', 400, "Unsupported value 'maybe' for 'flush', expecting one of ['n', 'y']", true],
    ['malformed JSON', patch('{"op":"zero","offset":0,'), 400, 'Invalid JSON message Expecting property name enclosed in double quotes: line 1 column 25 (char 24)', false],
    ['op trim', patch('{"op": "trim", "size": 1}'), 400, "Unsupported value 'trim' for 'op', expecting one of ['flush', 'zero']", false],
    ['no op', patch('{"size": 1}'), 400, 'Missing required value for op', false],
    ['zero without size', patch('{"op": "zero"}'), 400, "Missing required value for 'size'", false],
    ['offset -1', patch('{"op": "zero", "size": 1, "offset": -1}'), 400, 'Invalid value -1 < 0', false],
    ['offset "0"', patch('{"op": "zero", "size": 1, "offset": "0"}'), 400, "Integer required '0'", false],
    ['flush "yes"', patch('{"op": "zero", "size": 1, "flush": "yes"}'), 400, "Boolean required 'yes'", false],
    ['empty PATCH body', patch(''), 400, 'Invalid JSON message Expecting value: line 1 column 1 (char 0)', false],
    ['PATCH without Content-Length', head('PATCH', T), 400, 'Invalid JSON message Expecting value: line 1 column 1 (char 0)', false],
    ['JSON array', patch('[1,2]'), 500, 'Server failed to perform the request, check logs', false],
    ['extents context=bogus', head('GET', `${T}/extents?context=bogus`), 400, "Unsupported value 'bogus' for 'context', expecting one of ['dirty', 'zero']", false],
    ['DELETE', head('DELETE', T), 405, `Method 'DELETE' not defined for '${T}'`, false],
    ['POST with a body', head('POST', T, { 'content-length': 2 }) + '{}', 405, `Method 'POST' not defined for '${T}'`, true],
    ['unknown path', head('GET', '/nosuchpath'), 404, "No handler for '/nosuchpath'", false],
    ['empty ticket', head('GET', '/images/'), 400, 'Ticket id is required', false],
    ['Content-Length abc (Node parser: closes)', head('PUT', T, { 'content-length': 'abc' }), 400, "Invalid Content-Length: 'abc'", true],
    ['unknown method FOO (Node parser: closes)', head('FOO', T), 405, "Invalid method 'FOO'", true],
  ];

  function patch(body: string): string {
    return head('PATCH', T, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) }) + body;
  }

  let s: Awaited<ReturnType<typeof startServer>>;
  beforeAll(async () => {
    s = await startServer(SIZE);
  });
  afterAll(() => s.done());

  // Rest parameters: jest would take a 6th declared parameter for a done callback.
  test.each(cases)('%s', async (...row) => {
    const [, req, status, body, close, headers] = row;
    const { responses, closed } = await rawRequest({ port: s.port }, req);
    expect(responses).toHaveLength(1);
    const r = responses[0];
    expect(r.status).toBe(status);
    expect(r.body.toString()).toBe(`${body}\n`);
    expect(r.headers['content-type']).toBe('text/plain; charset=UTF-8');
    expect(r.headers['content-length']).toBe(String(Buffer.byteLength(body) + 1));
    expect(r.headers.server).toBe('imageio/2.5.3');
    expect(r.headers.date).toBeDefined();
    expect(r.rawNames.every((n) => n === n.toLowerCase())).toBe(true);
    expect(r.headers.connection === 'close').toBe(close);
    expect(closed).toBe(close);
    for (const [k, v] of Object.entries(headers ?? {})) expect(r.headers[k]).toBe(v);
  });

  test('HEAD is 405 (no body, as Node sends none for HEAD)', async () => {
    const { responses, closed } = await rawRequest({ port: s.port }, head('HEAD', T));
    expect(responses[0].status).toBe(405);
    expect(closed).toBe(false);
  });

  test('PUT without Content-Length: the body is parsed as the next request, then 400 and close', async () => {
    const { responses, closed } = await rawRequest({ port: s.port }, head('PUT', T) + 'some body bytes\r\n\r\n');
    expect(responses.map((r) => r.status)).toEqual([400, 400]);
    expect(responses[0].body.toString()).toBe('Content-Length header is required\n');
    expect(responses[1].headers['content-type']).toBe('text/html;charset=utf-8');
    expect(closed).toBe(true);
  });

  test('chunked PUT gets 400 "Content-Length header is required" and the connection closes', async () => {
    const { responses, closed } = await rawRequest(
      { port: s.port },
      head('PUT', T, { 'transfer-encoding': 'chunked' }) + '4\r\nabcd\r\n0\r\n\r\n',
    );
    expect(responses[0].status).toBe(400);
    expect(responses[0].body.toString()).toBe('Content-Length header is required\n');
    expect(closed).toBe(true);
  });

  test('short body with half-close: 400 "Requested N bytes, available M bytes" and close', async () => {
    const { responses, closed } = await rawRequest(
      { port: s.port },
      head('PUT', T, { 'content-length': 8192 }) + 'x'.repeat(4096),
      { halfClose: true },
    );
    expect(responses).toHaveLength(1);
    expect(responses[0].status).toBe(400);
    expect(responses[0].body.toString()).toBe('Requested 8192 bytes, available 4096 bytes\n');
    expect(responses[0].headers.connection).toBe('close');
    expect(closed).toBe(true);
    expect(fs.readFileSync(s.image).subarray(0, 4096).toString()).toBe('x'.repeat(4096));
  });
});

describe('connection behaviour', () => {
  test('keep-alive across OPTIONS, GET, PATCH on one connection; ?close=y closes', async () => {
    await withServer({}, async (s, client) => {
      await text(client, { path: T, method: 'OPTIONS' });
      await text(client, { path: T, method: 'GET', headers: { range: 'bytes=0-9' } });
      await text(client, { path: T, method: 'PATCH', body: '{"op": "flush"}' });
      expect(s.server.stats().connectionsOpened).toBe(1);
      const { responses, closed } = await rawRequest({ port: s.port }, head('GET', `${T}?close=y`, { range: 'bytes=0-0' }));
      expect(responses[0].status).toBe(206);
      expect(responses[0].headers.connection).toBe('close');
      expect(closed).toBe(true);
    });
  });

  test('pipelining: requests are answered in order, one after another', async () => {
    await withServer({}, async (s) => {
      const put = (off: number, fill: number) =>
        head('PUT', `${T}?flush=n`, { 'content-range': `bytes ${off}-${off + 4095}/*`, 'content-length': 4096 }) +
        String.fromCharCode(fill).repeat(4096);
      const { responses, closed } = await rawRequest({ port: s.port }, [
        head('OPTIONS', T) + put(0, 65) + put(4096, 66) + put(8192, 67),
        head('GET', T, { range: 'bytes=4090-8200' }),
        head('PATCH', T, { 'content-length': 15 }) + '{"op": "flush"}',
        head('GET', T, { range: 'bytes=0-0' }),
      ]);
      expect(responses.map((r) => r.status)).toEqual([200, 200, 200, 200, 206, 200, 206]);
      expect(responses[4].body.toString()).toBe('A'.repeat(6) + 'B'.repeat(4096) + 'C'.repeat(9));
      expect(closed).toBe(false);
      expect(s.server.stats().connections[0]).toMatchObject({ requests: 7, writes: 3, flushes: 1, unflushedWrites: 0 });
    });
  });

  test('Expect: 100-continue: 100 first, then 200; unknown ticket gets 100 then 403 and close', async () => {
    await withServer({}, async (s) => {
      const ok = await rawRequest({ port: s.port }, [
        head('PUT', T, { 'content-length': 4, expect: '100-continue' }),
        'abcd',
      ]);
      expect(ok.responses.map((r) => r.status)).toEqual([100, 200]);
      const bad = await rawRequest({ port: s.port }, head('PUT', '/images/nope', { 'content-length': 4, expect: '100-continue' }));
      expect(bad.responses.map((r) => r.status)).toEqual([100, 403]);
      expect(bad.closed).toBe(true);
    });
  });
});
