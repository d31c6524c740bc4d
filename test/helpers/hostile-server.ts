/**
 * A hostile imageio server for tests: a tiny HTTP/1.1 server over node:net (not node:http, so it
 * can send what no HTTP library would) that answers like a sane imageio with an in-memory image
 * (OPTIONS, extents, GET ranges, PUT, PATCH zero/flush) until a rule says otherwise. Rules pick
 * requests by kind (options, extents, read, write, zero, flush), by count, and by whether the
 * connection is clean, and answer with a behaviour: a 206 of the wrong length, an endless body
 * without Content-Length, an absurd size, a trickled response, garbage instead of a status line,
 * a close in the middle of the headers, a late success, an error status, a close right after a
 * good response.
 *
 * Request bodies are always read in full first, so a "late" request lands in the image after
 * its delay even when the client gave up on it: that is what a slow imageio does.
 *
 * A script under test can steer the rules over HTTP on the same server (the client under test
 * never asks these paths): POST /__hostile/arm/NAME arms the named rules, POST /__hostile/disarm
 * disarms every rule.
 */
import net from 'node:net';
import { promises as fsp } from 'node:fs';

export type RequestKind = 'options' | 'extents' | 'read' | 'write' | 'zero' | 'flush' | 'other';

export type Behaviour =
  /** Answer the way imageio would (the default). */
  | { type: 'sane' }
  /** This status with a one-line text body and an exact Content-Length; the op is not performed. */
  | { type: 'status'; status: number; body?: string }
  /** GET: a 206 whose Content-Length (and body) is the asked length plus `delta` (negative: shorter). */
  | { type: 'wrong-length'; delta: number }
  /** This status, no Content-Length, and a body that never ends: chunked, or delimited by close. */
  | { type: 'endless'; status: number; framing: 'chunked' | 'close' }
  /** GET bytes=0-0: a 206 whose Content-Range total is this text (at start-up: the image size). */
  | { type: 'size-total'; total: string }
  /** GET extents: one data extent of this length (a JSON number, as text). */
  | { type: 'extents-length'; length: string }
  /** The sane response, `bytes` (default 1) every `intervalMs`: all of it, or the head at once and the body slowly. */
  | { type: 'trickle'; intervalMs: number; part: 'all' | 'body'; bytes?: number }
  /** Bytes that are not HTTP instead of a status line; the connection stays open. */
  | { type: 'garbage' }
  /** Half a response head, then the connection is closed. */
  | { type: 'close-in-headers' }
  /** Wait, then perform the op (even if the client has gone) and answer as usual if it is still there. */
  | { type: 'late'; delayMs: number }
  /** Perform the op, answer as usual, then close the connection at once. */
  | { type: 'close-after' };

export interface HostileRule {
  /** Rules with a name start disarmed; POST /__hostile/arm/NAME (or arm(NAME)) arms them. */
  name?: string;
  kind?: RequestKind | RequestKind[];
  /** Only requests on a connection with (false) or without (true) writes since its last flush. */
  cleanConnection?: boolean;
  /** Once applied, only requests on the same connection match (e.g. two 500s for one request and its retry). */
  oneConnection?: boolean;
  /** Skip this many matching requests first (default 0). */
  after?: number;
  /** Apply to this many (default Infinity). */
  times?: number;
  behaviour: Behaviour;
}

export interface HostileRequestLog {
  conn: number;
  kind: RequestKind;
  method: string;
  path: string;
  offset?: number;
  length?: number;
  /** PUT: the first byte of the body (tests write recognisable patterns). */
  firstByte?: number;
  behaviour: Behaviour['type'];
  at: number;
}

export interface HostileServerOptions {
  /** Image size; the image starts filled with a known pattern (see patternByte). */
  size: number;
  /** OPTIONS features (default checksum, extents, flush, zero). */
  features?: string[];
  maxWriters?: number;
  /** Also listen on this unix socket (a path or an abstract "\0name") and advertise it in OPTIONS. */
  unixSocket?: string;
  /** Endless bodies stop after this long whatever happens (default 20 s): a test never floods forever. */
  maxFloodMs?: number;
}

/** The byte at `offset` of a fresh hostile image. */
export function patternByte(offset: number): number {
  return (offset * 7 + (offset >>> 12)) & 0xff;
}

const MAX_HEAD = 64 << 10;
const FLOOD_CHUNK = Buffer.alloc(64 << 10, 0x41);

interface Request {
  method: string;
  path: string;
  query: URLSearchParams;
  headers: Record<string, string>;
  body: Buffer;
  kind: RequestKind;
  offset?: number;
  length?: number;
  json?: Record<string, unknown>;
}

interface Conn {
  id: number;
  socket: net.Socket;
  dirty: boolean;
  /** Received bytes not yet parsed, as a list (joined only when needed: bodies can be large). */
  parts: Buffer[];
  bytes: number;
  busy: boolean;
}

interface ActiveRule {
  rule: HostileRule;
  armed: boolean;
  seen: number;
  /** With oneConnection: the connection it first applied to. */
  conn?: number;
}

export class HostileServer {
  readonly image: Buffer;
  readonly log: HostileRequestLog[] = [];
  private readonly opts: HostileServerOptions;
  private rules: ActiveRule[] = [];
  private tcp?: net.Server;
  private unix?: net.Server;
  private readonly sockets = new Set<net.Socket>();
  private readonly floods = new Set<net.Socket>();
  private readonly timers = new Set<NodeJS.Timeout>();
  private nextConn = 1;
  private closed = false;
  private floodsStopped = false;
  port = 0;
  /** Bytes sent in endless bodies so far. */
  flooded = 0;

  constructor(opts: HostileServerOptions) {
    this.opts = opts;
    this.image = Buffer.alloc(opts.size);
    for (let i = 0; i < opts.size; i++) this.image[i] = patternByte(i);
  }

  async start(): Promise<void> {
    this.tcp = net.createServer((s) => this.accept(s));
    await new Promise<void>((resolve, reject) => {
      this.tcp!.once('error', reject);
      this.tcp!.listen(0, '127.0.0.1', () => resolve());
    });
    this.port = (this.tcp.address() as net.AddressInfo).port;
    if (this.opts.unixSocket) {
      if (!this.opts.unixSocket.startsWith('\0')) await fsp.rm(this.opts.unixSocket, { force: true });
      this.unix = net.createServer((s) => this.accept(s));
      await new Promise<void>((resolve, reject) => {
        this.unix!.once('error', reject);
        this.unix!.listen(this.opts.unixSocket, () => resolve());
      });
    }
  }

  /** The transfer URL (plain HTTP on 127.0.0.1). */
  get url(): string {
    return `http://127.0.0.1:${this.port}/images/hostile`;
  }

  /** Base URL of the control paths, for scripts: POST $base/__hostile/arm/NAME. */
  get controlBase(): string {
    return `http://127.0.0.1:${this.port}/__hostile`;
  }

  addRule(rule: HostileRule): this {
    this.rules.push({ rule, armed: rule.name === undefined, seen: 0 });
    return this;
  }

  arm(name: string): number {
    let n = 0;
    for (const r of this.rules) {
      if (r.rule.name === name) {
        r.armed = true;
        n++;
      }
    }
    return n;
  }

  disarm(): void {
    for (const r of this.rules) r.armed = false;
    for (const s of this.floods) s.destroy();
    this.floods.clear();
  }

  /**
   * End every endless body now, and from now on close the connection instead of starting one
   * (the test's memory watchdog calls this: a client that buffers them must not take the machine).
   */
  stopFloods(): void {
    this.floodsStopped = true;
    for (const s of this.floods) s.destroy();
    this.floods.clear();
  }

  /** Requests of a kind, in order. */
  requests(kind?: RequestKind): HostileRequestLog[] {
    return this.log.filter((r) => kind === undefined || r.kind === kind);
  }

  async stop(): Promise<void> {
    this.closed = true;
    for (const t of this.timers) clearTimeout(t);
    for (const s of this.sockets) s.destroy();
    await Promise.all(
      [this.tcp, this.unix].filter((s): s is net.Server => !!s).map((s) => new Promise<void>((r) => s.close(() => r()))),
    );
    if (this.opts.unixSocket && !this.opts.unixSocket.startsWith('\0')) await fsp.rm(this.opts.unixSocket, { force: true });
  }

  // ---- Connections and parsing ----------------------------------------------------------------

  private accept(socket: net.Socket): void {
    if (this.closed) {
      socket.destroy();
      return;
    }
    const conn: Conn = { id: this.nextConn++, socket, dirty: false, parts: [], bytes: 0, busy: false };
    this.sockets.add(socket);
    socket.on('close', () => {
      this.sockets.delete(socket);
      this.floods.delete(socket);
    });
    socket.on('error', () => undefined);
    socket.on('data', (d: Buffer) => {
      conn.parts.push(d);
      conn.bytes += d.length;
      void this.pump(conn);
    });
  }

  /** Serve the complete requests buffered on `conn`, one at a time. */
  private async pump(conn: Conn): Promise<void> {
    if (conn.busy) return;
    conn.busy = true;
    try {
      while (!conn.socket.destroyed) {
        const req = this.takeRequest(conn);
        if (!req) break;
        await this.serve(conn, req);
      }
    } catch {
      conn.socket.destroy();
    } finally {
      conn.busy = false;
    }
  }

  private takeRequest(conn: Conn): Request | undefined {
    // The head is in the first part once joined; join only the head's worth.
    let first = conn.parts[0];
    if (!first) return undefined;
    let end = first.indexOf('\r\n\r\n');
    while (end < 0 && conn.parts.length > 1 && first.length <= MAX_HEAD) {
      first = Buffer.concat([first, conn.parts[1]]);
      conn.parts.splice(0, 2, first);
      end = first.indexOf('\r\n\r\n');
    }
    if (end < 0) {
      if (first.length > MAX_HEAD) conn.socket.destroy();
      return undefined;
    }
    const lines = first.subarray(0, end).toString('latin1').split('\r\n');
    const [method, target] = lines[0].split(' ');
    const headers: Record<string, string> = {};
    for (const line of lines.slice(1)) {
      const i = line.indexOf(':');
      if (i > 0) headers[line.slice(0, i).trim().toLowerCase()] = line.slice(i + 1).trim();
    }
    const length = Number(headers['content-length'] ?? 0);
    if (conn.bytes < end + 4 + length) return undefined; // the whole body first, always
    const all = conn.parts.length === 1 ? first : Buffer.concat(conn.parts, conn.bytes);
    const body = Buffer.from(all.subarray(end + 4, end + 4 + length));
    const rest = all.subarray(end + 4 + length);
    conn.parts = rest.length ? [rest] : [];
    conn.bytes = rest.length;
    const q = target.indexOf('?');
    const path = q < 0 ? target : target.slice(0, q);
    const req: Request = { method, path, query: new URLSearchParams(q < 0 ? '' : target.slice(q + 1)), headers, body, kind: 'other' };
    classify(req);
    return req;
  }

  // ---- Behaviour ------------------------------------------------------------------------------

  private pick(conn: Conn, req: Request): Behaviour {
    let chosen: Behaviour | undefined;
    for (const r of this.rules) {
      const { rule } = r;
      if (!r.armed) continue;
      const kinds = rule.kind === undefined ? undefined : ([] as RequestKind[]).concat(rule.kind);
      if (kinds && !kinds.includes(req.kind)) continue;
      if (rule.cleanConnection !== undefined && rule.cleanConnection === conn.dirty) continue;
      if (rule.oneConnection && r.conn !== undefined && r.conn !== conn.id) continue;
      const n = r.seen++;
      const after = rule.after ?? 0;
      if (chosen === undefined && n >= after && n - after < (rule.times ?? Infinity)) {
        chosen = rule.behaviour;
        if (rule.oneConnection) r.conn = conn.id;
      }
    }
    return chosen ?? { type: 'sane' };
  }

  private async serve(conn: Conn, req: Request): Promise<void> {
    if (req.path.startsWith('/__hostile/')) {
      const arm = /^\/__hostile\/arm\/(.+)$/.exec(req.path);
      let n = 0;
      if (arm) n = this.arm(decodeURIComponent(arm[1]));
      else if (req.path === '/__hostile/disarm') this.disarm();
      const text = JSON.stringify({ armed: n });
      conn.socket.write(`HTTP/1.1 200 OK\r\ncontent-length: ${text.length}\r\ncontent-type: application/json\r\n\r\n${text}`);
      return;
    }
    const b = this.pick(conn, req);
    this.log.push({
      conn: conn.id,
      kind: req.kind,
      method: req.method,
      path: req.path,
      offset: req.offset,
      length: req.length,
      firstByte: req.kind === 'write' ? req.body[0] : undefined,
      behaviour: b.type,
      at: Date.now(),
    });
    const s = conn.socket;
    switch (b.type) {
      case 'sane':
        s.write(this.perform(conn, req));
        return;
      case 'status': {
        const text = Buffer.from(`${b.body ?? 'Server failed to perform the request, check logs'}\n`);
        s.write(Buffer.concat([head(b.status, { 'content-length': text.length, 'content-type': 'text/plain; charset=UTF-8' }), text]));
        return;
      }
      case 'wrong-length': {
        const n = Math.max(0, (req.length ?? 0) + b.delta);
        const data = Buffer.alloc(n);
        this.image.copy(data, 0, req.offset ?? 0, Math.min(this.image.length, (req.offset ?? 0) + n));
        const last = (req.offset ?? 0) + (req.length ?? 1) - 1;
        s.write(Buffer.concat([
          head(206, { 'content-length': n, 'content-range': `bytes ${req.offset ?? 0}-${last}/${this.image.length}`, 'content-type': 'application/octet-stream' }),
          data,
        ]));
        return;
      }
      case 'size-total':
        s.write(Buffer.concat([head(206, { 'content-length': 1, 'content-range': `bytes 0-0/${b.total}` }), this.image.subarray(0, 1)]));
        return;
      case 'extents-length': {
        const text = Buffer.from(`[{"start": 0, "length": ${b.length}, "zero": false, "hole": false}]\n`);
        s.write(Buffer.concat([head(200, { 'content-length': text.length, 'content-type': 'application/json' }), text]));
        return;
      }
      case 'endless':
        this.flood(s, b.status, b.framing);
        // Nothing else is served on this connection.
        await new Promise<void>((r) => s.once('close', () => r()));
        return;
      case 'trickle': {
        const response = this.perform(conn, req);
        const headEnd = response.indexOf('\r\n\r\n') + 4;
        if (b.part === 'body' && headEnd < response.length) {
          s.write(response.subarray(0, headEnd));
          await this.trickle(s, response.subarray(headEnd), b.intervalMs, b.bytes ?? 1);
        } else {
          await this.trickle(s, response, b.intervalMs, b.bytes ?? 1);
        }
        return;
      }
      case 'garbage':
        s.write('\x16\x03\x01\x02\x00 this is not HTTP \xff\xfe\r\nSSH-2.0-nonsense\r\n\r\n');
        await new Promise<void>((r) => s.once('close', () => r()));
        return;
      case 'close-in-headers':
        s.end('HTTP/1.1 200 OK\r\nserver: imageio/2.5.3\r\ncontent-le');
        return;
      case 'late':
        await this.sleep(b.delayMs);
        // The op lands whether or not the client is still waiting for it.
        {
          const response = this.perform(conn, req);
          if (!s.destroyed) s.write(response);
        }
        return;
      case 'close-after':
        s.end(this.perform(conn, req));
        return;
    }
  }

  /** Do what imageio would do, and return its response. */
  private perform(conn: Conn, req: Request): Buffer {
    const img = this.image;
    switch (req.kind) {
      case 'options': {
        const o: Record<string, unknown> = {};
        if (this.opts.unixSocket) o.unix_socket = this.opts.unixSocket;
        o.features = this.opts.features ?? ['checksum', 'extents', 'flush', 'zero'];
        o.max_readers = 8;
        o.max_writers = this.opts.maxWriters ?? 8;
        const text = Buffer.from(`${JSON.stringify(o)}\n`);
        return Buffer.concat([head(200, { 'content-length': text.length, allow: 'OPTIONS,GET,PUT,PATCH', 'content-type': 'application/json' }), text]);
      }
      case 'extents': {
        const text = Buffer.from(`[{"start": 0, "length": ${img.length}, "zero": false, "hole": false}]\n`);
        return Buffer.concat([head(200, { 'content-length': text.length, 'content-type': 'application/json' }), text]);
      }
      case 'read': {
        const off = req.offset ?? 0;
        const len = req.length ?? img.length - off;
        if (off + len > img.length) return errorResponse(416, 'Requested range out of allowed range');
        return Buffer.concat([
          head(206, { 'content-length': len, 'content-range': `bytes ${off}-${off + len - 1}/${img.length}`, 'content-type': 'application/octet-stream' }),
          img.subarray(off, off + len),
        ]);
      }
      case 'write': {
        const off = req.offset ?? 0;
        if (off + req.body.length > img.length) return errorResponse(416, 'Requested range out of allowed range');
        req.body.copy(img, off);
        conn.dirty = req.query.get('flush') === 'n';
        return head(200, { 'content-length': 0 });
      }
      case 'zero': {
        const off = Number(req.json?.offset ?? 0);
        const len = Number(req.json?.size ?? 0);
        if (off + len > img.length) return errorResponse(416, 'Requested range out of allowed range');
        img.fill(0, off, off + len);
        conn.dirty = req.json?.flush !== true;
        return head(200, { 'content-length': 0 });
      }
      case 'flush':
        conn.dirty = false;
        return head(200, { 'content-length': 0 });
      default:
        return errorResponse(404, `No handler for '${req.path}'`);
    }
  }

  private flood(s: net.Socket, status: number, framing: 'chunked' | 'close'): void {
    if (this.floodsStopped) {
      s.destroy();
      return;
    }
    this.floods.add(s);
    const headers: Record<string, string | number> = { 'content-type': 'text/plain; charset=UTF-8' };
    if (framing === 'chunked') headers['transfer-encoding'] = 'chunked';
    else headers.connection = 'close';
    s.write(head(status, headers));
    const piece = framing === 'chunked' ? Buffer.concat([Buffer.from(`${FLOOD_CHUNK.length.toString(16)}\r\n`), FLOOD_CHUNK, Buffer.from('\r\n')]) : FLOOD_CHUNK;
    const until = Date.now() + (this.opts.maxFloodMs ?? 20_000);
    const send = () => {
      while (!s.destroyed && this.floods.has(s)) {
        if (Date.now() > until) {
          s.destroy();
          return;
        }
        this.flooded += piece.length;
        if (!s.write(piece)) {
          s.once('drain', send);
          return;
        }
      }
    };
    send();
  }

  private async trickle(s: net.Socket, data: Buffer, intervalMs: number, bytes: number): Promise<void> {
    for (let i = 0; i < data.length && !s.destroyed && !this.closed; i += bytes) {
      s.write(data.subarray(i, i + bytes));
      if (i + bytes < data.length) await this.sleep(intervalMs);
    }
  }

  private sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const t = setTimeout(() => {
        this.timers.delete(t);
        resolve();
      }, ms);
      this.timers.add(t);
    });
  }
}

function classify(req: Request): void {
  const range = /^bytes=(\d+)-(\d+)$/.exec(req.headers.range ?? '');
  if (req.method === 'OPTIONS') req.kind = 'options';
  else if (req.method === 'GET' && /\/extents$/.test(req.path)) req.kind = 'extents';
  else if (req.method === 'GET' && /^\/images\/[^/]+$/.test(req.path)) {
    req.kind = 'read';
    if (range) {
      req.offset = Number(range[1]);
      req.length = Number(range[2]) - req.offset + 1;
    }
  } else if (req.method === 'PUT') {
    req.kind = 'write';
    const cr = /^bytes (\d+)-/.exec(req.headers['content-range'] ?? '');
    req.offset = cr ? Number(cr[1]) : 0;
    req.length = req.body.length;
  } else if (req.method === 'PATCH') {
    try {
      req.json = JSON.parse(req.body.toString('utf8')) as Record<string, unknown>;
    } catch {
      req.json = {};
    }
    if (req.json.op === 'zero') {
      req.kind = 'zero';
      req.offset = Number(req.json.offset ?? 0);
      req.length = Number(req.json.size ?? 0);
    } else if (req.json.op === 'flush') {
      req.kind = 'flush';
    }
  }
}

const REASONS: Record<number, string> = { 200: 'OK', 206: 'Partial Content', 404: 'Not Found', 416: 'Requested Range Not Satisfiable', 500: 'Internal Server Error', 503: 'Service Unavailable' };

function head(status: number, headers: Record<string, string | number>): Buffer {
  let s = `HTTP/1.1 ${status} ${REASONS[status] ?? 'Unknown'}\r\nserver: imageio/2.5.3\r\ndate: ${new Date().toUTCString()}\r\n`;
  for (const [k, v] of Object.entries(headers)) s += `${k}: ${v}\r\n`;
  return Buffer.from(`${s}\r\n`, 'latin1');
}

function errorResponse(status: number, text: string): Buffer {
  const body = Buffer.from(`${text}\n`);
  return Buffer.concat([head(status, { 'content-length': body.length, 'content-type': 'text/plain; charset=UTF-8' }), body]);
}
