/**
 * One fake oVirt host's imageio: for every transfer placed on the host, a built-in imageio
 * server serving that transfer's ticket on its own TCP port and unix socket, plus a TCP
 * forwarder that stands in for the engine host's imageio proxy (proxy_url).
 *
 * The real daemon serves every ticket on port 54322 and one local socket; the built-in server
 * serves one ticket, so a fake host runs one per transfer. Clients only ever use the URLs and
 * the socket that OPTIONS names, so they cannot tell. The real proxy relays HTTP by ticket; a
 * byte-level forwarder per transfer does the same for a client (TLS passes through it, so the
 * client sees the host's certificate).
 */
import net from 'node:net';
import path from 'node:path';
import { ImageioServer } from '../imageio-server/imageio-server';
import type { Logger } from '../../src/core/log';
import type { DiskState, HostState, TransferState } from './entities';

/** A transfer's live imageio session on its host. */
export interface Session {
  server: ImageioServer;
  proxy: net.Server;
  proxyPort: number;
  proxySockets: Set<net.Socket>;
}

export interface SessionOptions {
  tls?: { cert: string | Buffer; key: string | Buffer };
  logger?: Logger;
}

/** Install the transfer's ticket on the host: start its imageio server and proxy. */
export async function startSession(host: HostState, t: TransferState, disk: DiskState, opts: SessionOptions): Promise<Session> {
  const server = new ImageioServer({
    image: disk.path,
    size: disk.size,
    ticket: t.ticket,
    transferId: t.id,
    tcp: { port: 0, host: '127.0.0.1' },
    unix: path.join(host.dir, `${t.ticket.slice(0, 8)}.sock`),
    tls: opts.tls,
    // format=raw transfers use imageio's nbd backend (qemu-nbd): up to 8 writers.
    backend: 'nbd',
    readonly: t.direction === 'download',
    // The engine passes the transfer's inactivity timeout to imageio for closing idle connections.
    idleTimeoutMs: t.inactivityTimeout > 0 ? t.inactivityTimeout * 1000 : 60_000,
    logger: opts.logger,
  });
  await server.start();
  const port = Number(new URL(server.url).port);
  const proxySockets = new Set<net.Socket>();
  const proxy = net.createServer((client) => {
    const upstream = net.connect(port, '127.0.0.1');
    for (const s of [client, upstream]) {
      proxySockets.add(s);
      s.once('close', () => proxySockets.delete(s));
      s.on('error', () => {
        client.destroy();
        upstream.destroy();
      });
    }
    client.pipe(upstream);
    upstream.pipe(client);
  });
  await new Promise<void>((resolve, reject) => {
    proxy.once('error', reject);
    proxy.listen(0, '127.0.0.1', () => resolve());
  });
  return { server, proxy, proxyPort: (proxy.address() as net.AddressInfo).port, proxySockets };
}

/** Remove the ticket: stop the proxy and the imageio server, dropping their connections. */
export async function stopSession(s: Session): Promise<void> {
  const closed = new Promise<void>((r) => s.proxy.close(() => r()));
  for (const sock of s.proxySockets) sock.destroy();
  await closed;
  await s.server.close();
}

/** A TCP port on 127.0.0.1 that nothing listens on (for an unreachable transfer_url). */
export async function deadPort(): Promise<number> {
  const srv = net.createServer();
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', () => r()));
  const port = (srv.address() as net.AddressInfo).port;
  await new Promise<void>((r) => srv.close(() => r()));
  return port;
}
