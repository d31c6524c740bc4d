/**
 * Streams a request body to a sink in order with bounded memory: chunks arriving while the
 * sink is busy are batched (one writev per batch) and the socket is paused past a high-water
 * mark. Detects a client that half-closes before sending Content-Length bytes.
 */
import type { IncomingMessage } from 'node:http';
import type { Connection } from './connection';

/** Pause reading when this much body is queued behind a running write. */
const HIGH_WATER = 8 << 20;

/** The client half-closed before sending the whole body (imageio: 400 + close). */
export class ShortBodyError extends Error {
  constructor(
    readonly requested: number,
    readonly available: number,
  ) {
    super(`Requested ${requested} bytes, available ${available} bytes`);
  }
}

/** The connection went away while reading the body; nothing can be answered. */
export class ConnectionLostError extends Error {
  constructor() {
    super('connection lost while reading the request body');
  }
}

export type BodySink = (bufs: Buffer[], length: number, offset: number) => Promise<void>;

/**
 * Read `length` bytes of body (or stop after `limit` bytes) and pass them to `sink` in
 * order, with `offset` counting from 0. Resolves with the bytes passed to the sink.
 */
export function pumpBody(
  req: IncomingMessage,
  conn: Connection,
  length: number,
  sink: BodySink,
  limit = length,
): Promise<number> {
  return new Promise<number>((resolve, reject) => {
    let queue: Buffer[] = [];
    let queued = 0;
    let received = 0; // bytes taken from the stream (<= limit)
    let sunk = 0;
    let writing = false;
    let finished = false;
    let short = false;
    let lost = false;
    let failure: unknown;

    const cleanup = () => {
      req.off('data', onData);
      req.off('end', onEnd);
      req.off('aborted', onLost);
      req.off('close', onClose);
      req.off('error', onLost);
      if (conn.onShortBody === onShort) conn.onShortBody = undefined;
    };
    const settle = () => {
      if (finished || writing) return;
      if (failure !== undefined) {
        finished = true;
        cleanup();
        reject(failure);
      } else if (queue.length > 0) {
        void pump();
      } else if (received >= limit) {
        finished = true;
        cleanup();
        // Stop the stream from buffering the rest when we stopped early (faults).
        if (limit < length) req.pause();
        resolve(sunk);
      } else if (short) {
        finished = true;
        cleanup();
        reject(new ShortBodyError(length, received));
      } else if (lost) {
        finished = true;
        cleanup();
        reject(new ConnectionLostError());
      }
    };
    const pump = async () => {
      writing = true;
      const bufs = queue;
      const n = queued;
      queue = [];
      queued = 0;
      if (req.isPaused() && received < limit) req.resume();
      try {
        await sink(bufs, n, sunk);
        sunk += n;
      } catch (err) {
        failure = err;
      }
      writing = false;
      settle();
    };
    const onData = (chunk: Buffer) => {
      if (finished || received >= limit) return;
      if (received + chunk.length > limit) chunk = chunk.subarray(0, limit - received);
      received += chunk.length;
      queue.push(chunk);
      queued += chunk.length;
      if (queued >= HIGH_WATER || (received >= limit && limit < length)) req.pause();
      if (!writing) void pump();
    };
    const onEnd = () => {
      // Complete per Content-Length; settle() resolves once the queue drained.
      if (received < limit) short = true;
      settle();
    };
    const onShort = () => {
      short = true;
      settle();
    };
    const onLost = () => {
      lost = true;
      settle();
    };
    const onClose = () => {
      if (!req.complete) onLost();
    };

    if (limit <= 0) {
      resolve(0);
      return;
    }
    conn.onShortBody = onShort;
    // Half-closed already: take what Node buffered, then fail.
    if (conn.shortBody) setImmediate(onShort);
    req.on('data', onData);
    req.on('end', onEnd);
    req.on('aborted', onLost);
    req.on('close', onClose);
    req.on('error', onLost);
    req.resume();
  });
}

/** Read a whole (small) body into one buffer; short or lost bodies reject as in pumpBody. */
export async function readBody(req: IncomingMessage, conn: Connection, length: number): Promise<Buffer> {
  const parts: Buffer[] = [];
  await pumpBody(req, conn, length, async (bufs) => {
    parts.push(...bufs);
  });
  return Buffer.concat(parts);
}

/** Read and discard the body (error responses that keep the connection). */
export function drainBody(req: IncomingMessage, conn: Connection, length: number): Promise<number> {
  return pumpBody(req, conn, length, async () => undefined);
}
