/**
 * Request handling for the /images/ and /info/ resources, following ovirt-imageio 2.5.3's
 * router and handlers: the same order of checks (validation, then authorization, then range),
 * the same statuses and texts, and the same rule for closing the connection after an error
 * (authorization errors, and any request whose body was left unread).
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Logger } from '../../src/core/log';
import { ConnectionLostError, drainBody, pumpBody, readBody, ShortBodyError } from './body';
import type { Connection } from './connection';
import type { FaultInjector, FaultMethod, FaultOp } from './faults';
import {
  beginResponse,
  IMAGEIO_VERSION,
  ImageioHttpError,
  INTERNAL_ERROR_MESSAGE,
  sendEmpty,
  sendError,
  sendJson,
} from './http-errors';
import type { ImageFile } from './image-file';
import { isPyDict, PyDict, reprString } from './py-format';
import { ALGORITHMS, BlockHash, checkBlockSize, DEFAULT_ALGORITHM, DEFAULT_BLOCK_SIZE } from '../../src/checksum/blkhash';
import { pyJsonLoads, PyJsonError } from './py-json';
import { checkAllowedRange, parseContentRange, parseRange } from './ranges';
import { bump, ImageioServerStats } from './stats';
import type { Ticket } from './ticket';
import { validateBoolean, validateEnum, validateInteger } from './validate';

const ALLOWED_METHODS = new Set(['GET', 'PUT', 'PATCH', 'POST', 'DELETE', 'OPTIONS', 'HEAD']);
const BASE_FEATURES = ['checksum', 'extents'];
const ALL_FEATURES = [...BASE_FEATURES, 'flush', 'zero'];
/** imageio's [daemon] max_connections. */
const MAX_CONNECTIONS = 8;
/** GET responses are read and sent in pieces of this size. */
const READ_CHUNK = 2 << 20;

/** Everything a handler needs besides the request itself. */
export interface ServiceContext {
  service: 'tcp' | 'unix';
  ticket: Ticket;
  image: ImageFile;
  backend: 'file' | 'nbd';
  legacy?: 'options-405' | 'options-204';
  /** unix_socket value for OPTIONS, when advertised. */
  unixSocket?: string;
  faults: FaultInjector;
  stats: ImageioServerStats;
  logger: Logger;
}

/** One request in flight: what was read of its body decides whether an error closes the connection. */
class Exchange {
  readonly path: string;
  readonly query: Map<string, string>;
  /** Parsed Content-Length, undefined when absent (chunked bodies count as absent). */
  readonly contentLength?: number;
  readonly chunked: boolean;
  consumed = 0;
  /** ?close=y seen by GET/PUT. */
  closeAfter = false;

  constructor(
    readonly req: IncomingMessage,
    readonly res: ServerResponse,
    readonly conn: Connection,
  ) {
    const url = req.url ?? '/';
    const q = url.indexOf('?');
    const rawPath = q < 0 ? url : url.slice(0, q);
    this.path = safeUnquote(rawPath);
    this.query = new Map(new URLSearchParams(q < 0 ? '' : url.slice(q + 1)));
    this.chunked = /chunked/i.test(req.headers['transfer-encoding'] ?? '');
    const cl = req.headers['content-length'];
    this.contentLength = cl === undefined || this.chunked ? undefined : Number(cl);
  }

  get method(): string {
    return this.req.method ?? '';
  }

  /** Body bytes the client sent (or will send) that nobody read. */
  get unread(): boolean {
    return this.chunked || (this.contentLength ?? 0) > this.consumed;
  }
}

function safeUnquote(s: string): string {
  try {
    return decodeURIComponent(s);
  } catch {
    return s;
  }
}

function methodNotDefined(ex: Exchange): ImageioHttpError {
  return new ImageioHttpError(405, `Method '${ex.method}' not defined for '${ex.path}'`);
}

function requireTicketId(ticketId: string): void {
  if (!ticketId) throw new ImageioHttpError(400, 'Ticket id is required');
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

function waitResponseDone(res: ServerResponse): Promise<void> {
  return new Promise((resolve) => {
    if (res.writableFinished || res.destroyed) return resolve();
    res.once('finish', resolve);
    res.once('close', resolve);
  });
}

/** Handle one request to completion (the caller serializes requests per connection). */
export async function handleRequest(ctx: ServiceContext, conn: Connection, req: IncomingMessage, res: ServerResponse) {
  const ex = new Exchange(req, res, conn);
  try {
    await dispatch(ctx, ex);
  } catch (err) {
    respondToError(ctx, ex, err);
  }
  await waitResponseDone(res);
  bump(ctx.stats.statuses, String(res.statusCode));
}

function respondToError(ctx: ServiceContext, ex: Exchange, err: unknown): void {
  if (err instanceof FaultDropped) return;
  if (err instanceof ConnectionLostError || ex.conn.socket.destroyed) {
    ex.conn.destroy('client');
    return;
  }
  if (ex.res.headersSent) {
    ctx.logger.warn({ err }, 'request failed after the response started; closing connection');
    ex.conn.destroy('server');
    return;
  }
  let e: ImageioHttpError;
  if (err instanceof ImageioHttpError) {
    e = err;
    ctx.logger.debug({ status: e.status, message: e.message, path: ex.path }, 'client error');
  } else if (err instanceof ShortBodyError) {
    e = new ImageioHttpError(400, err.message, { close: true });
  } else {
    ctx.logger.error({ err, method: ex.method, path: ex.path }, 'server error');
    e = new ImageioHttpError(500, INTERNAL_ERROR_MESSAGE);
  }
  const close = !!e.opts.close || ex.unread || ex.closeAfter;
  if (close) ex.conn.stats.closedBy ??= 'server';
  sendError(ex.res, e, close);
}

type Handler = (ctx: ServiceContext, ex: Exchange, ticketId: string) => Promise<void>;

interface Route {
  rx: RegExp;
  methods: Partial<Record<string, Handler>>;
  tcpOnly?: boolean;
}

const ROUTES: Route[] = [
  { rx: /^\/images\/(.*)\/extents/, methods: { GET: getExtents } },
  { rx: /^\/images\/(.*)\/checksum\/algorithms/, methods: { GET: getChecksumAlgorithms } },
  { rx: /^\/images\/(.*)\/checksum/, methods: { GET: getChecksum } },
  { rx: /^\/images\/(.*)/, methods: { OPTIONS: optionsImage, GET: getImage, PUT: putImage, PATCH: patchImage } },
  { rx: /^\/info\//, methods: { GET: getInfo }, tcpOnly: true },
];

async function dispatch(ctx: ServiceContext, ex: Exchange): Promise<void> {
  if (!ALLOWED_METHODS.has(ex.method)) throw new ImageioHttpError(405, `Invalid method '${ex.method}'`);
  for (const route of ROUTES) {
    if (route.tcpOnly && ctx.service !== 'tcp') continue;
    const m = route.rx.exec(ex.path);
    if (!m) continue;
    let handler = route.methods[ex.method];
    if (handler === optionsImage && ctx.legacy === 'options-405') handler = undefined;
    if (!handler) throw methodNotDefined(ex);
    return handler(ctx, ex, m[1] ?? '');
  }
  throw new ImageioHttpError(404, `No handler for '${ex.path}'`);
}

/** Apply a matching fault rule. Returns the action when the handler must act on it (mid-body, after). */
async function checkFault(
  ctx: ServiceContext,
  ex: Exchange,
  method: FaultMethod,
  op: FaultOp,
): Promise<{ drop: 'mid-body' | 'after' } | undefined> {
  const action = await checkFaultOrStall(ctx, ex, method, op);
  if (action && 'stallMs' in action) await sleep(action.stallMs); // the request is read already
  return action && 'drop' in action ? action : undefined;
}

/** Like checkFault, but a stall is returned for the handler (a PUT reads its body first). */
async function checkFaultOrStall(
  ctx: ServiceContext,
  ex: Exchange,
  method: FaultMethod,
  op: FaultOp,
): Promise<{ drop: 'mid-body' | 'after' } | { stallMs: number } | undefined> {
  const action = ctx.faults.match(method, op);
  if (!action) return undefined;
  ctx.logger.debug({ method, op, action }, 'injecting fault');
  if ('delayMs' in action) {
    await sleep(action.delayMs);
    return undefined;
  }
  if ('stallMs' in action) return action;
  if ('status' in action) {
    if (ex.contentLength) ex.consumed += await drainBody(ex.req, ex.conn, ex.contentLength - ex.consumed);
    throw new ImageioHttpError(action.status, action.body ?? INTERNAL_ERROR_MESSAGE, { close: action.status === 403 });
  }
  if (action.drop === 'before') dropAfter(ex);
  return { drop: action.drop };
}

/** --latency: the op is done; its response waits (GET: before its body is read and sent). */
async function addLatency(ctx: ServiceContext, op: FaultOp): Promise<void> {
  const ms = ctx.faults.latency(op);
  if (ms > 0) await sleep(ms);
}

/** The socket was dropped on purpose by a fault rule; nothing more to send. */
class FaultDropped extends Error {}

function dropAfter(ex: Exchange): never {
  ex.conn.destroy('fault');
  throw new FaultDropped();
}

/** Server information: no ticket needed (imageio answers it for any ticket id). */
async function getChecksumAlgorithms(ctx: ServiceContext, ex: Exchange): Promise<void> {
  sendJson(ex.res, { algorithms: [...ALGORITHMS] }, false);
}

/** Python's int() of a query value: optional spaces and sign, digits with single underscores. */
function pyInt(text: string): number | undefined {
  const m = /^\s*([+-]?)(\d+(?:_\d+)*)\s*$/.exec(text);
  return m ? Number(m[1] + m[2].replace(/_/g, '')) : undefined;
}

/**
 * imageio's checksum of the whole image (blkhash, see blkhash.ts): {"algorithm", "block_size",
 * "checksum"}. Every block is read (holes read fast): the allocation map only knows what came
 * through this server, and a checksum must see what is really in the file.
 */
async function getChecksum(ctx: ServiceContext, ex: Exchange, ticketId: string): Promise<void> {
  requireTicketId(ticketId);
  const algorithm = validateEnum(ex.query, 'algorithm', ALGORITHMS, DEFAULT_ALGORITHM);
  let blockSize = DEFAULT_BLOCK_SIZE;
  const bs = ex.query.get('block_size');
  if (bs !== undefined) {
    const n = pyInt(bs);
    if (n === undefined) throw new ImageioHttpError(400, `Invalid block size: ${reprString(bs)}`);
    blockSize = n;
  }
  const invalid = checkBlockSize(blockSize);
  if (invalid) throw new ImageioHttpError(400, invalid);
  const ticket = ctx.ticket.authorize(ticketId, 'read');
  const fh = await openBackend(ctx, ex);
  ctx.logger.debug({ conn: ex.conn.stats.id, algorithm, blockSize }, 'checksum');
  const result = await ticket.run(async () => {
    const hash = new BlockHash(algorithm, blockSize);
    const size = ctx.image.fileSize;
    const buf = Buffer.allocUnsafe(blockSize);
    for (let pos = 0; pos < size; pos += blockSize) {
      const n = Math.min(blockSize, size - pos);
      await ctx.image.readExact(fh, buf, n, pos);
      hash.update(buf.subarray(0, n));
      if (ex.conn.socket.destroyed) throw new ConnectionLostError();
    }
    return hash.result();
  });
  bump(ctx.stats.ops, 'checksum');
  sendJson(ex.res, { algorithm: result.algorithm, block_size: result.block_size, checksum: result.checksum }, false);
}

async function getInfo(ctx: ServiceContext, ex: Exchange): Promise<void> {
  bump(ctx.stats.ops, 'info');
  sendJson(ex.res, { version: IMAGEIO_VERSION }, false);
}

async function optionsImage(ctx: ServiceContext, ex: Exchange, ticketId: string): Promise<void> {
  if (ctx.legacy === 'options-204') {
    sendEmpty(ex.res, 204, false);
    return;
  }
  requireTicketId(ticketId);
  const options: Record<string, string | string[] | number> = {};
  if (ctx.unixSocket !== undefined) options.unix_socket = ctx.unixSocket;
  let allow: string[];
  if (ticketId === '*') {
    allow = ['OPTIONS', 'GET', 'PUT', 'PATCH'];
    options.features = ALL_FEATURES;
  } else {
    const ticket = ctx.ticket.authorize(ticketId, 'read');
    const fault = await checkFault(ctx, ex, 'OPTIONS', 'options');
    await openBackend(ctx, ex);
    ticket.touch();
    allow = ['OPTIONS'];
    if (ticket.may('read')) {
      allow.push('GET');
      options.features = BASE_FEATURES;
    }
    if (ticket.may('write')) {
      allow.push('PUT', 'PATCH');
      options.features = ALL_FEATURES;
    }
    options.max_readers = MAX_CONNECTIONS;
    options.max_writers = ctx.backend === 'file' ? 1 : MAX_CONNECTIONS;
    if (fault) dropAfter(ex);
  }
  bump(ctx.stats.ops, 'options');
  sendJson(ex.res, options, false, { allow: allow.join(',') });
}

/** The connection's own backend (file handle), opened on its first authorized request. */
async function openBackend(ctx: ServiceContext, ex: Exchange) {
  ex.conn.stats.authorized = true;
  return ex.conn.fileHandle(ctx.image);
}

async function getImage(ctx: ServiceContext, ex: Exchange, ticketId: string): Promise<void> {
  requireTicketId(ticketId);
  // Used by the engine UI to close the connection after a download.
  if (ex.query.get('close') === 'y') ex.closeAfter = true;
  const rangeHeader = ex.req.headers.range;
  const range = rangeHeader !== undefined ? parseRange(rangeHeader) : undefined;
  const ticket = ctx.ticket.authorize(ticketId, 'read');
  const fh = await openBackend(ctx, ex);
  const offset = range?.first ?? 0;
  let size: number;
  // imageio: min(ticket size, backend size). A writable image was extended to the ticket size.
  const available = Math.min(ticket.size, ctx.image.fileSize);
  if (range?.last !== undefined) {
    size = range.last - offset + 1;
    checkAllowedRange(offset, size, ticket.size);
    if (offset + size > available) {
      throw new ImageioHttpError(416, `Requested more bytes than available: ${offset + size} > ${available}`, {
        contentRange: `bytes */${available}`,
      });
    }
  } else {
    size = available - offset;
    // imageio does not check an open range; past the end it would fail anyway.
    checkAllowedRange(offset, size, ticket.size);
  }
  const fault = await checkFault(ctx, ex, 'GET', 'read');
  await addLatency(ctx, 'read');
  const res = ex.res;
  beginResponse(res, range ? 206 : 200, ex.closeAfter);
  res.setHeader('content-length', size);
  res.setHeader('content-type', 'application/octet-stream');
  res.setHeader('content-disposition', 'attachment');
  if (range) res.setHeader('content-range', `bytes ${offset}-${offset + size - 1}/${ticket.size}`);
  if (ex.closeAfter) ex.conn.stats.closedBy ??= 'server';
  const limit = fault?.drop === 'mid-body' ? Math.floor(size / 2) : size;
  const readChunk = async (pos: number) => {
    const n = Math.min(READ_CHUNK, limit - pos);
    const buf = Buffer.allocUnsafe(n);
    await ctx.image.readExact(fh, buf, n, offset + pos);
    return buf;
  };
  await ticket.run(async () => {
    // Read the next chunk while the current one is being sent.
    let pos = 0;
    let next = limit > 0 ? readChunk(0) : undefined;
    try {
      while (next) {
        const buf = await next;
        pos += buf.length;
        next = pos < limit ? readChunk(pos) : undefined;
        if (res.destroyed) throw new ConnectionLostError();
        ex.conn.stats.bytesRead += buf.length;
        ctx.stats.bytesRead += buf.length;
        if (!res.write(buf)) await waitDrain(res);
      }
    } finally {
      next?.catch(() => undefined);
    }
  });
  if (fault) {
    // End the socket rather than destroy it, so the partial body reaches the client first.
    const socket = ex.conn.socket;
    ex.conn.stats.closedBy ??= 'fault';
    socket.end();
    setTimeout(() => socket.destroy(), 1000).unref();
    throw new FaultDropped();
  }
  ex.conn.stats.reads++;
  bump(ctx.stats.ops, 'read');
  res.end();
}

function waitDrain(res: ServerResponse): Promise<void> {
  return new Promise((resolve, reject) => {
    const onDrain = () => {
      res.off('close', onClose);
      resolve();
    };
    const onClose = () => {
      res.off('drain', onDrain);
      reject(new ConnectionLostError());
    };
    res.once('drain', onDrain);
    res.once('close', onClose);
  });
}

async function putImage(ctx: ServiceContext, ex: Exchange, ticketId: string): Promise<void> {
  requireTicketId(ticketId);
  if (ex.query.get('close') === 'y') ex.closeAfter = true;
  const size = ex.contentLength;
  if (size === undefined) throw new ImageioHttpError(400, 'Content-Length header is required');
  const cr = ex.req.headers['content-range'];
  const offset = cr !== undefined ? parseContentRange(cr).first : 0;
  const flush = validateEnum(ex.query, 'flush', ['y', 'n'], 'y') === 'y';
  const ticket = ctx.ticket.authorize(ticketId, 'write');
  checkAllowedRange(offset, size, ticket.size);
  const action = await checkFaultOrStall(ctx, ex, 'PUT', 'write');
  const fault = action && 'drop' in action ? action : undefined;
  const fh = await openBackend(ctx, ex);
  const st = ex.conn.stats;
  const limit = fault?.drop === 'mid-body' ? Math.floor(size / 2) : size;
  const write = async (bufs: Buffer[], n: number, rel: number) => {
    await ctx.image.writeAt(fh, bufs, n, offset + rel);
    st.bytesWritten += n;
    st.unflushedBytes += n;
    ctx.stats.bytesWritten += n;
  };
  await ticket.run(async () => {
    if (size > 0) {
      st.writes++;
      st.unflushedWrites++;
    }
    if (action && 'stallMs' in action) {
      // A storage stall: the whole body is here, the write lands late, client or not.
      const body = await readBody(ex.req, ex.conn, size);
      ex.consumed += body.length;
      await sleep(action.stallMs);
      if (body.length > 0) await write([body], body.length, 0);
    } else {
      ex.consumed += await pumpBody(ex.req, ex.conn, size, write, limit);
    }
    if (fault?.drop === 'mid-body') dropAfter(ex);
    if (flush) await flushConnection(ctx, ex);
  });
  if (fault) dropAfter(ex);
  await addLatency(ctx, 'write');
  bump(ctx.stats.ops, 'write');
  sendEmpty(ex.res, 200, ex.closeAfter);
}

async function flushConnection(ctx: ServiceContext, ex: Exchange): Promise<void> {
  const fh = await ex.conn.fileHandle(ctx.image);
  await fh.sync();
  const st = ex.conn.stats;
  st.flushes++;
  st.unflushedWrites = 0;
  st.unflushedBytes = 0;
  ctx.stats.flushes++;
}

async function patchImage(ctx: ServiceContext, ex: Exchange, ticketId: string): Promise<void> {
  requireTicketId(ticketId);
  // imageio reads Content-Length bytes; without it the body reads as empty.
  const body = ex.contentLength ? await readBody(ex.req, ex.conn, ex.contentLength) : Buffer.alloc(0);
  ex.consumed += body.length;
  let msg;
  try {
    msg = pyJsonLoads(body.toString('utf8'));
  } catch (err) {
    if (err instanceof PyJsonError) throw new ImageioHttpError(400, `Invalid JSON message ${err.message}`);
    throw err;
  }
  // A JSON array or scalar makes imageio fail with a TypeError: 500.
  if (!isPyDict(msg)) throw new Error('PATCH message is not a JSON object');
  const op = validateEnum(msg, 'op', ['zero', 'flush']);
  if (op === 'zero') await zeroImage(ctx, ex, ticketId, msg);
  else await flushImage(ctx, ex, ticketId);
}

async function zeroImage(ctx: ServiceContext, ex: Exchange, ticketId: string, msg: PyDict): Promise<void> {
  const size = validateInteger(msg, 'size', 0);
  const offset = validateInteger(msg, 'offset', 0, 0);
  const flush = validateBoolean(msg, 'flush', false);
  const ticket = ctx.ticket.authorize(ticketId, 'write');
  checkAllowedRange(offset, size, ticket.size);
  const fault = await checkFault(ctx, ex, 'PATCH', 'zero');
  if (fault?.drop === 'mid-body') dropAfter(ex);
  const fh = await openBackend(ctx, ex);
  const st = ex.conn.stats;
  await ticket.run(async () => {
    await ctx.image.zero(fh, offset, size);
    st.zeros++;
    st.bytesZeroed += size;
    st.unflushedWrites++;
    st.unflushedBytes += size;
    ctx.stats.bytesZeroed += size;
    if (flush) await flushConnection(ctx, ex);
  });
  if (fault) dropAfter(ex);
  await addLatency(ctx, 'zero');
  bump(ctx.stats.ops, 'zero');
  sendEmpty(ex.res, 200, false);
}

async function flushImage(ctx: ServiceContext, ex: Exchange, ticketId: string): Promise<void> {
  const ticket = ctx.ticket.authorize(ticketId, 'write');
  const fault = await checkFault(ctx, ex, 'PATCH', 'flush');
  if (fault?.drop === 'mid-body') dropAfter(ex);
  await openBackend(ctx, ex);
  await ticket.run(() => flushConnection(ctx, ex));
  if (fault) dropAfter(ex);
  await addLatency(ctx, 'flush');
  bump(ctx.stats.ops, 'flush');
  sendEmpty(ex.res, 200, false);
}

async function getExtents(ctx: ServiceContext, ex: Exchange, ticketId: string): Promise<void> {
  requireTicketId(ticketId);
  const ticket = ctx.ticket.authorize(ticketId, 'read');
  await openBackend(ctx, ex);
  const context = validateEnum(ex.query, 'context', ['zero', 'dirty'], 'zero');
  if (context === 'dirty') throw new ImageioHttpError(404, 'Ticket does not support dirty extents');
  const fault = await checkFault(ctx, ex, 'GET', 'extents');
  if (fault?.drop === 'mid-body') dropAfter(ex);
  // The file backend reports one data extent; the nbd backend reports real allocation.
  const extents =
    ctx.backend === 'file'
      ? [{ start: 0, length: ticket.size, zero: false, hole: false }]
      : ctx.image.map.extents(ticket.size).map((e) => ({ start: e.start, length: e.length, zero: e.zero, hole: e.zero }));
  if (fault) dropAfter(ex);
  bump(ctx.stats.ops, 'extents');
  sendJson(ex.res, extents, false);
}
