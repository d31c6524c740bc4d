/**
 * The raw image file behind the ticket: its size, the shared allocation map, and the I/O
 * helpers the handlers use through each connection's own file handle.
 */
import { promises as fsp } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import { AllocationMap } from './allocation-map';

/** Block size of the start-up scan for all-zero regions. Reading holes of a sparse file is cheap. */
const SCAN_BLOCK = 1 << 20;
/**
 * Granularity of the extents the scan reports: 4 KiB, the file system block that qemu-nbd's
 * allocation status (imageio's nbd backend) reports. A coarser grain turns the edges of every
 * data extent into data, and clients then read zeroes as data.
 */
const SCAN_GRAIN = 4096;
/** Shared, never-written buffer of zeros for PATCH zero. */
const ZEROS = Buffer.alloc(1 << 20);

export class ImageFile {
  readonly map = new AllocationMap();

  private constructor(
    readonly path: string,
    /** Bytes in the file now (grows when writes pass EOF). */
    public fileSize: number,
    readonly readonly: boolean,
  ) {}

  /** Open the image, extend it to `size` if writable and shorter, and scan it for zero blocks. */
  static async open(path: string, size: number | undefined, readonly: boolean): Promise<ImageFile> {
    const fh = await fsp.open(path, readonly ? 'r' : 'r+');
    try {
      const st = await fh.stat();
      if (!st.isFile()) throw new Error(`${path} is not a regular file`);
      let fileSize = st.size;
      if (!readonly && size !== undefined && size > fileSize) {
        await fh.truncate(size);
        fileSize = size;
      }
      const img = new ImageFile(path, fileSize, readonly);
      await img.scan(fh);
      return img;
    } finally {
      await fh.close();
    }
  }

  private async scan(fh: FileHandle): Promise<void> {
    const buf = Buffer.allocUnsafe(SCAN_BLOCK);
    for (let pos = 0; pos < this.fileSize; pos += SCAN_BLOCK) {
      const want = Math.min(SCAN_BLOCK, this.fileSize - pos);
      const { bytesRead } = await fh.read(buf, 0, want, pos);
      if (buf.subarray(0, bytesRead).equals(ZEROS.subarray(0, bytesRead))) continue;
      let runStart = -1;
      for (let off = 0; off < bytesRead; off += SCAN_GRAIN) {
        const end = Math.min(off + SCAN_GRAIN, bytesRead);
        const zero = buf.subarray(off, end).equals(ZEROS.subarray(0, end - off));
        if (!zero && runStart < 0) runStart = off;
        if (zero && runStart >= 0) {
          this.map.markData(pos + runStart, pos + off);
          runStart = -1;
        }
      }
      if (runStart >= 0) this.map.markData(pos + runStart, pos + bytesRead);
    }
  }

  /** A new handle for one HTTP connection (imageio opens one backend per connection). */
  openHandle(): Promise<FileHandle> {
    return fsp.open(this.path, this.readonly ? 'r' : 'r+');
  }

  /** Read exactly `length` bytes at `offset` into buf; bytes past EOF read as zeros. */
  async readExact(fh: FileHandle, buf: Buffer, length: number, offset: number): Promise<void> {
    let done = 0;
    while (done < length) {
      const { bytesRead } = await fh.read(buf, done, length - done, offset + done);
      if (bytesRead === 0) {
        buf.fill(0, done, length);
        return;
      }
      done += bytesRead;
    }
  }

  /** Write buffers in order starting at `offset`. Marks the range as data before writing. */
  async writeAt(fh: FileHandle, bufs: Buffer[], length: number, offset: number): Promise<void> {
    this.map.markData(offset, offset + length);
    let pos = offset;
    let pending = bufs;
    while (pending.length > 0) {
      const { bytesWritten } = await fh.writev(pending, pos);
      pos += bytesWritten;
      pending = skipBytes(pending, bytesWritten);
    }
    if (pos > this.fileSize) this.fileSize = pos;
  }

  /** Zero [offset, offset+length): write zeros only where the map says data may be. */
  async zero(fh: FileHandle, offset: number, length: number): Promise<void> {
    const end = offset + length;
    for (const [s, e] of this.map.dataRuns(offset, Math.min(end, this.fileSize))) {
      for (let pos = s; pos < e; ) {
        const n = Math.min(ZEROS.length, e - pos);
        const { bytesWritten } = await fh.write(ZEROS, 0, n, pos);
        pos += bytesWritten;
      }
    }
    if (end > this.fileSize) {
      // Like imageio's file backend: extend with ftruncate when zeroing past EOF.
      await fh.truncate(end);
      this.fileSize = end;
    }
    this.map.markZero(offset, end);
  }
}

function skipBytes(bufs: Buffer[], n: number): Buffer[] {
  let i = 0;
  while (i < bufs.length && n >= bufs[i].length) n -= bufs[i++].length;
  if (i === bufs.length) return [];
  const rest = bufs.slice(i);
  if (n > 0) rest[0] = rest[0].subarray(n);
  return rest;
}
