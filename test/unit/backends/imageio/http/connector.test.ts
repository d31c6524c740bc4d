/**
 * The connector against real TLS servers on 127.0.0.1 (a test CA made with openssl): ALPN
 * offers only http/1.1, SNI names the host (and is absent for an IP), the CA file verifies and
 * a wrong one fails with the verification code, insecure skips verification, a server that
 * will not speak http/1.1 fails the connect, and the connect timeout covers the handshake.
 */
import * as net from 'node:net';
import * as tls from 'node:tls';
import { readFileSync } from 'node:fs';
import { HttpConnection, type ExchangeError } from '../../../../../src/backends/imageio/http/connection';
import { alpnProblem, connectSocket, type Endpoint } from '../../../../../src/backends/imageio/http/connector';
import { makePki, type TestPki } from '../../../../helpers/cli';
import { tmpDir, type TmpDir } from '../../../../helpers/tmp-dir';

let dir: TmpDir;
let pki: TestPki;
beforeAll(() => {
  dir = tmpDir();
  pki = makePki(dir.path);
});
afterAll(() => dir.cleanup());

const cleanups: Array<() => unknown> = [];
afterEach(async () => {
  while (cleanups.length) await cleanups.pop()!();
});

interface Hello {
  protocols: string[];
  servername: string | undefined;
}

/** A TLS server answering every request with a 206 of `body`; records each ClientHello's ALPN list and SNI. */
async function tlsServer(opts: { alpn?: 'record' | string[]; body?: Buffer } = {}): Promise<{ port: number; hellos: Hello[]; bodies: Buffer[] }> {
  const hellos: Hello[] = [];
  const bodies: Buffer[] = [];
  const body = opts.body ?? Buffer.from('abcd');
  const alpn =
    opts.alpn === undefined || opts.alpn === 'record'
      ? {
          ALPNCallback: ({ servername, protocols }: { servername: string; protocols: string[] }) => {
            hellos.push({ protocols, servername: servername || undefined });
            return protocols.includes('http/1.1') ? 'http/1.1' : undefined;
          },
        }
      : { ALPNProtocols: opts.alpn };
  const sockets = new Set<net.Socket>();
  const server = tls.createServer({ cert: pki.cert, key: pki.key, ...alpn }, (s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
    s.on('error', () => {});
    // Requests with Content-Length bodies; each body is recorded, each request answered.
    let seen = Buffer.alloc(0);
    s.on('data', (d: Buffer) => {
      seen = Buffer.concat([seen, d]);
      for (;;) {
        const end = seen.indexOf('\r\n\r\n');
        if (end < 0) return;
        const length = Number(/content-length: (\d+)/i.exec(seen.toString('latin1', 0, end))?.[1] ?? 0);
        if (seen.length < end + 4 + length) return;
        bodies.push(Buffer.from(seen.subarray(end + 4, end + 4 + length)));
        seen = seen.subarray(end + 4 + length);
        s.write(Buffer.concat([Buffer.from(`HTTP/1.1 206 Partial Content\r\nContent-Length: ${body.length}\r\n\r\n`), body]));
      }
    });
  });
  server.on('tlsClientError', () => {});
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  cleanups.push(async () => {
    for (const s of sockets) s.destroy();
    await new Promise((r) => server.close(r));
  });
  return { port: (server.address() as net.AddressInfo).port, hellos, bodies };
}

function endpoint(port: number, extra: Partial<Endpoint> = {}): Endpoint {
  return {
    kind: 'url',
    display: `https://localhost:${port}`,
    protocol: 'https:',
    hostname: 'localhost',
    port: String(port),
    tls: { ca: readFileSync(pki.ca) },
    connectTimeoutMs: 5000,
    ...extra,
  };
}

const noRead = { buffer: () => Buffer.alloc(1024), callback: () => true };

async function connectOk(e: Endpoint): Promise<tls.TLSSocket> {
  const s = (await connectSocket(e, noRead)) as tls.TLSSocket;
  cleanups.push(() => s.destroy());
  return s;
}

async function connectErr(e: Endpoint): Promise<Error & { code?: string }> {
  return connectSocket(e, noRead).then(
    (s) => {
      s.destroy();
      throw new Error('connected');
    },
    (err: Error & { code?: string }) => err,
  );
}

describe('connectSocket over TLS', () => {
  test('offers only http/1.1 in ALPN and gets it; SNI is the host name, and absent for an IP literal', async () => {
    const { port, hellos } = await tlsServer();
    const s = await connectOk(endpoint(port));
    expect(s.alpnProtocol).toBe('http/1.1');
    expect(s.authorized).toBe(true);
    await connectOk(endpoint(port, { hostname: '127.0.0.1' }));
    expect(hellos).toEqual([
      { protocols: ['http/1.1'], servername: 'localhost' },
      { protocols: ['http/1.1'], servername: undefined },
    ]);
  });

  test('a response body over TLS lands in the caller buffer (onread), keep-alive reuses the socket', async () => {
    const body = Buffer.alloc(3 * 1024 * 1024 + 5);
    for (let i = 0; i < body.length; i++) body[i] = (i * 13) & 0xff;
    const { port, hellos } = await tlsServer({ body });
    const conn = new HttpConnection(0, endpoint(port));
    cleanups.push(() => conn.destroy());
    for (let i = 0; i < 2; i++) {
      const into = Buffer.alloc(body.length);
      const r = await conn.request({ method: 'GET', path: '/images/t', ok: [206], into, maxBody: 1024, timeoutMs: 10_000 });
      expect(r.status).toBe(206);
      expect(into.equals(body)).toBe(true);
    }
    expect(hellos).toHaveLength(1);
  });

  test('PUT bodies of many buffers over TLS arrive whole and in order, request after request, on one connection', async () => {
    const { port, hellos, bodies } = await tlsServer({ body: Buffer.alloc(0) });
    const conn = new HttpConnection(0, endpoint(port));
    cleanups.push(() => conn.destroy());
    const sent: Buffer[] = [];
    for (let r = 0; r < 3; r++) {
      const parts = Array.from({ length: 33 }, (_, i) => Buffer.alloc(i === 5 ? 0 : 64 * 1024 + i, (r * 40 + i) & 0xff));
      sent.push(Buffer.concat(parts));
      const res = await conn.request({ method: 'PUT', path: '/images/t', body: parts, ok: [206], maxBody: 1024, timeoutMs: 10_000 });
      expect(res.status).toBe(206);
    }
    expect(bodies).toHaveLength(3);
    for (let r = 0; r < 3; r++) expect(bodies[r].equals(sent[r])).toBe(true);
    expect(hellos).toHaveLength(1);
  });

  test('a server that answers a PUT before taking its body: the next request waits for the body within its own deadline, then fails unsent', async () => {
    let n = 0;
    const sockets = new Set<net.Socket>();
    const server = tls.createServer({ cert: pki.cert, key: pki.key }, (s) => {
      sockets.add(s);
      s.on('error', () => {});
      const first = n++ === 0;
      s.once('data', () => {
        s.write('HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n');
        // The first connection never reads again; later ones answer every read.
        if (first) s.pause();
        else s.on('data', () => s.write('HTTP/1.1 206 Partial Content\r\nContent-Length: 0\r\n\r\n'));
      });
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
    cleanups.push(async () => {
      for (const s of sockets) s.destroy();
      await new Promise((r) => server.close(r));
    });
    const conn = new HttpConnection(0, endpoint((server.address() as net.AddressInfo).port));
    cleanups.push(() => conn.destroy());
    // More than loopback's socket buffers hold: the writes stall.
    const body = Array.from({ length: 16 }, () => Buffer.alloc(4 * 1024 * 1024));
    const put = await conn.request({ method: 'PUT', path: '/images/t', body, ok: [200], maxBody: 1024, timeoutMs: 10_000 });
    expect(put.status).toBe(200);
    const err = (await conn.request({ method: 'GET', path: '/images/t', ok: [206], maxBody: 1024, timeoutMs: 300 }).catch((e) => e)) as ExchangeError;
    expect(err.code).toBe('ERR_TIMEOUT');
    expect(err.sent).toBe(false);
    const r = await conn.request({ method: 'GET', path: '/images/t', ok: [206, 200], maxBody: 1024, timeoutMs: 10_000 });
    expect(r.status).toBe(200);
  });

  test('a CA that did not sign the certificate fails with the verification code; insecure connects', async () => {
    const { port } = await tlsServer();
    const err = await connectErr(endpoint(port, { tls: { ca: readFileSync(pki.otherCa) } }));
    expect(err.code).toMatch(/^(UNABLE_TO_VERIFY_LEAF_SIGNATURE|UNABLE_TO_GET_ISSUER_CERT_LOCALLY|SELF_SIGNED_CERT_IN_CHAIN)$/);
    const s = await connectOk(endpoint(port, { tls: { ca: readFileSync(pki.otherCa), rejectUnauthorized: false } }));
    expect(s.authorized).toBe(false);
  });

  test('the negotiated protocol must be http/1.1 or none: anything else fails the connect', () => {
    expect(alpnProblem('http/1.1')).toBeUndefined();
    expect(alpnProblem(false)).toBeUndefined();
    expect(alpnProblem(null)).toBeUndefined();
    expect(alpnProblem('h2')).toBe('the server chose "h2" in the TLS handshake; only http/1.1 is spoken here');
    expect(alpnProblem('http/1.0')).toMatch(/only http\/1.1/);
  });

  test('a server that speaks only h2: the connect fails naming the protocol', async () => {
    const { port } = await tlsServer({ alpn: ['h2'] });
    const err = await connectErr(endpoint(port));
    expect(err.code).toMatch(/NO_APPLICATION_PROTOCOL/);
  });

  test('a server that accepts TCP and never answers the handshake: ERR_CONNECT_TIMEOUT', async () => {
    const sockets = new Set<net.Socket>();
    const server = net.createServer((s) => {
      sockets.add(s);
      s.on('error', () => {});
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
    cleanups.push(async () => {
      for (const s of sockets) s.destroy();
      await new Promise((r) => server.close(r));
    });
    const port = (server.address() as net.AddressInfo).port;
    const err = await connectErr(endpoint(port, { connectTimeoutMs: 200 }));
    expect(err.code).toBe('ERR_CONNECT_TIMEOUT');
    expect(err.message).toBe('no connection within 0.2 s');
  });
});
