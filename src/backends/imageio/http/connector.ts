/**
 * Opens the socket for one imageio HTTP/1.1 connection, on node:net and node:tls directly.
 *
 * Promises:
 * - connectSocket() resolves with a connected socket (for https: handshake done, certificate
 *   verified unless the endpoint says otherwise, and the negotiated protocol checked) or
 *   rejects with an Error carrying a string `code`: the socket's own (ECONNREFUSED, ENOENT,
 *   TLS verification codes...), ERR_CONNECT_TIMEOUT when `connectTimeoutMs` passed first, or
 *   ERR_ALPN when the server chose anything but HTTP/1.1.
 * - Every read of the socket lands where `onread.buffer()` says (Node's `onread` option): a
 *   response body goes from the kernel (or from OpenSSL) straight into the caller's buffer.
 * - Unix sockets take any path Node takes, Linux abstract names ("\0...") included.
 * - TCP sockets have TCP_NODELAY (a request head must not wait for the body's ACK) and
 *   keep-alive probes after 60 s idle, like the connector this replaced.
 */
import * as net from 'node:net';
import type * as Tls from 'node:tls';

// node:tls (and the OpenSSL state it sets up) is loaded on first use: a transfer over imageio's
// unix socket or plain HTTP never needs it, and loading it costs about 4 MiB of resident memory.
let tlsModule: typeof Tls | undefined;
const tlsConnect = (options: Tls.ConnectionOptions): Tls.TLSSocket => (tlsModule ??= require('node:tls') as typeof Tls).connect(options);

/** Where connections go. */
export interface Endpoint {
  /** 'url': the transfer URL's host (TCP, TLS for https); 'unix': imageio's local socket (plain HTTP). */
  kind: 'url' | 'unix';
  /** For messages: https://host:54322 or unix:"\u0000/org/ovirt/imageio". */
  display: string;
  protocol: 'http:' | 'https:';
  /** As in URL.hostname (IPv6 literals in brackets). */
  hostname: string;
  port: string;
  socketPath?: string;
  tls?: { ca?: Buffer; rejectUnauthorized?: boolean };
  connectTimeoutMs: number;
}

/** Where reads land: Node's `onread` option for net.connect and tls.connect. */
export interface ReadInto {
  buffer: () => Buffer;
  callback: (bytes: number, buf: Buffer) => boolean;
}

/** The last TLS session of a connection, offered again when it reconnects (saves a full handshake). */
export interface TlsSessionSlot {
  session?: Buffer;
}

/**
 * We speak HTTP/1.1 only, so we offer only it: a client that offers h2 (undici 8 does by
 * default) and then writes HTTP/1.1 on an h2 session gets a protocol error at best.
 */
const ALPN = ['http/1.1'];
const KEEPALIVE_DELAY_MS = 60_000;

class ConnectError extends Error {
  constructor(
    message: string,
    readonly code: string,
  ) {
    super(message);
    this.name = 'ConnectError';
  }
}

/** Why the protocol the TLS handshake settled on cannot carry our requests, if it cannot. */
export function alpnProblem(alpn: string | false | null | undefined): string | undefined {
  // false or null: the server does not do ALPN; it speaks what the URL says, HTTP/1.1.
  if (alpn === false || alpn === null || alpn === undefined || alpn === 'http/1.1') return undefined;
  return `the server chose ${JSON.stringify(alpn)} in the TLS handshake; only http/1.1 is spoken here`;
}

/** URL.hostname keeps IPv6 literals in brackets; sockets want them bare. */
function bareHost(hostname: string): string {
  return hostname.startsWith('[') && hostname.endsWith(']') ? hostname.slice(1, -1) : hostname;
}

export function connectSocket(e: Endpoint, onread: ReadInto, slot: TlsSessionSlot = {}): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    let socket: net.Socket;
    const secure = e.kind === 'url' && e.protocol === 'https:';
    if (e.kind === 'unix') {
      socket = net.connect({ path: e.socketPath!, onread });
    } else if (secure) {
      const host = bareHost(e.hostname);
      // tls.connect takes `onread` like net.connect (Node's own TLSSocket passes it on), but
      // @types/node does not declare it there.
      const options: Tls.ConnectionOptions & { onread: ReadInto } = {
        host,
        port: Number(e.port || 443),
        // SNI carries names only; with an IP literal the certificate is checked against the IP.
        servername: net.isIP(host) ? undefined : host,
        ALPNProtocols: ALPN,
        session: slot.session,
        ca: e.tls?.ca,
        rejectUnauthorized: e.tls?.rejectUnauthorized ?? true,
        onread,
      };
      const t = tlsConnect(options);
      t.on('session', (s: Buffer) => (slot.session = s));
      socket = t;
    } else {
      socket = net.connect({ host: bareHost(e.hostname), port: Number(e.port || 80), onread });
    }
    if (e.kind !== 'unix') socket.setNoDelay(true).setKeepAlive(true, KEEPALIVE_DELAY_MS);
    let settled = false;
    const settle = (err?: Error): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      if (err) {
        socket.destroy();
        reject(err);
      } else {
        resolve(socket);
      }
    };
    const timer = setTimeout(() => {
      settle(new ConnectError(`no connection within ${(e.connectTimeoutMs / 1000).toFixed(1)} s`, 'ERR_CONNECT_TIMEOUT'));
    }, e.connectTimeoutMs);
    // Stays for the socket's life: the connection adds its own listener once it has the socket,
    // and an 'error' emitted in between must not be an uncaught exception.
    socket.on('error', (err) => settle(err));
    socket.once(secure ? 'secureConnect' : 'connect', () => {
      const problem = secure ? alpnProblem((socket as Tls.TLSSocket).alpnProtocol) : undefined;
      settle(problem ? new ConnectError(problem, 'ERR_ALPN') : undefined);
    });
  });
}
