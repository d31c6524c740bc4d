/**
 * Counters the server keeps so tests can check what a client did: requests per method and per
 * op, bytes, and for every connection (closed ones too) whether it flushed what it wrote.
 */

export interface ImageioConnectionStats {
  id: number;
  service: 'tcp' | 'unix';
  remote: string;
  open: boolean;
  openedAt: number;
  closedAt?: number;
  /** Who closed it: the client, the server after a response (close/error), idle timeout, a fault, or server shutdown. */
  closedBy?: 'client' | 'server' | 'idle' | 'fault' | 'shutdown';
  requests: number;
  /** A request on it passed ticket authorization (so it opened its own file handle). */
  authorized: boolean;
  reads: number;
  writes: number;
  zeros: number;
  flushes: number;
  bytesRead: number;
  bytesWritten: number;
  bytesZeroed: number;
  /** PUTs and zeros since the last flush on this connection (a PUT with flush=y flushes itself). */
  unflushedWrites: number;
  unflushedBytes: number;
}

export interface ImageioServerStats {
  /** Requests received, by HTTP method (including failed ones). */
  methods: Record<string, number>;
  /** Operations performed successfully: options, read, write, zero, flush, extents, info. */
  ops: Record<string, number>;
  /** Responses sent, by status code. */
  statuses: Record<string, number>;
  bytesRead: number;
  bytesWritten: number;
  bytesZeroed: number;
  flushes: number;
  faultsApplied: number;
  connectionsOpened: number;
  connectionsOpen: number;
  maxConcurrentConnections: number;
  connections: ImageioConnectionStats[];
}

export function newConnectionStats(id: number, service: 'tcp' | 'unix', remote: string): ImageioConnectionStats {
  return {
    id,
    service,
    remote,
    open: true,
    openedAt: Date.now(),
    requests: 0,
    authorized: false,
    reads: 0,
    writes: 0,
    zeros: 0,
    flushes: 0,
    bytesRead: 0,
    bytesWritten: 0,
    bytesZeroed: 0,
    unflushedWrites: 0,
    unflushedBytes: 0,
  };
}

export function bump(counts: Record<string, number>, key: string, n = 1): void {
  counts[key] = (counts[key] ?? 0) + n;
}
