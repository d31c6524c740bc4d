/**
 * The raw image file behind the ticket: its size, the shared allocation map, and the I/O
 * helpers the handlers use through each connection's own file handle.
 *
 * The map is seeded at open from the file's holes, asked of the file system (SEEK_DATA and
 * SEEK_HOLE through `qemu-img map`, since Node has no API for them), and then only the data
 * ranges are read to find all-zero blocks: a large sparse image opens without reading its
 * holes (reading a 4 GiB sparse image took over 10 s on a busy machine). Without qemu-img the
 * whole file is read, as before.
 */
import { execFile } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import { promisify } from 'node:util';
import { AllocationMap } from './allocation-map';

const execFileAsync = promisify(execFile);

/** Block size of the start-up scan for all-zero regions. */
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
    const ranges = (await dataRanges(this.path, this.fileSize)) ?? [[0, this.fileSize]];
    const buf = Buffer.allocUnsafe(SCAN_BLOCK);
    for (const [start, end] of ranges) await this.scanRange(fh, buf, start, end);
  }

  /** Mark the blocks of [start, end) that are not all zeros as data. */
  private async scanRange(fh: FileHandle, buf: Buffer, start: number, end: number): Promise<void> {
    for (let pos = start; pos < end; pos += SCAN_BLOCK) {
      const want = Math.min(SCAN_BLOCK, end - pos);
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

/**
 * The ranges of the file that the file system says hold data (everything else is a hole), in
 * order, or undefined if that cannot be asked (no qemu-img, or it failed).
 */
async function dataRanges(path: string, size: number): Promise<[number, number][] | undefined> {
  if (size === 0) return [];
  try {
    // -U: read without taking the image lock (another process may have it open for writing).
    const { stdout } = await execFileAsync('qemu-img', ['map', '-U', '--output=json', '-f', 'raw', path], {
      maxBuffer: 1 << 30,
    });
    const entries = JSON.parse(stdout) as { start: number; length: number; data: boolean }[];
    const out: [number, number][] = [];
    for (const e of entries) {
      if (!e.data) continue;
      const start = e.start;
      const end = Math.min(size, e.start + e.length);
      if (end <= start) continue;
      const last = out[out.length - 1];
      if (last && last[1] === start) last[1] = end;
      else out.push([start, end]);
    }
    return out;
  } catch {
    return undefined;
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
