/**
 * A raw disk image in a regular file: `file:///path/disk.raw`. One shared FileHandle serves every
 * connection, so one fdatasync covers the writes of all of them: multi-conn is safe.
 *
 * Node exposes neither fallocate nor SEEK_DATA/SEEK_HOLE, so:
 * - zero of 8 MiB or more runs fallocate(1) (punch hole, or zero range with NO_HOLE); smaller
 *   ones, or where that fails, write zeroes from a shared zero buffer in bounded chunks,
 *   skipping chunks that already read as zeroes (holes stay holes). A zero that reaches the
 *   end of the file and may punch holes truncates and re-extends the file.
 * - extents are not offered (canExtents false): the server reports everything as data, which the
 *   spec says is always correct. Detecting holes by reading would cost a full read.
 * The size is fixed at open; reads past the current end of the file (only possible while a
 * truncating zero runs) return zeroes.
 *
 * Payload memory (src/core/backend.ts): pread reads into a buffer from the payload pool, which the
 * caller releases; pwrite/pwritev release what they are given once the kernel has the bytes
 * (before a FUA sync), whether the write succeeded or not.
 */
import { execFile } from 'node:child_process';
import * as fs from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';
import { promisify } from 'node:util';
import type { Backend, Capabilities, WriteFlags, ZeroFlags } from '../core/backend';
import { releaseBuffer, releaseBuffers, type PayloadPool } from '../core/payload-pool';
import { BackendError } from '../core/errors';
import { NbdError } from '../nbd/codec/constants';

const ZERO_CHUNK = 4 * 1024 * 1024;
/** Zeroes at least this large go to fallocate(1); smaller ones cost less than its start-up. */
const FALLOCATE_MIN = 8 * 1024 * 1024;
let fallocateMissing = false;
const execFileAsync = promisify(execFile);
let zeroBuffer: Buffer | undefined;

export interface FileBackendOptions {
  readonly?: boolean;
  /** Where read buffers and zeroing scratch come from. */
  pool: PayloadPool;
}

export class FileBackend implements Backend {
  readonly name = 'file';
  private writing = false;
  private readonly waitingWrites: (() => void)[] = [];

  constructor(
    private readonly fh: FileHandle,
    private readonly bytes: number,
    private readonly ro: boolean,
    /** Path, for messages. */
    readonly path: string,
    private readonly pool: PayloadPool,
  ) {}

  size(): number {
    return this.bytes;
  }

  capabilities(): Capabilities {
    const w = !this.ro;
    return {
      canWrite: w,
      canFlush: true,
      canFua: w,
      canZero: w,
      canFastZero: false,
      canTrim: false,
      canCache: false,
      canExtents: false,
      canMultiConn: true,
    };
  }

  // pread/pwrite/pwritev use fs's callback API on the FileHandle's fd: one promise per request
  // instead of the five or so that FileHandle's async methods and async wrappers cost, which
  // shows at thousands of requests per GiB.

  pread(offset: number, length: number): Promise<Buffer> {
    const buf = this.pool.tryAllocate(length);
    if (!buf) return this.pool.allocate(length).then((b) => this.readInto(b, offset));
    return this.readInto(buf, offset);
  }

  pwrite(data: Buffer, offset: number, flags?: WriteFlags): Promise<void> {
    return new Promise((resolve, reject) => {
      const fd = this.fh.fd;
      const onWritten = (err: NodeJS.ErrnoException | null, n: number): void => {
        if (!err && n > 0 && (done += n) < data.length) {
          fs.write(fd, data, done, data.length - done, offset + done, onWritten);
          return;
        }
        this.endWrite();
        releaseBuffer(data); // the kernel has the bytes (or never will)
        if (err || n <= 0) reject(this.ioError('write', offset, data.length, err ?? new Error('short write')));
        else if (flags?.fua) resolve(this.sync('write', offset, data.length));
        else resolve();
      };
      let done = 0;
      if (data.length === 0) {
        releaseBuffer(data);
        resolve();
      } else {
        this.startWrite(() => fs.write(fd, data, 0, data.length, offset, onWritten));
      }
    });
  }

  /** One writev(2) for the whole list (more when the kernel writes less than asked). */
  pwritev(data: readonly Buffer[], offset: number, flags?: WriteFlags): Promise<void> {
    let length = 0;
    for (const b of data) length += b.length;
    return new Promise((resolve, reject) => {
      const fd = this.fh.fd;
      const onWritten = (err: NodeJS.ErrnoException | null, n: number): void => {
        if (!err && n > 0 && (done += n) < length) {
          fs.writev(fd, dropPrefix(data, done), offset + done, onWritten);
          return;
        }
        this.endWrite();
        releaseBuffers(data);
        if (err || n <= 0) reject(this.ioError('write', offset, length, err ?? new Error('short write')));
        else if (flags?.fua) resolve(this.sync('write', offset, length));
        else resolve();
      };
      let done = 0;
      if (length === 0) {
        releaseBuffers(data);
        resolve();
      } else {
        this.startWrite(() => fs.writev(fd, data as Buffer[], offset, onWritten));
      }
    });
  }

  /**
   * One pwrite(2) at a time: buffered writes to one file take its inode lock, so concurrent
   * writers on the thread pool only wait for each other, spinning on the lock (CPU burnt for
   * nothing) and leaving no thread for reads and syncs. Writes queue here instead, in order.
   */
  private startWrite(start: () => void): void {
    if (this.writing) {
      this.waitingWrites.push(start);
    } else {
      this.writing = true;
      start();
    }
  }

  private endWrite(): void {
    const next = this.waitingWrites.shift();
    if (next) next();
    else this.writing = false;
  }

  /** Fill buf from the file at offset; past EOF (a truncating zero is running) reads zeroes. */
  private readInto(buf: Buffer, offset: number): Promise<Buffer> {
    return new Promise((resolve, reject) => {
      const fd = this.fh.fd;
      const onRead = (err: NodeJS.ErrnoException | null, n: number): void => {
        if (err) {
          releaseBuffer(buf);
          reject(this.ioError('read', offset, buf.length, err));
          return;
        }
        done += n;
        if (n === 0) buf.fill(0, done);
        else if (done < buf.length) {
          fs.read(fd, buf, done, buf.length - done, offset + done, onRead);
          return;
        }
        resolve(buf);
      };
      let done = 0;
      fs.read(fd, buf, 0, buf.length, offset, onRead);
    });
  }

  async zero(offset: number, length: number, flags?: ZeroFlags): Promise<void> {
    if (flags?.fastZero) throw new BackendError(NbdError.ENOTSUP, 'fast zero is not supported by the file backend');
    try {
      if (flags?.mayTrim && offset + length === this.bytes) {
        // Zeroing the tail: drop it and grow the file back, leaving a hole.
        await this.fh.truncate(offset);
        await this.fh.truncate(this.bytes);
      } else if (length >= FALLOCATE_MIN && (await this.fallocate(offset, length, !!flags?.mayTrim))) {
        // Done by the kernel: a hole (may trim) or zeroed blocks (NO_HOLE), no data written.
      } else {
        // Node has no fallocate: write zeroes, but only where the file does not already read
        // as zeroes. Copy tools zero every hole of the source, and on a fresh sparse target
        // this keeps those holes holes and costs reads (of holes: cheap) instead of writes.
        const zeroes = (zeroBuffer ??= Buffer.alloc(ZERO_CHUNK));
        // Scratch from the pool: copy tools send a zero per hole, and a fresh 4 MiB each time
        // costs page faults and garbage collection.
        const scratch = await this.pool.allocate(Math.min(ZERO_CHUNK, length));
        try {
          for (let pos = offset, end = offset + length; pos < end; ) {
            const n = Math.min(ZERO_CHUNK, end - pos);
            const { bytesRead } = await this.fh.read(scratch, 0, n, pos);
            const alreadyZero = bytesRead === n && scratch.subarray(0, n).equals(zeroes.subarray(0, n));
            if (!alreadyZero) await this.writeAll(n === ZERO_CHUNK ? zeroes : zeroes.subarray(0, n), pos);
            pos += n;
          }
        } finally {
          releaseBuffer(scratch);
        }
      }
      if (flags?.fua) await this.fh.datasync();
    } catch (err) {
      throw this.ioError('zero', offset, length, err);
    }
  }

  /**
   * Node has no fallocate(2); util-linux's fallocate(1) (on every Debian system) does it for a
   * few ms per call, which beats reading and writing for large zeroes. It works on our open
   * file through /proc/PID/fd, so a renamed or replaced path cannot be hit. Returns false if
   * it is missing or the file system refuses; the caller then writes zeroes.
   */
  private async fallocate(offset: number, length: number, punch: boolean): Promise<boolean> {
    if (fallocateMissing) return false;
    const mode = punch ? '--punch-hole' : '--zero-range';
    const target = `/proc/${process.pid}/fd/${this.fh.fd}`;
    try {
      await execFileAsync('fallocate', [mode, '--offset', String(offset), '--length', String(length), target]);
      return true;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') fallocateMissing = true;
      return false;
    }
  }

  async flush(): Promise<void> {
    await this.sync('flush', 0, 0);
  }

  private async sync(op: string, offset: number, length: number): Promise<void> {
    try {
      await this.fh.datasync();
    } catch (err) {
      throw this.ioError(op, offset, length, err);
    }
  }



  async close(): Promise<void> {
    await this.fh.close();
  }

  private async writeAll(data: Buffer, offset: number): Promise<void> {
    let done = 0;
    while (done < data.length) {
      const { bytesWritten } = await this.fh.write(data, done, data.length - done, offset + done);
      done += bytesWritten;
    }
  }

  private ioError(op: string, offset: number, length: number, err: unknown): BackendError {
    const code = (err as { code?: string }).code;
    const errno = code === 'ENOSPC' ? NbdError.ENOSPC : NbdError.EIO;
    return new BackendError(errno, `${op} ${this.path} offset ${offset} length ${length} failed`, { cause: err });
  }
}

/** The list without its first n bytes (views, no copies). */
function dropPrefix(list: readonly Buffer[], n: number): Buffer[] {
  const out: Buffer[] = [];
  for (const b of list) {
    if (n >= b.length) {
      n -= b.length;
    } else {
      out.push(n > 0 ? b.subarray(n) : b);
      n = 0;
    }
  }
  return out;
}

/** Open a raw image file; its current size is the export size. */
export async function openFileBackend(path: string, opts: FileBackendOptions): Promise<FileBackend> {
  const readonly = !!opts.readonly;
  const fh = await open(path, readonly ? 'r' : 'r+');
  try {
    const st = await fh.stat();
    if (!st.isFile()) throw new BackendError(NbdError.EINVAL, `${path} is not a regular file`);
    return new FileBackend(fh, st.size, readonly, path, opts.pool);
  } catch (err) {
    await fh.close();
    throw err;
  }
}
