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
 */
import { execFile } from 'node:child_process';
import { open, type FileHandle } from 'node:fs/promises';
import { promisify } from 'node:util';
import type { Backend, Capabilities, WriteFlags, ZeroFlags } from '../backend';
import { BackendError } from '../errors';
import { NbdError } from '../../protocol/constants';

const ZERO_CHUNK = 4 * 1024 * 1024;
/** Zeroes at least this large go to fallocate(1); smaller ones cost less than its start-up. */
const FALLOCATE_MIN = 8 * 1024 * 1024;
let fallocateMissing = false;
const execFileAsync = promisify(execFile);
let zeroBuffer: Buffer | undefined;

export interface FileBackendOptions {
  readonly?: boolean;
}

export class FileBackend implements Backend {
  readonly name = 'file';

  constructor(
    private readonly fh: FileHandle,
    private readonly bytes: number,
    private readonly ro: boolean,
    /** Path, for messages. */
    readonly path: string,
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

  async pread(offset: number, length: number): Promise<Buffer> {
    const buf = Buffer.allocUnsafe(length);
    let done = 0;
    try {
      while (done < length) {
        const { bytesRead } = await this.fh.read(buf, done, length - done, offset + done);
        if (bytesRead === 0) {
          buf.fill(0, done); // past EOF: the file is being zeroed at its end
          break;
        }
        done += bytesRead;
      }
    } catch (err) {
      throw this.ioError('read', offset, length, err);
    }
    return buf;
  }

  async pwrite(data: Buffer, offset: number, flags?: WriteFlags): Promise<void> {
    try {
      await this.writeAll(data, offset);
      if (flags?.fua) await this.fh.datasync();
    } catch (err) {
      throw this.ioError('write', offset, data.length, err);
    }
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
        const scratch = Buffer.allocUnsafe(Math.min(ZERO_CHUNK, length));
        for (let pos = offset, end = offset + length; pos < end; ) {
          const n = Math.min(ZERO_CHUNK, end - pos);
          const { bytesRead } = await this.fh.read(scratch, 0, n, pos);
          const alreadyZero = bytesRead === n && scratch.subarray(0, n).equals(zeroes.subarray(0, n));
          if (!alreadyZero) await this.writeAll(n === ZERO_CHUNK ? zeroes : zeroes.subarray(0, n), pos);
          pos += n;
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
    try {
      await this.fh.datasync();
    } catch (err) {
      throw this.ioError('flush', 0, 0, err);
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

/** Open a raw image file; its current size is the export size. */
export async function openFileBackend(path: string, opts: FileBackendOptions = {}): Promise<FileBackend> {
  const readonly = !!opts.readonly;
  const fh = await open(path, readonly ? 'r' : 'r+');
  try {
    const st = await fh.stat();
    if (!st.isFile()) throw new BackendError(NbdError.EINVAL, `${path} is not a regular file`);
    return new FileBackend(fh, st.size, readonly, path);
  } catch (err) {
    await fh.close();
    throw err;
  }
}
