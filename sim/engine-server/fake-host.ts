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
 *
 * A host may have a network link (HostLink): a bandwidth limit shared by all its transfers
 * (--host-rate), and a byte count after which the host goes down (a host that stops answering
 * in the middle of a transfer, at a point a test can choose without timing). Its transfers'
 * transfer_url then goes through a forwarder that applies the link; the unix socket (the local
 * host) does not cross the network and is not limited.
 */
import net from 'node:net';
import path from 'node:path';
import { ImageioServer } from '../imageio-server/imageio-server';
import type { Logger } from '../../src/core/log';
import type { DiskState, HostState, TransferState } from './entities';

/** A transfer's live imageio session on its host. */
export interface Session {
  server: ImageioServer;
  proxy: Forwarder;
  proxyPort: number;
  /** The host's network link in front of the imageio server, when the host has one. */
  link?: Forwarder;
}

export interface SessionOptions {
  tls?: { cert: string | Buffer; key: string | Buffer };
  logger?: Logger;
  link?: HostLink;
}

/** A TCP forwarder to a local port; every byte through it may be metered by a HostLink. */
export interface Forwarder {
  server: net.Server;
  port: number;
  sockets: Set<net.Socket>;
}

/**
 * A host's network: bytes per second shared by every connection of every transfer on the host
 * (a virtual clock: each chunk moves the link's "busy until" time by its size / rate, and a
 * connection that gets ahead of the clock is paused until then), and an optional byte count
 * after which `onDown` runs once.
 */
export class HostLink {
  /** Bytes that went through the link, both directions. */
  bytes = 0;
  private busyUntil = 0;
  private downFired = false;

  constructor(
    /** Bytes per second; 0: unlimited. */
    public rate: number,
    /** Take the host down after this many bytes; undefined: never. */
    public downAfterBytes: number | undefined,
    private readonly onDown: () => void,
  ) {}

  /** Account `n` bytes; returns how long the sender should wait, ms. */
  pass(n: number): number {
    this.bytes += n;
    if (this.downAfterBytes !== undefined && this.bytes >= this.downAfterBytes && !this.downFired) {
      this.downFired = true;
      this.onDown();
    }
    if (this.rate <= 0) return 0;
    const now = Date.now();
    this.busyUntil = Math.max(this.busyUntil, now) + (n / this.rate) * 1000;
    // A little burst is allowed, as a real link's buffers do.
    return Math.max(0, this.busyUntil - now - 20);
  }
}

/** Forward connections on an ephemeral 127.0.0.1 port to `port`, through `link` when given. */
async function forwarder(port: number, link?: HostLink): Promise<Forwarder> {
  const sockets = new Set<net.Socket>();
  const server = net.createServer((client) => {
    const upstream = net.connect(port, '127.0.0.1');
    for (const sock of [client, upstream]) {
      sockets.add(sock);
      sock.once('close', () => sockets.delete(sock));
      sock.on('error', () => {
        client.destroy();
        upstream.destroy();
      });
    }
    if (!link) {
      client.pipe(upstream);
      upstream.pipe(client);
      return;
    }
    const meter = (from: net.Socket, to: net.Socket) => {
      from.on('data', (chunk: Buffer) => {
        const wait = link.pass(chunk.length);
        if (!to.destroyed) to.write(chunk);
        if (wait > 0) {
          from.pause();
          setTimeout(() => from.resume(), wait);
        }
      });
      from.once('end', () => to.end());
    };
    meter(client, upstream);
    meter(upstream, client);
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  return { server, port: (server.address() as net.AddressInfo).port, sockets };
}

async function closeForwarder(f: Forwarder): Promise<void> {
  const closed = new Promise<void>((r) => f.server.close(() => r()));
  for (const sock of f.sockets) sock.destroy();
  await closed;
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
  const proxy = await forwarder(port);
  const link = opts.link ? await forwarder(port, opts.link) : undefined;
  return { server, proxy, proxyPort: proxy.port, link };
}

/** transfer_url of the session: through the host's link when it has one. */
export function sessionUrl(s: Session): string {
  if (!s.link) return s.server.url;
  const u = new URL(s.server.url);
  u.port = String(s.link.port);
  return u.href;
}

/** Remove the ticket: stop the proxy, the link and the imageio server, dropping their connections. */
export async function stopSession(s: Session): Promise<void> {
  await closeForwarder(s.proxy);
  if (s.link) await closeForwarder(s.link);
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
