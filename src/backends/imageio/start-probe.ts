/**
 * A look at the imageio server before the backend opens, for the mistakes the backend could
 * only report as a TLS library error after its retries:
 *   - an https:// URL on a server that speaks plain HTTP ("wrong version number"),
 *   - an http:// URL on a server that speaks TLS (the server closes: "other side closed").
 * Either is a ConfigError naming the scheme to use, at once, without retries.
 *
 * The probe costs one extra connection: for https a TLS handshake (no HTTP request), for http
 * one `OPTIONS /images/*` (no ticket involved). Anything it cannot decide (refused, reset,
 * DNS) is left to the backend, which reports it with its own retries. A server that accepts
 * and says nothing is reported through `onWaiting`, and the probe gives up after `waitMs`.
 */
import * as net from 'node:net';
import type * as Tls from 'node:tls';
import { ConfigError } from '../../core/errors';

// node:tls (and the OpenSSL state it sets up) is loaded on first use: a transfer over imageio's
// unix socket or plain HTTP never needs it, and loading it costs about 4 MiB of resident memory.
let tlsModule: typeof Tls | undefined;
const tlsConnect = (options: Tls.ConnectionOptions): Tls.TLSSocket => (tlsModule ??= require('node:tls') as typeof Tls).connect(options);

export interface ProbeOptions {
  connectTimeoutMs: number;
  /** How long to wait for an answer before calling onWaiting and giving up (default 5000). */
  waitMs?: number;
  onWaiting?: (what: string) => void;
}

/** Bytes a TLS server sends first: a handshake (0x16) or an alert (0x15) record. */
const TLS_RECORD = new Set([0x15, 0x16]);
const WRONG_VERSION = new Set(['ERR_SSL_WRONG_VERSION_NUMBER', 'ERR_SSL_PACKET_LENGTH_TOO_LONG', 'ERR_SSL_HTTP_REQUEST', 'EPROTO']);

type Outcome = 'unreachable' | 'undecided' | 'tls' | 'plain' | 'silent';

function connect(host: string, port: number, timeoutMs: number): Promise<net.Socket | undefined> {
  return new Promise((resolve) => {
    const s = net.connect({ host, port });
    const timer = setTimeout(() => {
      s.destroy();
      resolve(undefined);
    }, timeoutMs);
    s.once('connect', () => {
      clearTimeout(timer);
      resolve(s);
    });
    s.once('error', () => {
      clearTimeout(timer);
      resolve(undefined);
    });
  });
}

/** Sends an HTTP request and looks at the first bytes of the answer. */
async function sniffHttp(host: string, port: number, timeoutMs: number, waitMs: number): Promise<Outcome> {
  const s = await connect(host, port, timeoutMs);
  if (!s) return 'unreachable';
  return new Promise((resolve) => {
    let done = false;
    const finish = (o: Outcome) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      s.destroy();
      resolve(o);
    };
    const timer = setTimeout(() => finish('silent'), waitMs);
    let got = Buffer.alloc(0);
    s.on('data', (chunk: Buffer) => {
      got = Buffer.concat([got, chunk]);
      if (TLS_RECORD.has(got[0])) finish('tls');
      else if (got.length >= 5) finish(got.subarray(0, 5).toString('latin1') === 'HTTP/' ? 'plain' : 'undecided');
    });
    s.once('end', () => finish('undecided'));
    s.once('error', () => finish('undecided'));
    s.write(`OPTIONS /images/* HTTP/1.1\r\nHost: ${host.includes(':') ? `[${host}]` : host}:${port}\r\nConnection: close\r\n\r\n`);
  });
}

/** A TLS handshake only (no certificate check: the backend verifies). */
async function tryTls(host: string, port: number, timeoutMs: number, waitMs: number): Promise<Outcome> {
  const s = await connect(host, port, timeoutMs);
  if (!s) return 'unreachable';
  return new Promise((resolve) => {
    let done = false;
    const t = tlsConnect({ socket: s, rejectUnauthorized: false, servername: net.isIP(host) ? undefined : host });
    const finish = (o: Outcome) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      t.destroy();
      s.destroy();
      resolve(o);
    };
    const timer = setTimeout(() => finish('silent'), waitMs);
    t.once('secureConnect', () => finish('tls'));
    t.once('error', (err: NodeJS.ErrnoException) => {
      const wrongVersion = (err.code && WRONG_VERSION.has(err.code)) || /wrong version number|packet length too long|http request/i.test(err.message);
      finish(wrongVersion ? 'plain' : 'undecided');
    });
  });
}

/** Checks that the server at `url` speaks the URL's scheme. Throws ConfigError if it speaks the other one. */
export async function probeScheme(url: URL, opts: ProbeOptions): Promise<void> {
  const host = url.hostname.replace(/^\[(.*)\]$/, '$1');
  const https = url.protocol === 'https:';
  const port = Number(url.port || (https ? 443 : 80));
  const waitMs = opts.waitMs ?? 5000;
  const where = `${url.protocol}//${url.host}`;
  const first = https ? await tryTls(host, port, opts.connectTimeoutMs, waitMs) : await sniffHttp(host, port, opts.connectTimeoutMs, waitMs);
  if (first === 'silent') {
    opts.onWaiting?.(`${url.host} accepted the connection but has not answered for ${waitMs / 1000} s`);
    return;
  }
  if (https && first === 'plain') {
    // Wrong TLS version means the first bytes were not TLS: confirm they are HTTP.
    if ((await sniffHttp(host, port, opts.connectTimeoutMs, waitMs)) === 'plain') {
      throw new ConfigError(`${where} speaks plain HTTP, not HTTPS: use http://${url.host}${url.pathname}`);
    }
    return;
  }
  if (!https && (first === 'tls' || first === 'undecided')) {
    // A TLS server closes on (or alerts about) an HTTP request: confirm with a handshake.
    if ((await tryTls(host, port, opts.connectTimeoutMs, waitMs)) === 'tls') {
      throw new ConfigError(`${where} speaks HTTPS (TLS), not plain HTTP: use https://${url.host}${url.pathname}`);
    }
  }
}
