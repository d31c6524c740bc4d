/**
 * The backend interface: what an export is made of, in the spirit of nbdkit's plugin callbacks.
 *
 * One Backend instance serves one export and is shared by every NBD connection to that export,
 * so its methods may be called concurrently (many requests in flight, several connections).
 * Layers (coalescing, stats, fault injection) implement the same interface and wrap another
 * Backend, like nbdkit filters; the server neither knows nor cares how deep the stack is.
 *
 * Promises:
 * - The server validates every request before calling a backend: offsets and lengths are
 *   integers with offset + length <= size(), write-type calls only when capabilities().canWrite,
 *   zero only when canZero, trim only when canTrim, extents only when canExtents, and so on.
 * - Failures reject with a BackendError (src/core/errors.ts) whose `errno` is what the NBD client
 *   gets; any other rejection is reported as EIO.
 * - flush() resolves only when every write and zero that resolved before flush() was called,
 *   through any connection, is durable. When capabilities().canMultiConn is true this holds
 *   across connections, which is what lets the server advertise CAN_MULTI_CONN.
 * - A write or zero with `fua: true` resolves only when that data is durable.
 *
 * Payload ownership (zero-copy data path; the mechanism is src/core/payload-pool.ts):
 * - pwrite(data) and pwritev(list) hand the caller's reference to each buffer to the callee.
 *   The caller does not touch those bytes again. The callee releases each buffer exactly once
 *   (releaseBuffer) when it no longer needs the bytes, whether the call succeeds or fails; it
 *   may keep them after resolving (write-back), or pass the reference on to the layer below.
 * - pread() returns a buffer whose reference belongs to the caller, who releases it when done
 *   (the server: once the reply has been written to the socket). It may be a subarray of a
 *   larger pooled buffer (read-ahead) or a buffer not from a pool (release is then a no-op).
 * - Forgetting a release is not a correctness bug (the garbage collector reclaims the memory
 *   and the pool stops counting it) but it defeats reuse; releasing twice throws.
 */
import { releaseBuffers } from './payload-pool';

/** Extent flags, as NBD base:allocation defines them. */
export const EXTENT_HOLE = 1;
export const EXTENT_ZERO = 2;

/** One run of bytes with the same allocation status. */
export interface Extent {
  offset: number;
  length: number;
  /** Bitwise OR of EXTENT_HOLE and EXTENT_ZERO; 0 means allocated data. */
  flags: number;
}

/** Capabilities, asked once when a connection negotiates and cached, like nbdkit's can_*. */
export interface Capabilities {
  canWrite: boolean;
  canFlush: boolean;
  canFua: boolean;
  canZero: boolean;
  /** Zeroing is much faster than writing zeroes (only then may FAST_ZERO succeed). */
  canFastZero: boolean;
  canTrim: boolean;
  canCache: boolean;
  canExtents: boolean;
  /** flush() on any connection covers writes completed on every connection. */
  canMultiConn: boolean;
}

/** Block size constraints advertised with NBD_INFO_BLOCK_SIZE. */
export interface BlockSize {
  minimum: number;
  preferred: number;
  maximum: number;
}

export interface WriteFlags {
  /** Forced unit access: durable before the promise resolves. */
  fua?: boolean;
}

export interface ZeroFlags extends WriteFlags {
  /** The backend may punch a hole (NBD: NO_HOLE not set). */
  mayTrim?: boolean;
  /** Fail with ENOTSUP at once, touching nothing, unless zeroing is fast. */
  fastZero?: boolean;
}

export interface Backend {
  /** A short name for logs and stats, e.g. "file", "memory", "imageio", "coalesce". */
  readonly name: string;
  /** Export size in bytes. Fixed for the backend's lifetime. */
  size(): number;
  capabilities(): Capabilities;
  /** Preferred request sizes; the server fills in defaults when absent. */
  blockSize?(): Partial<BlockSize>;

  /** Read exactly `length` bytes at `offset`; the caller owns (and releases) the result. */
  pread(offset: number, length: number): Promise<Buffer>;
  /** Write all of `data` at `offset`; takes over the reference to `data` (see the header comment). */
  pwrite(data: Buffer, offset: number, flags?: WriteFlags): Promise<void>;
  /**
   * Write the concatenation of `data` at `offset` as one operation (one HTTP request for
   * imageio); takes over the reference to each buffer. Optional: writeList() falls back to
   * pwrite of a joined copy for backends without it.
   */
  pwritev?(data: readonly Buffer[], offset: number, flags?: WriteFlags): Promise<void>;
  /** Make [offset, offset + length) read back as zeroes. */
  zero(offset: number, length: number, flags?: ZeroFlags): Promise<void>;
  /** Discard [offset, offset + length); contents afterwards are unspecified. */
  trim?(offset: number, length: number, flags?: WriteFlags): Promise<void>;
  /** Hint that the range will be read soon. */
  cache?(offset: number, length: number): Promise<void>;
  /** Make every write and zero completed before this call durable (see the header comment). */
  flush(): Promise<void>;
  /**
   * Allocation status of [offset, offset + length). Returns at least one extent starting at
   * `offset`, contiguous, in order; the last may end past offset + length. Reporting data
   * (flags 0) is always safe.
   */
  extents?(offset: number, length: number): Promise<Extent[]>;
  /**
   * Release resources. Layers that buffer data must send it first and reject if that fails,
   * so the caller can report data loss and exit non-zero.
   */
  close(): Promise<void>;
}

/**
 * A convenience base for layers: forwards every call to `inner`. Subclasses override what they
 * change, like an nbdkit filter that implements only some callbacks.
 */
export class PassthroughLayer implements Backend {
  readonly name: string;
  constructor(protected readonly inner: Backend, name?: string) {
    this.name = name ?? inner.name;
  }
  size(): number {
    return this.inner.size();
  }
  capabilities(): Capabilities {
    return this.inner.capabilities();
  }
  blockSize(): Partial<BlockSize> {
    return this.inner.blockSize ? this.inner.blockSize() : {};
  }
  pread(offset: number, length: number): Promise<Buffer> {
    return this.inner.pread(offset, length);
  }
  pwrite(data: Buffer, offset: number, flags?: WriteFlags): Promise<void> {
    return this.inner.pwrite(data, offset, flags);
  }
  pwritev(data: readonly Buffer[], offset: number, flags?: WriteFlags): Promise<void> {
    return writeList(this.inner, data, offset, flags);
  }
  zero(offset: number, length: number, flags?: ZeroFlags): Promise<void> {
    return this.inner.zero(offset, length, flags);
  }
  trim(offset: number, length: number, flags?: WriteFlags): Promise<void> {
    if (!this.inner.trim) return Promise.resolve();
    return this.inner.trim(offset, length, flags);
  }
  cache(offset: number, length: number): Promise<void> {
    if (!this.inner.cache) return Promise.resolve();
    return this.inner.cache(offset, length);
  }
  flush(): Promise<void> {
    return this.inner.flush();
  }
  extents(offset: number, length: number): Promise<Extent[]> {
    if (!this.inner.extents) return Promise.resolve([{ offset, length, flags: 0 }]);
    return this.inner.extents(offset, length);
  }
  close(): Promise<void> {
    return this.inner.close();
  }
}

/**
 * Write a list of buffers at `offset` through `backend` as one operation: pwritev when the
 * backend has it, else one pwrite (of a joined copy when there are several buffers, whose
 * originals are released at once). Takes over the reference to each buffer, like pwritev.
 */
export function writeList(backend: Backend, data: readonly Buffer[], offset: number, flags?: WriteFlags): Promise<void> {
  if (backend.pwritev) return backend.pwritev(data, offset, flags);
  if (data.length === 1) return backend.pwrite(data[0], offset, flags);
  const joined = Buffer.concat(data as Buffer[]);
  releaseBuffers(data);
  return backend.pwrite(joined, offset, flags);
}
