import { Client } from 'undici';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import { ImageioServer } from '../../sim/imageio-server';
import { abstractSocketName } from '../../sim/imageio-server/imageio-server';
import { head, makeImage, rawExchange, rawRequest, startServer, tempDir } from '../helpers/imageio-raw';

const MiB = 1 << 20;
const SIZE = 4 * MiB;
const T = '/images/test-ticket';

function sleep(ms: number) {
  return new Promise((r) => setTimeout(r, ms));
}

async function req(client: Client, opts: Parameters<Client['request']>[0]) {
  const r = await client.request(opts);
  return { status: r.statusCode, headers: r.headers, body: await r.body.text() };
}

test('per-connection flush accounting: flush covers only its own connection', async () => {
  const s = await startServer(SIZE);
  const a = new Client(`http://127.0.0.1:${s.port}`);
  const b = new Client(`http://127.0.0.1:${s.port}`);
  try {
    await req(a, { path: `${T}?flush=n`, method: 'PUT', body: Buffer.alloc(4096, 1) });
    await req(b, { path: `${T}?flush=n`, method: 'PUT', body: Buffer.alloc(8192, 2), headers: { 'content-range': 'bytes 65536-73727/*' } });
    await req(b, { path: T, method: 'PATCH', body: '{"op": "zero", "offset": 0, "size": 100}' });
    let conns = s.server.stats().connections;
    expect(conns).toHaveLength(2);
    expect(conns[0]).toMatchObject({ writes: 1, unflushedWrites: 1, unflushedBytes: 4096, flushes: 0, authorized: true });
    expect(conns[1]).toMatchObject({ writes: 1, zeros: 1, unflushedWrites: 2, unflushedBytes: 8292 });
    await req(a, { path: T, method: 'PATCH', body: '{"op": "flush"}' });
    conns = s.server.stats().connections;
    expect(conns[0]).toMatchObject({ unflushedWrites: 0, flushes: 1 });
    expect(conns[1]).toMatchObject({ unflushedWrites: 2, flushes: 0 });
    // PUT with the default flush=y flushes its own connection.
    await req(b, { path: T, method: 'PUT', body: Buffer.alloc(10) });
    expect(s.server.stats().connections[1]).toMatchObject({ unflushedWrites: 0, flushes: 1, writes: 2 });
    expect(s.server.stats()).toMatchObject({ bytesWritten: 4096 + 8192 + 10, flushes: 2, methods: { PUT: 3, PATCH: 2 } });
  } finally {
    await a.close();
    await b.close();
    await s.done();
  }
});

test('idle timeout closes connections with nothing in flight; closeIdleConnections closes now', async () => {
  const s = await startServer(SIZE, { idleTimeoutMs: 1000 });
  try {
    const t0 = Date.now();
    const r = await rawExchange({ port: s.port }, head('OPTIONS', T), { quietMs: 5000 });
    expect(r.closed).toBe(true);
    const elapsed = Date.now() - t0;
    expect(elapsed).toBeGreaterThanOrEqual(900);
    expect(elapsed).toBeLessThan(4000);
    expect(s.server.stats().connections[0].closedBy).toBe('idle');

    const pending = rawExchange({ port: s.port }, head('OPTIONS', T), { quietMs: 5000 });
    await sleep(200);
    expect(s.server.closeIdleConnections()).toBe(1);
    expect((await pending).closed).toBe(true);
  } finally {
    await s.done();
  }
});

test('expired and cancelled tickets give 403 and close', async () => {
  const s = await startServer(SIZE, { transferId: 'xfer-1' });
  try {
    s.server.expireTicket();
    const e = await rawRequest({ port: s.port }, head('GET', T, { range: 'bytes=0-0' }));
    expect(e.responses[0].status).toBe(403);
    expect(e.responses[0].body.toString()).toBe('You are not allowed to access this resource: Transfer=xfer-1 expired\n');
    expect(e.closed).toBe(true);
    s.server.cancelTicket();
    const c = await rawRequest({ port: s.port }, head('OPTIONS', T));
    expect(c.responses[0].body.toString()).toBe('You are not allowed to access this resource: Transfer=xfer-1 was canceled\n');
  } finally {
    await s.done();
  }
  const short = await startServer(SIZE, { ticketTimeoutS: 1 });
  try {
    expect((await rawRequest({ port: short.port }, head('OPTIONS', T))).responses[0].status).toBe(200);
    await sleep(1200);
    expect((await rawRequest({ port: short.port }, head('OPTIONS', T))).responses[0].status).toBe(403);
  } finally {
    await short.done();
  }
});

test('TLS with a CA made by openssl', async () => {
  const tmp = tempDir();
  try {
    const f = tmp.file;
    const run = (args: string[]) => execFileSync('openssl', args, { cwd: tmp.dir, stdio: 'pipe' });
    run(['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', f('ca.key'), '-out', f('ca.pem'), '-days', '1', '-subj', '/CN=test-ca']);
    run(['req', '-newkey', 'rsa:2048', '-nodes', '-keyout', f('server.key'), '-out', f('server.csr'), '-subj', '/CN=127.0.0.1']);
    fs.writeFileSync(f('ext.cnf'), 'subjectAltName=IP:127.0.0.1\n');
    run(['x509', '-req', '-in', f('server.csr'), '-CA', f('ca.pem'), '-CAkey', f('ca.key'), '-CAcreateserial', '-out', f('server.pem'), '-days', '1', '-extfile', f('ext.cnf')]);
    const image = makeImage(f('disk.raw'), SIZE, [[0, Buffer.from('secret')]]);
    const server = new ImageioServer({ image, ticket: 'tls', tls: { cert: fs.readFileSync(f('server.pem')), key: fs.readFileSync(f('server.key')) } });
    await server.start();
    const url = new URL(server.url);
    expect(url.protocol).toBe('https:');
    const client = new Client(url.origin, { connect: { ca: fs.readFileSync(f('ca.pem')) } });
    try {
      const r = await req(client, { path: url.pathname, method: 'GET', headers: { range: 'bytes=0-5' } });
      expect(r).toMatchObject({ status: 206, body: 'secret' });
      expect((await req(client, { path: url.pathname, method: 'PUT', body: 'public' })).status).toBe(200);
      expect(server.stats().connections).toHaveLength(1);
      // Without the test CA the certificate is not trusted.
      const untrusting = new Client(url.origin);
      await expect(untrusting.request({ path: '/info/', method: 'GET' })).rejects.toThrow();
      await untrusting.close();
    } finally {
      await client.close();
      await server.close();
    }
    expect(fs.readFileSync(image).subarray(0, 6).toString()).toBe('public');
  } finally {
    tmp.cleanup();
  }
});

test('unix socket serves /images with keep-alive', async () => {
  const tmp = tempDir();
  const sock = tmp.file('local.sock');
  const s = await startServer(SIZE, { unix: sock });
  const client = new Client('http://localhost', { socketPath: sock });
  try {
    expect((await req(client, { path: T, method: 'PUT', body: 'local' })).status).toBe(200);
    const r = await req(client, { path: T, method: 'GET', headers: { range: 'bytes=0-4' } });
    expect(r.body).toBe('local');
    const conns = s.server.stats().connections;
    expect(conns).toHaveLength(1);
    expect(conns[0].service).toBe('unix');
  } finally {
    await client.close();
    await s.done();
    tmp.cleanup();
  }
});

test('abstract unix socket: serves /images, leaves no file, and is gone after close', async () => {
  const unix = abstractSocketName();
  const s = await startServer(SIZE, { unix });
  const client = new Client('http://localhost', { socketPath: unix });
  try {
    expect((await req(client, { path: T, method: 'PUT', body: 'abstract' })).status).toBe(200);
    expect((await req(client, { path: T, method: 'GET', headers: { range: 'bytes=0-7' } })).body).toBe('abstract');
    expect(s.server.stats().connections.map((c) => c.service)).toEqual(['unix']);
    // Nothing in the file system: a relative path "\0/org/..." was not created either.
    expect(fs.existsSync(unix)).toBe(false);
    expect(fs.existsSync(unix.slice(1))).toBe(false);
  } finally {
    await client.close();
    await s.done();
  }
  // Closed: nothing listens on the name any more.
  const after = await new Promise<string>((resolve) => {
    const sock = net.connect(unix);
    sock.once('connect', () => {
      sock.destroy();
      resolve('connected');
    });
    sock.once('error', (e: NodeJS.ErrnoException) => resolve(e.code ?? 'error'));
  });
  expect(after).toBe('ECONNREFUSED');
});

describe('fault injection', () => {
  let s: Awaited<ReturnType<typeof startServer>>;
  beforeEach(async () => {
    s = await startServer(SIZE);
  });
  afterEach(() => s.done());

  test('status: answers without performing the op, keeps the connection, honours after/times', async () => {
    s.server.faults.add({ method: 'PUT', after: 1, action: { status: 500 } });
    const put = (fill: number) =>
      head('PUT', T, { 'content-length': 4 }) + String.fromCharCode(fill).repeat(4);
    const { responses, closed } = await rawRequest({ port: s.port }, [put(65), put(66), put(67)]);
    expect(responses.map((r) => r.status)).toEqual([200, 500, 200]);
    expect(responses[1].body.toString()).toBe('Server failed to perform the request, check logs\n');
    expect(closed).toBe(false);
    expect(fs.readFileSync(s.image).subarray(0, 4).toString()).toBe('CCCC');
    expect(s.server.stats().faultsApplied).toBe(1);
  });

  test('status with a body on PATCH flush leaves the connection dirty', async () => {
    s.server.faults.add({ method: 'PATCH', op: 'flush', action: { status: 503, body: 'try later' } });
    const flush = '{"op": "flush"}';
    const { responses } = await rawRequest({ port: s.port }, [
      head('PUT', `${T}?flush=n`, { 'content-length': 2 }) + 'hi',
      head('PATCH', T, { 'content-length': flush.length }) + flush,
    ]);
    expect(responses.map((r) => r.status)).toEqual([200, 503]);
    expect(responses[1].body.toString()).toBe('try later\n');
    expect(s.server.stats().connections[0]).toMatchObject({ unflushedWrites: 1, flushes: 0 });
  });

  test('drop before: socket closed, nothing written', async () => {
    s.server.faults.add({ method: 'PUT', action: { drop: 'before' } });
    const r = await rawRequest({ port: s.port }, head('PUT', T, { 'content-length': 4 }) + 'abcd');
    expect(r.responses).toHaveLength(0);
    expect(r.closed).toBe(true);
    expect(fs.readFileSync(s.image).subarray(0, 4).equals(Buffer.alloc(4))).toBe(true);
    expect(s.server.stats().connections[0].closedBy).toBe('fault');
  });

  test('drop mid-body: part of a PUT is written, then the socket closes', async () => {
    s.server.faults.add({ method: 'PUT', action: { drop: 'mid-body' } });
    const r = await rawRequest({ port: s.port }, head('PUT', `${T}?flush=n`, { 'content-length': 8 }) + 'abcdefgh');
    expect(r.responses).toHaveLength(0);
    expect(r.closed).toBe(true);
    expect(fs.readFileSync(s.image).subarray(0, 8).toString('latin1')).toBe('abcd\0\0\0\0');
    expect(s.server.stats().connections[0]).toMatchObject({ bytesWritten: 4, unflushedWrites: 1 });
  });

  test('drop mid-body on GET: headers and part of the data, then close', async () => {
    s.server.faults.add({ method: 'GET', op: 'read', action: { drop: 'mid-body' } });
    const r = await rawExchange({ port: s.port }, head('GET', T, { range: 'bytes=0-1023' }));
    expect(r.closed).toBe(true);
    const text = r.data.toString('latin1');
    expect(text).toMatch(/^HTTP\/1.1 206/);
    expect(r.data.length - (text.indexOf('\r\n\r\n') + 4)).toBe(512);
  });

  test('drop after: the op is performed, no response', async () => {
    s.server.faults.add({ method: 'PATCH', op: 'zero', action: { drop: 'after' } });
    fs.writeFileSync(s.image, Buffer.alloc(10, 9), { flag: 'r+' });
    const body = '{"op": "zero", "size": 5}';
    // The map was scanned at start (all zero), so put data through the server first.
    const r = await rawRequest({ port: s.port }, [
      head('PUT', T, { 'content-length': 10 }) + 'x'.repeat(10),
      head('PATCH', T, { 'content-length': body.length }) + body,
    ]);
    expect(r.responses.map((x) => x.status)).toEqual([200]);
    expect(r.closed).toBe(true);
    expect(fs.readFileSync(s.image).subarray(0, 10).toString('latin1')).toBe('\0\0\0\0\0xxxxx');
    expect(s.server.stats().ops.zero).toBeUndefined();
  });

  test('latency: data responses come late, after the op; OPTIONS does not wait', async () => {
    s.server.faults.setLatency(1500, ['write', 'flush']);
    const client = new Client(`http://127.0.0.1:${s.port}`);
    try {
      let t0 = Date.now();
      const put = client.request({ path: `${T}?flush=n`, method: 'PUT', body: 'late' });
      // The op is performed before the delay: the bytes are in the image while the response waits.
      await new Promise((r) => setTimeout(r, 700));
      expect(fs.readFileSync(s.image).subarray(0, 4).toString()).toBe('late');
      const r = await put;
      await r.body.text();
      expect(r.statusCode).toBe(200);
      expect(Date.now() - t0).toBeGreaterThanOrEqual(1500);
      t0 = Date.now();
      expect((await req(client, { path: T, method: 'OPTIONS' })).status).toBe(200);
      expect(Date.now() - t0).toBeLessThan(1000);
    } finally {
      await client.close();
    }
  });

  test('stall: the request is received, the client gives up, the op still lands late', async () => {
    // Data to zero, written through the server (its allocation map knows it is there).
    expect((await rawRequest({ port: s.port }, head('PUT', T, { 'content-length': 8 }) + 'w'.repeat(8))).responses[0].status).toBe(200);
    s.server.faults.add({ method: 'PUT', action: { stallMs: 1500 } });
    s.server.faults.add({ method: 'PATCH', op: 'zero', action: { stallMs: 1500 } });
    const zero = '{"op": "zero", "offset": 4, "size": 4}';
    const t0 = Date.now();
    // Each client sends its request and hangs up long before the server acts on it.
    const put = rawExchange({ port: s.port }, head('PUT', `${T}?flush=n`, { 'content-length': 4, 'content-range': 'bytes 100-103/*' }) + 'late', { quietMs: 300, firstByteMs: 300 });
    const patch = rawExchange({ port: s.port }, head('PATCH', T, { 'content-length': zero.length }) + zero, { quietMs: 300, firstByteMs: 300 });
    expect((await put).data.length).toBe(0);
    expect((await patch).data.length).toBe(0);
    const img = () => fs.readFileSync(s.image).subarray(0, 104);
    expect(img().subarray(100, 104).toString('latin1')).toBe('\0\0\0\0');
    while (Date.now() - t0 < 5000 && img().subarray(100, 104).toString() !== 'late') await sleep(100);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(1400);
    expect(img().subarray(100, 104).toString()).toBe('late');
    await sleep(300);
    expect(img().subarray(0, 8).toString('latin1')).toBe('wwww\0\0\0\0');
  });

  test('delay: the response comes late', async () => {
    s.server.faults.add({ method: 'OPTIONS', action: { delayMs: 400 } });
    const t0 = Date.now();
    const r = await rawRequest({ port: s.port }, head('OPTIONS', T), { quietMs: 1000 });
    expect(r.responses[0].status).toBe(200);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(400);
  });
});
